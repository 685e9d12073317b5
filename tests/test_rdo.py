"""RDO on a tiny Llama with a planted refusal mechanism: from a corrupted start it moves toward the
planted direction and removes refusal better, keeps its constraints, and never touches the weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _planted import HARMFUL, HARMFUL_VAL, HARMLESS, REFUSAL_TEXT, hf_params, planted_refusal_model
from failclosed_interp.chat import tokenize_prompts
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.generation import GenerationConfig, generate
from failclosed_interp.interventions import Ablation, Addition, hook_name, intervene
from failclosed_interp.rdo import RDOConfig, optimize_direction, rdo_targets
from failclosed_interp.scoring import refusal_scores

COMPLY_TEXT = "O"  # "OK, ..." in the character-level tokenizer
CONFIG = RDOConfig(steps=30, batch_size=4, target_tokens=8)


def compliant_planted_model():
    """The planted refusal model plus a default answer: every token embedding carries a "comply" vector
    that the LM head reads into the token "O", so harmless prompts (and harmful ones with the planted
    direction ablated) answer "OOO..." while harmful prompts answer "SSS...". Without it the model's
    non-refusal logits are near-random and greedy decoding says "S" even when refusal is mostly removed."""
    model, planted, refusal = planted_refusal_model()
    params = hf_params(model)
    # Stay clear of what the planted layers read and write: marker (layer 0), planted, distractor (layer 1).
    used = torch.stack([params["model.layers.0.self_attn.v_proj.weight"][0], planted,
                        params["model.layers.1.self_attn.o_proj.weight"][:, 0]])
    q, _ = torch.linalg.qr(used.T)
    comply = torch.randn(model.d_model, generator=torch.Generator().manual_seed(7))
    comply -= q @ (q.T @ comply)
    comply /= comply.norm()
    with torch.no_grad():
        params["model.embed_tokens.weight"].add_(2.0 * comply)
        params["lm_head.weight"][model.tokenizer.convert_tokens_to_ids(COMPLY_TEXT)] = 0.5 * comply
    return model, planted, refusal


@pytest.fixture(scope="module")
def planted():
    return compliant_planted_model()


@pytest.fixture(scope="module")
def corrupted(planted):
    """The planted direction plus a random orthogonal half (cosine 0.89), at the planted steering strength."""
    model, planted_dir, _ = planted
    noise = torch.randn(model.d_model, generator=torch.Generator().manual_seed(5))
    noise -= (noise @ planted_dir) * planted_dir
    vector = planted_dir + 0.5 * noise / noise.norm()
    return Direction(vector, layer=1, position=-1, norm=4.0, fitted_on="test")


@pytest.fixture(scope="module")
def targets(planted, corrupted):
    return rdo_targets(planted[0], HARMFUL, HARMLESS, corrupted, CONFIG, progress=False)


@pytest.fixture(scope="module")
def optimised(planted, corrupted, targets):
    return optimize_direction(planted[0], HARMFUL, HARMLESS, corrupted, CONFIG, targets=targets, progress=False)


def _cos(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1))


def _distractor(model) -> torch.Tensor:
    d = hf_params(model)["model.layers.1.self_attn.o_proj.weight"][:, 0].detach().clone()
    return d / d.norm()


def test_interventions_are_differentiable_in_their_direction(tiny_llama, unit_direction, batch_of):
    batch, u = batch_of(tiny_llama), torch.randn(64, generator=torch.Generator().manual_seed(1))

    def loss(v):
        with intervene(tiny_llama, [Ablation(v[None]), Addition(v, 1, coeff=3.0)]):
            logits = tiny_llama.bridge(batch.input_ids, attention_mask=batch.attention_mask)
        return logits.double().logsumexp(-1).mean()

    v = unit_direction.clone().requires_grad_(True)
    loss(v).backward()
    eps = 1e-2
    with torch.no_grad():
        numeric = (loss(unit_direction + eps * u) - loss(unit_direction - eps * u)) / (2 * eps)
    assert float(v.grad @ u) == pytest.approx(float(numeric), rel=2e-2, abs=1e-5)
    assert float(v.grad.norm()) > 1e-3


def test_targets_are_generated_under_the_init_intervention(planted, corrupted, targets):
    model, _, _ = planted
    assert all(r.startswith(REFUSAL_TEXT) for r in generate(model, HARMFUL, GenerationConfig(max_new_tokens=8), progress=False))
    assert [e.prompt for e in targets.ablation] == HARMFUL and [e.prompt for e in targets.addition] == HARMLESS
    assert all(e.answer.startswith(COMPLY_TEXT) for e in targets.ablation)  # refusal removed by the init ablation
    assert all(e.answer.startswith(REFUSAL_TEXT) for e in targets.addition)  # refusal induced by the init addition
    clean = generate(model, HARMLESS, GenerationConfig(max_new_tokens=8), progress=False)
    assert [e.answer for e in targets.retain] == clean and all(a.startswith(COMPLY_TEXT) for a in clean)
    assert all(len(e.answer) == 8 and not e.complete for e in targets.ablation)  # cut by target_tokens
    json.dumps(targets.to_dict())


def test_rdo_moves_a_corrupted_init_toward_the_planted_direction(planted, corrupted, optimised):
    model, planted_dir, refusal = planted
    assert _cos(corrupted.vector, planted_dir) == pytest.approx(0.894, abs=1e-3)
    assert _cos(optimised.vector, planted_dir) > 0.97
    clean, from_init, from_rdo = (
        float(refusal_scores(model, HARMFUL_VAL, [refusal], ivs).mean())
        for ivs in ([], [DirectionSet((corrupted,)).ablation()], [DirectionSet((optimised,)).ablation()])
    )
    assert clean > 0 and from_init < clean
    assert from_rdo < from_init - 1.5  # held-out harmful prompts refuse much less with the RDO direction ablated
    assert float(optimised.vector.norm()) == pytest.approx(1.0, abs=1e-6)
    assert (optimised.method, optimised.layer, optimised.position, optimised.site) == ("rdo", 1, -1, "resid_pre")
    assert optimised.norm == corrupted.norm  # the steering strength stays the init's
    s = optimised.scores
    assert {"loss", "loss_ablation", "loss_addition", "loss_retain", "init_loss", "cosine_to_init"} <= s.keys()
    assert "loss_independence" not in s  # weight 0: not computed
    assert s["loss"] < s["init_loss"] and s["loss_ablation"] < s["init_loss_ablation"]
    assert s["loss"] == pytest.approx(s["loss_ablation"] + 0.2 * s["loss_addition"] + s["loss_retain"], rel=1e-6)
    assert s["cosine_to_init"] == pytest.approx(_cos(optimised.vector, corrupted.vector), abs=1e-6)
    assert "RDO (30 steps)" in optimised.fitted_on


def test_same_seed_same_direction(planted, corrupted, targets):
    model, short = planted[0], RDOConfig(**{**CONFIG.to_dict(), "steps": 5})
    first, again, other = (
        optimize_direction(model, HARMFUL, HARMLESS, corrupted, config, targets=targets, progress=False)
        for config in (short, short, RDOConfig(**{**short.to_dict(), "seed": 1}))
    )
    assert torch.equal(again.vector, first.vector) and again.scores == first.scores
    assert not torch.equal(other.vector, first.vector)  # the seed drives the batches


def test_orthogonality_constraint_holds(planted, corrupted, targets):
    model, planted_dir, _ = planted
    # Forced away from the planted direction: the objective pulls toward it, the constraint must win.
    away = optimize_direction(model, HARMFUL, HARMLESS, corrupted, CONFIG, targets=targets, progress=False,
                              orthogonal_to=DirectionSet((Direction(planted_dir, layer=1),)))
    assert abs(float(away.vector @ planted_dir)) < 1e-5
    assert float(away.vector.norm()) == pytest.approx(1.0, abs=1e-6)
    # Orthogonal to two unrelated directions: still finds its way toward the planted one.
    others = torch.randn(2, model.d_model, generator=torch.Generator().manual_seed(11))
    others -= torch.outer(others @ planted_dir, planted_dir)
    constraint = DirectionSet(tuple(Direction(o, layer=0) for o in others))
    kept = optimize_direction(model, HARMFUL, HARMLESS, corrupted, CONFIG, targets=targets, progress=False,
                              orthogonal_to=constraint)
    assert (kept.vector @ constraint.matrix().T).abs().max() < 1e-5
    assert _cos(kept.vector, planted_dir) > _cos(corrupted.vector, planted_dir) + 0.05
    assert "orthogonal to 2 direction(s)" in kept.fitted_on


def test_independence_penalty_reduces_representational_dependence(planted, corrupted, targets, optimised, capture):
    """The distractor is computed from the planted direction, so ablating a near-planted direction
    changes the activations' cosine with the distractor; the penalty trades some of that away."""
    model, planted_dir, _ = planted
    distractor = _distractor(model)
    names = [hook_name(layer, "resid_pre") for layer in range(model.n_layers)]

    def cosine_shift(direction: Direction) -> float:
        batch = tokenize_prompts(model, HARMFUL)
        with torch.no_grad(), capture(model, names) as clean:
            model.bridge(batch.input_ids, attention_mask=batch.attention_mask)
        with torch.no_grad(), intervene(model, [DirectionSet((direction,)).ablation()]), capture(model, names) as ablated:
            model.bridge(batch.input_ids, attention_mask=batch.attention_mask)
        cos = torch.nn.functional.cosine_similarity
        return sum(float((cos(ablated[n][:, -1], distractor, dim=-1) - cos(clean[n][:, -1], distractor, dim=-1)).square().mean())
                   for n in names) / len(names)

    config = RDOConfig(**{**CONFIG.to_dict(), "independence_weight": 20.0})
    independent = optimize_direction(model, HARMFUL, HARMLESS, corrupted, config, targets=targets, progress=False,
                                     independent_of=DirectionSet((Direction(distractor, layer=1),)))
    assert cosine_shift(optimised) > 0.01  # without the penalty the dependence is real
    assert cosine_shift(independent) < 0.5 * cosine_shift(optimised)
    assert independent.scores["loss_independence"] < independent.scores["init_loss_independence"]
    assert "independent of 1 direction(s)" in independent.fitted_on


def test_weights_stay_frozen_and_flags_are_restored(planted, corrupted, targets):
    model = planted[0]
    params = dict(model.bridge.named_parameters())
    flags = {name: "lm_head" in name or "layers.3" in name for name in params}  # a LoRA-like mix of trainable ones
    before = {name: p.detach().clone() for name, p in params.items()}
    try:
        for name, p in params.items():
            p.requires_grad_(flags[name])
        model.bridge.train()
        optimize_direction(model, HARMFUL, HARMLESS, corrupted, RDOConfig(steps=3, batch_size=4), targets=targets, progress=False)
        assert {n: p.requires_grad for n, p in params.items()} == flags
        assert model.bridge.training and all(m.training for m in model.bridge.modules())
        assert all(torch.equal(p, before[n]) for n, p in params.items())
        assert all(p.grad is None for p in params.values())
        # Also after an error: NaN activations make the loss NaN.
        poison = [(hook_name(2, "resid_pre"), lambda x, hook=None: x * math.nan)]
        with model.bridge.hooks(fwd_hooks=poison), pytest.raises(ValueError, match="RDO loss is nan"):
            optimize_direction(model, HARMFUL, HARMLESS, corrupted, CONFIG, targets=targets, progress=False)
        assert {n: p.requires_grad for n, p in params.items()} == flags
        assert model.bridge.training
    finally:
        for p in params.values():
            p.requires_grad_(False)
        model.bridge.eval()


def test_bad_inputs_raise_clear_errors(planted, corrupted, targets):
    model, planted_dir, _ = planted

    def run(harmful=HARMFUL, harmless=HARMLESS, init=corrupted, config=CONFIG, **kwargs):
        return optimize_direction(model, harmful, harmless, init, config, progress=False, **{"targets": targets, **kwargs})

    with pytest.raises(ValueError, match="nonempty harmful and harmless"):
        run(harmful=[])
    with pytest.raises(ValueError, match="nonempty harmful and harmless"):
        rdo_targets(model, HARMFUL, [], corrupted)
    with pytest.raises(ValueError, match="d_model=32 but the model"):
        run(init=Direction(torch.ones(32), layer=1))
    with pytest.raises(ValueError, match="layer 9"):
        run(init=Direction(planted_dir, layer=9))
    with pytest.raises(TypeError, match="init"):  # our message, or beartype's under pytest
        run(init=planted_dir)
    with pytest.raises(ValueError, match="orthogonal_to has d_model=32"):
        run(orthogonal_to=DirectionSet((Direction(torch.ones(32), layer=1),)))
    with pytest.raises(TypeError, match="orthogonal_to"):
        run(orthogonal_to=[planted_dir])
    with pytest.raises(ValueError, match="inside the span of orthogonal_to"):
        run(init=Direction(planted_dir, layer=1), orthogonal_to=DirectionSet((Direction(planted_dir, layer=1),)))
    with pytest.raises(ValueError, match="independent_of"):
        run(config=RDOConfig(independence_weight=1.0))
    with pytest.raises(ValueError, match="independence_weight > 0"):
        run(independent_of=DirectionSet((Direction(planted_dir, layer=1),)))
    with pytest.raises(ValueError, match="independence_layers .* out of range"):
        run(config=RDOConfig(independence_weight=1.0, independence_layers=(7,)),
            independent_of=DirectionSet((Direction(planted_dir, layer=1),)))
    with pytest.raises(ValueError, match="targets are for 8 harmful"):
        run(harmful=HARMFUL[:3])
    assert float(run(config=RDOConfig(steps=1), orthogonal_to=DirectionSet()).vector.norm()) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"lr": 0.0}, "lr must be"),
    ({"lr": math.nan}, "lr must be"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"target_tokens": 0}, "target_tokens must be >= 1"),
    ({"addition_weight": -1.0}, "loss weights must be finite and >= 0"),
    ({"ablation_weight": 0.0, "addition_weight": 0.0, "retain_weight": 0.0}, "nothing to optimise"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"independence_layers": (1, 1)}, "distinct"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RDOConfig(**kwargs)


def test_config_round_trips_through_json():
    config = RDOConfig(steps=5, independence_weight=0.5, independence_layers=(2, 1))
    assert RDOConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert RDOConfig().weights() == {"ablation": 1.0, "addition": 0.2, "retain": 1.0, "independence": 0.0}
    with pytest.raises(ValueError, match="unknown RDOConfig keys"):
        RDOConfig.from_dict({"step": 3})
