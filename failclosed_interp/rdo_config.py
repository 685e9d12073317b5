"""RDO's settings and the two interventions its terms use (shared by target generation and the optimiser)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from failclosed_interp.configs import JsonConfig
from failclosed_interp.directions import Direction
from failclosed_interp.interventions import Ablation, Addition

TERMS = ("ablation", "addition", "retain", "independence")
STARTS = ("random", "init")


@dataclass(frozen=True)
class RDOConfig(JsonConfig):
    """How RDO optimises. Defaults are the authors': effective batch 16, AdamW lr 1e-2, patience 5 with
    the lr divided by 10 at most twice, loss weights (1, 0.2, 1), random start, ablation at every
    position. `steps` caps the optimiser steps (the data is cycled through as often as needed);
    `micro_batch_size` only sets how many examples share a forward pass, not the loss."""

    steps: int = 64
    lr: float = 1e-2
    batch_size: int = 16  # examples of each kind per optimiser step (the authors' effective batch)
    micro_batch_size: int = 8  # examples per forward pass; the loss is the per-example mean either way
    target_tokens: int = 30  # length of the generated targets
    patience: int = 5  # steps without a new lowest loss before the lr is divided by 10
    lr_reductions: int = 2  # after this many reductions, running out of patience stops
    start: str = "random"  # "random" (the authors) or "init" (start from the given direction)
    skip_template_prefix: bool = False  # ablate every position (the method); True leaves the template prefix alone
    ablation_weight: float = 1.0
    addition_weight: float = 0.2
    retain_weight: float = 1.0
    independence_weight: float = 0.0  # > 0 needs independent_of=
    independence_layers: tuple[int, ...] | None = None  # where the cosines are compared; None: every layer
    max_grad_norm: float = 10.0
    generation_batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "micro_batch_size", "target_tokens", "patience", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_reductions < 0:
            raise ValueError(f"lr_reductions must be >= 0 (the authors use 2), got {self.lr_reductions}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {self.start!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0 (default 1e-2), got {self.lr}")
        weights = self.weights()
        bad = {k: w for k, w in weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"loss weights must be finite and >= 0, got {bad}")
        if not any(weights.values()):
            raise ValueError("every loss weight is 0, so there is nothing to optimise; the authors use "
                             "ablation_weight=1, addition_weight=0.2, retain_weight=1")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a finite number > 0, got {self.max_grad_norm}")
        if self.independence_layers is not None:
            object.__setattr__(self, "independence_layers", tuple(int(layer) for layer in self.independence_layers))
            layers = self.independence_layers
            if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
                raise ValueError(f"independence_layers must be distinct layer indices >= 0 (or None for all), got {layers}")

    def weights(self) -> dict[str, float]:
        return {term: getattr(self, f"{term}_weight") for term in TERMS}


def addition_of(vector: Float[Tensor, "d_model"], reference: Direction) -> Addition:
    """`vector` added at the reference direction's layer and site, scaled by its raw (DIM) norm: the
    steering strength RDO's addition term and the mediation check use."""
    return Addition(vector, layer=reference.layer, coeff=reference.norm, site=reference.site)


def ablation_of(vectors: Tensor, config: RDOConfig) -> Ablation:
    """RDO's ablation: every layer's block input, attention and MLP output, positions as configured."""
    return Ablation(vectors, skip_template_prefix=config.skip_template_prefix)
