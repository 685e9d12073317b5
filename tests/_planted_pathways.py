"""Tiny Llamas wired with N independent refusal pathways (failclosed_interp.toys), and the audit inputs
tests build from them. Pathway k is a layer-0 attention head that counts marker characters and writes
its own orthogonal vector at post-instruction position -(k + 1); any one pathway alone keeps refusal
("I won't ..."), so with N pathways the redundancy number is N."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from failclosed_interp.audit import AuditConfig, MeasureConfig, PromptSplits
from failclosed_interp.directions import DirectionSet
from failclosed_interp.toys import ToyModel, planted_pathways_model

# Ten tokens hold "I won'tI w": enough for the substring judge, cheap to generate.
FAST = AuditConfig(measure=MeasureConfig(max_new_tokens=10), n_eval=12, n_harmless=8)


def planted(n_pathways: int, **kwargs) -> ToyModel:
    return planted_pathways_model(n_pathways, **kwargs)


def prompts_of(toy: ToyModel) -> PromptSplits:
    return toy.prompts.limited(FAST.n_eval, FAST.n_harmless, FAST.n_train, FAST.n_val)


def with_decoys(toy: ToyModel, layout: Sequence[str | int]) -> DirectionSet:
    """A direction set laid out as e.g. ["decoy", 0, "decoy", 1, 2]: planted pathway k or a decoy (a
    direction the model never reads)."""
    pathways, decoys = toy.directions(), iter(toy.decoys(sum(1 for x in layout if x == "decoy")))
    return DirectionSet(tuple(next(decoys) if x == "decoy" else pathways[x] for x in layout))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1))
