"""`failclosed reproduce`: the quick grid runs end to end on tiny models and resumes without redoing finished
experiments; the committed results page is exactly what the generator writes from the committed results."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from failclosed_interp.align import DEFAULT_RECIPE, AlignConfig, recipe
from failclosed_interp.rdo_config import RDOConfig
from failclosed_interp.cli import main
from failclosed_interp.reproduce import GridConfig, build_grid, grid_status, render_results, run_grid
from failclosed_interp.reproduce.grid import pending, recipe_config
from failclosed_interp.reproduce.recipes import GRID_RECIPES, GridRecipe
from failclosed_interp.reproduce.selection import MEASURES, SelectionRule
from failclosed_interp.reproduce.records import ResultsMismatch, run_folder
from failclosed_interp.reproduce.runner import round0_source
from tests._public_data import write_public_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_png(monkeypatch):
    monkeypatch.setenv("FAILCLOSED_NO_PNG", "1")


def test_the_committed_results_page_is_generated_from_the_committed_results():
    page = (REPO / "docs" / "results.md").read_text()
    assert page == render_results(REPO / "results"), "regenerate it: failclosed reproduce --page-only"


RECIPES = ("sft", "method", "project", "paper", "broad", "broad-subsets", "refat")
CANDIDATES = ("method", "paper", "project", "broad", "broad-subsets")


def test_the_grid_trains_every_recipe_on_seed_0_and_sft_and_the_chosen_recipe_on_three_seeds():
    before = build_grid(GridConfig())  # the choice not made yet: the later seeds train the baseline
    assert sorted((e.recipe, e.seed) for e in before if e.kind == "align") == sorted(
        [(r, 0) for r in RECIPES] + [("sft", 1), ("sft", 2)])
    assert pending(GridConfig(), None) == [f"{kind}-chosen-s{s}" for s in (1, 2) for kind in ("align", "audit", "public")]
    for chosen in CANDIDATES:
        grid = build_grid(GridConfig(), chosen)
        aligned = [(e.recipe, e.seed) for e in grid if e.kind == "align"]
        assert sorted(aligned) == sorted([(r, 0) for r in RECIPES]
                                         + [(r, s) for r in ("sft", chosen) for s in (1, 2)])
        assert {(e.recipe, e.seed) for e in grid if e.kind == "validation"} == {(r, 0) for r in ("sft", *CANDIDATES)}
        assert {e.model_of for e in grid if e.kind == "audit"} == {e.name for e in grid if e.kind == "align"}
        assert {e.model_of for e in grid if e.kind == "attacks"} == {f"align-{r}-s0" for r in RECIPES}
        assert len({e.fingerprint for e in grid}) == len(grid) and pending(GridConfig(), chosen) == []
        assert {e.name: e.fingerprint for e in before} == {e.name: e.fingerprint for e in grid if e.name in {b.name for b in before}}
    every = build_grid(GridConfig(later_seeds="all"))  # every candidate seeded, validated on every seed
    assert sorted((e.recipe, e.seed) for e in every if e.kind == "align") == sorted(
        [(r, s) for r in ("sft", "method", "project", "broad", "broad-subsets") for s in (0, 1, 2)] + [("refat", 0), ("paper", 0)])
    assert {e.model_of for e in every if e.kind == "validation"} == {e.name for e in every if e.kind == "align" and e.recipe != "refat"}
    with pytest.raises(ValueError, match="later_seeds must be one of"):
        GridConfig(later_seeds="some")
    grid = build_grid(GridConfig(), "method")
    method, default = (next(e for e in grid if e.name == f"align-{r}-s0") for r in ("method", "sft"))
    assert AlignConfig.from_dict(method.config) == recipe("method")
    # sft runs no RDO: it keeps the RDO settings it was trained with, whatever the method recipe's become
    assert AlignConfig.from_dict(default.config) == dataclasses.replace(recipe("method"), method="sft", rdo=RDOConfig())


def test_the_recipe_table_is_what_the_grid_the_rule_and_the_page_read():
    assert GridConfig().recipes == RECIPES and SelectionRule().baseline == "sft"
    assert sorted(SelectionRule().candidates) == sorted(CANDIDATES)
    assert len({r.label for r in GRID_RECIPES.values()}) == len(GRID_RECIPES)
    for name, row in GRID_RECIPES.items():  # each row trains the align recipe it names, with its overrides
        config = recipe_config(name, 1)
        assert config.sft.seed == 1 and config.method == row.overrides.get("method", recipe(row.align_recipe).method)
    with pytest.raises(ValueError, match="role must be one of"):
        GridRecipe("method", {}, "candidates", True, False, "a typo in the role")


@pytest.mark.parametrize("config", [GridConfig(), GridConfig(later_seeds="all")])
def test_the_grid_runs_what_the_recipe_choice_needs_first_seed_by_seed_and_the_attacks_last(config):
    grid = build_grid(config, "project")
    kinds = [e.kind for e in grid]
    last_choice = max(i for i, k in enumerate(kinds) if k in ("align", "validation"))
    first_attack = kinds.index("attacks")
    assert all(k in ("align", "validation") for k in kinds[: last_choice + 1])
    assert all(k in ("audit", "public") for k in kinds[last_choice + 1 : first_attack])
    assert all(k == "attacks" for k in kinds[first_attack:])
    trained_seeds = [e.seed for e in grid if e.kind == "align"]
    assert trained_seeds == sorted(trained_seeds) and trained_seeds[:5] == [0] * 5  # every recipe's seed 0 first
    position = {e.name: i for i, e in enumerate(grid)}
    assert all(position[e.model_of] < position[e.name] for e in grid if e.model_of)
    for kind in ("audit", "attacks"):  # the baselines, the paper's recipe and the chosen one before the other candidates
        recipes = [e.recipe for e in grid if e.kind == kind]
        reported = [r for r in recipes if r in ("sft", "refat", "paper", "project")]
        assert recipes[: len(reported)] == reported and set(recipes[len(reported):]) == {"method", "broad", "broad-subsets"}


def test_expected_time_is_the_mean_of_the_same_kind_and_recipe_else_of_the_kind_else_a_first_guess():
    from failclosed_interp.reproduce.grid import FIRST_ESTIMATE_S
    from failclosed_interp.reproduce.runner import Estimates

    def finished(kind, recipe, seconds):
        return {"experiment": {"kind": kind, "recipe": recipe}, "wall_s": seconds}

    expected = Estimates({"a": finished("align", "sft", 3600.0), "b": finished("align", "sft", 5400.0),
                          "c": finished("align", "method", 9000.0)}, quick=False)
    assert expected("align", "sft") == 4500.0 and expected("align", "method") == 9000.0
    assert expected("align", "project") == expected("align") == 6000.0  # no project run yet: every align run's mean
    assert expected("audit", "sft") == FIRST_ESTIMATE_S["audit"]


def test_audits_and_validation_reuse_aligns_attacker_search_only_when_it_searched_the_same_way(tmp_path):
    from failclosed_interp.attacks.adaptive import SEARCH_FILE
    from failclosed_interp.reproduce.runner import align_search

    trained = next(e for e in build_grid(GridConfig(quick=True)) if e.kind == "align")
    attacker = AlignConfig.from_dict(trained.config).attacker
    final = tmp_path / "final"
    assert align_search(trained, final, attacker) is None  # align has not saved a search
    (final / "adaptive").mkdir(parents=True)
    (final / "adaptive" / SEARCH_FILE).write_text("{}")
    assert align_search(trained, final, attacker) == final / "adaptive"
    assert align_search(trained, final, dataclasses.replace(attacker, n_fit=attacker.n_fit + 1)) is None


def test_quick_grid_runs_resumes_and_renders(tmp_path):
    config = GridConfig(quick=True, seeds=(0, 1), recipes=("sft", "project"))
    logged: list[str] = []
    results = tmp_path / "results" / "grid"
    ran = run_grid(config, tmp_path / "runs", results, progress=False, log=logged.append)
    # validation chose among the grid's candidates (project alone) on seed 0; seed 1 trained sft and project
    assert [e.name for e in ran] == [e.name for e in build_grid(config, "project") if e.kind != "public"]
    assert "public-set columns are skipped" in logged[0] and "expected" in logged[1]
    assert "3 of them once the default recipe is chosen on the first seed" in logged[1]
    assert any(line.startswith("grid: ") and "`project`" in line and "The later seeds train it too." in line for line in logged)
    states = {r["name"]: r["state"] for r in grid_status(config, tmp_path / "runs", results)}
    assert {n for n, s in states.items() if s != "finished"} == {e.name for e in build_grid(config, "project") if e.kind == "public"}
    assert all(s == "skipped" for n, s in states.items() if n.startswith("public-"))
    validated = json.loads((results / "validation-project-s0.json").read_text())["result"]
    assert validated["xstest_safe"] is None and validated["adaptive_search"] == "reused"  # align's own search
    grid = {e.name: e for e in build_grid(config, "project")}
    round0 = json.loads((run_folder(grid["align-project-s1"], tmp_path / "runs") / "round_0/metrics.json").read_text())
    assert round0["round0_from"] == str(run_folder(grid["align-sft-s1"], tmp_path / "runs"))  # one SFT model per seed
    attacked = json.loads((results / "attacks-sft-s0.json").read_text())["result"]  # the ablation attack: align's search
    assert attacked["spec"]["ablation_search"] == str(run_folder(grid["align-sft-s0"], tmp_path / "runs") / "final/adaptive")
    data = write_public_data(tmp_path / "data")
    ran = run_grid(config, tmp_path / "runs", results, progress=False, log=logged.append, data_dir=data)
    # with the data folder: the public columns, and the validation experiments' XSTest column alone
    assert [e.name for e in ran] == [e.name for e in build_grid(config, "project") if e.kind in ("validation", "public")]
    with_xstest = json.loads((results / "validation-project-s0.json").read_text())["result"]
    assert with_xstest["xstest_safe"]["n"] == 2 and with_xstest["ci"] == validated["ci"]
    for exp in ran:
        saved = json.loads((results / f"{exp.name}.json").read_text())
        assert saved["experiment"]["fingerprint"] == exp.fingerprint and saved["wall_s"] >= 0
    assert run_grid(config, tmp_path / "runs", results, progress=False, log=logged.append, data_dir=data) == []

    (results / "audit-project-s1.json").unlink()  # a lost result is recomputed alone
    again = run_grid(config, tmp_path / "runs", results, progress=False, log=logged.append, data_dir=data)
    assert [e.name for e in again] == ["audit-project-s1"]

    page = render_results(tmp_path / "results")
    assert "Every experiment of the grid has finished." in page
    assert "| measure | seed 0 | seed 1 | mean ± sd over seeds |" in page
    sft = json.loads((results / "align-sft-s0.json").read_text())["result"]
    assert f"| harmful refusal | {sft['ci']['refusal_harmful']['value']:.2f} [" in page
    public = json.loads((results / "public-sft-s1.json").read_text())["result"]
    assert "xstest_safe (n=2, should answer)" in page
    assert f"| sft, seed 1 | {public['advbench']['refusal_rate']['value']:.2f} [" in page
    assert f"| project, seed 0 | {validated['ci']['refusal_harmful']['value']:.2f} [" in page
    chose = "`project`, the one validation chose." if DEFAULT_RECIPE == "project" else "validation chose `project`."
    assert "The choice is made on the first training seed" in page and chose in page
    claims = page.split("## The paper's claims, checked")[1].split("\n## ")[0]
    assert claims.index("### this project's recipe (chosen on validation prompts)") < claims.index("### sft (standard alignment)")
    assert "| target | seed 0 | seed 1 | mean | verdict |" in claims


def test_status_says_what_is_finished_started_and_left_without_running_anything(tmp_path, capsys):
    config = GridConfig(quick=True, seeds=(0,), recipes=("sft", "project"))
    grid = build_grid(config)
    rows = grid_status(config, tmp_path / "runs", tmp_path / "results", data_dir=tmp_path / "data")
    assert [r["name"] for r in rows] == [e.name for e in grid] and {r["state"] for r in rows} == {"to run"}
    project = next(e for e in grid if e.name == "align-project-s0")
    folder = run_folder(project, tmp_path / "runs")
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"completed_round": 0, "config": project.config}))
    row = next(r for r in grid_status(config, tmp_path / "runs", tmp_path / "results") if r["name"] == project.name)
    assert row["state"] == "started" and row["detail"].startswith("round 0 of 1 completed")
    (folder / "clock.json").write_text(json.dumps({"seconds": 1500.0, "attempts": 2}))
    row = next(r for r in grid_status(config, tmp_path / "runs", tmp_path / "results") if r["name"] == project.name)
    assert row["detail"].endswith("; 25 min spent on it so far")
    assert not (tmp_path / "results").exists()  # nothing written
    assert main(["reproduce", "--quick", "--status", "--runs", str(tmp_path / "runs"),
                 "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    grid, waiting = build_grid(GridConfig(quick=True)), pending(GridConfig(quick=True), None)
    total, public = len(grid) + len(waiting), sum(e.kind == "public" for e in grid)
    assert "align-refat-s0" in out and f"0 of {total} finished; {total - public} to run" in out  # public: --data-dir
    assert "align-chosen-s1           waiting" in out
    assert not (tmp_path / "results").exists()


def pretend_to_run(exp, folder, *args) -> dict:
    """A stand-in for the runner's `_run`: a training run leaves a final adapter folder, as a real one does, and a
    validation experiment the measures the default recipe is chosen by (every candidate alike)."""
    if exp.kind == "align":
        (folder / "final" / "adapter").mkdir(parents=True, exist_ok=True)
    return {"ran": exp.name, **({m: 0.05 for m in MEASURES} if exp.kind == "validation" else {})}


def test_the_later_seeds_wait_for_the_choice_on_the_first_seed_and_then_train_the_chosen_recipe(tmp_path, monkeypatch):
    from failclosed_interp.reproduce import runner
    from failclosed_interp.reproduce.results import unfinished

    config = GridConfig(quick=True, seeds=(0, 1), recipes=("sft", "method", "project"))
    runs, results = tmp_path / "runs", tmp_path / "results" / "grid"
    rows = {r["name"]: r for r in grid_status(config, runs, results)}
    assert [n for n, r in rows.items() if r["state"] == "waiting"] == pending(config, None)
    assert rows["align-sft-s1"]["state"] == "to run" and "align-method-s1" not in rows and "align-project-s1" not in rows

    def measured(exp, folder, *args):  # project: lower harmless refusal, so it wins the tie on the attacked rate
        result = pretend_to_run(exp, folder)
        return {**result, "refusal_harmless": 0.02} if exp.name == "validation-project-s0" else result

    monkeypatch.setattr(runner, "_run", measured)
    ran = [e.name for e in run_grid(config, runs, results, progress=False, log=lambda _: None)]
    assert "align-project-s1" in ran and "align-method-s1" not in ran and "validation-project-s1" not in ran
    assert ran.index("validation-project-s0") < ran.index("align-sft-s1") < ran.index("align-project-s1")
    assert unfinished(results, json_records(results)) == [e.name for e in build_grid(config, "project") if e.kind == "public"]
    assert not any(r["state"] == "waiting" for r in grid_status(config, runs, results))


def test_a_failing_experiment_does_not_hold_up_the_others_and_is_tried_again(tmp_path, monkeypatch):
    from failclosed_interp.reproduce import runner

    config = GridConfig(quick=True, seeds=(0,), recipes=("sft", "project"))
    grid, results = build_grid(config), tmp_path / "results"

    def run_or_fail(exp, folder, *args):
        if exp.name == "align-project-s0":
            raise RuntimeError("out of memory")
        return pretend_to_run(exp, folder)

    monkeypatch.setattr(runner, "_run", run_or_fail)
    logged: list[str] = []
    started = run_folder(grid[0], tmp_path / "runs")  # align-sft-s0 ran before, under a version without clocks
    started.mkdir(parents=True)
    (started / "config.json").write_text("{}")
    with pytest.raises(runner.GridFailures, match="align-project-s0: RuntimeError: out of memory") as failure:
        run_grid(config, tmp_path / "runs", results, progress=False, log=logged.append)
    needs_project = {e.name for e in grid if e.model_of == "align-project-s0" and e.kind != "public"}  # no --data-dir
    assert set(failure.value.failed) == {"align-project-s0"} | needs_project
    assert [e.name for e in failure.value.ran] == [e.name for e in grid if e.kind != "public" and e.name not in failure.value.failed]
    error = run_folder(next(e for e in grid if e.name == "align-project-s0"), tmp_path / "runs") / runner.ERROR_FILE
    assert "out of memory" in error.read_text() and any("FAILED" in line for line in logged)
    states = {r["name"]: r["state"] for r in grid_status(config, tmp_path / "runs", results)}
    assert states["align-project-s0"] == "failed" and states["align-sft-s0"] == "finished"

    monkeypatch.setattr(runner, "_run", pretend_to_run)  # the cause fixed
    again = run_grid(config, tmp_path / "runs", results, progress=False, log=logged.append)
    assert [e.name for e in again] == [e.name for e in grid if e.name in failure.value.failed]
    saved = {name: json.loads((results / f"{name}.json").read_text()) for name in ("align-sft-s0", "align-project-s0")}
    assert saved["align-project-s0"]["attempts"] == 2  # the failed try counts
    assert saved["align-sft-s0"]["attempts"] is None  # its untimed earlier run is missing from its seconds
    assert json.loads((results / "validation-sft-s0.json").read_text())["attempts"] == 1


def test_every_experiment_reaches_the_searches_of_the_runs_before_it(tmp_path, monkeypatch):
    from failclosed_interp.reproduce import runner
    from failclosed_interp.score_log import ScoreLog

    config = GridConfig(quick=True, seeds=(0,), recipes=("sft",))
    runs = tmp_path / "runs"
    # a search logged by a run made before (on this machine, or restored from its kept copy)
    ScoreLog(runs / "align-other" / "final" / "adaptive" / "search_progress.json", "the same model, searched the same way"
             ).value("refusal_score of dim layer 1", lambda: -2.5)
    seen = []

    def search_then_pretend(exp, folder, *args):
        log = ScoreLog(folder / "final" / "adaptive" / "search_progress.json", "the same model, searched the same way")
        seen.append(log.value("refusal_score of dim layer 1", lambda: 0.0))
        return pretend_to_run(exp, folder)

    monkeypatch.setattr(runner, "_run", search_then_pretend)
    run_grid(config, runs, tmp_path / "results", progress=False, log=lambda _: None)
    assert seen and set(seen) == {-2.5}


def test_results_of_an_earlier_version_count_unless_a_setting_they_record_changed(tmp_path, monkeypatch):
    from failclosed_interp.reproduce import runner
    from failclosed_interp.reproduce.results import unfinished

    config = GridConfig(quick=True, seeds=(0,), recipes=("sft",))
    grid, results, runs = build_grid(config), tmp_path / "results" / "grid", tmp_path / "runs"
    monkeypatch.setattr(runner, "_run", pretend_to_run)
    run_grid(config, runs, results, progress=False, log=lambda _: None)
    trained = next(e for e in grid if e.kind == "align")
    assert AlignConfig.from_dict(trained.config).min_new_component == AlignConfig().min_new_component

    def saved_by_an_earlier_version(**config_changes):
        """Rewrite the results as a version without `min_new_component` (added since, at its default) wrote them."""
        for path in results.glob("*-sft-s0.json"):
            data = json.loads(path.read_text())
            if data["experiment"]["kind"] == "align":
                data["config"].pop("min_new_component", None)
                data["config"].update(config_changes)
                data["experiment"].update(fingerprint="0ld", run_folder="align-sft-s0-0ld")
                (runs / "align-sft-s0-0ld" / "final" / "adapter").mkdir(parents=True, exist_ok=True)
            else:
                data["experiment"]["model_fingerprint"] = "0ld"
            path.write_text(json.dumps(data))

    saved_by_an_earlier_version()
    assert run_grid(config, runs, results, progress=False, log=lambda _: None) == []  # nothing is redone
    assert unfinished(results, json_records(results)) == ["public-sft-s0"]  # not run: no --data-dir
    record = json.loads((results / "align-sft-s0.json").read_text())
    assert run_folder(trained, runs, record) == runs / "align-sft-s0-0ld"  # its measurements read that model

    saved_by_an_earlier_version(n_eval=trained.config["n_eval"] + 1)  # a setting it records differs: other work
    redone = run_grid(config, runs, results, progress=False, log=lambda _: None)
    assert [e.name for e in redone] == [e.name for e in grid if e.kind != "public"]  # the model and all measured on it


def test_a_started_training_run_of_an_earlier_version_resumes_in_its_folder(tmp_path):
    trained = next(e for e in build_grid(GridConfig(quick=True, seeds=(0,), recipes=("sft",))) if e.kind == "align")
    older = {k: v for k, v in trained.config.items() if k != "min_new_component"}
    started = tmp_path / "align-sft-s0-0ld"
    started.mkdir()
    (started / "state.json").write_text(json.dumps({"completed_round": 0, "config": older}))
    assert run_folder(trained, tmp_path) == started
    (started / "state.json").write_text(json.dumps({"completed_round": 0, "config": {**older, "rounds": 7}}))
    assert run_folder(trained, tmp_path) == tmp_path / f"align-sft-s0-{trained.fingerprint}"  # other settings


def test_a_grid_goes_on_on_another_machine_from_the_models_kept_with_its_results(tmp_path):
    from failclosed_interp.reproduce.store import MODELS_FOLDER

    config = GridConfig(quick=True, seeds=(0,), recipes=("sft",))
    grid = {e.name: e for e in build_grid(config)}
    results, runs = tmp_path / "results" / "grid", tmp_path / "runs"
    run_grid(config, runs, results, progress=False, log=lambda _: None)
    folder = run_folder(grid["align-sft-s0"], runs, json.loads((results / "align-sft-s0.json").read_text()))
    kept = results / MODELS_FOLDER / folder.name
    assert (kept / "final" / "adapter" / "adapter_model.safetensors").exists() and (kept / "summary.json").exists()
    assert (kept / "round_1" / "adapter").is_dir() and not (kept / "round_0" / "adapter").exists()  # the last round only
    assert (kept / "round_0" / "metrics.json").exists()

    shutil.rmtree(runs)  # a new machine: the run folders are gone, the committed results and kept models are not
    (results / "audit-sft-s0.json").unlink()
    logged: list[str] = []
    again = run_grid(config, runs, results, progress=False, log=logged.append)
    assert [e.name for e in again] == ["audit-sft-s0"]  # measured on the kept model; nothing trained again
    assert logged[0] == f"grid: restored {folder.name} from {results / MODELS_FOLDER}"

    shutil.rmtree(runs)
    shutil.rmtree(results / MODELS_FOLDER)  # the model is gone for good: it is trained again, the rest still counts
    states = {r["name"]: r for r in grid_status(config, runs, results)}
    assert states["align-sft-s0"]["state"] == "to run" and "its model is gone" in states["align-sft-s0"]["detail"]
    assert [e.name for e in run_grid(config, runs, results, progress=False, log=lambda _: None)] == ["align-sft-s0"]


def test_a_training_run_stopped_on_one_machine_resumes_from_its_kept_last_round_on_another(tmp_path):
    from failclosed_interp.align import align
    from failclosed_interp.reproduce.store import keep_run, restore_runs

    trained = next(e for e in build_grid(GridConfig(quick=True, seeds=(0,), recipes=("sft",))) if e.kind == "align")
    config = AlignConfig.from_dict(trained.config)
    runs, results = tmp_path / "runs", tmp_path / "results"
    folder = run_folder(trained, runs)
    class MachineHandedBack(Exception):
        pass

    def stop_after_round_0(k, metrics):
        raise MachineHandedBack

    with pytest.raises(MachineHandedBack):
        align(config, folder, progress=False, on_round=stop_after_round_0)
    round0 = (folder / "round_0" / "training.json").read_text()
    keep_run(folder, results)
    shutil.rmtree(runs)
    assert restore_runs(results, runs) == [folder] and restore_runs(results, runs) == []  # once: then it is there
    assert run_folder(trained, runs) == folder
    summary = align(config, folder, progress=False)
    assert summary["rounds_completed"] == 1 and (folder / "round_0" / "training.json").read_text() == round0


def test_a_search_in_progress_is_kept_with_its_scores_and_put_back_on_another_machine(tmp_path, monkeypatch, capsys):
    # The attacker's resuming from its log is tested on a refusing toy (test_adaptive_attack); the tiny grid
    # model refuses nothing, so here the summary's attacker logs a score and the machine goes.
    import failclosed_interp.align as align_module
    from failclosed_interp.reproduce.store import MODELS_FOLDER, keep_started, restore_runs
    from failclosed_interp.score_log import PROGRESS_FILE, ScoreLog

    trained = next(e for e in build_grid(GridConfig(quick=True, seeds=(0,), recipes=("sft",))) if e.kind == "align")
    config = AlignConfig.from_dict(trained.config)
    runs, results = tmp_path / "runs", tmp_path / "results" / "grid"
    folder = run_folder(trained, runs)
    real_attack = align_module.adaptive_attack

    class MachineHandedBack(Exception):
        pass

    def one_score_then_gone(*args, log_file=None, **kwargs):
        ScoreLog(log_file, "this model").value("refusal_score of dim layer 1", lambda: -1.25)
        raise MachineHandedBack

    monkeypatch.setattr(align_module, "adaptive_attack", one_score_then_gone)
    with pytest.raises(MachineHandedBack):  # every round done; gone during the final summary's attacker
        align_module.align(config, folder, progress=False)
    log = folder / "final" / "adaptive" / PROGRESS_FILE
    main(["reproduce", "--keep-started", "--runs", str(runs), "--results", str(tmp_path / "results")])
    assert capsys.readouterr().out.splitlines() == [f"kept {results / MODELS_FOLDER / folder.name}"]
    shutil.rmtree(runs)  # a new machine
    assert restore_runs(results, runs) == [folder]
    assert ScoreLog(log, "this model").value("refusal_score of dim layer 1", lambda: 0.0) == -1.25

    monkeypatch.setattr(align_module, "adaptive_attack", real_attack)
    assert align_module.align(config, folder, progress=False)["rounds_completed"] == 1
    assert keep_started(runs, results) == []  # a finished run is kept when it finishes, not as one in progress


def json_records(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json") if p.name != "grid.json"}


def test_cli_writes_the_page_of_what_finished_then_exits_1_naming_the_failures(tmp_path, monkeypatch, capsys):
    import failclosed_interp.reproduce as reproduce
    from failclosed_interp.reproduce.runner import GridFailures

    def failing(*args, **kwargs):
        raise GridFailures({"attacks-sft-s0": "RuntimeError: out of memory"}, [])

    monkeypatch.setattr(reproduce, "run_grid", failing)
    with pytest.raises(SystemExit) as stop:
        main(["reproduce", "--results", str(tmp_path / "r"), "--page", str(tmp_path / "p.md")])
    assert stop.value.code == 1 and (tmp_path / "p.md").read_text().startswith("# Results")
    assert "attacks-sft-s0: RuntimeError: out of memory" in capsys.readouterr().err


def test_a_results_folder_of_another_version_is_refused(tmp_path):
    results = tmp_path / "results" / "grid"
    results.mkdir(parents=True)
    (results / "align-sft-s0.json").write_text(json.dumps({"schema": 999, "experiment": {}}))
    with pytest.raises(ResultsMismatch, match="schema 999"):
        render_results(tmp_path / "results")
    (results / "align-sft-s0.json").unlink()
    (results / "grid.json").write_text(json.dumps({"schema": 1, "grid": {"quick": False}}))
    with pytest.raises(ResultsMismatch, match="full grid"):
        run_grid(GridConfig(quick=True), tmp_path / "runs", results, progress=False, log=lambda _: None)


def test_cli_page_only_writes_the_page(tmp_path):
    assert main(["reproduce", "--page-only", "--results", str(tmp_path / "r"), "--page", str(tmp_path / "p.md")]) == 0
    assert (tmp_path / "p.md").read_text().startswith("# Results")


def test_the_demo_recipe_check_states_the_borderline_rule_and_applies_it(tmp_path):
    def model(harmful=0.9, harmless=0.1, own=0.8, attacker=0.8, xstest=0.4):
        value = {"refusal_harmful": harmful, "refusal_harmless": harmless, "refusal_borderline": 0.3,
                 "refusal_harmful_own_ablated": own, "refusal_harmful_attacker": attacker,
                 "compliance_harmful_attacker": 1 - attacker, "refusal_xstest_safe": xstest}
        return {**{k: {"value": v, "ci_low": v, "ci_high": v, "n": 40} for k, v in value.items()},
                "perplexity_harmless": {"perplexity": 2.0}}

    def row(sft: dict, failclosed: dict) -> dict:
        return {"round0_epochs": 3, "later_epochs": 2, "training_s": [{"train": 1.0}, {"train": 1.0}],
                "sft": sft, "failclosed": failclosed}

    settings = {"3+2": row(model(), model()),
                "3+2:borderline=72": row(model(xstest=0.25), model(xstest=0.28)),  # both fall by >= 0.10: passes
                "3+2:borderline=64": row(model(xstest=0.25), model(xstest=0.35)),  # the fail-closed one by 0.05 only
                "3+2:borderline=90": row(model(xstest=0.2), model(xstest=0.2, attacker=0.6))}  # attacker refusal drops
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "demo_recipe_check.json").write_text(json.dumps(
        {"split": "validation", "machine": {"cpus": 2}, "settings": settings}))
    section = render_results(tmp_path / "results").split("## The demo's recipe: epochs")[1].split("\n## ")[0]
    assert "| XSTest-safe refusal (validation half) | 0.40 [0.40, 0.40] | 0.40 [0.40, 0.40] | 0.25" in section
    assert ("3+2:borderline=72 against 3+2 passes; 3+2:borderline=64 against 3+2 fails; "
            "3+2:borderline=90 against 3+2 fails." in section)
    assert "3+2:borderline=72 against 3+2 (the SFT model): " in section  # its own round 0, so its SFT model too


def test_the_demo_recipe_check_applies_the_rounds_rule_per_seed_and_never_compares_across_seeds(tmp_path):
    def model(weakest=0.5, attacker=0.7, harmless=0.1):
        value = {"refusal_harmful": 0.9, "refusal_harmless": harmless, "refusal_borderline": 0.3,
                 "refusal_harmful_own_ablated": 0.8, "refusal_harmful_attacker": attacker,
                 "compliance_harmful_attacker": 1 - attacker}
        rate = lambda v: {"value": v, "ci_low": v, "ci_high": v, "n": 40}  # noqa: E731
        return {**{k: rate(v) for k, v in value.items()}, "perplexity_harmless": {"perplexity": 2.0},
                "refusal_harmful_each_ablated": [rate(0.9), rate(weakest)]}

    def row(failclosed: dict, rounds: int = 1) -> dict:
        return {"round0_epochs": 3, "later_epochs": 2, "training_s": [{"train": 1.0}] * (rounds + 1),
                "sft": model(), "failclosed": failclosed}

    settings = {"3+2": row(model(weakest=0.5)), "3+2:rounds=2": row(model(weakest=0.7), 2),  # +0.20: passes
                "3+2:seed=1": row(model(weakest=0.2)),
                "3+2:seed=1:rounds=2": row(model(weakest=0.6, attacker=0.5), 2)}  # attacker refusal drops: fails
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "demo_recipe_check.json").write_text(json.dumps(
        {"split": "validation", "machine": {"cpus": 2}, "settings": settings}))
    section = render_results(tmp_path / "results").split("## The demo's recipe: epochs")[1].split("\n## ")[0]
    assert ("| harmful, weakest single own direction ablated | 0.50 [0.50, 0.50] | 0.50 [0.50, 0.50] | 0.50 [0.50, 0.50] "
            "| 0.70 [0.70, 0.70] | 0.50 [0.50, 0.50] | 0.20 [0.20, 0.20] |") in section
    assert ("3+2:rounds=2 against 3+2 passes; 3+2:seed=1:rounds=2 against 3+2:seed=1 fails." in section)
    assert "3+2:seed=1:rounds=2 against 3+2:seed=1 (the fail-closed model)" in section
    assert "against 3+2 (the" not in section.replace("3+2:rounds=2 against 3+2 (the", "")  # seeds are not settings
    assert "Runs whose direction search" not in section
    settings["3+2:rounds=2"].update(rounds_completed=1, stop_reason="the new direction does not mediate refusal")
    (tmp_path / "results" / "demo_recipe_check.json").write_text(json.dumps(
        {"split": "validation", "machine": {"cpus": 2}, "settings": settings}))
    assert "3+2:rounds=2 after round 1: the new direction does not mediate refusal." in render_results(tmp_path / "results")


def test_a_later_recipe_starts_from_the_first_earlier_run_that_still_holds_its_round_0_model(tmp_path):
    grid = build_grid(GridConfig(quick=True))
    by_name = {e.name: e for e in grid}
    runs = tmp_path / "runs"
    finished = {}
    for name, holds_round0 in (("align-sft-s0", False), ("align-method-s0", True)):  # sft-s0: restored, last round only
        folder = runs / f"{name}-kept"
        (folder / "round_0").mkdir(parents=True)
        (folder / "state.json").write_text("{}")
        if holds_round0:
            (folder / "round_0" / "adapter").mkdir()
        finished[name] = {"experiment": {"name": name, "fingerprint": "kept", "run_folder": folder.name}}
    paper = by_name["align-paper-s0"]
    source = round0_source(paper, AlignConfig.from_dict(paper.config), grid, finished, runs)
    assert source == runs / "align-method-s0-kept"
    shutil.rmtree(source / "round_0" / "adapter")
    assert round0_source(paper, AlignConfig.from_dict(paper.config), grid, finished, runs) is None
