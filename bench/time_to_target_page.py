"""The time-to-target benchmark's page: AlgoPerf's performance profile across workloads, the
validation metric against training seconds of each optimizer's best trial per workload, and the
step times; one self-contained HTML file (plotly.js embedded)."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from thor_planner.utils.atomic import atomic_write_text

COLORS = {"thor-eigen": "#d62828", "thor": "#f77f00", "thor-128": "#fcbf49", "kfac": "#eae2b7", "adamw": "#003049",
          "sgd": "#669bbc", "muon": "#2a9d8f", "soap": "#8338ec", "shampoo": "#3a86ff", "kfac-pytorch": "#8d99ae",
          "lamb": "#6c757d", "mlbfgs": "#adb5bd"}


def profile_figure(data: dict) -> go.Figure:
    fig = go.Figure()
    prof = data.get("performance_profile")
    for name, rho in (prof or {}).get("rho", {}).items():
        fig.add_scatter(x=prof["taus"], y=rho, mode="lines", name=name, line=dict(color=COLORS.get(name), width=2.5))
    fig.update_layout(title="Performance profile: fraction of workloads reached within τ × the fastest",
                      xaxis_title="τ", yaxis_title="ρ(τ)", template="plotly_white", height=420)
    fig.update_xaxes(type="log" if prof and prof.get("scale") == "log" else "linear")
    return fig


def _best_trial(r: dict, direction: str) -> dict | None:
    trials = [t for t in r.get("trial_records", []) if t["curve"]]
    if not trials:
        return None
    reached = [t for t in trials if t["seconds_to_target"] is not None]
    if reached:
        return min(reached, key=lambda t: t["seconds_to_target"])
    return (min if direction == "min" else max)(trials, key=lambda t: t["best"] if t["best"] is not None else
                                                     (float("inf") if direction == "min" else -float("inf")))


def curves_figure(name: str, w: dict) -> go.Figure:
    fig = go.Figure()
    for opt, r in w["optimizers"].items():
        best = _best_trial(r, w["direction"])
        if best is None:
            continue
        steps, seconds, values = zip(*best["curve"])
        fig.add_scatter(x=list(seconds), y=list(values), mode="lines+markers", name=opt,
                        line=dict(color=COLORS.get(opt), width=2), marker=dict(size=5),
                        hovertemplate=opt + ": step %{customdata}<br>%{x:.1f} s · %{y:.4f}<extra></extra>",
                        customdata=list(steps))
    fig.add_hline(y=w["target"], line=dict(color="black", dash="dash"), annotation_text=f"target {w['target']:.4f}")
    fig.update_layout(title=f"{name}: {w['metric'].replace('_', ' ')} of each optimizer's best trial",
                      xaxis_title="training seconds (evaluation excluded)", yaxis_title=w["metric"].replace("_", " "),
                      template="plotly_white", height=420)
    return fig


def step_figure(data: dict) -> go.Figure:
    fig = go.Figure()
    for name, w in data["workloads"].items():
        if "optimizers" not in w:
            continue
        rows = [(o, r["ms_per_step"]) for o, r in w["optimizers"].items() if r.get("ms_per_step")]
        fig.add_bar(x=[o for o, _ in rows], y=[v for _, v in rows], name=name)
    fig.update_layout(title="Median training step (ms, over every trial)", barmode="group", template="plotly_white",
                      height=380, yaxis_title="ms per step")
    return fig


def write_page(path: Path, data: dict) -> Path:
    curves = [curves_figure(n, w) for n, w in data["workloads"].items() if "optimizers" in w]
    figs = [profile_figure(data), *curves, step_figure(data)]
    divs = [pio.to_html(f, include_plotlyjs=(i == 0), full_html=False) for i, f in enumerate(figs)]
    body = "\n".join(f'<div style="margin:18px 0">{d}</div>' for d in divs)
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Time to target</title></head>"
            f"<body style=\"font-family:system-ui;max-width:1100px;margin:auto\"><h1>Time to target</h1>"
            f"<p>{data['machine']} · <code>{data['command']}</code></p>{body}</body></html>\n")
    return atomic_write_text(path, page)


def main(argv: list[str] | None = None) -> None:
    """Render the page from a results JSON (the page is generated, not committed)."""
    import argparse
    import json

    here = Path(__file__).resolve().parent / "results"
    parser = argparse.ArgumentParser(description="The time-to-target page from its results JSON.")
    parser.add_argument("--name", default="time_to_target", help="results name (bench/results/NAME.json)")
    args = parser.parse_args(argv)
    source = here / f"{args.name}.json"
    if not source.exists():
        raise SystemExit(f"No results at {source}: run bench/time_to_target.py first")
    print(write_page(here / f"{args.name}.html", json.loads(source.read_text())))


if __name__ == "__main__":
    main()
