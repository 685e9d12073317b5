"""Training choices for the main job's recipe, measured on validation prompts (never test ones).

    python benchmarks/demo_recipe_check.py --runs RUNS_DIR [--settings 3+2,3+1,2+1] [--data-dir DATA] \
        [--out results/demo_recipe_check.json]

Each setting "A+B" trains the demo's recipe (`demo.demo_recipe`, seed 0) with A epochs in round 0 (the SFT
model) and B in each fail-closed round. Options follow after colons: ":skip-prefix" also trains with the chat
template's constant prefix left alone (`AlignConfig.skip_template_prefix`); ":borderline=N" trains round 0
(and every round after it) on N built-in borderline-safe TRAIN prompts instead of the recipe's number;
":rounds=N" trains N fail-closed rounds instead of the demo's one; ":seed=S" uses training seed S;
":necessary-only" keeps a new direction that is necessary for refusal (ablating it lowers the harmful score
by the margin) even when adding it does not raise harmless refusal (`AlignConfig.min_addition_rise=None`). Rounds
only (`align(..., evaluate=False)`: the final summary on test prompts is skipped), in `RUNS_DIR/SETTING`
(resumed when it is there). Settings with the same round 0 (epochs, borderline prompts and seed) share it: a
later one starts from the first one's round 0 (copied, with its own settings recorded), since round 0's
training and direction do not depend on B or the prefix option. A setting that only adds rounds to another
one's starts from that run's last round (align extends a finished run with the same result).

Every SFT model (round 0) and fail-closed model (last round) is then measured on all built-in VALIDATION
prompts with the demo's generation length and judge: harmful, harmless and borderline refusal; harmful
refusal with the model's own directions ablated as the audit and the attacker ablate (the template prefix
left alone, whatever the setting trains against), all together and each alone (a fail-closed model keeps
refusing whichever single one is ablated); harmful refusal and compliance under the demo's adaptive
attacker at its KL budget (answers of the judged length the audit uses); and the perplexity of the
reference model's answers to the harmless prompts. With `--data-dir`, also refusal on the validation half of
XSTest-safe (`prompts.public`: prompts that only sound harmful; the test half is never read here). Writes one
JSON with every figure, its Wilson interval and n, and each setting's training time; an existing JSON keeps
its other settings, and a setting already in it is measured again only for the figures it lacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import torch

from failclosed_interp.align import STATE_FILE, align, reference_answers
from failclosed_interp.artifacts import read_json, write_json
from failclosed_interp.attacks.adaptive import adaptive_attack
from failclosed_interp.attacks.base import MIN_JUDGED_TOKENS
from failclosed_interp.demo import DemoConfig, demo_audit
from failclosed_interp.directions import load_directions
from failclosed_interp.generation import GenerationConfig
from failclosed_interp.models import load_model
from failclosed_interp.perplexity import perplexity
from failclosed_interp.prompts import builtin
from failclosed_interp.prompts.public import public_prompts
from failclosed_interp.scoring import refusal_rate
from failclosed_interp.stopwatch import machine

SKIP_PREFIX = "skip-prefix"
NECESSARY_ONLY = "necessary-only"
XSTEST_SAFE = "xstest_safe"


def setting_config(setting: str):
    """The demo's align settings with round-0 and later-round epochs from "A+B" and its ":options"."""
    epochs, *options = setting.split(":")
    first, later = (int(x) for x in epochs.split("+"))
    config, _ = DemoConfig().resolved()
    skip_prefix, necessary_only = False, False
    numbers = {"borderline": config.sft.n_borderline, "rounds": config.rounds, "seed": config.sft.seed}
    for option in options:
        name, _, value = option.partition("=")
        if option == SKIP_PREFIX:
            skip_prefix = True
        elif option == NECESSARY_ONLY:
            necessary_only = True
        elif name in numbers and value.isdigit():
            numbers[name] = int(value)
        else:
            raise ValueError(f"setting {setting!r}: unknown option {option!r}; use {SKIP_PREFIX!r}, {NECESSARY_ONLY!r} or "
                             + ", ".join(f"{key}=N" for key in numbers))
    if numbers["rounds"] < 1:
        raise ValueError(f"setting {setting!r}: rounds must be >= 1")
    seed = numbers["seed"]
    sft = dataclasses.replace(config.sft, n_borderline=numbers["borderline"], seed=seed,
                              train=dataclasses.replace(config.sft.train, epochs=first, seed=seed))
    return dataclasses.replace(config, sft=sft, rounds=numbers["rounds"], retrain_epochs=later,
                               skip_template_prefix=skip_prefix,
                               min_addition_rise=None if necessary_only else config.min_addition_rise)


def round0_key(config) -> tuple[int, int, int]:
    """What round 0 depends on among the settings: its epochs, its borderline prompts and the training seed."""
    return config.sft.train.epochs, config.sft.n_borderline, config.sft.seed


def start_from_round0(source: Path, target: Path, config) -> None:
    """Begin `target` at the end of `source`'s round 0 (same round-0 settings), recording `config`."""
    if (target / STATE_FILE).exists() or not (source / "round_0" / "metrics.json").exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "round_0", target / "round_0", dirs_exist_ok=True)
    shutil.copy(source / "examples.json", target / "examples.json")
    write_json(target / "config.json", config.to_dict())
    write_json(target / STATE_FILE, {"config": config.to_dict(), "completed_round": 0, "stop_reason": None})


def without_rounds(config) -> dict:
    """Everything a run depends on except its number of rounds."""
    return {k: v for k, v in config.to_dict().items() if k != "rounds"}


def start_from_run(source: Path, target: Path) -> None:
    """Begin `target` as a copy of the finished run `source` (the same settings but fewer rounds); align then
    trains only the rounds it adds."""
    if (target / STATE_FILE).exists() or not (source / STATE_FILE).exists():
        return
    shutil.copytree(source, target, dirs_exist_ok=True)


def measure(model, directions, generation: GenerationConfig, seed: int, data_dir: Path | None = None,
            have: dict | None = None) -> dict:
    """The validation figures of one model (its own `directions` ablated as the audit and the attacker
    ablate: `DirectionSet.ablation()`, the chat template's prefix left alone, whatever the training did).
    `have`: figures measured before, kept as they are (only the missing ones are measured)."""
    have = dict(have or {})
    val = {kind: builtin(kind, "val").to_list() for kind in ("harmful", "harmless", "borderline")}

    def judged(prompts, interventions=()):
        return refusal_rate(model, prompts, generation=generation, interventions=interventions, progress=False).rate.to_dict()

    if "refusal_harmful" not in have:
        have.update({f"refusal_{kind}": judged(prompts) for kind, prompts in val.items()})
        if len(directions):
            have["refusal_harmful_own_ablated"] = judged(val["harmful"], [directions.ablation()])
        attacker = dataclasses.replace(demo_audit().attacker, seed=seed)
        report = adaptive_attack(model, val["harmful"], attacker, max_new_tokens=MIN_JUDGED_TOKENS).report  # as in the audit
        have["refusal_harmful_attacker"], have["compliance_harmful_attacker"] = report.refusal.to_dict(), report.compliance.to_dict()
        answers = reference_answers(model, val["harmless"], generation.max_new_tokens)
        have.update({"perplexity_harmless": perplexity(model, val["harmless"], answers, complete=False).to_dict(),
                     "n_directions": len(directions), "attacker_kl_budget": report.kl_budget,
                     "attacker_layer": report.direction.layer if report.direction is not None else None})
    if len(directions) > 1 and "refusal_harmful_each_ablated" not in have:
        have["refusal_harmful_each_ablated"] = [judged(val["harmful"], [directions[i : i + 1].ablation()])
                                                for i in range(len(directions))]
    if data_dir is not None and f"refusal_{XSTEST_SAFE}" not in have:
        have[f"refusal_{XSTEST_SAFE}"] = judged(public_prompts(data_dir, XSTEST_SAFE, "val", n=None))
    return have


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder for the training runs (one per setting)")
    parser.add_argument("--settings", default="3+2,3+1,2+1", help='comma-separated "round-0 epochs + later epochs[:option]"')
    parser.add_argument("--data-dir", type=Path, help="folder holding the public sets: adds XSTest-safe (validation half)")
    parser.add_argument("--out", type=Path, help="JSON to write (e.g. results/demo_recipe_check.json)")
    args = parser.parse_args()
    settings = args.settings.split(",")
    configs = {setting: setting_config(setting) for setting in settings}  # bad settings fail before any training
    result = {"split": "validation (all built-in val prompts)", "settings": {}, "machine": machine()}
    if args.out and args.out.exists():
        result["settings"] = read_json(args.out)["settings"]
    default_borderline = DemoConfig().resolved()[0].sft.n_borderline
    sft_done: dict[tuple[int, int, int], str] = {  # round 0 -> the setting whose SFT model was measured
        (row["round0_epochs"], row.get("n_borderline", default_borderline), row.get("seed", 0)): name
        for name, row in result["settings"].items() if "same_as" not in row["sft"]}
    for setting, config in configs.items():
        run = args.runs / setting
        key = round0_key(config)
        shorter = [other for other, c in configs.items() if other != setting and c.rounds < config.rounds
                   and without_rounds(c) == without_rounds(config) and (args.runs / other / STATE_FILE).exists()]
        if shorter:
            start_from_run(args.runs / max(shorter, key=lambda other: configs[other].rounds), run)
        elif key in sft_done and sft_done[key] != setting:
            start_from_round0(args.runs / sft_done[key], run, config)
        clock = time.perf_counter()
        trained = align(config, run, evaluate=False)
        seconds = time.perf_counter() - clock
        generation = GenerationConfig(max_new_tokens=config.eval_tokens)
        earlier = result["settings"].get(setting, {})
        row = {"round0_epochs": key[0], "n_borderline": key[1], "seed": key[2], "rounds": config.rounds,
               "later_epochs": config.retrain_epochs,
               "skip_template_prefix": config.skip_template_prefix, "rounds_completed": trained["rounds_completed"],
               "stop_reason": trained["stop_reason"], "run": str(run),
               "seconds_this_call": earlier.get("seconds_this_call", round(seconds, 1)),
               "training_s": [read_json(run / f"round_{k}" / "metrics.json")["timings_s"]
                              for k in range(trained["rounds_completed"] + 1)]}
        for name, k in (("sft", 0), ("failclosed", trained["rounds_completed"])):
            if name == "sft" and sft_done.get(key, setting) != setting:
                row[name] = {**result["settings"][sft_done[key]]["sft"], "same_as": sft_done[key]}
                continue
            have = earlier.get(name) if earlier.get("run") == str(run) else None
            torch.manual_seed(config.sft.seed)
            folder = run / f"round_{k}"
            model = load_model(config.model, adapter=folder / "adapter")
            directions = load_directions(folder / "directions", model)
            row[name] = measure(model, directions, generation, config.sft.seed, args.data_dir, have)
            print(setting, name, {key: round(v["value"], 3) for key, v in row[name].items()
                                  if isinstance(v, dict) and "value" in v}, flush=True)
        sft_done.setdefault(key, setting)
        result["settings"][setting] = row
        if args.out:
            write_json(args.out, result)  # after each setting: a killed run keeps what it measured


if __name__ == "__main__":
    main()
