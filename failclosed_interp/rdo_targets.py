"""What RDO trains toward: continuations generated once, greedily, from a reference refusal direction
(the authors take the base model's verified DIM direction): harmful prompts answered with it ablated
(a compliance), harmless prompts answered with it added (a refusal, cut at its first sentence) and
answered plainly (where the retain KL is measured). Optionally only prompts the model classifies as
it should (harmful refusal score > 0, harmless < 0) are kept, paired up one harmful to one harmless."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from failclosed_interp.artifacts import read_json, write_json
from failclosed_interp.directions import Direction
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.interventions import Intervention
from failclosed_interp.models import ChatModel
from failclosed_interp.rdo_config import RDOConfig, ablation_of, addition_of
from failclosed_interp.scoring import refusal_scores
from failclosed_interp.training.data import Example, own_answers

KINDS = ("ablation", "addition", "retain")


@dataclass(frozen=True)
class RDOTargets:
    """The continuations RDO trains toward; example i of each kind forms one training pair."""

    ablation: tuple[Example, ...]  # harmful prompt -> its answer with the reference direction ablated (a compliance)
    addition: tuple[Example, ...]  # harmless prompt -> its answer with the reference direction added (a refusal)
    retain: tuple[Example, ...]  # harmless prompt -> its own answer (where the KL is measured)
    filtered: str = ""  # how prompts were kept, in words

    def __post_init__(self):
        sizes = {kind: len(getattr(self, kind)) for kind in KINDS}
        if len(set(sizes.values())) != 1 or not sizes["ablation"]:
            raise ValueError(f"RDO targets need the same nonzero number of each kind, got {sizes}")
        if [e.prompt for e in self.addition] != [e.prompt for e in self.retain]:
            raise ValueError("addition and retain targets must be for the same harmless prompts, in the same order")

    def __len__(self) -> int:
        return len(self.ablation)

    def to_dict(self) -> dict:
        return {"filtered": self.filtered, **{kind: [e.to_dict() for e in getattr(self, kind)] for kind in KINDS}}

    @classmethod
    def from_dict(cls, data: dict) -> RDOTargets:
        return cls(*(tuple(Example.from_dict(e) for e in data[kind]) for kind in KINDS), filtered=data.get("filtered", ""))


def save_targets(targets: RDOTargets, path: str | Path) -> None:
    """Write the targets as JSON (atomically), to be reused by every later round."""
    write_json(path, targets.to_dict())


def load_targets(path: str | Path) -> RDOTargets:
    """Targets written by `save_targets`."""
    return RDOTargets.from_dict(read_json(path))


def rdo_targets(
    model: ChatModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    reference: Direction,
    config: RDOConfig = RDOConfig(),
    interventions: Sequence[Intervention] = (),
    *,
    refusal_tokens: Sequence[int] | None = None,
    progress: bool = True,
) -> RDOTargets:
    """Generate the targets once (greedy, `config.target_tokens` tokens) under `interventions`. With
    `refusal_tokens`, keep harmful prompts whose refusal score is > 0 and harmless ones whose score is < 0
    (the authors' filter); the two lists are then cut to the same length and paired in order."""
    if not harmful or not harmless:
        raise ValueError(f"RDO needs nonempty harmful and harmless prompt sets, got {len(harmful)} harmful and "
                         f"{len(harmless)} harmless prompts")
    if reference.d_model != model.d_model:
        raise ValueError(f"the reference direction has d_model={reference.d_model} but the model {model.name!r} has "
                         f"d_model={model.d_model}; it was computed on another model")
    harmful, harmless, filtered = list(harmful), list(harmless), "no filter"
    if refusal_tokens is not None:
        harmful_scores = refusal_scores(model, harmful, refusal_tokens, interventions)
        harmless_scores = refusal_scores(model, harmless, refusal_tokens, interventions)
        kept_harmful = [p for p, s in zip(harmful, harmful_scores.tolist()) if s > 0]
        kept_harmless = [p for p, s in zip(harmless, harmless_scores.tolist()) if s < 0]
        if not kept_harmful or not kept_harmless:
            raise ValueError(f"after keeping harmful prompts the model refuses (score > 0) and harmless ones it answers "
                             f"(score < 0), {len(kept_harmful)} harmful and {len(kept_harmless)} harmless are left; "
                             f"RDO needs a model that refuses harmful prompts (teach it first) and both kinds of prompts")
        filtered = (f"refusal score > 0: {len(kept_harmful)} of {len(harmful)} harmful, < 0: {len(kept_harmless)} of "
                    f"{len(harmless)} harmless")
        harmful, harmless = kept_harmful, kept_harmless
    n = min(len(harmful), len(harmless))
    harmful, harmless = harmful[:n], harmless[:n]
    generation = GenerationConfig(max_new_tokens=config.target_tokens, batch_size=config.generation_batch_size, seed=config.seed)

    def answers(prompts: list[str], extra: list[Intervention]) -> list[Example]:
        return own_answers(model, prompts, "utility", generation, [*interventions, *extra], progress=progress)

    added = [_first_sentence(e) for e in answers(harmless, [addition_of(reference.vector, reference)])]
    return RDOTargets(
        ablation=tuple(answers(harmful, [ablation_of(reference.vector[None], config)])),
        addition=tuple(added),
        retain=tuple(answers(harmless, [])),
        filtered=filtered,
    )


def _first_sentence(example: Example) -> Example:
    """The answer up to its first full stop (the authors' cut: the start of a refusal, not what follows)."""
    head = example.answer.split(".")[0].strip()
    if not head or head == example.answer:
        return example
    return replace(example, answer=head, complete=False)
