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
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.judges import ThreeWayJudge
from failclosed_interp.models import EMBEDDED_MODEL, load_model
from failclosed_interp.prompts import builtin
from failclosed_interp.rdo_config import addition_of
from failclosed_interp.scoring import (
    JudgedResponses, first_token_refusals, last_token_logits, refusal_rate, refusal_score_from_logits,
    refusal_tokens_from_responses,
)
from failclosed_interp.stats import wilson_rate
from failclosed_interp.stopwatch import machine

CRITERIA = ("first_token", "score_gt_0")


def condition(model, judged: JudgedResponses, interventions, tokens) -> dict:
    """Both logit criteria of the judged prompts under `interventions` (the ones they were answered
    under), with the judged refusal rate and each criterion's agreement with it."""
    logits = last_token_logits(model, judged.instructions, interventions)
    calls = {"first_token": first_token_refusals(logits, tokens) > 0,
             "score_gt_0": refusal_score_from_logits(logits, tokens) > 0}
    row = {"n": len(judged.instructions), "judged": judged.rate.to_dict()}
    for name, called in calls.items():
        called = called.tolist()
        row[name] = wilson_rate([float(c) for c in called]).to_dict()
        row[f"{name}_agreement"] = sum(c == y for c, y in zip(called, judged.refused)) / len(called)
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

    def judged(prompts, interventions=()) -> JudgedResponses:
        return refusal_rate(model, prompts, judge=judge, generation=generation, interventions=interventions,
                            progress=False)

    plain = judged(harmful)
    tokens = refusal_tokens_from_responses(model, harmful, plain.responses, judge)
    conditions = {"harmful, plain": (plain, []), "harmless, plain": (judged(harmless), [])}
    for i, d in enumerate(directions):
        ablate, add = [DirectionSet((d,)).ablation(skip_template_prefix=False)], [addition_of(d.vector, d)]
        conditions[f"harmful, direction {i} (layer {d.layer}) ablated"] = (judged(harmful, ablate), ablate)
        conditions[f"harmless, direction {i} (layer {d.layer}) added"] = (judged(harmless, add), add)
    rows = {}
    for name, (answers, interventions) in conditions.items():
        rows[name] = condition(model, answers, interventions, tokens)
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
