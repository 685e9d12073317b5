"""Plotly figures for refusal directions and refusal rates; saved as HTML, plus PNG when a
Chromium for kaleido is available (Debian: `apt-get install chromium`)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor

from failclosed_interp.artifacts import atomic_write
from failclosed_interp.stats import RateEstimate

log = logging.getLogger(__name__)


def layer_position_heatmap(
    scores: Float[Tensor, "n_layers n_pos"],
    positions: Sequence[int],
    *,
    title: str,
    colorbar: str,
    chosen: tuple[int, int] | None = None,
    position_labels: Sequence[str] | None = None,
) -> go.Figure:
    """Layer x post-instruction-position heatmap; NaN cells (excluded candidates) stay blank."""
    z = scores.double().cpu().numpy()
    labels = [f"{p}: {t!r}" for p, t in zip(positions, position_labels)] if position_labels else [str(p) for p in positions]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=labels, y=list(range(z.shape[0])), colorscale="RdBu_r",
            zmid=0 if np.nanmin(z) < 0 < np.nanmax(z) else None, colorbar={"title": colorbar},
            hovertemplate="layer %{y}<br>position %{x}<br>%{z:.3f}<extra></extra>",
        )
    )
    if chosen is not None:
        layer, pos = chosen
        fig.add_trace(
            go.Scatter(
                x=[labels[list(positions).index(pos)]], y=[layer], mode="markers", name="chosen",
                marker={"symbol": "star", "size": 16, "color": "gold", "line": {"color": "black", "width": 1}},
            )
        )
    # Layers are whole numbers: one tick per layer, thinned so about 20 fit.
    fig.update_layout(title=title, xaxis_title="token position (from end)", width=640, height=560,
                      yaxis={"title": "layer", "tickmode": "linear", "tick0": 0, "dtick": max(1, math.ceil(z.shape[0] / 20))})
    return fig


def refusal_rate_bars(rates: Mapping[str, RateEstimate], *, title: str) -> go.Figure:
    """Refusal rates with bootstrap-CI error bars."""
    names = list(rates)
    values = [rates[n].value for n in names]
    fig = go.Figure(
        go.Bar(
            x=names, y=values,
            error_y={"type": "data", "symmetric": False,
                     "array": [rates[n].high - rates[n].value for n in names],
                     "arrayminus": [rates[n].value - rates[n].low for n in names]},
        )
    )
    # Labels sit above the interval's top, where no error bar crosses them.
    for n, v in zip(names, values):
        fig.add_annotation(x=n, y=rates[n].high, text=f"{v:.2f} (n={rates[n].n})", showarrow=False, yanchor="bottom",
                           yshift=2)
    fig.update_layout(title=title, yaxis={"title": "refusal rate", "range": [0, 1.15]}, width=760, height=460)
    return fig


def matrix_heatmap(
    values: Sequence[Sequence[float | None]],
    labels: Sequence[str],
    *,
    title: str,
    colorbar: str,
    zmin: float | None = None,
    zmax: float | None = None,
    text: Sequence[Sequence[str]] | None = None,
    colorscale: str = "RdBu_r",
) -> go.Figure:
    """Square matrix over directions (cosine, pairwise ablation, ...), each cell annotated."""
    z = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=np.float64)
    text = text or [["" if np.isnan(v) else f"{0.0 if abs(v) < 0.005 else v:.2f}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(labels), y=list(labels), zmin=zmin, zmax=zmax, colorscale=colorscale, colorbar={"title": colorbar},
        text=text, texttemplate="%{text}", hovertemplate="%{y} / %{x}<br>%{z:.3f}<extra></extra>",
    ))
    # No grid lines or grey background through blank (None) cells.
    fig.update_layout(title=title, width=620, height=560, plot_bgcolor="white",
                      xaxis={"showgrid": False}, yaxis={"autorange": "reversed", "showgrid": False})
    return fig


def rate_curves(
    x: Sequence[int | float],
    curves: Mapping[str, Sequence[RateEstimate] | Sequence[float]],
    *,
    title: str,
    xaxis: str,
    yaxis: str = "refusal rate",
    threshold: float | None = None,
) -> go.Figure:
    """Lines over x; curves of RateEstimates get bootstrap-CI error bars and a [0, 1] axis. Curves are
    nudged sideways a little and dashed differently, so identical ones stay visible."""
    fig = go.Figure()
    rates = False
    gaps = np.diff(sorted(set(float(v) for v in x)))
    nudge = 0.04 * (float(gaps.min()) if gaps.size else 1.0)
    dashes = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
    for n, (name, ys) in enumerate(curves.items()):
        ys = list(ys)
        is_rate = bool(ys) and isinstance(ys[0], RateEstimate)
        rates |= is_rate
        values = [y.value if is_rate else y for y in ys]
        error = ({"type": "data", "symmetric": False, "array": [y.high - y.value for y in ys],
                  "arrayminus": [y.value - y.low for y in ys]} if is_rate else None)
        shift = (n - (len(curves) - 1) / 2) * nudge
        fig.add_trace(go.Scatter(x=[float(v) + shift for v in list(x)[: len(values)]], y=values, mode="lines+markers",
                                 name=name, error_y=error, line={"dash": dashes[n % len(dashes)]}))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color="gray", annotation_text=f"threshold {threshold}")
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis={"title": yaxis, **({"range": [-0.05, 1.08]} if rates else {})},
                      width=760, height=460)
    if not gaps.size and len(x):  # a single x: keep the nudged points near it instead of at the plot's edges
        fig.update_xaxes(range=[float(x[0]) - 0.5, float(x[0]) + 0.5])
    return fig


def grouped_rate_bars(groups: Mapping[str, Mapping[str, RateEstimate]], *, title: str, yaxis: str = "rate") -> go.Figure:
    """Rates side by side: `groups[series][column]`, one coloured bar per series (e.g. model) in each column
    (e.g. attack), each with its 95% interval as error bars. Missing cells are left out."""
    columns = list(dict.fromkeys(c for rates in groups.values() for c in rates))
    fig = go.Figure()
    for series, rates in groups.items():
        shown = [c for c in columns if c in rates]
        fig.add_trace(go.Bar(
            name=series, x=shown, y=[rates[c].value for c in shown],
            error_y={"type": "data", "symmetric": False,
                     "array": [rates[c].high - rates[c].value for c in shown],
                     "arrayminus": [rates[c].value - rates[c].low for c in shown]},
            hovertemplate="%{x}<br>%{y:.3f}<extra>" + series + "</extra>",
        ))
    fig.update_layout(title=title, barmode="group", yaxis={"title": yaxis, "range": [0, 1.05]},
                      width=max(760, 90 * len(columns) * max(1, len(groups)) // 2), height=480)
    return fig


def save_figure(fig: go.Figure, path: str | Path, *, png: bool = True, self_contained: bool = True) -> list[Path]:
    """Write `path`.html and, if possible, `path`.png. Returns the files written. The HTML carries plotly.js
    (about 5 MB, opens offline) unless `self_contained` is False: then it loads plotly.js from its CDN (a few
    KB, for pages kept in git and read online)."""
    path = Path(path)
    # A fixed div id (plotly draws a random one): the same figure gives the same file, so pages kept in git
    # change only when their figures do.
    html = fig.to_html(include_plotlyjs=True if self_contained else "cdn", full_html=True, div_id=f"figure-{path.stem}")
    written = [atomic_write(path.with_suffix(".html"), lambda tmp: Path(tmp).write_text(html))]
    if png and os.environ.get("FAILCLOSED_NO_PNG") != "1":
        try:
            image = fig.to_image(format="png", scale=1)
        except Exception as err:  # kaleido needs a Chromium; HTML is the figure of record
            log.warning("PNG export skipped for %s (%s); install chromium for PNGs", path.name, err)
        else:
            written.append(atomic_write(path.with_suffix(".png"), lambda tmp: Path(tmp).write_bytes(image)))
    return written
