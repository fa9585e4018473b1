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

from thor_planner.planning.plan import Plan
from thor_planner.report.curves import SplitAxis, curves_figure
from thor_planner.report.heatmap import heatmap_figure, heatmap_needs_width
from thor_planner.report.style import CONFIG, INK, SPLIT_COLOR, style
from thor_planner.report.peer import parameter_table, peer_heatmap_figure, peer_plan_items, peer_stats
from thor_planner.report.tables import (CSS, _esc, _label, _rule_text, _seconds, _stats, _threshold, _warnings,
                                        plan_table, provenance, skipped_table, terms)
from thor_planner.targets import TARGETS
from thor_planner.utils.atomic import atomic_write_text

__all__ = ["CONFIG", "CSS", "build_report", "figures", "plan_table", "provenance", "timing_figure", "write_report"]


def _family_trace(fig: go.Figure, family: str, rows: pd.DataFrame) -> None:
    """Another preconditioner family's refresh, timed for comparison (dotted)."""
    rows = rows.sort_values("candidate")
    fig.add_scatter(x=rows["candidate"].tolist(), y=rows["median_s"].astype(float).tolist(), mode="lines+markers",
                    name=f"{family} family (compared)", line=dict(color="#8d99ae", width=2, dash="dot"),
                    marker=dict(size=7, symbol="diamond"),
                    hovertemplate=f"{family}: b = %{{x}}<br>median %{{y:.3g}} s<extra></extra>")


def timing_figure(plan: Plan, timings: pd.DataFrame) -> go.Figure:
    """Median refresh time of the whole network's blocks at each candidate (a THOR plan: its family's, others
    timed for comparison as dotted lines; a peer plan: the peer's refresh), min–max error bars."""
    everything = timings
    if "family" in timings.columns:
        timings = everything[everything["family"] == plan.family]
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
                        name=f"chosen {terms(plan).split} {plan.split_dim}",
                        text=[f"chosen {terms(plan).split} {plan.split_dim}"],
                        textposition="top left" if SplitAxis.of("log", list(plan.candidates)).frac(plan.split_dim) > 0.3
                        else "top right", textfont=dict(color=SPLIT_COLOR), hoverinfo="skip", cliponaxis=False,
                        marker=dict(size=18, symbol="star", color=SPLIT_COLOR, line=dict(color="white", width=1)))
    if "family" in everything.columns:
        for family, rows in everything[everything["family"] != plan.family].groupby("family"):
            _family_trace(fig, str(family), rows)
        t = everything
    dev = plan.device
    sub = " · ".join(_label(v) for v in (dev.get("name") or dev.get("type"), dev.get("backend"), dev.get("dtype")) if v)
    if plan.for_peer:
        style(fig, "Refresh time of the whole network", f"{sub}<br>every statistic of every block, one matrix at a "
              f"time as {_label(TARGETS[plan.optimizer].title)} refreshes them · log–log", 500)
    else:
        what = "Inversion time" if plan.family == "inverse" else f"Refresh time ({plan.family} family)"
        style(fig, f"{what} of the whole network", f"{sub}<br>all blocks of all factors, batched by "
              "size as the runtime refreshes them · log–log", 500)
    fig.update_layout(margin=dict(t=135))
    fig.update_xaxes(type="log", tickvals=list(plan.candidates), title_text=terms(plan).axis)
    lo, hi = t[["min_s", "median_s"]].min().min(), t[["max_s", "median_s"]].max().max()
    decades = [10.0 ** e for e in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)] if len(t) else []
    fig.update_yaxes(type="log", title_text="time of one refresh" if plan.for_peer else "time to invert all blocks",
                     tickvals=decades,
                     ticktext=[_seconds(d) for d in decades])
    return fig


def figures(plan: Plan, losses: pd.DataFrame, timings: pd.DataFrame) -> dict[str, go.Figure]:
    """The report's figures: ``curves`` (THOR fig. 3), ``heatmap`` (per-factor loss; a peer plan:
    per-parameter), ``timing``."""
    heatmap = peer_heatmap_figure(plan, losses) if plan.for_peer else heatmap_figure(plan, losses)
    return {"curves": curves_figure(plan), "heatmap": heatmap,
            "timing": timing_figure(plan, timings)}


def _thor_sections(plan: Plan, losses: pd.DataFrame) -> dict[str, str]:
    summary = [f"Global split <b>{plan.split_dim}</b>", f"{len(plan.layers)} layers preconditioned",
               f"{len(plan.skipped)} skipped", f"rule {_esc(_rule_text(plan))}"]
    table = f"""<h2>Plan: split per layer and factor</h2><p class="muted">Loss at the planned split;
red = at or above the {_threshold(plan):.0%} threshold; <span class="tag">full</span> = the whole factor is
inverted.</p><div class="scroll">{plan_table(plan)}</div>
<h2 style="margin-top:18px">Skipped layers</h2>{skipped_table(plan)}"""
    return {"title": "", "summary": summary, "stats": _stats(plan), "table": table, "provenance": provenance(plan),
            "layout": "split stack" if heatmap_needs_width(plan, losses) else "split"}


def _peer_sections(plan: Plan) -> dict[str, str]:
    target = TARGETS[plan.optimizer]
    summary = [f"{_esc(target.title)}: <b>{target.block_kwarg}={plan.block_size}</b>, "
               f"<b>{target.interval_kwarg}={plan.refresh_interval}</b>",
               f"{len(plan.parameters)} parameters", f"{len(plan.skipped)} skipped", f"rule {_esc(_rule_text(plan))}"]
    table = f"""<h2>Plan: how {_esc(target.title)} cuts each parameter</h2><p class="muted">Blocks and loss at the
planned block size {plan.block_size}; red = at or above the {_threshold(plan):.0%} threshold.</p>
<div class="scroll">{parameter_table(plan)}</div>
<h2 style="margin-top:18px">Skipped parameters</h2>{skipped_table(plan, "parameter (not preconditioned)")}"""
    return {"title": f" — plan for {target.title}", "summary": summary, "stats": peer_stats(plan), "table": table,
            "provenance": provenance(plan, peer_plan_items(plan)), "layout": "split stack"}


def build_report(plan: Plan, losses: pd.DataFrame, timings: pd.DataFrame) -> str:
    """One self-contained HTML page: summary, warning, figures, plan table and provenance."""
    figs = figures(plan, losses, timings)
    divs = {key: pio.to_html(figs[key], include_plotlyjs=(i == 0), full_html=False, config=CONFIG,
                             div_id=f"fig-{key}") for i, key in enumerate(("curves", "timing", "heatmap"))}
    model, dtype = plan.model.get("name", "model"), plan.device.get("type", "device")
    parts = _peer_sections(plan) if plan.for_peer else _thor_sections(plan, losses)
    title = f"thor-plan report — {model} on {dtype}{parts['title']}"
    summary = parts["summary"] + ([f"curves cross at b≈{plan.crossover.x:.0f}"] if plan.crossover.x is not None else [])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>
<h1>{_esc(title)}</h1>
<p class="summary">{" · ".join(summary)}</p>
{_warnings(plan)}{parts["stats"]}
<div class="grid"><div class="card">{divs["curves"]}</div><div class="card">{divs["timing"]}</div></div>
<div class="{parts["layout"]}"><div class="card">{divs["heatmap"]}</div>
<div class="card">{parts["table"]}</div></div>
<h2>Provenance</h2>{parts["provenance"]}
<footer>Generated by thor-plan {_esc(plan.tool_version or "")} · {_esc(plan.created or "")} ·
self-contained page (plotly.js embedded, works offline).</footer>
</main><script>document.querySelectorAll(".plotly-graph-div").forEach(function (d) {{ Plotly.Plots.resize(d); }});</script></body></html>
"""


def write_report(path: str | Path, plan: Plan, losses: pd.DataFrame, timings: pd.DataFrame) -> Path:
    """Write the HTML report atomically (a temporary file renamed into place)."""
    return atomic_write_text(path, build_report(plan, losses, timings))
