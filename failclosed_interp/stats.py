"""Uncertainty for reported figures: per-item outcomes kept; rates (shares of 0/1 outcomes) with Wilson
score intervals, means of continuous scores with percentile-bootstrap intervals, and summaries across
training seeds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

INTERVALS = ("wilson", "bootstrap")


@dataclass(frozen=True)
class RateEstimate:
    """A mean over items (e.g. a refusal rate) with a confidence interval. `interval` names how it was made:
    "wilson" (score interval of a binomial share) or "bootstrap" (percentile bootstrap of a mean)."""

    value: float
    low: float
    high: float
    n: int
    per_item: tuple[float, ...]
    interval: str = "bootstrap"

    def __post_init__(self):
        if self.interval not in INTERVALS:
            raise ValueError(f"interval {self.interval!r}: use one of {list(INTERVALS)}")

    def to_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "n": self.n, "interval": self.interval}

    @classmethod
    def from_dict(cls, d: dict) -> RateEstimate:
        """A rate as `to_dict` wrote it (results files), without its per-item values."""
        return cls(d["value"], d["ci_low"], d["ci_high"], d["n"], (), d.get("interval", "bootstrap"))

    def __format__(self, spec: str) -> str:
        spec = spec or ".2f"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _finite_values(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("cannot estimate a rate over zero items: the prompt set is empty")
    if not np.isfinite(x).all():
        raise ValueError("the per-item values contain NaN or inf; check the scores that produced them")
    return x


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def wilson_rate(outcomes: Sequence[float | int], *, confidence: float = 0.95) -> RateEstimate:
    """Share of positive 0/1 outcomes with a Wilson score interval, which stays informative at 0/n and n/n
    (where a bootstrap interval has zero width)."""
    x = _finite_values([float(v) for v in outcomes])
    _check_confidence(confidence)
    if not np.isin(x, (0.0, 1.0)).all():
        bad = sorted({float(v) for v in x if v not in (0.0, 1.0)})[:5]
        raise ValueError(f"a rate needs 0/1 outcomes, got values {bad}; use bootstrap_mean for continuous scores")
    k, n = int(x.sum()), int(x.size)
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return RateEstimate(k / n, float(ci.low), float(ci.high), n, tuple(float(v) for v in x), "wilson")


def bootstrap_mean(
    values: Sequence[float], *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> RateEstimate:
    """Mean of continuous scores (perplexity, logit scores) with a percentile bootstrap CI, in float64."""
    x = _finite_values(values)
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return RateEstimate(float(x.mean()), float(low), float(high), int(x.size), tuple(float(v) for v in x), "bootstrap")


@dataclass(frozen=True)
class SeedSummary:
    """One figure measured once per training seed: the per-seed values and their spread (sample std)."""

    values: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if not self.values:
            raise ValueError("SeedSummary needs at least one per-seed value; run at least one seed")
        if not np.isfinite(self.values).all():
            raise ValueError(f"per-seed values {list(self.values)} contain NaN or inf; check the runs that produced them")

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    @property
    def min(self) -> float:
        return float(min(self.values))

    @property
    def max(self) -> float:
        return float(max(self.values))

    def to_dict(self) -> dict:
        return {"values": list(self.values), "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
                "n_seeds": len(self.values)}

    def __format__(self, spec: str) -> str:
        spec = spec or ".2f"
        each = ", ".join(f"{v:{spec}}" for v in self.values)
        return f"{self.mean:{spec}} ± {self.std:{spec}} (per seed: {each})"
