"""How many mutually orthogonal directions mediate a model's refusal? RDO run `k` times toward the same
targets, each run kept orthogonal to every direction found before it, and each direction checked on
held-apart prompts: ablating it must lower the mean harmful refusal score and adding it (at the common
layer and strength, the reference direction's) must raise the mean harmless one, each by a margin.

A model whose refusal runs through one direction yields one direction that passes and then directions that
do little; a model with several independent refusal pathways yields several that pass. This is the
measurement behind the question "could the loop have found more independent directions at all?"."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.models import ChatModel
from failclosed_interp.rdo import RDOConfig, RDOTargets, optimize_direction
from failclosed_interp.scoring import mediation_scores


@dataclass(frozen=True)
class OrthogonalDirections:
    """The `k` directions in the order found (each orthogonal to the earlier ones) and one check per
    direction: "harmful_score_drop", "harmless_score_rise" (log-odds), "necessary" / "sufficient" (each
    against its margin), "mediates" (both), with the RDO run's seconds, steps and loss."""

    directions: DirectionSet
    checks: tuple[dict, ...]
    min_drop: float
    min_rise: float

    @property
    def n_mediating(self) -> int:
        """How many of the directions mediate refusal (necessary and sufficient by the margins)."""
        return sum(c["mediates"] for c in self.checks)

    @property
    def n_sufficient(self) -> int:
        """How many of the directions induce refusal when added."""
        return sum(c["sufficient"] for c in self.checks)

    def to_dict(self) -> dict:
        return {"k": len(self.checks), "min_drop": self.min_drop, "min_rise": self.min_rise,
                "n_mediating": self.n_mediating, "n_sufficient": self.n_sufficient, "checks": list(self.checks)}


def orthogonal_directions(
    model: ChatModel, reference: Direction, targets: RDOTargets, refusal_tokens: Sequence[int],
    harmful: Sequence[str], harmless: Sequence[str], *, k: int = 10, config: RDOConfig = RDOConfig(),
    min_drop: float = 1.0, min_rise: float = 1.0, on_direction: Callable[[int, dict, Direction], None] | None = None,
    resume: tuple[DirectionSet, Sequence[dict]] | None = None, progress: bool = True,
) -> OrthogonalDirections:
    """`k` RDO directions toward `targets` (made with `reference`, which also sets the layer and strength of
    every addition), the i-th constrained orthogonal to the first i-1, each checked on `harmful` and
    `harmless` prompts with `refusal_tokens` (use prompts the targets were not made from). `on_direction(i,
    check, direction)` is called after each (e.g. to save progress); `resume`: the (directions, checks) of an
    interrupted run with the same settings, continued from where it stopped (RDO is seeded, so the result
    equals an uninterrupted run's)."""
    if k < 1:
        raise ValueError(f"k must be >= 1 directions, got {k}")
    if not harmful or not harmless:
        raise ValueError(f"the checks need harmful and harmless prompts, got {len(harmful)} and {len(harmless)}")
    found: list[Direction] = list(resume[0]) if resume is not None else []
    checks: list[dict] = list(resume[1]) if resume is not None else []
    if len(found) != len(checks) or len(found) > k:
        raise ValueError(f"cannot resume from {len(found)} directions with {len(checks)} checks toward k={k}")
    for i in tqdm(range(len(found), k), desc="orthogonal RDO directions", disable=not progress):
        start = time.perf_counter()
        direction = optimize_direction(model, reference, targets, config,
                                       orthogonal_to=DirectionSet(tuple(found)) if found else None, progress=False)
        seconds = time.perf_counter() - start
        scores = mediation_scores(model, direction, harmful, harmless, refusal_tokens,
                                  skip_template_prefix=config.skip_template_prefix)
        necessary, sufficient = scores["harmful_score_drop"] >= min_drop, scores["harmless_score_rise"] >= min_rise
        cosine = float(direction.vector.double() @ reference.vector.double())
        checks.append({"k": i + 1, "layer": direction.layer, "cosine_to_reference": cosine, "rdo_s": seconds,
                       "steps_run": direction.scores.get("steps_run"), "loss": direction.scores.get("loss"), **scores,
                       "necessary": necessary, "sufficient": sufficient, "mediates": necessary and sufficient})
        found.append(direction)
        if on_direction is not None:
            on_direction(i, checks[-1], direction)
    return OrthogonalDirections(DirectionSet(tuple(found)), tuple(checks), min_drop, min_rise)
