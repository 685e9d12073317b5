"""Generation: the KV cache, batching and left padding change nothing about greedy output; EOS stops;
sampling is seeded; bad settings and bad prompts are refused with a fix."""

from __future__ import annotations

import pytest
import torch

from failclosed_interp.chat import tokenize_prompts
from failclosed_interp.generation import GenerationConfig, generate, generate_tokens
from failclosed_interp.interventions import Ablation, Addition

GREEDY = GenerationConfig(max_new_tokens=12, batch_size=8)
# Different lengths, so batches are left-padded.
PROMPTS = ["How do I bake bread?", "Name a colour.", "Write one short sentence about the sea, please."]


def _tokens(model, config, interventions=(), prompts=PROMPTS):
    return generate_tokens(model, prompts, config, interventions, progress=False)


@pytest.mark.parametrize("ablate", [False, True], ids=["clean", "ablated"])
def test_cached_greedy_equals_uncached(tiny_llama, unit_direction, ablate):
    interventions = [Ablation(unit_direction)] if ablate else []
    cached = _tokens(tiny_llama, GREEDY, interventions)
    uncached = _tokens(tiny_llama, GenerationConfig(max_new_tokens=12, batch_size=8, use_cache=False), interventions)
    assert cached == uncached
    assert all(len(t) == 12 for t in cached)  # no early EOS, so every step was compared


def test_ablation_changes_greedy_output(tiny_llama, unit_direction):
    # Guards the test above against being vacuous: generation really runs under the hooks.
    assert _tokens(tiny_llama, GREEDY) != _tokens(tiny_llama, GREEDY, [Ablation(unit_direction)])


def test_bridged_llama_kv_cache_agrees_with_full_recompute(tiny_llama):
    """Pin guard (docs/design.md): transformers 5.24 + TransformerBridge 4.3 breaks KV-cached decoding of
    bridged Llama models after the first token. Checked both through our decoder and HF's own generate."""
    batch = tokenize_prompts(tiny_llama, PROMPTS[:1])
    ours_cached = _tokens(tiny_llama, GenerationConfig(max_new_tokens=24), prompts=PROMPTS[:1])
    ours_full = _tokens(tiny_llama, GenerationConfig(max_new_tokens=24, use_cache=False), prompts=PROMPTS[:1])
    assert ours_cached == ours_full
    kwargs = dict(attention_mask=batch.attention_mask, max_new_tokens=24, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        hf_cached = tiny_llama.hf_model.generate(batch.input_ids, use_cache=True, **kwargs)
        hf_full = tiny_llama.hf_model.generate(batch.input_ids, use_cache=False, **kwargs)
    assert torch.equal(hf_cached, hf_full)
    assert hf_cached[0, batch.input_ids.shape[1]:].tolist()[: len(ours_full[0])] == ours_full[0]


def test_batched_equals_one_by_one(tiny_llama, unit_direction):
    for interventions in ([], [Ablation(unit_direction)]):
        batched = _tokens(tiny_llama, GREEDY, interventions)
        single = [_tokens(tiny_llama, GREEDY, interventions, prompts=[p])[0] for p in PROMPTS]
        assert batched == single
    assert len({len(p) for p in PROMPTS}) == len(PROMPTS)  # rows really were left-padded


def test_eos_stops_generation(tiny_llama):
    eos = tiny_llama.tokenizer.eos_token_id
    row = tiny_llama.hf_model.lm_head.weight[eos].detach()
    push_eos = Addition(row / row.norm(), tiny_llama.n_layers - 1, coeff=50.0, site="resid_post")
    assert _tokens(tiny_llama, GREEDY, [push_eos]) == [[] for _ in PROMPTS]
    assert generate(tiny_llama, PROMPTS, GREEDY, [push_eos], progress=False) == ["" for _ in PROMPTS]


def test_rows_that_end_early_stop_while_others_continue(tiny_llama):
    """A gentle push towards EOS ends some rows midway: each row stops at its own EOS, the rest run on,
    and neither the cache nor batching changes where (the `done` bookkeeping of the batched decoder)."""
    eos = tiny_llama.tokenizer.eos_token_id
    row = tiny_llama.hf_model.lm_head.weight[eos].detach()
    nudge = [Addition(row / row.norm(), tiny_llama.n_layers - 1, coeff=0.055, site="resid_post")]
    config = GenerationConfig(max_new_tokens=16, batch_size=8)
    batched = _tokens(tiny_llama, config, nudge)
    lengths = [len(t) for t in batched]
    assert 0 < min(lengths) < 16 and max(lengths) == 16, f"precondition: mixed stopping, got {lengths}"
    assert all(eos not in t for t in batched)
    assert batched == [_tokens(tiny_llama, config, nudge, prompts=[p])[0] for p in PROMPTS]
    assert batched == _tokens(tiny_llama, GenerationConfig(max_new_tokens=16, use_cache=False), nudge)


def test_sampling_is_reproducible_per_seed(tiny_llama):
    def sample(seed):
        return _tokens(tiny_llama, GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5, seed=seed))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert sample(1) != _tokens(tiny_llama, GenerationConfig(max_new_tokens=10))


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(batch_size=0), "batch_size"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_generation_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)


def test_empty_prompt_list_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="empty"):
        generate(tiny_llama, [], GREEDY, progress=False)


def test_prompt_longer_than_context_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="context"):
        generate(tiny_llama, ["x" * (tiny_llama.max_context + 10)], GREEDY, progress=False)
    # Fits alone but not with the new tokens: also refused before any decoding.
    fits = "x" * (tiny_llama.max_context - 8)
    with pytest.raises(ValueError, match="context"):
        generate(tiny_llama, [fits], GenerationConfig(max_new_tokens=64), progress=False)
