"""`failclosed <command>`: argument parsing only; each command calls one library function."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from failclosed_interp.judges import DEFAULT_JUDGE, JUDGE_NAMES
from failclosed_interp.models import DTYPES, EMBEDDED_MODEL, load_defaults


def _model_args(p: argparse.ArgumentParser, adapter: bool = True) -> None:
    p.add_argument("--model", default=EMBEDDED_MODEL, help=f"built-in name, HF name or local path (default {EMBEDDED_MODEL})")
    if adapter:
        p.add_argument("--adapter", type=Path, help="LoRA adapter folder (PEFT format), e.g. RUN/sft/adapter")
    _device_args(p)


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: where the model loads)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="weights and activations of every model the command loads (default float32; bfloat16 on GPUs)")


def _positions_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--positions", default="all",
                   help="token positions of DIM candidates: 'all' post-instruction positions (default), or negative "
                        "indices such as -1 or -1,-2 (fewer positions = faster selection)")
    p.add_argument("--kl-threshold", type=float, default=0.1,
                   help="selection rule: largest KL on harmless prompts when a candidate is ablated (default 0.1)")
    p.add_argument("--induce-threshold", type=_threshold, default=0.0,
                   help="selection rule: the harmless refusal score with the candidate added must exceed this "
                        "(default 0.0; 'off' switches the sufficiency rule off)")
    p.add_argument("--fallback-kl-threshold", type=float, default=None,
                   help="only if no candidate passes the rules above: choose among those with KL <= this "
                        "(recorded as fallback rules in the output; default: no fallback, an error)")
    p.add_argument("--fallback-induce-threshold", type=_threshold, default=None,
                   help="induce rule of the fallback (default 'off')")


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, help="training epochs (per round for align; default from SFTConfig)")
    p.add_argument("--lr", type=float, help="LoRA learning rate (default from SFTConfig)")
    p.add_argument("--rank", type=int, help="LoRA rank r (alpha is scaled to keep alpha/r; default from SFTConfig)")
    for kind in ("harmful", "harmless", "borderline"):
        p.add_argument(f"--n-{kind}", type=int, help=f"built-in {kind} TRAIN prompts (default from SFTConfig)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt subsets and the LoRA init (default 0)")


def _sft_config(args, defaults):
    """SFTConfig from `defaults` with the --epochs/--lr/--rank/--n-*/--seed options applied."""
    import dataclasses

    train = defaults.train
    changes = {k: v for k in ("epochs", "lr") if (v := getattr(args, k)) is not None}
    if args.rank is not None:
        lora = train.lora
        changes["lora"] = dataclasses.replace(lora, r=args.rank, alpha=max(1, round(lora.alpha * args.rank / lora.r)))
    train = dataclasses.replace(train, **changes)
    counts = {k: v for k in ("n_harmful", "n_harmless", "n_borderline") if (v := getattr(args, k)) is not None}
    return dataclasses.replace(defaults, model=args.model, train=train, seed=args.seed, **counts)


def _threshold(text: str) -> float | None:
    return None if text.strip().lower() == "off" else float(text)


def _positions(args) -> tuple[int, ...] | None:
    """--positions as a tuple, or None for every post-instruction position."""
    if args.positions == "all":
        return None
    try:
        return tuple(int(p) for p in args.positions.split(","))
    except ValueError as err:
        raise ValueError(f"--positions must be 'all' or comma-separated negative integers like -1,-2: {err}") from err


def _search(args, **options):
    from failclosed_interp.dim import DirectionConfig, FallbackRules

    fallback = None
    if args.fallback_kl_threshold is not None:
        fallback = FallbackRules(kl_threshold=args.fallback_kl_threshold, induce_threshold=args.fallback_induce_threshold)
    elif args.fallback_induce_threshold is not None:
        raise ValueError("--fallback-induce-threshold needs --fallback-kl-threshold (the fallback's KL rule)")
    return DirectionConfig(positions=_positions(args), kl_threshold=args.kl_threshold,
                           induce_threshold=args.induce_threshold, fallback=fallback, **options)


def _attacker_args(p: argparse.ArgumentParser) -> None:
    """Options of the adaptive ablation attacker (its prompts are the built-in attack split)."""
    p.add_argument("--kl-budgets", default="0.1,0.3,1,inf",
                   help="attacker: KL budgets on harmless prompts, one chosen direction each ('inf' = no limit)")
    p.add_argument("--report-budget", type=float, default=0.3, help="attacker: the KL budget its ASR is quoted at")
    p.add_argument("--n-fit", type=int, default=20,
                   help="attacker: prompts per kind for DIM means and RDO; the rest of its prompts score candidates")
    p.add_argument("--rdo-steps", type=int, default=64, help="attacker: RDO steps for its RDO direction (0: none)")
    p.add_argument("--positions", default="all",
                   help="attacker: token positions of DIM candidates: 'all' post-instruction positions (default), "
                        "or negative indices such as -1,-2")


def _attacker_config(args):
    from failclosed_interp.attacks import AdaptiveAttackConfig

    try:
        budgets = tuple(float(b) for b in args.kl_budgets.split(","))
    except ValueError as err:
        raise ValueError(f"--kl-budgets must be comma-separated numbers or inf, e.g. 0.1,0.3,1,inf: {err}") from err
    return AdaptiveAttackConfig(kl_budgets=budgets, report_budget=args.report_budget, n_fit=args.n_fit,
                                rdo_steps=args.rdo_steps, positions=_positions(args), seed=args.seed)


def _load(args):
    from failclosed_interp.models import load_model

    return load_model(args.model, adapter=getattr(args, "adapter", None), device=args.device)


def cmd_demo(args) -> None:
    """`failclosed demo`."""
    from failclosed_interp.pipeline import DemoConfig, demo_job, format_summary

    summary = demo_job(args.out, DemoConfig(model=args.model, n_eval=args.n_eval))
    print(format_summary(summary))
    print(f"\nrun folder: {args.out} (summary.json, figures/, sft/adapter, direction/)")


def cmd_sft(args) -> None:
    """`failclosed sft`."""
    from failclosed_interp.training import SFTConfig, run_sft

    result = run_sft(_sft_config(args, SFTConfig()), args.out)
    print(f"adapter written to {result.adapter_dir}")


def cmd_align(args) -> None:
    """`failclosed align`."""
    import dataclasses

    from failclosed_interp.align import align, format_align_summary, recipe
    from failclosed_interp.rdo import RDOConfig

    base = recipe(args.recipe)
    if args.rdo_steps is None:
        rdo = base.rdo
    elif args.rdo_steps == 0:
        rdo = None  # DIM directions only
    else:
        rdo = dataclasses.replace(base.rdo or RDOConfig(), steps=args.rdo_steps)
    explicit = {k: v for k in ("method", "rounds", "mode", "search") if (v := getattr(args, k)) is not None}
    config = dataclasses.replace(base, sft=_sft_config(args, base.sft), rdo=rdo, n_eval=args.n_eval,
                                 directions=dataclasses.replace(base.directions, search=_search(args)), **explicit)
    summary = align(config, args.out, merge=args.merge, device=args.device)
    print(format_align_summary(summary))
    print(f"\nrun folder: {args.out} (summary.json, final/adapter, final/directions, round_*/)")


def cmd_directions(args) -> None:
    """`failclosed directions`."""
    from failclosed_interp.pipeline import DirectionJobConfig, direction_job

    config = DirectionJobConfig(n_train=args.n_train, n_val=args.n_val, search=_search(args))
    selection = direction_job(_load(args), args.out, config)
    print(f"refusal direction: layer {selection.layer}, position {selection.position}, "
          f"ablation score {selection.direction.scores['ablation_score']:.2f} "
          f"(baseline {selection.baseline_harmful_score:.2f}); written to {args.out}")


def cmd_score(args) -> None:
    """`failclosed score`."""
    from failclosed_interp.generation import GenerationConfig
    from failclosed_interp.pipeline import score_job
    from failclosed_interp.prompts import load_prompts

    prompts = load_prompts(args.prompts, column=args.column, filter=dict([args.where.split("=", 1)]) if args.where else None)
    if args.limit is not None:
        prompts = prompts.take_up_to(args.limit, seed=args.seed)
    judged = score_job(_load(args), prompts, args.out, ablate=args.ablate,
                       generation=GenerationConfig(max_new_tokens=args.max_new_tokens))
    print(f"refusal rate {judged.rate} on {judged.rate.n} prompts from {args.prompts}; written to {args.out}")


def cmd_judge(args) -> None:
    """`failclosed judge`."""
    from failclosed_interp.artifacts import write_json
    from failclosed_interp.judge_check import judge_check, results_markdown
    from failclosed_interp.judge_files import judge_file
    from failclosed_interp.judges import judge_by_name

    if args.command == "judge-check":
        results = judge_check(args.data)
        write_json(args.out, results)
        print(results_markdown(results) + f"\nwritten to {args.out}")
        return
    result = judge_file(args.input, args.prompt_column, args.response_column, judge_by_name(args.judge))
    write_json(args.out, result)
    print(f"{result['counts']} over {result['n']} rows; refusal {result['refusal_rate']['value']:.2f}, "
          f"compliance {result['compliance_rate']['value']:.2f}; written to {args.out}")


def _judge_parsers(sub) -> None:
    p = sub.add_parser("judge", help="label each (prompt, response) row of a file: refusal / compliance / non-answer")
    p.add_argument("--input", type=Path, required=True, help=".csv, .json or .jsonl table of prompts and responses")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--response-column", default="response")
    p.add_argument("--judge", choices=JUDGE_NAMES, default=DEFAULT_JUDGE)
    p.add_argument("--out", type=Path, required=True, help="output JSON: per-row labels and totals")
    p.set_defaults(func=cmd_judge)
    p = sub.add_parser("judge-check", help="choose the three-way judge's thresholds on half of XSTest's labelled "
                                           "completions and report agreement on the other half")
    p.add_argument("--data", type=Path, required=True, help="folder holding xstest_v2_completions_labeled.csv")
    p.add_argument("--out", type=Path, default=Path("results/judge_xstest.json"))
    p.set_defaults(func=cmd_judge)


def cmd_evaluate(args) -> None:
    """`failclosed evaluate`."""
    from failclosed_interp.attacks import AutoDANConfig, GCGConfig, PAIRConfig
    from failclosed_interp.evaluate import EvalConfig, ModelSpec, evaluate, format_table
    from failclosed_interp.judges import LLMJudge
    from failclosed_interp.lm_eval_tasks import LMEvalConfig
    from failclosed_interp.models import load_model

    specs = [ModelSpec("base", args.model)] if args.base else []
    specs += [ModelSpec.parse(a, args.model) for a in args.adapter or []]
    config = EvalConfig(
        attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()), n_harmful=args.n_harmful,
        n_compliance=args.n_compliance, max_new_tokens=args.max_new_tokens, judge=args.judge,
        harmful_file=args.harmful_prompts, harmful_column=args.column,
        gcg=GCGConfig(steps=args.gcg_steps, search_width=args.gcg_width, top_k=args.gcg_topk,
                      suffix_init=" x" * args.gcg_suffix_tokens, seed=args.seed),
        autodan=AutoDANConfig(generations=args.autodan_generations, population=args.autodan_population, seed=args.seed),
        autodan_prototype=args.autodan_prototype, autodan_mutator=args.autodan_mutator,
        pair=PAIRConfig(iterations=args.pair_iterations, streams=args.pair_streams, attacker=args.pair_attacker,
                        attacker_max_new_tokens=args.pair_attacker_tokens, seed=args.seed),
        templates_file=args.templates, human_templates=args.human_templates,
        ablation=_attacker_config(args),
        utility_file=args.utility_file, seed=args.seed,
        lm_eval=LMEvalConfig(tasks=tuple(t.strip() for t in args.lm_eval_tasks.split(",") if t.strip()),
                             limit=args.lm_eval_limit, include_path=args.lm_eval_include,
                             num_fewshot=args.lm_eval_fewshot, seed=args.seed) if args.lm_eval_tasks else None,
    )
    judge = LLMJudge(load_model(args.judge_model, device=args.device)) if args.judge_model else None
    results = evaluate(specs, args.out, config, judge=judge,
                       load=lambda spec: load_model(spec.model, adapter=spec.adapter, device=args.device))
    print(format_table(results))
    print(f"run folder: {args.out} (results.json, table.md, responses.json, figures/rates.html, cache/)")


def cmd_adaptive_attack(args) -> None:
    """`failclosed adaptive-attack`."""
    from failclosed_interp.attacks import adaptive_attack_job
    from failclosed_interp.evaluate import EvalConfig, make_judge

    result = adaptive_attack_job(_load(args), args.out, _attacker_config(args), make_judge(EvalConfig(judge=args.judge)),
                                 n_harmful=args.n_harmful, max_new_tokens=args.max_new_tokens, responses=args.responses,
                                 about={"model": args.model, "adapter": str(args.adapter) if args.adapter else None})
    for o in result.outcomes:
        d = o.direction
        where = "no direction (none fits)" if d is None else f"{d.method} layer {d.layer} position {d.position}, KL {d.scores['kl']:.3f}"
        print(f"KL <= {o.kl_budget:g}: {where}; refusal {o.refusal:.2f}, compliance {o.compliance:.2f}")
    print(f"written to {args.out}")


def cmd_audit(args) -> None:
    """`failclosed audit`."""
    from failclosed_interp.audit import AuditConfig, MeasureConfig, audit_job, format_audit

    config = AuditConfig(k_max=args.k, threshold=args.threshold, carry_margin=args.carry_margin, kl_budget=args.kl_budget,
                         adaptive=args.adaptive, unbounded=not args.no_unbounded, n_eval=args.n_eval,
                         n_harmless=args.n_eval, measure=MeasureConfig(mode=args.mode, max_new_tokens=args.max_new_tokens),
                         directions=_search(args, lazy=True))
    result = audit_job(args.out, args.model, adapter=args.adapter, directions=args.directions, config=config,
                       judge=args.judge, device=args.device, figures=args.figures)
    print(format_audit(result))
    print(f"\naudit folder: {args.out} (audit.json, report.html, directions/)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `failclosed` command."""
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
    _training_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("align", help="progressive fail-closed alignment (or the sft / refat baselines) with LoRA")
    _model_args(p, adapter=False)
    p.add_argument("--recipe", choices=["default", "paper"], default="default",
                   help="preset of loop settings ('paper': plain search, cumulative ablation, RDO directions, up to 10 "
                        "rounds); the flags below override it")
    p.add_argument("--method", choices=["failclosed", "sft", "refat"], help="default failclosed")
    p.add_argument("--rounds", type=int, help="rounds after round 0 (plain SFT), default 3 (paper: 10)")
    p.add_argument("--mode", choices=["cumulative", "last-only", "random-subsets"],
                   help="failclosed: ablate all found directions (default), only the last one, or a random subset per step")
    p.add_argument("--search", choices=["ablated", "plain"],
                   help="failclosed: find each new direction with the found ones ablated (default) or on the plain model (paper)")
    _training_args(p)
    _positions_arg(p)
    p.add_argument("--rdo-steps", type=int, help="most RDO optimiser steps per direction (default 64); 0 = DIM directions only")
    p.add_argument("--n-eval", type=int, default=None, help="held-out test prompts per set in the summary (default: all)")
    p.add_argument("--merge", action="store_true", help="also write final/merged, a HF checkpoint with the adapter merged")
    p.add_argument("--out", type=Path, required=True, help="run folder; an interrupted run resumes from it")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("directions", help="difference-in-means refusal directions over layers x positions, selected")
    _model_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-val", type=int, default=16)
    _positions_arg(p)
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
    p = sub.add_parser("evaluate", help="jailbreak robustness: ASR per attack, compliance and utility, per model")
    _model_args(p, adapter=False)
    p.add_argument("--adapter", action="append", metavar="NAME=DIR",
                   help="a LoRA adapter to evaluate as row NAME (repeat), e.g. sft=runs/sft/adapter")
    p.add_argument("--base", action=argparse.BooleanOptionalAction, default=True, help="include the base model row")
    p.add_argument("--attacks", default="gcg,autodan,pair,human,ablation", help="comma-separated subset")
    p.add_argument("--out", type=Path, required=True, help="run folder; an interrupted run resumes from its cache/")
    p.add_argument("--n-harmful", type=int, default=50, help="held-out harmful prompts per attack (default 50)")
    p.add_argument("--n-compliance", type=int, default=36, help="borderline-safe and harmless prompts each (default 36)")
    p.add_argument("--harmful-prompts", help="harmful prompts file instead of the built-in test split")
    p.add_argument("--column", help="text column of --harmful-prompts (CSV/JSON)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens judged per response (>= 64)")
    p.add_argument("--judge", choices=JUDGE_NAMES, default=DEFAULT_JUDGE)
    p.add_argument("--judge-model", help="judge with this chat model (LLMJudge) instead")
    p.add_argument("--gcg-steps", type=int, default=20)
    p.add_argument("--gcg-width", type=int, default=64, help="GCG candidates scored per step")
    p.add_argument("--gcg-topk", type=int, default=64)
    p.add_argument("--gcg-suffix-tokens", type=int, default=20, help="initial suffix ' x' repeated this often")
    p.add_argument("--autodan-generations", type=int, default=10)
    p.add_argument("--autodan-population", type=int, default=16)
    p.add_argument("--autodan-prototype", help="prototype template file (.txt, with {prompt} or [PROMPT])")
    p.add_argument("--autodan-mutator", help="model that rewrites prompts (LLM mutation); default word-level")
    p.add_argument("--pair-iterations", type=int, default=3)
    p.add_argument("--pair-streams", type=int, default=3)
    p.add_argument("--pair-attacker", default=EMBEDDED_MODEL, help=f"attacker chat model (default {EMBEDDED_MODEL})")
    p.add_argument("--pair-attacker-tokens", type=int, default=128, help="tokens the attacker writes per prompt")
    p.add_argument("--templates", help="human jailbreak templates file (default: the built-in set)")
    p.add_argument("--human-templates", type=int, help="templates tried per prompt (default: all)")
    _attacker_args(p)
    p.add_argument("--utility-file", help="held-out prompt/answer pairs (CSV/JSON) for perplexity")
    p.add_argument("--lm-eval-tasks", help="also run these lm-evaluation-harness tasks, comma-separated, e.g. "
                   "arc_easy,hellaswag (needs the lm-eval extra and the tasks' data)")
    p.add_argument("--lm-eval-limit", type=int, help="examples per lm-eval task (default: all)")
    p.add_argument("--lm-eval-include", help="folder of your own lm-eval task YAMLs (e.g. reading local files)")
    p.add_argument("--lm-eval-fewshot", type=int, help="few-shot examples per lm-eval task (default: the task's own)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_evaluate)

    _judge_parsers(sub)

    p = sub.add_parser("adaptive-attack", help="white-box adaptive ablation attack with its own prompts and search: "
                                               "refusal and compliance per KL budget on built-in harmful test prompts")
    _model_args(p)
    p.add_argument("--out", type=Path, required=True, help="JSON file for the budget curve (no responses)")
    p.add_argument("--responses", type=Path, help="also write the whole result, every response included, here")
    p.add_argument("--n-harmful", type=int, default=70, help="built-in harmful TEST prompts attacked (default 70)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens judged per response (>= 64)")
    p.add_argument("--judge", choices=list(JUDGE_NAMES), default=DEFAULT_JUDGE)
    _attacker_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_adaptive_attack)

    p = sub.add_parser("audit", help="independence audit: how many independent refusal pathways; fail-open or fail-closed")
    _model_args(p)
    p.add_argument("--directions", type=Path, help="directions folder to audit (e.g. DIR/final/directions, RUN/direction); "
                                                   "default: discover them, each with the earlier ones ablated")
    p.add_argument("--k", type=int, default=5, help="discovery stops after this many directions (default 5)")
    p.add_argument("--mode", choices=["generate", "logit"], default="generate",
                   help="refusal by judged generations (default) or by logit refusal score > 0 (faster)")
    p.add_argument("--judge", choices=JUDGE_NAMES, default=DEFAULT_JUDGE)
    p.add_argument("--threshold", type=float, default=0.5, help="harmful refusal below this counts as collapsed")
    p.add_argument("--carry-margin", type=float, default=0.2,
                   help="a refusal rate must move by this much (intervals disjoint) to show a direction carries refusal")
    p.add_argument("--kl-budget", type=float, default=0.1,
                   help="the attacker's budget: mean KL on harmless prompts an ablation may cost (default 0.1)")
    p.add_argument("--no-unbounded", action="store_true",
                   help="skip the search for the strongest direction without the KL limit")
    p.add_argument("--n-eval", type=int, default=20, help="harmful prompts per refusal figure, harmless for steering")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--adaptive", action="store_true", help="with --directions: also audit the model's own DIM direction")
    _positions_arg(p)
    p.add_argument("--figures", action="store_true", help="also write each figure to OUT/figures (HTML, PNG with Chromium)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_audit)

    _add_reproduce(sub)
    return parser


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="run the documented experiment grid (resumable) and regenerate docs/results.md")
    p.add_argument("--quick", action="store_true", help="the whole grid on a tiny random model with tiny budgets (minutes)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds of the sft baseline and this project's recipe")
    p.add_argument("--runs", type=Path, default=Path("runs/reproduce"), help="heavy artifacts (adapters, caches)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="results root: one small JSON per finished experiment in RESULTS/grid/")
    p.add_argument("--page", type=Path, default=Path("docs/results.md"), help="the results page written from --results")
    p.add_argument("--page-only", action="store_true", help="only regenerate the page from the results files")
    _device_args(p)
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args) -> None:
    """`failclosed reproduce`."""
    from failclosed_interp.reproduce import GridConfig, run_grid, write_results_page
    from failclosed_interp.reproduce.page import GRID_DIR

    if not args.page_only:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        run_grid(GridConfig(seeds=seeds, attack_seeds=seeds[:1], quick=args.quick), args.runs, args.results / GRID_DIR)
    for path in write_results_page(args.results, args.page):
        print(f"wrote {path}")


@contextlib.contextmanager
def _quiet_unless_main_process():
    """Under a multi-process launch only rank 0 prints results; other ranks keep stderr for errors."""
    from failclosed_interp.distributed import is_main_process

    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def main(argv: list[str] | None = None) -> int:
    """Run one `failclosed` command; returns the exit status (2 with a one-line message for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        with _quiet_unless_main_process(), load_defaults(getattr(args, "device", None), getattr(args, "dtype", None)):
            args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"failclosed {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
