"""Uncertainty for refusal figures: per-item outcomes kept, means with bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RateEstimate:
    """A mean over items (e.g. a refusal rate) with a percentile-bootstrap confidence interval."""

    value: float
    low: float
    high: float
    n: int
    per_item: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "n": self.n}

    def __format__(self, spec: str) -> str:
        spec = spec or ".2f"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def bootstrap_mean(
    values: Sequence[float], *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> RateEstimate:
    """Mean with a percentile bootstrap CI, computed in float64."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("cannot estimate a rate over zero items: the prompt set is empty")
    if not np.isfinite(x).all():
        raise ValueError("the per-item values contain NaN or inf; check the scores that produced them")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return RateEstimate(float(x.mean()), float(low), float(high), int(x.size), tuple(float(v) for v in x))
