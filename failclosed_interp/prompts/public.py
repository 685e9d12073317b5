"""Public refusal benchmarks, read from a data folder the user names (they are never shipped with the
package): AdvBench, MaliciousInstruct and TDC2023 (harmful: a refusal is expected) and XSTest-safe (safe
prompts that only sound harmful: an answer is expected).

Every set is cut once into two fixed halves, `val` and `test`, by a permutation that depends only on the
set's prompts, so a threshold tuned on the `val` half is reported on prompts it never saw."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from failclosed_interp.prompts.loaders import load_prompts
from failclosed_interp.prompts.sets import PromptSet

PUBLIC_SPLITS = ("val", "test", "all")
DEFAULT_PUBLIC_N = 100  # prompts per set in a summary column (fewer when the half is smaller)


@dataclass(frozen=True)
class PublicSet:
    """Where one public set lies inside the data folder and what answer it expects.
    `expects`: "refusal" (harmful prompts) or "answer" (safe prompts: its refusal rate is over-refusal)."""

    name: str
    path: str
    expects: str
    column: str
    label_filter: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.expects not in ("refusal", "answer"):
            raise ValueError(f"PublicSet.expects must be 'refusal' or 'answer', got {self.expects!r}")


PUBLIC_SETS: dict[str, PublicSet] = {s.name: s for s in (
    PublicSet("advbench", "advbench_harmful_behaviors.csv", "refusal", "goal"),
    PublicSet("malicious_instruct", "refusal_direction/processed/malicious_instruct.json", "refusal", "instruction"),
    PublicSet("tdc2023", "refusal_direction/processed/tdc2023.json", "refusal", "instruction"),
    PublicSet("xstest_safe", "xstest_v2_prompts.csv", "answer", "prompt", (("label", "safe"),)),
)}


def public_set(data_dir: str | Path, name: str, split: str = "test") -> PromptSet:
    """One public set (or one of its fixed halves) from `data_dir`."""
    if name not in PUBLIC_SETS:
        raise ValueError(f"unknown public set {name!r}; choose one of {list(PUBLIC_SETS)}")
    if split not in PUBLIC_SPLITS:
        raise ValueError(f"unknown split {split!r} of a public set; choose one of {list(PUBLIC_SPLITS)}")
    spec = PUBLIC_SETS[name]
    path = Path(data_dir) / spec.path
    if not path.is_file():
        raise FileNotFoundError(f"public set {name!r} expects the file {spec.path} inside the data folder "
                                f"{data_dir}; point the data folder option at the folder that holds it")
    prompts = load_prompts(path, column=spec.column, filter=dict(spec.label_filter) or None, name=name)
    if split == "all":
        return prompts
    order = _fixed_order(prompts.instructions)
    half = len(order) // 2
    chosen = sorted(order[:half] if split == "val" else order[half:])
    return PromptSet(instructions=tuple(prompts.instructions[i] for i in chosen),
                     categories=tuple(prompts.categories[i] for i in chosen), name=f"{name}/{split}")


def public_prompts(data_dir: str | Path, name: str, split: str = "test", n: int | None = DEFAULT_PUBLIC_N,
                   seed: int = 0) -> list[str]:
    """Up to `n` prompts of one half of a public set (all of it when `n` is None or larger)."""
    return public_set(data_dir, name, split).take_up_to(n, seed=seed).to_list()


def _fixed_order(instructions: tuple[str, ...]) -> list[int]:
    """A permutation of the rows seeded by the set's content, so the halves never change for a given file."""
    digest = hashlib.sha256("\n".join(instructions).encode()).hexdigest()
    order = list(range(len(instructions)))
    random.Random(int(digest[:16], 16)).shuffle(order)
    return order
