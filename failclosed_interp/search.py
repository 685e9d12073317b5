"""Find a model's refusal direction from its own refusals, and decide whether a new direction is new.

Every direction search in the package goes through `dim_search`: the demo and `failclosed directions`,
the progressive loop, the audit (discovery and its adaptive check) and the adaptive attacker. It reads
the refusal-start tokens off the model's own refusals to harmful prompts (unless given) and computes
the difference-in-means candidate at every layer x position. `find_direction` then applies the
selection rules (and their declared fallback); the attacker chooses by KL budget instead and refines
its choice with RDO (`rdo_direction`). `check_new` is the one test that a new direction lies outside
the span of earlier ones, with one threshold, `min_new_component`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jaxtyping import Float
from torch import Tensor

from failclosed_interp.dim import DirectionConfig, Selection, dim_candidates, select_direction
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.interventions import Intervention
from failclosed_interp.judges import Judge, ThreeWayJudge
from failclosed_interp.models import ChatModel
from failclosed_interp.prompts import builtin
from failclosed_interp.rdo import optimize_direction
from failclosed_interp.rdo_config import RDOConfig
from failclosed_interp.rdo_targets import rdo_targets
from failclosed_interp.scoring import JudgedResponses, NoRefusals, refusal_rate, refusal_tokens_from_responses

PROBE_TOKENS = 24  # tokens generated per harmful prompt to read the model's refusal-start tokens


@dataclass(frozen=True)
class DirectionJobConfig:
    """Built-in prompts used to find a direction: DIM means on `n_train` train prompts per kind, selection
    on `n_val` validation prompts per kind (the harmful ones also show the model's own refusal tokens)."""

    n_train: int = 64
    n_val: int = 16
    refusal_probe_tokens: int = PROBE_TOKENS
    search: DirectionConfig = field(default_factory=DirectionConfig)
    seed: int = 0

    def __post_init__(self):
        if self.n_train < 2 or self.n_val < 2:
            raise ValueError(f"need n_train >= 2 and n_val >= 2 prompts, got {self.n_train} and {self.n_val}")
        if self.refusal_probe_tokens < 1:
            raise ValueError(f"refusal_probe_tokens must be >= 1, got {self.refusal_probe_tokens}")

    def prompts(self, kind: str, split: str) -> list[str]:
        """The built-in `kind` prompts of `split` ("train" or "val") this search uses (seeded subset)."""
        if split not in ("train", "val"):
            raise ValueError(f"a direction search reads the train and val splits, not {split!r}")
        n = self.n_train if split == "train" else self.n_val
        return builtin(kind, split).take_up_to(n, seed=self.seed).to_list()


def own_refusal_tokens(
    model: ChatModel, harmful: Sequence[str], max_new_tokens: int = PROBE_TOKENS,
    interventions: Sequence[Intervention] = (), *, judge: Judge = ThreeWayJudge(), batch_size: int = 16,
) -> tuple[list[int], JudgedResponses]:
    """Refusal-start tokens from the model's own refusals to `harmful` (under `interventions`, as `judge`
    sees them), and the judged answers they were read from. `NoRefusals` when it refused none."""
    judged = refusal_rate(model, harmful, judge=judge, interventions=interventions, progress=False,
                          generation=GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size))
    try:
        tokens = refusal_tokens_from_responses(model, judged.instructions, judged.responses, judge)
    except NoRefusals as err:
        raise NoRefusals(
            f"{err}. The model {model.name!r} refused none of {len(harmful)} harmful prompts, so it has no refusal "
            f"to locate: teach it to refuse first (refusal SFT) and load it with that adapter"
        ) from err
    return tokens, judged


@dataclass(frozen=True, eq=False)
class Candidates:
    """A DIM sweep: the candidate at every layer x position and the refusal tokens that score them."""

    vectors: Float[Tensor, "n_layers n_pos d_model"]
    refusal_tokens: tuple[int, ...]


def dim_search(
    model: ChatModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    config: DirectionConfig = DirectionConfig(),
    interventions: Sequence[Intervention] = (),
    *,
    refusal_tokens: Sequence[int] | None = None,
    probe: Sequence[str] = (),
    probe_tokens: int = PROBE_TOKENS,
    judge: Judge = ThreeWayJudge(),
    progress: bool = False,
) -> Candidates:
    """DIM candidates of `harmful` minus `harmless` (under `interventions`) with the refusal tokens to
    score them: `refusal_tokens` if given, else read off the model's own refusals to the `probe` prompts."""
    if refusal_tokens is None:
        if not probe:
            raise ValueError("give refusal_tokens, or probe prompts to read them off the model's own refusals")
        refusal_tokens, _ = own_refusal_tokens(model, probe, probe_tokens, interventions, judge=judge,
                                               batch_size=config.batch_size)
    vectors = dim_candidates(model, harmful, harmless, config, interventions, progress=progress)
    return Candidates(vectors, tuple(refusal_tokens))


def find_direction(
    model: ChatModel,
    harmful_train: Sequence[str],
    harmless_train: Sequence[str],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    refusal_tokens: Sequence[int] | None = None,
    config: DirectionConfig = DirectionConfig(),
    interventions: Sequence[Intervention] = (),
    progress: bool = True,
    *,
    probe_tokens: int = PROBE_TOKENS,
    log_file: str | Path | None = None,
) -> Selection:
    """DIM candidates on the train prompts, chosen by the selection rules (or their fallback) on the
    validation prompts. Without `refusal_tokens` they are read off the model's own refusals to `harmful_val`.
    `log_file`: where the selection keeps its scores as they come, to resume after a kill (`select_direction`)."""
    found = dim_search(model, harmful_train, harmless_train, config, interventions, refusal_tokens=refusal_tokens,
                       probe=harmful_val, probe_tokens=probe_tokens, progress=progress)
    fitted_on = (f"DIM on {len(harmful_train)} harmful / {len(harmless_train)} harmless train prompts, selected on "
                 f"{len(harmful_val)} / {len(harmless_val)} validation prompts"
                 + (f", with {len(interventions)} intervention(s) applied" if interventions else ""))
    return select_direction(model, found.vectors, harmful_val, harmless_val, found.refusal_tokens, config,
                            interventions, fitted_on=fitted_on, progress=progress, log_file=log_file)


def direction_search(model: ChatModel, config: DirectionJobConfig = DirectionJobConfig(),
                     interventions: Sequence[Intervention] = (), *, progress: bool = False,
                     log_file: str | Path | None = None) -> Selection:
    """`find_direction` on the built-in prompts `config` names, refusal tokens from the model's own refusals."""
    return find_direction(model, config.prompts("harmful", "train"), config.prompts("harmless", "train"),
                          config.prompts("harmful", "val"), config.prompts("harmless", "val"), None, config.search,
                          interventions, progress, probe_tokens=config.refusal_probe_tokens, log_file=log_file)


def rdo_direction(model: ChatModel, harmful: Sequence[str], harmless: Sequence[str], init: Direction,
                  rdo: RDOConfig, refusal_tokens: Sequence[int], *, progress: bool = False,
                  log_file: str | Path | None = None) -> Direction:
    """An RDO direction fitted on `harmful` / `harmless`, toward targets made with `init` (ablated: the
    harmful answers; added: the harmless refusals), at `init`'s layer and strength. `log_file`: where its
    steps are kept as they come, to resume after a kill (`optimize_direction`)."""
    targets = rdo_targets(model, list(harmful), list(harmless), init, rdo, refusal_tokens=refusal_tokens, progress=progress)
    return optimize_direction(model, init, targets, rdo, progress=progress, log_file=log_file)


# --- is a new direction new? -----------------------------------------------------------------------------


class InsideSpan(ValueError):
    """A new direction lies (up to `min_new_component`) in the span of earlier ones."""


def check_min_new_component(owner: str, value: float) -> None:
    """Validate a `min_new_component` setting of config `owner`."""
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"{owner}.min_new_component must be in (0, 1] (the norm a unit direction keeps outside "
                         f"the span of the earlier ones), got {value}")


def check_new(direction: Direction, earlier: DirectionSet, min_new_component: float, *, what: str = "the new direction") -> float:
    """The norm of unit(`direction`) outside the span of `earlier` (1 when there are none); `InsideSpan`
    when it is below `min_new_component`."""
    outside = earlier.residual_norm(direction.vector)
    if outside < min_new_component:
        raise InsideSpan(f"{what} (layer {direction.layer}) lies inside the span of the {len(earlier)} earlier "
                         f"one(s): its component outside is {outside:.3g} < min_new_component={min_new_component}")
    return outside


__all__ = [
    "PROBE_TOKENS", "Candidates", "DirectionJobConfig", "InsideSpan", "check_min_new_component", "check_new",
    "dim_search", "direction_search", "find_direction", "own_refusal_tokens", "rdo_direction",
]
