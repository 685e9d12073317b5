"""`failclosed <command>`: argument parsing only; each command calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from failclosed_interp.models import EMBEDDED_MODEL


def _model_args(p: argparse.ArgumentParser, adapter: bool = True) -> None:
    p.add_argument("--model", default=EMBEDDED_MODEL, help=f"built-in name, HF name or local path (default {EMBEDDED_MODEL})")
    if adapter:
        p.add_argument("--adapter", type=Path, help="LoRA adapter folder (PEFT format), e.g. RUN/sft/adapter")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: where the model loads)")


def _load(args):
    from failclosed_interp.models import load_model

    return load_model(args.model, adapter=getattr(args, "adapter", None), device=args.device)


def cmd_demo(args) -> None:
    from failclosed_interp.pipeline import DemoConfig, demo_job, format_summary

    summary = demo_job(args.out, DemoConfig(model=args.model, n_eval=args.n_eval))
    print(format_summary(summary))
    print(f"\nrun folder: {args.out} (summary.json, figures/, sft/adapter, direction/)")


def cmd_sft(args) -> None:
    from failclosed_interp.training import SFTConfig, run_sft

    result = run_sft(SFTConfig(model=args.model), args.out)
    print(f"adapter written to {result.adapter_dir}")


def cmd_align(args) -> None:
    import dataclasses

    from failclosed_interp.align import AlignConfig, align, format_align_summary
    from failclosed_interp.rdo import RDOConfig

    defaults = AlignConfig()
    train = dataclasses.replace(defaults.sft.train, epochs=args.epochs) if args.epochs else defaults.sft.train
    counts = {k: v for k in ("n_harmful", "n_harmless", "n_borderline") if (v := getattr(args, k)) is not None}
    sft = dataclasses.replace(defaults.sft, model=args.model, train=train, seed=args.seed, **counts)
    rdo = None if args.rdo_steps == 0 else dataclasses.replace(defaults.rdo or RDOConfig(), steps=args.rdo_steps) \
        if args.rdo_steps is not None else defaults.rdo
    config = AlignConfig(method=args.method, rounds=args.rounds, mode=args.mode, sft=sft, rdo=rdo, n_eval=args.n_eval)
    summary = align(config, args.out, merge=args.merge)
    print(format_align_summary(summary))
    print(f"\nrun folder: {args.out} (summary.json, final/adapter, final/directions, round_*/)")


def cmd_directions(args) -> None:
    from failclosed_interp.pipeline import DirectionJobConfig, direction_job

    selection = direction_job(_load(args), args.out, DirectionJobConfig(n_train=args.n_train, n_val=args.n_val))
    print(f"refusal direction: layer {selection.layer}, position {selection.position}, "
          f"ablation score {selection.direction.scores['ablation_score']:.2f} "
          f"(baseline {selection.baseline_harmful_score:.2f}); written to {args.out}")


def cmd_score(args) -> None:
    from failclosed_interp.generation import GenerationConfig
    from failclosed_interp.pipeline import score_job
    from failclosed_interp.prompts import load_prompts

    prompts = load_prompts(args.prompts, column=args.column, filter=dict([args.where.split("=", 1)]) if args.where else None)
    if args.limit is not None:
        prompts = prompts.take(min(args.limit, len(prompts)), seed=args.seed)
    judged = score_job(_load(args), prompts, args.out, ablate=args.ablate,
                       generation=GenerationConfig(max_new_tokens=args.max_new_tokens))
    print(f"refusal rate {judged.rate} on {judged.rate.n} prompts from {args.prompts}; written to {args.out}")


def cmd_audit(args) -> None:
    from failclosed_interp.audit import AuditConfig, MeasureConfig, audit_job, format_audit

    config = AuditConfig(k_max=args.k, threshold=args.threshold, adaptive=args.adaptive, n_eval=args.n_eval,
                         n_harmless=args.n_eval, measure=MeasureConfig(mode=args.mode, max_new_tokens=args.max_new_tokens))
    result = audit_job(args.out, args.model, adapter=args.adapter, directions=args.directions, config=config,
                       judge=args.judge, device=args.device, figures=args.figures)
    print(format_audit(result))
    print(f"\naudit folder: {args.out} (audit.json, report.html, directions/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="failclosed", description="Refusal directions and fail-closed alignment")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="main job: base -> refusal SFT -> refusal direction -> ablation, on the embedded model")
    _model_args(p, adapter=False)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--n-eval", type=int, default=20, help="held-out prompts per set (default 20)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sft", help="refusal SFT with LoRA (the standard-alignment baseline)")
    _model_args(p, adapter=False)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("align", help="progressive fail-closed alignment (or the sft / refat baselines) with LoRA")
    _model_args(p, adapter=False)
    p.add_argument("--method", choices=["failclosed", "sft", "refat"], default="failclosed")
    p.add_argument("--rounds", type=int, default=3, help="rounds after round 0 (plain SFT), default 3")
    p.add_argument("--mode", choices=["cumulative", "last-only"], default="cumulative",
                   help="failclosed: ablate all found directions (default) or only the last one")
    p.add_argument("--epochs", type=int, help="epochs per round (default from AlignConfig)")
    for kind in ("harmful", "harmless", "borderline"):
        p.add_argument(f"--n-{kind}", type=int, help=f"built-in {kind} TRAIN prompts (default from SFTConfig)")
    p.add_argument("--rdo-steps", type=int, help="RDO refinement steps per direction; 0 = DIM only")
    p.add_argument("--n-eval", type=int, default=20, help="held-out prompts per set in the summary (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", action="store_true", help="also write final/merged, a HF checkpoint with the adapter merged")
    p.add_argument("--out", type=Path, required=True, help="run folder; an interrupted run resumes from it")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("directions", help="difference-in-means refusal directions over layers x positions, selected")
    _model_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-val", type=int, default=16)
    p.set_defaults(func=cmd_directions)

    p = sub.add_parser("score", help="judge a model's responses to a prompt file and write the refusal rate")
    _model_args(p)
    p.add_argument("--ablate", type=Path, help="directions folder to ablate (e.g. RUN/direction)")
    p.add_argument("--prompts", type=Path, required=True, help="one prompt per line (.txt), or .csv/.json/.jsonl")
    p.add_argument("--column", help="text column for CSV/JSON files (default: instruction/prompt/goal/...)")
    p.add_argument("--where", help="keep rows whose COLUMN equals VALUE, e.g. label=safe (XSTest)")
    p.add_argument("--limit", type=int, help="score a deterministic, category-stratified subset of this size")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, required=True, help="output JSON file")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("audit", help="independence audit: how many independent refusal pathways; fail-open or fail-closed")
    _model_args(p)
    p.add_argument("--directions", type=Path, help="directions folder to audit (e.g. DIR/final/directions, RUN/direction); "
                                                   "default: discover them, each with the earlier ones ablated")
    p.add_argument("--k", type=int, default=5, help="discovery stops after this many directions (default 5)")
    p.add_argument("--mode", choices=["generate", "logit"], default="generate",
                   help="refusal by judged generations (default) or by logit refusal score > 0 (faster)")
    p.add_argument("--judge", choices=["substring", "prefix"], default="substring")
    p.add_argument("--threshold", type=float, default=0.5, help="harmful refusal below this counts as collapsed")
    p.add_argument("--n-eval", type=int, default=20, help="harmful prompts per refusal figure, harmless for steering")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--adaptive", action="store_true", help="with --directions: also audit the model's own DIM direction")
    p.add_argument("--figures", action="store_true", help="also write each figure to OUT/figures (HTML, PNG with Chromium)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_audit)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"failclosed {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
