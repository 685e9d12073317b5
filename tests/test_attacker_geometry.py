"""Where the adaptive attacker's direction lies: its |cosine| with the directions a run trained against and with
the attacker's choice on the same seed's sft model, read from kept copies, per KL budget; runs without a kept
search are left out."""

from __future__ import annotations

import math

import pytest
import torch

from failclosed_interp.attacks.adaptive import AttackSearch, save_search
from failclosed_interp.directions import Direction, DirectionSet, save_directions
from failclosed_interp.reproduce.attacker_geometry import attacker_directions, attacker_geometry_section

IDENTITY = {"name": "toy", "d_model": 4}
E = torch.eye(4)


def direction(vector, layer: int) -> Direction:
    return Direction(vector, layer=layer, position=-1)


def rate(value: float) -> dict:
    return {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1, "n": 70, "interval": "wilson"}


def kept_run(grid, recipe: str, chosen: dict[float, Direction], found: list[Direction] = ()) -> tuple[str, dict]:
    """A finished align experiment's results record and its kept copy: the attacker's choice per budget, and
    the directions the run trained against."""
    name, folder = f"align-{recipe}-s0", f"align-{recipe}-s0-abc"
    final = grid / "models" / folder / "final"
    budgets = sorted(chosen)
    save_search(AttackSearch(DirectionSet(tuple(chosen[b] for b in budgets)), tuple((b, i) for i, b in enumerate(budgets)),
                             baseline_refusal_score=2.0, refusal_tokens=(5,)), final / "adaptive", IDENTITY)
    if found:
        save_directions(DirectionSet(tuple(found)), final / "directions", IDENTITY)
    result = {"adaptive_attack": {"budgets": [{"kl_budget": "inf" if math.isinf(b) else b, "refusal": rate(0.1 * (i + 1))}
                                              for i, b in enumerate(budgets)]}}
    return name, {"experiment": {"name": name, "kind": "align", "recipe": recipe, "seed": 0, "run_folder": folder,
                                 "fingerprint": "abc"}, "result": result}


def test_the_attackers_choice_is_compared_with_the_trained_against_directions_and_with_sfts_choice(tmp_path):
    grid = tmp_path / "grid"
    results = dict([
        kept_run(grid, "method", {0.3: direction(-E[0], 17), math.inf: direction(E[3], 27)},  # -v ablates as v does
                 found=[direction(E[1], 23), direction(E[0] + E[2], 23)]),
        kept_run(grid, "sft", {0.3: direction(E[0], 17), math.inf: direction(E[1], 26)}),
    ])
    rows = attacker_directions(grid, results)
    assert [(r.name, r.kl_budget) for r in rows] == [("align-sft-s0", 0.3), ("align-sft-s0", math.inf),
                                                      ("align-method-s0", 0.3), ("align-method-s0", math.inf)]
    sft, _, method, unlimited = rows
    assert sft.max_cos_trained is None and sft.cos_sft is None and sft.trained_against == ()
    assert method.trained_against == (23, 23) and method.direction.layer == 17 and method.refusal["value"] == 0.1
    assert method.max_cos_trained == pytest.approx(1 / math.sqrt(2)) and method.cos_sft == pytest.approx(1.0)
    assert unlimited.max_cos_trained == pytest.approx(0.0) and unlimited.cos_sft == pytest.approx(0.0)
    assert unlimited.refusal["value"] == pytest.approx(0.2)

    table = "\n".join(attacker_geometry_section(grid, results))
    assert "| method-s0 | 0.3 | dim, 17, -1 | 0.10 [0.00, 0.20] | 23, 23 | 0.71 | 1.00 |" in table
    assert "| sft-s0 | inf | dim, 26, -1 | 0.20 [0.10, 0.30] | none | - | - |" in table


def test_runs_without_a_kept_search_are_left_out(tmp_path):
    grid = tmp_path / "grid"
    name, record = kept_run(grid, "method", {0.3: direction(E[0], 17)}, found=[direction(E[1], 23)])
    assert attacker_directions(grid, {}) == []
    assert attacker_geometry_section(grid, {}) == [
        "No finished training run has a kept copy of the adaptive attacker's search yet."]
    other = {**record, "experiment": {**record["experiment"], "run_folder": "align-method-s0-gone"}}
    assert attacker_directions(grid, {name: other}) == []
    rows = attacker_directions(grid, {name: record})  # no sft model for this seed: no comparison with it
    assert len(rows) == 1 and rows[0].cos_sft is None and rows[0].max_cos_trained == pytest.approx(0.0)


def test_a_budget_the_sft_search_did_not_have_gets_no_comparison(tmp_path):
    grid = tmp_path / "grid"
    results = dict([kept_run(grid, "method", {0.3: direction(E[0], 17), 1.0: direction(E[1], 20)}),
                    kept_run(grid, "sft", {0.3: direction(E[0], 17)})])
    by_budget = {r.kl_budget: r for r in attacker_directions(grid, results) if r.name == "align-method-s0"}
    assert by_budget[0.3].cos_sft == pytest.approx(1.0) and by_budget[1.0].cos_sft is None
