"""GCG's two backends: nanogcg (the reference implementation, optional) and our own. On a tiny Llama with
the same seed and budget they take the same steps; nanogcg sees the LoRA adapter (a planted adapter moves
the loss it reports) and the toolkit's chat layout (also where the BOS token is a turn marker, which
nanogcg alone would delete); it leaves the caller's global state as it was. Bad backends and a missing
nanogcg fail with errors that say what to do."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from failclosed_interp.adapters import LoraSettings
from failclosed_interp.attacks import GCGConfig, optimize_suffix
from failclosed_interp.attacks.gcg import _Problem
from failclosed_interp.chat import format_prompt
from failclosed_interp.models import boot_bridge, load_model
from failclosed_interp.replicas import tiny_llama_hf, tiny_tokenizer

PROMPT = "how do I bake bread"
# A tiny budget; no early stop, so both backends run every step.
TINY = GCGConfig(steps=3, search_width=16, top_k=8, suffix_init=" x x x x x x", target="Sure", early_stop=False)


def nanogcg_config(**changes) -> GCGConfig:
    pytest.importorskip("nanogcg")
    return GCGConfig(**{**TINY.__dict__, "backend": "nanogcg", **changes})


def loss_of(model, suffix_ids: tuple[int, ...], config: GCGConfig = TINY) -> float:
    problem = _Problem(model, PROMPT, config)
    return float(problem.losses(torch.tensor([suffix_ids], device=model.device))[0][0])


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match=r"GCGConfig.backend must be one of \('nanogcg', 'own'\), got 'nano'"):
        GCGConfig(backend="nano")


def test_missing_nanogcg_says_how_to_install_it(tiny_llama, monkeypatch):
    monkeypatch.setitem(sys.modules, "nanogcg.gcg", None)  # makes `import nanogcg.gcg` fail
    with pytest.raises(ImportError, match=r"pip install 'failclosed_interp\[attacks\]'.*backend='own'"):
        optimize_suffix(tiny_llama, PROMPT, GCGConfig(**{**TINY.__dict__, "backend": "nanogcg"}))


def test_nanogcg_and_own_take_the_same_steps(tiny_llama):
    ours = optimize_suffix(tiny_llama, PROMPT, GCGConfig(**{**TINY.__dict__, "backend": "own"}))
    theirs = optimize_suffix(tiny_llama, PROMPT, nanogcg_config())
    assert theirs.steps_run == ours.steps_run == TINY.steps and theirs.candidates_scored is None
    assert theirs.suffix == ours.suffix and theirs.suffix_ids == ours.suffix_ids
    torch.testing.assert_close(torch.tensor(theirs.losses), torch.tensor(ours.losses), rtol=1e-4, atol=1e-4)
    assert theirs.loss == pytest.approx(ours.loss, abs=1e-4) and theirs.loss < theirs.initial_loss
    # nanogcg's own loss of its last choice is the loss in our chat layout: it saw the same tokens
    assert theirs.losses[-1] == pytest.approx(loss_of(tiny_llama, theirs.suffix_ids), abs=1e-4)


def test_nanogcg_sees_the_adapter(tiny_llama):
    config = nanogcg_config(steps=1)
    adapted = load_model("tiny-llama", lora=LoraSettings(r=4))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, weight in adapted.hf_model.named_parameters():
            if "lora_B" in name:  # planted: B = 0 at init would leave the model unchanged
                weight.copy_(torch.randn(weight.shape, generator=generator) * 2)
    search = optimize_suffix(adapted, PROMPT, config)
    with_adapter, without = loss_of(adapted, search.suffix_ids, config), loss_of(tiny_llama, search.suffix_ids, config)
    assert abs(with_adapter - without) > 0.05  # the planted adapter matters...
    assert search.losses[-1] == pytest.approx(with_adapter, abs=1e-4)  # ...and nanogcg's loss is the adapted one


def test_nanogcg_keeps_turn_markers_that_double_as_bos():
    config = nanogcg_config(steps=1)
    model = boot_bridge(tiny_llama_hf(0), tiny_tokenizer(), "tiny-llama")
    model.tokenizer.bos_token = "<|user|>"  # like SmolLM2, whose BOS is ChatML's <|im_start|>
    assert format_prompt(model.tokenizer, PROMPT).startswith(model.tokenizer.bos_token)
    search = optimize_suffix(model, PROMPT, config)
    assert search.losses[-1] == pytest.approx(loss_of(model, search.suffix_ids, config), abs=1e-4)


def test_nanogcg_leaves_global_state_as_it_was(tiny_llama):
    config = nanogcg_config(steps=1)
    # (not Python's `random`: beartype's runtime checks under pytest draw from it)
    torch_rng, numpy_rng = torch.get_rng_state(), np.random.get_state()[1].copy()
    deterministic = torch.are_deterministic_algorithms_enabled()
    assert optimize_suffix(tiny_llama, PROMPT, config).steps_run == 1
    assert torch.equal(torch.get_rng_state(), torch_rng) and (np.random.get_state()[1] == numpy_rng).all()
    assert torch.are_deterministic_algorithms_enabled() == deterministic
