"""The loop's RDO and mediation check on tiny models: targets made once after round 0 and reused unchanged
by every later round (also after a resume), a direction that does not mediate refusal stops the loop, the
first direction has a declared rule when Arditi's rules pass nothing, and the named recipes."""

import dataclasses
import json

import pytest
import torch

import failclosed_interp.align as align_module
from _planted import HARMFUL_VAL, HARMLESS_VAL, planted_refusal_model
from failclosed_interp.align import DEFAULT_RECIPE, RECIPES, AlignConfig, align, mediation_check, recipe
from failclosed_interp.dim import FallbackRules
from failclosed_interp.directions import Direction
from failclosed_interp.rdo import RDOConfig
from failclosed_interp.rdo_targets import RDOTargets
from failclosed_interp.search import DirectionJobConfig
from failclosed_interp.training.data import Example
from test_align import tiny_config


class FakeSelection:
    def __init__(self, direction):
        self.direction = direction
        self.refusal_tokens = (5,)

    def rules(self):
        return "fallback rules (KL <= 0.3, induce rule off)"


@pytest.fixture
def spied_loop(monkeypatch):
    """align with DIM, refusal tokens and RDO replaced by recorders; each RDO call returns a new direction."""
    calls = {"search": [], "targets": [], "rdo": [], "mediation": []}
    d_model = 64

    def fake_direction_job(model, out, config, interventions=(), progress=True):
        calls["search"].append(config)
        return FakeSelection(Direction(torch.ones(d_model), layer=1, position=-1, method="dim"))

    def fake_targets(model, harmful, harmless, reference, config, interventions=(), *, refusal_tokens=None, progress=True):
        calls["targets"].append(reference)
        pair = (Example(harmful[0], "Sure", "utility", False),), (Example(harmless[0], "No", "utility", False),)
        return RDOTargets(pair[0], pair[1], (Example(harmless[0], "Fine", "utility", False),), filtered="test")

    def fake_rdo(model, reference, targets, config, interventions=(), *, distinct_from=None, min_residual=1e-5, progress=True,
                 log_file=None):
        calls["rdo"].append((reference, targets, distinct_from))
        vector = torch.randn(d_model, generator=torch.Generator().manual_seed(len(calls["rdo"])))
        return Direction(vector, layer=reference.layer, norm=reference.norm, method="rdo")

    def passing(model, config, direction, base=(), **kw):
        calls["mediation"].append(direction)
        return {"harmful_score_drop": 2.0, "harmless_score_rise": 2.0, "passed": True, "why": ""}

    monkeypatch.setattr(align_module, "direction_job", fake_direction_job)
    monkeypatch.setattr(align_module, "rdo_targets", fake_targets)
    monkeypatch.setattr(align_module, "optimize_direction", fake_rdo)
    monkeypatch.setattr(align_module, "mediation_check", passing)
    return calls


def test_rdo_targets_are_made_once_after_round_0_and_reused_by_every_round(tmp_path, spied_loop):
    summary = align(tiny_config("failclosed", rounds=2), tmp_path, progress=False)
    assert summary["rounds_completed"] == 2 and summary["stop_reason"] is None
    (reference_search,) = spied_loop["search"]  # DIM once, after round 0 (the final summary's attacker searches on its own)
    assert reference_search.search.fallback is not None
    assert len(spied_loop["targets"]) == 1  # made once, after round 0
    assert len(spied_loop["rdo"]) == 3  # one RDO direction after each of rounds 0, 1, 2
    first_targets = spied_loop["rdo"][0][1]
    assert all(targets == first_targets for _, targets, _ in spied_loop["rdo"])
    references = [reference for reference, _, _ in spied_loop["rdo"]]
    assert all(torch.equal(r.vector, references[0].vector) and r.layer == 1 for r in references)
    assert [None if d is None else len(d) for _, _, d in spied_loop["rdo"]] == [None, 1, 2]  # must differ from earlier ones
    stored = json.loads((tmp_path / "round_0" / "rdo" / "targets.json").read_text())
    assert RDOTargets.from_dict(stored) == first_targets
    assert summary["direction_methods"] == ["rdo"] * 3
    assert summary["rdo_reference"]["reference_rule"].startswith("fallback rules")  # the declared rule is recorded
    assert json.loads((tmp_path / "round_1" / "metrics.json").read_text())["mediation"]["passed"] is True


def test_a_resumed_run_reads_the_stored_targets_instead_of_making_new_ones(tmp_path, spied_loop):
    align(tiny_config("failclosed", rounds=1), tmp_path, progress=False)
    spied_loop["targets"].clear()
    stored = (tmp_path / "round_0" / "rdo" / "targets.json").read_text()
    summary = align(tiny_config("failclosed", rounds=2), tmp_path, progress=False)  # extend by one round
    assert summary["rounds_completed"] == 2 and spied_loop["targets"] == []
    assert spied_loop["rdo"][-1][1] == RDOTargets.from_dict(json.loads(stored))


def test_a_direction_that_does_not_mediate_refusal_stops_the_loop_and_says_why(tmp_path, spied_loop, monkeypatch):
    def failing(model, config, direction, base=(), **kw):
        return {"harmful_score_drop": 0.2, "harmless_score_rise": 3.0, "passed": False,
                "why": "ablating it lowers the harmful refusal score by 0.2 < min_ablation_drop=1.0"}

    monkeypatch.setattr(align_module, "mediation_check", failing)
    summary = align(tiny_config("failclosed", rounds=2), tmp_path, progress=False)
    assert summary["rounds_completed"] == 0 and summary["n_directions"] == 0
    assert "does not mediate refusal" in summary["stop_reason"] and "min_ablation_drop" in summary["stop_reason"]
    metrics = json.loads((tmp_path / "round_0" / "metrics.json").read_text())
    assert metrics["mediation"]["harmful_score_drop"] == 0.2 and not (tmp_path / "round_1").exists()


def test_mediation_check_passes_the_planted_direction_and_fails_a_random_one(monkeypatch):
    model, planted, refusal = planted_refusal_model()
    monkeypatch.setattr(DirectionJobConfig, "prompts",
                        lambda self, kind, split: list(HARMFUL_VAL if kind == "harmful" else HARMLESS_VAL))
    monkeypatch.setattr(align_module, "own_refusal_tokens", lambda *a, **k: ([refusal], None))
    config = AlignConfig()
    good = mediation_check(model, config, Direction(planted, layer=1, norm=4.0))
    assert good["passed"] and good["harmful_score_drop"] > 1.0 and good["harmless_score_rise"] > 1.0
    other = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    other -= (other @ planted) * planted
    bad = mediation_check(model, config, Direction(other, layer=1, norm=4.0))
    assert not bad["passed"] and "min_ablation_drop=1.0" in bad["why"]
    off = dataclasses.replace(config, min_ablation_drop=None, min_addition_rise=None)
    assert mediation_check(model, off, Direction(other, layer=1, norm=4.0))["passed"]
    # refusal tokens already read off the same prompts (the DIM search's) are used as they are
    monkeypatch.setattr(align_module, "own_refusal_tokens", lambda *a, **k: pytest.fail("generated again"))
    assert mediation_check(model, config, Direction(planted, layer=1, norm=4.0), refusal_tokens=[refusal]) == good


def test_the_first_search_falls_back_to_declared_rules_and_later_ones_do_not():
    config = AlignConfig()
    assert align_module._search_config(config, 0).search.fallback == FallbackRules(kl_threshold=0.3, induce_threshold=None)
    assert align_module._search_config(config, 1).search.fallback is None
    own = dataclasses.replace(config.directions, search=dataclasses.replace(config.directions.search,
                                                                          fallback=FallbackRules(kl_threshold=0.2)))
    assert align_module._search_config(dataclasses.replace(config, directions=own), 0).search.fallback.kl_threshold == 0.2
    assert align_module._search_config(dataclasses.replace(config, initial_fallback=None), 0).search.fallback is None


def test_recipes_are_presets_and_explicit_flags_override_them(tmp_path, monkeypatch):
    from failclosed_interp.cli import main

    paper = recipe("paper")
    assert (paper.search, paper.mode, paper.rounds, paper.rdo) == ("plain", "cumulative", 10, RDOConfig())
    assert recipe("method") == dataclasses.replace(AlignConfig(), rdo=RDOConfig(start="init"))  # RDO's start: ours
    assert recipe("default") == recipe(DEFAULT_RECIPE)
    assert RECIPES["default"] is RECIPES[DEFAULT_RECIPE]  # one name decides what `--recipe default` trains
    assert AlignConfig.from_dict(json.loads(json.dumps(paper.to_dict()))) == paper  # what state.json stores
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        recipe("fast")
    seen = {}

    def fake_align(config, out, **kw):
        seen["config"] = config
        raise ValueError("stop here")

    monkeypatch.setattr(align_module, "align", fake_align)
    assert main(["align", "--model", "tiny-llama", "--recipe", "paper", "--rounds", "2", "--out", str(tmp_path)]) == 2
    assert (seen["config"].rounds, seen["config"].search, seen["config"].rdo) == (2, "plain", RDOConfig())
    assert main(["align", "--model", "tiny-llama", "--out", str(tmp_path)]) == 2
    default = recipe(DEFAULT_RECIPE)
    assert (seen["config"].rounds, seen["config"].search, seen["config"].rdo) == (default.rounds, default.search, default.rdo)


@pytest.mark.parametrize("bad", [dict(min_ablation_drop=-1.0), dict(min_addition_rise=float("nan"))])
def test_bad_mediation_margins_are_refused(bad):
    with pytest.raises(ValueError, match="finite margin >= 0"):
        AlignConfig(**bad)
