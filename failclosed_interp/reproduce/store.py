"""Trained models kept beside the results, so that a grid goes on where it stopped on another machine.

A run folder (`runs/`) holds every round's adapter and caches: too heavy to keep with the results, and lost
when a machine is handed back. What the grid needs of a training run is much smaller: to resume it, its
settings, its training examples, the RDO targets, the last completed round (adapter and directions) and
the small per-round records, and the scores its searches in progress have logged (`score_log`); to measure
a finished model, its final adapter, directions and the adaptive attacker's search. `keep_run` copies that
much into `<results>/models/<run folder name>/` (about 10 MB on the embedded model), replacing the earlier
copy, and `restore_runs` puts it back into `runs/` when a run folder is missing. A kept run with
`summary.json` is a finished model; one without is a run to resume. `keep_started` refreshes the copies of
the runs still training (e.g. shortly before a machine is handed back), so that a search in progress
resumes on the next machine with the scores it had."""

from __future__ import annotations

import shutil
from pathlib import Path

from failclosed_interp.align import STATE_FILE, SUMMARY_FILE
from failclosed_interp.artifacts import atomic_folder, read_json
from failclosed_interp.score_log import PROGRESS_FILE
from failclosed_interp.training.sft import TRAINING_FILE

MODELS_FOLDER = "models"  # in the results folder
CLOCK_FILE = "clock.json"  # in an experiment's run folder: the seconds spent on it over all its attempts (`KeptClock`)
_RECORDS = ("config.json", STATE_FILE, "examples.json", SUMMARY_FILE, CLOCK_FILE)  # small files at a run folder's top
_ROUND_RECORDS = ("metrics.json", TRAINING_FILE)  # small files of every round


def kept_files(run: Path) -> list[Path]:
    """The files of a training run folder that are kept (relative paths): see the module docstring."""
    if not (run / STATE_FILE).exists():
        return []
    last = f"round_{int(read_json(run / STATE_FILE)['completed_round'])}"
    wanted = [Path(name) for name in _RECORDS]
    for round_dir in sorted(run.glob("round_*")):
        wanted += [Path(round_dir.name) / name for name in _ROUND_RECORDS]
    trees = [Path("round_0") / "rdo", Path(last) / "adapter", Path(last) / "directions"]
    if (run / SUMMARY_FILE).exists():
        trees += [Path("final") / "adapter", Path("final") / "directions", Path("final") / "adaptive"]
    for tree in trees:
        wanted += [p.relative_to(run) for p in sorted((run / tree).rglob("*")) if p.is_file()]
    wanted += [p.relative_to(run) for p in sorted(run.rglob(PROGRESS_FILE))]
    return list(dict.fromkeys(p for p in wanted if (run / p).is_file()))


def keep_run(run: str | Path, results: str | Path) -> Path | None:
    """Copy what the grid needs of the training run in `run` into `results/models/<run name>/` (the earlier
    copy replaced at once, never half-written); the kept folder, or None when the run has no completed round."""
    run = Path(run)
    files = kept_files(run)
    if not files:
        return None
    target = Path(results) / MODELS_FOLDER / run.name
    with atomic_folder(target) as tmp:
        for rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run / rel, tmp / rel)
    return target


def keep_started(runs: str | Path, results: str | Path) -> list[Path]:
    """`keep_run` for every training run in `runs` that has completed a round but not finished; the kept folders."""
    started = [run for run in sorted(Path(runs).glob("*")) if (run / STATE_FILE).exists() and not (run / SUMMARY_FILE).exists()]
    return [kept for kept in (keep_run(run, results) for run in started) if kept is not None]


def restore_runs(results: str | Path, runs: str | Path) -> list[Path]:
    """Put every kept run of `results/models/` whose run folder is missing from `runs` (or holds no completed
    round) back into `runs`; the restored folders."""
    restored = []
    for kept in sorted((Path(results) / MODELS_FOLDER).glob("*")):
        run = Path(runs) / kept.name
        if not (kept / STATE_FILE).exists() or (run / STATE_FILE).exists():
            continue
        with atomic_folder(run) as tmp:
            shutil.copytree(kept, tmp, dirs_exist_ok=True)
        restored.append(run)
    return restored


def model_available(run: str | Path) -> bool:
    """Whether a finished training run's folder still holds its final model (adapter)."""
    return (Path(run) / "final" / "adapter").is_dir()
