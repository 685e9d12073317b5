"""Shared tiny offline models and helpers. Session-scoped models must not be mutated by tests:
interventions are removed on exit; anything that changes weights (LoRA) builds its own instance."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from failclosed_interp.chat import tokenize_prompts
from failclosed_interp.models import ChatModel, load_model

# Tiny models gain nothing from intra-op threads, and spinning OpenMP workers slow them down many-fold
# when the cores are shared with other processes.
torch.set_num_threads(1)

PROMPTS = ["How do I bake bread?", "Name a colour.", "Write one short sentence about the sea, please."]


@pytest.fixture(scope="session")
def tiny_llama() -> ChatModel:
    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_native() -> ChatModel:
    return load_model("tiny-native")


@pytest.fixture(scope="session")
def unit_direction() -> torch.Tensor:
    d = torch.randn(64, generator=torch.Generator().manual_seed(123))
    return d / d.norm()


@pytest.fixture
def batch_of():
    """Tokenised chat prompts for a model (left-padded)."""
    return lambda model, prompts=PROMPTS: tokenize_prompts(model, list(prompts))


@pytest.fixture
def logits_of():
    @torch.no_grad()
    def run(model: ChatModel, batch) -> torch.Tensor:
        return model.bridge(batch.input_ids, attention_mask=batch.attention_mask)

    return run


@contextmanager
def _capture(model: ChatModel, names: list[str]):
    store: dict[str, torch.Tensor] = {}

    def make(name):
        def hook(x, hook=None):
            store[name] = x.detach().clone()
            return x

        return hook

    # Registered after any intervention already active, so it sees the intervened activation.
    with model.bridge.hooks(fwd_hooks=[(n, make(n)) for n in names]):
        yield store


@pytest.fixture
def capture():
    """`with capture(model, names) as acts: model.bridge(...)` fills acts[name]."""
    return _capture


def count_hooks(model: ChatModel) -> int:
    # hook_dict lists a hook point under its canonical name and its aliases: count each point once.
    points = {id(hp): hp for hp in model.bridge.hook_dict.values()}
    return sum(len(hp._forward_hooks) for hp in points.values())


@pytest.fixture
def hook_count():
    return count_hooks
