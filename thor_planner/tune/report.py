"""The tuning report and output folder.

:func:`study_figures` draws optuna's optimization history, parameter importances (fANOVA, seeded)
and parallel coordinates; :func:`build_tune_report` lays them out, with the best parameters, every
trial and, for ``thor``, the tuned plan's own figures (the plan report's curves, timing and loss
heatmap), in one self-contained page (plotly.js embedded once: it opens offline).
:func:`render_outputs` renders every file in memory and :func:`write_outputs` writes each atomically.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from thor_planner.report.html import CONFIG, CSS, figures as plan_figures, plan_table, provenance
from thor_planner.tune.tuner import UNREACHED_PENALTY, TuneResult
from thor_planner.utils.atomic import atomic_write_text

PLAN_JSON, REPORT_HTML, BEST_JSON = "plan.json", "report.html", "best.json"
STUDY_FIGURES = ("history", "importance", "parallel")


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _note_figure(title: str, note: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, template="plotly_white", height=360, xaxis_visible=False, yaxis_visible=False,
                      annotations=[dict(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")])
    return fig


def _log_value(trial) -> float:
    return math.log10(trial.value)


def study_figures(result: TuneResult) -> dict[str, go.Figure]:
    """optuna's figures for the study: ``history``, ``importance``, ``parallel``."""
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import plot_optimization_history, plot_parallel_coordinate, plot_param_importances

    study, name = result.study, "seconds to target (unreached: 1e6 + shortfall)"
    history = plot_optimization_history(study, target_name=name)
    history.update_yaxes(type="log")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    # importances and parallel coordinates on log10(value): reached trials spread out, unreached ones sit at ≥ 6
    log_name = "log10 seconds to target (unreached ≥ 6)"
    try:
        importance = plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=result.config.train.seed),
                                            target=_log_value, target_name=log_name)
    except (ImportError, RuntimeError, ValueError) as exc:  # sklearn missing, too few or identical trials
        importance = _note_figure("Hyperparameter Importances",
                                  f"Not available ({len(complete)} finished trials): {_esc(str(exc).splitlines()[0])}")
    parallel = plot_parallel_coordinate(study, target=_log_value, target_name=log_name)
    return {"history": history, "importance": importance, "parallel": parallel}


def _params_table(params: dict) -> str:
    rows = "".join(f"<tr><td><code>{_esc(k)}</code></td><td>{_esc(f'{v:.4g}' if isinstance(v, float) else v)}</td></tr>"
                   for k, v in params.items())
    return f'<table class="num"><thead><tr><th>parameter</th><th>best value</th></tr></thead><tbody>{rows}</tbody></table>'


def _trials_table(result: TuneResult) -> str:
    rows = []
    for t in result.study.get_trials(deepcopy=False):
        secs = t.user_attrs.get("target_seconds")
        acc = t.user_attrs.get("final", t.user_attrs.get("final_accuracy"))
        value = "–" if t.value is None else (f"{t.value:.3f}" if t.value < UNREACHED_PENALTY else
                                             f"1e6 + {t.value - UNREACHED_PENALTY:.4f}")
        rows.append(f"<tr><td>{t.number}</td><td>{t.state.name.lower()}</td><td>{value}</td>"
                    f"<td>{'–' if secs is None else f'{secs:.2f}'}</td><td>{'–' if acc is None else f'{acc:.4f}'}</td>"
                    f"<td>{_esc(t.user_attrs.get('split_dim', '–'))}</td></tr>")
    metric = result.config.train.task.metric.replace("_", " ")
    head = "".join(f"<th>{h}</th>" for h in ("trial", "state", "value", "s to target", f"final {metric}", "split"))
    return f'<table class="num"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def build_tune_report(result: TuneResult) -> str:
    cfg, best, counts, t = result.config, result.best, result.counts, result.config.train
    figs = study_figures(result)
    if result.plan is not None:
        figs.update(plan_figures(result.plan, result.measurements.losses, result.measurements.timings))
    divs = {key: pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False, config=CONFIG, div_id=f"fig-{key}")
            for i, (key, fig) in enumerate(figs.items())}
    title = f"thor-plan tuning — {cfg.study_name}"
    metric = t.task.metric.replace("_", " ")
    reached = (f"{result.best_seconds:.2f} s to {metric} {t.target:g}" if result.reached else
               f"no trial reached {metric} {t.target:g}; closest final {metric} {result.best_value:.4f}")
    budget = f"{t.steps} steps" if t.steps else f"{t.epochs} epochs"
    summary = [f"optimizer <b>{_esc(cfg.optimizer)}</b>", f"{t.model} on {t.data}",
               f"{counts['complete']} complete · {counts['pruned']} pruned · {counts['fail']} failed trials",
               f"best trial <b>{best.number}</b>: {reached}"]
    plan_part = ""
    if result.plan is not None:
        plan_part = f"""<h2>The tuned plan</h2>
<div class="grid"><div class="card">{divs["curves"]}</div><div class="card">{divs["timing"]}</div></div>
<div class="split"><div class="card">{divs["heatmap"]}</div>
<div class="card"><h2>Split per layer and factor</h2><div class="scroll">{plan_table(result.plan)}</div></div></div>
<h2>Provenance</h2>{provenance(result.plan)}"""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>
<h1>{_esc(title)}</h1>
<p class="summary">{" · ".join(summary)}</p>
<p class="muted">Objective (minimised): training seconds to {metric} {t.target:g} within {budget},
measured by the training loop of <code>thor-plan train</code>; a trial that never reaches it scores
1e6 + its final shortfall, after every trial that did. Storage <code>{_esc(cfg.storage)}</code>.</p>
<div class="grid"><div class="card">{divs["history"]}</div><div class="card">{divs["importance"]}</div></div>
<div class="card">{divs["parallel"]}</div>
<div class="split"><div class="card"><h2>Best parameters</h2>{_params_table(best.params)}</div>
<div class="card"><h2>Trials</h2><div class="scroll">{_trials_table(result)}</div></div></div>
{plan_part}
<footer>Generated by thor-plan · self-contained page (plotly.js embedded, works offline).</footer>
</main><script>document.querySelectorAll(".plotly-graph-div").forEach(function (d) {{ Plotly.Plots.resize(d); }});</script></body></html>
"""


def provenance_dict(result: TuneResult) -> dict:
    best, t = result.best, result.config.train
    return {"study": result.config.study_name, "storage": result.config.storage, "optimizer": result.config.optimizer,
            "trial": best.number, "value": best.value, "metric": t.task.metric, "target": t.target,
            "reached": result.reached, "epochs": t.epochs, "steps": t.steps, "seconds_to_target": result.best_seconds,
            "final": result.best_value, "params": best.params}


def render_outputs(result: TuneResult) -> dict[str, str]:
    """Every file of the output folder, rendered before anything is written: ``best.json`` and
    ``report.html``; for ``thor`` also ``plan.json`` (with a ``tuning`` provenance object) and, when
    the profile was made by the tuner, the measurements (``losses.csv``, ``timings.csv``)."""
    files = {BEST_JSON: json.dumps(provenance_dict(result), indent=2) + "\n"}
    if result.plan is not None:
        document = result.plan.to_dict()
        document["tuning"] = provenance_dict(result)
        files[PLAN_JSON] = json.dumps(document, indent=2) + "\n"
        if result.profiled:
            files.update(result.measurements.csv_texts())
    files[REPORT_HTML] = build_tune_report(result)
    return files


def write_outputs(folder: str | Path, result: TuneResult) -> list[Path]:
    files = render_outputs(result)
    return [atomic_write_text(Path(folder) / name, text) for name, text in files.items()]
