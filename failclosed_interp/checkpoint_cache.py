"""A converted copy of a model file, kept as a plain HF checkpoint (safetensors + JSON) so that the slow
conversion runs once per machine.

The embedded model ships as a quantised GGUF. transformers de-quantises it and rebuilds its tokenizer on
every load (about 20 s on 2 CPU cores, several times per command); reading the same float32 weights
back from safetensors takes about a second. The copy is keyed by the source file (size, modification
time) and by the transformers and gguf versions that converted it, written atomically, and rebuilt when
it cannot be read. Where no cache folder can be written, the model loads from its source as before."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

from failclosed_interp.artifacts import atomic_folder

CACHE_ENV = "FAILCLOSED_CACHE"  # overrides where converted checkpoints are kept


def cache_root() -> Path:
    """`$FAILCLOSED_CACHE`, else `$XDG_CACHE_HOME/failclosed_interp`, else `~/.cache/failclosed_interp`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "failclosed_interp"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def conversion_key(source: Path) -> str:
    """What the converted weights depend on: the source file as installed and the converting libraries."""
    stat = source.stat()
    parts = (source.name, stat.st_size, stat.st_mtime_ns, _version("transformers"), _version("gguf"))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def load_converted(source: Path, convert: Callable[[], tuple], load: Callable[[Path], tuple],
                   *, root: Path | None = None) -> tuple:
    """(model, tokenizer) from the cached conversion of `source`, making it first if needed.

    `convert()` loads from the source itself (the slow path); `load(folder)` loads a saved checkpoint.
    A cached copy that cannot be loaded is removed and made again; if the cache cannot be written at all,
    the converted model is returned without being kept (with a warning that says where it tried)."""
    folder = (cache_root() if root is None else Path(root)) / f"{source.stem}-{conversion_key(source)}"
    if folder.is_dir():
        try:
            return load(folder)
        except Exception as err:  # noqa: BLE001 - any unreadable copy is rebuilt from the source
            warnings.warn(f"the converted copy of {source.name} in {folder} could not be read ({err}); converting again",
                          stacklevel=2)
            shutil.rmtree(folder, ignore_errors=True)
    model, tokenizer = convert()
    try:
        with atomic_folder(folder) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    except OSError as err:
        warnings.warn(f"cannot keep a converted copy of {source.name} in {folder} ({err}); every load converts it "
                      f"again. Set {CACHE_ENV} to a writable folder to speed up loading.", stacklevel=2)
    return model, tokenizer


__all__ = ["CACHE_ENV", "cache_root", "conversion_key", "load_converted"]
