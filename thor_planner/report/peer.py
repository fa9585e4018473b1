"""The report's parts for a plan made for a peer optimizer (Distributed Shampoo, SOAP): the
per-parameter loss heatmap, the parameter table, the summary cards and the plan's provenance card.
The curves and the timing figure are THOR's, in the peer's words (:func:`.tables.terms`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from thor_planner.planning.plan import Plan
from thor_planner.report.heatmap import HEATMAP_ROW, _loss_colorscale
from thor_planner.report.style import INK, SPLIT_COLOR, style
from thor_planner.report.tables import (_crossing_text, _esc, _label, _loss_cell, _rule_text, _seconds, _table,
                                        _threshold)
from thor_planner.targets import TARGETS


def peer_heatmap_figure(plan: Plan, losses: pd.DataFrame) -> go.Figure:
    """Loss of every parameter at every candidate block size, one row per parameter (model order),
    the planned block size marked; the block-size labels above and below."""
    cols = [str(b) for b in plan.candidates]
    names = [str(n) for n in losses["parameter"]]
    labels = [_label(n) for n in names]
    shapes = losses["shape"].fillna("").astype(str).tolist()
    fig = go.Figure(go.Heatmap(
        z=losses[cols].to_numpy(dtype=float), x=cols, y=labels, coloraxis="coloraxis", xgap=1, ygap=1,
        customdata=np.repeat(np.array(shapes, dtype=object)[:, None], len(cols), axis=1), name="loss",
        hovertemplate="%{y} (%{customdata})<br>b = %{x}: loss %{z:.2%}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[str(plan.split_dim)] * len(labels), y=labels, mode="markers", showlegend=False,
        name="planned block size", marker=dict(symbol="diamond", size=9, color=SPLIT_COLOR,
                                               line=dict(color="white", width=1)),
        hovertemplate="%{y}<br>planned block size %{x}<extra>planned</extra>"))
    fig.add_trace(go.Scatter(x=cols, y=[labels[-1]] * len(cols), xaxis="x2", mode="markers", showlegend=False,
                             marker=dict(opacity=0), hoverinfo="skip", name="block-size labels"))
    thr = _threshold(plan)
    height = max(380, HEATMAP_ROW * len(labels) + 230)
    style(fig, "Information loss per parameter", f"loss = 1 − λmax(the blocks' Kronecker statistics) / λmax(the "
          f"unblocked one) · pale blue: below {thr:.0%}<br>◆ planned block size {plan.split_dim} "
          f"({_label(TARGETS[plan.optimizer].block_kwarg)})", height)
    axis = dict(type="category", tickangle=0, tickfont=dict(size=10), showgrid=False, range=[-0.5, len(cols) - 0.5],
                title=dict(text="block size b", standoff=4, font=dict(size=11)))
    fig.update_layout(
        margin=dict(t=175, b=60, r=16), xaxis=dict(side="top", **axis),
        xaxis2=dict(side="bottom", overlaying="x", anchor="y", **axis),
        yaxis=dict(type="category", range=[len(labels) - 0.5, -0.5], tickfont=dict(size=11), automargin=True),
        coloraxis=dict(cmin=0, cmax=1, colorscale=_loss_colorscale(thr), colorbar=dict(
            title=dict(text="loss", side="top"), thickness=14, y=1, yanchor="top", len=min(1.0, 420 / height),
            tickvals=[thr, 0.1, 0.25, 0.5, 1], tickformat=".0%")))
    fig.update_annotations(font=dict(color=INK))
    return fig


def parameter_table(plan: Plan) -> str:
    """One row per parameter: shape, how the optimizer cuts it at the planned block size, loss."""
    thr = _threshold(plan)
    rows = [[f"<code>{_esc(pp.name)}</code>", _esc("×".join(map(str, pp.shape)) or "scalar"), _esc(pp.blocks),
             _loss_cell(pp.loss, thr)] for pp in plan.parameters]
    return _table(["parameter", "shape", f"blocks at {plan.split_dim}", "loss"], rows, "num")


def peer_stats(plan: Plan) -> str:
    """The summary cards: block size, refresh interval, where the curves cross, the refresh at the
    block size, parameters below the threshold."""
    target = TARGETS[plan.optimizer]
    cands, secs, frac = plan.candidates, plan.curves["inversion_seconds"], plan.curves["loss_fraction"]
    i = cands.index(plan.split_dim)
    rule = plan.rule
    items = [("block size", str(plan.block_size), f"{target.block_kwarg} · rule {_esc(_rule_text(plan))}"),
             ("refresh interval", str(plan.refresh_interval),
              f"{target.interval_kwarg}: refresh {_seconds(secs[i])} within {float(rule['overhead']):.0%} of a "
              f"{_seconds(float(rule['step_seconds']))} step"),
             ("curves cross", *_crossing_text(plan)),
             (f"parameters with loss &lt; {_threshold(plan):.0%}", f"{round(frac[i] * len(plan.parameters))} of "
              f"{len(plan.parameters)}", f"{frac[i]:.0%} at b = {plan.split_dim}; {len(plan.skipped)} skipped")]
    return '<div class="stats">' + "".join(f'<div class="stat"><div class="k">{k}</div><div class="v">{v}</div>'
                                           f'<div class="s">{s}</div></div>' for k, v, s in items) + "</div>"


def peer_plan_items(plan: Plan) -> list[tuple[str, str]]:
    """The provenance's plan card for a peer plan: what to pass, what one refresh runs."""
    from thor_planner.planning.peers import constructor_text

    target = TARGETS[plan.optimizer]
    return [("rule", _esc(_rule_text(plan))), ("optimizer", _esc(f"{target.title} ({target.constructor})")),
            ("arguments", "<br>".join(f"<code>{_esc(line)}</code>" for line in constructor_text(plan)[1:])),
            ("refresh", _esc(target.refresh)), ("statistics", "each parameter's gradient on the captured batches "
                                                "(batch labels), averaged over them"),
            ("tool version", _esc(plan.tool_version or "?")), ("created", _esc(plan.created or "?"))]
