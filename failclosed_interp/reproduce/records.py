"""Which results file records which experiment's work, and where that work keeps its heavy artifacts.

A grid runs for days across versions of the toolkit, so a finished experiment must not be redone because a
later version added a setting. A results file counts for an experiment when it records the same fingerprint,
or when its saved config, read by this version's config class, is the experiment's config: settings added
since take their defaults (a setting is always added with the default that keeps the old behaviour), and
every setting it records keeps its value, so a changed default is a changed experiment. A measurement of a
model (validation, audit, public sets, attacks) counts only while it measured the model whose results file
counts now: when a training run is redone, everything measured on its old model is redone too."""

from __future__ import annotations

from pathlib import Path

from failclosed_interp.align import STATE_FILE, AlignConfig
from failclosed_interp.artifacts import read_json
from failclosed_interp.audit import AuditConfig
from failclosed_interp.configs import config_from_dict, config_to_dict
from failclosed_interp.evaluate import EvalConfig
from failclosed_interp.reproduce.grid import Experiment
from failclosed_interp.reproduce.validation import ValidationConfig

SCHEMA = 1  # the results-file format; files of another schema are refused, not misread
GRID_FILE = "grid.json"
STAGE_CONFIGS = {"align": AlignConfig, "validation": ValidationConfig, "audit": AuditConfig, "attacks": EvalConfig}


class ResultsMismatch(ValueError):
    """A results folder written by another version of the grid or the toolkit."""


def load_result(path: Path) -> dict | None:
    """A finished experiment's results file, None if absent; an error if it is of another format."""
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultsMismatch(
            f"{path} is not a results file of this version (schema {data.get('schema') if isinstance(data, dict) else '?'}, "
            f"expected {SCHEMA}); move the folder aside or use another results folder")
    return data


def load_records(folder: Path) -> dict[str, dict]:
    """Every results file in `folder`, by experiment name (`grid.json` left out)."""
    return {p.stem: data for p in sorted(folder.glob("*.json"))
            if p.name != GRID_FILE and (data := load_result(p)) is not None}


def as_current(kind: str, config: dict) -> dict | None:
    """A saved experiment config as this version reads it (settings added since at their defaults); None when
    this version cannot read it (a setting it no longer has)."""
    cls = STAGE_CONFIGS.get(kind)
    if cls is None:
        return config
    try:
        return config_to_dict(config_from_dict(cls, config))
    except (TypeError, ValueError):
        return None


def same_work(record: dict, exp: Experiment) -> bool:
    """Whether a results file records `exp`'s work (the model it measured aside: `finished_records`)."""
    saved = record["experiment"]
    if saved["fingerprint"] == exp.fingerprint:
        return True
    return (saved["kind"] == exp.kind and saved.get("model_of") == exp.model_of
            and as_current(exp.kind, record["config"]) == exp.config)


def finished_records(grid: list[Experiment], records: dict[str, dict]) -> dict[str, dict]:
    """The results file of every finished experiment of `grid`, by name: it records that experiment's work,
    and for a measurement of a model, that model's counting results file (its `model_fingerprint`)."""
    finished: dict[str, dict] = {}
    for exp in grid:  # a model's training comes before its measurements
        record = records.get(exp.name)
        if record is None or not same_work(record, exp):
            continue
        if exp.model_of is not None:
            model = finished.get(exp.model_of)
            if model is None or record["experiment"].get("model_fingerprint") != model["experiment"]["fingerprint"]:
                continue
        finished[exp.name] = record
    return finished


def recorded_folder_name(record: dict) -> str:
    """The name of the run folder a finished experiment's results file names (older files: name-fingerprint)."""
    experiment = record["experiment"]
    return experiment.get("run_folder", f"{experiment['name']}-{experiment['fingerprint']}")


def run_folder(exp: Experiment, runs: Path, record: dict | None = None) -> Path:
    """Where an experiment keeps its heavy artifacts (adapters, caches): the folder its results file names when
    it has finished; for a training run, a started run's folder whose settings read as `exp`'s (it resumes
    there); else a new one named by the fingerprint."""
    if record is not None:
        return runs / recorded_folder_name(record)
    new = runs / f"{exp.name}-{exp.fingerprint}"
    if exp.kind != "align" or new.exists():
        return new
    states = {folder: read_json(folder / STATE_FILE) for folder in runs.glob(f"{exp.name}-*")
              if (folder / STATE_FILE).exists()}
    started = [folder for folder, state in states.items() if as_current("align", state["config"]) == exp.config]
    return max(started, key=lambda f: (states[f]["completed_round"], f.name), default=new)
