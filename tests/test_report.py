"""The HTML report: figures built from the plan's data, a self-contained page, escaping, rendering.

``python tests/test_report.py out.html`` writes a demo report from realistic fake ResNet-50 data
(``--bert``: BERT-base's 146 factors).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thor_planner.planning.plan import Plan, Schedule
from thor_planner.report.html import build_report, figures, write_report

CANDIDATES = [1, 16, 32, 64, 128, 256, 512, 1024, 2048]
WARNING = "Degenerate crossover at b≈1: use the budget rule"


def _layer(name, kind, a_dim, g_dim, a_split, g_split, a_loss=0.0, g_loss=0.0):
    return {"name": name, "kind": kind, "a_dim": a_dim, "g_dim": g_dim, "a_split": a_split,
            "g_split": g_split, "a_loss": a_loss, "g_loss": g_loss, "omega1": 0.01, "omega2": 0.001}


def make_plan(layers, candidates, curves, *, x=106.0, y=0.21, split=128, warning=None, rule=None,
              data="synthetic", skipped=()) -> Plan:
    return Plan.from_dict({
        "schema_version": 1, "tool_version": "0.1.0", "created": "2025-01-02T03:04:05+00:00",
        "model": {"name": "resnet50", "source": "builtin", "num_params": 25_557_032},
        "device": {"type": "cpu", "name": "AMD EPYC 7B13", "torch": "2.5.1", "cuda": None, "threads": 16,
                   "backend": "torch-cholesky", "dtype": "float32"},
        "capture": {"data": data, "batches": 4, "batch_size": 32, "input_size": [3, 224, 224],
                    "fisher": "sampled", "seed": 0},
        "rule": rule or {"name": "crossover", "loss_threshold": 0.01},
        "candidates": list(candidates), "curves": curves,
        "crossover": {"x": x, "y": y, "split_dim": split, "warning": warning},
        "schedule": Schedule().to_dict(), "layers": layers, "skipped": list(skipped),
    })


def _losses_frame(layers, candidates, rng) -> pd.DataFrame:
    rows = []
    for lp in layers:
        for which in ("a", "g"):
            dim = lp[f"{which}_dim"]
            scale, power = 10 ** rng.uniform(-2.6, -0.2), rng.uniform(1, 4)
            vals = [0.0 if b >= dim else float(np.clip(scale * (1 - b / dim) ** power, 0, 1))
                    for b in candidates]
            rows.append({"layer": lp["name"], "kind": lp["kind"], "factor": which, "dim": dim,
                         **{str(b): v for b, v in zip(candidates, vals)}})
    return pd.DataFrame(rows, columns=["layer", "kind", "factor", "dim", *map(str, candidates)])


def _timings_frame(candidates, total_dim, predicted_from=None) -> pd.DataFrame:
    rows = []
    for b in candidates:
        med = 4e-4 + total_dim * b * b * 2.5e-11 * (1 + 0.3 * (b >= 512))
        gflop = total_dim * b * b / 3 / 1e9
        rows.append({"candidate": b, "median_s": med, "min_s": med * 0.93, "max_s": med * 1.12, "repeats": 7,
                     "blocks": f"{b}x{max(1, total_dim // b)}", "gflop": gflop,
                     "predicted": predicted_from is not None and b >= predicted_from})
    return pd.DataFrame(rows)


def small_case(warning=None, name="layer1.0.conv1", data="synthetic"):
    cands = [1, 16, 32, 64]
    layers = [_layer("conv1", "conv2d", 27, 16, 16, 16, 0.004, 0.0),
              _layer(name, "conv2d", 144, 32, 32, 32, 0.02, 0.0),
              _layer("fc", "linear", 65, 10, 32, 10, 0.0, 0.0)]
    curves = {"loss_fraction": [0.1, 0.4, 0.7, 0.9], "inversion_seconds": [1e-3, 2e-3, 4e-3, 9e-3],
              "normalized_perf": [1.0, 0.5, 0.25, 1 / 9]}
    plan = make_plan(layers, cands, curves, x=20.0, y=0.45, split=16, warning=warning, data=data,
                     skipped=[{"name": "head.<proj>", "reason": "weight is shared"}])
    losses = _losses_frame(layers, cands, np.random.default_rng(0))
    timings = _timings_frame(cands, 300, predicted_from=64)
    return plan, losses, timings


def resnet50_case(rule=None, warning=None, predicted_from=None):
    """Realistic fake measurements for ResNet-50 (54 layers, 108 factors)."""
    layers, c_in = [_layer("conv1", "conv2d", 147, 64, 0, 0)], 64
    for stage, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512]), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            layers += [_layer(f"{p}.conv1", "conv2d", c_in, width, 0, 0),
                       _layer(f"{p}.conv2", "conv2d", width * 9, width, 0, 0),
                       _layer(f"{p}.conv3", "conv2d", width, width * 4, 0, 0)]
            if i == 0:
                layers.append(_layer(f"{p}.downsample.0", "conv2d", c_in, width * 4, 0, 0))
            c_in = width * 4
    layers.append(_layer("fc", "linear", 2049, 1000, 0, 0))
    losses = _losses_frame(layers, CANDIDATES, np.random.default_rng(1))
    total = int(losses["dim"].sum())
    timings = _timings_frame(CANDIDATES, total, predicted_from)
    secs = timings["median_s"].tolist()
    frac = [float((losses[str(b)] < 0.01).mean()) for b in CANDIDATES]
    perf = [secs[0] / s for s in secs]
    diff = [f - p for f, p in zip(frac, perf)]
    i = next(i for i in range(1, len(diff)) if diff[i] >= 0)
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    x = CANDIDATES[i - 1] + t * (CANDIDATES[i] - CANDIDATES[i - 1])
    y = frac[i - 1] + t * (frac[i] - frac[i - 1])
    split = min(CANDIDATES, key=lambda b: abs(b - x))
    by = {(r["layer"], r["factor"]): r for r in losses.to_dict("records")}
    for lp in layers:
        for w in ("a", "g"):
            row, dim = by[(lp["name"], w)], lp[f"{w}_dim"]
            s = next((min(b, dim) for b in CANDIDATES if b <= split and row[str(b)] < 0.01), min(split, dim))
            lp[f"{w}_split"], lp[f"{w}_loss"] = s, row[str(s)] if str(s) in row else 0.0
    curves = {"loss_fraction": frac, "inversion_seconds": secs, "normalized_perf": perf}
    plan = make_plan(layers, CANDIDATES, curves, x=x, y=y, split=split, rule=rule, warning=warning,
                     skipped=[{"name": "aux_head", "reason": "not reached by the forward pass"}])
    return plan, losses, timings


def bert_base_case():
    """Fake measurements for BERT-base's 73 planned layers (146 factors): 12 encoder layers of six
    Linear layers each (dims 768-3072) and the prediction head's transform; candidates up to 4096."""
    cands = [1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    layers = []
    for i in range(12):
        p = f"bert.encoder.layer.{i}"
        layers += [_layer(f"{p}.attention.self.{w}", "linear", 769, 768, 0, 0) for w in ("query", "key", "value")]
        layers += [_layer(f"{p}.attention.output.dense", "linear", 769, 768, 0, 0),
                   _layer(f"{p}.intermediate.dense", "linear", 769, 3072, 0, 0),
                   _layer(f"{p}.output.dense", "linear", 3073, 768, 0, 0)]
    layers.append(_layer("cls.predictions.transform.dense", "linear", 769, 768, 0, 0))
    losses = _losses_frame(layers, cands, np.random.default_rng(2))
    by = {(r["layer"], r["factor"]): r for r in losses.to_dict("records")}
    for lp in layers:
        for w in ("a", "g"):
            row, dim = by[(lp["name"], w)], lp[f"{w}_dim"]
            s = next((min(b, dim) for b in cands if b <= 512 and row[str(b)] < 0.01), min(512, dim))
            lp[f"{w}_split"], lp[f"{w}_loss"] = s, row[str(s)] if str(s) in row else 0.0
    timings = _timings_frame(cands, int(losses["dim"].sum()))
    secs = timings["median_s"].tolist()
    curves = {"loss_fraction": [float((losses[str(b)] < 0.01).mean()) for b in cands], "inversion_seconds": secs,
              "normalized_perf": [secs[0] / s for s in secs]}
    plan = make_plan(layers, cands, curves, x=400.0, y=0.4, split=512,
                     skipped=[{"name": "cls.predictions.decoder", "reason": "output dimension 30522 > 4096"}])
    d = plan.to_dict()
    d["model"].update(name="bert-base", num_params=109_514_298)
    return Plan.from_dict(d), losses, timings


def _without_plotlyjs(page: str) -> str:
    """The page with the embedded plotly.js bundle cut out (it holds URLs for map tiles it never loads)."""
    return re.sub(r"<script[^>]*>/\*\*\s*\* plotly\.js v.*?</script>", "<script></script>", page, flags=re.S)


def test_page_is_self_contained():
    plan, losses, timings = small_case()
    page = build_report(plan, losses, timings)
    assert re.search(r"plotly\.js v\d+\.\d+", page), "plotly.js must be embedded inline"
    assert page.count("* plotly.js v") == 1, "plotly.js must be embedded exactly once"
    assert not re.search(r"<script[^>]+src=", page)
    rest = _without_plotlyjs(page)
    assert len(rest) < len(page) // 10
    assert "cdn." not in rest and "<link" not in rest and "@import" not in rest and "http" not in rest
    assert "<title>thor-plan report — resnet50 on cpu</title>" in page
    assert "Global split <b>16</b> · 3 layers preconditioned · 1 skipped · rule crossover (loss &lt; 1%)" in page
    for key in ("curves", "timing", "heatmap"):
        assert f'id="fig-{key}"' in page


def test_curves_figure_matches_plan():
    plan, losses, timings = small_case()
    fig = figures(plan, losses, timings)["curves"]
    name = {"loss_fraction": "fraction of factors with loss < 1%", "normalized_perf": "normalized performance p₁/p_b"}
    for key, label in name.items():
        points = next(t for t in fig.data if t.name == label and t.mode == "markers")
        line = next(t for t in fig.data if t.name == label and t.mode == "lines")
        assert list(points.x) == plan.candidates and list(points.y) == plan.curves[key]
        assert list(points.customdata) == plan.curves["inversion_seconds"]
        # the drawn line is the curve interpolated linearly in b: it passes through every measured point
        # and, halfway between 16 and 32, through the average of their values
        assert set(plan.candidates) <= set(line.x)
        mid = list(line.x).index(24.0)
        assert line.y[mid] == pytest.approx((plan.curves[key][1] + plan.curves[key][2]) / 2)
        assert line.hoverinfo == "skip"
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.tickvals) == plan.candidates
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["log b", "linear b"]
    assert tuple(fig.layout.yaxis.range) == (0, 1.05)
    cross = next(t for t in fig.data if t.name == "crossover")
    assert (cross.x, cross.y, cross.text) == ((20.0,), (0.45,), ("crossover at b≈20",))
    assert cross.textposition.startswith("top")  # above the point: never on the axis's tick labels
    chosen = next(t for t in fig.data if t.name == "chosen split 16")
    assert chosen.x == (16, 16) and "chosen split 16" in chosen.text[1]


def test_labels_near_the_right_edge_point_inwards():
    plan, losses, timings = small_case()
    d = plan.to_dict()
    d["crossover"].update(x=60.0, y=0.9, split_dim=64)
    fig = figures(Plan.from_dict(d), losses, timings)["curves"]
    cross = next(t for t in fig.data if t.name == "crossover")
    chosen = next(t for t in fig.data if t.name == "chosen split 64")
    assert cross.textposition == "bottom left"  # high and at the right: below and to the left
    assert chosen.textposition == "middle left" and chosen.text[1].strip() == "chosen split 64"
    # the axis buttons move both labels as well: on the linear axis 60 of 1…64 is also far right
    log, linear = fig.layout.updatemenus[0].buttons
    assert log.method == linear.method == "update"
    assert log.args[0]["textposition"] == ["bottom left", "middle left"]
    assert linear.args[0]["textposition"] == ["bottom left", "middle left"]
    assert list(log.args[2]) == list(linear.args[2]) == [fig.data.index(cross), fig.data.index(chosen)]


def test_labels_follow_the_axis_switch():
    # a crossing at b≈24 of 1…2048 sits at 42% of the log axis but at 1% of the linear one
    plan, losses, timings = resnet50_case()
    d = plan.to_dict()
    d["crossover"].update(x=24.0, y=0.3, split_dim=32)
    fig = figures(Plan.from_dict(d), losses, timings)["curves"]
    log, linear = fig.layout.updatemenus[0].buttons
    assert log.args[0]["textposition"] == ["top left", "middle right"]  # left of the crossing, away from 32
    assert linear.args[0]["textposition"] == ["top right", "middle right"]  # inwards at the axis's left end


def test_interval_band_and_cards():
    plan, losses, timings = small_case()
    d = plan.to_dict()
    d["crossover"].update(interval=[14.0, 27.0], spans=[16, 32], tie_break="the interval b≈14–27 spans "
                          "candidates 16, 32: 16 holds the largest share of it (54%)")
    plan = Plan.from_dict(d)
    fig = figures(plan, losses, timings)["curves"]
    band = next(t for t in fig.data if t.name == "crossover interval (timing spread)")
    assert list(band.x) == [14.0, 27.0, 27.0, 14.0, 14.0] and band.fill == "toself"
    page = build_report(plan, losses, timings)
    assert "at y = 0.45 · interval b≈14–27 · spans 16, 32" in page
    assert ("<b>⚠ Warning.</b> The crossover is uncertain: the interval b≈14–27 spans candidates 16, 32: "
            "16 holds the largest share of it (54%).") in page


def test_factor_card_counts_factors():
    # 3 layers = 6 factors; the loss fraction at the split (16) is 0.4 → "2 of 6", not the threshold
    page = build_report(*small_case())
    assert '<div class="k">factors with loss &lt; 1%</div><div class="v">2 of 6</div>' in page
    assert "40% of the factors at b = 16" in page


def test_budget_report_shows_the_crossing_apart_from_the_choice():
    rule = {"name": "budget", "loss_threshold": 0.01, "overhead": 0.05, "interval": 100, "step_seconds": 0.2}
    plan, losses, timings = resnet50_case(rule=rule)
    d = plan.to_dict()
    d["crossover"]["split_dim"] = 2048  # what the budget rule chose; x, y: where the curves cross
    plan = Plan.from_dict(d)
    page = build_report(plan, losses, timings)
    assert "curves do not cross" not in page
    assert (f'<div class="k">curves cross</div><div class="v">b≈{plan.crossover.x:.0f}</div>'
            f'<div class="s">at y = {plan.crossover.y:.2f} · not used by the budget rule</div>') in page
    assert "Global split <b>2048</b>" in page
    fig = figures(plan, losses, timings)["curves"]
    assert any(t.name == "crossover" for t in fig.data) and any(t.name == "chosen split 2048" for t in fig.data)


def test_busy_machine_is_a_warning():
    plan, losses, timings = small_case()
    d = plan.to_dict()
    d["device"]["busy"] = {"busy": True, "warning": "Other processes used up to 1.9 CPU cores while timing"}
    page = build_report(Plan.from_dict(d), losses, timings)
    assert "<b>⚠ Warning.</b> Other processes used up to 1.9 CPU cores while timing</div>" in page


def test_budget_rule_in_title():
    rule = {"name": "budget", "loss_threshold": 0.01, "overhead": 0.05, "interval": 100, "step_seconds": 0.2}
    plan, losses, timings = resnet50_case(rule=rule)
    title = figures(plan, losses, timings)["curves"].layout.title
    assert title.text == "Information loss vs. inversion cost · budget rule"
    assert "budget rule: budget (loss &lt; 1%, overhead 5%, interval 100, step 200 ms)" in title.subtitle.text


def test_heatmap_is_the_loss_matrix_in_model_order():
    plan, losses, timings = small_case()
    shuffled = pd.concat([losses.iloc[[1, 0]], losses.iloc[2:]])  # G row before A row of conv1
    fig = figures(plan, shuffled, timings)["heatmap"]
    heat_a, heat_g = (t for t in fig.data if t.type == "heatmap")
    cols = [str(b) for b in plan.candidates]
    # one row per layer in model order, A's losses in the first panel and G's in the second
    np.testing.assert_array_equal(np.asarray(heat_a.z), losses[losses["factor"] == "a"][cols].to_numpy())
    np.testing.assert_array_equal(np.asarray(heat_g.z), losses[losses["factor"] == "g"][cols].to_numpy())
    assert list(heat_a.y) == list(heat_g.y) == ["conv1", "layer1.0.conv1", "fc"]
    assert list(heat_a.x) == cols and (heat_a.xaxis, heat_g.xaxis) == ("x", "x2") and heat_g.yaxis == "y2"
    assert fig.layout.xaxis.type == fig.layout.xaxis2.type == "category"
    assert fig.layout.yaxis2.matches == "y" and fig.layout.yaxis2.showticklabels is False
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 1)
    assert [a.text for a in fig.layout.annotations] == ["A (inputs)", "G (output gradients)"]
    assert [int(d[0]) for d in heat_g.customdata] == [16, 32, 10]  # each panel hovers its factor's dimension
    marks_a, marks_g = (t for t in fig.data if t.name == "planned split of the factor")
    # conv1 A (dim 27) split 16; fc G (dim 10) split 10 = whole factor -> first candidate >= 10
    assert list(zip(marks_a.x, marks_a.y))[0] == ("16", "conv1") and marks_a.xaxis == "x"
    assert list(zip(marks_g.x, marks_g.y))[-1] == ("16", "fc") and "whole factor" in marks_g.text[-1]
    assert marks_g.xaxis == "x2"


def test_heatmap_of_a_missing_factor_row_stays_blank():
    plan, losses, timings = small_case()
    fig = figures(plan, losses.drop(index=5), timings)["heatmap"]  # fc's G row missing
    heat_g = [t for t in fig.data if t.type == "heatmap"][1]
    assert np.isnan(np.asarray(heat_g.z, dtype=float)[2]).all() and list(heat_g.y)[2] == "fc"
    marks_g = [t for t in fig.data if t.name == "planned split of the factor"][1]
    assert list(marks_g.y) == ["conv1", "layer1.0.conv1"]


def test_heatmap_grows_with_the_layers_and_takes_the_width():
    # BERT-base: 146 factors are 73 rows of about 18 px, whole names; the plan table goes below
    plan, losses, timings = bert_base_case()
    assert len(plan.layers) == 73 and len(losses) == 146
    fig = figures(plan, losses, timings)["heatmap"]
    heat = fig.data[0]
    assert len(heat.y) == 73 and heat.y[-2] == "bert.encoder.layer.11.output.dense"
    assert fig.layout.height >= 18 * 73 and fig.layout.yaxis.tickfont.size >= 11
    assert '<div class="split stack">' in build_report(plan, losses, timings)
    assert '<div class="split">' in build_report(*small_case())  # a small plan keeps the table beside it


def test_timing_figure_log_axis_and_predicted():
    plan, losses, timings = small_case()
    fig = figures(plan, losses, timings)["timing"]
    assert fig.layout.yaxis.type == "log"
    measured = next(t for t in fig.data if t.name.startswith("measured"))
    predicted = next(t for t in fig.data if t.name.startswith("predicted"))
    assert list(measured.x) == [1, 16, 32] and list(predicted.x) == [64]
    assert predicted.line.dash == "dash" and predicted.marker.symbol == "circle-open"
    np.testing.assert_allclose(measured.y, timings["median_s"][:3])
    np.testing.assert_allclose(measured.error_y.array, (timings["max_s"] - timings["median_s"])[:3])
    assert "GFLOP/s" in measured.hovertemplate and "repeats" in measured.hovertemplate


def test_warning_shown_only_when_set():
    plan, losses, timings = small_case(warning=WARNING)
    assert f'<div class="warning"><b>⚠ Warning.</b> {WARNING}</div>' in build_report(plan, losses, timings)
    plan, losses, timings = small_case(warning=None)
    assert 'class="warning"' not in build_report(plan, losses, timings)


def test_provenance_and_synthetic_note():
    page = build_report(*small_case(data="synthetic"))
    assert "synthetic data — not the model's real inputs" in page
    for text in ("25,557,032", "AMD EPYC 7B13", "torch-cholesky", "float32", "sampled", "0.1.0",
                 "2025-01-02T03:04:05+00:00", "weight is shared"):
        assert text in page
    assert "not the model's real inputs" not in build_report(*small_case(data="imagefolder:/data/val"))


def test_text_is_escaped():
    page = build_report(*small_case(name="blk<b>&\"x"))
    assert "blk<b>" not in page and "head.<proj>" not in page
    assert "<code>blk&lt;b&gt;&amp;&quot;x</code>" in page and "head.&lt;proj&gt;" in page
    fig = figures(*small_case(name="blk<b>"))["heatmap"]
    assert "blk&lt;b&gt;" in fig.data[0].y  # plotly decodes entities but would read <b> as bold


def test_write_report(tmp_path):
    out = write_report(tmp_path / "report.html", *small_case())
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: headless rendering check skipped")
    page = write_report(tmp_path / "report.html", *resnet50_case())
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
           page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert done.returncode == 0 and "</html>" in dom, done.stderr[-2000:]
    for key in ("curves", "timing", "heatmap"):
        assert f'id="fig-{key}"' in dom
        div = dom[dom.index(f'id="fig-{key}"'):]
        assert 'class="main-svg"' in div[:20_000], f"figure {key} did not render"


BBOX_SCRIPT = """<script>window.addEventListener("load", function () { setTimeout(function () {
  if (window.THOR_AXIS === "linear") {  // press the "linear b" button of the curves figure
    var fig = document.getElementById("fig-curves"), args = fig.layout.updatemenus[0].buttons[1].args;
    Plotly.update(fig, args[0], args[1], args[2]);
  }
}, 500); setTimeout(function () {
  var out = [];
  document.querySelectorAll(".js-plotly-plot").forEach(function (div) {
    var svg = div.querySelector(".main-svg").getBoundingClientRect();
    div.querySelectorAll("text").forEach(function (t) {
      var r = t.getBoundingClientRect(), g = t.closest("g[class]");
      if (r.width > 0 && t.textContent.trim()) out.push({fig: div.id, group: g ? g.getAttribute("class") : "",
        text: t.textContent, left: r.left - svg.left, right: r.right - svg.left, top: r.top - svg.top,
        bottom: r.bottom - svg.top, width: svg.width, height: svg.height});
    });
  });
  var pre = document.createElement("pre"); pre.id = "bbox"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 1500); });</script>"""


def _text_boxes(tmp_path, chromium, plan, losses, timings, width=1480, axis="log"):
    """The rendered text boxes of every figure (pixels, relative to each figure's svg), with the
    curves figure on its ``log`` (default) or ``linear`` split axis."""
    import html as html_module
    import json

    page = tmp_path / "boxes.html"
    script = f'<script>window.THOR_AXIS = "{axis}";</script>' + BBOX_SCRIPT
    page.write_text(build_report(plan, losses, timings).replace("</body>", script + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--window-size={width},1200",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000", "--dump-dom", page.resolve().as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="bbox">(.*?)</pre>', dom, re.S)
    assert found, "the measuring script did not run"
    return json.loads(html_module.unescape(found.group(1)))


@pytest.mark.parametrize("width, axis, split", [(1480, "log", 2048), (900, "log", 2048), (1480, "linear", 2048),
                                                (1480, "log", 1)])
def test_curve_labels_stay_inside_and_off_the_ticks(tmp_path, width, axis, split):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: headless rendering check skipped")
    rule = {"name": "budget", "loss_threshold": 0.01, "overhead": 0.05, "interval": 100, "step_seconds": 0.2}
    plan, losses, timings = resnet50_case(rule=rule)
    d = plan.to_dict()
    d["crossover"].update(split_dim=split, y=0.02)  # labels at either end, a crossing near the axis
    every = _text_boxes(tmp_path, chromium, Plan.from_dict(d), losses, timings, width, axis)
    boxes = [b for b in every if b["fig"] == "fig-curves"]
    for b in every:  # no figure cuts a label at its edges
        assert -1 <= b["left"] and b["right"] <= b["width"] + 1, b
    assert any(b["text"] == f"chosen split {split}" for b in every if b["fig"] == "fig-timing")
    ticks = {b["text"] for b in boxes if "xtick" in b["group"]}
    assert ticks == ({str(c) for c in CANDIDATES} if axis == "log" else {"1", "128", "256", "512", "1024", "2048"})
    labels = [b for b in boxes if b["text"].strip().startswith(("crossover at", "chosen split"))]
    assert len(labels) == 2
    ticks = [b for b in boxes if "xtick" in b["group"]]
    assert ticks
    for label in labels:
        for tick in ticks:
            apart = (label["right"] <= tick["left"] or tick["right"] <= label["left"]
                     or label["bottom"] <= tick["top"] or tick["bottom"] <= label["top"])
            assert apart, (label, tick)


def _apart(one: dict, other: dict) -> bool:
    return (one["right"] <= other["left"] or other["right"] <= one["left"]
            or one["bottom"] <= other["top"] or other["bottom"] <= one["top"])


@pytest.mark.parametrize("width", [1480, 1000])
def test_heatmap_of_146_factors_is_readable(tmp_path, width):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: headless rendering check skipped")
    plan, losses, timings = bert_base_case()
    every = _text_boxes(tmp_path, chromium, plan, losses, timings, width)
    for b in every:  # no figure cuts a label at its edges
        assert -1 <= b["left"] and b["right"] <= b["width"] + 1 and -1 <= b["top"], b
    boxes = [b for b in every if b["fig"] == "fig-heatmap"]
    rows = sorted((b for b in boxes if b["group"] == "ytick"), key=lambda b: b["top"])
    assert [b["text"] for b in rows] == [lp.name for lp in plan.layers]  # every name, whole, in order
    assert all(b["bottom"] - b["top"] >= 10 for b in rows)  # 11 px text
    assert all(a["bottom"] <= b["top"] + 0.5 for a, b in zip(rows, rows[1:]))  # no two names overlap
    cands = [str(c) for c in plan.candidates]
    titles = [b for b in boxes if b["text"] in ("A (inputs)", "G (output gradients)")]
    assert len(titles) == 2
    for group in ("xtick", "x2tick"):
        ticks = sorted((b for b in boxes if b["group"] == group), key=lambda b: b["left"])
        assert [b["text"] for b in ticks] == cands
        assert all(a["right"] <= b["left"] for a, b in zip(ticks, ticks[1:]))  # side by side, not piled
        assert all(_apart(t, title) for t in ticks for title in titles)
        assert all(t["bottom"] <= rows[0]["top"] for t in ticks)  # above the first row


if __name__ == "__main__":  # python tests/test_report.py [out.html] [--bert]: the ResNet-50 or BERT-base demo
    args = [a for a in sys.argv[1:] if a != "--bert"]
    target = Path(args[0] if args else "report.html")
    print(write_report(target, *(bert_base_case() if "--bert" in sys.argv else resnet50_case())))
