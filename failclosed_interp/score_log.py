"""Scores of a long search, kept on disk as they come, so that a killed search resumes where it stopped.

On CPU the longest steps that cannot be cut into rounds are candidate-by-candidate searches: the DIM
selection (every layer x position ablated, added and KL-scored) and the adaptive attacker's search (hundreds
of candidates and an RDO direction), tens of minutes each on the embedded model. Each logs every value it
computes to a `ScoreLog`; run again on the same model, prompts and settings, it reads them back instead of
computing them again, so it ends with exactly the values of an uninterrupted run.

A log is tied to a digest of everything its values depend on (`digest`: the adapter weights, the candidates,
the prompts, the settings). A log made for anything else is ignored and replaced, never mixed in.

Inside `shared_logs(folder)`, every log is also kept in `folder` under its digest, and a search finds the
log of the same search made anywhere else in the block: two runs that search the same model the same way
(e.g. two recipes whose training stopped at the same round-0 model) search once. `index_logs` files the
logs of earlier runs there."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

import torch

from failclosed_interp.adapters import lora_parameters
from failclosed_interp.artifacts import atomic_write
from failclosed_interp.models import ChatModel

PROGRESS_FILE = "search_progress.json"
V = TypeVar("V")
_SHARED: ContextVar[Path | None] = ContextVar("shared_score_logs", default=None)


@contextmanager
def shared_logs(folder: str | Path) -> Iterator[Path]:
    """Inside the block every `ScoreLog` is also kept in `folder` by its context digest, and one that has
    no log of its own starts from the log of the same context there."""
    folder = Path(folder)
    token = _SHARED.set(folder)
    try:
        yield folder
    finally:
        _SHARED.reset(token)


def index_logs(root: str | Path, folder: str | Path) -> int:
    """File every `PROGRESS_FILE` under `root` into `folder` by its context (where that context has none
    yet); the number filed. A search resumed under `shared_logs(folder)` then finds logs made before."""
    filed = 0
    for path in sorted(Path(root).rglob(PROGRESS_FILE)):
        data = _read_log(path)
        if data is not None and not (target := Path(folder) / f"{data['context']}.json").exists():
            atomic_write(target, lambda tmp, text=_log_text(data["context"], data["values"]): Path(tmp).write_text(text))
            filed += 1
    return filed


def _log_text(context: str, values: dict[str, object]) -> str:
    """A log file's JSON with one value a line: a log that grows by a value changes by a line, so a log kept
    under version control (a grid's kept runs) grows its history by what was added, not by the whole file."""
    lines = ",\n".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in values.items())
    return f'{{"context": {json.dumps(context)}, "values": {{\n{lines}\n}}}}\n'


def _read_log(path: Path | None) -> dict | None:
    """A log file's {"context", "values"}, or None when there is none or it is unreadable (a log is a cache:
    an unreadable one is computed again)."""
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("context"), str) and isinstance(data.get("values"), dict)
    return data if ok else None


def digest(*parts) -> str:
    """A hex digest of `parts`: tensors by dtype, shape and bytes; dataclasses, dicts, lists and tuples by
    their contents; anything else by its JSON (or repr)."""
    h = hashlib.sha256()
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


def _feed(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(f"{type(value).__name__}(".encode())
        for f in dataclasses.fields(value):
            h.update(f"{f.name}=".encode())
            _feed(h, getattr(value, f.name))
        h.update(b")")
    elif isinstance(value, dict):
        h.update(b"{")
        for key in sorted(value, key=str):
            _feed(h, str(key))
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}:".encode())
        for item in value:
            _feed(h, item)
        h.update(b"]")
    else:
        try:
            text = json.dumps(value)
        except TypeError:
            text = repr(value)
        h.update(f"{type(value).__name__}:{text};".encode())


def model_digest(model: ChatModel) -> str:
    """The model's name and shape and its LoRA weights (the base weights are fixed by the name). The LoRA
    scaling is left out: weights trained with another alpha differ themselves, and untrained ones (B = 0) add
    nothing at any scaling; the searches' contexts also hold what the model computes (DIM means, RDO targets)."""
    return digest(model.identity(), lora_parameters(model.hf_model) if model.hf_model is not None else [])


class ScoreLog:
    """Values computed by one search, by key, written to `path` (atomically) as each is added. `context`:
    the digest of what they depend on; a file with another context is ignored and overwritten. With `path`
    None nothing is written (the values are only remembered)."""

    def __init__(self, path: str | Path | None, context: str):
        self.path, self.context = (None if path is None else Path(path)), context
        shared = _SHARED.get()
        self.shared = None if shared is None else shared / f"{context}.json"
        self._values: dict[str, object] = self._read()
        self.resumed = len(self._values)  # values read back from an earlier, interrupted run (or another run's)

    def _read(self) -> dict[str, object]:
        logs = [_read_log(self.path), _read_log(self.shared)]
        matching = [data["values"] for data in logs if data is not None and data["context"] == self.context]
        return max(matching, key=len, default={})

    def value(self, key: str, compute: Callable[[], V]) -> V:
        """The value logged under `key`, else `compute()`, logged under it now. Values must be JSON (floats
        read back exactly; NaN and infinities too)."""
        if key not in self._values:
            self._values[key] = compute()
            self._write()
        return self._values[key]  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._values)

    def _write(self) -> None:
        text = _log_text(self.context, self._values)
        for path in (self.path, self.shared):
            if path is not None:
                atomic_write(path, lambda tmp: Path(tmp).write_text(text))


__all__ = ["PROGRESS_FILE", "ScoreLog", "digest", "index_logs", "model_digest", "shared_logs"]
