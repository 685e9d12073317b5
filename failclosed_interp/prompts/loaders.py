"""Load a `PromptSet` from your own files (.txt, .csv, .json, .jsonl) or a Hugging Face dataset."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from failclosed_interp.prompts.sets import PromptSet

# Text columns used by common refusal sets (AdvBench: goal, HarmBench: Behavior, XSTest: prompt).
TEXT_COLUMNS = ("instruction", "prompt", "goal", "behavior", "Behavior", "text")
EXTENSIONS = (".txt", ".csv", ".json", ".jsonl")


def load_prompts(
    path: str | Path,
    *,
    column: str | None = None,
    category_column: str | None = None,
    name: str | None = None,
    filter: dict[str, str] | None = None,
) -> PromptSet:
    """Prompts from a file: .txt (one per non-empty line), .csv (header row), .json (list of strings
    or of objects, or an object holding one such list) or .jsonl (one string or object per line).

    For tables, `column` picks the text (default: the first of TEXT_COLUMNS present), `category_column`
    the category, and `filter={"label": "safe"}` keeps only rows whose column equals the value."""
    path = Path(path)
    rows = read_rows(path)
    return rows_to_prompt_set(
        rows, column=column, category_column=category_column, filter=filter, name=name or path.stem, source=str(path)
    )


def read_rows(path: str | Path, extensions: Sequence[str] = EXTENSIONS) -> list:
    """The parsed rows of a .txt (strings), .csv (dicts), .json or .jsonl file (strings or dicts)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    suffix = path.suffix.lower()
    readers = {".txt": _read_txt, ".csv": _read_csv, ".json": _read_json, ".jsonl": _read_jsonl}
    if suffix not in readers or suffix not in extensions:
        raise ValueError(f"cannot read '{path.name}': unknown extension {suffix!r}; use one of {list(extensions)}")
    return readers[suffix](path)


def load_hf_dataset(
    name: str,
    *,
    split: str = "train",
    column: str | None = None,
    category_column: str | None = None,
    filter: dict[str, str] | None = None,
) -> PromptSet:
    """Prompts from a Hugging Face dataset: a hub name (downloaded or cached by `datasets`) or a local
    folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`. Columns work as in `load_prompts`."""
    try:
        import datasets
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "load_hf_dataset needs the `datasets` package: pip install datasets (or pip install 'failclosed_interp[data]')"
        ) from err
    if Path(name).is_dir():
        loaded = datasets.load_from_disk(name)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"dataset folder {name} has no split {split!r}; available: {sorted(loaded)}")
            loaded = loaded[split]
    else:
        loaded = datasets.load_dataset(name, split=split)
    rows = [dict(row) for row in loaded]
    label = f"{Path(name).name}/{split}"
    return rows_to_prompt_set(
        rows, column=column, category_column=category_column, filter=filter, name=label, source=f"dataset {name} ({split})"
    )


def rows_to_prompt_set(
    rows: list,
    *,
    column: str | None,
    category_column: str | None,
    filter: dict[str, str] | None,
    name: str,
    source: str,
) -> PromptSet:
    """Turn parsed rows (all str, or all dicts) into a PromptSet, applying filter and column choice."""
    if not rows:
        raise ValueError(f"no prompts found in {source}")
    if all(isinstance(r, str) for r in rows):
        if column or category_column or filter:
            raise ValueError(
                f"{source} holds plain strings, so column/category_column/filter do not apply; drop them"
            )
        return PromptSet(instructions=tuple(rows), categories=("",) * len(rows), name=name)
    if not all(isinstance(r, dict) for r in rows):
        kinds = sorted({type(r).__name__ for r in rows})
        raise ValueError(f"{source} has rows of type {kinds}; every row must be a string, or every row an object")

    columns = list(dict.fromkeys(k for r in rows for k in r))
    for key in [*(filter or {}), *([category_column] if category_column else [])]:
        if key not in columns:
            raise ValueError(f"{source} has no column {key!r}; available columns: {columns}")
    for key, value in (filter or {}).items():
        kept = [r for r in rows if str(r.get(key)) == str(value)]
        if not kept:
            seen = sorted({str(r.get(key)) for r in rows})[:10]
            raise ValueError(f"no rows in {source} have {key} == {value!r}; values seen in {key!r}: {seen}")
        rows = kept

    text_column = column if column is not None else next((c for c in TEXT_COLUMNS if c in columns), None)
    if text_column is None:
        raise ValueError(f"{source} has none of the text columns {list(TEXT_COLUMNS)}; pass column= one of {columns}")
    if text_column not in columns:
        raise ValueError(f"{source} has no column {text_column!r}; available columns: {columns}")

    instructions, categories = [], []
    for i, row in enumerate(rows):
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{source}: row {i} has no text in column {text_column!r} (got {text!r})")
        instructions.append(text)
        label = row.get(category_column) if category_column else None
        categories.append("" if label is None else str(label))
    return PromptSet(instructions=tuple(instructions), categories=tuple(categories), name=name)


def _read_txt(path: Path) -> list:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_csv(path: Path) -> list:
    # utf-8-sig strips the BOM that spreadsheet exports put before the first header.
    with path.open(newline="", encoding="utf-8-sig") as f:
        return [dict(row) for row in csv.DictReader(f)]


def _read_json(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from err
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError(
                f"{path} holds an object; expected a list, or an object with exactly one list value "
                f"(found list values under {lists} among keys {list(data)})"
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected a list of strings or objects")
    return data


def _read_jsonl(path: Path) -> list:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {lineno} is not valid JSON: {err.msg}") from err
    return rows
