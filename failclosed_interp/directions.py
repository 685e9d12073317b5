"""Refusal directions as values: a `Direction` is a unit vector plus where it came from; a
`DirectionSet` stacks several and hands out an orthonormal basis, subsets and an ablation.
Both save as safetensors + a JSON sidecar and load back equal."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from failclosed_interp.artifacts import (
    IDENTITY_FILE, check_identity, read_json, read_tensors, write_identity, write_json, write_tensors,
)
from failclosed_interp.interventions import ABLATION_SITES, SITES, Ablation, Site, orthonormal_basis

METHODS = ("dim", "rdo", "given")
FORMAT = "failclosed_interp.directions"
FORMAT_VERSION = 1
VECTORS_FILE = "directions.safetensors"
META_FILE = "directions.json"


@dataclass(frozen=True)
class Direction:
    """A unit vector in the residual stream and its provenance; `norm` is the raw magnitude
    (the steering strength), `scores` whatever selection measured (ablation_score, kl, ...)."""

    vector: Float[Tensor, "d_model"]
    layer: int
    position: int | None = None
    site: str = "resid_pre"
    method: str = "dim"
    round: int = 0
    norm: float | None = None
    fitted_on: str = ""
    scores: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        raw = self.vector.detach().to("cpu", torch.float64)
        length = float(raw.norm())
        if not math.isfinite(length) or length == 0.0:
            raise ValueError(f"a direction needs a finite nonzero vector, got norm {length}; check the data it came from")
        # Leave already-unit float32 vectors untouched so normalisation is idempotent (bit-exact reloads).
        unit = self.vector.detach().cpu().float() if abs(length - 1) < 1e-6 else (raw / length).float()
        object.__setattr__(self, "vector", unit)
        object.__setattr__(self, "norm", float(length if self.norm is None else self.norm))
        object.__setattr__(self, "scores", {str(k): float(v) for k, v in self.scores.items()})
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.site not in SITES:
            raise ValueError(f"site must be one of {SITES}, got {self.site!r}")
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.position is not None and self.position >= 0:
            raise ValueError(f"position must be negative (counted from the prompt's end) or None, got {self.position}")

    @property
    def d_model(self) -> int:
        return self.vector.shape[0]

    @property
    def raw(self) -> Float[Tensor, "d_model"]:
        """The vector at its original magnitude (unit vector x norm), for steering."""
        return self.vector * self.norm

    def metadata(self) -> dict:
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "vector"}
        meta["scores"] = {k: (v if math.isfinite(v) else None) for k, v in self.scores.items()}  # JSON has no NaN
        return meta

    def to_record(self) -> dict:
        """The whole direction as plain JSON, vector included (`from_record` reads it back equal)."""
        return {"vector": self.vector.tolist(), **self.metadata()}

    @classmethod
    def from_record(cls, record: dict) -> Direction:
        return _from_metadata(torch.tensor(record["vector"], dtype=torch.float32), record)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Direction):
            return NotImplemented
        same_meta = all(
            getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.name not in ("vector", "scores")
        )
        return same_meta and torch.equal(self.vector, other.vector) and _same_scores(self.scores, other.scores)

    def __hash__(self) -> int:
        return hash((self.layer, self.position, self.site, self.method, self.round))


def _same_scores(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@dataclass(frozen=True)
class DirectionSet:
    """An ordered stack of directions (e.g. one per progressive round)."""

    directions: tuple[Direction, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "directions", tuple(self.directions))
        bad = [type(d).__name__ for d in self.directions if not isinstance(d, Direction)]
        if bad:
            raise TypeError(f"a DirectionSet holds Direction values, got {bad}")
        widths = {d.d_model for d in self.directions}
        if len(widths) > 1:
            raise ValueError(f"directions of different widths {sorted(widths)} cannot share a set: they come from different models")

    def __len__(self) -> int:
        return len(self.directions)

    def __iter__(self) -> Iterator[Direction]:
        return iter(self.directions)

    def __getitem__(self, index: int | slice | Sequence[int]) -> Direction | DirectionSet:
        if isinstance(index, int):
            return self.directions[index]
        if isinstance(index, slice):
            return DirectionSet(self.directions[index])
        return DirectionSet(tuple(self.directions[i] for i in index))

    @property
    def d_model(self) -> int:
        if not self.directions:
            raise ValueError("an empty DirectionSet has no d_model; add a direction first")
        return self.directions[0].d_model

    def matrix(self) -> Float[Tensor, "n_dirs d_model"]:
        """Unit directions as rows (float32)."""
        if not self.directions:
            raise ValueError("the DirectionSet is empty: there is no matrix of zero directions; add a direction first")
        return torch.stack([d.vector for d in self.directions])

    def basis(self) -> Float[Tensor, "n_dirs d_model"]:
        """Orthonormal rows spanning the set, in order (QR); ValueError if the directions are dependent."""
        if not self.directions:
            raise ValueError("the DirectionSet is empty, so it spans nothing: add a direction before asking for a basis")
        return orthonormal_basis(self.matrix().double()).float()

    def subsets(self, size: int) -> Iterator[tuple[int, ...]]:
        """Index tuples of every subset of `size` directions; `self[idx]` gives the subset."""
        if not 0 <= size <= len(self):
            raise ValueError(f"subset size must be in 0..{len(self)}, got {size}")
        return itertools.combinations(range(len(self)), size)

    def cosine(self) -> Float[Tensor, "n_dirs n_dirs"]:
        m = self.matrix().double()
        return (m @ m.T).float()

    def append(self, direction: Direction) -> DirectionSet:
        return DirectionSet(self.directions + (direction,))

    def residual_norm(self, vector: Float[Tensor, "d_model"]) -> float:
        """Norm of the part of unit(vector) outside the span: 0 = already inside, 1 = orthogonal."""
        v = vector.detach().cpu().double()
        if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
            raise ValueError("residual_norm needs a finite nonzero vector")
        v = v / v.norm()
        if not self.directions:
            return 1.0
        if v.shape[0] != self.d_model:
            raise ValueError(f"vector has d_model={v.shape[0]} but the set has d_model={self.d_model}")
        q = self.basis().double()
        return float((v - (q @ v) @ q).norm())

    def ablation(
        self, *, layers: tuple[int, ...] | None = None, sites: tuple[Site, ...] = ABLATION_SITES,
        positions: tuple[int, ...] | None = None, skip_template_prefix: bool = True,
    ) -> Ablation:
        """Project the whole set's span out (all layers and the authors' sites by default)."""
        if not self.directions:
            raise ValueError("cannot ablate an empty DirectionSet; with no directions, use no intervention")
        return Ablation(self.matrix(), layers=layers, sites=sites, positions=positions,
                        skip_template_prefix=skip_template_prefix)


def save_directions(dirset: DirectionSet | Direction, folder: str | Path, identity: dict) -> Path:
    """Write `directions.safetensors` (unit rows), `directions.json` (provenance) and `model.json`."""
    if isinstance(dirset, Direction):
        dirset = DirectionSet((dirset,))
    if not len(dirset):
        raise ValueError("the DirectionSet is empty: there is nothing to save")
    folder = Path(folder)
    write_tensors(folder / VECTORS_FILE, {"vectors": dirset.matrix()})
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "directions": [d.metadata() for d in dirset]}
    write_json(folder / META_FILE, meta)
    write_identity(folder, identity)
    return folder


def load_directions(folder: str | Path, model=None) -> DirectionSet:
    """Load a saved DirectionSet; with `model` (a ChatModel), refuse directions made for another model."""
    folder = Path(folder)
    meta = read_json(folder / META_FILE)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{folder / META_FILE} is not a directions file (no format {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{folder / META_FILE} has format version {meta.get('version')}; this code reads {FORMAT_VERSION}")
    tensors = read_tensors(folder / VECTORS_FILE)
    vectors = tensors.get("vectors")
    entries = meta.get("directions")
    if vectors is None or vectors.ndim != 2 or not isinstance(entries, list) or len(entries) != vectors.shape[0]:
        raise ValueError(
            f"{folder} is inconsistent: {META_FILE} lists {len(entries) if isinstance(entries, list) else '?'} "
            f"directions but {VECTORS_FILE} holds {None if vectors is None else tuple(vectors.shape)}; save it again"
        )
    if model is not None:
        check_identity(folder, model.identity(), "the directions")
        if vectors.shape[1] != model.d_model:
            made_for = read_json(folder / IDENTITY_FILE).get("model") if (folder / IDENTITY_FILE).is_file() else "?"
            raise ValueError(
                f"the directions in {folder} have d_model={vectors.shape[1]} (made for model {made_for!r}) but "
                f"{model.name!r} has d_model={model.d_model}; load the model they were made for, or recompute them"
            )
    try:
        directions = tuple(_from_metadata(v, m) for v, m in zip(vectors, entries))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{folder / META_FILE} has a malformed direction entry ({err!r}); save it again") from err
    return DirectionSet(directions)


def _from_metadata(vector: Tensor, meta: dict) -> Direction:
    scores = {k: (math.nan if v is None else v) for k, v in meta.get("scores", {}).items()}
    known = {f.name for f in fields(Direction)} - {"vector", "scores"}
    return Direction(vector=vector, scores=scores, **{k: meta[k] for k in known})

