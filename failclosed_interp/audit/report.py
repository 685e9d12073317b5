"""An audit's folder: `audit.json`, the audited directions, and a self-contained `report.html`
(plotly.js inlined once, every figure in one page, opens offline)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import plotly.graph_objects as go
import torch
from plotly.offline import get_plotlyjs

from failclosed_interp.artifacts import atomic_write, write_json
from failclosed_interp.audit.result import AuditResult, describe_attack, format_audit
from failclosed_interp.directions import save_directions
from failclosed_interp.plots import layer_position_heatmap, matrix_heatmap, rate_curves, refusal_rate_bars, save_figure

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
pre { background: #f6f6f6; padding: 1em; white-space: pre-wrap; font-size: 13px; }
.verdict { font-size: 1.25em; font-weight: 600; padding: 0.6em 1em; border-radius: 6px; }
.fail-open { background: #fde2e1; } .fail-closed { background: #dff3e3; } .robust { background: #fff3cd; }
.no-refusal, .undetermined { background: #eee; }
.verdict.flagged { background: #fff3cd; border: 2px solid #c0392b; }
.flag { background: #fde2e1; border-left: 6px solid #c0392b; padding: 0.6em 1em; }
.inert-here, .beyond-kl-budget { color: #888; }
section.figure { margin: 2em 0; } section.figure p { max-width: 800px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; font-size: 13px; }
"""


def audit_figures(result: AuditResult) -> list[tuple[str, str, go.Figure]]:
    """(id, what it shows, figure) for every figure of the report."""
    dirs, thr = result.directions, result.config.threshold
    if not result.single:
        return [("refusal", "Harmful refusal with nothing ablated, and harmless refusal.",
                 refusal_rate_bars({"harmful": result.baseline, "harmless": result.harmless_baseline},
                                   title="Refusal with nothing ablated"))]
    labels = [f"d{i} (L{d.layer})" for i, d in enumerate(dirs)]
    k = len(dirs)
    joint = rate_curves(list(range(k + 1)), {"found order": result.joint.found, "worst order": result.joint.worst},
                        title="Joint ablation curve", xaxis="number of directions ablated", threshold=thr)
    joint.update_xaxes(dtick=1)
    figs = [
        ("single", "Harmful refusal with each direction ablated alone (all layers; block input, attention and MLP "
                   "output), with 95% CIs. One bar near 0 means fail-open (if that direction is within the KL budget).",
         refusal_rate_bars({"none": result.baseline, **dict(zip(labels, result.single)), f"all {k}": result.joint.found[-1]},
                           title="Harmful refusal, each direction ablated alone")),
        ("cosine", "Cosine similarity between the directions. Orthogonal (0) does not mean causally independent.",
         matrix_heatmap(dirs.cosine().tolist(), labels, title="Cosine similarity of the directions", colorbar="cosine",
                        zmin=-1.0, zmax=1.0)),
        ("pairwise", "Harmful refusal with directions i and j ablated together (diagonal: i alone); cell text "
                     "gives the 95% CI.",
         matrix_heatmap([[r.value for r in row] for row in result.pairwise], labels,
                        title="Harmful refusal, pairs of directions ablated", colorbar="refusal", zmin=0.0, zmax=1.0,
                        colorscale="Viridis",
                        text=[[f"{r.value:.2f}<br>[{r.low:.2f}, {r.high:.2f}]" for r in row] for row in result.pairwise])),
        ("joint", "Harmful refusal with the first m directions ablated: in the order found or given, and in the "
                  f"worst order {list(result.joint.worst_order)} (each step ablates the direction that lowers refusal "
                  f"most). The redundancy number is where refusal first drops below the threshold.",
         joint),
        ("steering", "Refusal on harmless prompts with one direction added at its own layer (coefficient x its norm), "
                     "at every position. The line is the harmless baseline plus the margin a rise must clear.",
         rate_curves(list(result.steering_coeffs), dict(zip(labels, result.steering)),
                     title="Steering sufficiency: refusal induced on harmless prompts", xaxis="coefficient x norm",
                     threshold=min(1.0, result.harmless_baseline.value + result.config.carry_margin))),
        ("steering-common", f"The paper's steering test: harmless refusal with each direction added at the common layer "
                            f"{dirs[result.common].layer} with the common strength {dirs[result.common].norm:.3g} "
                            f"(direction {result.common}'s), at every position.",
         refusal_rate_bars({"nothing added": result.harmless_baseline, **dict(zip(labels, result.common_steering))},
                           title="Harmless refusal, each direction added at the common layer and strength")),
    ]
    if result.rep is not None:
        change, tol = result.rep.change(), result.config.ri_tolerance
        figs.append(("rep-independence", "Representational independence: how much ablating direction i (row) "
                     "changes the cosine of harmful activations with direction j (column), at the layer where it changes "
                     f"most, relative to how strongly j is represented. Independent pairs stay <= {tol}.",
                     matrix_heatmap([[None if v != v else v for v in row] for row in change.tolist()], labels,
                                    title="Representational dependence (0 = independent)", colorbar="relative change",
                                    zmin=0.0, zmax=max(2 * tol, float(torch.nan_to_num(change).max())), colorscale="Reds")))
        shift = result.rep.shift()
        layers = rate_curves(list(range(shift.shape[0])), {f"ablate {labels[i]} -> {labels[j]}": shift[:, i, j].tolist()
                                                          for i in range(k) for j in range(k) if i != j},
                             title="Representational independence per layer", xaxis="layer", yaxis="|change in cosine|")
        judged = result.rep.layers
        if max(judged) + 1 < shift.shape[0]:
            layers.add_vrect(x0=max(judged) + 0.5, x1=shift.shape[0] - 0.5, fillcolor="gray", opacity=0.15, line_width=0,
                             annotation_text="output layers: not judged")
        figs.append(("rep-layers", "Per layer: |change in the mean cosine with j| when i is ablated. Independence "
                     "is judged on the layers directions are chosen from (the last 20% are left out: there every "
                     "pathway has merged into the refusal output).", layers))
    if result.sweep is not None:
        for i, d in enumerate(dirs):
            chosen = (d.layer, d.position) if d.position in result.positions else None
            figs.append((f"sweep-{i}", f"Cosine of the difference-in-means candidate at every layer x position with "
                         f"{labels[i]} (star: where it came from).",
                         layer_position_heatmap(result.sweep[i], list(result.positions), chosen=chosen, colorbar="cosine",
                                                title=f"Where {labels[i]} lives: DIM candidates' cosine with it")))
    if result.discovery is not None:
        for r, selection in enumerate(result.discovery.selections):
            figs.append((f"discovery-{r}", f"Discovery round {r}: harmful refusal score with each candidate ablated, "
                         f"{r} earlier direction(s) already ablated (blank: excluded by the selection rules).",
                         layer_position_heatmap(selection.ablation_score, list(selection.positions),
                                                chosen=(selection.layer, selection.position), colorbar="refusal score",
                                                title=f"Discovery round {r}: ablation score per candidate")))
    return figs


def _directions_table(result: AuditResult) -> str:
    if not len(result.directions):
        return "<p>No directions.</p>"
    carries = result.carries()

    def row(i: int, d) -> str:
        status = result.status(i) if result.single else "-"
        cells = [f"d{i}", d.layer, d.position, d.method, d.round, f"{d.norm:.3g}",
                 f"{result.kl[i]:.3g}" if result.kl else "-", "yes" if carries[i] else "no", status,
                 html.escape(d.fitted_on)]
        return f'<tr class="{status.replace(" ", "-")}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    head = "".join(f"<th>{h}</th>" for h in ("dir", "layer", "position", "method", "round", "norm", "KL (harmless)",
                                              "carries refusal", "status", "fitted on"))
    return f"<table><tr>{head}</tr>{''.join(row(i, d) for i, d in enumerate(result.directions))}</table>"


def _findings(result: AuditResult) -> str:
    """The flag, the inert directions and the strongest direction beyond the budget, in words."""
    parts = []
    if result.rising_flag:
        more = "".join(f"<li>{html.escape(r.describe())}</li>" for r in result.rising[:8])
        parts.append(f'<div class="flag"><b>Flag:</b> {html.escape(result.rising_flag)}<ul>{more}</ul></div>')
    if result.single and result.inert():
        parts.append(f"<p><b>Inert here</b> (no test showed they carry refusal, so they count toward neither the "
                     f"redundancy number nor the pathways): {', '.join(f'd{i}' for i in result.inert())}.</p>")
    if result.strongest is not None:
        parts.append(f"<p><b>Beyond the audited directions:</b> {html.escape(result.strongest.describe())}.</p>")
    if result.adaptive_attack is not None:
        parts.append(f"<p><b>Independent attacker:</b> {html.escape(describe_attack(result.adaptive_attack))}.</p>")
    return "".join(parts)


def report_html(result: AuditResult) -> str:
    """The whole report as one HTML page that needs no network."""
    sections = "".join(
        f'<section class="figure" id="section-{name}"><p>{html.escape(text)}</p>'
        f'{fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}")}</section>'
        for name, text, fig in audit_figures(result))
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>Refusal audit: {html.escape(result.model)}</title>'
            f'<script type="text/javascript">{get_plotlyjs()}</script><style>{_STYLE}</style></head><body>'
            f'<h1>Refusal audit: {html.escape(result.model)}</h1>'
            f'<p class="verdict {result.verdict_label}{" flagged" if result.rising else ""}">'
            f'{html.escape(result.verdict)}</p>{_findings(result)}'
            f'<h2>Summary</h2><pre>{html.escape(format_audit(result))}</pre>'
            f'<h2>Directions ({result.source})</h2>{_directions_table(result)}'
            f'<h2>Figures</h2>{sections}</body></html>')


def comparison_table(results: Mapping[str, AuditResult]) -> str:
    """Audits side by side (e.g. SFT vs fail-closed): one column per model, the headline figures as rows."""
    def weakest(r: AuditResult) -> str:
        if not r.single:
            return "-"
        i = min(range(len(r.single)), key=lambda j: r.single[j].value)
        return f"{r.single[i].value:.2f} (d{i}, L{r.directions[i].layer})"

    rows = {
        "verdict": lambda r: r.verdict_label,
        "harmful refusal": lambda r: f"{r.baseline.value:.2f}",
        "harmless refusal": lambda r: f"{r.harmless_baseline.value:.2f}",
        "directions": lambda r: f"{len(r.directions)} {r.source}",
        "lowest, one ablated": weakest,
        "all ablated": lambda r: f"{r.joint.found[-1].value:.2f}" if r.joint else "-",
        "redundancy number": lambda r: ("-" if not r.single else f"> {r.redundancy.n_directions}" if r.redundancy.number is None
                                        else f"{r.redundancy.number}" + ("" if r.redundancy.exact else " (bound)")),
        "independent pathways": lambda r: str(len(r.pathways)),
        "inert directions": lambda r: str(len(r.inert())) if r.single else "-",
        "refusal rises": lambda r: "yes" if r.rising else "no",
    }
    width = max(14, *(len(name) + 2 for name in results))
    lines = [f"{'':<22}" + "".join(f"{name:>{width}}" for name in results)]
    lines += [f"{label:<22}" + "".join(f"{cell(r):>{width}}" for r in results.values()) for label, cell in rows.items()]
    return "\n".join(lines)


def compare_html(results: Mapping[str, AuditResult],
                 figures: Sequence[str] = ("single", "joint", "steering", "pairwise", "rep-independence")) -> str:
    """An HTML fragment (plotly.js inlined) with the same figures of several audits side by side."""
    by_model = {name: {fid: fig for fid, _, fig in audit_figures(r)} for name, r in results.items()}
    head = "".join(f"<th>{html.escape(name)}</th>" for name in results)
    rows = "".join(
        "<tr>" + "".join(f"<td>{by_model[name][fid].to_html(full_html=False, include_plotlyjs=False)}</td>"
                         if fid in by_model[name] else "<td>-</td>" for name in results) + "</tr>"
        for fid in figures)
    return (f'<script type="text/javascript">{get_plotlyjs()}</script>'
            f'<pre>{html.escape(comparison_table(results))}</pre><table><tr>{head}</tr>{rows}</table>')


def write_audit(result: AuditResult, out: str | Path, *, extra: dict | None = None, figures: bool = False) -> list[Path]:
    """`out/audit.json`, `out/report.html`, `out/directions/` (when there are any) and, with `figures`,
    each figure as `out/figures/<id>.html` (+ PNG where Chromium is available)."""
    out = Path(out)
    written = [write_json(out / "audit.json", {**result.to_dict(), **(extra or {})})]
    page = report_html(result)
    written.append(atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(page)))
    if len(result.directions):
        save_directions(result.directions, out / "directions", result.identity)
        written.append(out / "directions")
    if figures:
        for name, _, fig in audit_figures(result):
            written += save_figure(fig, out / "figures" / name)
    return written
