"""RDO on a tiny Llama with a planted refusal mechanism: from a random start it finds the planted
direction, from a corrupted one it moves toward it; its loss is the authors' (per-example means, the
retain KL summed over target tokens) whatever the micro-batch; it returns the lowest-loss vector, keeps
its constraints, and never touches the weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _planted import COMPLY_TEXT, HARMFUL, HARMFUL_VAL, HARMLESS, REFUSAL_TEXT, compliant_planted_model, hf_params
from failclosed_interp.chat import tokenize_prompts
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.generation import GenerationConfig, generate
from failclosed_interp.interventions import Ablation, Addition, hook_name, intervene
from failclosed_interp.rdo import NoNewDirection, RDOConfig, RDOTargets, _descend, _lowest_loss, optimize_direction, rdo_targets, retain_kl
from failclosed_interp.scoring import refusal_scores

CONFIG = RDOConfig(steps=30, batch_size=4, micro_batch_size=4, target_tokens=8, start="init")


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
    return optimize_direction(planted[0], corrupted, targets, CONFIG, progress=False)


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


def test_targets_are_generated_under_the_reference_intervention(planted, corrupted, targets):
    model, _, _ = planted
    assert all(r.startswith(REFUSAL_TEXT) for r in generate(model, HARMFUL, GenerationConfig(max_new_tokens=8), progress=False))
    assert [e.prompt for e in targets.ablation] == HARMFUL and [e.prompt for e in targets.addition] == HARMLESS
    assert all(e.answer.startswith(COMPLY_TEXT) for e in targets.ablation)  # refusal removed by the init ablation
    assert all(e.answer.startswith(REFUSAL_TEXT) for e in targets.addition)  # refusal induced by the init addition
    clean = generate(model, HARMLESS, GenerationConfig(max_new_tokens=8), progress=False)
    assert [e.answer for e in targets.retain] == clean and all(a.startswith(COMPLY_TEXT) for a in clean)
    assert all(len(e.answer) == 8 and not e.complete for e in targets.ablation)  # cut by target_tokens
    assert RDOTargets.from_dict(json.loads(json.dumps(targets.to_dict()))) == targets


def test_the_filter_keeps_prompts_by_the_sign_of_their_refusal_score_and_pairs_them(corrupted):
    model, _, refusal = compliant_planted_model()
    with torch.no_grad():  # a surer refusal: harmful prompts get p(refusal) > 1/2
        hf_params(model)["lm_head.weight"][refusal] *= 3
    mixed_harmful = [*HARMFUL[:3], *HARMLESS[:2]]  # two "harmful" prompts the model answers: score < 0
    mixed_harmless = [*HARMLESS[2:], HARMFUL[5]]  # one "harmless" prompt it refuses: score > 0
    assert (refusal_scores(model, HARMFUL, [refusal]) > 0).all() and (refusal_scores(model, HARMLESS, [refusal]) < 0).all()
    kept = rdo_targets(model, mixed_harmful, mixed_harmless, corrupted, CONFIG, refusal_tokens=[refusal], progress=False)
    assert [e.prompt for e in kept.ablation] == HARMFUL[:3]
    assert [e.prompt for e in kept.addition] == [e.prompt for e in kept.retain] == HARMLESS[2:5]  # cut to 3 pairs
    assert "3 of 5 harmful" in kept.filtered and "6 of 7 harmless" in kept.filtered
    with pytest.raises(ValueError, match="0 harmful and 8 harmless are left"):
        rdo_targets(model, HARMLESS[:2], HARMLESS, corrupted, CONFIG, refusal_tokens=[refusal], progress=False)


def test_the_addition_target_is_cut_at_its_first_sentence():
    from failclosed_interp.rdo_targets import _first_sentence
    from failclosed_interp.training.data import Example

    cut = _first_sentence(Example("q", "I can't help with that. It is illegal. Ask me", "utility", complete=False))
    assert cut.answer == "I can't help with that" and not cut.complete
    whole = Example("q", "No full stop here", "utility")
    assert _first_sentence(whole) == whole


def test_retain_term_is_the_kl_of_ablated_from_clean_summed_over_target_tokens():
    """By hand: sum over the positions that predict target tokens of sum_v p_abl(v) log(p_abl(v) / p_clean(v)),
    which is torch's kl_div(log_softmax(clean), softmax(ablated)) as the authors call it, per example."""
    g = torch.Generator().manual_seed(0)
    clean, ablated = torch.randn(2, 6, 5, generator=g), torch.randn(2, 6, 5, generator=g)
    labels = torch.full((2, 6), -100)
    labels[0, 2:5] = torch.tensor([1, 2, 3])  # row 0: target tokens at 2..4, predicted from positions 1..3
    labels[1, 4:6] = torch.tensor([0, 4])  # row 1: predicted from positions 3..4
    by_hand = []
    for row, positions in ((0, [1, 2, 3]), (1, [3, 4])):
        total = 0.0
        for t in positions:
            p = torch.softmax(ablated[row, t].double(), -1)
            q = torch.softmax(clean[row, t].double(), -1)
            total += float(sum(p[v] * math.log(p[v] / q[v]) for v in range(5)))
        by_hand.append(total)
    got = retain_kl(clean, ablated, labels)
    assert got.tolist() == pytest.approx(by_hand, rel=1e-4)
    authors = torch.nn.functional.kl_div(torch.log_softmax(clean[0, 1:4].double(), -1),
                                         torch.softmax(ablated[0, 1:4].double(), -1), reduction="sum")
    assert float(got[0]) == pytest.approx(float(authors), rel=1e-4)
    assert float(retain_kl(clean, clean, labels).abs().max()) < 1e-6


def test_the_step_loss_is_the_same_whatever_the_micro_batch(planted, corrupted, targets):
    """Examples of unequal length in one padded forward give the per-example means the authors accumulate."""
    from failclosed_interp.rdo import _frozen, _Objective

    model = planted[0]
    results = []
    for micro in (1, 3, 8):
        config = RDOConfig(**{**CONFIG.to_dict(), "micro_batch_size": micro})
        v = torch.nn.Parameter(corrupted.vector.clone())
        with _frozen(model.bridge):
            loss, terms = _Objective(model, targets, corrupted, config, None).step(v, list(range(8)))
        results.append((loss, terms, v.grad.clone()))
    for loss, terms, grad in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        assert terms == pytest.approx(results[0][1], rel=1e-5)
        torch.testing.assert_close(grad, results[0][2], rtol=1e-4, atol=1e-6)
    assert results[0][1]["retain"] > 0 and results[0][2].norm() > 1e-3  # not vacuous


def test_the_lowest_loss_vector_is_returned_and_patience_lowers_the_lr_then_stops():
    """A loss that rises at every step: the start is the best vector; 5 steps without a new lowest loss
    divide the lr by 10, twice, and the next 5 stop the descent."""
    u = torch.nn.functional.normalize(torch.arange(1.0, 9.0), dim=0)
    lrs = []

    def rising(v, batch):
        (-(v @ u)).backward()
        lrs.append(None)
        return float(len(lrs)), {"ablation": float(len(lrs))}

    config = RDOConfig(steps=100, patience=5, lr_reductions=2)
    start = torch.nn.functional.normalize(torch.ones(8), dim=0)
    visited = _descend(start, [[0]] * 100, rising, config, None, progress=False)
    assert len(visited) == 1 + 5 * 3  # stops after patience runs out the third time
    assert torch.equal(_lowest_loss(visited, None, 1e-5).vector, start)
    assert all(float(s.vector.norm()) == pytest.approx(1.0, abs=1e-6) for s in visited)
    assert _cos(visited[-1].vector, u) > _cos(start, u)  # it moved (the gradient pointed somewhere)
    # with an earlier direction to differ from, the lowest-loss vector outside its span wins
    earlier = DirectionSet((Direction(start, layer=0),))
    assert _lowest_loss(visited, earlier, 1e-5).step == 1
    with pytest.raises(NoNewDirection, match="within the span"):
        _lowest_loss(visited[:1], earlier, 1e-5)


def test_rdo_from_a_random_start_finds_the_planted_direction(planted, corrupted, targets):
    model, planted_dir, refusal = planted
    config = RDOConfig(steps=40, batch_size=4, micro_batch_size=4, target_tokens=8, lr=5e-2)
    found = optimize_direction(model, corrupted, targets, config, progress=False)
    assert abs(_cos(corrupted.vector, planted_dir)) < 1  # targets came from the corrupted reference
    assert _cos(found.vector, planted_dir) > 0.9
    assert "random start" in found.fitted_on
    clean, ablated = (float(refusal_scores(model, HARMFUL_VAL, [refusal], ivs).mean())
                      for ivs in ([], [DirectionSet((found,)).ablation(skip_template_prefix=False)]))
    assert ablated < clean - 2


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
    assert {"loss", "loss_ablation", "loss_addition", "loss_retain", "first_loss", "best_step", "cosine_to_init"} <= s.keys()
    assert "loss_independence" not in s  # weight 0: not computed
    assert s["loss"] < s["first_loss"]
    assert s["loss"] == pytest.approx(s["loss_ablation"] + 0.2 * s["loss_addition"] + s["loss_retain"], rel=1e-6)
    assert s["cosine_to_init"] == pytest.approx(_cos(optimised.vector, corrupted.vector), abs=1e-6)
    assert "init start" in optimised.fitted_on


def test_same_seed_same_direction(planted, corrupted, targets):
    model, short = planted[0], RDOConfig(**{**CONFIG.to_dict(), "steps": 5})
    first, again, other = (
        optimize_direction(model, corrupted, targets, config, progress=False)
        for config in (short, short, RDOConfig(**{**short.to_dict(), "seed": 1}))
    )
    assert torch.equal(again.vector, first.vector) and again.scores == first.scores
    assert not torch.equal(other.vector, first.vector)  # the seed drives the batches


def test_a_killed_optimisation_resumes_from_its_logged_steps_and_ends_with_the_same_vector(
        planted, corrupted, targets, tmp_path, monkeypatch):
    import failclosed_interp.rdo as rdo_module

    model, config, log = planted[0], RDOConfig(**{**CONFIG.to_dict(), "steps": 8}), tmp_path / "search_progress.json"
    whole = optimize_direction(model, corrupted, targets, config, progress=False)
    real_step, steps = rdo_module._Objective.step, []

    class Killed(Exception):
        pass

    def counted(kill_at=None):
        def step(self, v, idx):
            steps.append(1)
            if len(steps) == kill_at:
                raise Killed
            return real_step(self, v, idx)
        monkeypatch.setattr(rdo_module._Objective, "step", step)

    counted(kill_at=4)
    with pytest.raises(Killed):
        optimize_direction(model, corrupted, targets, config, progress=False, log_file=log)
    steps.clear()
    counted()
    resumed = optimize_direction(model, corrupted, targets, config, progress=False, log_file=log)
    assert torch.equal(resumed.vector, whole.vector) and resumed.scores == whole.scores
    assert len(steps) == whole.scores["steps_run"] - 3  # the 3 steps logged before the kill are replayed
    steps.clear()
    other_seed = RDOConfig(**{**config.to_dict(), "seed": 1})  # another run: its own steps, not this log's
    optimize_direction(model, corrupted, targets, other_seed, progress=False, log_file=log)
    assert len(steps) > 0


def test_orthogonality_constraint_holds(planted, corrupted, targets):
    model, planted_dir, _ = planted
    # Forced away from the planted direction: the objective pulls toward it, the constraint must win.
    away = optimize_direction(model, corrupted, targets, CONFIG, progress=False,
                              orthogonal_to=DirectionSet((Direction(planted_dir, layer=1),)))
    assert abs(float(away.vector @ planted_dir)) < 1e-5
    assert float(away.vector.norm()) == pytest.approx(1.0, abs=1e-6)
    # Orthogonal to two unrelated directions: still finds its way toward the planted one.
    others = torch.randn(2, model.d_model, generator=torch.Generator().manual_seed(11))
    others -= torch.outer(others @ planted_dir, planted_dir)
    constraint = DirectionSet(tuple(Direction(o, layer=0) for o in others))
    kept = optimize_direction(model, corrupted, targets, CONFIG, progress=False,
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
    independent = optimize_direction(model, corrupted, targets, config, progress=False,
                                     independent_of=DirectionSet((Direction(distractor, layer=1),)))
    assert cosine_shift(optimised) > 0.01  # without the penalty the dependence is real
    assert cosine_shift(independent) < 0.5 * cosine_shift(optimised)
    assert independent.scores["loss_independence"] < independent.scores["first_loss_independence"]
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
        optimize_direction(model, corrupted, targets, RDOConfig(steps=3, batch_size=4), progress=False)
        assert {n: p.requires_grad for n, p in params.items()} == flags
        assert model.bridge.training and all(m.training for m in model.bridge.modules())
        assert all(torch.equal(p, before[n]) for n, p in params.items())
        assert all(p.grad is None for p in params.values())
        # Also after an error: NaN activations make the loss NaN.
        poison = [(hook_name(2, "resid_pre"), lambda x, hook=None: x * math.nan)]
        with model.bridge.hooks(fwd_hooks=poison), pytest.raises(ValueError, match="RDO loss is nan"):
            optimize_direction(model, corrupted, targets, CONFIG, progress=False)
        assert {n: p.requires_grad for n, p in params.items()} == flags
        assert model.bridge.training
    finally:
        for p in params.values():
            p.requires_grad_(False)
        model.bridge.eval()


def test_bad_inputs_raise_clear_errors(planted, corrupted, targets):
    model, planted_dir, _ = planted

    def run(init=corrupted, config=CONFIG, **kwargs):
        return optimize_direction(model, init, kwargs.pop("targets", targets), config, progress=False, **kwargs)

    with pytest.raises(ValueError, match="nonempty harmful and harmless"):
        rdo_targets(model, HARMFUL, [], corrupted)
    with pytest.raises(ValueError, match="same nonzero number"):
        RDOTargets(targets.ablation[:2], targets.addition, targets.retain)
    with pytest.raises(TypeError, match="targets"):
        run(targets=targets.to_dict())
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
    ({"micro_batch_size": 0}, "micro_batch_size must be >= 1"),
    ({"patience": 0}, "patience must be >= 1"),
    ({"lr_reductions": -1}, "lr_reductions"),
    ({"start": "dim"}, "start must be one of"),
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
