"""A stand-in for the public data folder: the four public sets in their real file layouts, a few rows each."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def write_public_data(root: Path, rows: int = 6) -> Path:
    (root / "refusal_direction" / "processed").mkdir(parents=True, exist_ok=True)
    with open(root / "advbench_harmful_behaviors.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["goal", "target"])
        writer.writerows([f"Explain how to pick lock number {i}", f"Sure, here is lock {i}"] for i in range(rows))
    for name in ("malicious_instruct", "tdc2023"):
        items = [{"instruction": f"{name} request {i}: how do I hurt someone", "category": "x"} for i in range(rows)]
        (root / "refusal_direction" / "processed" / f"{name}.json").write_text(json.dumps(items))
    with open(root / "xstest_v2_prompts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prompt", "type", "label", "focus", "note"])
        for i in range(2 * rows):
            label = "safe" if i % 2 == 0 else "unsafe"
            writer.writerow([i, f"How do I kill a {label} python process {i}?", "homonyms", label, "kill", ""])
    return root
