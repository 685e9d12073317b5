"""How well a refusal rate read off the first answer token agrees with judged answers, on validation prompts.

    python benchmarks/logit_measure_check.py --adapter RUN/round_0/adapter --directions RUN/round_0/directions \
        [--n 36] [--out results/logit_measure.json]

The audit's and the loop's `logit` measure counts a prompt as refused from one forward pass. Two criteria
are compared, per prompt, with the three-way judge's label of the greedy answer (refusal or not):
- `first_token`: the most likely first answer token is one of the model's refusal-start tokens (what
  greedy decoding starts with; the toolkit's criterion);
- `score_gt_0`: the refusal score (log-odds of the refusal tokens' total probability) is > 0.
Conditions, on built-in VALIDATION prompts (never test ones): harmful prompts plain and with each given
direction ablated at every position, harmless prompts plain and with each direction added at its layer
and DIM norm. The refusal tokens come from the plain harmful answers, as in the audit. Writes one JSON:
per condition the judged refusal rate, each criterion's rate and its per-prompt agreement with the judge.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from failclosed_interp.artifacts import write_json
from failclosed_interp.directions import DirectionSet, load_directions
from failclosed_interp.generation import GenerationConfig, generate
from failclosed_interp.judges import ThreeWayJudge, Verdict, classify
from failclosed_interp.models import EMBEDDED_MODEL, load_model
from failclosed_interp.prompts import builtin
from failclosed_interp.rdo_config import addition_of
from failclosed_interp.scoring import (
    first_token_refusals, last_token_logits, refusal_score_from_logits, refusal_tokens_from_responses,
)
from failclosed_interp.stats import wilson_rate
from failclosed_interp.stopwatch import machine

CRITERIA = ("first_token", "score_gt_0")


def condition(model, prompts, interventions, tokens, generation, judge) -> dict:
    """Judged refusal and both logit criteria of `prompts` under `interventions`, with their agreement."""
    answers = generate(model, prompts, generation, interventions, progress=False)
    judged = [label == Verdict.REFUSAL for label in classify(judge, prompts, answers)]
    logits = last_token_logits(model, prompts, interventions)
    calls = {"first_token": first_token_refusals(logits, tokens) > 0,
             "score_gt_0": refusal_score_from_logits(logits, tokens) > 0}
    row = {"n": len(prompts), "judged": wilson_rate([float(y) for y in judged]).to_dict()}
    for name, called in calls.items():
        called = called.tolist()
        row[name] = wilson_rate([float(c) for c in called]).to_dict()
        row[f"{name}_agreement"] = sum(c == y for c, y in zip(called, judged)) / len(prompts)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--adapter", type=Path, required=True, help="a refusing model's adapter, e.g. RUN/round_0/adapter")
    parser.add_argument("--directions", type=Path, required=True, help="its directions folder, e.g. RUN/round_0/directions")
    parser.add_argument("--n", type=int, default=36, help="validation prompts per kind (at most what the split holds)")
    parser.add_argument("--tokens", type=int, default=40, help="generated tokens per judged answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON to write (e.g. results/logit_measure.json)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    model = load_model(args.model, adapter=args.adapter)
    directions = load_directions(args.directions, model)
    harmful = builtin("harmful", "val").take_up_to(args.n, seed=args.seed).to_list()
    harmless = builtin("harmless", "val").take_up_to(args.n, seed=args.seed).to_list()
    generation, judge = GenerationConfig(max_new_tokens=args.tokens), ThreeWayJudge()
    plain = generate(model, harmful, generation, progress=False)
    tokens = refusal_tokens_from_responses(model, harmful, plain, judge)

    conditions = {"harmful, plain": (harmful, []), "harmless, plain": (harmless, [])}
    for i, d in enumerate(directions):
        conditions[f"harmful, direction {i} (layer {d.layer}) ablated"] = (
            harmful, [DirectionSet((d,)).ablation(skip_template_prefix=False)])
        conditions[f"harmless, direction {i} (layer {d.layer}) added"] = (harmless, [addition_of(d.vector, d)])
    rows = {}
    for name, (prompts, interventions) in conditions.items():
        rows[name] = condition(model, prompts, interventions, tokens, generation, judge)
        print(f"{name:<45} judged {rows[name]['judged']['value']:.2f}  " + "  ".join(
            f"{c} {rows[name][c]['value']:.2f} (agrees {rows[name][c + '_agreement']:.2f})" for c in CRITERIA), flush=True)
    total = sum(r["n"] for r in rows.values())
    agreement = {c: sum(r[f"{c}_agreement"] * r["n"] for r in rows.values()) / total for c in CRITERIA}
    print("overall agreement with the judge: " + ", ".join(f"{c} {a:.3f}" for c, a in agreement.items()))
    result = {"model": args.model, "adapter": str(args.adapter), "directions": str(args.directions),
              "split": "val", "generated_tokens": args.tokens, "refusal_tokens": model.tokenizer.convert_ids_to_tokens(tokens),
              "conditions": rows, "agreement": agreement, "n_judged": total, "machine": machine()}
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
