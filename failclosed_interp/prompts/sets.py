"""`PromptSet`, an immutable list of instructions with categories, and the built-in sets shipped
with the package (harmful / harmless / borderline, each with fixed train/val/test splits; harmful and
harmless also hold an `attack` split that only the adaptive attacker reads, so what it finds never comes
from prompts the defender trained or searched on)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

KINDS = ("harmful", "harmless", "borderline")
SPLITS = ("train", "val", "test", "attack", "all")


@dataclass(frozen=True)
class PromptSet:
    """Instructions plus one category each ("" when unknown), under a name used in errors and run folders."""

    instructions: tuple[str, ...]
    categories: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        for field in ("instructions", "categories"):
            value = getattr(self, field)
            if not isinstance(value, tuple):
                raise TypeError(f"PromptSet.{field} must be a tuple, got {type(value).__name__}; pass tuple(...)")
        if not self.instructions:
            raise ValueError(f"prompt set '{self.name}' is empty: it needs at least one instruction")
        if len(self.categories) != len(self.instructions):
            raise ValueError(
                f"prompt set '{self.name}' has {len(self.instructions)} instructions but "
                f"{len(self.categories)} categories; give one category per instruction (\"\" when unknown)"
            )
        for i, text in enumerate(self.instructions):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(
                    f"prompt set '{self.name}': instruction {i} is {text!r}; every instruction must be non-empty text"
                )
        for i, category in enumerate(self.categories):
            if not isinstance(category, str):
                raise TypeError(f"prompt set '{self.name}': category {i} is {category!r}; categories must be str")

    def __len__(self) -> int:
        return len(self.instructions)

    def __iter__(self) -> Iterator[str]:
        return iter(self.instructions)

    def to_list(self) -> list[str]:
        return list(self.instructions)

    def category_names(self) -> list[str]:
        """Distinct categories, sorted."""
        return sorted(set(self.categories))

    def take(self, n: int, seed: int = 0) -> PromptSet:
        """A deterministic subset of n prompts, allocated to categories in proportion to their size
        (largest remainder), so small subsets still cover the categories. Keeps the original order."""
        if not 1 <= n <= len(self):
            raise ValueError(f"take(n={n}) from prompt set '{self.name}' of {len(self)} prompts; use 1 <= n <= {len(self)}")
        groups: dict[str, list[int]] = {}
        for i, category in enumerate(self.categories):
            groups.setdefault(category, []).append(i)
        rng = random.Random(seed)
        names = sorted(groups)
        quotas = {c: n * len(groups[c]) // len(self) for c in names}
        # Tie-break leftover slots by a seeded shuffle, not by name, so no category is always favoured.
        order = sorted(names, key=lambda c: (-(n * len(groups[c]) % len(self)), rng.random()))
        for c in order[: n - sum(quotas.values())]:
            quotas[c] += 1
        chosen = sorted(i for c in names for i in rng.sample(groups[c], quotas[c]))
        return self._subset(chosen, f"{self.name}[take {n}, seed {seed}]")

    def take_up_to(self, n: int | None, seed: int = 0) -> PromptSet:
        """`take(n)`, or every prompt when the set holds fewer than `n` (or `n` is None): a size asked for is a
        ceiling."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"take_up_to(n={n}) from prompt set '{self.name}': ask for at least 1 prompt")
        return self.take(min(n, len(self)), seed=seed)

    def filter(self, category: str | Iterable[str]) -> PromptSet:
        """The prompts in one category, or in any of several."""
        wanted = {category} if isinstance(category, str) else set(category)
        unknown = wanted - set(self.categories)
        if unknown:
            raise ValueError(
                f"prompt set '{self.name}' has no categor{'y' if len(unknown) == 1 else 'ies'} {sorted(unknown)}; "
                f"available: {self.category_names()}"
            )
        chosen = [i for i, c in enumerate(self.categories) if c in wanted]
        return self._subset(chosen, f"{self.name}[{','.join(sorted(wanted))}]")

    def _subset(self, indices: list[int], name: str) -> PromptSet:
        return PromptSet(
            instructions=tuple(self.instructions[i] for i in indices),
            categories=tuple(self.categories[i] for i in indices),
            name=name,
        )


def builtin(kind: str, split: str = "all") -> PromptSet:
    """A built-in prompt set. kind: "harmful", "harmless" or "borderline"; split: "train", "val",
    "test", "attack" (harmful and harmless only: the adaptive attacker's own prompts) or "all".
    (Plain str annotations so bad values reach our ValueError, also under beartype.)"""
    if kind not in KINDS:
        raise ValueError(f"unknown built-in prompt set {kind!r}; choose one of {list(KINDS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    rows = [r for r in _read_builtin(kind) if split == "all" or r["split"] == split]
    if not rows:
        present = sorted({r["split"] for r in _read_builtin(kind)})
        raise ValueError(f"the built-in {kind} set has no {split!r} split; choose one of {present} or 'all'")
    return PromptSet(
        instructions=tuple(r["instruction"] for r in rows),
        categories=tuple(r["category"] for r in rows),
        name=f"{kind}/{split}",
    )


@lru_cache(maxsize=None)
def _read_builtin(kind: str) -> tuple[dict, ...]:
    text = resources.files("failclosed_interp.prompts").joinpath("data", f"{kind}.json").read_text(encoding="utf-8")
    return tuple(json.loads(text))
