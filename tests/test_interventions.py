"""Interventions: ablation removes the direction exactly where hooked and nowhere else, additions add
exactly what they say, they compose in list order, and hooks never outlive their context."""

from __future__ import annotations

import pytest
import torch

from failclosed_interp.interventions import Ablation, Addition, hook_name, intervene, orthonormal_basis

SITES_0_TO_3 = [hook_name(layer, "resid_pre") for layer in range(4)]


def test_ablation_zeroes_projection_at_every_hooked_site(tiny_llama, unit_direction, batch_of, capture):
    d = unit_direction
    sites = ("resid_pre", "attn_out", "mlp_out")
    names = [hook_name(layer, site) for layer in range(tiny_llama.n_layers) for site in sites]
    batch = batch_of(tiny_llama)
    with capture(tiny_llama, names) as clean:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    with intervene(tiny_llama, [Ablation(d, skip_template_prefix=False)]), capture(tiny_llama, names) as acts:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    for name in names:
        assert (clean[name] @ d).abs().max() > 1e-3, f"{name}: the direction was never there, test is vacuous"
        assert (acts[name] @ d).abs().max() < 1e-5, name


def test_ablation_at_one_layer_leaves_earlier_sites_bit_identical(tiny_llama, unit_direction, batch_of, capture):
    batch = batch_of(tiny_llama)
    names = SITES_0_TO_3 + [hook_name(layer, s) for layer in (0, 1) for s in ("attn_out", "mlp_out", "resid_post")]
    with capture(tiny_llama, names) as clean:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    with intervene(tiny_llama, [Ablation(unit_direction, layers=(2,), skip_template_prefix=False)]), capture(tiny_llama, names) as acts:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    for name in names:
        if name.startswith(("blocks.0.", "blocks.1.")):
            assert torch.equal(acts[name], clean[name]), name
    assert (acts[hook_name(2, "resid_pre")] @ unit_direction).abs().max() < 1e-5
    assert not torch.equal(acts[hook_name(3, "resid_pre")], clean[hook_name(3, "resid_pre")])


def test_ablating_twice_equals_once(tiny_llama, unit_direction, batch_of, logits_of):
    batch = batch_of(tiny_llama)
    with intervene(tiny_llama, [Ablation(unit_direction)]):
        once = logits_of(tiny_llama, batch)
    with intervene(tiny_llama, [Ablation(unit_direction), Ablation(unit_direction.clone())]):
        twice = logits_of(tiny_llama, batch)
    assert (once - twice).abs().max() <= 1e-6
    assert (once - logits_of(tiny_llama, batch)).abs().max() > 1e-3  # the ablation did something


def test_addition_with_zero_coeff_equals_no_hook(tiny_llama, unit_direction, batch_of, logits_of):
    batch = batch_of(tiny_llama)
    clean = logits_of(tiny_llama, batch)
    with intervene(tiny_llama, [Addition(unit_direction, 1, coeff=0.0)]):
        assert torch.equal(logits_of(tiny_llama, batch), clean)


def test_addition_shifts_the_residual_by_exactly_c_d(tiny_llama, unit_direction, batch_of, capture):
    batch, layer, c = batch_of(tiny_llama), 2, 3.5
    site = hook_name(layer, "resid_pre")
    with capture(tiny_llama, [site]) as clean:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    with intervene(tiny_llama, [Addition(unit_direction, layer, coeff=c)]), capture(tiny_llama, [site]) as acts:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    shift = acts[site] - clean[site]
    torch.testing.assert_close(shift, (c * unit_direction).expand_as(shift), atol=1e-5, rtol=0)


def test_ablate_then_add_sets_the_projection_to_c(tiny_llama, unit_direction, batch_of, capture):
    batch, layer, c = batch_of(tiny_llama), 1, -2.0
    site = hook_name(layer, "resid_pre")
    steps = [Ablation(unit_direction, layers=(layer,), sites=("resid_pre",), skip_template_prefix=False),
             Addition(unit_direction, layer, c)]
    with intervene(tiny_llama, steps), capture(tiny_llama, [site]) as acts:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    proj = acts[site] @ unit_direction
    torch.testing.assert_close(proj, torch.full_like(proj, c), atol=1e-5, rtol=0)


def test_hooks_are_removed_on_exit_and_on_error(tiny_llama, unit_direction, hook_count, batch_of, logits_of):
    batch = batch_of(tiny_llama)
    clean = logits_of(tiny_llama, batch)
    before = hook_count(tiny_llama)
    with intervene(tiny_llama, [Ablation(unit_direction), Addition(unit_direction, 0, 1.0)]):
        assert hook_count(tiny_llama) > before
    assert hook_count(tiny_llama) == before
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(tiny_llama, [Ablation(unit_direction)]):
            raise RuntimeError("boom")
    assert hook_count(tiny_llama) == before
    assert torch.equal(logits_of(tiny_llama, batch), clean)


def test_nested_intervene_removes_only_its_own_hooks(tiny_llama, unit_direction, hook_count, batch_of, capture):
    batch = batch_of(tiny_llama)
    before = hook_count(tiny_llama)
    with intervene(tiny_llama, [Ablation(unit_direction, skip_template_prefix=False)]):
        outer = hook_count(tiny_llama)
        with intervene(tiny_llama, [Addition(unit_direction, 1, 5.0)]):
            assert hook_count(tiny_llama) == outer + 1
        assert hook_count(tiny_llama) == outer
        with capture(tiny_llama, [hook_name(1, "resid_pre")]) as acts:  # the outer ablation still applies
            tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
        assert (acts[hook_name(1, "resid_pre")] @ unit_direction).abs().max() < 1e-5
    assert hook_count(tiny_llama) == before


@pytest.mark.parametrize("make", [
    lambda d: Ablation(d, layers=(1,), sites=("resid_pre",), positions=(-1,)),
    lambda d: Addition(d, 1, coeff=4.0, positions=(-1,)),
], ids=["ablation", "addition"])
def test_positions_only_change_the_chosen_positions(tiny_llama, unit_direction, batch_of, capture, make):
    batch = batch_of(tiny_llama, ["one prompt only"])
    site = hook_name(1, "resid_pre")
    with capture(tiny_llama, [site]) as clean:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    with intervene(tiny_llama, [make(unit_direction)]), capture(tiny_llama, [site]) as acts:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    assert torch.equal(acts[site][:, :-1], clean[site][:, :-1])
    assert (acts[site][:, -1] - clean[site][:, -1]).abs().max() > 1e-3


def test_wrong_width_is_refused_with_d_model(tiny_llama):
    for intervention in (Ablation(torch.randn(32)), Addition(torch.randn(32), 0)):
        with pytest.raises(ValueError, match="d_model"):
            with intervene(tiny_llama, [intervention]):
                pass


def test_layer_out_of_range_is_refused(tiny_llama, unit_direction, hook_count):
    before = hook_count(tiny_llama)
    for intervention in (Ablation(unit_direction, layers=(0, tiny_llama.n_layers)), Addition(unit_direction, -1)):
        with pytest.raises(ValueError, match="out of range"):
            with intervene(tiny_llama, [intervention]):
                pass
    assert hook_count(tiny_llama) == before


def test_nan_direction_is_refused(unit_direction):
    bad = unit_direction.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Ablation(bad)
    with pytest.raises(ValueError, match="NaN"):
        Addition(bad, 0)
    with pytest.raises(ValueError, match="finite"):
        Addition(unit_direction, 0, coeff=float("inf"))


def test_orthonormal_basis_spans_the_input_and_refuses_dependent_rows():
    vectors = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    q = orthonormal_basis(vectors)
    torch.testing.assert_close(q @ q.T, torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(vectors - (vectors @ q.T) @ q, torch.zeros_like(vectors), atol=1e-5, rtol=0)
    assert (q[0] @ vectors[0]) > 0  # first row keeps the first vector's sign
    dependent = torch.stack([vectors[0], vectors[1], 2 * vectors[0] - vectors[1]])
    with pytest.raises(ValueError, match="span only 2"):
        orthonormal_basis(dependent)


def test_ablation_works_on_the_native_bridge(tiny_native, batch_of, capture):
    d = torch.randn(tiny_native.d_model, generator=torch.Generator().manual_seed(1))
    names = [hook_name(layer, "resid_pre") for layer in range(tiny_native.n_layers)]
    batch = batch_of(tiny_native)
    with intervene(tiny_native, [Ablation(d, skip_template_prefix=False)]), capture(tiny_native, names) as acts:
        tiny_native.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    for name in names:
        assert (acts[name] @ (d / d.norm())).abs().max() < 1e-5, name


def test_default_ablation_leaves_the_template_prefix_alone(tiny_llama, unit_direction, capture):
    """The chat template's prefix (same tokens, same activations in every prompt; the attention sink)
    keeps its activations; every later position loses the direction. Left padding and batching agree."""
    from failclosed_interp.chat import template_prefix_ids, tokenize_prompts

    n = len(template_prefix_ids(tiny_llama.tokenizer))
    assert n > 0
    names = [hook_name(layer, site) for layer in range(tiny_llama.n_layers) for site in ("resid_pre", "mlp_out")]
    batch = tokenize_prompts(tiny_llama, ["hi", "a much longer prompt than the first one"])  # row 0 is left-padded
    with capture(tiny_llama, names) as clean:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    with intervene(tiny_llama, [Ablation(unit_direction)]), capture(tiny_llama, names) as acts:
        tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    starts = (batch.attention_mask == 0).sum(1).tolist()
    assert starts[0] > 0 and starts[1] == 0
    for name in names:
        for row, start in enumerate(starts):
            prefix, rest = slice(start, start + n), slice(start + n, None)
            if name.endswith("resid_pre") and name.startswith("blocks.0."):
                torch.testing.assert_close(acts[name][row, prefix], clean[name][row, prefix], rtol=0, atol=0)
            assert (acts[name][row, rest] @ unit_direction).abs().max() < 1e-5, name
            assert (clean[name][row, rest] @ unit_direction).abs().max() > 1e-3  # not vacuous
    # the prefix's downstream activations are untouched too: it only attends to itself
    torch.testing.assert_close(acts[names[-2]][1, :n], clean[names[-2]][1, :n], rtol=0, atol=0)


def test_text_without_the_template_prefix_is_ablated_everywhere(tiny_llama, unit_direction, capture):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]])
    name = hook_name(1, "resid_pre")
    with intervene(tiny_llama, [Ablation(unit_direction)]), capture(tiny_llama, [name]) as acts:
        tiny_llama.bridge(ids)
    assert (acts[name] @ unit_direction).abs().max() < 1e-5
