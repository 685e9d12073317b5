"""Interventions on the residual stream as values that turn into bridge hooks.

`Ablation` projects a subspace out, `Addition` adds a scaled direction; a list of them is applied by
the one context manager `intervene(model, interventions)`, used by scoring, generation, training,
attacks and audits alike. Hooks are pure functions made by small factories."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from failclosed_interp.models import ChatModel

Site = Literal["resid_pre", "attn_out", "mlp_out", "resid_post"]
SITES: tuple[Site, ...] = ("resid_pre", "attn_out", "mlp_out", "resid_post")
# Where the authors ablate: every block input and every write into the residual stream.
ABLATION_SITES: tuple[Site, ...] = ("resid_pre", "attn_out", "mlp_out")

Hook = tuple[str, Callable[..., Tensor]]


def hook_name(layer: int, site: Site) -> str:
    """The bridge alias for a residual-stream site; all model access goes through this helper."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {SITES}")
    return f"blocks.{layer}.hook_{site}"


def orthonormal_basis(
    vectors: Float[Tensor, "n_dirs d_model"] | Float[Tensor, "d_model"],
) -> Float[Tensor, "n_dirs d_model"]:
    """Orthonormal rows spanning `vectors` (QR in float64); one vector gives a 1-row basis."""
    if vectors.ndim == 1:
        vectors = vectors[None]
    if not torch.isfinite(vectors).all():
        raise ValueError("the directions contain NaN or inf; recompute them (were the activations finite?)")
    q, r = torch.linalg.qr(vectors.double().T)
    # Rounding in the input's own precision must not pass for a new dimension (float32: ~4e-6 relative).
    rel_tol = min(max(1e-8, 32 * torch.finfo(vectors.dtype).eps), 0.05)
    rank = int((r.diagonal().abs() > rel_tol * r.diagonal().abs().max().clamp(min=1e-30)).sum())
    if rank < vectors.shape[0]:
        raise ValueError(f"the {vectors.shape[0]} directions span only {rank} dimensions; drop the dependent ones")
    signs = torch.sign(r.diagonal())
    return (q * signs).T.to(vectors.dtype)


def _position_mask(n_pos: int, positions: tuple[int, ...] | None, like: Tensor) -> Tensor | float:
    if positions is None:
        return 1.0
    mask = torch.zeros(n_pos, 1, dtype=like.dtype, device=like.device)
    mask[[p for p in positions if -n_pos <= p < n_pos]] = 1.0
    return mask


def _check_layers(model: ChatModel, layers: Sequence[int]) -> None:
    bad = [layer for layer in layers if not 0 <= layer < model.n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{model.n_layers - 1}")


def _check_width(model: ChatModel, width: int, what: str) -> None:
    if width != model.d_model:
        raise ValueError(
            f"{what} has d_model={width} but the model {model.name!r} has d_model={model.d_model}; "
            f"it was computed on another model"
        )


def ablation_hook(basis: Float[Tensor, "n_dirs d_model"], positions: tuple[int, ...] | None = None):
    """x -> x - (x Q^T) Q at the given positions (all when None)."""

    def hook(x: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        q = basis.to(device=x.device, dtype=x.dtype)
        return x - _position_mask(x.shape[1], positions, x) * ((x @ q.T) @ q)

    return hook


def addition_hook(vector: Float[Tensor, "d_model"], positions: tuple[int, ...] | None = None):
    """x -> x + v at the given positions (all when None)."""

    def hook(x: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        return x + _position_mask(x.shape[1], positions, x) * vector.to(device=x.device, dtype=x.dtype)

    return hook


@dataclass(frozen=True)
class Ablation:
    """Project the span of `directions` out of the residual stream at `sites` of `layers` (all when None)."""

    directions: Float[Tensor, "n_dirs d_model"] | Float[Tensor, "d_model"]
    layers: tuple[int, ...] | None = None
    sites: tuple[Site, ...] = ABLATION_SITES
    positions: tuple[int, ...] | None = None
    basis: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Not detached: a direction that requires grad (RDO's parameter) gets gradients through the hooks.
        object.__setattr__(self, "basis", orthonormal_basis(self.directions))

    def hooks(self, model: ChatModel) -> list[Hook]:
        _check_width(model, self.basis.shape[-1], "the ablated direction")
        layers = range(model.n_layers) if self.layers is None else self.layers
        _check_layers(model, layers)
        basis = self.basis.to(device=model.device, dtype=model.dtype)
        fn = ablation_hook(basis, self.positions)
        return [(hook_name(layer, site), fn) for layer in layers for site in self.sites]


@dataclass(frozen=True)
class Addition:
    """Add `coeff` x `direction` at one site of one layer (activation steering)."""

    direction: Float[Tensor, "d_model"]
    layer: int
    coeff: float = 1.0
    site: Site = "resid_pre"
    positions: tuple[int, ...] | None = None

    def __post_init__(self):
        if not torch.isfinite(self.direction).all():
            raise ValueError("the added direction contains NaN or inf; recompute it (were the activations finite?)")
        if not math.isfinite(self.coeff):
            raise ValueError(f"the addition coeff must be finite, got {self.coeff}")

    def hooks(self, model: ChatModel) -> list[Hook]:
        _check_width(model, self.direction.shape[-1], "the added direction")
        _check_layers(model, [self.layer])
        vector = (self.coeff * self.direction).to(device=model.device, dtype=model.dtype)  # differentiable, as Ablation
        return [(hook_name(self.layer, self.site), addition_hook(vector, self.positions))]


Intervention = Ablation | Addition


@contextmanager
def intervene(model: ChatModel, interventions: Sequence[Intervention] = ()) -> Iterator[ChatModel]:
    """Apply interventions inside the block; exactly the hooks added here are removed on exit.
    Hooks at one site run in list order, so [Ablation(d), Addition(d, ...)] is ablate-then-add."""
    fwd_hooks = [h for intervention in interventions for h in intervention.hooks(model)]
    if not fwd_hooks:
        yield model
        return
    with model.bridge.hooks(fwd_hooks=fwd_hooks):
        yield model
