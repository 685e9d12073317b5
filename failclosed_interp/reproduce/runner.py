"""Run the grid resumably: each finished experiment leaves `results/<name>.json` (small, committed), and its
heavy artifacts (adapters, caches) in `runs/<name>-<fingerprint>/`. A rerun skips every experiment whose
results file still counts for it (`records`), and an interrupted training run resumes from its last round.
Training runs are also kept, trimmed, in `results/models/` after every round (`store`), so that a grid goes on
on another machine: a finished model whose run folder and kept copy are both gone is trained again.
An experiment that raises is recorded in its run folder and skipped with what needs it; the rest go on.
Every experiment runs inside `score_log.shared_logs(runs/score_logs)`: a search (direction selection, RDO, the
adaptive attacker) that another experiment already made on the same model with the same settings is read
back from its log, not made again; e.g. recipes whose loops stop at the same round-0 model share its searches."""

from __future__ import annotations

import traceback
from datetime import datetime, timezone
from pathlib import Path

from failclosed_interp.align import STATE_FILE, AlignConfig, align, has_round0_model
from failclosed_interp.attacks.adaptive import SEARCH_FILE, AdaptiveAttackConfig, load_search
from failclosed_interp.artifacts import atomic_write, read_json, write_json
from failclosed_interp.audit import AuditConfig, audit_job
from failclosed_interp.configs import config_from_dict
from failclosed_interp.evaluate import EvalConfig, ModelSpec, evaluate
from failclosed_interp.models import load_model
from failclosed_interp.public_columns import public_columns
from failclosed_interp.stopwatch import KeptClock, machine
from failclosed_interp.reproduce.grid import (
    FIRST_ESTIMATE_S, QUICK_ESTIMATE_S, Experiment, GridConfig, build_grid, pending, selection_rule,
)
from failclosed_interp.reproduce.records import (
    GRID_FILE, SCHEMA, ResultsMismatch, finished_records, load_records, run_folder,
)
from failclosed_interp.reproduce.selection import Choice, choose_recipe
from failclosed_interp.reproduce.store import CLOCK_FILE, MODELS_FOLDER, keep_run, model_available, restore_runs
from failclosed_interp.score_log import index_logs, shared_logs
from failclosed_interp.reproduce.validation import ValidationConfig, needs_public, validate

ERROR_FILE = "error.txt"  # in a failed experiment's run folder: its traceback


class Estimates:
    """Expected seconds of an experiment from the results files (`load_records`): the mean measured wall time
    of those of the same kind and recipe, else of the same kind, else a first guess. Call it with a kind and
    a recipe (None when the recipe is not known yet, e.g. the recipe validation will choose)."""

    def __init__(self, records: dict[str, dict], quick: bool):
        guesses = QUICK_ESTIMATE_S if quick else FIRST_ESTIMATE_S
        measured: dict[tuple[str, str | None], list[float]] = {}
        for r in records.values():
            kind, recipe = r["experiment"]["kind"], r["experiment"]["recipe"]
            for key in ((kind, recipe), (kind, None)):
                measured.setdefault(key, []).append(float(r["wall_s"]))
        self._guesses = guesses
        self._means = {key: sum(values) / len(values) for key, values in measured.items()}

    def __call__(self, kind: str, recipe: str | None = None) -> float:
        return self._means.get((kind, recipe), self._means.get((kind, None), float(self._guesses[kind])))


SCORE_LOGS = "score_logs"  # in the runs folder: every search's log by its digest, shared by the experiments


def current_grid(config: GridConfig, records: dict[str, dict]) -> tuple[list[Experiment], Choice]:
    """The grid as the finished results (`load_records`) make it, and the default recipe's choice: the rule
    (`grid.selection_rule`) over the grid's finished validation experiments. With `later_seeds="chosen"`
    those are the first seed's, and once the rule has chosen, the later seeds train the chosen recipe too."""
    grid = build_grid(config)
    finished = finished_records(grid, records)
    expected = [(e.recipe, e.seed) for e in grid if e.kind == "validation"]
    measured = [finished[e.name] for e in grid if e.kind == "validation" and e.name in finished]
    choice = choose_recipe(measured, expected, selection_rule(config))
    if config.later_seeds == "chosen" and choice.recipe is not None:
        grid = build_grid(config, choice.recipe)
    return grid, choice


def run_grid(config: GridConfig, runs: str | Path, results: str | Path, *, progress: bool = True,
             log=print, data_dir: str | Path | None = None) -> list[Experiment]:
    """Run every unfinished experiment of the grid in order; returns those run in this call. The grid is
    read again after each experiment (`current_grid`): the default recipe's choice adds the later seeds'
    experiments once the first seed's validation results are in. The public-set experiments need `data_dir`
    (the folder holding the public sets); without it they are skipped, and the validation experiments leave
    out their XSTest column (added, alone, by a later run given `data_dir`)."""
    runs, results = Path(runs), Path(results)
    _check_grid_file(results, config)
    for folder in restore_runs(results, runs):
        log(f"grid: restored {folder.name} from {results / MODELS_FOLDER}")
    index_logs(runs, runs / SCORE_LOGS)  # the searches' logs of every run so far, restored ones included
    ran, failed = [], {}
    announced, chosen = False, None
    while True:
        records = load_records(results)  # with every experiment finished so far
        grid, choice = current_grid(config, records)
        finished, expected = usable_records(grid, records, runs), Estimates(records, config.quick)
        done = failed.keys() | {e.name for e in ran}  # nothing runs twice in one call
        todo = [e for e in _to_run(grid, finished, data_dir) if e.name not in done]
        waiting = pending(config, choice.recipe)
        left = sum((expected(e.kind, e.recipe) for e in todo), 0.0) + sum(expected(name.split("-")[0]) for name in waiting)
        if not announced:
            if data_dir is None and any(e.kind == "public" and e.name not in finished for e in grid):
                log("grid: no data folder given, so the public-set columns are skipped (pass --data-dir to measure them)")
            log(f"grid: {len(grid) + len(waiting)} experiments, {len(grid) - len(todo)} finished, {len(todo) + len(waiting)} "
                f"to run (expected {_hours(left)})" + (f"; {len(waiting)} of them once the default recipe is chosen "
                                                       f"on the first seed" if waiting else ""))
            announced = True
        if choice.recipe not in (None, chosen):  # made, at the start or by the validation experiment that just ran
            log(f"grid: {choice.describe()}" + (" The later seeds train it too." if config.later_seeds == "chosen" else ""))
        chosen = choice.recipe
        if not todo:
            break
        exp, step = todo[0], f"[{len(ran) + len(failed) + 1}/{len(ran) + len(failed) + len(todo) + len(waiting)}]"
        if exp.model_of in failed:
            failed[exp.name] = f"its model's experiment {exp.model_of} failed"
            log(f"{step} {exp.name}: skipped, {failed[exp.name]}")
            continue
        log(f"{step} {exp.name}: expected {_hours(expected(exp.kind, exp.recipe))}, {_hours(left)} left in all")
        folder = run_folder(exp, runs, finished.get(exp.name))  # a finished one: measured again for a new column
        untimed = folder.exists() and any(folder.iterdir()) and not (folder / CLOCK_FILE).exists()  # ran with no clock
        folder.mkdir(parents=True, exist_ok=True)
        measured_on = machine()  # at the start: the load the experiment ran under
        try:
            # the clock counts every attempt's time, an interrupted one's too; a search made before on the same
            # model the same way is read back from its log, not made again
            with KeptClock(folder / CLOCK_FILE, untimed_before=untimed) as clock, shared_logs(runs / SCORE_LOGS):
                outcome = _run(exp, folder, grid, finished, runs, progress, data_dir, results)
        except Exception as err:  # noqa: BLE001 - one broken experiment must not hold up the rest of a day-long grid
            failed[exp.name] = f"{type(err).__name__}: {err}"
            error = traceback.format_exc()
            atomic_write(folder / ERROR_FILE, lambda tmp: Path(tmp).write_text(error))
            log(f"{step} {exp.name}: FAILED ({failed[exp.name]}); the traceback is in "
                f"{folder / ERROR_FILE}; going on with the experiments that do not need it")
            continue
        model = finished[exp.model_of]["experiment"]["fingerprint"] if exp.model_of else None
        write_json(results / f"{exp.name}.json", {
            "schema": SCHEMA, "config": exp.config, "result": outcome,
            "experiment": {**exp.to_dict(), "run_folder": folder.name, "model_fingerprint": model},
            "wall_s": round(clock.seconds, 1), "attempts": clock.attempts, "machine": measured_on,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        ran.append(exp)
    if failed:
        raise GridFailures(failed, ran)
    return ran


class GridFailures(RuntimeError):
    """Experiments of a grid run that failed (`failed`: name -> why), after every other one ran (`ran`).
    Their results files are not written, so the next run tries them again."""

    def __init__(self, failed: dict[str, str], ran: list[Experiment]):
        self.failed, self.ran = failed, ran
        lines = "\n".join(f"  {name}: {why}" for name, why in failed.items())
        super().__init__(f"{len(failed)} experiment(s) of the grid did not finish ({len(ran)} others did):\n{lines}\n"
                         "fix the cause and run the same command again: finished experiments are kept")


def usable_records(grid: list[Experiment], records: dict[str, dict], runs: Path) -> dict[str, dict]:
    """`finished_records`, less the finished training runs whose model is gone (no run folder with a final
    adapter, `store.restore_runs` having put back what was kept): they are trained again, and what was
    measured on them counts again once they are."""
    finished = finished_records(grid, records)
    gone = {e.name for e in grid if e.kind == "align" and e.name in finished
            and not model_available(run_folder(e, runs, finished[e.name]))}
    return finished_records([e for e in grid if e.name not in gone], records) if gone else finished


def _to_run(grid: list[Experiment], finished: dict[str, dict], data_dir: str | Path | None) -> list[Experiment]:
    """The experiments a run of the grid runs, in order: the unfinished ones (not in `finished`, the
    `finished_records`; the public sets' only with `data_dir`) and, with `data_dir`, finished validation
    experiments that still lack their XSTest column."""
    todo = [e for e in grid if e.name not in finished
            or (data_dir is not None and e.kind == "validation" and needs_public(finished[e.name]["result"]))]
    return todo if data_dir is not None else [e for e in todo if e.kind != "public"]


def grid_status(config: GridConfig, runs: str | Path, results: str | Path, *,
                data_dir: str | Path | None = None) -> list[dict]:
    """Where a grid stands, computing nothing (kept training runs missing from `runs` are put back first, as a
    run of the grid would, so that what they hold is seen): per experiment, in run order, its `name`, `kind`, `state`
    ("finished"; "failed": its last try raised; "started": a training run with completed rounds or a folder
    of partial artifacts; "to run"; "skipped": public sets without `data_dir`; or "waiting": the later seeds'
    experiments of the recipe the first seed's validation will choose, named with `chosen`), `seconds`
    (measured when finished, else expected) and `detail`."""
    runs, results = Path(runs), Path(results)
    restore_runs(results, runs)
    records = load_records(results)
    grid, choice = current_grid(config, records)
    finished, counted = usable_records(grid, records, runs), finished_records(grid, records)
    todo = {e.name for e in _to_run(grid, finished, data_dir)}
    expected = Estimates(records, config.quick)
    rows = []
    for exp in grid:
        row = {"name": exp.name, "kind": exp.kind, "seconds": expected(exp.kind, exp.recipe), "detail": ""}
        folder = run_folder(exp, runs, finished.get(exp.name))
        if exp.name not in todo:
            if exp.name in finished:
                row.update(state="finished", seconds=finished[exp.name]["wall_s"], detail=finished[exp.name]["finished"])
            else:
                row.update(state="skipped", detail="needs --data-dir (the public sets' folder)")
        elif exp.name in finished:
            row.update(state="to run", detail="finished without the public sets: measures its XSTest column alone")
        elif exp.name in counted and exp.kind == "align":
            row.update(state="to run", detail=f"finished, but its model is gone (no run folder in {runs}, none kept in "
                                              f"{results / MODELS_FOLDER}): trained again")
        elif (folder / ERROR_FILE).exists():
            row.update(state="failed", detail=f"the last try failed ({folder / ERROR_FILE}); the next run tries again")
        elif exp.kind == "align" and (folder / STATE_FILE).exists():
            done = int(read_json(folder / STATE_FILE)["completed_round"])
            rounds = AlignConfig.from_dict(exp.config).rounds
            row.update(state="started", detail=f"round {done} of {rounds} completed (round 0: SFT); resumes after it")
        elif folder.exists():
            row.update(state="started", detail=f"partial artifacts in {folder}")
        else:
            row["state"] = "to run"
        if row["state"] in ("started", "failed") and (folder / CLOCK_FILE).exists():
            clock = read_json(folder / CLOCK_FILE)
            row["detail"] += (f"; {_hours(clock['seconds'])} spent on it so far" if clock["attempts"] is not None else
                              f"; at least {_hours(clock['seconds'])} spent on it (earlier attempts were not timed)")
        rows.append(row)
    for name in pending(config, choice.recipe):
        rows.append({"name": name, "kind": name.split("-")[0], "state": "waiting", "seconds": expected(name.split("-")[0]),
                     "detail": "added when validation has chosen the default recipe on the first seed"})
    return rows


def format_status(rows: list[dict]) -> str:
    """`grid_status` as a table, with the time the unfinished experiments are expected to take."""
    lines = [f"{'experiment':<26}{'state':<10}{'time':>9}  detail"]
    for r in rows:
        lines.append(f"{r['name']:<26}{r['state']:<10}{_hours(r['seconds']):>9}  {r['detail']}".rstrip())
    left = [r for r in rows if r["state"] in ("failed", "started", "to run", "waiting")]
    finished = sum(r["state"] == "finished" for r in rows)
    lines.append(f"{finished} of {len(rows)} finished; {len(left)} to run, expected {_hours(sum(r['seconds'] for r in left))} "
                 "(estimates: the mean wall time of finished experiments of the same kind and recipe, else of the same "
                 "kind, else a first guess; a started experiment counts in full)")
    return "\n".join(lines)


def _check_grid_file(results: Path, config: GridConfig) -> None:
    """`results/grid.json` names the grid the folder holds; a folder of another grid is refused."""
    from failclosed_interp.configs import config_to_dict

    path, wanted = results / GRID_FILE, {"schema": SCHEMA, "grid": config_to_dict(config)}
    if path.exists():
        saved = read_json(path)
        if saved.get("schema") != SCHEMA:
            raise ResultsMismatch(f"{path} was written by another version (schema {saved.get('schema')}, expected "
                                  f"{SCHEMA}); move the folder aside or use another results folder")
        if saved.get("grid", {}).get("quick") != config.quick:
            raise ResultsMismatch(f"{results} holds a {'quick' if saved['grid'].get('quick') else 'full'} grid; use "
                                  f"another results folder for a {'quick' if config.quick else 'full'} one")
    write_json(path, wanted)


def _run(exp: Experiment, folder: Path, grid: list[Experiment], finished: dict[str, dict], runs: Path, progress: bool,
         data_dir: str | Path | None, results: Path) -> dict:
    """Run one experiment in `folder`; `finished`: the results files of the finished ones (`finished_records`).
    A training run is kept in `results` (`store.keep_run`) after every round and when it has finished."""
    if exp.kind == "align":
        config = AlignConfig.from_dict(exp.config)
        summary = align(config, folder, progress=progress, round0_from=round0_source(exp, config, grid, finished, runs),
                        on_round=lambda k, metrics: keep_run(folder, results))
        keep_run(folder, results)
        return summary
    trained = next(e for e in grid if e.name == exp.model_of)
    final = run_folder(trained, runs, finished[trained.name]) / "final"
    model = AlignConfig.from_dict(trained.config).model
    directions = final / "directions" if (final / "directions").exists() else None
    if exp.kind == "public":
        return public_columns(load_model(model, adapter=final / "adapter"), data_dir, **exp.config, progress=progress)
    if exp.kind == "validation":
        config = ValidationConfig.from_dict(exp.config)
        loaded = load_model(model, adapter=final / "adapter")
        searched = align_search(trained, final, config.attacker)
        return validate(loaded, config, folder, data_dir, search=load_search(searched, loaded) if searched else None,
                        progress=progress)
    if exp.kind == "audit":
        config = AuditConfig.from_dict(exp.config)
        searched = align_search(trained, final, config.attacker) if config.adaptive else None
        result = audit_job(folder, model, adapter=final / "adapter", directions=directions, config=config,
                           adaptive_search=searched, progress=progress)
        return result.to_dict()
    config = config_from_dict(EvalConfig, exp.config)
    searched = align_search(trained, final, config.ablation) if "ablation" in config.attacks else None
    spec = ModelSpec(trained.name.removeprefix("align-"), model, str(final / "adapter"),
                     ablation_search=str(searched) if searched else None)
    evaluated = evaluate([spec], folder, config, progress=progress)
    return evaluation_row(evaluated, spec.label)


def align_search(trained: Experiment, final: Path, attacker: AdaptiveAttackConfig) -> Path | None:
    """The folder of the adaptive attacker's search that align's summary made on the final model, when it
    searched with the same settings as `attacker` (then it is reused, not searched again), else None."""
    same = AlignConfig.from_dict(trained.config).attacker == attacker
    return final / "adaptive" if same and (final / "adaptive" / SEARCH_FILE).exists() else None


def round0_source(exp: Experiment, config: AlignConfig, grid: list[Experiment], finished: dict[str, dict],
                  runs: Path) -> Path | None:
    """The run folder of an earlier align experiment of the grid whose round 0 (plain SFT) has finished with
    the same sft settings and whose round-0 model is still there (`has_round0_model`): every recipe of one
    training seed then starts from the same SFT model."""
    for other in grid:
        if other.name == exp.name:
            return None
        folder = run_folder(other, runs, finished.get(other.name))
        if (other.kind == "align" and has_round0_model(folder)
                and AlignConfig.from_dict(other.config).sft == config.sft):
            return folder
    return None


def evaluation_row(evaluated: dict, label: str) -> dict:
    """One model's attack results from `evaluate`'s results (its row, with the run's shared settings)."""
    return {**evaluated["models"][label], **{k: v for k, v in evaluated.items() if k != "models"}}


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
