"""The report as a browser draws it (headless Chromium; skipped when it is not installed): figures
render, no label is cut at a figure's edge or crossed by a line, every curve stays visible on both
split axes, the heatmap names the splits near every row, and the cards' text fits them.

Each scene (a plan, a window width, the curves figure's split axis) is rendered once per session and
measured by a script in the page; the tests read those measurements (pixels, relative to each
figure's svg).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from report_cases import CANDIDATES, bert_base_case, resnet50_case
from thor_planner.planning.plan import Plan
from thor_planner.report.heatmap import HEADER_EVERY, HEADER_PX, HEATMAP_ROW
from thor_planner.report.html import build_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: headless rendering checks skipped")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

MEASURE_SCRIPT = """<script>window.addEventListener("load", function () { setTimeout(function () {
  if (window.THOR_AXIS === "linear") {  // press the "linear b" button of the curves figure
    var fig = document.getElementById("fig-curves"), args = fig.layout.updatemenus[0].buttons[1].args;
    Plotly.relayout(fig, args[0]);
  }
}, 500); setTimeout(function () {
  function rel(r, o) { return {left: r.left - o.left, right: r.right - o.left, top: r.top - o.top, bottom: r.bottom - o.top}; }
  var out = {texts: [], curves: {traces: [], buttons: [], labels: []}, cards: {}};
  document.querySelectorAll(".js-plotly-plot").forEach(function (div) {
    var svg = div.querySelector(".main-svg").getBoundingClientRect();
    div.querySelectorAll("text").forEach(function (t) {
      var r = t.getBoundingClientRect(), g = t.closest("g[class]");
      if (r.width > 0 && t.textContent.trim()) out.texts.push(Object.assign({fig: div.id, text: t.textContent,
        group: g ? g.getAttribute("class") : "", width: svg.width, height: svg.height}, rel(r, svg)));
    });
  });
  var div = document.getElementById("fig-curves"), svg = div.querySelector(".main-svg").getBoundingClientRect();
  out.curves.plot = rel(div.querySelector(".nsewdrag").getBoundingClientRect(), svg);
  div.querySelectorAll(".scatterlayer .trace").forEach(function (g) {
    var trace = g.__data__ && g.__data__[0] && g.__data__[0].trace, line = [], points = [];
    g.querySelectorAll("path.js-line").forEach(function (p) {
      var n = p.getTotalLength(), m = p.getScreenCTM();
      for (var s = 0; s <= n; s += 1) {
        var q = new DOMPoint(p.getPointAtLength(s).x, p.getPointAtLength(s).y).matrixTransform(m);
        line.push([q.x - svg.left, q.y - svg.top]);
      }
    });
    g.querySelectorAll("path.point").forEach(function (p) { points.push(rel(p.getBoundingClientRect(), svg)); });
    out.curves.traces.push({name: trace ? trace.name : "", line: line, points: points});
  });
  div.querySelectorAll(".updatemenu-button").forEach(function (b) { out.curves.buttons.push(rel(b.getBoundingClientRect(), svg)); });
  div.querySelectorAll("g.annotation").forEach(function (a) {
    var t = a.querySelector("text");
    out.curves.labels.push(Object.assign({text: t.textContent}, rel(t.getBoundingClientRect(), svg)));
  });
  var table = document.querySelector("table.wrap");
  if (table) out.cards.skipped = {table: table.getBoundingClientRect().right, card: table.closest(".card").getBoundingClientRect().right,
    cells: Array.from(table.querySelectorAll("td")).map(function (td) { return [td.scrollWidth, td.clientWidth]; })};
  out.cards.page = [document.documentElement.scrollWidth, document.documentElement.clientWidth];
  document.querySelectorAll(".prov .card").forEach(function (c) { out.cards[c.querySelector("h3").textContent] = c.innerText; });
  var pre = document.createElement("pre"); pre.id = "measured"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 1500); });</script>"""


def _budget(split: int):
    rule = {"name": "budget", "loss_threshold": 0.01, "overhead": 0.05, "interval": 100, "step_seconds": 0.2}
    plan, losses, timings = resnet50_case(rule=rule)
    d = plan.to_dict()
    d["crossover"].update(split_dim=split, y=0.02)  # labels at either end, a crossing near the axis
    return Plan.from_dict(d), losses, timings


def _degenerate():
    """BERT-base's crossing on a CPU: at b≈355, next to the chosen split's line (256), on the floor."""
    plan, losses, timings = resnet50_case()
    d = plan.to_dict()
    d["crossover"].update(x=355.0, y=0.003, split_dim=256, interval=[351.0, 372.0], spans=[256])
    d["curves"]["normalized_perf"] = [1.0, 0.09, 0.06, 0.03, 0.01, 0.004, 0.002, 0.001, 0.0005]
    d["curves"]["loss_fraction"] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.83, 0.83]
    return Plan.from_dict(d), losses, timings


SCENES = {  # name: (case, window width, split axis of the curves figure)
    "budget-2048-log": (lambda: _budget(2048), 1480, "log"),
    "budget-2048-log-narrow": (lambda: _budget(2048), 900, "log"),
    "budget-2048-linear": (lambda: _budget(2048), 1480, "linear"),
    "budget-1-log": (lambda: _budget(1), 1480, "log"),
    "degenerate-log-two-columns": (_degenerate, 1120, "log"),
    "degenerate-linear": (_degenerate, 1480, "linear"),
    "bert-base": (bert_base_case, 1480, "log"),
    "bert-base-1000": (bert_base_case, 1000, "log"),
}
CURVE_SCENES = [name for name in SCENES if not name.startswith("bert")]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    """``rendered(scene)``: the scene's measurements, rendering it on first use."""
    cache: dict[str, dict] = {}

    def measure(name: str) -> dict:
        if name not in cache:
            case, width, axis = SCENES[name]
            folder = tmp_path_factory.mktemp(name)
            page = folder / "page.html"
            script = f'<script>window.THOR_AXIS = "{axis}";</script>' + MEASURE_SCRIPT
            page.write_text(build_report(*case()).replace("</body>", script + "</body>"))
            cmd = [CHROMIUM, *FLAGS, f"--window-size={width},1200", f"--user-data-dir={folder / 'profile'}",
                   "--virtual-time-budget=8000", "--dump-dom", page.resolve().as_uri()]
            dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
            found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
            assert found, f"the measuring script did not run in scene {name}"
            cache[name] = json.loads(html.unescape(found.group(1)))
        return cache[name]

    return measure


def _apart(one: dict, other: dict) -> bool:
    return (one["right"] <= other["left"] or other["right"] <= one["left"]
            or one["bottom"] <= other["top"] or other["bottom"] <= one["top"])


def _inside(x: float, y: float, box: dict, margin: float = 0.0) -> bool:
    return (box["left"] - margin <= x <= box["right"] + margin) and (box["top"] - margin <= y <= box["bottom"] + margin)


@needs_chromium
def test_renders_in_headless_chromium(tmp_path):
    page = write_report(tmp_path / "report.html", *resnet50_case())
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
           page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert done.returncode == 0 and "</html>" in dom, done.stderr[-2000:]
    for key in ("curves", "timing", "heatmap"):
        assert f'id="fig-{key}"' in dom
        div = dom[dom.index(f'id="fig-{key}"'):]
        assert 'class="main-svg"' in div[:20_000], f"figure {key} did not render"


@needs_chromium
@pytest.mark.parametrize("scene", CURVE_SCENES)
def test_curve_labels_stay_inside_and_off_the_ticks(rendered, scene):
    every = rendered(scene)["texts"]
    axis, split = SCENES[scene][2], SCENES[scene][0]()[0].split_dim
    boxes = [b for b in every if b["fig"] == "fig-curves"]
    for b in every:  # no figure cuts a label at its edges
        assert -1 <= b["left"] and b["right"] <= b["width"] + 1, b
    assert any(b["text"] == f"chosen split {split}" for b in every if b["fig"] == "fig-timing")
    ticks = [b for b in boxes if "xtick" in b["group"]]
    assert {b["text"] for b in ticks} == ({str(c) for c in CANDIDATES} if axis == "log"
                                          else {"1", "128", "256", "512", "1024", "2048"})
    labels = [b for b in boxes if b["text"].strip().startswith(("crossover at", "chosen split"))]
    assert len(labels) == 2
    assert all(_apart(label, tick) for label in labels for tick in ticks)


@needs_chromium
@pytest.mark.parametrize("scene", CURVE_SCENES)
def test_crossover_label_is_crossed_by_nothing(rendered, scene):
    """No curve, no dashed line, no marker and no other label crosses the crossover's label."""
    curves = rendered(scene)["curves"]
    label = next(b for b in curves["labels"] if b["text"].startswith("crossover at"))
    chosen = next(b for b in curves["labels"] if b["text"].startswith("chosen split"))
    assert _apart(label, chosen)
    dashed = next(t for t in curves["traces"] if t["name"].startswith("chosen split"))
    assert dashed["line"], "the chosen split's dashed line was not drawn"
    for trace in curves["traces"]:
        crossing = [p for p in trace["line"] if _inside(*p, label)]
        assert not crossing, (trace["name"], label, crossing[:3])
        assert all(_apart(point, label) for point in trace["points"]), trace["name"]
    assert all(_inside(*p, curves["plot"], 1) for p in dashed["line"])
    assert _apart(chosen, {"left": min(p[0] for p in dashed["line"]) - 1, "right": max(p[0] for p in dashed["line"]) + 1,
                           "top": min(p[1] for p in dashed["line"]), "bottom": max(p[1] for p in dashed["line"])})


@needs_chromium
@pytest.mark.parametrize("scene", CURVE_SCENES)
def test_curves_stay_whole_on_either_axis(rendered, scene):
    """Every curve's points lie whole in the plot area, and nothing (the axis buttons, the labels)
    covers a point or a stretch of a curve."""
    curves = rendered(scene)["curves"]
    plot = curves["plot"]
    drawn = [t for t in curves["traces"] if t["name"].startswith(("fraction of factors", "normalized performance"))]
    assert len(drawn) == 4 and sum(len(t["points"]) for t in drawn) == 2 * len(CANDIDATES)
    assert len(curves["buttons"]) == 2 and all(b["top"] >= plot["bottom"] for b in curves["buttons"])
    covers = curves["buttons"] + curves["labels"]
    for trace in drawn:
        for point in trace["points"]:
            assert _inside(point["left"], point["top"], plot, 0.5) and _inside(point["right"], point["bottom"], plot, 0.5)
            assert all(_apart(point, c) for c in covers), (trace["name"], point)
        assert not [p for p in trace["line"] for c in covers if _inside(*p, c)], trace["name"]


def _split_label_rows(boxes: list[dict], cands: list[str]) -> list[float]:
    """The vertical centre of every row of split labels (one per panel axis that shows them all)."""
    by_group: dict[str, list[dict]] = {}
    for b in boxes:
        if re.fullmatch(r"x\d*tick", b["group"]):
            by_group.setdefault(b["group"], []).append(b)
    rows = []
    for ticks in by_group.values():
        ticks.sort(key=lambda b: b["left"])
        assert [b["text"] for b in ticks] == cands
        assert all(a["right"] <= b["left"] for a, b in zip(ticks, ticks[1:]))  # side by side, not piled
        rows.append((ticks[0]["top"] + ticks[0]["bottom"]) / 2)
    return rows


@needs_chromium
@pytest.mark.parametrize("scene", ["bert-base", "bert-base-1000"])
def test_heatmap_of_146_factors_is_readable(rendered, scene):
    plan = bert_base_case()[0]
    every = rendered(scene)["texts"]
    for b in every:  # no figure cuts a label at its edges
        assert -1 <= b["left"] and b["right"] <= b["width"] + 1 and -1 <= b["top"], b
    boxes = [b for b in every if b["fig"] == "fig-heatmap"]
    rows = sorted((b for b in boxes if re.fullmatch(r"y\d*tick", b["group"])), key=lambda b: b["top"])
    assert [b["text"] for b in rows] == [lp.name for lp in plan.layers]  # every name, whole, in order
    assert all(b["bottom"] - b["top"] >= 10 for b in rows)  # 11 px text
    assert all(a["bottom"] <= b["top"] + 0.5 for a, b in zip(rows, rows[1:]))  # no two names overlap
    titles = [b for b in boxes if b["text"] in ("A (inputs)", "G (output gradients)")]
    assert len(titles) == 2
    labels = _split_label_rows(boxes, [str(c) for c in plan.candidates])
    assert len(labels) == 2 * (4 + 1)  # both panels: above each of the 4 bands, and below the last
    ticks = [b for b in boxes if re.fullmatch(r"x\d*tick", b["group"])]
    assert all(_apart(t, title) for t in ticks for title in titles)
    assert min(labels) < rows[0]["top"] and max(labels) > rows[-1]["bottom"]  # above the first row, below the last
    reach = HEADER_EVERY * HEATMAP_ROW + HEADER_PX
    for row in rows:  # split labels near every row
        assert min(abs(y - (row["top"] + row["bottom"]) / 2) for y in labels) <= reach, row["text"]
    assert all(_apart(t, r) for t in ticks for r in rows)


@needs_chromium
@pytest.mark.parametrize("scene", ["bert-base", "bert-base-1000"])
def test_cards_hold_their_text(rendered, scene):
    """The skipped layer's reason wraps inside its card (nothing clipped, no sideways scrolling), and
    the device card names the backend once for its 13 block sizes."""
    cards = rendered(scene)["cards"]
    skipped = cards["skipped"]
    assert skipped["table"] <= skipped["card"] + 0.5
    assert all(scroll <= client for scroll, client in skipped["cells"]), skipped["cells"]
    assert cards["page"][0] <= cards["page"][1]
    assert cards["Device"].count("torch-cholesky") == 1
    assert "torch-cholesky: block sizes 1–2048 (13 sizes)" in cards["Device"].replace("\n", " ")
