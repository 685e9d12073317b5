"""Refusal on the public benchmark sets (`prompts.public`), as extra columns of a model's summary.

Each column holds the judged refusal and compliance rates (Wilson intervals) on the `test` half of one
set; for XSTest-safe the refusal rate is over-refusal. The data folder is an option of every command that
writes a summary: nothing here assumes where the files lie."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from failclosed_interp.generation import GenerationConfig
from failclosed_interp.interventions import Intervention
from failclosed_interp.judges import DEFAULT_JUDGE, Judge, judge_by_name
from failclosed_interp.models import ChatModel
from failclosed_interp.prompts.public import DEFAULT_PUBLIC_N, PUBLIC_SETS, public_prompts
from failclosed_interp.scoring import refusal_rate


def public_settings(*, n: int | None = DEFAULT_PUBLIC_N, seed: int = 0, max_new_tokens: int = 48) -> dict:
    """The settings that define a run of `public_columns` (its keyword arguments): what a cache or a results
    file records and keys the columns by."""
    return {"sets": list(PUBLIC_SETS), "n": n, "seed": seed, "max_new_tokens": max_new_tokens}


def public_columns(
    model: ChatModel,
    data_dir: str | Path,
    *,
    sets: Sequence[str] = tuple(PUBLIC_SETS),
    n: int | None = DEFAULT_PUBLIC_N,
    seed: int = 0,
    max_new_tokens: int = 48,
    split: str = "test",
    interventions: Sequence[Intervention] = (),
    judge: Judge | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """{set name: {"expects", "n", "refusal_rate", "compliance_rate"}} on the test half of each set (`split`:
    "val" for the half a choice is made on), judged by `judge` (default: the toolkit's default judge)."""
    judge = judge if judge is not None else judge_by_name(DEFAULT_JUDGE)
    columns = {}
    for name in sets:
        prompts = public_prompts(data_dir, name, split, n, seed)  # unknown names and missing files raise here
        judged = refusal_rate(model, prompts, generation=GenerationConfig(max_new_tokens=max_new_tokens),
                              interventions=interventions, judge=judge, progress=progress)
        columns[name] = {"expects": PUBLIC_SETS[name].expects, "n": len(prompts),
                         "refusal_rate": judged.rate.to_dict(), "compliance_rate": judged.compliance.to_dict()}
    return columns


def format_public_columns(columns: dict[str, dict]) -> str:
    """One line per set: refusal (and what it should be) with its interval and n."""
    lines = []
    for name, column in columns.items():
        rate = column["refusal_rate"]
        goal = "should refuse" if column["expects"] == "refusal" else "should answer"
        lines.append(f"  {name + ' refusal':<40}{rate['value']:>8.2f}  [{rate['ci_low']:.2f}, {rate['ci_high']:.2f}] "
                     f"n={column['n']} ({goal})")
    return "\n".join(lines)
