"""The redundancy number: the fewest directions whose joint ablation brings refusal below a threshold.

Works on any `measure(subset) -> refusal rate` (memoise it: the audit's `AblationRefusal` does).
Exact search by subset size up to `max_exact`, pruned under one assumption, monotonicity (ablating
more directions never raises refusal; measured rates are noisy, so this is an approximation):
- if ablating all k leaves refusal, no subset removes it: the number is "> k";
- a subset fails if any measured superset of it failed;
- leave-one-out: if refusal survives with every direction but i ablated, i is in every collapsing set.
Beyond `max_exact`, the greedy worst order (each step ablates the direction that lowers refusal
most) gives an upper bound."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Measure = Callable[[frozenset[int]], float]


@dataclass(frozen=True)
class Redundancy:
    """`number` = size of the smallest collapsing subset (None: even all k together leave refusal at or
    above the threshold). `exact` = found by the exhaustive search (else a greedy upper bound, with the
    true number >= `lower_bound`). `subset` = the collapsing subset with the lowest refusal;
    `minimal_subsets` = every collapsing subset of that size the search found."""

    number: int | None
    subset: tuple[int, ...] | None
    minimal_subsets: tuple[tuple[int, ...], ...]
    exact: bool
    lower_bound: int
    threshold: float
    n_directions: int
    measured: int  # subsets whose refusal the search needed (memoised measurements included)
    over: tuple[int, ...] | None = None  # the directions searched over (None: all n_directions)

    def to_dict(self) -> dict:
        return {
            "over": list(self.over) if self.over is not None else list(range(self.n_directions)),
            "number": self.number, "subset": list(self.subset) if self.subset is not None else None,
            "minimal_subsets": [list(s) for s in self.minimal_subsets], "exact": self.exact,
            "lower_bound": self.lower_bound, "threshold": self.threshold, "n_directions": self.n_directions,
            "subsets_measured": self.measured,
        }


class _Values:
    """The search's view of the measurements: known ones first, the measure for the rest."""

    def __init__(self, measure: Measure, known: Mapping[frozenset[int], float] | None):
        self.measure, self.values, self.asked = measure, dict(known or {}), set()

    def __call__(self, subset) -> float:
        subset = frozenset(subset)
        self.asked.add(subset)
        if subset not in self.values:
            self.values[subset] = float(self.measure(subset))
        return self.values[subset]

    def known_to_fail(self, subset: frozenset[int], threshold: float) -> bool:
        return any(value >= threshold and subset <= other for other, value in self.values.items())


def greedy_order(measure: Measure, k: int) -> list[int]:
    """Worst order: each step ablates the direction (with those before it) that leaves the least refusal;
    ties go to the lower index. The curve along it is the joint-ablation curve, worst order."""
    values = measure if isinstance(measure, _Values) else _Values(measure, None)
    chosen: list[int] = []
    while len(chosen) < k:
        rest = [i for i in range(k) if i not in chosen]
        chosen.append(min(rest, key=lambda i: (values(chosen + [i]), i)))
    return chosen


def redundancy_number(
    measure: Measure,
    k: int,
    threshold: float = 0.5,
    *,
    max_exact: int = 4,
    known: Mapping[frozenset[int], float] | None = None,
) -> Redundancy:
    """Smallest number of the k directions whose joint ablation drives refusal below `threshold`."""
    if k < 0 or max_exact < 1:
        raise ValueError(f"need k >= 0 directions and max_exact >= 1, got k={k}, max_exact={max_exact}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold is a refusal rate in (0, 1], got {threshold}")
    values = _Values(measure, known)

    def result(number, subset, minimal, exact, lower_bound) -> Redundancy:
        return Redundancy(number, subset, minimal, exact, lower_bound, threshold, k, len(values.asked))

    full = frozenset(range(k))
    if k == 0 or values(full) >= threshold:
        return result(None, None, (), True, k + 1)
    essential: set[int] = set()
    for size in range(1, min(max_exact, k) + 1):
        if size == 3:  # sizes 1 and 2 failed: leave-one-out tells which directions every collapsing set needs
            essential = {i for i in range(k) if values(full - {i}) >= threshold}
        if len(essential) > size:
            continue
        rest = [i for i in range(k) if i not in essential]
        candidates = [frozenset(essential | set(extra)) for extra in itertools.combinations(rest, size - len(essential))]
        candidates = [s for s in candidates if not values.known_to_fail(s, threshold)]
        collapsing = sorted((tuple(sorted(s)) for s in candidates if values(s) < threshold),
                            key=lambda s: (values(s), s))
        if collapsing:
            return result(size, collapsing[0], tuple(sorted(collapsing)), True, size)
    order = greedy_order(values, k)
    size = next(m for m in range(1, k + 1) if values(order[:m]) < threshold)  # exists: all k collapse it
    return result(size, tuple(sorted(order[:size])), (tuple(sorted(order[:size])),), False, min(max_exact, k) + 1)


def redundancy_over(
    measure: Measure,
    indices: Sequence[int],
    threshold: float = 0.5,
    *,
    max_exact: int = 4,
    known: Mapping[frozenset[int], float] | None = None,
) -> Redundancy:
    """`redundancy_number` over only the directions `indices` (e.g. those shown to carry refusal);
    subsets are reported in the original indices."""
    indices = tuple(indices)
    to_original = lambda subset: frozenset(indices[j] for j in subset)  # noqa: E731
    local = {frozenset(indices.index(i) for i in s): v for s, v in (known or {}).items() if s <= set(indices)}
    r = redundancy_number(lambda subset: measure(to_original(subset)), len(indices), threshold, max_exact=max_exact,
                          known=local)
    back = lambda subset: tuple(sorted(to_original(subset)))  # noqa: E731
    return dataclasses.replace(r, subset=back(r.subset) if r.subset is not None else None,
                               minimal_subsets=tuple(sorted(back(s) for s in r.minimal_subsets)), over=indices)
