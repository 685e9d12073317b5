"""Judge a file of (prompt, response) pairs (`failclosed judge`): one verdict per row plus totals, the
refusal and compliance rates with Wilson intervals."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from failclosed_interp.judges import Judge, Verdict, classify
from failclosed_interp.prompts import read_rows
from failclosed_interp.stats import wilson_rate

TABLE_EXTENSIONS = (".csv", ".json", ".jsonl")


def read_pairs(path: str | Path, prompt_column: str, response_column: str) -> tuple[list[str], list[str]]:
    """The prompt and response columns of a .csv/.json/.jsonl table (missing responses read as empty text)."""
    rows = read_rows(path, extensions=TABLE_EXTENSIONS)
    if not rows:
        raise ValueError(f"{path} has no rows; give a table with a {prompt_column!r} and a {response_column!r} column")
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path} must hold one object per row (with named columns), not plain strings")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for name in (prompt_column, response_column):
        if name not in columns:
            raise ValueError(f"{path} has no column {name!r}; its columns are {columns}")
    prompts = [str(r.get(prompt_column) or "") for r in rows]
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise ValueError(f"{path}: rows {empty[:5]} have no prompt in column {prompt_column!r}")
    return prompts, [str(r.get(response_column) or "") for r in rows]


def judge_file(path: str | Path, prompt_column: str, response_column: str, judge: Judge) -> dict:
    """Every row's verdict and the totals, as the JSON `failclosed judge` writes."""
    prompts, responses = read_pairs(path, prompt_column, response_column)
    verdicts = classify(judge, prompts, responses)
    counts = Counter(v.value for v in verdicts)
    return {
        "input": str(path),
        "judge": judge.name,
        "n": len(verdicts),
        "counts": {v.value: counts[v.value] for v in Verdict},
        "refusal_rate": wilson_rate([float(v is Verdict.REFUSAL) for v in verdicts]).to_dict(),
        "compliance_rate": wilson_rate([float(v is Verdict.COMPLIANCE) for v in verdicts]).to_dict(),
        "rows": [{"prompt": p, "response": r, "label": v.value} for p, r, v in zip(prompts, responses, verdicts)],
    }
