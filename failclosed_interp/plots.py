"""Plotly figures for refusal directions and refusal rates; saved as HTML, plus PNG when a
Chromium for kaleido is available (Debian: `apt-get install chromium`)."""

from __future__ import annotations

import logging
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
    fig.update_layout(title=title, xaxis_title="token position (from end)", yaxis_title="layer", width=640, height=560)
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
            text=[f"{v:.2f} (n={rates[n].n})" for n, v in zip(names, values)], textposition="outside",
        )
    )
    fig.update_layout(title=title, yaxis={"title": "refusal rate", "range": [0, 1.15]}, width=760, height=460)
    return fig


def save_figure(fig: go.Figure, path: str | Path, *, png: bool = True) -> list[Path]:
    """Write `path`.html (self-contained) and, if possible, `path`.png. Returns the files written."""
    path = Path(path)
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    written = [atomic_write(path.with_suffix(".html"), lambda tmp: Path(tmp).write_text(html))]
    if png and os.environ.get("FAILCLOSED_NO_PNG") != "1":
        try:
            image = fig.to_image(format="png", scale=1)
        except Exception as err:  # kaleido needs a Chromium; HTML is the figure of record
            log.warning("PNG export skipped for %s (%s); install chromium for PNGs", path.name, err)
        else:
            written.append(atomic_write(path.with_suffix(".png"), lambda tmp: Path(tmp).write_bytes(image)))
    return written
