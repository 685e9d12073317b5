"""GCG through nanogcg (the reference implementation by Gray Swan) on the model's HF module, so the LoRA
adapter and any active hooks apply. The prompt layout is the toolkit's own: the tokenizer's chat template,
the suffix appended to the user's text, the chat text tokenized exactly as written. nanogcg is an optional
dependency (`pip install 'failclosed_interp[attacks]'`); it is imported only when this backend runs."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor

if TYPE_CHECKING:
    from failclosed_interp.attacks.gcg import GCGConfig


class _ChatTokenizer:
    """The tokenizer as nanogcg should see it. nanogcg deletes every occurrence of `bos_token` from the
    formatted chat and then lets the tokenizer add its special tokens; for ChatML tokenizers whose BOS is
    `<|im_start|>` (SmolLM2) that deletes every turn marker. Here nothing is deleted and nothing is added:
    the chat text is tokenized as written, as everywhere else in the toolkit."""

    bos_token = None

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **{**kwargs, "add_special_tokens": False})

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)


@contextmanager
def _caller_state_kept(device: torch.device) -> Iterator[None]:
    """nanogcg seeds Python's, NumPy's and torch's global generators, turns on torch's deterministic
    algorithms and logs every step; an attack should leave the caller's process as it found it."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    logger = logging.getLogger("nanogcg")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its per-step buffer dumps and its float32/CPU advice, per prompt
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        logger.setLevel(level)


def nanogcg_search(
    hf_model: torch.nn.Module,
    tokenizer,
    prompt: str,
    config: GCGConfig,
    allowed: Bool[Tensor, "d_vocab"],
    seed: int,
) -> tuple[str, list[float]]:
    """Run nanogcg on one prompt with `config`'s budget; returns its lowest-loss suffix and its loss per step.

    The suffix may use only `allowed` tokens (the same set as the own backend). nanogcg's prefix cache indexes
    the KV cache as a list of tensors, which transformers 5 no longer returns, so it runs without one."""
    try:
        import nanogcg.gcg as nanogcg
    except ImportError as err:
        raise ImportError(
            "GCGConfig(backend='nanogcg') needs the nanogcg package: pip install 'failclosed_interp[attacks]' "
            "(or pip install --no-deps nanogcg); or use GCGConfig(backend='own')"
        ) from err
    settings = nanogcg.GCGConfig(
        num_steps=config.steps, optim_str_init=config.suffix_init, search_width=config.search_width,
        batch_size=config.batch_size, topk=config.top_k, n_replace=config.n_replace, early_stop=config.early_stop,
        use_prefix_cache=False, allow_non_ascii=True,  # the allowed set is ours, set below
        seed=seed % 2**32, verbosity="ERROR",
    )
    with _caller_state_kept(hf_model.device):
        engine = nanogcg.GCG(hf_model, _ChatTokenizer(tokenizer), settings)
        engine.not_allowed_ids = (~allowed).nonzero()[:, 0].to(hf_model.device)
        result = engine.run(prompt, config.target)
    return result.best_string, [float(x) for x in result.losses]
