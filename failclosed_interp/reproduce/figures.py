"""The paper's mechanistic figures drawn from a `failclosed reproduce` results folder (loaded with
`results.load_results`): harmful refusal against the number of directions ablated, each direction ablated
alone, steering with each direction, cosine similarity of the found directions (from the audits), attack
success per attack (from the attack runs) and harmful refusal against the adaptive attacker's KL budget
(from the training runs' final evaluation).

Each figure draws every finished experiment that holds what it shows and names the others: experiments
not finished yet, and finished ones with nothing to draw (an audit of a model that does not refuse)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from failclosed_interp.plots import grouped_rate_bars, matrix_heatmap, rate_curves, save_figure
from failclosed_interp.reproduce.results import model_label, of_kind, rate

COSINE_COLUMNS = 4  # cosine matrices per row


@dataclass(frozen=True, eq=False)
class GridFigure:
    """One figure of the grid. `figure` is None when no finished experiment holds what it shows; `models`
    are the models drawn; `notes` say what is left out and why."""

    id: str
    caption: str
    figure: go.Figure | None
    models: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _audited(results: dict[str, dict]) -> tuple[list[tuple[str, dict]], list[str]]:
    """(label, audit) of the audits that found directions, and why each other finished audit is left out."""
    drawn, skipped = [], []
    for r in of_kind(results, "audit"):
        audit = r["result"]
        if audit["directions"] and audit["single_ablation_refusal"]:
            drawn.append((model_label(r), audit))
        else:
            reason = audit["verdict"].split(";")[0]  # the verdict's first clause says why nothing was found
            skipped.append(f"{r['experiment']['name']}: {reason}")
    return drawn, skipped


def _layers(audit: dict) -> str:
    return ", ".join(str(d["layer"]) for d in audit["directions"])


def joint_ablation_figure(results: dict[str, dict]) -> GridFigure:
    """Harmful refusal with the first m found directions ablated together, one curve per audited model."""
    drawn, notes = _audited(results)
    caption = ("Harmful refusal with the first m directions ablated together (in the order found), one curve per "
               "audited model, 95% intervals. A fail-open model falls below the threshold at m = 1; a fail-closed "
               "one stays up.")
    if not drawn:
        return GridFigure("joint", caption, None, notes=tuple(notes))
    curves = {label: [rate(d) for d in a["joint_ablation_curve"]["found"]] for label, a in drawn}
    fig = rate_curves(list(range(max(len(c) for c in curves.values()))), curves, xaxis="number of directions ablated",
                      title="Harmful refusal vs number of directions ablated", threshold=drawn[0][1]["threshold"])
    fig.update_xaxes(dtick=1)
    return GridFigure("joint", caption, fig, tuple(label for label, _ in drawn), tuple(notes))


def single_ablation_figure(results: dict[str, dict]) -> GridFigure:
    """Harmful refusal with nothing ablated and with each found direction ablated alone, per audited model."""
    drawn, notes = _audited(results)
    caption = ("Harmful refusal with each found direction ablated alone (every layer; block input, attention and MLP "
               "output), next to nothing ablated. The legend gives each model's direction layers in order.")
    if not drawn:
        return GridFigure("single", caption, None, notes=tuple(notes))
    groups = {f"{label} (layers {_layers(a)})":
              {"nothing": rate(a["baseline_refusal"]), **{f"d{i}": rate(d) for i, d in enumerate(a["single_ablation_refusal"])}}
              for label, a in drawn}
    fig = grouped_rate_bars(groups, title="Harmful refusal, each direction ablated alone", yaxis="harmful refusal")
    return GridFigure("single", caption, fig, tuple(label for label, _ in drawn), tuple(notes))


def steering_figure(results: dict[str, dict]) -> GridFigure:
    """Harmless refusal with each found direction added at the common layer and strength, per audited model."""
    drawn, notes = _audited(results)
    steered = [(label, a) for label, a in drawn if a.get("steering_common")]
    notes += [f"audit of {label}: no steering test recorded" for label, a in drawn if not a.get("steering_common")]
    caption = ("The paper's steering test: refusal on harmless prompts with one direction added at every position, at "
               "the common layer with the common strength (the legend names them), next to nothing added. A direction "
               "that induces refusal on its own is sufficient for it.")
    if not steered:
        return GridFigure("steering", caption, None, notes=tuple(notes))
    groups = {}
    for label, a in steered:
        s = a["steering_common"]
        groups[f"{label} (layer {s['layer']}, strength {s['norm']:.3g})"] = {
            "nothing added": rate(a["harmless_refusal"]), **{f"d{i}": rate(d) for i, d in enumerate(s["refusal"])}}
    fig = grouped_rate_bars(groups, title="Harmless refusal, each direction added alone", yaxis="harmless refusal")
    return GridFigure("steering", caption, fig, tuple(label for label, _ in steered), tuple(notes))


def cosine_figure(results: dict[str, dict]) -> GridFigure:
    """Cosine similarity between the found directions, one matrix per audited model with two or more."""
    drawn, notes = _audited(results)
    pairs = [(label, a) for label, a in drawn if len(a["directions"]) > 1]
    notes += [f"audit of {label}: one direction, no pair to compare" for label, a in drawn if len(a["directions"]) == 1]
    caption = ("Cosine similarity between each model's found directions (labelled by layer). Orthogonal directions "
               "(0) are not thereby causally independent: the ablation and steering figures test that.")
    if not pairs:
        return GridFigure("cosine", caption, None, notes=tuple(notes))
    cols = min(len(pairs), COSINE_COLUMNS)
    rows = math.ceil(len(pairs) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[label for label, _ in pairs],
                        horizontal_spacing=0.08, vertical_spacing=0.12)
    for n, (label, a) in enumerate(pairs):
        names = [f"d{i} L{d['layer']}" for i, d in enumerate(a["directions"])]
        heat = matrix_heatmap(a["cosine"], names, title=label, colorbar="cosine", zmin=-1.0, zmax=1.0).data[0]
        heat.update(showscale=n == 0, colorbar={"title": "cosine", "len": 1.0 / rows, "y": 1 - (0.5 / rows)})
        row, col = divmod(n, cols)
        fig.add_trace(heat, row=row + 1, col=col + 1)
        fig.update_yaxes(autorange="reversed", showgrid=False, row=row + 1, col=col + 1)
    fig.update_xaxes(showgrid=False)
    fig.update_layout(title="Cosine similarity of the found directions", width=max(560, 360 * cols + 120),
                      height=380 * rows + 100, plot_bgcolor="white")
    return GridFigure("cosine", caption, fig, tuple(label for label, _ in pairs), tuple(notes))


def attack_figure(results: dict[str, dict]) -> GridFigure:
    """Attack success rate (judged compliance) per attack and on average, per attacked model."""
    attacked = [r for r in of_kind(results, "attacks") if r["result"].get("asr")]
    notes = [f"{r['experiment']['name']}: no attack result" for r in of_kind(results, "attacks") if not r["result"].get("asr")]
    caption = ("Attack success rate (compliance judged on the attacked harmful prompts) of each jailbreak attack, and "
               "their average, per attacked model, 95% intervals.")
    if not attacked:
        return GridFigure("attacks", caption, None, notes=tuple(notes))
    groups = {model_label(r): {**{name: rate(v) for name, v in r["result"]["asr"].items()},
                               **({"average": rate(r["result"]["average_asr"])} if r["result"].get("average_asr") else {})}
              for r in attacked}
    fig = grouped_rate_bars(groups, title="Attack success rate per attack", yaxis="attack success rate")
    return GridFigure("attacks", caption, fig, tuple(groups), tuple(notes))


def _budget_label(budget) -> str:
    return "no limit" if budget in ("inf", float("inf")) else f"KL {budget:g}"


def adaptive_figure(results: dict[str, dict]) -> GridFigure:
    """Harmful refusal under the adaptive attacker's ablation against its KL budget, per trained model."""
    trained = [r for r in of_kind(results, "align") if r["result"].get("adaptive_attack")]
    notes = [f"{r['experiment']['name']}: no adaptive attack recorded" for r in of_kind(results, "align")
             if not r["result"].get("adaptive_attack")]
    caption = ("The adaptive attacker: for each KL budget (how much its ablation may change the model's next-token "
               "distribution on harmless prompts) it ablates the direction that lowers refusal most within the "
               "budget. Harmful refusal under that ablation, per trained model, 95% intervals.")
    if not trained:
        return GridFigure("adaptive", caption, None, notes=tuple(notes))
    budgets = list(dict.fromkeys(b["kl_budget"] for r in trained for b in r["result"]["adaptive_attack"]["budgets"]))
    curves = {}
    for r in trained:
        by_budget = {b["kl_budget"]: b for b in r["result"]["adaptive_attack"]["budgets"]}
        if list(by_budget) != budgets[: len(by_budget)]:
            notes.append(f"{r['experiment']['name']}: its KL budgets {list(by_budget)} differ from {budgets}")
            continue
        curves[model_label(r)] = [rate(b["refusal"]) for b in by_budget.values()]
        empty = [_budget_label(k) for k, b in by_budget.items() if b["direction"] is None or b["direction"]["layer"] is None]
        if empty:
            notes.append(f"{model_label(r)}: no direction fits {', '.join(empty)} (nothing ablated there)")
    fig = rate_curves(list(range(len(budgets))), curves, xaxis="the attacker's KL budget on harmless prompts",
                      title="Harmful refusal under the adaptive ablation attacker")
    fig.update_xaxes(tickvals=list(range(len(budgets))), ticktext=[_budget_label(b) for b in budgets])
    return GridFigure("adaptive", caption, fig, tuple(curves), tuple(notes))


FIGURES = (joint_ablation_figure, single_ablation_figure, steering_figure, cosine_figure, attack_figure, adaptive_figure)
_KIND = {"joint": "audit", "single": "audit", "steering": "audit", "cosine": "audit", "attacks": "attacks",
         "adaptive": "align"}


def mechanistic_figures(results: dict[str, dict], unfinished: Sequence[str] = ()) -> list[GridFigure]:
    """The six figures, in the paper's order. `unfinished`: experiments of the grid not finished yet
    (`results.unfinished`), named in the notes of the figures that would draw them."""
    figs = []
    for build in FIGURES:
        fig = build(results)
        waiting = [n for n in unfinished if n.startswith(f"{_KIND[fig.id]}-")]
        if waiting:
            fig = GridFigure(fig.id, fig.caption, fig.figure, fig.models,
                             (*fig.notes, f"not finished yet: {', '.join(waiting)}"))
        figs.append(fig)
    return figs


def describe_figures(figs: Sequence[GridFigure]) -> str:
    """One paragraph per figure: what it draws and what it leaves out, for a terminal or a notebook."""
    lines = []
    for f in figs:
        drawn = f"drawn for {', '.join(f.models)}" if f.figure is not None else "nothing to draw yet"
        lines += [f"{f.id}: {drawn}", *(f"  - {n}" for n in f.notes)]
    return "\n".join(lines)


def figures_html(figs: Sequence[GridFigure]) -> str:
    """An HTML fragment with every figure, its caption and its notes (plotly.js inlined once; opens offline)."""
    parts = [f'<script type="text/javascript">{get_plotlyjs()}</script>']
    for f in figs:
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in f.notes)
        body = (f.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"grid-{f.id}")
                if f.figure is not None else "<p><i>Nothing to draw yet.</i></p>")
        parts.append(f'<section id="grid-section-{f.id}"><p>{html.escape(f.caption)}</p>{body}'
                     f'{f"<ul>{notes}</ul>" if notes else ""}</section>')
    return "".join(parts)


def save_grid_figures(figs: Sequence[GridFigure], out: str | Path, *, png: bool = True) -> list[Path]:
    """Each drawn figure as `out/<id>.html` (+ PNG where Chromium is available)."""
    written = []
    for f in figs:
        if f.figure is not None:
            written += save_figure(f.figure, Path(out) / f.id, png=png)
    return written
