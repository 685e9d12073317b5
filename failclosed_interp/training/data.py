"""Training examples for refusal SFT: harmful prompts paired with refusals, harmless and borderline
prompts paired with the model's own answers (self-distillation), and their tokenisation with the
loss on answer tokens only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from failclosed_interp.chat import format_exchange
from failclosed_interp.generation import GenerationConfig, generate_tokens
from failclosed_interp.interventions import Intervention
from failclosed_interp.judges import Judge, ThreeWayJudge
from failclosed_interp.models import ChatModel

KINDS = ("safety", "utility")
IGNORE = -100  # label of positions that carry no loss (prompt, padding)
REFERENCE_CACHE_BYTES = 2**30  # reference log-probs kept in memory up to this size, recomputed beyond it

# Written for this project. Each starts like the refusals the judges and refusal tokens look for.
DEFAULT_REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't help with that request. It could be used to hurt someone or break the law.",
    "I cannot assist with this. Providing that information could put people in danger.",
    "I'm sorry, but I won't provide instructions for something harmful or illegal.",
    "I can't do that. If you are dealing with a difficult situation, I'm happy to talk about safe alternatives.",
    "I cannot help with this request because it could lead to serious harm.",
)


@dataclass(frozen=True)
class Example:
    """One training pair. `prompt` is the raw user instruction, `answer` the assistant text.
    `complete=False` marks an answer cut off by a token budget: it is trained without the end-of-turn
    token, so the model does not learn to stop where the budget happened to end."""

    prompt: str
    answer: str
    kind: str  # "safety" or "utility"; plain str so bad values reach our ValueError, also under beartype
    complete: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Example.kind must be one of {KINDS}, got {self.kind!r}")
        if not self.prompt.strip():
            raise ValueError("Example.prompt is empty; every example needs an instruction")

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "answer": self.answer, "kind": self.kind, "complete": self.complete}

    @classmethod
    def from_dict(cls, data: dict) -> Example:
        return cls(data["prompt"], data["answer"], data["kind"], data.get("complete", True))


def own_answers(
    model: ChatModel,
    prompts: Sequence[str],
    kind: str,
    generation: GenerationConfig,
    interventions: Sequence[Intervention] = (),
    *,
    progress: bool = True,
) -> list[Example]:
    """`prompts` paired with the model's own answers (under `interventions`), batched and KV-cached.
    An answer is complete when decoding stopped at an end-of-turn token, i.e. before the token budget."""
    tokens = generate_tokens(model, list(prompts), generation, interventions, progress=progress)
    return [Example(prompt, model.tokenizer.decode(t, skip_special_tokens=True).strip(), kind,
                    len(t) < generation.max_new_tokens)
            for prompt, t in zip(prompts, tokens)]


def build_sft_examples(
    model: ChatModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    borderline: Sequence[str] = (),
    *,
    refusal_texts: Sequence[str] = DEFAULT_REFUSALS,
    judge: Judge = ThreeWayJudge(),
    generation: GenerationConfig = GenerationConfig(max_new_tokens=48),
    progress: bool = True,
) -> list[Example]:
    """Safety examples (harmful prompt -> the model's own refusal when the judge says it refused, else
    one of `refusal_texts`, cycled in order) followed by utility examples (harmless and borderline
    prompts -> the model's own answers). All prompts are generated in one batched pass."""
    harmful, utility = list(harmful), list(harmless) + list(borderline)
    if not harmful:
        raise ValueError("no harmful prompts given; refusal SFT needs at least one harmful prompt")
    if not refusal_texts or not all(t.strip() for t in refusal_texts):
        raise ValueError("refusal_texts must be non-empty strings, e.g. DEFAULT_REFUSALS")
    answered = own_answers(model, harmful + utility, "utility", generation, progress=progress)
    own = answered[: len(harmful)]
    refused = judge(harmful, [e.answer for e in own])
    safety, n_written = [], 0
    for example, refusal in zip(own, refused):
        if refusal and example.answer:
            safety.append(replace(example, kind="safety"))
        else:
            safety.append(Example(example.prompt, refusal_texts[n_written % len(refusal_texts)], "safety"))
            n_written += 1
    return safety + answered[len(harmful) :]


@dataclass(frozen=True)
class TokenizedExamples:
    """Right-padded token ids; `labels` is the token to predict at each position's *own* index
    (IGNORE on prompt and padding), so logits[:, t-1] are scored against labels[:, t]."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    labels: Int[Tensor, "batch pos"]


def example_token_ids(model: ChatModel, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) with the answer truncated so both fit in `max_length` tokens."""
    tok = model.tokenizer
    prompt_text, answer_text = format_exchange(tok, example.prompt, example.answer)
    # An empty generated answer means the model ended its turn at once, within any budget: the
    # end-of-turn marker is then the whole answer, so it is kept.
    if not example.complete and example.answer:
        cut = answer_text.rfind(example.answer)
        answer_text = answer_text[: cut + len(example.answer)] if cut >= 0 else example.answer
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tok(answer_text, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) >= max_length:
        raise ValueError(
            f"the prompt {example.prompt[:60]!r} is {len(prompt_ids)} tokens with the chat template, which leaves "
            f"no room for an answer within max_length={max_length}; raise max_length or drop the prompt"
        )
    if not answer_ids:
        raise ValueError(f"the answer to {example.prompt[:60]!r} has no tokens; give a non-empty answer")
    return prompt_ids, answer_ids[: max_length - len(prompt_ids)]


def tokenize_examples(model: ChatModel, examples: Sequence[Example], max_length: int) -> TokenizedExamples:
    """Right-padded batch: prompt tokens then answer tokens (incl. the end-of-turn marker); loss on the
    answer only. Right padding keeps every real token at its unpadded position, so no position ids."""
    if not examples:
        raise ValueError("no examples to tokenize")
    return collate(model, [example_token_ids(model, e, max_length) for e in examples])


def collate(model: ChatModel, rows: Sequence[tuple[list[int], list[int]]]) -> TokenizedExamples:
    """Right-pad (prompt ids, answer ids) rows from `example_token_ids` into one batch."""
    width = max(len(p) + len(a) for p, a in rows)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for row, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[row, :n] = torch.tensor(p + a, dtype=torch.long)
        mask[row, :n] = 1
        labels[row, len(p) : n] = torch.tensor(a, dtype=torch.long)
    return TokenizedExamples(ids.to(model.device), mask.to(model.device), labels.to(model.device))


def answer_logits(model: ChatModel, batch: TokenizedExamples) -> tuple[Float[Tensor, "batch span d_vocab"], Int[Tensor, "batch span"]]:
    """(logits, labels) cut to the span from the batch's earliest last-prompt position on: the LM head, the
    costliest layer of a small model, runs only where an answer token is predicted. Losses over answer
    tokens (labels != IGNORE) are the same as on the whole sequence."""
    first = int((batch.labels != IGNORE).int().argmax(1).min()) - 1
    keep = batch.input_ids.shape[1] - first
    if model.hf_model is not None:  # the bridged HF module fires the same hooks
        logits = model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                logits_to_keep=keep).logits
    else:
        logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask)[:, first:]
    return logits, batch.labels[:, first:]


class ReferenceLogProbs:
    """A fixed reference model's log-probs at the positions that predict each row's answer tokens: computed
    once per row and kept (float32, while all rows fit in `max_bytes`, default `REFERENCE_CACHE_BYTES`),
    since the reference does not change while it is asked. `reference()` is entered around each
    computation (e.g. adapters off); rows are `example_token_ids` pairs, asked for by index."""

    def __init__(self, model: ChatModel, rows: Sequence[tuple[list[int], list[int]]],
                 reference: Callable[[], AbstractContextManager] = nullcontext, *, max_bytes: int | None = None):
        self.model, self.rows, self.reference = model, rows, reference
        n_answer = sum(len(answer) for _, answer in rows)
        limit = REFERENCE_CACHE_BYTES if max_bytes is None else max_bytes
        self.cache: dict[int, Tensor] | None = {} if n_answer * model.bridge.cfg.d_vocab * 4 <= limit else None

    def __call__(self, idx: Sequence[int]) -> Float[Tensor, "n_answer d_vocab"]:
        """The rows' log-probs at their answer-predicting positions, concatenated in row order."""
        missing = [i for i in dict.fromkeys(idx) if self.cache is None or i not in self.cache]
        fresh = {}
        if missing:
            with torch.no_grad(), self.reference():
                logits, labels = answer_logits(self.model, collate(self.model, [self.rows[i] for i in missing]))
            keep = labels[:, 1:] != IGNORE
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
            fresh = {i: logp[row][keep[row]] for row, i in enumerate(missing)}
            if self.cache is not None:
                self.cache.update(fresh)
        return torch.cat([fresh[i] if i in fresh else self.cache[i] for i in idx])
