"""The independence audit on toy models with planted pathways (ground truth known), and its redundancy
search on synthetic refusal oracles."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from _planted_pathways import FAST, cosine, planted, prompts_of, with_decoys
from failclosed_interp.audit import (
    AblationRefusal, AuditConfig, MeasureConfig, RefusalMeter, redundancy_number, run_audit, write_audit,
)
from failclosed_interp.attacks.adaptive import AdaptiveAttackConfig
from failclosed_interp.audit.result import format_audit
from failclosed_interp.cli import main
from failclosed_interp.directions import Direction, DirectionSet, save_directions
from failclosed_interp.generation import generate
from failclosed_interp.interventions import Ablation
from failclosed_interp.judges import SubstringJudge

REQUIRED_KEYS = {"redundancy_number", "independent_pathways", "verdict", "single_ablation_refusal",
                 "pairwise_ablation_refusal", "joint_ablation_curve", "steering_refusal", "cosine"}


@pytest.fixture(scope="module")
def one():
    return planted(1)


@pytest.fixture(scope="module")
def three():
    return planted(3)


@pytest.fixture(scope="module")
def open_audit(one):
    return run_audit(one.model, prompts_of(one), FAST)


@pytest.fixture(scope="module")
def closed_audit(three):
    return run_audit(three.model, prompts_of(three), FAST)


# --- the planted models themselves -----------------------------------------------------------------

def test_any_single_pathway_keeps_refusal_and_only_all_together_remove_it(three):
    prompts = prompts_of(three)
    judge, config = SubstringJudge(), FAST.measure.generation()

    def refused(subset) -> int:
        ablation = [Ablation(three.pathways[list(subset)])] if subset else []
        return sum(judge(prompts.harmful_eval, generate(three.model, list(prompts.harmful_eval), config, ablation, progress=False)))

    n = len(prompts.harmful_eval)
    assert [refused(s) for s in ((), (0,), (1,), (2,), (0, 1), (1, 2), (0, 2))] == [n] * 7
    assert refused((0, 1, 2)) == 0
    harmless = generate(three.model, list(prompts.harmless_eval), config, progress=False)
    assert not any(judge(prompts.harmless_eval, harmless))


# --- redundancy search on synthetic oracles ----------------------------------------------------------

class Oracle:
    """Refusal 1.0 unless the ablated subset contains one of `collapsing` (then its value); counts calls."""

    def __init__(self, collapsing: dict[tuple[int, ...], float]):
        self.collapsing, self.calls = collapsing, []

    def __call__(self, subset: frozenset[int]) -> float:
        self.calls.append(subset)
        hits = [v for s, v in self.collapsing.items() if set(s) <= subset]
        return min(hits) if hits else 1.0


def test_redundancy_finds_the_true_minimal_subset_among_five():
    oracle = Oracle({(1, 3): 0.1})
    r = redundancy_number(oracle, 5)
    assert (r.number, r.subset, r.minimal_subsets, r.exact) == (2, (1, 3), ((1, 3),), True)
    assert len(set(oracle.calls)) == len(oracle.calls)  # each subset measured once


def test_redundancy_reports_every_minimal_subset_and_picks_the_lowest_refusal():
    r = redundancy_number(Oracle({(2, 3): 0.2, (0, 4): 0.1}), 5)
    assert (r.number, r.subset, r.minimal_subsets) == (2, (0, 4), ((0, 4), (2, 3)))


def test_redundancy_prunes_with_leave_one_out_when_every_direction_is_needed():
    oracle = Oracle({(0, 1, 2, 3, 4): 0.0})
    r = redundancy_number(oracle, 5, max_exact=5)
    assert (r.number, r.subset, r.exact) == (5, (0, 1, 2, 3, 4), True)
    brute_force = 2 ** 5 - 1
    assert len(oracle.calls) == 1 + 5 + 10 + 5 < brute_force  # full, singles, pairs, leave-one-out; no triples


def test_redundancy_beyond_max_exact_is_a_greedy_upper_bound():
    r = redundancy_number(Oracle({(0, 1, 2): 0.0}), 5, max_exact=2)
    assert (r.number, r.exact, r.lower_bound, r.subset) == (3, False, 3, (0, 1, 2))


def test_redundancy_when_refusal_survives_everything_and_with_known_values():
    oracle = Oracle({})
    r = redundancy_number(oracle, 4)
    assert (r.number, r.subset, r.lower_bound, r.exact) == (None, None, 5, True)
    assert oracle.calls == [frozenset(range(4))]  # one measurement settles it (monotonicity)
    oracle = Oracle({(2,): 0.0})
    r = redundancy_number(oracle, 3, known={frozenset({0}): 1.0, frozenset({1}): 1.0, frozenset({0, 1, 2}): 0.0})
    assert (r.number, r.subset) == (1, (2,)) and oracle.calls == [frozenset({2})]


def test_redundancy_rejects_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        redundancy_number(Oracle({}), 3, threshold=0.0)
    with pytest.raises(ValueError, match="max_exact"):
        redundancy_number(Oracle({}), 3, max_exact=0)


# --- audits of planted models --------------------------------------------------------------------------

def test_one_pathway_audits_as_fail_open_with_redundancy_one(one, open_audit):
    r = open_audit
    assert r.redundancy.number == 1 and r.redundancy.subset == (0,)
    assert r.verdict_label == "fail-open" and r.verdict.startswith("fail-open (KL budget 0.1): ablating direction 0")
    assert len(r.directions) == 1 and cosine(r.directions[0].vector, one.pathways[0]) > 0.99
    assert r.baseline.value == 1.0 and r.single[0].value == 0.0
    assert r.pathways == (0,)
    assert r.discovery.stop_reason.startswith("refusal gone")


def test_three_pathways_are_discovered_one_by_one(three, closed_audit):
    r = closed_audit
    assert r.source == "discovered" and len(r.directions) == 3
    matches = [max(range(3), key=lambda k: abs(cosine(d.vector, three.pathways[k]))) for d in r.directions]
    assert sorted(matches) == [0, 1, 2]  # each found direction is a different planted pathway
    assert all(abs(cosine(d.vector, three.pathways[k])) > 0.99 for d, k in zip(r.directions, matches))
    # the selection rules applied: no direction from the last 20% of layers, KL within its bound
    assert all(d.layer < 3 and d.scores["kl"] <= 0.1 for d in r.directions)
    assert [d.round for d in r.directions] == [0, 1, 2]
    assert [x.value for x in r.discovery.refusal_after] == [1.0, 1.0, 0.0]


def test_three_pathways_audit_as_fail_closed_with_redundancy_three(closed_audit):
    r = closed_audit
    assert (r.redundancy.number, r.redundancy.exact, r.redundancy.subset) == (3, True, (0, 1, 2))
    assert len(r.pathways) == 3 and r.verdict_label == "fail-closed" and r.counted == (0, 1, 2) and not r.inert()
    assert r.verdict.startswith("fail-closed, 3 pathways (KL budget 0.1)") and "redundancy number 3" in r.verdict
    assert [x.value for x in r.single] == [1.0, 1.0, 1.0]
    assert all(r.pairwise[i][j].value == 1.0 for i in range(3) for j in range(3))
    assert [x.value for x in r.joint.found] == [1.0, 1.0, 1.0, 0.0]
    assert all(max(x.value for x in row) == 1.0 for row in r.steering)
    assert torch.allclose(r.directions.cosine(), torch.eye(3), atol=1e-4)
    assert not r.rep.change().nan_to_num().gt(r.config.ri_tolerance).any()


def test_subset_search_returns_the_planted_subset_among_decoys(three):
    layout = ["decoy", 0, "decoy", 1, 2]
    r = run_audit(three.model, prompts_of(three), FAST, with_decoys(three, layout))
    assert (r.redundancy.number, r.redundancy.subset, r.redundancy.minimal_subsets) == (3, (1, 3, 4), ((1, 3, 4),))
    assert r.pathways == (1, 3, 4)  # decoys neither steer nor collapse anything
    assert [x.value for x in r.single] == [1.0] * 5
    assert [max(x.value for x in row) for row in r.steering] == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert r.redundancy.measured < 2 ** 5 - 1


def test_a_weak_pathway_makes_a_specific_pair_minimal():
    toy = planted(3, readouts=(20.0, 20.0, 0.2))  # pathway 2 alone is too weak to keep refusal
    r = run_audit(toy.model, prompts_of(toy), FAST, with_decoys(toy, [2, "decoy", 0, 1]))
    assert (r.redundancy.number, r.redundancy.subset, r.redundancy.minimal_subsets) == (2, (2, 3), ((2, 3),))
    assert r.verdict_label == "fail-closed" and "redundancy number 2" in r.verdict


def test_a_derived_direction_steers_but_is_not_an_independent_pathway():
    toy = planted(1, derived=True)  # the second planted vector is computed from the first
    r = run_audit(toy.model, prompts_of(toy), FAST, toy.directions())
    assert [max(x.value for x in row) for row in r.steering] == [1.0, 1.0]  # both induce refusal alone
    change = r.rep.change()
    assert change[0, 1] > 0.9  # ablating the source erases the derived representation
    assert r.pathways == (0,) and r.redundancy.number == 1


def test_logit_mode_agrees_with_generation(three):
    config = dataclasses.replace(FAST, measure=MeasureConfig(mode="logit"), sweep=False)
    r = run_audit(three.model, prompts_of(three), config, with_decoys(three, [0, "decoy", 1, 2]))
    assert r.config.measure.mode == "logit" and r.refusal_tokens == ("I",)
    assert (r.redundancy.number, r.redundancy.subset) == (3, (0, 2, 3))
    assert r.pathways == (0, 2, 3)


def test_each_condition_is_measured_once(three):
    prompts = prompts_of(three)
    calls = []

    class CountingJudge:
        name = "counting"

        def __call__(self, instructions, responses):
            calls.append(1)
            return SubstringJudge()(instructions, responses)

    refusal = AblationRefusal(RefusalMeter(three.model, prompts.harmful_eval, FAST.measure, judge=CountingJudge()),
                              three.directions())
    first = [refusal(s) for s in ([0], [0, 1], [1, 0], {1, 0}, [0])]
    assert len(calls) == 2 and refusal.meter.n_evaluations == 2
    assert first[1] is first[2] is first[3]
    assert refusal.known() == {frozenset({0}): 1.0, frozenset({0, 1}): 1.0}


def test_no_refusal_and_bad_directions(three):
    from failclosed_interp.models import load_model

    model = load_model("tiny-llama")
    r = run_audit(model, prompts_of(three), FAST)  # a random model refuses nothing
    assert r.verdict_label == "no-refusal" and r.redundancy.number is None and not r.single
    dependent = DirectionSet((three.directions()[0], Direction(three.pathways[0] * 2, layer=2)))
    with pytest.raises(ValueError, match="dimensions"):
        run_audit(three.model, prompts_of(three), FAST, dependent)
    with pytest.raises(ValueError, match="out of range"):
        run_audit(three.model, prompts_of(three), FAST, DirectionSet((Direction(three.pathways[0], layer=7),)))


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 0.0}, "threshold"), ({"k_max": 0}, "k_max"), ({"steering_coeffs": ()}, "steering_coeffs"),
    ({"steering_coeffs": (-1.0,)}, "steering_coeffs"), ({"n_eval": 1}, "n_eval"), ({"ri_tolerance": -1.0}, "ri_tolerance"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AuditConfig(**kwargs)
    with pytest.raises(ValueError, match="mode"):
        MeasureConfig(mode="vibes")


def test_config_round_trips_through_json():
    config = AuditConfig(k_max=3, measure=MeasureConfig(mode="logit"), steering_coeffs=(1, 4))
    assert AuditConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --- report and CLI -------------------------------------------------------------------------------------

FIGURES = ["single", "cosine", "pairwise", "joint", "steering", "steering-common", "rep-independence", "rep-layers",
           "sweep-0", "sweep-1", "sweep-2", "discovery-0", "discovery-1", "discovery-2"]


def test_report_is_self_contained_and_holds_every_figure(closed_audit, tmp_path):
    write_audit(closed_audit, tmp_path)
    page = (tmp_path / "report.html").read_text()
    divs = re.findall(r'<div id="fig-([\w-]+)" class="plotly-graph-div"', page)
    assert divs == FIGURES
    assert page.count("Plotly.newPlot") == len(FIGURES)
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js is inlined: opens offline
    assert page.count("plotly.js v") >= 1 and closed_audit.verdict in page
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert REQUIRED_KEYS <= saved.keys()
    assert saved["redundancy_number"] == 3 and saved["independent_pathways"] == 3
    assert saved["single_ablation_refusal"][0] == {"value": 1.0, "ci_low": pytest.approx(0.7575, abs=1e-4), "ci_high": 1.0,
                                                   "n": 12, "interval": "wilson"}  # Wilson: 12/12 is not certain
    assert len(saved["pairwise_ablation_refusal"]) == 3 and saved["joint_ablation_curve"]["found"][-1]["value"] == 0.0


def test_cli_audits_saved_directions(three, tmp_path, capsys):
    folder = tmp_path / "dirs"
    save_directions(with_decoys(three, [0, "decoy", 1, 2]), folder, three.model.identity())
    out = tmp_path / "audit"
    code = main(["audit", "--model", "toy-fail-closed", "--directions", str(folder), "--out", str(out),
                 "--max-new-tokens", "10", "--n-eval", "8", "--mode", "logit"])
    assert code == 0
    saved = json.loads((out / "audit.json").read_text())
    assert REQUIRED_KEYS <= saved.keys()
    assert saved["redundancy_number"] == 3 and saved["redundancy"]["subset"] == [0, 2, 3]
    assert saved["independent_pathways"] == 3 and saved["verdict"].startswith("fail-closed")
    assert saved["directions_from"] == str(folder) and saved["source"] == "given"
    assert len(saved["cosine"]) == 4 and len(saved["steering_refusal"]["refusal"]) == 4
    printed = capsys.readouterr().out
    assert "verdict: fail-closed, 3 pathways (KL budget 0.1)" in printed and "inert here" in printed
    assert (out / "report.html").is_file() and (out / "directions" / "directions.safetensors").is_file()


def test_cli_on_a_model_that_never_refuses_and_on_bad_input(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", "--model", "tiny-llama", "--out", str(out), "--n-eval", "4", "--max-new-tokens", "4"]) == 0
    saved = json.loads((out / "audit.json").read_text())
    assert REQUIRED_KEYS <= saved.keys() and saved["verdict"].startswith("no refusal")
    assert "verdict: no refusal" in capsys.readouterr().out
    folder = tmp_path / "other"
    save_directions(DirectionSet((Direction(torch.randn(32), layer=1),)), folder, {"model": "x", "d_model": 32, "n_layers": 2})
    assert main(["audit", "--model", "toy-fail-open", "--directions", str(folder), "--out", str(out)]) == 2
    assert "d_model" in capsys.readouterr().err
    assert main(["audit", "--model", "toy-fail-open", "--adapter", str(folder), "--out", str(out)]) == 2
    assert "no adapter" in capsys.readouterr().err



def test_cli_discovers_at_the_given_positions(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", "--model", "toy-fail-open", "--positions=-2,-1", "--out", str(out), "--n-eval", "6",
                 "--max-new-tokens", "10"]) == 0
    saved = json.loads((out / "audit.json").read_text())
    assert saved["source"] == "discovered" and saved["redundancy_number"] == 1
    assert saved["config"]["directions"]["positions"] == [-2, -1]
    assert saved["sweep"]["positions"] == [-2, -1] and [d["position"] for d in saved["directions"]] == [-1]
    assert "verdict: fail-open" in capsys.readouterr().out


def test_adaptive_adds_the_independent_attackers_direction_to_irrelevant_given_ones(one, monkeypatch, tmp_path):
    p = one.prompts  # the attacker's own prompts: none of them is an audit evaluation prompt
    attacker = AdaptiveAttackConfig(harmful=p.harmful_train + p.harmful_val, harmless=p.harmless_train + p.harmless_val,
                                    n_fit=12, rdo_steps=0)
    config = dataclasses.replace(FAST, adaptive=True, sweep=False, attacker=attacker)
    # the toy babbles when it does not refuse: the attacker verifies its candidates by "not a refusal"
    r = run_audit(one.model, prompts_of(one), config, one.decoys(2), judge=SubstringJudge())
    assert r.source == "given+adaptive" and len(r.directions) == 3
    chosen = r.adaptive_attack.search.chosen(FAST.kl_budget)  # the attacker's pick within the audit's budget
    assert torch.equal(r.directions[2].vector, chosen.vector) and cosine(chosen.vector, one.pathways[0]) > 0.5
    assert r.verdict_label == "fail-open" and r.redundancy.subset == (2,)
    curve = r.to_dict()["adaptive_attack"]
    assert [b["kl_budget"] for b in curve["budgets"]] == [0.1, 0.3, 1.0, "inf"]
    assert curve["budgets"][0]["refusal"]["value"] < FAST.threshold  # the pathway collapses refusal within KL 0.1
    assert "adaptive attacker (own prompts and search" in format_audit(r)
    # a search made before on this model is reused, not made again, and gives the same audit
    def no_new_search(*args, **kwargs):
        raise AssertionError("the given search must be reused")

    with monkeypatch.context() as patched:
        patched.setattr("failclosed_interp.attacks.adaptive.search_directions", no_new_search)
        again = run_audit(one.model, prompts_of(one), config, one.decoys(2), judge=SubstringJudge(),
                          adaptive_search=r.adaptive_attack.search)
    assert torch.equal(again.directions[2].vector, chosen.vector) and again.verdict == r.verdict
    assert any(note.endswith("made before and reused)") for note in again.notes)
    # with a log, a second audit reads every score back (a killed one resumes the same way)
    log = tmp_path / "adaptive" / "search_progress.json"
    logged = run_audit(one.model, prompts_of(one), config, one.decoys(2), judge=SubstringJudge(), log_file=log)
    with monkeypatch.context() as patched:
        patched.setattr("failclosed_interp.attacks.adaptive._Scorer._ablated_logits", no_new_search)
        resumed = run_audit(one.model, prompts_of(one), config, one.decoys(2), judge=SubstringJudge(), log_file=log)
    assert resumed.to_dict()["adaptive_attack"] == logged.to_dict()["adaptive_attack"] == curve
    # without it, the strongest direction found with no KL limit is the pathway, within the budget: still fail-open
    without = run_audit(one.model, prompts_of(one), dataclasses.replace(config, adaptive=False), one.decoys(2))
    assert without.verdict_label == "fail-open" and "strongest DIM direction" in without.verdict
    assert cosine(without.strongest.direction.vector, one.pathways[0]) > 0.99 and without.inert() == [0, 1]
    # with neither, the inert decoys show nothing: the verdict must not call that fail-closed
    blind = run_audit(one.model, prompts_of(one), dataclasses.replace(config, adaptive=False, unbounded=False), one.decoys(2))
    assert blind.verdict_label == "robust" and blind.verdict.startswith("robust, pathways not identified")
