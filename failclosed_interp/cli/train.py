"""`failclosed demo`, `sft` and `align`: training refusal in, and the progressive loop."""

from __future__ import annotations

from pathlib import Path

from failclosed_interp.cli.options import (
    apply, command, data_dir_flag, fallback_field, fields_of, model_flags, search_flags, sft_config, training_flags,
)


def cmd_demo(args) -> None:
    """`failclosed demo`."""
    from failclosed_interp.demo import DemoConfig, demo_job, format_summary

    summary = demo_job(args.out, apply(DemoConfig(), fields_of(args, DemoConfig())))
    print(format_summary(summary))
    print(f"\nrun folder: {args.out} (summary.json, figures/; align/round_0/adapter: the SFT model, "
          f"align/final/adapter: the fail-closed one; audit/sft/report.html, audit/failclosed/report.html)")


def cmd_sft(args) -> None:
    """`failclosed sft`."""
    from failclosed_interp.training import SFTConfig, run_sft

    result = run_sft(sft_config(args, SFTConfig()), args.out)
    print(f"adapter written to {result.adapter_dir}")


def cmd_align(args) -> None:
    """`failclosed align`."""
    from failclosed_interp.align import align, format_align_summary, recipe, with_rdo_steps

    base = recipe(args.recipe)
    fields = {k: v for k, v in fields_of(args, base).items() if not k.startswith("sft.")}
    config = apply(base, {**fields, **fallback_field(args, "directions.search."), "sft": sft_config(args, base.sft)})
    if hasattr(args, "rdo_steps"):
        config = with_rdo_steps(config, args.rdo_steps)
    summary = align(config, args.out, merge=args.merge, device=args.device, data_dir=args.data_dir,
                    round0_from=args.round0_from)
    print(format_align_summary(summary))
    print(f"\nrun folder: {args.out} (summary.json, final/adapter, final/directions, round_*/)")


def add_parsers(sub) -> None:
    """Add this group's commands to the subparsers `sub`."""
    from failclosed_interp.align import METHODS, MODES, RECIPES, SEARCHES

    p = command(sub, "demo", "main job: refusal SFT shown fail-open, then the fail-closed recipe, both audited side by "
                "side (the embedded model by default)", cmd_demo)
    model_flags(p, adapter=False, dest="model")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder; an interrupted demo resumes from it")
    p.add_argument("--n-eval", dest="n_eval", type=int, help="held-out test prompts per set (default 20)")
    p.add_argument("--seed", type=int, help="training and prompt-sampling seed (default 0)")

    p = command(sub, "sft", "refusal SFT with LoRA (the standard-alignment baseline)", cmd_sft)
    model_flags(p, adapter=False, dest="sft.model")
    training_flags(p)
    p.add_argument("--out", type=Path, required=True)

    p = command(sub, "align", "progressive fail-closed alignment (or the sft / refat baselines) with LoRA", cmd_align)
    model_flags(p, adapter=False, dest="sft.model")
    data_dir_flag(p)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                   help="preset of loop settings ('paper': plain search, cumulative ablation, RDO directions, up to 10 "
                        "rounds; 'broad': this project's broad search, docs/align.md); the flags below override it")
    p.add_argument("--method", choices=METHODS, help="failclosed (the default), or the sft / refat baselines")
    p.add_argument("--rounds", type=int, help="rounds after round 0 (plain SFT)")
    p.add_argument("--mode", choices=MODES,
                   help="failclosed: ablate all found directions, only the last one, or a random subset per step")
    p.add_argument("--search", choices=SEARCHES,
                   help="failclosed: find each new direction with the found ones ablated, on the plain model (paper), "
                        "or by the attacker's procedure on the defender's prompts ('broad', this project's; with "
                        "--rdo-steps 0)")
    training_flags(p)
    search_flags(p, "directions.search.")
    p.add_argument("--rdo-steps", type=int, help="most RDO optimiser steps per direction; 0 = DIM directions only")
    p.add_argument("--n-eval", dest="n_eval", type=int, help="held-out test prompts per set in the summary (default: all)")
    p.add_argument("--merge", action="store_true", default=False,
                   help="also write final/merged, a HF checkpoint with the adapter merged")
    p.add_argument("--round0-from", dest="round0_from", type=Path, default=None,
                   help="another align run folder with the same sft settings: a new run starts from its round-0 "
                        "(plain SFT) model instead of training its own")
    p.add_argument("--out", type=Path, required=True, help="run folder; an interrupted run resumes from it")
