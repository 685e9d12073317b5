"""Utility as perplexity: how likely a model finds given answers to chat prompts. Lower is better;
a fine-tune that keeps the base model's abilities keeps the perplexity of held-out answers close to
the base model's. Loss on answer tokens only, through the same tokenisation as training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from failclosed_interp.chat import batches
from failclosed_interp.interventions import Intervention, intervene
from failclosed_interp.models import ChatModel
from failclosed_interp.stats import RateEstimate, bootstrap_mean
from failclosed_interp.training.data import Example, collate, example_token_ids
from failclosed_interp.training.trainer import answer_cross_entropy


@torch.no_grad()
def answer_nll(
    model: ChatModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    complete: bool = True,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = False,
) -> tuple[Float[Tensor, "batch"], list[int]]:
    """Mean next-token NLL of each answer given its chat-formatted prompt (float64), and its token count.

    `complete=True` scores the end-of-turn marker after the answer too; use False for prefixes such as
    an attack's target string ("Sure, here is"). Answers longer than `max_length` (default: the model's
    context) lose their end."""
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers; they must pair up")
    if not prompts:
        raise ValueError("no prompts given: perplexity needs at least one (prompt, answer) pair")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = max_length or model.max_context
    rows = [example_token_ids(model, Example(p, a, "utility", complete), limit) for p, a in zip(prompts, answers)]
    nll, counts = [], [len(a) for _, a in rows]
    with intervene(model, interventions):
        for chunk in tqdm(list(batches(rows, batch_size)), desc="perplexity", disable=not progress, leave=False):
            batch = collate(model, chunk)  # right padding: real tokens keep their unpadded positions
            logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask)
            nll += [answer_cross_entropy(logits[i : i + 1], batch.labels[i : i + 1]).double() for i in range(len(chunk))]
    out = torch.stack(nll).cpu()
    if not torch.isfinite(out).all():
        raise ValueError("the model produced a non-finite loss; check its weights, dtype and interventions")
    return out, counts


@dataclass(frozen=True)
class Perplexity:
    """exp(mean per-answer NLL) with a bootstrap CI over answers, and the token-weighted figure."""

    value: float
    low: float
    high: float
    token_weighted: float
    mean_nll: RateEstimate
    n_tokens: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"perplexity": self.value, "ci_low": self.low, "ci_high": self.high,
                "token_weighted_perplexity": self.token_weighted, "mean_nll": self.mean_nll.to_dict(),
                "n_answers": len(self.n_tokens), "n_tokens": sum(self.n_tokens)}

    def __format__(self, spec: str) -> str:
        spec = spec or ".2f"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def perplexity(
    model: ChatModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    complete: bool = True,
    batch_size: int = 8,
    max_length: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Perplexity:
    """Perplexity of `answers` given chat-formatted `prompts` (batched, padding-invariant).

    The headline value is exp of the mean over answers of each answer's mean token NLL, so every answer
    counts once; its CI is the exp of a bootstrap CI of that mean. `token_weighted` is the corpus figure
    exp(total NLL / total tokens)."""
    nll, counts = answer_nll(model, prompts, answers, interventions, complete=complete, batch_size=batch_size,
                             max_length=max_length, progress=progress)
    mean = bootstrap_mean(nll.tolist(), seed=seed)
    weighted = float((nll * torch.tensor(counts, dtype=torch.float64)).sum() / sum(counts))
    return Perplexity(math.exp(mean.value), math.exp(mean.low), math.exp(mean.high), math.exp(weighted), mean,
                      tuple(counts))
