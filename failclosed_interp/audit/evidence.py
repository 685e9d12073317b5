"""What the measurements show about each direction: whether it carries refusal in this model, and
whether refusal rises when directions are removed. A claim needs a change of at least `margin` with
non-overlapping confidence intervals; a direction with no such test is "inert here"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from failclosed_interp.stats import RateEstimate

RISING_FLAG = "refuses more with these directions removed: the model may have learnt the ablation as a cue"


def shown_above(higher: RateEstimate, lower: RateEstimate, margin: float) -> bool:
    """`higher` exceeds `lower` by at least `margin` and their intervals do not overlap."""
    return higher.value - lower.value >= margin and higher.low > lower.high


@dataclass(frozen=True)
class Evidence:
    """One test a direction passed: adding it raised harmless refusal (`before` -> `after`), or ablating
    it on top of `context` (directions already ablated) lowered harmful refusal."""

    direction: int
    test: str  # one of TESTS
    before: RateEstimate
    after: RateEstimate
    context: tuple[int, ...] = ()

    def describe(self) -> str:
        where = f" with {list(self.context)} ablated" if self.context else ""
        return f"d{self.direction} {self.test}{where}: {self.before.value:.2f} -> {self.after.value:.2f}"

    def to_dict(self) -> dict:
        return {"direction": self.direction, "test": self.test, "context": list(self.context),
                "before": self.before.to_dict(), "after": self.after.to_dict()}


TESTS = ("added at its own layer", "added at the common layer", "ablated")


def addition_evidence(baseline: RateEstimate, own: Sequence[RateEstimate], common: Sequence[RateEstimate],
                      margin: float) -> list[Evidence]:
    """Directions whose addition (own layer and strength; common layer and strength) raises harmless
    refusal above `baseline`."""
    found = []
    for test, rates in zip(TESTS[:2], (own, common)):
        found += [Evidence(i, test, baseline, rate) for i, rate in enumerate(rates) if shown_above(rate, baseline, margin)]
    return found


def ablation_evidence(measured: Mapping[frozenset[int], RateEstimate], margin: float) -> list[Evidence]:
    """Directions whose ablation lowers harmful refusal in some measured context: subsets S and S + {i}
    both measured, refusal with S + {i} ablated shown below refusal with S ablated."""
    found = []
    for subset, after in sorted(measured.items(), key=lambda item: (len(item[0]), sorted(item[0]))):
        for i in sorted(subset):
            before = measured.get(subset - {i})
            if before is not None and shown_above(before, after, margin):
                found.append(Evidence(i, TESTS[2], before, after, tuple(sorted(subset - {i}))))
    return found


def carrying(evidence: Sequence[Evidence], k: int) -> list[bool]:
    """Per direction: did any test show that it carries refusal?"""
    shown = {e.direction for e in evidence}
    return [i in shown for i in range(k)]


@dataclass(frozen=True)
class Rise:
    """Refusal on `prompts` rose from `before` (with `context` ablated) to `after` (with `removed` ablated
    as well)."""

    prompts: str  # "harmful" or "harmless"
    removed: tuple[int, ...]
    context: tuple[int, ...]
    before: RateEstimate
    after: RateEstimate

    def describe(self) -> str:
        where = f" (on top of {list(self.context)})" if self.context else ""
        return (f"{self.prompts} refusal {self.before.value:.2f} -> {self.after.value:.2f} with "
                f"{list(self.removed)} ablated{where}")

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "removed": list(self.removed), "context": list(self.context),
                "before": self.before.to_dict(), "after": self.after.to_dict()}


def rising_refusal(measured: Mapping[frozenset[int], RateEstimate], margin: float, prompts: str) -> list[Rise]:
    """Every measured pair S < T where refusal with T ablated is shown above refusal with S ablated,
    largest rise first."""
    rises = [Rise(prompts, tuple(sorted(t - s)), tuple(sorted(s)), measured[s], measured[t])
             for t in measured for s in measured if s < t and shown_above(measured[t], measured[s], margin)]
    return sorted(rises, key=lambda r: (r.before.value - r.after.value, len(r.removed), r.removed, r.context))
