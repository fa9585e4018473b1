"""The HTML report: figures built from the plan's data, a self-contained page, escaping, the label
placement (the rendered page is checked in headless Chromium by ``test_report_render.py``)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from report_cases import CANDIDATES, WARNING, bert_base_case, resnet50_case, small_case
from thor_planner.planning.plan import Plan
from thor_planner.report.html import build_report, figures, write_report

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
    assert tuple(fig.layout.yaxis.range) == (-0.04, 1.08)  # markers at 0 and 1 drawn whole
    cross = next(t for t in fig.data if t.name == "crossover")
    assert (cross.x, cross.y, cross.mode) == ((20.0,), (0.45,), "markers")
    chosen = next(t for t in fig.data if t.name == "chosen split 16")
    assert chosen.x == (16, 16) and chosen.y == (0, 1) and chosen.line.dash == "dash"
    labels = {a.name: a for a in fig.layout.annotations}
    assert labels["crossover"].text == "crossover at b≈20" and labels["crossover"].showarrow
    assert (labels["crossover"].x, labels["crossover"].y) == (pytest.approx(np.log10(20.0)), 0.45)  # log axis
    assert labels["chosen split"].text == "chosen split 16"
    assert labels["chosen split"].x == pytest.approx(np.log10(16))


def _label_boxes(plan: Plan, fig, kind: str) -> dict:
    """The labels' boxes, as laid out for the narrowest plot, in plot-area fractions, on the ``log`` or
    ``linear`` split axis (read back from the button that switches to it)."""
    from thor_planner.report.curves import MIN_PLOT_PX, SplitAxis, _label_size, _plot_px, _vfrac
    from thor_planner.report.placement import Box

    axis = SplitAxis.of(kind, plan.candidates)
    button = next(b for b in fig.layout.updatemenus[0].buttons if b.label == f"{kind} b")
    scale = _plot_px(fig.layout.margin.t, fig.layout.margin.b)
    assert scale[0] == MIN_PLOT_PX
    boxes = {}
    for note in button.args[0]["annotations"]:
        width, height = _label_size(note["text"], scale)
        x = note["ax"] if note["name"] == "crossover" else note["x"] + note["xshift"] / scale[0] * (axis.hi - axis.lo)
        u, v = (x - axis.lo) / (axis.hi - axis.lo), _vfrac(note["ay"] if note["name"] == "crossover" else note["y"])
        left = {"left": u, "right": u - width, "center": u - width / 2}[note["xanchor"]]
        boxes[note["name"]] = Box(left, v - height / 2, left + width, v + height / 2)
    return boxes


def _curve_fractions(plan: Plan, kind: str) -> np.ndarray:
    from thor_planner.report.curves import SplitAxis, _dense, _vfrac
    from thor_planner.report.placement import sample_polyline

    axis = SplitAxis.of(kind, plan.candidates)
    parts = []
    for key in ("loss_fraction", "normalized_perf"):
        xs, ys = _dense(plan.candidates, plan.curves[key])
        parts.append(sample_polyline([axis.frac(x) for x in xs], [_vfrac(y) for y in ys], 0.002))
    return np.concatenate(parts)


def _crossing_cases():
    plan, losses, timings = resnet50_case()
    yield "resnet50", plan, losses, timings
    d = plan.to_dict()
    d["crossover"].update(x=355.0, y=0.003, split_dim=256)  # BERT-base's degenerate crossing, next to the line
    d["curves"]["normalized_perf"] = [1.0, 0.09, 0.06, 0.03, 0.01, 0.004, 0.002, 0.001, 0.0005]
    d["curves"]["loss_fraction"] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.83, 0.83]
    yield "degenerate", Plan.from_dict(d), losses, timings
    d = plan.to_dict()
    d["crossover"].update(x=60.0, y=0.9, split_dim=64)  # high and near the right end
    yield "high", Plan.from_dict(d), losses, timings


@pytest.mark.parametrize("kind", ["log", "linear"])
@pytest.mark.parametrize("case", ["resnet50", "degenerate", "high"])
def test_labels_are_crossed_by_nothing(case, kind):
    """On either axis, no curve, no dashed line and no other label crosses a label's box (the box laid
    out for the narrowest plot, which holds the text at any width), and each stays in the plot area."""
    from thor_planner.report.curves import MARKER_PX, SplitAxis, _plot_px, _vfrac
    from thor_planner.report.placement import Box

    _, plan, losses, timings = next(c for c in _crossing_cases() if c[0] == case)
    fig = figures(plan, losses, timings)["curves"]
    boxes = _label_boxes(plan, fig, kind)
    assert set(boxes) == {"crossover", "chosen split"}
    points = _curve_fractions(plan, kind)
    split_u = SplitAxis.of(kind, plan.candidates).frac(plan.split_dim)
    for name, box in boxes.items():
        assert 0 <= box.left and box.right <= 1 and 0 <= box.bottom and box.top <= 1, (name, box)
        inside = ((points[:, 0] >= box.left) & (points[:, 0] <= box.right)
                  & (points[:, 1] >= box.bottom) & (points[:, 1] <= box.top))
        assert not inside.any(), (name, box, points[inside][:3])
    cross = boxes["crossover"]
    assert cross.right < split_u or cross.left > split_u or cross.bottom > _vfrac(1), (cross, split_u)
    scale = _plot_px(fig.layout.margin.t, fig.layout.margin.b)
    marker = Box.around(SplitAxis.of(kind, plan.candidates).frac(plan.crossover.x), _vfrac(plan.crossover.y),
                        MARKER_PX / scale[0], MARKER_PX / scale[1])
    assert not cross.overlaps(marker)
    assert not cross.overlaps(boxes["chosen split"])


def test_axis_buttons_sit_below_the_plot_and_move_the_labels():
    plan, losses, timings = resnet50_case()
    d = plan.to_dict()
    d["crossover"].update(x=24.0, y=0.3, split_dim=32)  # 42% across the log axis, 1% across the linear one
    fig = figures(Plan.from_dict(d), losses, timings)["curves"]
    menu = fig.layout.updatemenus[0]
    assert (menu.y, menu.yanchor, menu.x, menu.xanchor) == (0, "top", 1, "right")  # under the plot, not on it
    log, linear = menu.buttons
    assert log.method == linear.method == "relayout"
    assert log.args[0]["xaxis.type"] == "log" and linear.args[0]["xaxis.type"] == "linear"
    assert list(log.args[0]["xaxis.tickvals"]) == CANDIDATES
    assert list(linear.args[0]["xaxis.tickvals"]) == [1, 128, 256, 512, 1024, 2048]
    assert log.args[0]["annotations"] == list(fig.layout.to_plotly_json()["annotations"])  # log is the default
    where = {k: {n["name"]: n["x"] for n in b.args[0]["annotations"]} for k, b in (("log", log), ("linear", linear))}
    assert where["log"]["crossover"] == pytest.approx(np.log10(24.0)) and where["linear"]["crossover"] == 24.0
    assert where["log"]["chosen split"] == pytest.approx(np.log10(32)) and where["linear"]["chosen split"] == 32


def test_label_placement_geometry():
    from thor_planner.report.placement import Box, free_boxes, nearest_first, sample_polyline, segment_clear

    line = sample_polyline([0.0, 1.0], [0.5, 0.5], 0.01)  # a horizontal line across the middle
    assert len(line) == 101 and np.allclose(line[[0, -1]], [[0, 0.5], [1, 0.5]])
    centres = nearest_first((0.5, 0.5), (0.2, 0.1), (100.0, 100.0), step=0.05)
    assert np.allclose(centres[0], [0.5, 0.5])
    box = next(free_boxes(centres, (0.2, 0.1), line, [Box(0.3, 0.55, 0.7, 0.7)], pad=(0.01, 0.01)))
    # the nearest free spot is just below the line (above it, a box blocks the way up to 0.7)
    assert box.centre == pytest.approx((0.5, 0.4)) and box.right - box.left == pytest.approx(0.2)
    assert not box.overlaps(Box(0.3, 0.55, 0.7, 0.7)) and Box(0, 0, 1, 1).overlaps(box)
    assert segment_clear((0.5, 0.4), (0.5, 0.45), line, (100.0, 100.0), 2.0)
    assert not segment_clear((0.5, 0.4), (0.5, 0.6), line, (100.0, 100.0), 2.0)


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
    heat_a = [t for t in fig.data if t.type == "heatmap" and t.xaxis in ("x", "x3", "x5", "x7")]
    heat_g = [t for t in fig.data if t.type == "heatmap" and t.xaxis in ("x2", "x4", "x6", "x8")]
    # four bands of 19, 18, 18 and 18 rows, each headed by the split labels: every row is near them
    assert [len(t.y) for t in heat_a] == [len(t.y) for t in heat_g] == [19, 18, 18, 18]
    names = [y for t in heat_a for y in t.y]
    assert names == [lp.name for lp in plan.layers] and names[-2] == "bert.encoder.layer.11.output.dense"
    np.testing.assert_array_equal(np.concatenate([np.asarray(t.z) for t in heat_g]),
                                  losses[losses["factor"] == "g"][[str(b) for b in plan.candidates]].to_numpy())
    assert fig.layout.height >= 18 * 73 and fig.layout.yaxis.tickfont.size >= 11
    for k in range(1, 9):
        axis = fig.layout[f"xaxis{k if k > 1 else ''}"]
        assert axis.side == "top" and list(axis.range) == [-0.5, 9.5] and axis.title.text == "split b"
    for k, under in ((9, "x7"), (10, "x8")):  # and once more below the last band
        axis = fig.layout[f"xaxis{k}"]
        assert (axis.side, axis.overlaying, axis.type) == ("bottom", under, "category")
        held = next(t for t in fig.data if t.xaxis == f"x{k}")
        assert list(held.x) == [str(b) for b in plan.candidates] and held.marker.opacity == 0
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


def test_heatmap_bands():
    from thor_planner.report.heatmap import bands

    assert bands(73) == [range(0, 19), range(19, 37), range(37, 55), range(55, 73)]  # BERT-base
    assert [len(b) for b in bands(54)] == [18, 18, 18]  # ResNet-50
    assert bands(24) == [range(0, 24)] and [len(b) for b in bands(25)] == [13, 12]
    assert bands(3) == [range(0, 3)] and bands(0) == [range(0, 0)]


def test_device_card_names_each_backend_once():
    from thor_planner.report.tables import provenance

    plan, _, _ = resnet50_case()
    d = plan.to_dict()
    sizes = [1, 3, 8, 16, 19, 32, 40, 64, 104, 128, 147, 232, 256, 488, 512, 576, 1000, 1024, 1152, 2048]
    d["device"]["backends"] = {str(b): "torch-cholesky" for b in sizes}  # ResNet-50's 20 block sizes
    card = provenance(Plan.from_dict(d))
    assert card.count("torch-cholesky") == 1
    assert 'torch-cholesky: block sizes <span class="nw">1–2048</span> (20 sizes)' in card
    d["device"].update(backend="auto", backends={"1": "newton-schulz", "16": "newton-schulz", "64": "torch-inv",
                                                 "256": "newton-schulz", "2048": "torch-cholesky"})
    card = provenance(Plan.from_dict(d))
    assert ('<dd>auto<br>newton-schulz: block sizes <span class="nw">1–16</span>, <span class="nw">256</span> '
            '(3 sizes)<br>torch-inv: block sizes <span class="nw">64</span> (1 size)<br>torch-cholesky: block sizes '
            '<span class="nw">2048</span> (1 size)</dd>') in card


def test_skipped_reasons_wrap():
    page = build_report(*bert_base_case())
    assert '<table class="wrap"><thead><tr><th>layer (left to SGD-momentum)</th><th>reason</th>' in page
    assert "table.wrap td{white-space:normal;overflow-wrap:anywhere}" in page
