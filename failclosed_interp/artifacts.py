"""Run folders: atomic writes of JSON and safetensors, and the model identity that guards reloads."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from failclosed_interp.distributed import is_main_process

IDENTITY_FILE = "model.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (only settable, so set and restore it once at import)


def atomic_write(path: Path, write) -> Path:
    """`write(tmp)` to a temporary file next to `path`, then rename it into place. In a multi-process
    launch only rank 0 writes (the ranks hold the same results); the others return `path` unwritten."""
    path = Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """A temporary folder next to `target` for the caller to fill. When the block ends it replaces
    `target` (an old one is moved aside first, then removed); on an error it is removed and `target`
    stays as it was. Readers never see a half-written folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | Path, data) -> Path:
    """Write JSON atomically (write to a temp file, then rename); NaN is refused, not silently written."""
    text = json.dumps(data, indent=2, allow_nan=False, default=_jsonable)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text + "\n"))


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_json(path: str | Path):
    """Read a JSON file; a missing or corrupt file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (corrupt or partly written?): {err}") from err


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write tensors (and string metadata) to a safetensors file atomically."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(Path(path), lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or partly written?): {err}") from err


def write_identity(folder: str | Path, identity: dict) -> Path:
    """Record which model a run folder's tensors belong to (`model.json`)."""
    return write_json(Path(folder) / IDENTITY_FILE, identity)


def check_identity(folder: str | Path, identity: dict, what: str) -> None:
    """Refuse an artifact made for another model: compare what it recorded with the model in hand."""
    path = Path(folder) / IDENTITY_FILE
    if not path.is_file():
        return
    recorded = read_json(path)
    for key in ("d_model", "n_layers"):
        if key in recorded and recorded[key] != identity[key]:
            raise ValueError(
                f"{what} in {folder} was made for model {recorded.get('model')!r} ({key}={recorded[key]}), "
                f"but the loaded model {identity['model']!r} has {key}={identity[key]}. Load the model it was "
                f"made for, or recompute it on this model."
            )


def is_finite_number(x: float) -> bool:
    """True for an int or float that is neither NaN nor infinite."""
    return isinstance(x, (int, float)) and math.isfinite(x)
