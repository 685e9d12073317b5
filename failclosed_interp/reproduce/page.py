"""`docs/results.md` generated from the results files: every figure on the page comes from `results/`, so
the page can be checked against them (a test regenerates it) and never drifts from the runs. This module
writes the grid's sections and assembles the page; `demo_sections`, `measurement_sections` and
`attacker_geometry` write the rest."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from failclosed_interp.align import DEFAULT_RECIPE
from failclosed_interp.artifacts import atomic_write
from failclosed_interp.plots import grouped_rate_bars, save_figure
from failclosed_interp.reproduce.attacker_geometry import attacker_geometry_section
from failclosed_interp.reproduce.demo_sections import (
    demo_attacks_section, demo_recipe_section, demo_runs, demo_section, demo_seeds_section,
)
from failclosed_interp.reproduce.figures import GridFigure, mechanistic_figures
from failclosed_interp.reproduce.grid import selection_rule
from failclosed_interp.reproduce.markdown import attack_table, rate_cell, seed_mean
from failclosed_interp.reproduce.measurement_sections import (
    attacker_section, gcg_section, judge_section, logit_measure_section, orthogonal_section, rdo_section, speed_section,
)
from failclosed_interp.reproduce.recipes import GRID_RECIPES
from failclosed_interp.reproduce.results import (
    counting, current, default_choice, grid_config, grid_experiments, load_results, of_kind, rate, unfinished,
)
from failclosed_interp.reproduce.selection import ATTACKED, BORDERLINE, HARMFUL, HARMLESS, SelectionRule
from failclosed_interp.reproduce.targets import BASELINE, targets_table
from failclosed_interp.reproduce.validation import PUBLIC_SET

TRAINING_ROWS = (  # (summary key, label)
    ("refusal_harmful", "harmful refusal"),
    ("refusal_harmless", "harmless refusal"),
    ("refusal_borderline", "borderline refusal"),
    ("refusal_harmful_all_ablated", "harmful, all found directions ablated"),
    ("refusal_harmful_adaptive_ablated", "harmful, the adaptive attacker's direction ablated (at its report KL budget)"),
    ("compliance_harmful_adaptive_ablated", "compliance under that ablation (attack success)"),
)
COMMAND = "failclosed reproduce --page-only"
GRID_DIR = "grid"  # experiments of the grid, under the results root


def _training_section(results: dict[str, dict]) -> list[str]:
    aligned = of_kind(results, "align")
    if not aligned:
        return ["No training run has finished yet."]
    lines = []
    by_recipe: dict[str, list[dict]] = defaultdict(list)
    for r in aligned:
        by_recipe[r["experiment"]["recipe"]].append(r)
    for recipe in [r for r in GRID_RECIPES if r in by_recipe]:
        runs = sorted(by_recipe[recipe], key=lambda r: r["experiment"]["seed"])
        seeds = [r["experiment"]["seed"] for r in runs]
        lines += [f"### {GRID_RECIPES[recipe].label}", "",
                  "| measure | " + " | ".join(f"seed {s}" for s in seeds) + (" | mean ± sd over seeds |" if len(runs) > 1 else " |"),
                  "|---|" + "---|" * (len(runs) + (len(runs) > 1))]
        for key, label in TRAINING_ROWS:
            cells = [rate_cell(r["result"].get("ci", {}).get(key)) for r in runs]
            row = f"| {label} | " + " | ".join(cells)
            if len(runs) > 1:
                row += " | " + seed_mean([r["result"].get(key) for r in runs])
            lines.append(row + " |")
        each = [", ".join(f"{v:.2f}" for v in r["result"].get("refusal_harmful_each_ablated", [])) or "-" for r in runs]
        lines.append("| harmful, each found direction ablated alone | " + " | ".join(each) + (" | |" if len(runs) > 1 else " |"))
        ppl = [f"{r['result']['perplexity_harmless']:.2f}" if r["result"].get("perplexity_harmless") is not None else "-"
               for r in runs]
        lines.append("| perplexity of reference answers | " + " | ".join(ppl) +
                     (" | " + seed_mean([r["result"].get("perplexity_harmless") for r in runs]) + " |" if len(runs) > 1 else " |"))
        layers = [str(r["result"].get("direction_layers", [])) for r in runs]
        lines.append("| directions found (layers) | " + " | ".join(layers) + (" | |" if len(runs) > 1 else " |"))
        lines.append("| wall time | " + " | ".join(f"{r['wall_s'] / 60:.0f} min" for r in runs) + (" | |" if len(runs) > 1 else " |"))
        stops = [f"seed {r['experiment']['seed']}: {r['result']['stop_reason']}" for r in runs if r["result"].get("stop_reason")]
        lines += [""] + [f"- stopped early, {s}" for s in stops] + ([""] if stops else [])
    return lines


VALIDATION_COLUMNS = ((HARMFUL, "harmful refusal"), (HARMLESS, "harmless refusal"), (BORDERLINE, "borderline refusal"),
                      (ATTACKED, "harmful refusal, adaptive attacker (report KL budget)"))


_LATER_SEEDS = {  # GridConfig.later_seeds -> what it means for the choice
    "chosen": ("The choice is made on the first training seed: the later seeds train the `sft` baseline and the "
               "chosen recipe, and are not measured on validation prompts (`reproduce --later-seeds chosen`, the "
               "default), so each mean is of one seed."),
    "all": ("Every candidate and the baseline are trained and measured on validation prompts on every training "
            "seed (`reproduce --later-seeds all`)."),
}


def _validation_section(folder: Path, results: dict[str, dict]) -> list[str]:
    config = grid_config(folder)
    rule = selection_rule(config) if config is not None else SelectionRule()
    seeds = [_LATER_SEEDS[config.later_seeds]] if config is not None and len(config.seeds) > 1 else []
    lines = [rule.sentence(), *seeds, ""]
    measured = current(folder, results, "validation")
    choice = default_choice(folder, results)
    if measured:
        head = [label for _, label in VALIDATION_COLUMNS] + [f"{PUBLIC_SET} refusal (validation half)"]
        lines += ["| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for r in measured:
            xstest = r["result"].get(PUBLIC_SET)
            cells = [rate_cell(r["result"]["ci"].get(key)) for key, _ in VALIDATION_COLUMNS]
            cells.append(rate_cell(xstest["refusal_rate"]) if xstest else "-")
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


def _targets_section(folder: Path, results: dict[str, dict]) -> list[str]:
    """The paper's claims checked per recipe and training seed (`targets`), the chosen default recipe first."""
    trained = [e for e in grid_experiments(folder, results) if e.kind == "align"]
    if not trained:
        return ["No grid yet."]
    chosen = default_choice(folder, results).recipe
    order = {r: (r == BASELINE, r != chosen, i) for i, r in enumerate(GRID_RECIPES)}  # sft last
    recipes = sorted(dict.fromkeys(e.recipe for e in trained), key=order.get)
    lines = ["Each recipe's models against the paper's claims, on TEST prompts (the figures with their intervals are in "
             "the sections below); a claim relative to `sft` compares with the sft model of the same training seed. "
             "Mean: over the seeds measured so far. "
             "Verdict: met on every seed, missed on any, or met so far while seeds are unfinished.", ""]
    for recipe in recipes:
        seeds = tuple(e.seed for e in trained if e.recipe == recipe)
        note = " (chosen on validation prompts)" if recipe == chosen else ""
        lines += [f"### {GRID_RECIPES[recipe].label}{note}", "", *targets_table(results, recipe, seeds), ""]
    return lines[:-1]


def _audit_section(results: dict[str, dict]) -> list[str]:
    audits = of_kind(results, "audit")
    if not audits:
        return ["No audit has finished yet."]
    lines = ["| model | verdict | independent pathways | baseline harmful refusal | wall time |", "|---|---|---|---|---|"]
    for r in audits:
        a = r["result"]
        lines.append(f"| {r['experiment']['recipe']}, seed {r['experiment']['seed']} | {a.get('verdict', '-')} | "
                     f"{a.get('independent_pathways', '-')} | {rate_cell(a.get('baseline_refusal'))} | {r['wall_s'] / 60:.0f} min |")
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
        cells = [rate_cell(r["result"][n]["refusal_rate"]) if n in r["result"] else "-" for n in names]
        lines.append(f"| {r['experiment']['recipe']}, seed {r['experiment']['seed']} | " + " | ".join(cells) + " |")
    return lines


def _pending(folder: Path, results: dict[str, dict], missing: list[str]) -> list[str]:
    grid = grid_experiments(folder, results)
    if not grid:
        return []
    if not missing:
        return ["Every experiment of the grid has finished."]
    total = len(grid) + sum(name not in {e.name for e in grid} for name in missing)  # and those the choice adds
    waiting = (" (`chosen`: the recipe validation chooses on the first training seed, trained on the later ones)"
               if any("-chosen-" in name for name in missing) else "")
    return [f"Not finished yet ({len(missing)} of {total}): " + ", ".join(f"`{m}`" for m in missing) + waiting + "."]


def _earlier(n: int) -> list[str]:
    if not n:
        return []
    return ["", f"{n} results file(s) in `{GRID_DIR}/` record an earlier version of an experiment (other settings, or "
                f"measured on a model since trained again) and are not shown."]


def _wall_time(results: dict[str, dict]) -> list[str]:
    """The finished experiments' wall time, in all and per kind."""
    timed = [r for r in results.values() if "wall_s" in r]
    if not timed:
        return []
    by_kind: dict[str, float] = defaultdict(float)
    for r in timed:
        by_kind[r["experiment"]["kind"]] += r["wall_s"]
    parts = ", ".join(f"{kind} {seconds / 3600:.1f} h" for kind, seconds in by_kind.items())
    untimed = sum(r.get("attempts") is None for r in timed)
    return [f"The {len(timed)} finished experiments of the grid took {sum(by_kind.values()) / 3600:.1f} h of wall time in "
            f"all ({parts}): each over all its attempts" + (f", except {untimed} whose wall time may miss earlier "
                                                           f"attempts that were not timed" if untimed else "") + ".", ""]


def _machines(results: dict[str, dict]) -> list[str]:
    seen = sorted({(r["machine"]["platform"], r["machine"]["cpus"], r["machine"]["torch_threads"], r["machine"]["cuda"])
                   for r in results.values()})
    return [f"- {p}, {c} CPUs, {t} torch thread(s), GPU: {g or 'none'}" for p, c, t, g in seen]


def render_results(root: str | Path) -> str:
    """The markdown of the results page, from the results files under `root` alone (the grid's experiments
    in `root/grid/`, the judge check in `root/judge_xstest.json`)."""
    root = Path(root)
    folder, every = _grid(root)
    results = counting(folder, every)  # results files of earlier versions of an experiment are not shown
    missing = unfinished(folder, results)
    demos = demo_runs(root)
    lines = [
        "# Results", "",
        f"Generated by `{COMMAND}` from the JSON files in `{root.name}/`; do not edit by hand.",
        "Rates are on the built-in TEST prompts with 95% Wilson intervals (except where the default recipe is chosen:",
        "VALIDATION prompts); each cell is one training seed, and the last column the mean ± standard deviation over",
        "seeds. The experiments come from",
        "`failclosed reproduce` (the grid: docs/design.md and the `reproduce` API page say what it runs).", "",
        *_pending(folder, results, missing), *_earlier(len(every) - len(results)), "",
        "## The main job: the SFT model and the fail-closed model side by side", "", *demo_section(root, demos), "",
        "## The main job across training seeds", "", *demo_seeds_section(root, demos), "",
        "### The main job's models under the prompt attacks", "", *demo_attacks_section(root, demos), "",
        "## Choosing the default recipe (validation prompts)", "", *_validation_section(folder, results), "",
        "## The paper's claims, checked", "", *_targets_section(folder, results), "",
        "## Training: refusal, over-refusal, and ablation of the found directions", "", *_training_section(results), "",
        "## Public benchmark sets", "", *_public_section(results), "",
        "## Independence audit", "", *_audit_section(results), "",
        "## Jailbreak attack success (compliance judged)", "", *attack_table(of_kind(results, "attacks")), "",
        "## Adaptive ablation attacker", "", *attacker_section(root), "",
        "## The attacker's direction against the directions trained against", "",
        *attacker_geometry_section(folder, results), "",
        "## Mechanistic figures", "", *_figures_section(mechanistic_figures(results, missing)), "",
        "## GCG: nanogcg and our own search at the same budget", "", *gcg_section(root), "",
        "## Logit refusal measure against judged answers", "", *logit_measure_section(root), "",
        "## The demo's recipe: epochs, prefix and borderline prompts (validation prompts)", "", *demo_recipe_section(root), "",
        "## Judge check", "", *judge_section(root), "",
        "## Speed", "", *speed_section(root), "",
        "## RDO per direction", "", *rdo_section(root), "",
        "## Orthogonal refusal directions", "", *orthogonal_section(root), "",
        "## Machines", "", *_wall_time(results), *(_machines(results) or ["No run has finished yet."]), "",
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
    """Write the results page and its figures (`<page dir>/figures/results_*.html|png`; the HTML loads plotly.js
    from its CDN, so the files kept in git stay small)."""
    page = Path(page)
    written = [atomic_write(page, lambda tmp: Path(tmp).write_text(render_results(root)))]
    for stem, fig in figures(root).items():
        written += save_figure(fig, page.parent / "figures" / f"results_{stem}", png=png, self_contained=False)  # in git
    return written
