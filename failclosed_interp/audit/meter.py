"""Refusal of one prompt set under interventions, measured once per condition.

Every audit figure is a refusal rate with a bootstrap CI under some interventions (a subset of
directions ablated, one direction added). The meter memoises by a condition key, so the pairwise
matrix, the joint curves, the redundancy search and discovery share measurements and nothing is
generated twice. Two modes: `generate` (greedy generation + a judge, the figure of record) and
`logit` (fraction of prompts whose most likely first answer token is a refusal token: one forward
pass, no generation)."""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from failclosed_interp.configs import JsonConfig
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.interventions import Intervention
from failclosed_interp.judges import Judge, ThreeWayJudge, Verdict, classify
from failclosed_interp.models import ChatModel
from failclosed_interp.scoring import JudgedResponses, first_token_refusal_rate, refusal_rate
from failclosed_interp.stats import RateEstimate

MODES = ("generate", "logit")


@dataclass(frozen=True)
class MeasureConfig(JsonConfig):
    """How refusal is measured: `generate` judges greedy responses of `max_new_tokens` tokens;
    `logit` counts prompts whose most likely first answer token is a refusal token."""

    mode: str = "generate"  # one of MODES
    max_new_tokens: int = 24
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, seed=self.seed)


class RefusalMeter:
    """Refusal rate of `instructions` per condition key, each condition measured at most once."""

    def __init__(
        self, model: ChatModel, instructions: Sequence[str], config: MeasureConfig = MeasureConfig(), *,
        judge: Judge = ThreeWayJudge(), refusal_tokens: Sequence[int] | None = None, progress: bool = False,
    ):
        if not instructions:
            raise ValueError("the meter needs at least one prompt")
        if config.mode == "logit" and not refusal_tokens:
            raise ValueError("logit mode needs refusal_tokens (derive them with scoring.refusal_tokens_from_responses)")
        self.model, self.instructions, self.config = model, list(instructions), config
        self.judge, self.refusal_tokens, self.progress = judge, list(refusal_tokens or []), progress
        self._rates: dict[Hashable, RateEstimate] = {}
        self._judged: dict[Hashable, JudgedResponses] = {}
        self.seconds = 0.0

    @property
    def n_evaluations(self) -> int:
        return len(self._rates)

    def rate(self, key: Hashable, interventions: Sequence[Intervention] = ()) -> RateEstimate:
        """The refusal rate under `interventions`, measured the first time `key` is asked for."""
        if key not in self._rates:
            start = time.perf_counter()
            if self.config.mode == "generate":
                judged = refusal_rate(self.model, self.instructions, judge=self.judge, interventions=interventions,
                                      generation=self.config.generation(), progress=self.progress)
                self._judged[key], self._rates[key] = judged, judged.rate
            else:
                self._rates[key] = first_token_refusal_rate(self.model, self.instructions, self.refusal_tokens,
                                                                interventions, batch_size=self.config.batch_size)
            elapsed = time.perf_counter() - start
            self.seconds += elapsed
            if self.progress:  # long audits show what was measured as they go
                tqdm.write(f"audit: {_describe(key)}: refusal {self._rates[key].value:.2f} ({elapsed:.0f} s)")
        return self._rates[key]

    def measured(self) -> dict[Hashable, RateEstimate]:
        return dict(self._rates)

    def judged(self, key: Hashable) -> JudgedResponses | None:
        """Responses and verdicts behind `key` (generate mode only; None before it is measured)."""
        return self._judged.get(key)

    def outcomes(self, key: Hashable) -> dict[str, int] | None:
        """How many responses behind `key` are refusals, compliance or non-answers, as the judge labels
        them (`judges.classify`: a refused/not judge tells refusal from compliance only)."""
        judged = self.judged(key)
        if judged is None:
            return None
        labels = classify(self.judge, judged.instructions, judged.responses)
        return {v.value: sum(label == v for label in labels) for v in Verdict}


def _describe(key: Hashable) -> str:
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], frozenset):
        return f"{key[0]} {sorted(key[1]) or 'nothing'}"
    return str(key)


class AblationRefusal:
    """Harmful refusal with a subset of `directions` ablated (all layers, the authors' sites), memoised by
    subset. Directions may be appended (discovery) without invalidating earlier subsets."""

    def __init__(self, meter: RefusalMeter, directions: DirectionSet = DirectionSet()):
        self.meter = meter
        self.directions = directions

    def append(self, direction: Direction) -> int:
        self.directions = self.directions.append(direction)
        return len(self.directions) - 1

    def __call__(self, subset: Iterable[int]) -> RateEstimate:
        subset = frozenset(subset)
        if any(not 0 <= i < len(self.directions) for i in subset):
            raise ValueError(f"subset {sorted(subset)} indexes past the {len(self.directions)} directions")
        interventions = [self.directions[sorted(subset)].ablation()] if subset else []
        return self.meter.rate(("ablate", subset), interventions)

    def value(self, subset: Iterable[int]) -> float:
        return self(subset).value

    def measured(self) -> dict[frozenset[int], RateEstimate]:
        """Every subset measured so far and its refusal rate."""
        return {key[1]: rate for key, rate in self.meter.measured().items()
                if isinstance(key, tuple) and key[0] == "ablate"}

    def known(self) -> dict[frozenset[int], float]:
        """Every subset measured so far and its refusal value (for pruning the redundancy search)."""
        return {subset: rate.value for subset, rate in self.measured().items()}
