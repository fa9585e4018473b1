"""The plan report: THOR's figure 3 and the evidence behind every split, in one HTML page.

:func:`figures` turns a plan and its measurements into plotly figures (pure data in, figures out);
:func:`build_report` lays them out with the plan table and provenance in one self-contained page
(plotly.js embedded inline: it opens offline, no CDN, no external fonts); :func:`write_report` writes
that page atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from thor_planner.utils.atomic import atomic_write_text
from thor_planner.planning.plan import Plan
from thor_planner.report.tables import (CSS, FONT, _esc, _label, _rule_text, _seconds, _stats, _threshold,
                                        _warnings, plan_table, provenance, skipped_table)

LOSS_COLOR, PERF_COLOR, SPLIT_COLOR, INK = "#1b9e77", "#d95f02", "#5e3c99", "#2b2d42"
CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg", "scale": 2}}
# Losses below the threshold in pale blues, then a perceptual ramp (YlOrRd) spread with a square law so
# that 1–10 % losses, the ones the decision hinges on, already look different from 50 %.
_RAMP = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#bd0026", "#800026"]


def _style(fig: go.Figure, title: str, subtitle: str, height: int) -> go.Figure:
    fig.update_layout(
        template="plotly_white", height=height, font=dict(family=FONT, size=13, color=INK),
        title=dict(text=title, subtitle=dict(text=subtitle, font=dict(size=12, color="#6c757d")),
                   x=0.01, xanchor="left", y=0.98, yanchor="top"),
        margin=dict(l=64, r=24, t=96, b=64), hoverlabel=dict(font_family=FONT, bgcolor="white"),
        legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0),
    )
    return fig


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


def _position(cands: list[int], x: float, axis: str = "log") -> float:
    """Where ``x`` sits across the ``log`` or ``linear`` axis (0 at the first candidate, 1 at the last)."""
    if axis == "linear":
        return (x - cands[0]) / (cands[-1] - cands[0]) if cands[-1] > cands[0] else 0.0
    lo, hi = np.log2(cands[0]), np.log2(cands[-1])
    return float((np.log2(max(x, cands[0])) - lo) / (hi - lo)) if hi > lo else 0.0


def _side(cands: list[int], x: float, axis: str = "log") -> str:
    """Labels go to the left of points in the right part of the axis, so none is cut at the edge."""
    return "left" if _position(cands, x, axis) > 0.7 else "right"


def _label_positions(cands: list[int], co, split: int, axis: str) -> tuple[str | None, str]:
    """Text positions of the crossover label (away from the chosen split's dashed line, inwards near
    either end) and of the chosen-split label, on the ``log`` or ``linear`` axis."""
    cross = None
    if co.x is not None and co.y is not None:
        vertical = "bottom" if co.y > 0.8 else "top"
        side = "left" if split >= co.x and _position(cands, co.x, axis) > 0.25 else _side(cands, co.x, axis)
        cross = f"{vertical} {side}"
    return cross, f"middle {_side(cands, split, axis)}"


def curves_figure(plan: Plan) -> go.Figure:
    """THOR's figure 3: loss fraction rising, normalized performance falling. The split axis is
    log₂ by default (on a linear axis, as in the paper, the small candidates bunch at 0; a button
    switches); the curves are drawn interpolated linearly in b, as the crossover is computed."""
    cands, curves, co, split = plan.candidates, plan.curves, plan.crossover, plan.split_dim
    secs, thr = curves["inversion_seconds"], _threshold(plan)
    fig = go.Figure()
    if co.interval is not None and co.interval[1] > co.interval[0]:
        lo, hi = co.interval
        spans = f" · spans {', '.join(map(str, co.spans))}" if co.spans and len(co.spans) > 1 else ""
        fig.add_scatter(x=[lo, hi, hi, lo, lo], y=[0, 0, 1, 1, 0], fill="toself", mode="lines",
                        fillcolor="rgba(94,60,153,0.10)", line=dict(width=0), name="crossover interval (timing spread)",
                        hovertemplate=f"crossings the timing spread allows: b≈{lo:.0f}–{hi:.0f}{spans}<extra></extra>")
    for key, name, color, fmt in (
        ("loss_fraction", f"fraction of factors with loss < {thr:.0%}", LOSS_COLOR, ".1%"),
        ("normalized_perf", "normalized performance p₁/p_b", PERF_COLOR, ".3f"),
    ):
        dense_x, dense_y = _dense(list(cands), list(curves[key]))
        fig.add_scatter(x=dense_x, y=dense_y, name=name, legendgroup=key, mode="lines", hoverinfo="skip",
                        line=dict(color=color, width=3))
        fig.add_scatter(x=list(cands), y=list(curves[key]), name=name, legendgroup=key, showlegend=False,
                        mode="markers", customdata=list(secs), marker=dict(size=8, color=color),
                        hovertemplate=f"%{{y:{fmt}}} · inversion %{{customdata:.3g}} s<extra>{name}</extra>")
    positions = {axis: _label_positions(list(cands), co, split, axis) for axis in ("log", "linear")}
    labelled = []  # trace indices of the two labels, repositioned when the axis switches
    if co.x is not None and co.y is not None:
        labelled.append(len(fig.data))
        fig.add_scatter(x=[co.x], y=[co.y], name="crossover", mode="markers+text", showlegend=False,
                        text=[f"crossover at b≈{co.x:.0f}"], textposition=positions["log"][0],
                        textfont=dict(size=13, color=INK), cliponaxis=False,
                        marker=dict(size=15, symbol="circle-open", color=INK, line=dict(width=3)),
                        hovertemplate=f"crossover b≈{co.x:.1f}, y={co.y:.3f}<extra></extra>")
    labelled.append(len(fig.data))
    fig.add_scatter(x=[split, split], y=[0, 0.97], name=f"chosen split {split}", mode="lines+text",
                    text=["", f" chosen split {split} "], textposition=positions["log"][1], showlegend=False,
                    cliponaxis=False,
                    textfont=dict(size=13, color=SPLIT_COLOR), line=dict(color=SPLIT_COLOR, width=2, dash="dash"),
                    hoverinfo="skip")
    title, rule_line = "Information loss vs. inversion cost", ""
    if plan.rule.get("name") == "budget":
        title += " · budget rule"
        rule_line = f"split chosen by the budget rule: {_label(_rule_text(plan))}<br>"
    _style(fig, title, rule_line + "split b on a log₂ axis (THOR's fig. 3 uses a linear one: “linear b”)<br>"
           "curves interpolated linearly in b between candidates, as the crossover is", 500)
    sparse, ticks = _sparse_ticks(list(cands)), list(cands)
    fig.update_layout(hovermode="closest", margin=dict(t=150 if rule_line else 130, r=32),
                      legend=dict(y=1.0, yanchor="bottom"), updatemenus=[dict(
        type="buttons", direction="right", x=1, xanchor="right", y=0.1, yanchor="bottom", showactive=True,
        font=dict(size=11), bgcolor="white", pad=dict(r=0, t=0, b=0, l=0), buttons=[
            dict(label="log b", method="update",
                 args=[{"textposition": [p for p in positions["log"] if p]},
                       {"xaxis.type": "log", "xaxis.tickvals": ticks, "xaxis.ticktext": list(map(str, ticks)),
                        "xaxis.autorange": True}, labelled]),
            dict(label="linear b", method="update",
                 args=[{"textposition": [p for p in positions["linear"] if p]},
                       {"xaxis.type": "linear", "xaxis.tickvals": sparse,
                        "xaxis.ticktext": list(map(str, sparse)), "xaxis.autorange": True}, labelled]),
        ])])
    fig.update_xaxes(type="log", title_text="split dimension b", tickvals=ticks, ticktext=list(map(str, ticks)),
                     showspikes=True, spikemode="across", spikethickness=1, spikedash="dot", spikecolor="#adb5bd")
    fig.update_yaxes(range=[0, 1.05], title_text="fraction / normalized performance")
    return fig


def _layer_order(losses: pd.DataFrame) -> list[str]:
    """Layers in model order (first appearance in the losses)."""
    return list(dict.fromkeys(losses["layer"]))


def _loss_colorscale(thr: float) -> list:
    scale = [[0.0, "#eef4fb"], [thr, "#c6dbef"], [thr, _RAMP[0]]]
    n = len(_RAMP) - 1
    scale += [[thr + (1 - thr) * (i / n) ** 2, c] for i, c in enumerate(_RAMP) if i]
    return scale


#: Above this many layers the heatmap takes the page's whole width, the plan table below it.
STACK_LAYERS = 24
#: Pixels per layer row of the loss heatmap (A and G side by side, so ~150 factors are ~75 rows).
HEATMAP_ROW = 18


def _heatmap_needs_width(plan: Plan, losses: pd.DataFrame) -> bool:
    """Whether the heatmap gets the page's whole width (the plan table then below it): more than
    ``STACK_LAYERS`` layers, or names and candidates too wide for the ~560 px of the half-page card
    (about 6.5 px per character of the longest name, 28 px per candidate column in each of the two
    panels, 140 px of colour bar and margins)."""
    longest = max((len(str(name)) for name in losses["layer"]), default=0)
    return len(_layer_order(losses)) > STACK_LAYERS or 6.5 * longest + 56 * len(plan.candidates) + 140 > 560


def heatmap_figure(plan: Plan, losses: pd.DataFrame) -> go.Figure:
    """Loss of every factor at every candidate: one row per layer (model order), A's panel beside G's,
    each factor's planned split marked. The height grows with the layers, layer names are printed whole."""
    cands, thr = plan.candidates, _threshold(plan)
    cols = [str(b) for b in cands]
    layers = _layer_order(losses)
    rows = [_label(layer) for layer in layers]
    by_name = {lp.name: lp for lp in plan.layers}
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.025,
                        subplot_titles=("A (inputs)", "G (output gradients)"))
    for col, f in ((1, "a"), (2, "g")):
        part = losses[losses["factor"].astype(str).str.lower() == f].drop_duplicates("layer").set_index("layer")
        part = part.reindex(layers)  # a layer without this factor's row stays blank
        z = part[cols].to_numpy(dtype=float)
        dims = np.repeat(part["dim"].fillna(0).to_numpy(dtype=int)[:, None], len(cols), axis=1)
        fig.add_trace(go.Heatmap(
            z=z, x=cols, y=rows, customdata=dims, coloraxis="coloraxis", xgap=1, ygap=1, name=f"loss {f.upper()}",
            hovertemplate=f"%{{y}} · {f.upper()} (dim %{{customdata}})<br>b = %{{x}}: loss %{{z:.2%}}<extra></extra>"),
            row=1, col=col)
        mx, my, text = [], [], []
        for layer, label, dim in zip(layers, rows, part["dim"]):
            lp = by_name.get(layer)
            if lp is None or not np.isfinite(dim):
                continue
            split, loss = (lp.a_split, lp.a_loss) if f == "a" else (lp.g_split, lp.g_loss)
            mx.append(next((b for b in cols if int(b) >= min(split, int(dim))), cols[-1])), my.append(label)
            text.append(f"split {split}{' (whole factor)' if split >= dim else ''}, loss {loss:.2%}")
        fig.add_trace(go.Scatter(
            x=mx, y=my, mode="markers", name="planned split of the factor", text=text, showlegend=False,
            marker=dict(symbol="diamond", size=9, color=SPLIT_COLOR, line=dict(color="white", width=1)),
            hovertemplate=f"%{{y}} · {f.upper()}<br>%{{text}}<extra>planned</extra>"), row=1, col=col)
    height = max(380, HEATMAP_ROW * len(rows) + 200)
    _style(fig, "Information loss per factor", f"loss = 1 − λmax(block-diagonal) / λmax(full) · pale blue: "
           f"below {thr:.0%}<br>◆ planned split (global {plan.split_dim}, smaller where already lossless, "
           "capped at the factor's dimension)", height)
    fig.update_layout(margin=dict(t=175, b=30, r=16),  # the subtitle explains the ◆: no legend over the ticks
                      coloraxis=dict(cmin=0, cmax=1, colorscale=_loss_colorscale(thr), colorbar=dict(
                          title=dict(text="loss", side="top"), thickness=14, len=min(1.0, 420 / (height - 205)),
                          y=1, yanchor="top", tickvals=[thr, 0.1, 0.25, 0.5, 1], tickformat=".0%")))
    fig.for_each_annotation(lambda a: a.update(font=dict(size=13, color=INK), yshift=30))  # above the ticks
    fig.update_xaxes(type="category", side="top", range=[-0.5, len(cols) - 0.5], tickangle=0,
                     tickfont=dict(size=10), title_text="split b", title_standoff=4, title_font=dict(size=11))
    fig.update_yaxes(type="category", range=[len(rows) - 0.5, -0.5], tickfont=dict(size=11), automargin=True)
    fig.update_yaxes(showticklabels=False, row=1, col=2)
    return fig


def timing_figure(plan: Plan, timings: pd.DataFrame) -> go.Figure:
    """Median inversion time of the whole network's blocks at each candidate, min–max error bars."""
    t = timings.sort_values("candidate")
    fig = go.Figure()
    for predicted in (False, True):
        part = t[t["predicted"].astype(bool) == predicted]
        if part.empty:
            continue
        med = part["median_s"].to_numpy(float)
        custom = np.column_stack([part["repeats"].astype(int), part["blocks"].astype(str), part["gflop"],
                                  part["gflop"].to_numpy(float) / med, part["min_s"], part["max_s"]])
        fig.add_scatter(
            x=part["candidate"].tolist(), y=med.tolist(), customdata=custom, mode="lines+markers",
            name="predicted (not measured)" if predicted else "measured median (bars: min–max)",
            line=dict(color=INK if not predicted else "#8d99ae", width=2.5, dash="dash" if predicted else "solid"),
            marker=dict(size=9, symbol="circle-open" if predicted else "circle", line=dict(width=2)),
            error_y=dict(type="data", symmetric=False, array=(part["max_s"].to_numpy(float) - med).tolist(),
                         arrayminus=(med - part["min_s"].to_numpy(float)).tolist(), thickness=1.5, width=5),
            hovertemplate=("b = %{x}" + (" · <b>predicted</b>" if predicted else "") +
                           "<br>median %{y:.3g} s (min %{customdata[4]:.3g}, max %{customdata[5]:.3g})"
                           "<br>%{customdata[0]} repeats · blocks %{customdata[1]}"
                           "<br>%{customdata[2]:.3g} GFLOP · %{customdata[3]:.3g} GFLOP/s<extra></extra>"))
    chosen = t[t["candidate"] == plan.split_dim]
    if not chosen.empty:
        fig.add_scatter(x=[plan.split_dim], y=[float(chosen["median_s"].iloc[0])], mode="markers+text",
                        name=f"chosen split {plan.split_dim}", text=[f"chosen split {plan.split_dim}"],
                        textposition="top left" if _position(list(plan.candidates), plan.split_dim) > 0.3
                        else "top right", textfont=dict(color=SPLIT_COLOR), hoverinfo="skip", cliponaxis=False,
                        marker=dict(size=18, symbol="star", color=SPLIT_COLOR, line=dict(color="white", width=1)))
    dev = plan.device
    sub = " · ".join(_label(v) for v in (dev.get("name") or dev.get("type"), dev.get("backend"), dev.get("dtype")) if v)
    _style(fig, "Inversion time of the whole network", f"{sub}<br>all blocks of all factors, batched by "
           "size as the runtime inverts them · log–log", 500)
    fig.update_layout(margin=dict(t=135))
    fig.update_xaxes(type="log", tickvals=list(plan.candidates), title_text="split dimension b")
    lo, hi = t[["min_s", "median_s"]].min().min(), t[["max_s", "median_s"]].max().max()
    decades = [10.0 ** e for e in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)] if len(t) else []
    fig.update_yaxes(type="log", title_text="time to invert all blocks", tickvals=decades,
                     ticktext=[_seconds(d) for d in decades])
    return fig


def figures(plan: Plan, losses: pd.DataFrame, timings: pd.DataFrame) -> dict[str, go.Figure]:
    """The report's figures: ``curves`` (THOR fig. 3), ``heatmap`` (per-factor loss), ``timing``."""
    return {"curves": curves_figure(plan), "heatmap": heatmap_figure(plan, losses),
            "timing": timing_figure(plan, timings)}


def build_report(plan: Plan, losses: pd.DataFrame, timings: pd.DataFrame) -> str:
    """One self-contained HTML page: summary, warning, figures, plan table and provenance."""
    figs = figures(plan, losses, timings)
    divs = {key: pio.to_html(figs[key], include_plotlyjs=(i == 0), full_html=False, config=CONFIG,
                             div_id=f"fig-{key}") for i, key in enumerate(("curves", "timing", "heatmap"))}
    model, dtype = plan.model.get("name", "model"), plan.device.get("type", "device")
    title = f"thor-plan report — {model} on {dtype}"
    co = plan.crossover
    summary = [f"Global split <b>{plan.split_dim}</b>", f"{len(plan.layers)} layers preconditioned",
               f"{len(plan.skipped)} skipped", f"rule {_esc(_rule_text(plan))}"]
    if co.x is not None:
        summary.append(f"curves cross at b≈{co.x:.0f}")
    warning = _warnings(plan)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>
<h1>{_esc(title)}</h1>
<p class="summary">{" · ".join(summary)}</p>
{warning}{_stats(plan)}
<div class="grid"><div class="card">{divs["curves"]}</div><div class="card">{divs["timing"]}</div></div>
<div class="{"split stack" if _heatmap_needs_width(plan, losses) else "split"}"><div class="card">{divs["heatmap"]}</div>
<div class="card"><h2>Plan: split per layer and factor</h2><p class="muted">Loss at the planned split;
red = at or above the {_threshold(plan):.0%} threshold; <span class="tag">full</span> = the whole factor is
inverted.</p><div class="scroll">{plan_table(plan)}</div>
<h2 style="margin-top:18px">Skipped layers</h2>{skipped_table(plan)}</div></div>
<h2>Provenance</h2>{provenance(plan)}
<footer>Generated by thor-plan {_esc(plan.tool_version or "")} · {_esc(plan.created or "")} ·
self-contained page (plotly.js embedded, works offline).</footer>
</main><script>document.querySelectorAll(".plotly-graph-div").forEach(function (d) {{ Plotly.Plots.resize(d); }});</script></body></html>
"""


def write_report(path: str | Path, plan: Plan, losses: pd.DataFrame, timings: pd.DataFrame) -> Path:
    """Write the HTML report atomically (a temporary file renamed into place)."""
    return atomic_write_text(path, build_report(plan, losses, timings))
