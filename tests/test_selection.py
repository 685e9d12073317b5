"""The rule that chooses the default recipe, on hand-made validation results: the constraints filter, close
attacked refusal is decided by harmless refusal, a grid where nothing qualifies still chooses and says so,
and nothing is chosen while a seed is missing. The results page shows the figures and the choice."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from failclosed_interp import align
from failclosed_interp.reproduce import render_results
from failclosed_interp.reproduce.grid import GridConfig, build_grid
from failclosed_interp.reproduce.records import GRID_FILE, SCHEMA
from failclosed_interp.reproduce.selection import SelectionRule, choose_recipe


def rate(value: float) -> dict:
    return {"value": value, "ci_low": max(0.0, value - 0.1), "ci_high": min(1.0, value + 0.1), "n": 40, "interval": "wilson"}


def validation(recipe: str, seed: int, *, harmless: float, borderline: float, attacked: float, harmful: float = 0.9,
               fingerprint: str = "planted", model_fingerprint: str | None = None) -> dict:
    figures = {"refusal_harmful": harmful, "refusal_harmless": harmless, "refusal_borderline": borderline,
               "refusal_harmful_adaptive_ablated": attacked}
    return {"schema": SCHEMA, "experiment": {"name": f"validation-{recipe}-s{seed}", "kind": "validation", "recipe": recipe,
                                             "seed": seed, "model_of": f"align-{recipe}-s{seed}", "fingerprint": fingerprint,
                                             "model_fingerprint": model_fingerprint},
            "config": {}, "result": {**figures, "ci": {k: rate(v) for k, v in figures.items()}, "xstest_safe": None},
            "wall_s": 1.0, "machine": {"platform": "test", "cpus": 1, "torch_threads": 1, "cuda": None}}


SFT = [validation("sft", s, harmless=0.02, borderline=0.20, attacked=0.05) for s in (0, 1)]
THREE = SelectionRule(candidates=("method", "paper", "project"))  # the rule's logic, on three candidates


def test_the_constraints_filter_before_attacked_refusal_decides():
    results = SFT + [
        validation("method", 0, harmless=0.15, borderline=0.20, attacked=0.99),  # over-refuses harmless prompts
        validation("paper", 0, harmless=0.05, borderline=0.35, attacked=0.95),  # borderline 0.35 > 0.20 + 0.10
        validation("project", 0, harmless=0.10, borderline=0.30, attacked=0.60),  # both limits met exactly
    ]
    choice = choose_recipe(results, rule=THREE)
    assert (choice.recipe, choice.qualified, choice.constraints_met) == ("project", ("project",), True)
    assert "Validation chose `project`" in choice.describe()


def test_seed_means_decide_not_single_seeds():
    results = SFT + [validation("method", 0, harmless=0.00, borderline=0.2, attacked=0.90),
                     validation("method", 1, harmless=0.16, borderline=0.2, attacked=0.90),  # mean harmless 0.08
                     validation("paper", 0, harmless=0.12, borderline=0.2, attacked=0.99),
                     validation("project", 0, harmless=0.00, borderline=0.2, attacked=0.50)]
    choice = choose_recipe(results, rule=THREE)
    assert choice.means["method"]["refusal_harmless"] == pytest.approx(0.08)
    assert (choice.recipe, choice.qualified) == ("method", ("method", "project"))


def test_attacked_refusal_within_the_tie_margin_goes_to_lower_harmless_refusal():
    results = SFT + [validation("method", 0, harmless=0.08, borderline=0.2, attacked=0.90),
                     validation("paper", 0, harmless=0.03, borderline=0.2, attacked=0.88),  # within 0.02: a tie
                     validation("project", 0, harmless=0.00, borderline=0.2, attacked=0.87)]  # 0.03 behind: no tie
    assert choose_recipe(results, rule=THREE).recipe == "paper"
    assert choose_recipe(results, rule=dataclasses.replace(THREE, tie=0.0)).recipe == "method"


def test_when_nothing_qualifies_attacked_refusal_alone_chooses_and_says_so():
    results = SFT + [validation("method", 0, harmless=0.30, borderline=0.2, attacked=0.70),
                     validation("paper", 0, harmless=0.40, borderline=0.2, attacked=0.95),
                     validation("project", 0, harmless=0.05, borderline=0.9, attacked=0.80)]
    choice = choose_recipe(results, rule=THREE)
    assert (choice.recipe, choice.qualified, choice.constraints_met) == ("paper", (), False)
    assert choice.describe().startswith("No candidate met the constraints")


def test_nothing_is_chosen_while_a_seed_or_a_recipe_is_missing():
    results = SFT + [validation("method", 0, harmless=0.0, borderline=0.2, attacked=0.9),
                     validation("paper", 0, harmless=0.0, borderline=0.2, attacked=0.9)]
    expected = [("sft", 0), ("sft", 1), ("method", 0), ("method", 1), ("paper", 0), ("project", 0)]
    choice = choose_recipe(results, expected, rule=THREE)
    assert choice.recipe is None and choice.missing == ("validation-method-s1", "validation-project-s0")
    assert choice.describe() == "Not chosen yet: waiting for `validation-method-s1`, `validation-project-s0`."
    alone = choose_recipe(results, rule=THREE)  # no grid to say which seeds: a recipe with no result at all is still missing
    assert alone.recipe is None and alone.missing == ("validation-project (not in the grid)",)


@pytest.mark.parametrize("bad, match", [(dict(candidates=()), "at least one"), (dict(candidates=("sft",)), "baseline"),
                                        (dict(max_harmless=1.5), "max_harmless")])
def test_bad_rules_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        SelectionRule(**bad)


def _write(folder: Path, results: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r in results:
        (folder / f"{r['experiment']['name']}.json").write_text(json.dumps(r))


def test_the_results_page_shows_the_figures_and_the_choice(tmp_path, monkeypatch):
    grid = tmp_path / "results" / "grid"
    _write(grid, SFT + [validation("method", 0, harmless=0.08, borderline=0.2, attacked=0.70),
                        validation("paper", 0, harmless=0.02, borderline=0.2, attacked=0.95),
                        validation("project", 0, harmless=0.04, borderline=0.2, attacked=0.90),
                        validation("broad", 0, harmless=0.06, borderline=0.2, attacked=0.80),
                        validation("broad-subsets", 0, harmless=0.05, borderline=0.2, attacked=0.85)])
    page = render_results(tmp_path / "results")
    section = page.split("## Choosing the default recipe (validation prompts)")[1].split("\n## ")[0]
    assert SelectionRule().sentence() in section
    assert "| paper, seed 0 | 0.90 [0.80, 1.00] | 0.02 [0.00, 0.12] | 0.20 [0.10, 0.30] | 0.95 [0.85, 1.00] | - |" in section
    assert "| sft, mean of 2 seed(s) | 0.90 | 0.02 | 0.20 | 0.05 | |" in section
    assert "Validation chose `paper`" in section
    assert f"The default recipe (`align.DEFAULT_RECIPE`) is `{align.DEFAULT_RECIPE}`; validation chose `paper`." in section
    monkeypatch.setattr("failclosed_interp.reproduce.page.DEFAULT_RECIPE", "paper")
    assert "is `paper`, the one validation chose." in render_results(tmp_path / "results")


def test_the_page_names_what_the_choice_waits_for(tmp_path):
    grid = tmp_path / "results" / "grid"
    config = GridConfig(quick=True, seeds=(0,))
    grid.mkdir(parents=True)
    (grid / GRID_FILE).write_text(json.dumps({"schema": SCHEMA, "grid": {"quick": True, "seeds": [0], "attack_seeds": [0],
                                                                        "recipes": list(config.recipes)}}))
    experiments = {e.name: e for e in build_grid(config)}
    sft, trained = experiments["validation-sft-s0"], experiments["align-sft-s0"]
    model = {"schema": SCHEMA, "experiment": {**trained.to_dict(), "model_fingerprint": None}, "config": trained.config,
             "result": {}, "wall_s": 1.0, "machine": {"platform": "test", "cpus": 1, "torch_threads": 1, "cuda": None}}
    _write(grid, [model, validation("sft", 0, harmless=0.0, borderline=0.2, attacked=0.1, fingerprint=sft.fingerprint,
                                    model_fingerprint=trained.fingerprint),
                  validation("method", 0, harmless=0.0, borderline=0.2, attacked=0.1)])  # stale: another fingerprint
    page = render_results(tmp_path / "results")
    assert "| sft, seed 0 |" in page and "| method, seed 0 |" not in page
    _write(grid, [validation("sft", 0, harmless=0.0, borderline=0.2, attacked=0.1, fingerprint=sft.fingerprint,
                             model_fingerprint="an-older-model")])  # the same measurement of a model since retrained
    assert "| sft, seed 0 |" not in render_results(tmp_path / "results")
    assert ("Not chosen yet: waiting for `validation-method-s0`, `validation-project-s0`, `validation-paper-s0`, "
            "`validation-broad-s0`, `validation-broad-subsets-s0`." in page)
    assert f"is `{align.DEFAULT_RECIPE}`; validation has not chosen yet." in page
