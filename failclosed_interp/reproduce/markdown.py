"""Markdown building blocks shared by the results page's sections: a rate with its interval, a mean over
training seeds, a results file that may not exist yet, and the table of attack success per model."""

from __future__ import annotations

import math
from pathlib import Path

from failclosed_interp.artifacts import read_json
from failclosed_interp.stats import SeedSummary


def rate_cell(d: dict | None) -> str:
    """A saved rate as "value [low, high]", or "-" when there is none."""
    if d is None:
        return "-"
    return f"{d['value']:.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]"


def seed_mean(values: list[float | int | None]) -> str:
    """The mean ± standard deviation over training seeds of the finite values, or "-" when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "-"
    summary = SeedSummary(tuple(float(v) for v in finite))
    return f"{summary.mean:.2f} ± {summary.std:.2f}"


def results_file(root: Path, name: str) -> dict | None:
    """A measurement's results file under the results root, None if it has not been written."""
    path = root / name
    return read_json(path) if path.exists() else None


def not_measured(command: str) -> list[str]:
    """The line a section shows before its results file exists: the command that writes it."""
    return [f"Not measured yet: `{command}`."]


def attack_table(attacked: list[dict]) -> list[str]:
    """A table of attack success per attack, one row per attacked model (finished `attacks` experiments)."""
    if not attacked:
        return ["No attack run has finished yet."]
    names = list(dict.fromkeys(n for r in attacked for n in r["result"]["asr"]))
    lines = ["| model | " + " | ".join(names) + " | average (prompt attacks) |", "|---|" + "---|" * (len(names) + 1)]
    for r in attacked:
        asr = r["result"]["asr"]
        lines.append(f"| {r['experiment']['recipe']}, seed {r['experiment']['seed']} | " +
                     " | ".join(rate_cell(asr.get(n)) for n in names) + f" | {rate_cell(r['result'].get('average_asr'))} |")
    return lines
