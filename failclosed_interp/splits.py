"""Prompt splits for finding and evaluating refusal directions: harmful/harmless evaluation prompts, and
train/val splits of both for direction finding (the built-in sets, a toy model's, or your own)."""

from __future__ import annotations

from dataclasses import dataclass

from failclosed_interp.prompts import builtin


@dataclass(frozen=True)
class PromptSplits:
    """Harmful prompts for refusal figures, harmless ones for steering, train/val splits for directions."""

    harmful_eval: tuple[str, ...]
    harmless_eval: tuple[str, ...]
    harmful_train: tuple[str, ...]
    harmless_train: tuple[str, ...]
    harmful_val: tuple[str, ...]
    harmless_val: tuple[str, ...]

    @classmethod
    def builtin(cls, n_eval: int = 20, n_harmless: int = 20, n_train: int = 32, n_val: int = 12, seed: int = 0) -> PromptSplits:
        """The built-in sets: test splits for evaluation, train/val splits for direction finding."""
        def take(kind: str, split: str, n: int) -> tuple[str, ...]:
            return builtin(kind, split).take_up_to(n, seed=seed).instructions

        return cls(take("harmful", "test", n_eval), take("harmless", "test", n_harmless),
                   take("harmful", "train", n_train), take("harmless", "train", n_train),
                   take("harmful", "val", n_val), take("harmless", "val", n_val))

    def limited(self, n_eval: int, n_harmless: int, n_train: int, n_val: int) -> PromptSplits:
        """At most that many prompts of each split."""
        return PromptSplits(self.harmful_eval[:n_eval], self.harmless_eval[:n_harmless], self.harmful_train[:n_train],
                            self.harmless_train[:n_train], self.harmful_val[:n_val], self.harmless_val[:n_val])
