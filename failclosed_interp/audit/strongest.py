"""The strongest single direction without the KL limit: DIM candidates chosen by how far their ablation
lowers the harmful refusal score, with every selection rule kept except KL on harmless prompts. Its KL
says what it costs the model; its ablation's outcome (refusal / compliance / non-answer) says whether
it unlocks answers or only breaks the model. If its KL is within the budget, it is an attack like any
other and the verdict counts it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from failclosed_interp.audit.analyses import ablation_kl
from failclosed_interp.audit.meter import RefusalMeter
from failclosed_interp.dim import DirectionConfig, NoDirectionPassed, select_direction
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.models import ChatModel
from failclosed_interp.stats import RateEstimate

NO_KL_LIMIT = 1e9  # the selection rules need a finite bound; no candidate's KL comes near it
KEY = ("ablate-strongest",)


@dataclass(frozen=True, eq=False)
class Strongest:
    """The direction, its mean KL on the harmless evaluation prompts when ablated, harmful refusal with
    it ablated, and how its responses split into refusal / compliance / non-answer."""

    direction: Direction
    kl: float
    refusal: RateEstimate
    outcomes: dict[str, int] | None
    budget: float

    @property
    def within_budget(self) -> bool:
        return self.kl <= self.budget

    def describe(self) -> str:
        d = self.direction
        side = "within" if self.within_budget else "beyond"
        what = "" if not self.outcomes else " (" + ", ".join(f"{n} {label.replace('_', '-')}"
                                                             for label, n in self.outcomes.items()) + ")"
        return (f"strongest direction without the KL limit: layer {d.layer}, position {d.position}, KL {self.kl:.3g} "
                f"on harmless prompts ({side} the budget {self.budget}); ablated, harmful refusal {self.refusal}{what}")

    def to_dict(self) -> dict:
        return {"direction": self.direction.metadata(), "kl_harmless": self.kl, "within_budget": self.within_budget,
                "refusal": self.refusal.to_dict(), "outcomes": self.outcomes}


def strongest_direction(
    model: ChatModel,
    candidates: Float[Tensor, "n_layers n_pos d_model"],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    harmless_eval: Sequence[str],
    refusal_tokens: Sequence[int],
    rules: DirectionConfig,
    harmful: RefusalMeter,
    generated: RefusalMeter,
    budget: float,
) -> tuple[Strongest | None, str | None]:
    """(the strongest direction with KL unlimited, None) or (None, why there is none)."""
    unbounded = dataclasses.replace(rules, kl_threshold=NO_KL_LIMIT, fallback=None)
    try:
        selection = select_direction(model, candidates, harmful_val, harmless_val, refusal_tokens, unbounded,
                                     fitted_on="strongest DIM candidate, no KL limit")
    except NoDirectionPassed as err:
        return None, f"no direction without the KL limit either: {err}"
    ablation = DirectionSet((selection.direction,)).ablation()
    kl = ablation_kl(model, harmless_eval, [ablation], batch_size=rules.batch_size)[0]
    refusal = harmful.rate(KEY, [ablation])
    generated.rate(KEY, [ablation])
    found = Strongest(selection.direction, kl, refusal, generated.outcomes(KEY), budget)
    return found, None
