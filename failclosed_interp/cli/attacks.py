"""`failclosed evaluate` and `adaptive-attack`: jailbreak robustness, and the white-box ablation attacker."""

from __future__ import annotations

import argparse
from pathlib import Path

from failclosed_interp.attacks.gcg import BACKENDS
from failclosed_interp.cli.options import (
    apply, attacker_flags, command, data_dir_flag, fields_of, model_flags, names, under,
)
from failclosed_interp.judges import DEFAULT_JUDGE, JUDGE_NAMES
from failclosed_interp.models import EMBEDDED_MODEL

SEEDED = ("gcg", "autodan", "pair", "ablation")  # the attacks --seed also seeds


def cmd_evaluate(args) -> None:
    """`failclosed evaluate`."""
    from failclosed_interp.evaluate import EvalConfig, ModelSpec, evaluate, format_table
    from failclosed_interp.judges import LLMJudge
    from failclosed_interp.lm_eval_tasks import LMEvalConfig
    from failclosed_interp.models import load_model

    specs = [ModelSpec("base", args.model)] if args.base else []
    specs += [ModelSpec.parse(a, args.model) for a in args.adapter or []]
    base = EvalConfig()
    fields = {k: v for k, v in fields_of(args, base).items() if not k.startswith("lm_eval.")}
    if "seed" in fields:
        fields.update({f"{attack}.seed": fields["seed"] for attack in SEEDED})
    if hasattr(args, "lm_eval_tasks"):
        lm_eval = LMEvalConfig(tasks=args.lm_eval_tasks, **under(args, "lm_eval."))
        fields["lm_eval"] = apply(lm_eval, {"seed": fields["seed"]} if "seed" in fields else {})
    judge = LLMJudge(load_model(args.judge_model, device=args.device)) if hasattr(args, "judge_model") else None
    results = evaluate(specs, args.out, apply(base, fields), judge=judge, data_dir=args.data_dir,
                       load=lambda spec: load_model(spec.model, adapter=spec.adapter, device=args.device))
    print(format_table(results))
    print(f"run folder: {args.out} (results.json, table.md, responses.json, figures/rates.html, cache/)")


def cmd_adaptive_attack(args) -> None:
    """`failclosed adaptive-attack`."""
    from failclosed_interp.attacks import AdaptiveAttackConfig, adaptive_attack_job
    from failclosed_interp.cli.directions import load
    from failclosed_interp.judges import judge_by_name

    config = apply(AdaptiveAttackConfig(), fields_of(args, AdaptiveAttackConfig()))
    job = {k: getattr(args, k) for k in ("n_harmful", "max_new_tokens", "responses") if hasattr(args, k)}
    result = adaptive_attack_job(load(args), args.out, config, judge_by_name(args.judge), **job,
                                 about={"model": args.model, "adapter": str(args.adapter) if args.adapter else None})
    for o in result.outcomes:
        d = o.direction
        where = "no direction (none fits)" if d is None else f"{d.method} layer {d.layer} position {d.position}, KL {d.scores['kl']:.3f}"
        print(f"KL <= {o.kl_budget:g}: {where}; refusal {o.refusal:.2f}, compliance {o.compliance:.2f}")
    print(f"written to {args.out}")


def add_parsers(sub) -> None:
    """Add this group's commands to the subparsers `sub`."""
    p = command(sub, "evaluate", "jailbreak robustness: ASR per attack, compliance and utility, per model", cmd_evaluate)
    model_flags(p, adapter=False)
    data_dir_flag(p)
    p.add_argument("--adapter", action="append", default=None, metavar="NAME=DIR",
                   help="a LoRA adapter to evaluate as row NAME (repeat), e.g. sft=runs/sft/adapter")
    p.add_argument("--base", action=argparse.BooleanOptionalAction, default=True, help="include the base model row")
    p.add_argument("--attacks", type=names, help="comma-separated subset of gcg,autodan,pair,human,ablation")
    p.add_argument("--out", type=Path, required=True, help="run folder; an interrupted run resumes from its cache/")
    p.add_argument("--n-harmful", dest="n_harmful", type=int, help="held-out harmful prompts per attack")
    p.add_argument("--n-compliance", dest="n_compliance", type=int, help="borderline-safe and harmless prompts each")
    p.add_argument("--harmful-prompts", dest="harmful_file", help="harmful prompts file instead of the built-in test split")
    p.add_argument("--column", dest="harmful_column", help="text column of --harmful-prompts (CSV/JSON)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="tokens judged per response (>= 64)")
    p.add_argument("--judge", choices=JUDGE_NAMES)
    p.add_argument("--judge-model", help="judge with this chat model (LLMJudge) instead")
    p.add_argument("--gcg-steps", dest="gcg.steps", type=int)
    p.add_argument("--gcg-width", dest="gcg.search_width", type=int, help="GCG candidates scored per step")
    p.add_argument("--gcg-topk", dest="gcg.top_k", type=int)
    p.add_argument("--gcg-backend", dest="gcg.backend", choices=BACKENDS,
                   help="'own' (our search) or 'nanogcg' (the reference implementation; pip install nanogcg)")
    p.add_argument("--gcg-suffix-tokens", dest="gcg.suffix_init", type=lambda n: " x" * int(n),
                   help="initial suffix ' x' repeated this often")
    p.add_argument("--autodan-generations", dest="autodan.generations", type=int)
    p.add_argument("--autodan-population", dest="autodan.population", type=int)
    p.add_argument("--autodan-prototype", dest="autodan_prototype", help="prototype template file (.txt, with {prompt} or [PROMPT])")
    p.add_argument("--autodan-mutator", dest="autodan_mutator", help="model that rewrites prompts (LLM mutation); default word-level")
    p.add_argument("--pair-iterations", dest="pair.iterations", type=int)
    p.add_argument("--pair-streams", dest="pair.streams", type=int)
    p.add_argument("--pair-attacker", dest="pair.attacker", help=f"attacker chat model (default {EMBEDDED_MODEL})")
    p.add_argument("--pair-attacker-tokens", dest="pair.attacker_max_new_tokens", type=int, help="tokens the attacker writes per prompt")
    p.add_argument("--templates", dest="templates_file", help="human jailbreak templates file (default: the built-in set)")
    p.add_argument("--human-templates", dest="human_templates", type=int, help="templates tried per prompt (default: all)")
    attacker_flags(p, "ablation.")
    p.add_argument("--utility-file", dest="utility_file", help="held-out prompt/answer pairs (CSV/JSON) for perplexity")
    p.add_argument("--lm-eval-tasks", type=names, help="also run these lm-evaluation-harness tasks, comma-separated, e.g. "
                   "arc_easy,hellaswag (needs the lm-eval extra and the tasks' data)")
    p.add_argument("--lm-eval-limit", dest="lm_eval.limit", type=int, help="examples per lm-eval task (default: all)")
    p.add_argument("--lm-eval-include", dest="lm_eval.include_path", help="folder of your own lm-eval task YAMLs (e.g. reading local files)")
    p.add_argument("--lm-eval-fewshot", dest="lm_eval.num_fewshot", type=int, help="few-shot examples per lm-eval task (default: the task's own)")
    p.add_argument("--seed", type=int, help="seed of the prompt subsets and of every attack")

    p = command(sub, "adaptive-attack", "white-box adaptive ablation attack with its own prompts and search: refusal and "
                                        "compliance per KL budget on built-in harmful test prompts", cmd_adaptive_attack)
    model_flags(p)
    p.add_argument("--out", type=Path, required=True, help="JSON file for the budget curve (no responses)")
    p.add_argument("--responses", type=Path, help="also write the whole result, every response included, here")
    p.add_argument("--n-harmful", type=int, help="built-in harmful TEST prompts attacked")
    p.add_argument("--max-new-tokens", type=int, help="tokens judged per response (>= 64)")
    p.add_argument("--judge", choices=list(JUDGE_NAMES), default=DEFAULT_JUDGE)
    attacker_flags(p, "")
    p.add_argument("--seed", type=int, help="seed of the attacker's prompt split and of the attacked prompts")
