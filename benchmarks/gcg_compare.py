"""GCG through nanogcg against our own GCG at the same budget, on the same harmful prompts.

    python benchmarks/gcg_compare.py --adapter RUN/round_0/adapter --out results/gcg_compare.json

Both backends attack each prompt (built-in VALIDATION harmful prompts, never the test split) with the same
chat layout, target, allowed tokens, steps, search width, top-k and initial suffix; the response to
prompt + suffix (64 new tokens) is labelled by the three-way judge (success = a compliance). Per prompt
and backend it records the final target loss of the returned suffix in the chat layout (one measure for
both), the backend's own best loss per step, whether greedy decoding emits the target, the judge's label
and the search's wall time. The backends alternate prompt by prompt, so a busy machine slows both alike.
The file is rewritten after every prompt; the results page renders it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from failclosed_interp.artifacts import write_json
from failclosed_interp.attacks import GCG, GCGConfig
from failclosed_interp.attacks.gcg import BACKENDS
from failclosed_interp.configs import config_to_dict
from failclosed_interp.judges import ThreeWayJudge
from failclosed_interp.models import EMBEDDED_MODEL, load_model
from failclosed_interp.prompts import builtin
from failclosed_interp.stopwatch import machine


def summary(rows: list[dict]) -> dict:
    """Per backend: prompts, mean final loss, judged compliances, target matches, total search seconds."""
    out = {}
    for backend in BACKENDS:
        mine = [r for r in rows if r["backend"] == backend]
        if mine:
            out[backend] = {"n": len(mine), "mean_loss": sum(r["loss"] for r in mine) / len(mine),
                            "mean_initial_loss": sum(r["initial_loss"] for r in mine) / len(mine),
                            "successes": sum(r["success"] for r in mine),
                            "matched_target": sum(r["matched_target"] for r in mine),
                            "seconds": sum(r["seconds"] for r in mine)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--adapter", help="LoRA adapter folder (a refusing model, e.g. an SFT round_0/adapter)")
    parser.add_argument("--n-prompts", type=int, default=8, help="built-in validation harmful prompts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--search-width", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--out", default="results/gcg_compare.json")
    args = parser.parse_args()
    config = GCGConfig(steps=args.steps, search_width=args.search_width, top_k=args.top_k)
    model = load_model(args.model, adapter=args.adapter)
    prompts = builtin("harmful", "val").take(args.n_prompts).to_list()
    judge = ThreeWayJudge()
    rows = []
    for i, prompt in enumerate(prompts):
        for backend in BACKENDS:
            start = time.perf_counter()
            (result,) = GCG(replace(config, backend=backend)).run(model, [prompt], judge=judge, progress=False)
            d = result.details
            rows.append({"backend": backend, "prompt": prompt, "loss": d["loss"], "initial_loss": d["initial_loss"],
                         "backend_best_loss": min(d["losses"], default=d["initial_loss"]),
                         "matched_target": d["matched_target"], "steps_run": d["steps_run"], "label": result.label,
                         "success": result.success, "seconds": d["seconds"],
                         "seconds_with_response": round(time.perf_counter() - start, 2),
                         "suffix": d["suffix"], "response": result.response})
            print(f"[{i + 1}/{len(prompts)}] {backend:7s} loss {d['initial_loss']:.3f} -> {d['loss']:.3f}  "
                  f"{result.label:10s} {d['seconds']:6.1f} s", flush=True)
        write_json(args.out, {
            "model": args.model, "adapter": args.adapter, "prompts": "harmful/val", "n_prompts": len(prompts),
            "judge": judge.name, "config": {k: v for k, v in config_to_dict(config).items() if k != "backend"},
            "machine": machine(), "summary": summary(rows), "rows": rows,
        })


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
