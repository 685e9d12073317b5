"""Find a model's refusal directions one after another: each new one with all earlier ones ablated
(at every layer, the authors' sites), until refusal is gone or k reaches its limit.

Each round is `search.find_direction` with the earlier directions as base interventions, so the
selection rules (last 20% of layers excluded, KL <= 0.1 on harmless prompts, must induce refusal)
apply every time: without them a late-layer "Sorry"-token feature would be chosen and every model
would look fail-open."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from failclosed_interp.audit.meter import AblationRefusal
from failclosed_interp.dim import DirectionConfig, NoDirectionPassed, Selection
from failclosed_interp.directions import DirectionSet
from failclosed_interp.models import ChatModel
from failclosed_interp.search import InsideSpan, check_new, find_direction
from failclosed_interp.stats import RateEstimate


@dataclass(frozen=True, eq=False)
class Discovery:
    """The directions found in order, each round's selection (for the layer x position sweeps), the
    harmful refusal with the first m found directions ablated (m = 1..k), and why discovery stopped."""

    directions: DirectionSet
    selections: tuple[Selection, ...]
    refusal_after: tuple[RateEstimate, ...]
    stop_reason: str

    def to_dict(self) -> dict:
        return {
            "stop_reason": self.stop_reason,
            "rounds": [{"layer": s.layer, "position": s.position, "scores": dict(d.scores),
                        "refusal_after": r.to_dict()}
                       for s, d, r in zip(self.selections, self.directions, self.refusal_after)],
        }


def discover_directions(
    model: ChatModel,
    refusal: AblationRefusal,
    harmful_train: Sequence[str],
    harmless_train: Sequence[str],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    refusal_tokens: Sequence[int],
    *,
    k_max: int = 5,
    threshold: float = 0.5,
    config: DirectionConfig = DirectionConfig(lazy=True),
    min_new_component: float = 0.05,
    progress: bool = False,
) -> Discovery:
    """Append up to `k_max` directions to `refusal.directions` (which should start empty), each found
    with the earlier ones ablated; stop when harmful refusal with all found ones ablated is below
    `threshold`, when no candidate passes the selection rules, or when a new direction lies (up to
    `min_new_component`) in the span of the earlier ones."""
    if len(refusal.directions):
        raise ValueError("discovery starts from an empty direction set; audit given directions without discovery")
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    found, selections, after = DirectionSet(), [], []
    reason = f"reached k_max={k_max}"
    for round_ in range(k_max):
        base = [found.ablation()] if len(found) else []
        try:
            selection = find_direction(model, harmful_train, harmless_train, harmful_val, harmless_val, refusal_tokens,
                                       config, base, progress=progress)
        except NoDirectionPassed as err:
            reason = f"no candidate passed the selection rules with {len(found)} direction(s) ablated: {err}"
            break
        try:
            check_new(selection.direction, found, min_new_component, what=f"round {round_}'s direction")
        except InsideSpan as err:
            reason = str(err)
            break
        direction = dataclasses.replace(selection.direction, round=round_)
        found = found.append(direction)
        selections.append(selection)
        refusal.append(direction)
        after.append(refusal(range(len(found))))
        if after[-1].value < threshold:
            reason = f"refusal gone: {after[-1].value:.2f} < threshold {threshold} with {len(found)} direction(s) ablated"
            break
    return Discovery(found, tuple(selections), tuple(after), reason)
