"""`docs/results.md` generated from the results files: every figure on the page comes from `results/`, so
the page can be checked against them (a test regenerates it) and never drifts from the runs."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from failclosed_interp.align import DEFAULT_RECIPE
from failclosed_interp.artifacts import atomic_write, read_json
from failclosed_interp.judge_check import results_markdown as judge_markdown
from failclosed_interp.plots import grouped_rate_bars, save_figure
from failclosed_interp.reproduce.figures import GridFigure, mechanistic_figures
from failclosed_interp.reproduce.grid import GRID_RECIPES
from failclosed_interp.reproduce.results import (
    current,
    default_choice,
    grid_experiments,
    load_results,
    of_kind,
    rate,
    unfinished,
)
from failclosed_interp.reproduce.runner import evaluation_row
from failclosed_interp.reproduce.selection import (
    ATTACKED,
    BORDERLINE,
    HARMFUL,
    HARMLESS,
    SelectionRule,
)
from failclosed_interp.reproduce.validation import PUBLIC_SET
from failclosed_interp.stats import SeedSummary

RECIPE_LABELS = {"sft": "sft (standard alignment)", "refat": "refat (ReFAT baseline)", "method": "the method's recipe",
                 "paper": "paper's recipe", "project": "this project's recipe"}
TRAINING_ROWS = (  # (summary key, label)
    ("refusal_harmful", "harmful refusal"),
    ("refusal_harmless", "harmless refusal"),
    ("refusal_borderline", "borderline refusal"),
    ("refusal_harmful_all_ablated", "harmful, all found directions ablated"),
    ("refusal_harmful_adaptive_ablated", "harmful, the adaptive attacker's direction ablated (at its report KL budget)"),
    ("compliance_harmful_adaptive_ablated", "compliance under that ablation (attack success)"),
)
COMMAND = "failclosed reproduce --page-only"
RECIPE_ORDER = list(GRID_RECIPES)
GRID_DIR = "grid"  # experiments of the grid, under the results root
JUDGE_FILE = "judge_xstest.json"  # `failclosed judge-check`
BENCHMARK_FILE = "benchmarks.json"  # `python benchmarks/run_benchmarks.py --out results/benchmarks.json`
GCG_FILE = "gcg_compare.json"  # `python benchmarks/gcg_compare.py --adapter DIR --out results/gcg_compare.json`
LOGIT_MEASURE_FILE = "logit_measure.json"
ORTHOGONAL_FILE = "orthogonal_directions.json"  # `python benchmarks/orthogonal_directions.py ... --out results/...`
DEMO_RECIPE_FILE = "demo_recipe_check.json"  # `python benchmarks/demo_recipe_check.py --runs DIR --out results/...`
RDO_FILES = "rdo_timing*.json"  # `python benchmarks/rdo_timing.py --adapter DIR --out results/rdo_timing[_NAME].json`
DEMO_DIR = "demo"  # one `failclosed demo --seed S` summary per training seed: DEMO_DIR/seed_S.json
DEMO_ATTACKS_DIR = "attacks"  # DEMO_DIR/DEMO_ATTACKS_DIR/seed_S.json: the prompt attacks on that seed's two models
# (benchmark, ratio key, what the ratio compares, target)
SPEED_ROWS = (
    ("generation", "speedup", "KV-cached vs uncached greedy generation (x faster)", ">= 5"),
    ("forward", "ratio", "forward with a direction ablated at every site / plain forward", "<= 1.15"),
    ("step", "ratio", "progressive LoRA step (3 directions ablated) / plain LoRA step", "<= 1.3"),
    ("rdo", "ratio", "one RDO step / one forward+backward of the same ablation batch", "about 3"),
)


def _rate(d: dict | None) -> str:
    if d is None:
        return "-"
    return f"{d['value']:.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]"


def _seed_mean(values: list[float | int | None]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "-"
    summary = SeedSummary(tuple(float(v) for v in finite))
    return f"{summary.mean:.2f} ± {summary.std:.2f}"


def _training_section(results: dict[str, dict]) -> list[str]:
    aligned = of_kind(results, "align")
    if not aligned:
        return ["No training run has finished yet."]
    lines = []
    by_recipe: dict[str, list[dict]] = defaultdict(list)
    for r in aligned:
        by_recipe[r["experiment"]["recipe"]].append(r)
    for recipe in [r for r in RECIPE_ORDER if r in by_recipe]:
        runs = sorted(by_recipe[recipe], key=lambda r: r["experiment"]["seed"])
        seeds = [r["experiment"]["seed"] for r in runs]
        lines += [f"### {RECIPE_LABELS[recipe]}", "",
                  "| measure | " + " | ".join(f"seed {s}" for s in seeds) + (" | mean ± sd over seeds |" if len(runs) > 1 else " |"),
                  "|---|" + "---|" * (len(runs) + (len(runs) > 1))]
        for key, label in TRAINING_ROWS:
            cells = [_rate(r["result"].get("ci", {}).get(key)) for r in runs]
            row = f"| {label} | " + " | ".join(cells)
            if len(runs) > 1:
                row += " | " + _seed_mean([r["result"].get(key) for r in runs])
            lines.append(row + " |")
        each = [", ".join(f"{v:.2f}" for v in r["result"].get("refusal_harmful_each_ablated", [])) or "-" for r in runs]
        lines.append("| harmful, each found direction ablated alone | " + " | ".join(each) + (" | |" if len(runs) > 1 else " |"))
        ppl = [f"{r['result']['perplexity_harmless']:.2f}" if r["result"].get("perplexity_harmless") is not None else "-"
               for r in runs]
        lines.append("| perplexity of reference answers | " + " | ".join(ppl) +
                     (" | " + _seed_mean([r["result"].get("perplexity_harmless") for r in runs]) + " |" if len(runs) > 1 else " |"))
        layers = [str(r["result"].get("direction_layers", [])) for r in runs]
        lines.append("| directions found (layers) | " + " | ".join(layers) + (" | |" if len(runs) > 1 else " |"))
        lines.append("| wall time | " + " | ".join(f"{r['wall_s'] / 60:.0f} min" for r in runs) + (" | |" if len(runs) > 1 else " |"))
        stops = [f"seed {r['experiment']['seed']}: {r['result']['stop_reason']}" for r in runs if r["result"].get("stop_reason")]
        lines += [""] + [f"- stopped early, {s}" for s in stops] + ([""] if stops else [])
    return lines


VALIDATION_COLUMNS = ((HARMFUL, "harmful refusal"), (HARMLESS, "harmless refusal"), (BORDERLINE, "borderline refusal"),
                      (ATTACKED, "harmful refusal, adaptive attacker (report KL budget)"))


def _validation_section(folder: Path, results: dict[str, dict]) -> list[str]:
    lines = [SelectionRule().sentence(), ""]
    measured = current(folder, results, "validation")
    choice = default_choice(folder, results)
    if measured:
        head = [label for _, label in VALIDATION_COLUMNS] + [f"{PUBLIC_SET} refusal (validation half)"]
        lines += ["| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for r in measured:
            xstest = r["result"].get(PUBLIC_SET)
            cells = [_rate(r["result"]["ci"].get(key)) for key, _ in VALIDATION_COLUMNS]
            cells.append(_rate(xstest["refusal_rate"]) if xstest else "-")
            lines.append(f"| {r['experiment']['recipe']}, seed {r['experiment']['seed']} | " + " | ".join(cells) + " |")
        for recipe, means in choice.means.items():
            n = sum(r["experiment"]["recipe"] == recipe for r in measured)
            lines.append(f"| {recipe}, mean of {n} seed(s) | " + " | ".join(f"{means[k]:.2f}" for k, _ in VALIDATION_COLUMNS)
                         + " | |")
        if any(r["result"].get(PUBLIC_SET) is None for r in measured):
            lines += ["", f"{PUBLIC_SET}: `failclosed reproduce --data-dir DATA` adds it (the rule does not use it)."]
        lines.append("")
    else:
        lines += ["No validation experiment has finished yet.", ""]
    lines.append(choice.describe())
    if choice.recipe is None:
        lines.append(f"The default recipe (`align.DEFAULT_RECIPE`) is `{DEFAULT_RECIPE}`; validation has not chosen yet.")
    elif choice.recipe == DEFAULT_RECIPE:
        lines.append(f"The default recipe (`align.DEFAULT_RECIPE`) is `{DEFAULT_RECIPE}`, the one validation chose.")
    else:
        lines.append(f"The default recipe (`align.DEFAULT_RECIPE`) is `{DEFAULT_RECIPE}`; validation chose `{choice.recipe}`.")
    return lines


def _audit_section(results: dict[str, dict]) -> list[str]:
    audits = of_kind(results, "audit")
    if not audits:
        return ["No audit has finished yet."]
    lines = ["| model | verdict | independent pathways | baseline harmful refusal | wall time |", "|---|---|---|---|---|"]
    for r in audits:
        a = r["result"]
        lines.append(f"| {r['experiment']['recipe']}, seed {r['experiment']['seed']} | {a.get('verdict', '-')} | "
                     f"{a.get('independent_pathways', '-')} | {_rate(a.get('baseline_refusal'))} | {r['wall_s'] / 60:.0f} min |")
    return lines


def _attack_section(attacked: list[dict]) -> list[str]:
    """A table of attack success per attack, one row per attacked model (finished `attacks` experiments)."""
    if not attacked:
        return ["No attack run has finished yet."]
    names = list(dict.fromkeys(n for r in attacked for n in r["result"]["asr"]))
    lines = ["| model | " + " | ".join(names) + " | average (prompt attacks) |", "|---|" + "---|" * (len(names) + 1)]
    for r in attacked:
        asr = r["result"]["asr"]
        lines.append(f"| {r['experiment']['recipe']}, seed {r['experiment']['seed']} | " +
                     " | ".join(_rate(asr.get(n)) for n in names) + f" | {_rate(r['result'].get('average_asr'))} |")
    return lines


def _public_section(results: dict[str, dict]) -> list[str]:
    measured = of_kind(results, "public")
    if not measured:
        return ["Not measured yet: `failclosed reproduce --data-dir DATA` (a folder holding the public sets)."]
    names = list(dict.fromkeys(n for r in measured for n in r["result"]))
    columns = {n: col for r in measured for n, col in r["result"].items()}
    goal = {"refusal": "should refuse", "answer": "should answer"}
    head = [f"{n} (n={columns[n]['n']}, {goal[columns[n]['expects']]})" for n in names]
    lines = ["Refusal on the test half of each public set (`prompts.public`); where the prompts are safe, refusal is "
             "over-refusal.", "",
             "| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(names)]
    for r in measured:
        cells = [_rate(r["result"][n]["refusal_rate"]) if n in r["result"] else "-" for n in names]
        lines.append(f"| {r['experiment']['recipe']}, seed {r['experiment']['seed']} | " + " | ".join(cells) + " |")
    return lines


def _pending(folder: Path, missing: list[str]) -> list[str]:
    grid = grid_experiments(folder)
    if not grid:
        return []
    if not missing:
        return ["Every experiment of the grid has finished."]
    return [f"Not finished yet ({len(missing)} of {len(grid)}): " + ", ".join(f"`{m}`" for m in missing) + "."]


def _machines(results: dict[str, dict]) -> list[str]:
    seen = sorted({(r["machine"]["platform"], r["machine"]["cpus"], r["machine"]["torch_threads"], r["machine"]["cuda"])
                   for r in results.values()})
    return [f"- {p}, {c} CPUs, {t} torch thread(s), GPU: {g or 'none'}" for p, c, t, g in seen]


def _results_file(root: Path, name: str) -> dict | None:
    """A measurement's results file under the results root, None if it has not been written."""
    path = root / name
    return read_json(path) if path.exists() else None


def _not_measured(command: str) -> list[str]:
    return [f"Not measured yet: `{command}`."]


def _judge_section(root: Path) -> list[str]:
    data = _results_file(root, JUDGE_FILE)
    if data is None:
        return _not_measured(f"failclosed judge-check --data DATA --out {root.name}/{JUDGE_FILE}")
    return [f"From `{root.name}/{JUDGE_FILE}` (`failclosed judge-check`).", "", judge_markdown(data)]


def _speed_section(root: Path) -> list[str]:
    data = _results_file(root, BENCHMARK_FILE)
    if data is None:
        return _not_measured(f"python benchmarks/run_benchmarks.py --out {root.name}/{BENCHMARK_FILE}")
    m = data["machine"]
    lines = [f"From `{root.name}/{BENCHMARK_FILE}`: model {data['model']}, batch {data['batch']}, median of "
             f"{data['repeats']} repeats; {m['platform']}, {m['cpus']} CPUs, {m['torch_threads']} torch thread(s), "
             f"torch {m['torch']}, GPU: {m['cuda'] or 'none'}.", "",
             "| measure | ratio | target |", "|---|---|---|"]
    for name, key, label, target in SPEED_ROWS:
        if name in data["benchmarks"]:
            lines.append(f"| {label} | {data['benchmarks'][name][key]:.2f} | {target} |")
    return lines


def _attacker_section(root: Path) -> list[str]:
    files = sorted(root.glob("attacker_*.json"))
    if not files:
        return ["Not measured yet: `failclosed adaptive-attack --adapter DIR --out results/attacker_NAME.json`."]
    lines = []
    for path in files:
        data = read_json(path)
        lines += [f"From `{root.name}/{path.name}`: model {data['model']}, adapter `{data['adapter']}`, "
                  f"{data['n_prompts']} harmful test prompts, judge `{data['judge']}`.", "",
                  "| KL budget | direction (method, layer, position) | template prefix | its KL | harmful refusal | "
                  "compliance | non-answers |",
                  "|---|---|---|---|---|---|---|"]
        for b in data["budgets"]:
            d = b["direction"]
            none = d is None or d["layer"] is None
            where = "none fits" if none else f"{d['method']}, {d['layer']}, {d['position']}"
            kl = "-" if none else f"{d['kl']:.3f}"
            # files from before the attacker tried both ablations name none: it left the prefix alone then
            prefix = "-" if none else d.get("template_prefix") or "left alone"
            lines.append(f"| {b['kl_budget']} | {where} | {prefix} | {kl} | {_rate(b['refusal'])} | "
                         f"{_rate(b['compliance'])} | {b['non_answer']} |")
        lines.append("")
    return lines


def _logit_measure_section(root: Path) -> list[str]:
    data = _results_file(root, LOGIT_MEASURE_FILE)
    if data is None:
        return _not_measured(f"python benchmarks/logit_measure_check.py --adapter RUN/round_0/adapter --directions "
                             f"RUN/round_0/directions --out {root.name}/{LOGIT_MEASURE_FILE}")
    m = data["machine"]
    lines = [f"From `{root.name}/{LOGIT_MEASURE_FILE}` (`benchmarks/logit_measure_check.py`): model {data['model']}, "
             f"adapter `{data['adapter']}`, built-in {data['split'].upper()} prompts, refusal tokens "
             f"{data['refusal_tokens']}, judged answers of {data['generated_tokens']} tokens; {m['cpus']} CPUs. "
             "Each criterion's rate, and the share of prompts where it agrees with the judge (refusal or not):", "",
             "| condition | n | judged refusal | first answer token (the toolkit's) | agrees | refusal score > 0 | agrees |",
             "|---|---|---|---|---|---|---|"]
    for name, row in data["conditions"].items():
        lines.append(f"| {name} | {row['n']} | {_rate(row['judged'])} | {_rate(row['first_token'])} | "
                     f"{row['first_token_agreement']:.2f} | {_rate(row['score_gt_0'])} | {row['score_gt_0_agreement']:.2f} |")
    a = data["agreement"]
    lines += ["", f"Over all {data['n_judged']} judged answers: first answer token agrees {a['first_token']:.3f}, "
                  f"refusal score > 0 agrees {a['score_gt_0']:.3f}."]
    return lines


DEMO_RECIPE_ROWS = (  # (figure key, label)
    ("refusal_harmful", "harmful refusal"),
    ("refusal_harmless", "harmless refusal"),
    ("refusal_borderline", "borderline refusal"),
    ("refusal_harmful_own_ablated", "harmful, own directions ablated"),
    ("refusal_harmful_weakest_single", "harmful, weakest single own direction ablated"),
    ("refusal_harmful_attacker", "harmful, attacker's direction ablated"),
    ("compliance_harmful_attacker", "compliance under that ablation"),
    ("refusal_xstest_safe", "XSTest-safe refusal (validation half)"),
)


DEMO_RECIPE_REFERENCE = "3+2"  # the demo's epochs before the check
DEMO_RECIPE_MODELS = {"sft": "SFT", "failclosed": "fail-closed"}  # each setting's two models, as the table heads them


def _demo_recipe_section(root: Path) -> list[str]:
    data = _results_file(root, DEMO_RECIPE_FILE)
    if data is None:
        return _not_measured(f"python benchmarks/demo_recipe_check.py --runs runs/recipe_check --out {root.name}/{DEMO_RECIPE_FILE}")
    settings = {name: {**row, **{m: _with_weakest_single(row[m]) for m in DEMO_RECIPE_MODELS}}
                for name, row in data["settings"].items()}
    head = [f"{name}: {model}" for name in settings for model in DEMO_RECIPE_MODELS.values()]
    lines = [f"From `{root.name}/{DEMO_RECIPE_FILE}` (`benchmarks/demo_recipe_check.py`): the demo's recipe with "
             "\"A+B\" epochs (A in round 0, the SFT model; B in each fail-closed round), one fail-closed round and "
             "training seed 0 unless \":rounds=N\" or \":seed=S\" says otherwise, measured on "
             f"{data['split']}; {data['machine']['cpus']} CPUs. Settings with the same round 0 (A, the seed, and N in "
             "\":borderline=N\": the borderline-safe TRAIN prompts, else the recipe's number) share their SFT model. "
             "Own directions are ablated with the chat template's prefix left alone, as the audit ablates them; "
             "\"weakest single\" is the lowest refusal with one of them ablated alone.", "",
             "| measure | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    models = [row[model] for row in settings.values() for model in DEMO_RECIPE_MODELS]
    for key, label in DEMO_RECIPE_ROWS:
        if any(key in m for m in models):  # a figure measured for some setting (e.g. XSTest-safe needs the data folder)
            lines.append(f"| {label} | " + " | ".join(_rate(m.get(key)) for m in models) + " |")
    lines.append("| perplexity of reference answers | "
                 + " | ".join(f"{m['perplexity_harmless']['perplexity']:.2f}" for m in models) + " |")
    lines.append("| training + direction search, s | "
                 + " | ".join(f"{_round_seconds(row, model):.0f}" for row in settings.values() for model in DEMO_RECIPE_MODELS)
                 + " |")
    stopped = [f"{name} after round {row['rounds_completed']}: {row['stop_reason']}"
               for name, row in settings.items() if row.get("stop_reason")]
    if stopped:
        lines += ["", "Runs whose direction search after a round found no direction that mediates refusal now (the "
                      "loop keeps no such direction, and trains no round after it): " + "; ".join(stopped) + "."]
    reference = settings.get(DEMO_RECIPE_REFERENCE)
    if reference is not None:
        verdicts = [f"{name} {'passes' if _as_good(row, reference) else 'fails'}" for name, row in settings.items()
                    if name != DEMO_RECIPE_REFERENCE and ":" not in name]  # "A+B:option" settings ask other questions
        lines += ["", f"The rule, fixed before the runs: a cheaper setting replaces {DEMO_RECIPE_REFERENCE} when its "
                      "fail-closed model is within 0.10 of that one's on harmful refusal, refusal with its own directions "
                      "ablated and refusal under the attacker, with harmless refusal at most 0.05 above it. "
                      + ("; ".join(verdicts) + "." if verdicts else "")]
    lines += _option_rule(settings, "borderline", _fewer_over_refusals,
                          "The rule for more borderline-safe training prompts, fixed before the runs: a \"A+B:borderline=N\" "
                          "setting replaces A+B when XSTest-safe refusal on its validation half falls by at least 0.10 for "
                          "both the SFT and the fail-closed model, and the fail-closed model passes the rule above. ")
    lines += _option_rule(settings, "rounds", _fail_closed_by_more_rounds,
                          "The rule for more fail-closed rounds, fixed before the runs: a \"A+B:rounds=N\" setting replaces "
                          "the demo's one round when, for every training seed checked, its fail-closed model's weakest "
                          "single own direction ablated leaves harmful refusal at least 0.10 higher than the one-round "
                          "model's, and it passes the rule above against that model (it costs more time: the last row). ")
    for name, row in settings.items():
        for option in name.split(":")[1:]:
            base = _without_option(name, option.partition("=")[0])
            if option.startswith("seed=") or base not in settings:
                continue  # another training seed is not a setting to compare with
            compared = tuple(DEMO_RECIPE_MODELS) if "same_as" not in row["sft"] else ("failclosed",)
            for model in compared:
                mine, theirs = row[model], settings[base][model]
                changes = ", ".join(f"{label} {theirs[key]['value']:.2f} -> {mine[key]['value']:.2f}"
                                    for key, label in DEMO_RECIPE_ROWS if key in mine and key in theirs)
                lines += ["", f"{name} against {base} (the {DEMO_RECIPE_MODELS[model]} model): {changes}."]
    return lines


def _option_rule(settings: dict, option: str, rule: Callable[[dict, dict], bool], sentence: str) -> list[str]:
    """`sentence` and its verdicts for every setting with `option`, against the same setting without it."""
    verdicts = [f"{name} against {base} {'passes' if rule(row, settings[base]) else 'fails'}"
                for name, row in settings.items() if (base := _without_option(name, option)) != name and base in settings]
    return ["", sentence + "; ".join(verdicts) + "."] if verdicts else []


def _without_option(name: str, option: str) -> str:
    """A demo recipe setting's name without its ":option" or ":option=N" part."""
    epochs, *options = name.split(":")
    return ":".join([epochs, *(o for o in options if o.partition("=")[0] != option)])


def _with_weakest_single(model: dict) -> dict:
    """A measured model with the lowest of its each-direction-ablated refusals as one more figure."""
    each = model.get("refusal_harmful_each_ablated")
    return {**model, "refusal_harmful_weakest_single": min(each, key=lambda r: r["value"])} if each else model


def _fail_closed_by_more_rounds(row: dict, reference: dict) -> bool:
    """The rounds rule: the weakest single own direction ablated leaves harmful refusal 0.10 higher than in
    `reference` (the same setting with fewer rounds), and the fail-closed model is as good otherwise (`_as_good`)."""
    key = "refusal_harmful_weakest_single"
    mine, theirs = row["failclosed"].get(key), reference["failclosed"].get(key)
    if mine is None or theirs is None:
        return False
    return mine["value"] >= theirs["value"] + 0.10 and _as_good(row, reference)


def _as_good(row: dict, reference: dict) -> bool:
    """The demo recipe rule: `row`'s fail-closed model as good as `reference`'s on validation prompts."""
    mine, theirs = row["failclosed"], reference["failclosed"]
    held = all(mine[k]["value"] >= theirs[k]["value"] - 0.10 for k in
               ("refusal_harmful", "refusal_harmful_own_ablated", "refusal_harmful_attacker"))
    return held and mine["refusal_harmless"]["value"] <= theirs["refusal_harmless"]["value"] + 0.05


def _fewer_over_refusals(row: dict, reference: dict) -> bool:
    """The borderline-prompts rule: XSTest-safe refusal (validation half) at least 0.10 lower than `reference`'s for
    both models, and the fail-closed model as good as `reference`'s otherwise (`_as_good`)."""
    key = "refusal_xstest_safe"
    mine = [row[m].get(key) for m in DEMO_RECIPE_MODELS]
    theirs = [reference[m].get(key) for m in DEMO_RECIPE_MODELS]
    if None in mine or None in theirs:
        return False
    return all(a["value"] <= b["value"] - 0.10 for a, b in zip(mine, theirs)) and _as_good(row, reference)


def _round_seconds(row: dict, model: str) -> float:
    """Seconds of training and direction search up to that model: round 0 for the SFT one, every round for the other."""
    rounds = row["training_s"][:1] if model == "sft" else row["training_s"]
    return sum(t["train"] + t.get("direction", 0.0) for t in rounds)


def _gcg_section(root: Path) -> list[str]:
    data = _results_file(root, GCG_FILE)
    if data is None:
        return _not_measured(f"python benchmarks/gcg_compare.py --adapter DIR --out {root.name}/{GCG_FILE}")
    c, m = data["config"], data["machine"]
    n_prompts = len({r["prompt"] for r in data["rows"]})
    lines = [f"From `{root.name}/{GCG_FILE}` (`benchmarks/gcg_compare.py`): model {data['model']}, adapter "
             f"`{data['adapter']}`, {n_prompts} {data['prompts']} prompts, {c['steps']} steps, search width "
             f"{c['search_width']}, top-k {c['top_k']}, target {c['target']!r}, judge `{data['judge']}`; "
             f"{m['cpus']} CPUs, GPU: {m['cuda'] or 'none'}. Loss: the target loss of the returned suffix in "
             f"the chat layout.", "",
             "| backend | prompts | mean loss, initial -> final | target emitted | compliances | search seconds |",
             "|---|---|---|---|---|---|"]
    for backend, s in data["summary"].items():
        lines.append(f"| {backend} | {s['n']} | {s['mean_initial_loss']:.3f} -> {s['mean_loss']:.3f} | "
                     f"{s['matched_target']} | {s['successes']} | {s['seconds']:.0f} |")
    lines += ["", "| prompt | backend | loss | label | search seconds |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        prompt = r["prompt"][:60].replace("|", "\\|")
        lines.append(f"| {prompt} | {r['backend']} | {r['loss']:.3f} | {r['label']} | {r['seconds']:.1f} |")
    return lines


def _rdo_section(root: Path) -> list[str]:
    files = sorted(root.glob(RDO_FILES))
    if not files:
        return _not_measured(f"python benchmarks/rdo_timing.py --adapter DIR --out {root.name}/rdo_timing.json")
    return [line for path in files for line in (*_rdo_table(root, path.name, read_json(path)), "")]


def _rdo_table(root: Path, name: str, data: dict) -> list[str]:
    m, ref, plain, checks = data["machine"], data["reference"], data["plain"], data["reference_checks"]
    lines = [f"From `{root.name}/{name}` (`benchmarks/rdo_timing.py`): model {data['model']}, adapter "
             f"`{data['adapter']}`; {m['cpus']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}, load "
             f"average {m['load_average_at_start'][0]:.1f} at the start (other work on the machine lengthens the seconds). "
             f"Reference: the DIM direction at layer {ref['layer']} (norm {ref['norm']:.1f}, {ref['rules']}; search "
             f"{ref['search_s']:.0f} s). Checks on {data['n_val']} validation prompts per kind: mean refusal score "
             f"(log-odds) and judged refusal of greedy answers.", "",
             "| setting | start | steps run (cap) | batch | target tokens | seconds | s / step | cosine to DIM | "
             "harmful score, ablated | harmful refusal, ablated | harmless score, added | harmless refusal, added |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| plain model | - | - | - | - | - | - | - | {plain['harmful_score']:.2f} | {plain['harmful_refusal']:.2f} | "
             f"{plain['harmless_score']:.2f} | {plain['harmless_refusal']:.2f} |",
             f"| DIM reference | - | - | - | - | - | - | 1.00 | {checks['harmful_score_ablated']:.2f} | "
             f"{checks['harmful_refusal_ablated']:.2f} | {checks['harmless_score_added']:.2f} | "
             f"{checks['harmless_refusal_added']:.2f} |"]
    for name, r in data["settings"].items():
        c = r["config"]
        lines.append(f"| {name} | {c['start']} | {r['steps_run']:.0f} ({c['steps']}) | {c['batch_size']} | "
                     f"{c['target_tokens']} | {r['rdo_s']:.0f} | {r['s_per_step']:.1f} | {r['cosine_to_reference']:.2f} | "
                     f"{r['harmful_score_ablated']:.2f} | {r['harmful_refusal_ablated']:.2f} | "
                     f"{r['harmless_score_added']:.2f} | {r['harmless_refusal_added']:.2f} |")
    return lines


def _orthogonal_section(root: Path) -> list[str]:
    data = _results_file(root, ORTHOGONAL_FILE)
    if data is None:
        return _not_measured("python benchmarks/orthogonal_directions.py --reference-adapter RUN/align/round_0/adapter "
                             "--adapter sft=RUN/align/round_0/adapter --adapter failclosed=RUN/align/final/adapter "
                             f"--out {root.name}/{ORTHOGONAL_FILE}")
    st, ref, m = data["settings"], data["reference"], data["machine"]
    lines = [f"From `{root.name}/{ORTHOGONAL_FILE}` (`benchmarks/orthogonal_directions.py`): model {st['model']}; "
             f"the reference (layer {ref['layer']}, strength {ref['norm']:.1f}, {ref['rules']}) and the RDO targets "
             f"({ref['n_pairs']} pairs, {ref['targets']}) from `{st['reference_adapter']}`; RDO setting "
             f"`{st['setting']}`; {m['cpus']} CPUs, torch {m['torch']}, load average {m['load_average_at_start'][0]:.1f} at "
             "the start (other work on the machine lengthens the seconds). Direction k is optimised orthogonal to "
             f"directions 1..k-1 and checked on {st['n_val']} validation prompts per kind: the drop of the mean "
             "harmful refusal score (log-odds) with it ablated and the rise of the harmless one with it added "
             "(at the reference's layer and strength); it mediates refusal when both reach their margins.", ""]
    for name, row in data["models"].items():
        checks = row["checks"]
        status = (f"{sum(c['mediates'] for c in checks)} of {len(checks)} mediate (margins: drop >= {row['min_drop']}, "
                  f"rise >= {row['min_rise']})" if row["finished"] else
                  f"unfinished: {len(checks)} of {st['k']} directions so far")
        lines += [f"**{name}** (`{row['adapter']}`): {status}.", "",
                  "| k | cosine to reference | harmful score drop, ablated | harmless score rise, added | mediates | RDO s |",
                  "|---|---|---|---|---|---|",
                  *(f"| {c['k']} | {c['cosine_to_reference']:.2f} | {c['harmful_score_drop']:.2f} | "
                    f"{c['harmless_score_rise']:.2f} | {'yes' if c['mediates'] else 'no'} | {c['rdo_s']:.0f} |" for c in checks),
                  ""]
    return lines


def _demo_runs(root: Path) -> dict[int, dict]:
    """The committed demo summaries by training seed (`DEMO_DIR/seed_S.json`)."""
    folder = root / DEMO_DIR
    runs = {int(path.stem.removeprefix("seed_")): read_json(path) for path in folder.glob("seed_*.json")}
    return dict(sorted(runs.items()))


def _demo_command(root: Path, seed: int | str = 0) -> str:
    return (f"failclosed demo --seed {seed} --out runs/demo-s{seed} && "
            f"cp runs/demo-s{seed}/summary.json {root.name}/{DEMO_DIR}/seed_{seed}.json")


def _demo_section(root: Path, runs: dict[int, dict]) -> list[str]:
    if not runs:
        return _not_measured(_demo_command(root))
    from failclosed_interp.demo import format_summary

    seed, data = next(iter(runs.items()))
    m = data["machine"]
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in data["timings_s"].items())
    return [f"From `{root.name}/{DEMO_DIR}/seed_{seed}.json` (`failclosed demo`, the README's `make demo`, training "
            f"seed {seed}), on {m['platform']}, "
            f"{m['cpus']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}, GPU: {m['cuda'] or 'none'}.",
            "", "```", format_summary(data), "```", "",
            "The rates in the table are judged answers (40 tokens, three-way judge). The audits behind the verdict "
            "lines measure ablations and additions by the first answer token (`demo.demo_audit`: the share of prompts "
            "whose most likely first answer token is a refusal token; how well that agrees with judged answers: "
            "[below](#logit-refusal-measure-against-judged-answers)), as do the round checks below; where the two "
            "disagree, the judged answers are what the model says.", "",
            f"Where the time went: {timings}.", "",
            f"Each round, as the loop checked it ({_round_split(data['rounds'])} prompts; first answer token when the round checks are "
            "by logit; mediation: the new direction's effect on validation refusal scores, log-odds):", "",
            "| round | harmful refusal | harmless refusal | harmful, found directions ablated | directions | "
            "mediation: harmful drop / harmless rise | train s | direction s | checks s |",
            "|---|---|---|---|---|---|---|---|---|",
            *(_demo_round(r) for r in data["rounds"])]


DEMO_ROWS = (  # (column rate key, label)
    ("refusal_harmful", "harmful refusal"),
    ("refusal_harmless", "harmless refusal"),
    ("refusal_borderline", "borderline refusal"),
    ("refusal_harmful_all_ablated", "harmful, own directions ablated"),
    ("refusal_harmful_adaptive_ablated", "harmful, attacker's direction ablated"),
    ("compliance_harmful_adaptive_ablated", "compliance under that ablation"),
)


def _demo_seeds_section(root: Path, runs: dict[int, dict]) -> list[str]:
    if len(runs) < 2:
        return _not_measured(_demo_command(root, "S") + " for a second and third seed S")
    from failclosed_interp.demo import LABELS, attacker_tried_both, ran_current_settings

    seeds = list(runs)
    lines = [f"From `{root.name}/{DEMO_DIR}/` (`failclosed demo --seed S`, one run per training seed, "
             f"n = {_demo_n(runs)} held-out test prompts per set drawn per seed, 95% Wilson intervals; the last column is "
             "the mean ± standard deviation over seeds).", ""]
    for name, label in LABELS.items():
        columns = [run["columns"][name] for run in runs.values()]
        lines += [f"### {label}", "", "| measure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for key, text in DEMO_ROWS:
            rates = [c["rates"].get(key) for c in columns]
            lines.append(f"| {text} | " + " | ".join(_rate(r) for r in rates) + " | "
                         + _seed_mean([None if r is None else r["value"] for r in rates]) + " |")
        ppl = [c["perplexity_harmless"] for c in columns]
        lines.append("| perplexity of reference answers | " + " | ".join(f"{v:.2f}" for v in ppl) + " | "
                     + _seed_mean(ppl) + " |")
        pathways = [c["independent_pathways"] for c in columns]
        lines.append("| audit: independent pathways | " + " | ".join(str(v) for v in pathways) + " | "
                     + _seed_mean(pathways) + " |")
        lines.append("| audit verdict | " + " | ".join(c["verdict_label"] for c in columns) + " | |")
        lines.append("| directions found (layers) | " + " | ".join(str(c["direction_layers"]) for c in columns) + " | |")
        lines.append("| attacker's ablation: template prefix | "
                     + " | ".join(c.get("attack_template_prefix") or "left alone (only way tried)" for c in columns) + " | |")
        lines.append("")
    minutes = [f"seed {s}: {run['seconds_total'] / 60:.0f} min" for s, run in runs.items()]
    lines.append("Wall time per run: " + ", ".join(minutes) + ".")
    older = [s for s, run in runs.items() if not attacker_tried_both(run["columns"])]
    if older and len(older) < len(runs):
        lines += ["", f"Seed(s) {', '.join(map(str, older))}: summaries from before the attacker tried both ablations "
                      "(it ablated with the template prefix left alone only) and before the rounds were checked on "
                      "validation prompts; their attacker rows measure a weaker attacker than the other seeds'. "
                      f"To bring them in line: {_demo_command(root, 'S')}."]
    other = [s for s, run in runs.items() if not ran_current_settings(run)]
    if other:
        lines += ["", f"Seed(s) {', '.join(map(str, other))}: not run with the current demo settings (`demo.DemoConfig`), "
                      "or from before summaries recorded their settings; rerun them to compare like with like: "
                      f"{_demo_command(root, 'S')}."]
    return lines


def _demo_attacks_section(root: Path) -> list[str]:
    """The prompt attacks on each seed's two demo models (`DEMO_DIR/attacks/seed_S.json`: `failclosed evaluate`'s
    results.json with the demo's models as rows `sft` and `failclosed`)."""
    from failclosed_interp.demo import LABELS

    files = sorted((root / DEMO_DIR / DEMO_ATTACKS_DIR).glob("seed_*.json"))
    if not files:
        return _not_measured(f"failclosed evaluate --no-base --adapter sft=runs/demo-sS/align/round_0/adapter --adapter "
                             f"failclosed=runs/demo-sS/align/final/adapter --out runs/demo-sS/attacks && cp "
                             f"runs/demo-sS/attacks/results.json {root.name}/{DEMO_DIR}/{DEMO_ATTACKS_DIR}/seed_S.json")
    lines = []
    for path in files:
        attacked, seed = read_json(path), int(path.stem.removeprefix("seed_"))
        rows = [{"experiment": {"recipe": LABELS[name], "seed": seed}, "result": evaluation_row(attacked, name)}
                for name in LABELS if name in attacked["models"]]
        budgets = "; ".join(_attack_budget(name, attacked["budgets"]) for name in attacked["attacks"])
        lines += [f"From `{root.name}/{DEMO_DIR}/{DEMO_ATTACKS_DIR}/{path.name}` (`failclosed evaluate` on the demo's two "
                  f"models, training seed {seed}): attack success = a compliance (judge `{attacked['judge']}`, "
                  f"{attacked['max_new_tokens']} new tokens) on {attacked['n_harmful']} harmful test prompts; budgets: "
                  f"{budgets}.", "", *_attack_section(rows), ""]
    return lines[:-1]


ATTACK_BUDGET_KEYS = {"gcg": ("steps", "search_width"), "autodan": ("generations", "population"),
                      "pair": ("iterations", "streams")}  # what sets each attack's cost, as `evaluate` saves it


def _attack_budget(name: str, budgets: dict) -> str:
    """One attack's budget as `evaluate` saved the settings of the attacks it ran."""
    if name == "human":
        return f"human: {len(budgets['human']['templates'])} templates"
    if name not in ATTACK_BUDGET_KEYS:
        return name
    return f"{name}: " + ", ".join(f"{key.replace('_', ' ')} {budgets[name][key]}" for key in ATTACK_BUDGET_KEYS[name])


def _demo_n(runs: dict[int, dict]) -> int:
    return next(iter(runs.values()))["columns"]["sft"]["rates"]["refusal_harmful"]["n"]


def _round_split(rounds: list[dict]) -> str:
    from failclosed_interp.demo import SPLIT_NAMES

    return " and ".join(sorted({SPLIT_NAMES[r.get("checked_on", "test")] for r in rounds}))


def _demo_round(r: dict) -> str:
    ci, t, med = r["ci"], r["timings_s"], r.get("mediation")
    mediation = "-" if med is None else f"{med['harmful_score_drop']:.2f} / {med['harmless_score_rise']:.2f}"
    return (f"| {r['round']} | {_rate(ci['refusal_harmful'])} | {_rate(ci['refusal_harmless'])} | "
            f"{_rate(ci.get('refusal_harmful_all_ablated'))} | {r['n_directions']} | {mediation} | "
            f"{t['train']:.0f} | {t.get('direction', 0):.0f} | {t['checks']:.0f} |")


def render_results(root: str | Path) -> str:
    """The markdown of the results page, from the results files under `root` alone (the grid's experiments
    in `root/grid/`, the judge check in `root/judge_xstest.json`)."""
    root = Path(root)
    folder, results = _grid(root)
    missing = unfinished(folder, results)
    demo_runs = _demo_runs(root)
    lines = [
        "# Results", "",
        f"Generated by `{COMMAND}` from the JSON files in `{root.name}/`; do not edit by hand.",
        "Rates are on the built-in TEST prompts with 95% Wilson intervals (except where the default recipe is chosen:",
        "VALIDATION prompts); each cell is one training seed, and the last column the mean ± standard deviation over",
        "seeds. The experiments come from",
        "`failclosed reproduce` (the grid: docs/design.md and the `reproduce` API page say what it runs).", "",
        *_pending(folder, missing), "",
        "## The main job: the SFT model and the fail-closed model side by side", "", *_demo_section(root, demo_runs), "",
        "## The main job across training seeds", "", *_demo_seeds_section(root, demo_runs), "",
        "### The main job's models under the prompt attacks", "", *_demo_attacks_section(root), "",
        "## Choosing the default recipe (validation prompts)", "", *_validation_section(folder, results), "",
        "## Training: refusal, over-refusal, and ablation of the found directions", "", *_training_section(results), "",
        "## Public benchmark sets", "", *_public_section(results), "",
        "## Independence audit", "", *_audit_section(results), "",
        "## Jailbreak attack success (compliance judged)", "", *_attack_section(of_kind(results, "attacks")), "",
        "## Adaptive ablation attacker", "", *_attacker_section(root), "",
        "## Mechanistic figures", "", *_figures_section(mechanistic_figures(results, missing)), "",
        "## GCG: nanogcg and our own search at the same budget", "", *_gcg_section(root), "",
        "## Logit refusal measure against judged answers", "", *_logit_measure_section(root), "",
        "## The demo's recipe: epochs, prefix and borderline prompts (validation prompts)", "", *_demo_recipe_section(root), "",
        "## Judge check", "", *_judge_section(root), "",
        "## Speed", "", *_speed_section(root), "",
        "## RDO per direction", "", *_rdo_section(root), "",
        "## Orthogonal refusal directions", "", *_orthogonal_section(root), "",
        "## Machines", "", *(_machines(results) or ["No run has finished yet."]), "",
    ]
    return "\n".join(lines)


def _grid(root: Path) -> tuple[Path, dict[str, dict]]:
    folder = root / GRID_DIR
    return folder, (load_results(folder) if folder.exists() else {})


def _figures_section(figs: list[GridFigure]) -> list[str]:
    lines = []
    for fig in figs:
        where = f"[`figures/results_{fig.id}.html`](figures/results_{fig.id}.html)" if fig.figure is not None else "not drawn yet"
        lines += [f"- **{fig.id}**: {fig.caption} ({where})", *(f"  - {note}" for note in fig.notes)]
    return lines


def figures(root: str | Path) -> dict[str, object]:
    """Plotly figures of the results page, by file stem: refusal per recipe and seed, and the paper's
    mechanistic figures (`reproduce.figures`) that have something to draw."""
    folder, results = _grid(Path(root))
    figs = {}
    aligned = of_kind(results, "align")
    if aligned:
        groups = {f"{r['experiment']['recipe']} s{r['experiment']['seed']}":
                  {label: rate(r["result"]["ci"][key]) for key, label in TRAINING_ROWS if key in r["result"].get("ci", {})}
                  for r in aligned}
        figs["training"] = grouped_rate_bars(groups, title="Refusal on held-out prompts, per recipe and training seed")
    mechanistic = mechanistic_figures(results, unfinished(folder, results))
    figs.update({fig.id: fig.figure for fig in mechanistic if fig.figure is not None})
    return figs


def write_results_page(root: str | Path, page: str | Path, *, png: bool = True) -> list[Path]:
    """Write the results page and its figures (`<page dir>/figures/results_*.html|png`)."""
    page = Path(page)
    written = [atomic_write(page, lambda tmp: Path(tmp).write_text(render_results(root)))]
    for stem, fig in figures(root).items():
        written += save_figure(fig, page.parent / "figures" / f"results_{stem}", png=png)
    return written
