"""Where the adaptive attacker's direction lies against the directions a model was trained against.

A fail-closed run trains its model to keep refusing with its found directions ablated; the independent
adaptive attacker then searches the final model on its own prompts. When the attacker still breaks the
model, the question is which pathway it used: one the loop trained against (so the training did not hold),
or one the loop never proposed. For every finished training run of the grid whose kept copy
(`<grid>/models/<run folder>/final/`, `store`) holds the attacker's search, and for each KL budget, this
module reads the direction the attacker chose (layer, position, DIM or RDO), the harmful refusal it leaves
(from the results file), its largest |cosine| with a direction the run trained against, and its |cosine|
with the direction the attacker chose in the same training seed's sft model at the same budget (a value
near 1: the fail-closed model still refuses through the sft model's pathway). Ablating v or -v is the
same intervention, so cosines are taken in absolute value. Pure reads of results files and kept copies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from failclosed_interp.attacks.adaptive import SEARCH_FILE, AttackSearch, load_search
from failclosed_interp.directions import Direction, DirectionSet, load_directions
from failclosed_interp.reproduce.markdown import rate_cell
from failclosed_interp.reproduce.records import recorded_folder_name
from failclosed_interp.reproduce.results import of_kind
from failclosed_interp.reproduce.store import MODELS_FOLDER
from failclosed_interp.reproduce.targets import BASELINE  # the sft recipe: the others are compared with its choice


@dataclass(frozen=True)
class AttackerDirection:
    """The attacker's choice at one KL budget on one trained model, and where it lies."""

    name: str  # the training experiment, e.g. "align-method-s0"
    kl_budget: float
    direction: Direction | None  # None: no candidate fitted the budget (the prompts were answered un-ablated)
    refusal: dict | None  # harmful refusal under it (a rate record from the results file)
    trained_against: tuple[int, ...]  # the layers of the directions the run trained against
    max_cos_trained: float | None  # largest |cos| with one of them (None: it trained against none)
    cos_sft: float | None  # |cos| with the sft model's choice of the same seed and budget (None: not available)


def _kept_final(folder: Path, record: dict) -> Path:
    return folder / MODELS_FOLDER / recorded_folder_name(record) / "final"


def _search(final: Path) -> AttackSearch | None:
    adaptive = final / "adaptive"
    return load_search(adaptive) if (adaptive / SEARCH_FILE).is_file() else None


def _found(final: Path) -> DirectionSet:
    return load_directions(final / "directions") if (final / "directions").is_dir() else DirectionSet()


def _abs_cos(a: Direction, b: Direction) -> float:
    return abs(float(torch.dot(a.vector.double(), b.vector.double())))  # both are unit vectors


def _refusal_at(record: dict, budget: float) -> dict | None:
    for row in (record["result"].get("adaptive_attack") or {}).get("budgets", []):
        if float(row["kl_budget"]) == budget:
            return row["refusal"]
    return None


def attacker_directions(folder: str | Path, results: dict[str, dict]) -> list[AttackerDirection]:
    """One row per finished training experiment of the grid in `folder` (results by name) and KL budget, for
    those whose kept copy holds the attacker's search; in recipe order (sft first), then by seed and budget."""
    folder = Path(folder)
    searches: dict[str, tuple[dict, AttackSearch, DirectionSet]] = {}
    for record in of_kind(results, "align"):  # in recipe order, then by seed
        final = _kept_final(folder, record)
        search = _search(final)
        if search is not None:
            searches[record["experiment"]["name"]] = (record, search, _found(final))
    rows = []
    for name, (record, search, found) in searches.items():
        seed = record["experiment"]["seed"]
        baseline = searches.get(f"align-{BASELINE}-s{seed}")
        for budget, _ in search.choices:
            chosen = search.chosen(budget)
            theirs = (_chosen_at(baseline[1], budget) if baseline is not None and record["experiment"]["recipe"] != BASELINE
                      else None)
            rows.append(AttackerDirection(
                name=name, kl_budget=budget, direction=chosen, refusal=_refusal_at(record, budget),
                trained_against=tuple(d.layer for d in found),
                max_cos_trained=max((_abs_cos(chosen, d) for d in found), default=None) if chosen is not None else None,
                cos_sft=_abs_cos(chosen, theirs) if chosen is not None and theirs is not None else None))
    return rows


def _chosen_at(search: AttackSearch, budget: float) -> Direction | None:
    """The search's choice at `budget`; None when it chose nothing there or searched without that budget."""
    return search.chosen(budget) if budget in {b for b, _ in search.choices} else None


def _where(direction: Direction | None) -> str:
    return "none fits" if direction is None else f"{direction.method}, {direction.layer}, {direction.position}"


def _cos(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def attacker_geometry_section(folder: str | Path, results: dict[str, dict]) -> list[str]:
    """The results page's table of `attacker_directions`."""
    rows = attacker_directions(folder, results)
    if not rows:
        return ["No finished training run has a kept copy of the adaptive attacker's search yet."]
    lines = ["For each finished training run (its kept copy under `grid/models/`) and each KL budget: the direction the "
             "independent adaptive attacker chose on the final model, the harmful refusal (TEST prompts) with it "
             "ablated, its largest |cosine| with a direction the run trained against, and its |cosine| with the "
             "attacker's choice on the sft model of the same training seed at the same budget. A low first cosine "
             "and a high second one say that the attacker broke the model through the sft model's own pathway, one "
             "the loop never trained against.", "",
             "| model | KL budget | attacker's direction (method, layer, position) | harmful refusal with it ablated | "
             "trained against (layers) | largest \\|cos\\| with those | \\|cos\\| with sft's choice |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        trained = ", ".join(str(layer) for layer in row.trained_against) or "none"
        lines.append(f"| {row.name.removeprefix('align-')} | {row.kl_budget:g} | {_where(row.direction)} | "
                     f"{rate_cell(row.refusal)} | {trained} | {_cos(row.max_cos_trained)} | {_cos(row.cos_sft)} |")
    return lines


__all__ = ["AttackerDirection", "attacker_directions", "attacker_geometry_section"]
