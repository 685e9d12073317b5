"""The results page's sections on measurements made outside the grid, each from its own results file: the
judge check, speed ratios, the adaptive attacker, the logit refusal measure, GCG backends, RDO timing and
orthogonal refusal directions. A missing file gives the command that writes it."""

from __future__ import annotations

from pathlib import Path

from failclosed_interp.artifacts import read_json
from failclosed_interp.judge_check import results_markdown as judge_markdown
from failclosed_interp.reproduce.markdown import not_measured, rate_cell, results_file

JUDGE_FILE = "judge_xstest.json"  # `failclosed judge-check`
BENCHMARK_FILE = "benchmarks.json"  # `python benchmarks/run_benchmarks.py --out results/benchmarks.json`
GCG_FILE = "gcg_compare.json"  # `python benchmarks/gcg_compare.py --adapter DIR --out results/gcg_compare.json`
LOGIT_MEASURE_FILE = "logit_measure.json"
ORTHOGONAL_FILE = "orthogonal_directions.json"  # `python benchmarks/orthogonal_directions.py ... --out results/...`
RDO_FILES = "rdo_timing*.json"  # `python benchmarks/rdo_timing.py --adapter DIR --out results/rdo_timing[_NAME].json`
# (benchmark, ratio key, what the ratio compares, target)
SPEED_ROWS = (
    ("generation", "speedup", "KV-cached vs uncached greedy generation (x faster)", ">= 5"),
    ("forward", "ratio", "forward with a direction ablated at every site / plain forward", "<= 1.15"),
    ("step", "ratio", "progressive LoRA step (3 directions ablated) / plain LoRA step", "<= 1.3"),
    ("rdo", "ratio", "one RDO step / one forward+backward of the same ablation batch", "about 3"),
    ("joint_generation", "speedup", "judged refusal of 3 prompt sets from one generation call vs one call each (x faster)",
     "> 1"),
    ("load", "speedup", "embedded model loaded from its kept float32 copy vs from the GGUF (x faster)", ">= 10"),
)


def judge_section(root: Path) -> list[str]:
    """The judge's agreement with XSTest's human labels (`failclosed judge-check`)."""
    data = results_file(root, JUDGE_FILE)
    if data is None:
        return not_measured(f"failclosed judge-check --data DATA --out {root.name}/{JUDGE_FILE}")
    return [f"From `{root.name}/{JUDGE_FILE}` (`failclosed judge-check`).", "", judge_markdown(data)]


def speed_section(root: Path) -> list[str]:
    """The speed ratios of `benchmarks/run_benchmarks.py`, each against its target, with the machine."""
    data = results_file(root, BENCHMARK_FILE)
    if data is None:
        return not_measured(f"python benchmarks/run_benchmarks.py --out {root.name}/{BENCHMARK_FILE}")
    m = data["machine"]
    lines = [f"From `{root.name}/{BENCHMARK_FILE}`: model {data['model']}, batch {data['batch']}, median of "
             f"{data['repeats']} repeats; {m['platform']}, {m['cpus']} CPUs, {m['torch_threads']} torch thread(s), "
             f"torch {m['torch']}, GPU: {m['cuda'] or 'none'}.", "",
             "| measure | ratio | target |", "|---|---|---|"]
    for name, key, label, target in SPEED_ROWS:
        if name in data["benchmarks"]:
            lines.append(f"| {label} | {data['benchmarks'][name][key]:.2f} | {target} |")
    return lines


def attacker_section(root: Path) -> list[str]:
    """One table per adaptive-attacker results file: the direction chosen at each KL budget and refusal under it."""
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
            lines.append(f"| {b['kl_budget']} | {where} | {prefix} | {kl} | {rate_cell(b['refusal'])} | "
                         f"{rate_cell(b['compliance'])} | {b['non_answer']} |")
        lines.append("")
    return lines


def logit_measure_section(root: Path) -> list[str]:
    """How the first-answer-token refusal measure agrees with judged answers, per condition."""
    data = results_file(root, LOGIT_MEASURE_FILE)
    if data is None:
        return not_measured(f"python benchmarks/logit_measure_check.py --adapter RUN/round_0/adapter --directions "
                             f"RUN/round_0/directions --out {root.name}/{LOGIT_MEASURE_FILE}")
    m = data["machine"]
    lines = [f"From `{root.name}/{LOGIT_MEASURE_FILE}` (`benchmarks/logit_measure_check.py`): model {data['model']}, "
             f"adapter `{data['adapter']}`, built-in {data['split'].upper()} prompts, refusal tokens "
             f"{data['refusal_tokens']}, judged answers of {data['generated_tokens']} tokens; {m['cpus']} CPUs. "
             "Each criterion's rate, and the share of prompts where it agrees with the judge (refusal or not):", "",
             "| condition | n | judged refusal | first answer token (the toolkit's) | agrees | refusal score > 0 | agrees |",
             "|---|---|---|---|---|---|---|"]
    for name, row in data["conditions"].items():
        lines.append(f"| {name} | {row['n']} | {rate_cell(row['judged'])} | {rate_cell(row['first_token'])} | "
                     f"{row['first_token_agreement']:.2f} | {rate_cell(row['score_gt_0'])} | {row['score_gt_0_agreement']:.2f} |")
    a = data["agreement"]
    lines += ["", f"Over all {data['n_judged']} judged answers: first answer token agrees {a['first_token']:.3f}, "
                  f"refusal score > 0 agrees {a['score_gt_0']:.3f}."]
    return lines


def gcg_section(root: Path) -> list[str]:
    """nanogcg against this toolkit's own GCG search at the same budget, per prompt and in sum."""
    data = results_file(root, GCG_FILE)
    if data is None:
        return not_measured(f"python benchmarks/gcg_compare.py --adapter DIR --out {root.name}/{GCG_FILE}")
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


def rdo_section(root: Path) -> list[str]:
    """One table per RDO timing file: seconds per direction and the quality of the direction found."""
    files = sorted(root.glob(RDO_FILES))
    if not files:
        return not_measured(f"python benchmarks/rdo_timing.py --adapter DIR --out {root.name}/rdo_timing.json")
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


def orthogonal_section(root: Path) -> list[str]:
    """The mutually orthogonal RDO directions per model, and which of them mediate refusal."""
    data = results_file(root, ORTHOGONAL_FILE)
    if data is None:
        return not_measured("python benchmarks/orthogonal_directions.py --reference-adapter RUN/align/round_0/adapter "
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
