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
from jaxtyping import Float, Int
from torch import Tensor

from failclosed_interp.chat import template_prefix_ids
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


def _prefix_tracker(model: ChatModel) -> PrefixTracker | None:
    if EMBED_INPUT_HOOK not in model.bridge.hook_dict:
        raise ValueError(f"this bridge has no {EMBED_INPUT_HOOK!r} hook to see token ids; "
                         f"use Ablation(..., skip_template_prefix=False)")
    prefix = template_prefix_ids(model.tokenizer)
    return PrefixTracker(prefix, model.tokenizer.pad_token_id) if prefix else None


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


def ablation_hook(
    basis: Float[Tensor, "n_dirs d_model"], positions: tuple[int, ...] | None = None, prefix: PrefixTracker | None = None,
):
    """x -> x - (x Q^T) Q at the given positions (all when None), except where `prefix` says the
    chat template's constant prefix sits in this forward pass."""

    def hook(x: Float[Tensor, "batch pos d_model"], hook=None) -> Float[Tensor, "batch pos d_model"]:
        q = basis.to(device=x.device, dtype=x.dtype)
        mask = _position_mask(x.shape[1], positions, x)
        if prefix is not None:
            mask = mask * prefix.keep(x)
        return x - mask * ((x @ q.T) @ q)

    return hook


EMBED_INPUT_HOOK = "embed.hook_in"  # sees the token ids of every forward pass, before any block


class PrefixTracker:
    """Finds, in each forward pass, the positions of the chat template's constant prefix (the tokens
    before the user's text, attention sink included): the first len(prefix) tokens after any left
    padding, when they are exactly the prefix. One-token decoding steps never contain it."""

    def __init__(self, prefix_ids: Sequence[int], pad_id: int | None):
        self.prefix = torch.tensor(prefix_ids, dtype=torch.long)
        self.pad_id = pad_id
        self.mask: Tensor | None = None  # [batch, pos] True at prefix positions, for the current pass

    def record(self, ids: Tensor, hook=None) -> Tensor:
        self.mask = self._locate(ids) if ids.ndim == 2 else None
        return ids

    def _locate(self, ids: Int[Tensor, "batch pos"]) -> Tensor | None:
        n = len(self.prefix)
        if n == 0 or ids.shape[1] <= n:
            return None
        prefix = self.prefix.to(ids.device)
        matches = (ids.unfold(1, n, 1) == prefix).all(-1)  # [batch, starts]
        start = matches.float().argmax(1)
        found = matches.any(1)
        padded = torch.arange(ids.shape[1], device=ids.device)[None] < start[:, None]
        if self.pad_id is not None:  # only left padding may come before the prefix
            found &= ~(padded & (ids != self.pad_id)).any(1)
        else:
            found &= start == 0
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        return found[:, None] & (pos >= start[:, None]) & (pos < start[:, None] + n)

    def keep(self, x: Tensor) -> Tensor | float:
        """1 where the ablation applies, 0 at prefix positions (float mask broadcastable to x)."""
        if self.mask is None or tuple(self.mask.shape) != tuple(x.shape[:2]):
            return 1.0
        return (~self.mask).to(x.dtype)[..., None]


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
    # Leave the chat template's constant prefix alone: its activations are the same for every prompt,
    # so no refusal direction lives there, and it holds the attention sink, whose massive activations
    # a projection would disturb far beyond the direction itself (docs/interventions.md).
    skip_template_prefix: bool = True
    basis: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Not detached: a direction that requires grad (RDO's parameter) gets gradients through the hooks.
        object.__setattr__(self, "basis", orthonormal_basis(self.directions))

    def hooks(self, model: ChatModel) -> list[Hook]:
        _check_width(model, self.basis.shape[-1], "the ablated direction")
        layers = range(model.n_layers) if self.layers is None else self.layers
        _check_layers(model, layers)
        basis = self.basis.to(device=model.device, dtype=model.dtype)
        tracker = _prefix_tracker(model) if self.skip_template_prefix else None
        fn = ablation_hook(basis, self.positions, tracker)
        hooks = [(hook_name(layer, site), fn) for layer in layers for site in self.sites]
        return hooks if tracker is None else [(EMBED_INPUT_HOOK, tracker.record), *hooks]


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
    missing = sorted({name for name, _ in fwd_hooks} - set(model.bridge.hook_dict))
    if missing:
        raise ValueError(
            f"the bridge of {model.name!r} has no hook(s) {missing[:4]}: its architecture adapter does not expose the "
            f"residual-stream sites {SITES} under the standard names, so interventions cannot reach them; "
            f"use a model whose architecture TransformerBridge maps fully (Llama, Gemma-2, Qwen2, ...)"
        )
    with model.bridge.hooks(fwd_hooks=fwd_hooks):
        yield model
