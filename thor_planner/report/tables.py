"""The report's text parts: number formats, the plan and skipped-layer tables, provenance, the
summary cards, the warnings and the page's CSS (the figures are in :mod:`report.html`)."""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from thor_planner.planning.plan import Plan
from thor_planner.targets import TARGETS

FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'


@dataclass(frozen=True)
class Terms:
    """The words the report uses for a plan's decision: THOR's split of factors, or a peer
    optimizer's block size of parameters."""

    split: str = "split"
    axis: str = "split dimension b"
    unit: str = "factors"
    cost: str = "inversion"


def terms(plan: Plan) -> Terms:
    if not plan.for_peer:
        return Terms()
    return Terms(split="block size", axis=f"block size b ({TARGETS[plan.optimizer].block_kwarg})",
                 unit="parameters", cost="refresh")


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
    if "fsdp" in r:
        extra.append(f"G tiles {r['fsdp']} FSDP shards")
    name = r.get("name", "?")
    if name == "auto":
        name = f"auto → {r.get('chose', 'crossover')}"
    return f"{name} ({', '.join(extra)})"


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _loss_cell(loss: float, thr: float) -> str:
    return f'<span class="{"bad" if loss >= thr else "ok"}">{loss:.2%}</span>'


def _split_cell(split: int, dim: int) -> str:
    return f'{split}<span class="tag">full</span>' if split >= dim else str(split)


def _untiled(lp) -> str:
    """The G split the FSDP constraint replaced, and its loss (nothing when it changed nothing)."""
    if lp.g_split_unconstrained is None:
        return ""
    return (f'<span class="tag">FSDP; was {lp.g_split_unconstrained}, loss {lp.g_loss_unconstrained:.2%}</span>')


def plan_table(plan: Plan) -> str:
    thr = _threshold(plan)
    rows = [[f"<code>{_esc(lp.name)}</code>", _esc(lp.kind), str(lp.a_dim), _split_cell(lp.a_split, lp.a_dim),
             _loss_cell(lp.a_loss, thr), str(lp.g_dim), _split_cell(lp.g_split, lp.g_dim) + _untiled(lp),
             _loss_cell(lp.g_loss, thr), f"{lp.omega1:g}", f"{lp.omega2:g}"] for lp in plan.layers]
    return _table(["layer", "kind", "A dim", "A split", "A loss", "G dim", "G split", "G loss", "ω1", "ω2"],
                  rows, "num")


def skipped_table(plan: Plan, heading: str = "layer (left to SGD-momentum)") -> str:
    if not plan.skipped:
        if plan.for_peer:
            return '<p class="muted">Nothing skipped: every parameter with a gradient is planned.</p>'
        return '<p class="muted">No layers skipped: every Conv2d / Linear layer is preconditioned.</p>'
    rows = [[f"<code>{_esc(s.get('name', '?'))}</code>", _esc(s.get("reason", ""))] for s in plan.skipped]
    return _table([heading, "reason"], rows, "wrap")


def _runs(positions: list[int], sizes: list[str]) -> str:
    """Consecutive positions in ``sizes`` as ranges: ``1–64, 2048``."""
    runs: list[list[int]] = []
    for i in positions:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f'<span class="nw">{_esc(sizes[r[0]])}{"" if len(r) == 1 else "–" + _esc(sizes[r[-1]])}</span>'
                     for r in runs)


def backend_groups(backends: dict) -> list[tuple[str, str]]:
    """Each backend once, with the block sizes it inverts as ranges over the sizes in order, as HTML
    (``[("torch-cholesky", "1–2048 (20 sizes)")]``, each range kept on one line)."""
    sizes = sorted(backends, key=lambda k: (not str(k).isdigit(), int(k) if str(k).isdigit() else 0, str(k)))
    names = [str(backends[k]) for k in sizes]
    labels = [str(k) for k in sizes]
    groups = []
    for name in dict.fromkeys(names):
        positions = [i for i, n in enumerate(names) if n == name]
        count = f" ({len(positions)} size{'s' if len(positions) > 1 else ''})"
        groups.append((name, _runs(positions, labels) + count))
    return groups


def _backend_text(device: dict) -> str:
    """The device's backend, and each backend of the per-size choice once with its block sizes."""
    groups = backend_groups(device["backends"]) if isinstance(device.get("backends"), dict) else []
    lines = [] if any(name == device.get("backend") for name, _ in groups) else [_esc(device.get("backend", "?"))]
    lines += [f"{_esc(name)}: block sizes {sizes}" for name, sizes in groups]
    return "<br>".join(lines)


def _dl(items: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _thor_plan_items(plan: Plan) -> list[tuple[str, str]]:
    """The provenance's plan card: the rule, THOR's schedule and the tool."""
    r, sched = plan.rule, plan.schedule
    return [("rule", _esc(_rule_text(plan)))] + [(k, _esc(v)) for k, v in r.items() if k not in (
        "name", "loss_threshold", "overhead", "interval", "step_seconds")] + [
        ("damping", f"{sched.damping_init:g} × {sched.damping_decay:g}^(t/{sched.damping_decay_steps})"),
        ("inverse interval", f"{sched.interval_initial} → {sched.interval_max} steps "
                             f"(×{sched.interval_growth:g} every {sched.interval_grow_every})"),
        ("ω1 / ω2", f"{sched.omega1:g} / {sched.omega2:g}"),
        ("tool version", _esc(plan.tool_version or "?")), ("created", _esc(plan.created or "?"))]


def provenance(plan: Plan, plan_items: list[tuple[str, str]] | None = None) -> str:
    """Model, data, device and plan cards (``plan_items``: the plan card's rows; default THOR's)."""
    m, d, c = plan.model, plan.device, plan.capture
    params = m.get("num_params")
    data = _esc(c.get("data", "?"))
    if str(c.get("data", "")).startswith("synthetic"):
        data += ' <span class="pill warn">synthetic data — not the model\'s real inputs</span>'
    backend = _backend_text(d)
    dev_name = _esc(d.get("name", "?"))
    if d.get("predicted"):
        dev_name += ' <span class="pill warn">timings predicted, not measured on this device</span>'
    blocks = [
        ("Model", [("name", _esc(m.get("name", "?"))), ("source", _esc(m.get("source", "?"))),
                   ("parameters", f"{params:,}" if isinstance(params, int) else _esc(params))]),
        ("Data &amp; capture", [("data", data)] + [(k, _esc(c[k])) for k in
                                                   ("batches", "batch_size", "input_size", "input_shape", "fisher", "seed") if k in c]),
        ("Device", [("type", _esc(d.get("type", "?"))), ("name", dev_name), ("threads", _esc(d.get("threads", "?"))),
                    ("torch", _esc(d.get("torch", "?"))), ("cuda", _esc(d.get("cuda") or "–")),
                    ("backend", backend), ("dtype", _esc(d.get("dtype", "?")))]),
        ("Plan", plan_items if plan_items is not None else _thor_plan_items(plan)),
    ]
    return '<div class="prov">' + "".join(f'<div class="card"><h3>{h}</h3>{_dl(items)}</div>'
                                          for h, items in blocks) + "</div>"


def _crossing_text(plan: Plan) -> tuple[str, str]:
    """The crossover card: where the curves cross (whatever the rule) and how sure that is."""
    co = plan.crossover
    if co.x is None:
        return "none", "the curves do not cross"
    sub = [f"at y = {co.y:.2f}"] if co.y is not None else []
    if co.interval is not None and f"{co.interval[0]:.0f}" != f"{co.interval[1]:.0f}":
        sub.append(f"interval b≈{co.interval[0]:.0f}–{co.interval[1]:.0f}")
    if co.spans and len(co.spans) > 1:
        sub.append(f"spans {', '.join(map(str, co.spans))}")
    if plan.rule.get("name") != "crossover":
        sub.append(f"not used by the {_esc(plan.rule.get('name', '?'))} rule")
    return f"b≈{co.x:.0f}", " · ".join(sub)


def _stats(plan: Plan) -> str:
    cands, secs, frac = plan.candidates, plan.curves["inversion_seconds"], plan.curves["loss_fraction"]
    i = cands.index(plan.split_dim) if plan.split_dim in cands else None
    items = [("global split", str(plan.split_dim), f"rule {_esc(_rule_text(plan))}"),
             ("curves cross", *_crossing_text(plan))]
    if i is not None:
        ratio = secs[i] / secs[0] if secs[0] > 0 else float("nan")
        factors = 2 * len(plan.layers)
        below = round(frac[i] * factors)
        items += [("inversion at split", _seconds(secs[i]), f"{ratio:,.0f}× the time at b = {cands[0]}" if ratio >= 100 else f"{ratio:.1f}× the time at b = {cands[0]}"),
                  (f"factors with loss &lt; {_threshold(plan):.0%}", f"{below} of {factors}",
                   f"{frac[i]:.0%} of the factors at b = {plan.split_dim}")]
        if "per_step_seconds" in plan.curves:
            items.append(("per-step work at split", _seconds(plan.curves["per_step_seconds"][i]),
                          "above the cheapest split: blocks applied every step, captured every factor step"))
    items.append(("layers", str(len(plan.layers)), f"{len(plan.skipped)} skipped"))
    return '<div class="stats">' + "".join(f'<div class="stat"><div class="k">{k}</div><div class="v">{v}</div>'
                                           f'<div class="s">{s}</div></div>' for k, v, s in items) + "</div>"


def _warnings(plan: Plan) -> str:
    texts = [plan.crossover.warning] if plan.crossover.warning else []
    if plan.crossover.tie_break:
        texts.append(f"The crossover is uncertain: {plan.crossover.tie_break}.")
    busy = plan.device.get("busy")
    if isinstance(busy, dict) and busy.get("busy") and busy.get("warning"):
        texts.append(str(busy["warning"]))
    return "".join(f'<div class="warning"><b>⚠ Warning.</b> {_esc(t)}</div>' for t in texts)


CSS = """
*{box-sizing:border-box}body{margin:0;background:#f4f5f7;color:#2b2d42;font:14px/1.45 %s}
main{max-width:1480px;margin:0 auto;padding:24px 28px 48px}h1{font-size:24px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 10px}h3{font-size:13px;margin:0 0 8px;text-transform:uppercase;letter-spacing:.05em;color:#6c757d}
.summary{font-size:15px;color:#495057;margin:0 0 14px}.muted{color:#6c757d}
.warning{background:#fff4e5;border:1px solid #ffb74d;border-left:6px solid #f57c00;border-radius:8px;padding:12px 16px;margin:0 0 16px;font-size:14.5px}
.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 16px;min-width:0}
.grid{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:16px;margin:0 0 16px}
.split{display:grid;grid-template-columns:minmax(0,5fr) minmax(0,6fr);gap:16px;margin:0 0 16px;align-items:start}
.split.stack{grid-template-columns:minmax(0,1fr)}
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
.scroll{overflow-x:auto}.nw{white-space:nowrap}table.wrap td{white-space:normal;overflow-wrap:anywhere}table.wrap td:first-child{white-space:nowrap}footer{margin-top:24px;color:#868e96;font-size:12px}
""" % FONT
