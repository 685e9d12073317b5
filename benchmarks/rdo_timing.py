"""Time RDO per direction on a refusing model and check what the direction does, for several settings.

    python benchmarks/rdo_timing.py --adapter RUN/adapter [--settings default,longer] [--out results/rdo_timing.json]

As the loop does after round 0: the DIM direction at the last prompt token (Arditi's rules, else KL <= 0.3)
is the reference (addition layer and strength) and makes the RDO targets, on built-in TRAIN prompts
filtered by the sign of their refusal score. Each setting then runs RDO from its start (random, or the
DIM direction for start="init"), timed, and its direction is checked on built-in VALIDATION prompts: the
mean refusal score (log-odds) of harmful prompts with it ablated and of harmless prompts with it added,
and the judged refusal rates of greedy answers under the same interventions, next to the plain model and
the reference direction. Writes one JSON with the machine, the settings, seconds per direction and these
figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

import torch

from failclosed_interp.artifacts import write_json
from failclosed_interp.dim import DirectionConfig, FallbackRules
from failclosed_interp.directions import DirectionSet
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.models import EMBEDDED_MODEL, load_model
from failclosed_interp.jobs import direction_job
from failclosed_interp.rdo import RDOConfig, optimize_direction
from failclosed_interp.rdo_config import addition_of
from failclosed_interp.rdo_targets import rdo_targets
from failclosed_interp.scoring import refusal_rate, refusal_scores
from failclosed_interp.search import DirectionJobConfig

SETTINGS = {
    "default": RDOConfig(),
    "longer": RDOConfig(steps=128, patience=10),  # twice the step budget and patience
    "short-targets": RDOConfig(target_tokens=16),
    # a CPU candidate: half the batch, shorter targets, a smaller step budget and patience
    "cpu": RDOConfig(batch_size=8, target_tokens=16, steps=24, patience=3),
    # a CPU budget started from the DIM direction, the candidate measured for `failclosed demo`
    "demo": RDOConfig(steps=8, batch_size=8, target_tokens=16, patience=3, start="init"),
    # the authors' budget started from the DIM direction instead of a random vector
    "init": RDOConfig(start="init"),
}


def check(model, direction, tokens, harmful, harmless, generation) -> dict:
    """Validation figures of one direction: refusal scores and judged rates with it ablated / added."""
    ablate = [DirectionSet((direction,)).ablation(skip_template_prefix=False)]
    add = [addition_of(direction.vector, direction)]
    return {
        "harmful_score_ablated": float(refusal_scores(model, harmful, tokens, ablate).mean()),
        "harmless_score_added": float(refusal_scores(model, harmless, tokens, add).mean()),
        "harmful_refusal_ablated": refusal_rate(model, harmful, generation=generation, interventions=ablate, progress=False).rate.value,
        "harmless_refusal_added": refusal_rate(model, harmless, generation=generation, interventions=add, progress=False).rate.value,
    }


def reference_direction(model, folder: Path, n_train: int, n_val: int):
    """(job config, selection, seconds): the DIM direction at the last prompt token as the loop picks its
    reference after round 0 (Arditi's rules, else KL <= 0.3), searched on `n_train` TRAIN prompts per kind
    and selected on `n_val` VALIDATION ones."""
    jc = DirectionJobConfig(n_train=n_train, n_val=n_val,
                            search=DirectionConfig(positions=(-1,), fallback=FallbackRules(kl_threshold=0.3)))
    start = time.perf_counter()
    selection = direction_job(model, folder, jc, progress=False)
    return jc, selection, time.perf_counter() - start


def machine() -> dict:
    """The machine a timing came from, and how busy it was at the start."""
    return {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "load_average_at_start": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--adapter", type=Path, required=True, help="a refusal SFT adapter (failclosed sft --out DIR: DIR/adapter)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {sorted(SETTINGS)}")
    parser.add_argument("--n-train", type=int, default=64, help="built-in TRAIN prompts of each kind for the targets")
    parser.add_argument("--n-val", type=int, default=16, help="built-in VALIDATION prompts of each kind for the checks")
    parser.add_argument("--out", type=Path, default=Path("results/rdo_timing.json"))
    parser.add_argument("--work", type=Path, default=Path("runs/rdo_timing"), help="folder for the DIM search outputs")
    args = parser.parse_args()
    model = load_model(args.model, adapter=args.adapter)
    jc, selection, dim_s = reference_direction(model, args.work / "search", args.n_train, args.n_val)
    reference = selection.direction
    harmful_val, harmless_val = jc.prompts("harmful", "val"), jc.prompts("harmless", "val")
    tokens = selection.refusal_tokens
    generation = GenerationConfig(max_new_tokens=24)
    result = {
        "machine": machine(),
        "model": model.name, "adapter": str(args.adapter), "n_train": args.n_train, "n_val": args.n_val,
        "reference": {"layer": reference.layer, "norm": reference.norm, "rules": selection.rules(), "search_s": dim_s},
        "plain": {"harmful_score": float(refusal_scores(model, harmful_val, tokens).mean()),
                  "harmless_score": float(refusal_scores(model, harmless_val, tokens).mean()),
                  "harmful_refusal": refusal_rate(model, harmful_val, generation=generation, progress=False).rate.value,
                  "harmless_refusal": refusal_rate(model, harmless_val, generation=generation, progress=False).rate.value},
        "reference_checks": check(model, reference, tokens, harmful_val, harmless_val, generation),
        "settings": {},
    }
    harmful, harmless = jc.prompts("harmful", "train"), jc.prompts("harmless", "train")
    targets_by_length = {}
    for name in args.settings.split(","):
        config = SETTINGS[name]
        if config.target_tokens not in targets_by_length:
            start = time.perf_counter()
            targets_by_length[config.target_tokens] = (
                rdo_targets(model, harmful, harmless, reference, config, refusal_tokens=tokens, progress=False),
                time.perf_counter() - start)
        targets, targets_s = targets_by_length[config.target_tokens]
        start = time.perf_counter()
        direction = optimize_direction(model, reference, targets, config, progress=False)
        seconds = time.perf_counter() - start
        result["settings"][name] = {
            "config": dataclasses.asdict(config), "n_pairs": len(targets), "targets": targets.filtered,
            "targets_s": targets_s, "rdo_s": seconds, "steps_run": direction.scores["steps_run"],
            "s_per_step": seconds / direction.scores["steps_run"], "best_step": direction.scores["best_step"],
            "loss": direction.scores["loss"], "first_loss": direction.scores["first_loss"],
            "cosine_to_reference": direction.scores["cosine_to_init"],
            **check(model, direction, tokens, harmful_val, harmless_val, generation),
        }
        write_json(args.out, result)  # after every setting, so a stopped run keeps what it measured
        print(name, {k: v for k, v in result["settings"][name].items() if k != "config"}, flush=True)


if __name__ == "__main__":
    main()
