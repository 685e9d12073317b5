"""Chat formatting through the tokenizer's own template, left-padded batches, and the
post-instruction token positions (template tokens after the user's text), for any template."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from jaxtyping import Int
from torch import Tensor

from failclosed_interp.models import ChatModel


def format_prompt(tokenizer, instruction: str, system: str | None = None) -> str:
    """The text the model sees before its answer: the chat template with the generation prompt."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def format_exchange(tokenizer, instruction: str, answer: str) -> tuple[str, str]:
    """(prompt text, answer text incl. the end-of-turn marker) so that prompt + answer is the full chat."""
    prompt = format_prompt(tokenizer, instruction)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prompt):
        # Some templates render the last assistant turn differently; fall back to prompt + answer + eos.
        return prompt, answer + (tokenizer.eos_token or "")
    return prompt, full[len(prompt):]


def _post_instruction_len(tokenizer) -> int:
    return _suffix_len(tokenizer, tokenizer.chat_template)


_PROBES = ("Name three colours of the rainbow", "zq7 vexing quartz jumbo fjord")  # differ in first and last token


def _probe_ids(tokenizer, chat_template: str) -> list[list[int]]:
    """Token ids of two chat-formatted probe prompts (`chat_template` keys the callers' caches)."""
    return [tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in _PROBES]


@lru_cache(maxsize=16)
def _suffix_len(tokenizer, chat_template: str) -> int:  # keyed on the template: it can be replaced
    ids = _probe_ids(tokenizer, chat_template)
    n = 0
    while n < min(map(len, ids)) and ids[0][-1 - n] == ids[1][-1 - n]:
        n += 1
    if n == 0:
        raise ValueError("the chat template adds no tokens after the user's text; cannot locate post-instruction positions")
    return n


def post_instruction_positions(model: ChatModel) -> list[int]:
    """Negative positions (-n .. -1) of the template tokens after the instruction, e.g. for ChatML
    `<|im_end|> \\n <|im_start|> assistant \\n`. Negative indices stay valid under left padding."""
    n = _post_instruction_len(model.tokenizer)
    return list(range(-n, 0))


def template_prefix_ids(tokenizer) -> tuple[int, ...]:
    """Token ids the chat template puts before every user text (e.g. `<|im_start|>system ...
    <|im_start|>user\n`). Their activations are the same for every prompt (causal attention), and
    they include the attention sink, whose activations are massive."""
    return _prefix_ids(tokenizer, tokenizer.chat_template)


@lru_cache(maxsize=16)
def _prefix_ids(tokenizer, chat_template: str) -> tuple[int, ...]:
    ids = _probe_ids(tokenizer, chat_template)
    n = 0
    while n < min(map(len, ids)) and ids[0][n] == ids[1][n]:
        n += 1
    return tuple(ids[0][:n])


@dataclass(frozen=True)
class Batch:
    """Left-padded token ids and their attention mask."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]


def tokenize_prompts(model: ChatModel, instructions: list[str], *, formatted: bool = False) -> Batch:
    """Left-padded token batch of chat-formatted instructions; errors say what to change."""
    if not instructions:
        raise ValueError("the prompt set is empty: give at least one prompt")
    texts = list(instructions) if formatted else [format_prompt(model.tokenizer, p) for p in instructions]
    enc = model.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    check_length(model, enc["input_ids"].shape[1], texts)
    return Batch(enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device))


def check_length(model: ChatModel, n_tokens: int, texts: list[str] | None = None) -> None:
    """Refuse prompts longer than the model's context, naming the longest."""
    if n_tokens > model.max_context:
        longest = max(texts, key=len)[:80] if texts else ""
        raise ValueError(
            f"a prompt is {n_tokens} tokens long but the model's context is {model.max_context} tokens "
            f"(prompt starting {longest!r}); shorten it or drop it from the set"
        )


def position_ids(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Positions that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def batches(items: list, size: int):
    """Consecutive chunks of `items` of at most `size` each."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]

