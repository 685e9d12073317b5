import json
import math

import pytest
import torch

from _planted import HARMFUL, HARMFUL_VAL, HARMLESS, HARMLESS_VAL, planted_refusal_model
import failclosed_interp.dim as dim_module
from failclosed_interp.activations import mean_activations
from failclosed_interp.chat import tokenize_prompts
from failclosed_interp.dim import (
    DirectionConfig, FallbackRules, NoDirectionPassed, dim_candidates, save_selection, select_direction,
)
from failclosed_interp.search import find_direction
from failclosed_interp.directions import DirectionSet, load_directions
from failclosed_interp.interventions import Ablation, hook_name, intervene
from failclosed_interp.models import load_model
from failclosed_interp.scoring import last_token_logits, refusal_scores

PROMPTS = ["hi", "how do I bake bread today", "name a colour", "what is the capital of France?", "ok"]


@pytest.fixture(scope="module")
def planted():
    return planted_refusal_model()


@pytest.fixture(scope="module")
def candidates(planted):
    model, _, _ = planted
    return dim_candidates(model, HARMFUL, HARMLESS, DirectionConfig(batch_size=3))


@pytest.fixture(scope="module")
def selection(planted, candidates):
    model, _, refusal = planted
    return select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal])


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1))


# --- activations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-llama", "tiny-native"])
def test_mean_activations_match_unpadded_run_with_cache(name):
    model = load_model(name)
    positions = (-3, -1)
    means = mean_activations(model, PROMPTS, positions=positions, layers=[0, 1], batch_size=2)
    assert means.dtype == torch.float64 and means.shape == (2, 2, model.d_model)
    expected = torch.zeros_like(means)
    for prompt in PROMPTS:  # one prompt at a time: no padding at all
        batch = tokenize_prompts(model, [prompt])
        _, cache = model.bridge.run_with_cache(batch.input_ids, names_filter=lambda n: n.endswith("hook_resid_pre"))
        for i, layer in enumerate((0, 1)):
            expected[i] += cache[f"blocks.{layer}.hook_resid_pre"][0, list(positions)].double() / len(PROMPTS)
    assert torch.allclose(means, expected, atol=1e-6, rtol=0)


def test_mean_activations_see_the_interventions(planted):
    model, planted_dir, _ = planted
    clean = mean_activations(model, HARMFUL, positions=(-1,))
    ablated = mean_activations(model, HARMFUL, positions=(-1,), interventions=[Ablation(planted_dir[None])])
    assert (clean[1:, 0] @ planted_dir.double()).abs().min() > 1.0
    assert (ablated[:, 0] @ planted_dir.double()).abs().max() < 1e-5  # the capture runs after the ablation


def test_mean_activations_reject_bad_input():
    model = load_model("tiny-llama")
    poison = [(hook_name(2, "resid_pre"), lambda x, hook=None: x * math.nan)]  # NaN from layer 2 on
    with model.bridge.hooks(fwd_hooks=poison), pytest.raises(ValueError, match=r"layer\(s\) \[2, 3\]"):
        mean_activations(model, PROMPTS, positions=(-1,))
    with pytest.raises(ValueError, match="empty"):
        mean_activations(model, [], positions=(-1,))
    with pytest.raises(ValueError, match="negative"):
        mean_activations(model, PROMPTS, positions=(0,))
    with pytest.raises(ValueError, match="past the start"):
        mean_activations(model, PROMPTS, positions=(-200,))


def test_last_token_logits_hf_path_equals_bridge_path(planted):
    model, planted_dir, _ = planted
    ablation = [Ablation(planted_dir[None])]
    fast = last_token_logits(model, HARMFUL_VAL, ablation, batch_size=3)
    with torch.no_grad(), intervene(model, ablation):
        batch = tokenize_prompts(model, HARMFUL_VAL)
        slow = model.bridge(batch.input_ids, attention_mask=batch.attention_mask)[:, -1].float()
    assert torch.allclose(fast, slow, atol=1e-5)
    assert not torch.allclose(fast, last_token_logits(model, HARMFUL_VAL), atol=1e-2)  # the hooks did fire


# --- DIM candidates ------------------------------------------------------------------------------

def test_planted_direction_is_recovered(planted, candidates):
    _, planted_dir, _ = planted
    assert candidates.shape == (4, 2, 64) and candidates.dtype == torch.float32
    assert torch.count_nonzero(candidates[0]) == 0  # layer 0: both sets end in the same template tokens
    for i in range(2):
        assert _cos(candidates[1, i], planted_dir) > 0.99  # written by layer 0's attention
        assert _cos(candidates[2, i], planted_dir) < 0.9  # the distractor dominates from layer 2 on


def test_candidates_with_a_direction_already_ablated(planted, candidates):
    model, planted_dir, _ = planted
    again = dim_candidates(model, HARMFUL, HARMLESS, interventions=[Ablation(planted_dir[None])])
    assert again[1].norm(dim=-1).max() < 1e-4 < candidates[1].norm(dim=-1).min()


# --- selection -----------------------------------------------------------------------------------

def test_selection_picks_the_planted_mechanism(planted, selection):
    model, planted_dir, refusal = planted
    # The planted vector sits at every position after a marker, so any post-instruction position may win.
    assert selection.layer == 1 and selection.position in selection.positions
    assert _cos(selection.direction.vector, planted_dir) > 0.9
    assert selection.baseline_harmful_score > 0 > selection.baseline_harmless_score
    assert selection.direction.scores["ablation_score"] < selection.baseline_harmful_score - 3
    assert selection.direction.method == "dim" and selection.direction.layer == 1
    assert selection.direction.norm == pytest.approx(float(selection.direction.raw.norm()), rel=1e-5)
    # Excluded: layer 0 (zero difference) and layer 3 (last 20% of layers); layer 2 scored but worse.
    for scores in (selection.ablation_score, selection.induce_score, selection.kl):
        assert scores[[0, 3]].isnan().all() and not scores[1:3].isnan().any()
    assert (selection.ablation_score[2] > selection.ablation_score[1].max() + 3).all()
    # The recorded ablation score is what an independent run of the same ablation gives.
    again = refusal_scores(model, HARMFUL_VAL, [refusal], [DirectionSet((selection.direction,)).ablation()])
    assert float(again.mean()) == pytest.approx(selection.direction.scores["ablation_score"], abs=1e-4)


def test_kl_filter(planted, candidates, selection):
    model, _, refusal = planted
    tight = DirectionConfig(kl_threshold=0.05)
    assert (selection.kl[2] > 0.05).all() and (selection.kl[1] < 0.05).all()
    chosen = select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal], tight)
    assert chosen.layer == 1
    assert all("KL" in row["reason"] and row["filtered"] for row in chosen.candidates() if row["layer"] == 2)
    with pytest.raises(NoDirectionPassed, match="loosen kl_threshold") as failed:
        select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal], DirectionConfig(kl_threshold=0.0))
    rows = {(r["layer"], r["position"]): r for r in failed.value.candidates()}  # the evidence travels with the error
    assert rows[(2, -1)]["kl"] == pytest.approx(float(selection.kl[2, -1]), abs=1e-6)
    assert rows[(0, -1)]["ablation_score"] is None  # zero candidate, never scored
    with pytest.raises(ValueError, match="induce_threshold"):
        select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal], DirectionConfig(induce_threshold=50.0))
    # None switches the sufficiency rule off: only KL and the ablation score decide
    necessity_only = select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal],
                                      DirectionConfig(induce_threshold=None))
    assert necessity_only.layer == 1
    assert DirectionConfig.from_dict(DirectionConfig(induce_threshold=None).to_dict()).induce_threshold is None


def test_fallback_rules_apply_only_when_the_main_rules_pass_nothing(planted, candidates, selection):
    model, _, refusal = planted
    loose = FallbackRules(kl_threshold=100.0, induce_threshold=None)
    # The main rules pass a candidate: the fallback is never consulted.
    same = select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal], DirectionConfig(fallback=loose))
    assert (same.layer, same.position) == (selection.layer, selection.position) and same.main_rules_failure is None
    assert same.rules() == "main rules (KL <= 0.1, induce score > 0.0)" and "fallback" not in same.direction.fitted_on
    # Impossible main rules: the fallback chooses, by the lowest ablation score among what it accepts,
    # and the selection says which rules chose and why the main ones failed.
    for lazy in (False, True):
        chosen = select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal],
                                  DirectionConfig(kl_threshold=0.0, fallback=loose, lazy=lazy))
        assert chosen.layer == 1 and "no DIM candidate passed" in chosen.main_rules_failure
        assert chosen.rules() == "fallback rules (KL <= 100.0, induce rule off)"
        assert chosen.direction.fitted_on.endswith("chosen by fallback rules (KL <= 100.0, induce rule off)")
        assert float(chosen.ablation_score[chosen.layer, chosen.positions.index(chosen.position)]) == pytest.approx(
            float(torch.nan_to_num(chosen.ablation_score, nan=math.inf).min()))
        assert all(row["reason"].startswith("passed") for row in chosen.candidates()
                   if row["layer"] in (1, 2) and not row["chosen"])
    # A fallback that passes nothing either: the error says both failed.
    with pytest.raises(NoDirectionPassed, match="fallback rules .* passed none"):
        select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal],
                         DirectionConfig(kl_threshold=0.0, fallback=FallbackRules(kl_threshold=0.0)))
    config = DirectionConfig(fallback=loose)
    assert DirectionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="FallbackRules.kl_threshold"):
        FallbackRules(kl_threshold=-1.0)


def test_lazy_selection_agrees_and_skips_work(planted, candidates, selection):
    model, _, refusal = planted
    lazy = select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal], DirectionConfig(lazy=True))
    assert (lazy.layer, lazy.position) == (selection.layer, selection.position)
    assert torch.allclose(lazy.ablation_score, selection.ablation_score, equal_nan=True, atol=1e-6)
    assert lazy.kl[1:3].isnan().sum() == 3  # only the chosen candidate needed its KL and induce score


class Killed(Exception):
    pass


def counting_logits(monkeypatch, fail_at: int | None = None) -> list[int]:
    """Count select_direction's forward calls (and raise `Killed` at call number `fail_at`)."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise Killed
        return last_token_logits(*args, **kwargs)

    monkeypatch.setattr(dim_module, "last_token_logits", spy)
    return calls


def n_scored(model, candidates, config: DirectionConfig = DirectionConfig()) -> int:
    """How many candidates select_direction scores: the nonzero ones of the layers the config searches."""
    return sum(int((candidates[layer].norm(dim=-1) > 0).sum()) for layer in config.candidate_layers(model.n_layers))


def same_selection(a, b) -> bool:
    scores = ("ablation_score", "induce_score", "kl")
    return (a.direction == b.direction and (a.layer, a.position) == (b.layer, b.position)
            and all(torch.equal(getattr(a, k).nan_to_num(7.0), getattr(b, k).nan_to_num(7.0)) for k in scores)
            and all(getattr(a, k).isnan().equal(getattr(b, k).isnan()) for k in scores))


@pytest.mark.parametrize("lazy", [False, True])
def test_a_killed_selection_resumes_from_its_log_and_chooses_exactly_as_an_uninterrupted_one(
        planted, candidates, tmp_path, monkeypatch, lazy):
    model, _, refusal = planted
    config, log = DirectionConfig(lazy=lazy), tmp_path / "search_progress.json"
    whole = select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal], config)
    n_candidates = n_scored(model, candidates, config)
    calls = counting_logits(monkeypatch, fail_at=4)  # the clean pass, then candidates until the kill
    with pytest.raises(Killed):
        select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal], config, log_file=log)
    calls = counting_logits(monkeypatch)
    resumed = select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal], config, log_file=log)
    assert same_selection(resumed, whole)
    # Killed at call 4: lazy had logged 2 ablation scores (calls 2 and 3), the full scoring 1 candidate (2 calls each).
    assert len(calls) == (1 + (n_candidates - 2) + 2 if lazy else 1 + 2 * (n_candidates - 1))
    calls = counting_logits(monkeypatch)
    assert same_selection(select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal], config,
                                           log_file=log), whole)
    assert len(calls) == 1  # everything from the log: only the clean pass


def test_a_log_made_for_other_candidates_is_not_read(planted, candidates, tmp_path, monkeypatch):
    model, _, refusal = planted
    log = tmp_path / "search_progress.json"
    select_direction(model, candidates, HARMFUL_VAL, HARMLESS_VAL, [refusal], log_file=log)
    other = candidates.clone()
    other[-1, -1] *= 1.0 + 2 ** -20  # one candidate a hair longer: another model or other prompts made these
    calls = counting_logits(monkeypatch)
    select_direction(model, other, HARMFUL_VAL, HARMLESS_VAL, [refusal], log_file=log)
    assert len(calls) == 1 + 2 * n_scored(model, candidates)


def test_candidates_must_fit_the_model(planted, candidates):
    model, _, refusal = planted
    with pytest.raises(ValueError, match="dim_candidates"):
        select_direction(model, candidates[:, :1], HARMFUL_VAL, HARMLESS_VAL, [refusal])


def test_selection_saves_and_reloads(planted, selection, tmp_path):
    model, _, _ = planted
    save_selection(selection, tmp_path, model.identity())
    assert load_directions(tmp_path, model)[0] == selection.direction
    rows = json.loads((tmp_path / "candidates.json").read_text())
    assert len(rows) == 8 and sum(r["chosen"] for r in rows) == 1
    assert {r["reason"] for r in rows if r["layer"] == 3} == {"in the last 20% of layers (exclude_last_fraction)"}
    saved = json.loads((tmp_path / "selection.json").read_text())
    assert (saved["layer"], saved["position"]) == (selection.layer, selection.position) == (1, selection.position)
    assert saved["ablation_score"][0] == [None, None]
    assert DirectionConfig.from_dict(saved["config"]) == selection.config


def test_find_direction_end_to_end(planted):
    model, planted_dir, refusal = planted
    found = find_direction(model, HARMFUL, HARMLESS, HARMFUL_VAL, HARMLESS_VAL, [refusal], progress=False)
    assert found.layer == 1 and _cos(found.direction.vector, planted_dir) > 0.99
    assert "8 harmful" in found.direction.fitted_on


# --- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"positions": (0, -1)}, "negative"), ({"positions": ()}, "no token positions"),
    ({"exclude_last_fraction": 1.0}, "exclude_last_fraction"), ({"kl_threshold": -0.1}, "kl_threshold"),
    ({"induce_threshold": math.nan}, "induce_threshold"), ({"batch_size": 0}, "batch_size"),
    ({"layers": (1, 1)}, "distinct"), ({"layers": ()}, "layers"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DirectionConfig(**kwargs)


def test_config_json_round_trip_and_layers():
    config = DirectionConfig(positions=(-2, -1), layers=(3, 5), lazy=True)
    assert config.positions == (-2, -1)
    assert DirectionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown"):
        DirectionConfig.from_dict({"kl": 0.1})
    assert DirectionConfig().candidate_layers(30) == tuple(range(24))
    assert config.candidate_layers(30) == (3, 5)
    with pytest.raises(ValueError, match="out of range"):
        config.candidate_layers(4)
    with pytest.raises(ValueError, match="exclude_last_fraction"):
        DirectionConfig(layers=(3,)).candidate_layers(4)
