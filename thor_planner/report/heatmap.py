"""The per-factor loss heatmap: one row per layer (model order), A's panel beside G's, each factor's
planned split marked, layer names whole.

A long heatmap is cut into bands of at most :data:`HEADER_EVERY` rows, each headed by the split
labels, and the last band also carries them below: whichever row a reader looks at, the splits are
named within a band's height of it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from thor_planner.planning.plan import Plan
from thor_planner.report.style import INK, SPLIT_COLOR, style
from thor_planner.report.tables import _label, _threshold

# Losses below the threshold in pale blues, then a perceptual ramp (YlOrRd) spread with a square law so
# that 1–10 % losses, the ones the decision hinges on, already look different from 50 %.
_RAMP = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#bd0026", "#800026"]
#: Above this many layers the heatmap takes the page's whole width, the plan table goes below it.
STACK_LAYERS = 24
#: Pixels per layer row (A and G side by side, so ~150 factors are ~75 rows).
HEATMAP_ROW = 18
#: Rows per band: the split labels head every band (and follow the last one).
HEADER_EVERY = 24
#: Pixels of a repeated header (tick labels and "split b") between two bands, and below the last.
HEADER_PX = 40
TOP_PX, BOTTOM_PX = 175, 30  # margins (title and subtitle above; below when there is no footer)


def layer_order(losses: pd.DataFrame) -> list[str]:
    """Layers in model order (first appearance in the losses)."""
    return list(dict.fromkeys(losses["layer"]))


def heatmap_needs_width(plan: Plan, losses: pd.DataFrame) -> bool:
    """Whether the heatmap gets the page's whole width (the plan table then below it): more than
    ``STACK_LAYERS`` layers, or names and candidates too wide for the ~560 px of the half-page card
    (about 6.5 px per character of the longest name, 28 px per candidate column in each of the two
    panels, 140 px of colour bar and margins)."""
    longest = max((len(str(name)) for name in losses["layer"]), default=0)
    return len(layer_order(losses)) > STACK_LAYERS or 6.5 * longest + 56 * len(plan.candidates) + 140 > 560


def bands(rows: int, every: int = HEADER_EVERY) -> list[range]:
    """``rows`` cut into the fewest bands of at most ``every`` rows, as even as possible."""
    count = max(1, math.ceil(rows / every))
    sizes = [rows // count + (i < rows % count) for i in range(count)]
    starts = np.cumsum([0] + sizes).tolist()
    return [range(a, b) for a, b in zip(starts, starts[1:])]


def _loss_colorscale(thr: float) -> list:
    scale = [[0.0, "#eef4fb"], [thr, "#c6dbef"], [thr, _RAMP[0]]]
    n = len(_RAMP) - 1
    scale += [[thr + (1 - thr) * (i / n) ** 2, c] for i, c in enumerate(_RAMP) if i]
    return scale


def _factor_part(losses: pd.DataFrame, layers: list[str], factor: str) -> pd.DataFrame:
    part = losses[losses["factor"].astype(str).str.lower() == factor].drop_duplicates("layer").set_index("layer")
    return part.reindex(layers)  # a layer without this factor's row stays blank


def _marks(plan: Plan, part: pd.DataFrame, labels: list[str], cols: list[str], factor: str):
    """The planned split of each factor of ``part``: x (candidate column), y (row label), hover text."""
    by_name = {lp.name: lp for lp in plan.layers}
    mx, my, text = [], [], []
    for layer, label, dim in zip(part.index, labels, part["dim"]):
        lp = by_name.get(layer)
        if lp is None or not np.isfinite(dim):
            continue
        split, loss = (lp.a_split, lp.a_loss) if factor == "a" else (lp.g_split, lp.g_loss)
        mx.append(next((b for b in cols if int(b) >= min(split, int(dim))), cols[-1]))
        my.append(label)
        text.append(f"split {split}{' (whole factor)' if split >= dim else ''}, loss {loss:.2%}")
    return mx, my, text


def _add_band(fig: go.Figure, plan: Plan, losses: pd.DataFrame, layers: list[str], labels: list[str],
              row: int) -> None:
    cols = [str(b) for b in plan.candidates]
    for col, f in ((1, "a"), (2, "g")):
        part = _factor_part(losses, layers, f)
        dims = np.repeat(part["dim"].fillna(0).to_numpy(dtype=int)[:, None], len(cols), axis=1)
        fig.add_trace(go.Heatmap(
            z=part[cols].to_numpy(dtype=float), x=cols, y=labels, customdata=dims, coloraxis="coloraxis",
            xgap=1, ygap=1, name=f"loss {f.upper()}",
            hovertemplate=f"%{{y}} · {f.upper()} (dim %{{customdata}})<br>b = %{{x}}: loss %{{z:.2%}}<extra></extra>"),
            row=row, col=col)
        mx, my, text = _marks(plan, part, labels, cols, f)
        fig.add_trace(go.Scatter(
            x=mx, y=my, mode="markers", name="planned split of the factor", text=text, showlegend=False,
            marker=dict(symbol="diamond", size=9, color=SPLIT_COLOR, line=dict(color="white", width=1)),
            hovertemplate=f"%{{y}} · {f.upper()}<br>%{{text}}<extra>planned</extra>"), row=row, col=col)


def _ref(letter: str, index: int) -> str:
    """A plotly axis reference: ``x``, ``x2``, ``y3``…"""
    return f"{letter}{index if index > 1 else ''}"


def _split_axis(side: str) -> dict:
    return dict(type="category", side=side, tickangle=0, tickfont=dict(size=10), showgrid=False,
                title=dict(text="split b", standoff=4, font=dict(size=11)))


def _add_footer(fig: go.Figure, cols: list[str], first_label: str, count: int) -> None:
    """The split labels again below the last band: an axis over each of its two panels, at the bottom,
    held by an invisible trace (plotly draws only axes that carry one)."""
    for col in (1, 2):
        under, axis = 2 * (count - 1) + col, 2 * count + col
        fig.add_trace(go.Scatter(x=cols, y=[first_label] * len(cols), xaxis=_ref("x", axis), yaxis=_ref("y", under),
                                 mode="markers", marker=dict(opacity=0), showlegend=False, hoverinfo="skip",
                                 name="split labels"))
        fig.update_layout({f"xaxis{axis}": dict(**_split_axis("bottom"), overlaying=_ref("x", under),
                                                anchor=_ref("y", under), range=[-0.5, len(cols) - 0.5])})


def heatmap_figure(plan: Plan, losses: pd.DataFrame) -> go.Figure:
    """Loss of every factor at every candidate: one row per layer (model order), A's panel beside G's,
    each factor's planned split marked. The height grows with the layers, layer names are printed whole,
    and the split labels head every band of :data:`HEADER_EVERY` rows and follow the last."""
    cands, thr = plan.candidates, _threshold(plan)
    cols = [str(b) for b in cands]
    layers = layer_order(losses)
    parts = bands(len(layers))
    bottom = HEADER_PX if len(parts) > 1 else BOTTOM_PX  # room for the labels below the last band
    plot_px = HEATMAP_ROW * len(layers) + HEADER_PX * (len(parts) - 1)
    height = max(380, plot_px + TOP_PX + bottom)
    fig = make_subplots(rows=len(parts), cols=2, shared_yaxes=True, horizontal_spacing=0.025,
                        vertical_spacing=HEADER_PX / max(plot_px, 1) if len(parts) > 1 else 0.0,
                        row_heights=[len(p) for p in parts], subplot_titles=("A (inputs)", "G (output gradients)"))
    for row, part in enumerate(parts, start=1):
        names = [layers[i] for i in part]
        _add_band(fig, plan, losses, names, [_label(n) for n in names], row)
        fig.update_yaxes(type="category", range=[len(names) - 0.5, -0.5], row=row, col=1)
        fig.update_yaxes(type="category", range=[len(names) - 0.5, -0.5], row=row, col=2)
    style(fig, "Information loss per factor", f"loss = 1 − λmax(block-diagonal) / λmax(full) · pale blue: "
          f"below {thr:.0%}<br>◆ planned split (global {plan.split_dim}, smaller where already lossless, "
          "capped at the factor's dimension)", height)
    fig.update_layout(margin=dict(t=TOP_PX, b=bottom, r=16),  # the subtitle explains the ◆
                      coloraxis=dict(cmin=0, cmax=1, colorscale=_loss_colorscale(thr), colorbar=dict(
                          title=dict(text="loss", side="top"), thickness=14, len=min(1.0, 420 / max(plot_px, 1)),
                          y=1, yanchor="top", tickvals=[thr, 0.1, 0.25, 0.5, 1], tickformat=".0%")))
    fig.for_each_annotation(lambda a: a.update(font=dict(size=13, color=INK), yshift=30))  # above the ticks
    fig.update_xaxes(**_split_axis("top"), range=[-0.5, len(cols) - 0.5])
    if len(parts) > 1:
        _add_footer(fig, cols, _label(layers[parts[-1][0]]), len(parts))
    fig.update_yaxes(tickfont=dict(size=11), automargin=True)
    fig.for_each_yaxis(lambda ax: ax.update(showticklabels=False), col=2)
    return fig
