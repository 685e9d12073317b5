"""`failclosed directions`, `score` and `audit`: find directions, measure refusal, audit the pathways."""

from __future__ import annotations

import argparse
from pathlib import Path

from failclosed_interp.cli.options import (
    apply, attacker_flags, command, fallback_field, fields_of, given, model_flags, search_flags,
)
from failclosed_interp.judges import DEFAULT_JUDGE, JUDGE_NAMES


def load(args):
    """The model the --model / --adapter / --device flags name."""
    from failclosed_interp.models import load_model

    return load_model(args.model, adapter=args.adapter, device=args.device)


def cmd_directions(args) -> None:
    """`failclosed directions`."""
    from failclosed_interp.jobs import direction_job
    from failclosed_interp.search import DirectionJobConfig

    base = DirectionJobConfig()
    config = apply(base, {**fields_of(args, base), **fallback_field(args, "search.")})
    selection = direction_job(load(args), args.out, config)
    print(f"refusal direction: layer {selection.layer}, position {selection.position}, "
          f"ablation score {selection.direction.scores['ablation_score']:.2f} "
          f"(baseline {selection.baseline_harmful_score:.2f}); written to {args.out}")


def cmd_score(args) -> None:
    """`failclosed score`."""
    from failclosed_interp.generation import GenerationConfig
    from failclosed_interp.jobs import score_job
    from failclosed_interp.prompts import load_prompts

    prompts = load_prompts(args.prompts, **given(args, "column", "filter"))
    if hasattr(args, "limit"):
        prompts = prompts.take_up_to(args.limit, **given(args, "seed"))
    generation = {"generation": GenerationConfig(max_new_tokens=args.max_new_tokens)} if hasattr(args, "max_new_tokens") else {}
    judged = score_job(load(args), prompts, args.out, ablate=getattr(args, "ablate", None), **generation)
    print(f"refusal rate {judged.rate} on {judged.rate.n} prompts from {args.prompts}; written to {args.out}")


def cmd_audit(args) -> None:
    """`failclosed audit`."""
    from failclosed_interp.audit import AuditConfig, audit_job, format_audit

    base = AuditConfig()
    fields = {**fields_of(args, base), **fallback_field(args, "directions.")}
    if "n_eval" in fields:  # one flag sizes both evaluation sets
        fields["n_harmless"] = fields["n_eval"]
    result = audit_job(args.out, args.model, adapter=args.adapter, directions=getattr(args, "folder", None),
                       config=apply(base, fields), judge=args.judge, device=args.device, figures=args.figures)
    print(format_audit(result))
    print(f"\naudit folder: {args.out} (audit.json, report.html, directions/)")


def _column_filter(text: str) -> dict[str, str]:
    column, equals, value = text.partition("=")
    if not equals or not column:
        raise argparse.ArgumentTypeError(f"{text!r}: give COLUMN=VALUE, e.g. label=safe")
    return {column: value}


def add_parsers(sub) -> None:
    """Add this group's commands to the subparsers `sub`."""
    p = command(sub, "directions", "difference-in-means refusal directions over layers x positions, selected", cmd_directions)
    model_flags(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-train", dest="n_train", type=int, help="built-in TRAIN prompts per kind for the DIM means")
    p.add_argument("--n-val", dest="n_val", type=int, help="built-in VALIDATION prompts per kind for the selection")
    search_flags(p, "search.")

    p = command(sub, "score", "judge a model's responses to a prompt file and write the refusal rate", cmd_score)
    model_flags(p)
    p.add_argument("--ablate", type=Path, help="directions folder to ablate (e.g. RUN/direction)")
    p.add_argument("--prompts", type=Path, required=True, help="one prompt per line (.txt), or .csv/.json/.jsonl")
    p.add_argument("--column", help="text column for CSV/JSON files (default: instruction/prompt/goal/...)")
    p.add_argument("--where", dest="filter", type=_column_filter,
                   help="keep rows whose COLUMN equals VALUE, e.g. label=safe (XSTest)")
    p.add_argument("--limit", type=int, help="score a deterministic, category-stratified subset of this size")
    p.add_argument("--seed", type=int, help="seed of the --limit subset")
    p.add_argument("--max-new-tokens", type=int, help="tokens generated and judged per response")
    p.add_argument("--out", type=Path, required=True, help="output JSON file")

    p = command(sub, "audit", "independence audit: how many independent refusal pathways; fail-open or fail-closed", cmd_audit)
    model_flags(p)
    p.add_argument("--directions", dest="folder", type=Path,
                   help="directions folder to audit (e.g. DIR/final/directions, RUN/direction); "
                        "default: discover them, each with the earlier ones ablated")
    p.add_argument("--k", dest="k_max", type=int, help="discovery stops after this many directions")
    p.add_argument("--mode", dest="measure.mode", choices=["generate", "logit"],
                   help="refusal by judged generations (the default) or by the first answer token alone (faster)")
    p.add_argument("--judge", choices=JUDGE_NAMES, default=DEFAULT_JUDGE)
    p.add_argument("--threshold", type=float, help="harmful refusal below this counts as collapsed")
    p.add_argument("--carry-margin", dest="carry_margin", type=float,
                   help="a refusal rate must move by this much (intervals disjoint) to show a direction carries refusal")
    p.add_argument("--kl-budget", dest="kl_budget", type=float,
                   help="the attacker's budget: mean KL on harmless prompts an ablation may cost")
    p.add_argument("--no-unbounded", dest="unbounded", action="store_false",
                   help="skip the search for the strongest direction without the KL limit")
    p.add_argument("--n-eval", dest="n_eval", type=int, help="harmful prompts per refusal figure, harmless for steering")
    p.add_argument("--max-new-tokens", dest="measure.max_new_tokens", type=int, help="tokens generated and judged per response")
    p.add_argument("--adaptive", action="store_true",
                   help="also run the independent adaptive attacker (the --attacker-* flags) and audit the direction it "
                        "picks within --kl-budget")
    search_flags(p, "directions.")
    attacker_flags(p, "attacker.", "attacker-")  # after the search's: a library error's `positions` names --positions
    p.add_argument("--figures", action="store_true", default=False,
                   help="also write each figure to OUT/figures (HTML, PNG with Chromium)")
    p.add_argument("--out", type=Path, required=True)
