"""Batched greedy or sampled decoding with a KV cache, left padding and EOS stopping, under any
interventions. The HF module's forward runs through the bridge's hooks, so interventions apply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from failclosed_interp.batching import AdaptiveBatchSize
from failclosed_interp.chat import batches, check_length, position_ids, tokenize_prompts
from failclosed_interp.interventions import Intervention, intervene
from failclosed_interp.models import ChatModel


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings: new-token budget, greedy or sampled (temperature, top-p), batch size and seed."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 64  # decoding is bound by per-step costs (reading the weights, kernel launches): a wider batch costs little more per step
    seed: int = 0
    use_cache: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"sampling needs temperature > 0, got {self.temperature}; use do_sample=False for greedy")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def generate(
    model: ChatModel,
    instructions: Sequence[str],
    config: GenerationConfig = GenerationConfig(),
    interventions: Sequence[Intervention] = (),
    *,
    formatted: bool = False,
    progress: bool = True,
) -> list[str]:
    """Responses (new text only, special tokens dropped) to chat-formatted `instructions`, in order."""
    tokens = generate_tokens(model, instructions, config, interventions, formatted=formatted, progress=progress)
    return [model.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]


@torch.no_grad()
def generate_tokens(
    model: ChatModel,
    instructions: Sequence[str],
    config: GenerationConfig = GenerationConfig(),
    interventions: Sequence[Intervention] = (),
    *,
    formatted: bool = False,
    progress: bool = True,
) -> list[list[int]]:
    """New token ids per prompt, cut after the first EOS (EOS kept out)."""
    if not instructions:
        raise ValueError("the prompt set is empty: give at least one prompt")
    order = sorted(range(len(instructions)), key=lambda i: len(instructions[i]))  # similar lengths pad less

    def run(batch_size: int) -> list[list[int]]:
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
        results: dict[int, list[int]] = {}
        chunks = list(batches(order, batch_size))
        with intervene(model, interventions):
            for chunk in tqdm(chunks, desc="generating", disable=not progress, leave=False):
                batch = tokenize_prompts(model, [instructions[i] for i in chunk], formatted=formatted)
                check_length(model, batch.input_ids.shape[1] + config.max_new_tokens)
                new = _decode(model, batch.input_ids, batch.attention_mask, config, generator)
                results.update(zip(chunk, new))
        return [results[i] for i in range(len(instructions))]

    return AdaptiveBatchSize(config.batch_size, "generation batch").run(run)


def _eos_ids(model: ChatModel) -> set[int]:
    ids = {model.tokenizer.eos_token_id}
    hf_eos = getattr(getattr(model.hf_model, "generation_config", None), "eos_token_id", None)
    ids |= set(hf_eos) if isinstance(hf_eos, list) else {hf_eos}
    return {i for i in ids if i is not None}


def _forward(model: ChatModel, ids, mask, past, use_cache: bool):
    """Next-token logits (and the cache when the model has one)."""
    pos = position_ids(mask)[:, -ids.shape[1]:]
    if model.hf_model is None:  # native bridge: no HF cache, decode without one
        return model.bridge(ids, attention_mask=mask)[:, -1].float(), None
    out = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=use_cache,
                         logits_to_keep=1)  # the LM head only where the next token is predicted
    return out.logits[:, -1].float(), (out.past_key_values if use_cache else None)


def _next_token(logits: Float[Tensor, "batch d_vocab"], config: GenerationConfig, generator) -> Int[Tensor, "batch"]:
    if not config.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / config.temperature, dim=-1)
    if config.top_p < 1:
        sorted_p, idx = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < config.top_p
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def _decode(model: ChatModel, ids, mask, config: GenerationConfig, generator) -> list[list[int]]:
    eos = _eos_ids(model)
    pad = model.tokenizer.pad_token_id
    use_cache = config.use_cache and model.hf_model is not None
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    out: list[list[int]] = [[] for _ in range(ids.shape[0])]
    logits, past = _forward(model, ids, mask, None, use_cache)
    for _ in range(config.max_new_tokens):
        token = _next_token(logits, config, generator)
        token = torch.where(done, torch.full_like(token, pad), token)
        for row, t in enumerate(token.tolist()):
            if not done[row] and t not in eos:
                out[row].append(t)
        done |= torch.tensor([t in eos for t in token.tolist()], device=done.device)
        if done.all():
            break
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # finished rows are ignored anyway
        logits, past = _forward(model, ids[:, -1:] if use_cache else ids, mask, past, use_cache)
    return out
