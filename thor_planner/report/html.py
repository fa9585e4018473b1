"""The plan report: THOR's figure 3 and the evidence behind every split, in one HTML page.

:func:`figures` turns a plan and its measurements into plotly figures (pure data in, figures out);
:func:`build_report` lays them out with the plan table and provenance in one self-contained page
(plotly.js embedded inline: it opens offline, no CDN, no external fonts); :func:`write_report` writes
that page atomically.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from thor_planner.utils.atomic import atomic_write_text
from thor_planner.planning.plan import Plan

FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
LOSS_COLOR, PERF_COLOR, SPLIT_COLOR, INK = "#1b9e77", "#d95f02", "#5e3c99", "#2b2d42"
CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg", "scale": 2}}
# Losses below the threshold in pale blues, then a perceptual ramp (YlOrRd) spread with a square law so
# that 1–10 % losses, the ones the decision hinges on, already look different from 50 %.
_RAMP = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#bd0026", "#800026"]


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _label(value) -> str:
    """Escape text for plotly labels (plotly reads ``<b>`` as markup but decodes ``&lt;``)."""
    return html.escape(str(value), quote=False)


def _seconds(s: float | None) -> str:
    if s is None or not np.isfinite(s):
        return "–"
    return f"{s * 1e6:.3g} µs" if s < 1e-3 else f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _threshold(plan: Plan) -> float:
    return float(plan.rule.get("loss_threshold", 0.01))


def _rule_text(plan: Plan) -> str:
    r = plan.rule
    extra = [f"loss < {_threshold(plan):.0%}"]
    if "overhead" in r:
        extra.append(f"overhead {float(r['overhead']):.0%}")
    if "interval" in r:
        extra.append(f"interval {r['interval']}")
    if "step_seconds" in r:
        extra.append(f"step {_seconds(float(r['step_seconds']))}")
    return f"{r.get('name', '?')} ({', '.join(extra)})"


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


def curves_figure(plan: Plan) -> go.Figure:
    """THOR's figure 3: loss fraction rising, normalized performance falling, on a linear split axis."""
    cands, curves, co, split = plan.candidates, plan.curves, plan.crossover, plan.split_dim
    secs, thr = curves["inversion_seconds"], _threshold(plan)
    fig = go.Figure()
    for key, name, color, fmt in (
        ("loss_fraction", f"fraction of factors with loss < {thr:.0%}", LOSS_COLOR, ".1%"),
        ("normalized_perf", "normalized performance p₁/p_b", PERF_COLOR, ".3f"),
    ):
        fig.add_scatter(x=list(cands), y=list(curves[key]), name=name, mode="lines+markers",
                        customdata=list(secs), line=dict(color=color, width=3), marker=dict(size=8),
                        hovertemplate=f"%{{y:{fmt}}} · inversion %{{customdata:.3g}} s<extra>{name}</extra>")
    if co.x is not None and co.y is not None:
        fig.add_scatter(x=[co.x], y=[co.y], name="crossover", mode="markers+text", showlegend=False,
                        text=[f"crossover at b≈{co.x:.0f}"], textposition="middle right",
                        textfont=dict(size=13, color=INK),
                        marker=dict(size=15, symbol="circle-open", color=INK, line=dict(width=3)),
                        hovertemplate=f"crossover b≈{co.x:.1f}, y={co.y:.3f}<extra></extra>")
    fig.add_scatter(x=[split, split], y=[0, 0.97], name=f"chosen split {split}", mode="lines+text",
                    text=["", f" chosen split {split}"], textposition="middle right", showlegend=False,
                    textfont=dict(size=13, color=SPLIT_COLOR), line=dict(color=SPLIT_COLOR, width=2, dash="dash"),
                    hoverinfo="skip")
    title, rule_line = "Information loss vs. inversion cost", ""
    if plan.rule.get("name") == "budget":
        title += " · budget rule"
        rule_line = f"split chosen by the budget rule: {_label(_rule_text(plan))}<br>"
    _style(fig, title, rule_line + "THOR fig. 3 · split b on a linear axis, as in the paper<br>candidates "
           f"{cands[0]}…{cands[min(3, len(cands) - 1)]} bunch near 0: hover them, or switch to “log b”", 500)
    sparse = _sparse_ticks(list(cands))
    fig.update_layout(hovermode="x unified", margin=dict(t=150 if rule_line else 130), legend=dict(y=1.0, yanchor="bottom"),
                      updatemenus=[dict(
        type="buttons", direction="right", x=1, xanchor="right", y=0.1, yanchor="bottom", showactive=True,
        font=dict(size=11), bgcolor="white", pad=dict(r=0, t=0, b=0, l=0), buttons=[
            dict(label="linear b", method="relayout",
                 args=[{"xaxis.type": "linear", "xaxis.tickvals": sparse, "xaxis.autorange": True}]),
            dict(label="log b", method="relayout",
                 args=[{"xaxis.type": "log", "xaxis.tickvals": list(cands), "xaxis.autorange": True}]),
        ])])
    fig.update_xaxes(title_text="split dimension b", tickvals=sparse, showspikes=True,
                     spikemode="across", spikethickness=1, spikedash="dot", spikecolor="#adb5bd")
    fig.update_yaxes(range=[0, 1.05], title_text="fraction / normalized performance")
    return fig


def _ordered_factors(losses: pd.DataFrame) -> pd.DataFrame:
    """Factors in model order (first appearance of each layer), A before G."""
    order = {name: i for i, name in enumerate(dict.fromkeys(losses["layer"]))}
    key = losses["layer"].map(order) * 2 + (losses["factor"] != "a").astype(int)
    return losses.iloc[np.argsort(key.to_numpy(), kind="stable")]


def _loss_colorscale(thr: float) -> list:
    scale = [[0.0, "#eef4fb"], [thr, "#c6dbef"], [thr, _RAMP[0]]]
    n = len(_RAMP) - 1
    scale += [[thr + (1 - thr) * (i / n) ** 2, c] for i, c in enumerate(_RAMP) if i]
    return scale


def heatmap_figure(plan: Plan, losses: pd.DataFrame) -> go.Figure:
    """Loss of every factor at every candidate, with each factor's planned split marked."""
    cands, thr = plan.candidates, _threshold(plan)
    cols = [str(b) for b in cands]
    df = _ordered_factors(losses)
    rows = [f"{_label(layer)} · {str(f).upper()}" for layer, f in zip(df["layer"], df["factor"])]
    z = df[cols].to_numpy(dtype=float)
    dims = np.repeat(df["dim"].to_numpy(dtype=int)[:, None], len(cols), axis=1)
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=rows, customdata=dims, zmin=0, zmax=1, colorscale=_loss_colorscale(thr),
        xgap=1, ygap=1, name="loss", hovertemplate="%{y} (dim %{customdata})<br>b = %{x}: loss "
        "%{z:.2%}<extra></extra>", colorbar=dict(
            title=dict(text="loss", side="top"), thickness=14, len=min(1.0, 420 / max(len(rows) * 16, 1)),
            y=1, yanchor="top", tickvals=[thr, 0.1, 0.25, 0.5, 1], tickformat=".0%")))
    by_name = {lp.name: lp for lp in plan.layers}
    mx, my, text = [], [], []
    for layer, f, dim, label in zip(df["layer"], df["factor"], df["dim"], rows):
        lp = by_name.get(layer)
        if lp is None:
            continue
        split, loss = (lp.a_split, lp.a_loss) if f == "a" else (lp.g_split, lp.g_loss)
        col = next((b for b in cands if b >= min(split, int(dim))), cands[-1])
        mx.append(str(col)), my.append(label)
        text.append(f"split {split}{' (whole factor)' if split >= dim else ''}, loss {loss:.2%}")
    fig.add_scatter(x=mx, y=my, mode="markers", name="planned split of the factor", text=text,
                    marker=dict(symbol="diamond", size=9, color=SPLIT_COLOR, line=dict(color="white", width=1)),
                    hovertemplate="%{y}<br>%{text}<extra>planned</extra>")
    _style(fig, "Information loss per factor", f"loss = 1 − λmax(block-diagonal) / λmax(full) · pale blue: "
           f"below {thr:.0%}<br>◆ planned split (global {plan.split_dim}, smaller where already lossless, "
           "capped at the factor's dimension)",
           max(380, 16 * len(rows) + 170))
    fig.update_layout(margin=dict(t=150, b=30), legend=dict(y=1.0, yanchor="bottom", x=0, xanchor="left"))
    fig.update_xaxes(type="category", side="top", title_text="split dimension b", title_standoff=6,
                     range=[-0.5, len(cols) - 0.5])
    fig.update_yaxes(type="category", range=[len(rows) - 0.5, -0.5], tickfont=dict(size=11))
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
                        textposition="top left", textfont=dict(color=SPLIT_COLOR), hoverinfo="skip",
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


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _loss_cell(loss: float, thr: float) -> str:
    return f'<span class="{"bad" if loss >= thr else "ok"}">{loss:.2%}</span>'


def _split_cell(split: int, dim: int) -> str:
    return f'{split}<span class="tag">full</span>' if split >= dim else str(split)


def plan_table(plan: Plan) -> str:
    thr = _threshold(plan)
    rows = [[f"<code>{_esc(lp.name)}</code>", _esc(lp.kind), str(lp.a_dim), _split_cell(lp.a_split, lp.a_dim),
             _loss_cell(lp.a_loss, thr), str(lp.g_dim), _split_cell(lp.g_split, lp.g_dim),
             _loss_cell(lp.g_loss, thr), f"{lp.omega1:g}", f"{lp.omega2:g}"] for lp in plan.layers]
    return _table(["layer", "kind", "A dim", "A split", "A loss", "G dim", "G split", "G loss", "ω1", "ω2"],
                  rows, "num")


def skipped_table(plan: Plan) -> str:
    if not plan.skipped:
        return '<p class="muted">No layers skipped: every Conv2d / Linear layer is preconditioned.</p>'
    rows = [[f"<code>{_esc(s.get('name', '?'))}</code>", _esc(s.get("reason", ""))] for s in plan.skipped]
    return _table(["layer (left to SGD-momentum)", "reason"], rows)


def _dl(items: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def provenance(plan: Plan) -> str:
    m, d, c, r = plan.model, plan.device, plan.capture, plan.rule
    params = m.get("num_params")
    data = _esc(c.get("data", "?"))
    if str(c.get("data", "")).startswith("synthetic"):
        data += ' <span class="pill warn">synthetic data — not the model\'s real inputs</span>'
    backend = _esc(d.get("backend", "?"))
    if isinstance(d.get("backends"), dict) and d["backends"]:
        backend += " (" + ", ".join(f"{_esc(k)}: {_esc(v)}" for k, v in d["backends"].items()) + ")"
    dev_name = _esc(d.get("name", "?"))
    if d.get("predicted"):
        dev_name += ' <span class="pill warn">timings predicted, not measured on this device</span>'
    sched = plan.schedule
    blocks = [
        ("Model", [("name", _esc(m.get("name", "?"))), ("source", _esc(m.get("source", "?"))),
                   ("parameters", f"{params:,}" if isinstance(params, int) else _esc(params))]),
        ("Data &amp; capture", [("data", data)] + [(k, _esc(c[k])) for k in
                                                   ("batches", "batch_size", "input_size", "fisher", "seed") if k in c]),
        ("Device", [("type", _esc(d.get("type", "?"))), ("name", dev_name), ("threads", _esc(d.get("threads", "?"))),
                    ("torch", _esc(d.get("torch", "?"))), ("cuda", _esc(d.get("cuda") or "–")),
                    ("backend", backend), ("dtype", _esc(d.get("dtype", "?")))]),
        ("Plan", [("rule", _esc(_rule_text(plan)))] + [(k, _esc(v)) for k, v in r.items() if k not in (
            "name", "loss_threshold", "overhead", "interval", "step_seconds")] + [
            ("damping", f"{sched.damping_init:g} × {sched.damping_decay:g}^(t/{sched.damping_decay_steps})"),
            ("inverse interval", f"{sched.interval_initial} → {sched.interval_max} steps "
                                 f"(×{sched.interval_growth:g} every {sched.interval_grow_every})"),
            ("ω1 / ω2", f"{sched.omega1:g} / {sched.omega2:g}"),
            ("tool version", _esc(plan.tool_version or "?")), ("created", _esc(plan.created or "?"))]),
    ]
    return '<div class="prov">' + "".join(f'<div class="card"><h3>{h}</h3>{_dl(items)}</div>'
                                          for h, items in blocks) + "</div>"


def _stats(plan: Plan) -> str:
    cands, secs, frac = plan.candidates, plan.curves["inversion_seconds"], plan.curves["loss_fraction"]
    i = cands.index(plan.split_dim) if plan.split_dim in cands else None
    co = plan.crossover
    items = [("global split", str(plan.split_dim), f"rule {_esc(_rule_text(plan))}"),
             ("crossover", f"b≈{co.x:.0f}" if co.x is not None else "none",
              f"at y = {co.y:.2f}" if co.y is not None else "curves do not cross")]
    if i is not None:
        ratio = secs[i] / secs[0] if secs[0] > 0 else float("nan")
        items += [("inversion at split", _seconds(secs[i]), f"{ratio:.1f}× the time at b = {cands[0]}"),
                  (f"factors below {_threshold(plan):.0%}", f"{frac[i]:.0%}", f"at b = {plan.split_dim}")]
    items.append(("layers", str(len(plan.layers)), f"{len(plan.skipped)} skipped"))
    return '<div class="stats">' + "".join(f'<div class="stat"><div class="k">{k}</div><div class="v">{v}</div>'
                                           f'<div class="s">{s}</div></div>' for k, v, s in items) + "</div>"


CSS = """
*{box-sizing:border-box}body{margin:0;background:#f4f5f7;color:#2b2d42;font:14px/1.45 %s}
main{max-width:1480px;margin:0 auto;padding:24px 28px 48px}h1{font-size:24px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 10px}h3{font-size:13px;margin:0 0 8px;text-transform:uppercase;letter-spacing:.05em;color:#6c757d}
.summary{font-size:15px;color:#495057;margin:0 0 14px}.muted{color:#6c757d}
.warning{background:#fff4e5;border:1px solid #ffb74d;border-left:6px solid #f57c00;border-radius:8px;padding:12px 16px;margin:0 0 16px;font-size:14.5px}
.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 16px;min-width:0}
.grid{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:16px;margin:0 0 16px}
.split{display:grid;grid-template-columns:minmax(0,5fr) minmax(0,6fr);gap:16px;margin:0 0 16px;align-items:start}
@media (max-width:1100px){.grid,.split{grid-template-columns:minmax(0,1fr)}}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(180px,1fr));gap:12px;margin:0 0 16px}
.stat{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:10px 14px}
.stat .k{font-size:12px;color:#6c757d;text-transform:uppercase;letter-spacing:.05em}.stat .v{font-size:24px;font-weight:650}
.stat .s{font-size:12px;color:#6c757d}
table{border-collapse:collapse;width:100%%;font-size:12.5px}th,td{padding:3px 8px;border-bottom:1px solid #eceef1;text-align:left;white-space:nowrap}
thead th{position:sticky;top:0;background:#fff;border-bottom:2px solid #dee2e6}table.num td:nth-child(n+3){text-align:right;font-variant-numeric:tabular-nums}
tbody tr:hover{background:#f8f9fb}code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.bad{color:#c62828;font-weight:600}.ok{color:#2e7d32}.tag{font-size:10px;color:#6c757d;border:1px solid #ced4da;border-radius:4px;padding:0 3px;margin-left:4px}
.pill{display:inline-block;font-size:12px;border-radius:10px;padding:1px 8px;margin-left:6px}.warn{background:#fff4e5;color:#b45309;border:1px solid #ffb74d}
.prov{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:16px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0}dt{color:#6c757d}dd{margin:0;overflow-wrap:anywhere}
.scroll{overflow-x:auto}footer{margin-top:24px;color:#868e96;font-size:12px}
""" % FONT


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
        summary.append(f"crossover at b≈{co.x:.0f}")
    warning = f'<div class="warning"><b>⚠ Warning.</b> {_esc(co.warning)}</div>' if co.warning else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>
<h1>{_esc(title)}</h1>
<p class="summary">{" · ".join(summary)}</p>
{warning}{_stats(plan)}
<div class="grid"><div class="card">{divs["curves"]}</div><div class="card">{divs["timing"]}</div></div>
<div class="split"><div class="card">{divs["heatmap"]}</div>
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
