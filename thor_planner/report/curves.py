"""THOR's figure 3: the loss-fraction curve rising, the normalized performance falling, where they cross
and the split the rule chose; on a log₂ or (a button away) a linear split axis.

Nothing is drawn over the curves: the axis buttons sit below the plot, and the two labels (the
crossover's and the chosen split's) are placed, for each axis, on the free spot nearest to what they
name (:mod:`report.placement`), so no curve, no dashed line and no other label crosses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from thor_planner.planning.plan import Plan
from thor_planner.targets import TARGETS
from thor_planner.report.placement import Box, free_boxes, nearest_first, sample_polyline, segment_clear
from thor_planner.report.style import INK, LOSS_COLOR, PERF_COLOR, SPLIT_COLOR, style
from thor_planner.report.tables import _label, _rule_text, _threshold, terms

HEIGHT = 500
Y_RANGE = (-0.04, 1.08)  # a little room below 0 and above 1: markers on either line are drawn whole
X_PAD = 0.04  # of the axis span, on either side, for the same reason
#: Label font (px) and generous estimates of a character's width and a label's height, in pixels.
LABEL_FONT, CHAR_PX, LABEL_PX = 13, 7.6, 20
#: The narrowest plot area the page lays out (the half-page card of a 1100 px window): label boxes
#: are sized against it, so a wider plot draws them smaller than the free box found for them.
MIN_PLOT_PX = 380
PAD_PX, GAP_PX, MARKER_PX = 5, 5, 22  # clearance around labels, label to dashed line, crossover marker


@dataclass(frozen=True)
class SplitAxis:
    """The split axis in one mode (``log`` or ``linear``), its range in axis units (log10 of b on a
    log axis, as plotly takes ranges and annotation positions there)."""

    kind: str
    lo: float
    hi: float

    @classmethod
    def of(cls, kind: str, cands: list[int]) -> "SplitAxis":
        first, last = (math.log10(cands[0]), math.log10(cands[-1])) if kind == "log" else (cands[0], cands[-1])
        span = (last - first) or 1.0
        return cls(kind, first - X_PAD * span, last + X_PAD * span)

    def unit(self, b: float) -> float:
        """``b`` in axis units."""
        return math.log10(max(b, 1e-9)) if self.kind == "log" else float(b)

    def frac(self, b: float) -> float:
        """Where ``b`` sits across the plot area (0 left, 1 right)."""
        return (self.unit(b) - self.lo) / (self.hi - self.lo)

    def at(self, u: float) -> float:
        """Axis units at ``u`` across the plot area."""
        return self.lo + u * (self.hi - self.lo)


def _vfrac(y: float) -> float:
    return (y - Y_RANGE[0]) / (Y_RANGE[1] - Y_RANGE[0])


def _y_at(v: float) -> float:
    return Y_RANGE[0] + v * (Y_RANGE[1] - Y_RANGE[0])


def _sparse_ticks(cands: list[int], parts: int = 18) -> list[int]:
    """Candidates far enough apart to label on a linear axis (the small ones bunch at 0)."""
    span, ticks = max(cands[-1] - cands[0], 1), []
    for b in reversed(cands):
        if not ticks or ticks[-1] - b >= span / parts:
            ticks.append(b)
    return sorted(ticks)


def _dense(cands: list[int], values: list[float], steps: int = 24) -> tuple[list[float], list[float]]:
    """The curve interpolated linearly in b between candidates (as the crossover is computed), so
    that it bends on the log axis and both axes show the crossing where the plan puts it."""
    xs, ys = [float(cands[0])], [float(values[0])]
    for (b0, v0), (b1, v1) in zip(zip(cands, values), zip(cands[1:], values[1:])):
        for k in range(1, steps + 1):
            t = k / steps
            xs.append(b0 + t * (b1 - b0))
            ys.append(v0 + t * (v1 - v0))
    return xs, ys


def _plot_px(top_margin: int, bottom_margin: int) -> tuple[float, float]:
    return float(MIN_PLOT_PX), float(HEIGHT - top_margin - bottom_margin)


def _label_size(text: str, scale: tuple[float, float]) -> tuple[float, float]:
    return len(text) * CHAR_PX / scale[0], LABEL_PX / scale[1]


def _curve_points(plan: Plan, axis: SplitAxis, scale: tuple[float, float]) -> np.ndarray:
    step = 1.5 / max(scale)
    parts = []
    for key in ("loss_fraction", "normalized_perf"):
        xs, ys = _dense(list(plan.candidates), list(plan.curves[key]))
        parts.append(sample_polyline([axis.frac(x) for x in xs], [_vfrac(y) for y in ys], step))
    return np.concatenate(parts)


def _chosen_box(axis: SplitAxis, split: int, text: str, curves: np.ndarray, blocked: list[Box],
                scale: tuple[float, float]) -> tuple[Box, str]:
    """The chosen split's label beside its dashed line, as high as no curve crosses it, on the
    inward side first; returns the box and the side."""
    size, us = _label_size(text, scale), axis.frac(split)
    pad = (PAD_PX / scale[0], PAD_PX / scale[1])
    offset = GAP_PX / scale[0] + size[0] / 2
    sides = ["left", "right"] if us > 0.7 else ["right", "left"]
    heights = np.arange(1 - size[1] / 2 - pad[1], size[1] / 2, -2 / scale[1])
    centres = np.array([(us + (offset if s == "right" else -offset), cy) for cy in heights for s in sides])
    for box in free_boxes(centres, size, curves, blocked, pad):
        return box, "right" if box.centre[0] > us else "left"
    return Box.around(*centres[0], *size), sides[0]


def _connector_clear(anchor: tuple[float, float], box: Box, lines: np.ndarray, scale: tuple[float, float]) -> bool:
    """Whether the arrow from ``box`` to ``anchor`` (past the crossover marker) crosses no line."""
    end = (min(max(anchor[0], box.left), box.right), min(max(anchor[1], box.bottom), box.top))
    dx, dy = (end[0] - anchor[0]) * scale[0], (end[1] - anchor[1]) * scale[1]
    length = math.hypot(dx, dy)
    if length <= MARKER_PX / 2 + 2:
        return True
    start = (anchor[0] + dx / length * (MARKER_PX / 2) / scale[0], anchor[1] + dy / length * (MARKER_PX / 2) / scale[1])
    return segment_clear(start, end, lines, scale, 2.0)


def _crossover_box(anchor: tuple[float, float], text: str, curves: np.ndarray, line: np.ndarray,
                   blocked: list[Box], scale: tuple[float, float]) -> Box:
    """The crossover's label on the free spot nearest the crossing (clear of the curves, the dashed
    line and ``blocked``): the nearest whose arrow crosses nothing, else whose arrow crosses only the
    dashed line, else the nearest free one."""
    size = _label_size(text, scale)
    pad = (PAD_PX / scale[0], PAD_PX / scale[1])
    centres = nearest_first(anchor, size, scale, step=0.01)
    lines = np.concatenate([curves, line])
    first_free = past_line = None
    for box in free_boxes(centres, size, lines, blocked, pad):
        if _connector_clear(anchor, box, lines, scale):
            return box
        first_free = first_free or box
        if past_line is None and _connector_clear(anchor, box, curves, scale):
            past_line = box
    return past_line or first_free or Box.around(*centres[0], *size)


def label_annotations(plan: Plan, axis: SplitAxis, scale: tuple[float, float]) -> list[dict]:
    """The chosen split's and the crossover's labels as plotly annotations for this axis mode."""
    co, split = plan.crossover, plan.split_dim
    curves = _curve_points(plan, axis, scale)
    us = axis.frac(split)
    line = sample_polyline([us, us], [_vfrac(0), _vfrac(1)], 1.5 / scale[1])
    marker = (Box.around(axis.frac(co.x), _vfrac(co.y), MARKER_PX / scale[0], MARKER_PX / scale[1])
              if co.x is not None and co.y is not None else None)
    chosen_text = f"chosen {terms(plan).split} {split}"
    box, side = _chosen_box(axis, split, chosen_text, curves, [marker] if marker else [], scale)
    notes = [dict(x=axis.unit(split), y=_y_at(box.centre[1]), text=chosen_text, showarrow=False,
                  xanchor="right" if side == "left" else "left", xshift=-GAP_PX if side == "left" else GAP_PX,
                  font=dict(size=LABEL_FONT, color=SPLIT_COLOR), name="chosen split")]
    if marker is not None:
        text = f"crossover at b≈{co.x:.0f}"
        anchor = (axis.frac(co.x), _vfrac(co.y))
        cross = _crossover_box(anchor, text, curves, line, [box, marker], scale)
        # the arrow's tail on the box's side nearest the crossing: a wider plot draws the text
        # narrower than the box found for it, and it then shrinks away from that side
        side = "left" if cross.left >= anchor[0] else "right" if cross.right <= anchor[0] else "center"
        tail = {"left": cross.left, "right": cross.right, "center": cross.centre[0]}[side]
        notes.append(dict(x=axis.unit(co.x), y=co.y, ax=axis.at(tail), ay=_y_at(cross.centre[1]), xanchor=side,
                          axref="x", ayref="y", text=text, showarrow=True, arrowhead=0, arrowwidth=1.5,
                          arrowcolor=INK, standoff=MARKER_PX / 2, font=dict(size=LABEL_FONT, color=INK),
                          name="crossover"))
    return notes


def _add_curves(fig: go.Figure, plan: Plan) -> None:
    cands, curves, co = plan.candidates, plan.curves, plan.crossover
    secs, thr = curves["inversion_seconds"], _threshold(plan)
    if co.interval is not None and co.interval[1] > co.interval[0]:
        lo, hi = co.interval
        spans = f" · spans {', '.join(map(str, co.spans))}" if co.spans and len(co.spans) > 1 else ""
        fig.add_scatter(x=[lo, hi, hi, lo, lo], y=[0, 0, 1, 1, 0], fill="toself", mode="lines",
                        fillcolor="rgba(94,60,153,0.10)", line=dict(width=0), name="crossover interval (timing spread)",
                        hovertemplate=f"crossings the timing spread allows: b≈{lo:.0f}–{hi:.0f}{spans}<extra></extra>")
    for key, name, color, fmt in (
        ("loss_fraction", f"fraction of {terms(plan).unit} with loss < {thr:.0%}", LOSS_COLOR, ".1%"),
        ("normalized_perf", "normalized performance p₁/p_b", PERF_COLOR, ".3f"),
    ):
        dense_x, dense_y = _dense(list(cands), list(curves[key]))
        fig.add_scatter(x=dense_x, y=dense_y, name=name, legendgroup=key, mode="lines", hoverinfo="skip",
                        line=dict(color=color, width=3))
        fig.add_scatter(x=list(cands), y=list(curves[key]), name=name, legendgroup=key, showlegend=False,
                        mode="markers", customdata=list(secs), marker=dict(size=8, color=color),
                        hovertemplate=f"%{{y:{fmt}}} · {terms(plan).cost} %{{customdata:.3g}} s<extra>{name}</extra>")
    if co.x is not None and co.y is not None:
        fig.add_scatter(x=[co.x], y=[co.y], name="crossover", mode="markers", showlegend=False, cliponaxis=False,
                        marker=dict(size=15, symbol="circle-open", color=INK, line=dict(width=3)),
                        hovertemplate=f"crossover b≈{co.x:.1f}, y={co.y:.3f}<extra></extra>")
    fig.add_scatter(x=[plan.split_dim, plan.split_dim], y=[0, 1], name=f"chosen {terms(plan).split} {plan.split_dim}",
                    mode="lines", showlegend=False, hoverinfo="skip",
                    line=dict(color=SPLIT_COLOR, width=2, dash="dash"))


def _axis_layout(axis: SplitAxis, cands: list[int], annotations: list[dict]) -> dict:
    ticks = cands if axis.kind == "log" else _sparse_ticks(cands)
    return {"xaxis.type": axis.kind, "xaxis.range": [axis.lo, axis.hi], "xaxis.autorange": False,
            "xaxis.tickvals": ticks, "xaxis.ticktext": list(map(str, ticks)), "annotations": annotations}


def curves_figure(plan: Plan) -> go.Figure:
    """THOR's figure 3: loss fraction rising, normalized performance falling. The split axis is
    log₂ by default (on a linear axis, as in the paper, the small candidates bunch at 0; a button
    below the plot switches); the curves are drawn interpolated linearly in b, as the crossover is."""
    cands = list(plan.candidates)
    fig = go.Figure()
    _add_curves(fig, plan)
    words = terms(plan)
    title, rule_line = f"Information loss vs. {words.cost} cost", ""
    if plan.for_peer:
        title += f" · {_label(TARGETS[plan.optimizer].title)}"
    if plan.rule.get("name") == "budget":
        title += " · budget rule"
        rule_line = f"{words.split} chosen by the budget rule: {_label(_rule_text(plan))}<br>"
    style(fig, title, rule_line + f"{words.split} b on a log₂ axis (THOR's fig. 3 uses a linear one: “linear b”)<br>"
          "curves interpolated linearly in b between candidates, as the crossover is", HEIGHT)
    top, bottom = (150 if rule_line else 130), 84
    scale = _plot_px(top, bottom)
    modes = {kind: SplitAxis.of(kind, cands) for kind in ("log", "linear")}
    layouts = {kind: _axis_layout(axis, cands, label_annotations(plan, axis, scale)) for kind, axis in modes.items()}
    fig.update_layout(hovermode="closest", margin=dict(t=top, b=bottom, r=32), legend=dict(y=1.0, yanchor="bottom"),
                      annotations=layouts["log"]["annotations"], updatemenus=[dict(
        type="buttons", direction="right", x=1, xanchor="right", y=0, yanchor="top", showactive=True,
        font=dict(size=11), bgcolor="white", pad=dict(r=0, t=34, b=0, l=0), buttons=[
            dict(label=f"{kind} b", method="relayout", args=[layouts[kind]]) for kind in ("log", "linear")])])
    log = layouts["log"]
    fig.update_xaxes(type="log", range=log["xaxis.range"], autorange=False, title_text=words.axis,
                     tickvals=log["xaxis.tickvals"], ticktext=log["xaxis.ticktext"], showspikes=True,
                     spikemode="across", spikethickness=1, spikedash="dot", spikecolor="#adb5bd")
    fig.update_yaxes(range=list(Y_RANGE), tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1], zeroline=False,
                     title_text="fraction / normalized performance")
    return fig
