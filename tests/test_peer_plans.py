"""Plans for Distributed Shampoo and SOAP: ``thor-plan profile --for shampoo|soap`` end to end on
the tiny cnn, the plan file's fields and validation, the keyword-argument loaders and their
refusals, the refresh-interval rule, the report; and, when the peers import, that the loader's
arguments build them and that 20 of their steps run."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from thor_planner import THOR
from thor_planner.cli.app import app
from thor_planner.inputs.models import load_model
from thor_planner.planning.measurements import Measurements
from thor_planner.planning.peers import constructor_text, peer_kwargs
from thor_planner.planning.plan import Crossover, ParamPlan, Plan, PlanError
from thor_planner.planning.rules import refresh_interval
from thor_planner.report.html import build_report

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PEER_PROFILE = ["profile", "--model", "cnn", "--batches", "3", "--batch-size", "16", "--time-budget", "0.05",
                "--device", "cpu"]
CNN_PARAMS = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight",
              "fc2.bias"]


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_fails(result, message: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert ANSI.sub("", result.stderr) == f"Error: {message}\n"
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def peer_runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """One ``thor-plan profile --for X`` run of the tiny cnn per peer: (folder, stdout)."""
    out = {}
    for name in ("shampoo", "soap"):
        folder = tmp_path_factory.mktemp(name)
        result = invoke(*PEER_PROFILE, "--for", name, "--out", folder)
        assert result.exit_code == 0, (result.output, result.exception)
        out[name] = (folder, ANSI.sub("", result.stdout))
    return out


def test_profile_for_shampoo(peer_runs) -> None:
    folder, stdout = peer_runs["shampoo"]
    assert {p.name for p in folder.iterdir()} == {"plan.json", "report.html", "losses.csv", "timings.csv"}
    plan = Plan.load(folder / "plan.json")
    assert plan.optimizer == "shampoo" and plan.layers == [] and plan.for_peer
    assert plan.candidates == [64, 128, 256]  # from 64 up to the first power of two >= 144 (conv2: 32 × 144)
    assert plan.capture["fisher"] == "empirical" and plan.capture["statistic"] == "gradient"
    assert plan.capture["batches"] == 3
    assert [p.name for p in plan.parameters] == CNN_PARAMS and plan.skipped == []
    assert plan.block_size == plan.split_dim in plan.candidates
    rule = plan.rule
    assert plan.refresh_interval == refresh_interval(rule["refresh_seconds"], step_seconds=rule["step_seconds"],
                                                     overhead=0.05)
    assert rule["refresh_seconds"] == plan.curves["inversion_seconds"][plan.candidates.index(plan.block_size)]
    conv2 = next(p for p in plan.parameters if p.name == "conv2.weight")
    assert conv2.shape == [32, 16, 3, 3]
    assert conv2.blocks == {64: "32×16×9", 128: "32×16×9", 256: "32×144"}[plan.block_size]
    m = Measurements.load(folder)
    assert m.optimizer == "shampoo" and list(m.losses.columns) == ["parameter", "shape", "64", "128", "256"]
    assert m.losses["shape"].tolist()[:2] == ["16x1x3x3", "16"]
    assert m.losses["256"].max() == 0.0  # nothing is blocked at 256 in this model
    expected = (f"DistributedShampoo(model.parameters(), max_preconditioner_dim={plan.block_size}, "
                f"precondition_frequency={plan.refresh_interval}, lr=...)")
    assert expected in stdout and "shampoo_kwargs()" in stdout


def test_profile_for_soap_skips_what_it_never_preconditions(peer_runs) -> None:
    plan = Plan.load(peer_runs["soap"][0] / "plan.json")
    assert plan.optimizer == "soap"
    assert [p.name for p in plan.parameters] == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert [s["name"] for s in plan.skipped] == ["conv1.bias", "conv2.bias", "fc1.bias", "fc2.bias"]
    assert plan.skipped[0]["reason"] == ("SOAP (heavyball) leaves it to its first-order update at every block size "
                                         "(heavyball's SOAP does not precondition one-dimensional parameters)")
    assert plan.candidates == [64, 128, 256]
    fc1 = next(p for p in plan.parameters if p.name == "fc1.weight")
    assert fc1.blocks == ("64×128: 128 identity" if plan.block_size == 64 else "64×128")
    assert plan.soap_kwargs() == {"max_precond_dim": plan.block_size, "precondition_frequency": plan.refresh_interval}


def test_show_prints_the_arguments_to_paste(peer_runs) -> None:
    folder, _ = peer_runs["shampoo"]
    plan = Plan.load(folder / "plan.json")
    result = invoke("show", folder / "plan.json")
    assert result.exit_code == 0, result.output
    text = ANSI.sub("", result.stdout)
    assert "cnn (13,706 parameters) on cpu" in text and "plan for Distributed Shampoo" in text
    assert (f"Distributed Shampoo: max_preconditioner_dim={plan.block_size}, "
            f"precondition_frequency={plan.refresh_interval}") in text
    assert "from distributed_shampoo import DistributedShampoo" in text
    assert f"Plan.load('{folder / 'plan.json'}').shampoo_kwargs()" in text
    row = next(line for line in text.splitlines() if line.startswith("conv2.weight"))
    assert row.split()[1] == "32×16×3×3"


def test_plan_from_and_report_rewrite(peer_runs, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("losses.csv", "timings.csv", "plan.json", "report.html"):
        (folder / name).write_bytes((peer_runs["shampoo"][0] / name).read_bytes())
    result = invoke("plan", "--from", folder, "--rule", "budget", "--overhead", "0.05", "--interval", "1000")
    assert result.exit_code == 0, result.output
    plan = Plan.load(folder / "plan.json")
    assert plan.optimizer == "shampoo" and plan.rule["name"] == "budget" and plan.rule["interval"] == 1000
    step, seconds = plan.rule["step_seconds"], plan.curves["inversion_seconds"]
    fits = [b for b, s in zip(plan.candidates, seconds) if s <= 0.05 * step * 1000]
    assert plan.block_size == (max(fits) if fits else plan.candidates[0])
    html = (folder / "report.html").read_text()
    assert "plan for Distributed Shampoo" in html and "Information loss per parameter" in html
    assert "Refresh time of the whole network" in html and "max_preconditioner_dim" in html
    assert invoke("report", folder).exit_code == 0


def test_peer_options_refused(tmp_path: Path) -> None:
    out = tmp_path / "x"
    cases = [
        (["--fisher", "sampled"], "Invalid --fisher=sampled for --for shampoo: Distributed Shampoo keeps statistics "
                                  "of the training gradient (the batch labels' loss); drop --fisher"),
        (["--backend", "torch-inv"], "Invalid --backend='torch-inv' for --for shampoo: Distributed Shampoo refreshes "
                                     "with its own eigendecompositions, which are timed as it runs them; drop --backend"),
        (["--world-size", "2"], "Invalid --world-size=2 for --for shampoo: plans for Distributed Shampoo are made "
                                "for one device (how it spreads blocks over ranks is not modelled); drop --world-size"),
        (["--save-factors"], "Invalid --save-factors for --for shampoo: it saves THOR's Kronecker factors; drop it"),
        (["--candidates", "64"], "Only 1 of the block sizes 64 cut the model's parameters differently for "
                                 "Distributed Shampoo: give --candidates that do (the parameters' dimensions are up "
                                 "to 144)"),
    ]
    for args, message in cases:
        assert_fails(invoke(*PEER_PROFILE, "--for", "shampoo", *args, "--out", out), message)
        assert not out.exists()
    result = invoke(*PEER_PROFILE, "--for", "adam", "--out", out)
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", ANSI.sub("", result.output)).split())
    assert result.exit_code == 2 and "'adam' is not one of 'thor', 'shampoo', 'soap'" in flat


# ------------------------------------------------------------------------- the plan file


def peer_plan(optimizer: str = "shampoo") -> Plan:
    return Plan(model={"name": "cnn", "source": "builtin", "num_params": 13706}, device={"type": "cpu"},
                capture={"data": "synthetic"}, rule={"name": "crossover", "loss_threshold": 0.01},
                candidates=[64, 128], curves={"loss_fraction": [0.5, 1.0], "inversion_seconds": [0.1, 0.2],
                                              "normalized_perf": [1.0, 0.5]},
                crossover=Crossover(x=100.0, y=0.7, split_dim=128), optimizer=optimizer, block_size=128,
                refresh_interval=40, parameters=[ParamPlan(name="fc1.weight", shape=[64, 128], blocks="64×128",
                                                           loss=0.0)])


def test_peer_plan_round_trip() -> None:
    plan = peer_plan()
    d = plan.to_dict()
    assert d["optimizer"] == "shampoo" and d["block_size"] == 128 and d["refresh_interval"] == 40
    assert "layers" not in d and "schedule" not in d and "family" not in d
    assert Plan.from_dict(json.loads(json.dumps(d))).to_dict() == d


def test_thor_plans_name_their_optimizer(profiled_dir: Path) -> None:
    d = json.loads((profiled_dir / "plan.json").read_text())
    assert d["optimizer"] == "thor"
    del d["optimizer"]  # plans written before the field: THOR's
    assert Plan.from_dict(d).optimizer == "thor"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(optimizer="adam"),
     "Invalid plan field optimizer=\"adam\": must be one of 'thor', 'shampoo', 'soap'"),
    (lambda d: d.pop("block_size"), "Invalid plan: missing field block_size"),
    (lambda d: d.update(refresh_interval=0), "Invalid plan field refresh_interval=0: must be an integer >= 1"),
    (lambda d: d.update(parameters=[]), "Invalid plan field parameters=[]: must list at least one parameter"),
    (lambda d: d["parameters"][0].update(shape=[64, -1]),
     "Invalid plan field parameters[0].shape=[64, -1]: must be a list of integers >= 0"),
    (lambda d: d["parameters"].append(dict(d["parameters"][0])),
     "Invalid plan field parameters[1].name=\"fc1.weight\": parameter names must be unique (also parameters[0].name)"),
    (lambda d: d["parameters"][0].update(loss=2), "Invalid plan field parameters[0].loss=2: must be a number in [0, 1]"),
])
def test_peer_plan_validation(edit, message: str) -> None:
    d = copy.deepcopy(peer_plan().to_dict())
    edit(d)
    with pytest.raises(PlanError) as info:
        Plan.from_dict(d)
    assert str(info.value) == message


def test_loaders_and_their_refusals(profiled_dir: Path) -> None:
    shampoo, soap = peer_plan("shampoo"), peer_plan("soap")
    assert shampoo.shampoo_kwargs() == {"max_preconditioner_dim": 128, "precondition_frequency": 40}
    assert soap.soap_kwargs() == {"max_precond_dim": 128, "precondition_frequency": 40}
    assert peer_kwargs(shampoo, "shampoo") == shampoo.shampoo_kwargs()
    with pytest.raises(PlanError) as info:
        shampoo.soap_kwargs()
    assert str(info.value) == ("Plan was made for Distributed Shampoo (optimizer 'shampoo'), not SOAP (heavyball): "
                               "pass plan.shampoo_kwargs() to distributed_shampoo.DistributedShampoo, or make one "
                               "with 'thor-plan profile --for soap'")
    thor_plan = Plan.load(profiled_dir / "plan.json")
    with pytest.raises(PlanError) as info:
        thor_plan.shampoo_kwargs()
    assert str(info.value) == ("Plan was made for THOR (optimizer 'thor'), not Distributed Shampoo: build "
                               "THOR(model, plan), or make one with 'thor-plan profile --for shampoo'")
    with pytest.raises(PlanError) as info:
        THOR(load_model("cnn").model, shampoo, lr=0.1)
    assert str(info.value) == ("Plan was made for Distributed Shampoo (optimizer 'shampoo'), not THOR: pass "
                               "plan.shampoo_kwargs() to distributed_shampoo.DistributedShampoo, or make one with "
                               "'thor-plan profile --for thor'")
    with pytest.raises(ValueError, match="Invalid optimizer='thor': must be one of 'shampoo', 'soap'"):
        peer_kwargs(thor_plan, "thor")
    mlp = load_model("mlp").model
    with pytest.raises(PlanError, match=r"fc1.weight: plan shape \[64, 128\], model shape \[128, 64\]"):
        shampoo.shampoo_kwargs(mlp)
    assert constructor_text(shampoo)[1] == ("DistributedShampoo(model.parameters(), max_preconditioner_dim=128, "
                                            "precondition_frequency=40, lr=...)")


def test_refresh_interval_rule() -> None:
    assert refresh_interval(1.0, step_seconds=0.2, overhead=0.05) == 100  # exactly the budget, not 101
    assert refresh_interval(1.015, step_seconds=0.2, overhead=0.05) == 102
    assert refresh_interval(1e-6, step_seconds=0.2, overhead=0.05) == 1
    with pytest.raises(ValueError, match="both must be > 0"):
        refresh_interval(1.0, step_seconds=0.0, overhead=0.05)


def test_report_of_a_peer_plan(peer_runs) -> None:
    folder, _ = peer_runs["soap"]
    m = Measurements.load(folder)
    html = build_report(Plan.load(folder / "plan.json"), m.losses, m.timings)
    assert "plan for SOAP (heavyball)" in html and "Skipped parameters" in html
    assert "fraction of parameters with loss" in html and "block size b (max_precond_dim)" in html


def test_broken_peer_losses_refused(peer_runs, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "timings.csv").write_bytes((peer_runs["shampoo"][0] / "timings.csv").read_bytes())
    losses = (peer_runs["shampoo"][0] / "losses.csv").read_text().replace("16x1x3x3", "16 by 1")
    (folder / "losses.csv").write_text(losses)
    assert_fails(invoke("plan", "--from", folder),
                 f"'{folder / 'losses.csv'}' needs one row per parameter and shapes such as 128x384: re-create it "
                 "with 'thor-plan profile'")


# ----------------------------------------------------------------- the peers themselves


def twenty_steps(model: torch.nn.Module, opt) -> list[float]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_distributed_shampoo_runs_with_the_plan(peer_runs) -> None:
    ds = pytest.importorskip("distributed_shampoo")
    plan = Plan.load(peer_runs["shampoo"][0] / "plan.json")
    model = load_model("cnn").model
    opt = ds.DistributedShampoo(model.parameters(), **plan.shampoo_kwargs(model), lr=1e-3)
    assert opt.param_groups[0]["max_preconditioner_dim"] == plan.block_size
    assert opt.param_groups[0]["precondition_frequency"] == plan.refresh_interval
    losses = twenty_steps(model, opt)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_soap_runs_with_the_plan(peer_runs) -> None:
    heavyball = pytest.importorskip("heavyball")
    plan = Plan.load(peer_runs["soap"][0] / "plan.json")
    model = load_model("cnn").model
    opt = heavyball.SOAP(model.parameters(), **plan.soap_kwargs(model), lr=1e-3)
    assert opt.param_groups[0]["max_precond_dim"] == plan.block_size
    with torch.compiler.set_stance("force_eager"):  # inductor's CPU compile takes minutes; eager is the same step
        losses = twenty_steps(model, opt)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


# ------------------------------------------------------------------------------ the rules


def measured(seconds: list[float]) -> Measurements:
    """Measurements made for Shampoo on four 256×256 parameters whose losses are written here."""
    import pandas as pd

    cands = [64, 128, 256, 512]
    losses = pd.DataFrame([{"parameter": f"p{i}", "shape": "256x256",
                            **{str(b): (0.0 if b >= edge else 0.5) for b in cands}}
                           for i, edge in enumerate([128, 256, 512, 1024])])
    timings = pd.DataFrame([{"candidate": b, "median_s": s, "min_s": s, "max_s": s, "repeats": 3, "blocks": "",
                             "gflop": 0.0, "predicted": False} for b, s in zip(cands, seconds)])
    meta = {"optimizer": "shampoo", "model": {"name": "m"}, "device": {"type": "cpu"}, "capture": {"data": "x"},
            "step_seconds": 0.1}
    return Measurements(losses=losses, timings=timings, meta=meta)


def test_block_size_and_interval_rules() -> None:
    from thor_planner.planning.planner import Rule, RuleConfig, make_plan

    m = measured([0.1, 0.12, 0.4, 1.6])
    plan = make_plan(m, RuleConfig())
    # loss fraction 0, 1/4, 1/2, 3/4 rises; p_64/p_b = 1, 0.833, 0.25, 0.0625 falls: they cross between 128
    # and 256 at 128 + 128 · (0.5833 / 0.8333) ≈ 217.6, nearest candidate 256
    assert plan.curves["loss_fraction"] == [0.0, 0.25, 0.5, 0.75]
    assert plan.crossover.x == pytest.approx(128 + 128 * 0.7) and plan.block_size == 256
    assert plan.refresh_interval == 80  # 0.4 s within 5% of a 0.1 s step: every 80 steps
    assert plan.crossover.warning is None
    assert [p.loss for p in plan.parameters] == [0.0, 0.0, 0.5, 0.5]
    assert plan.parameters[0].blocks == "256×256"
    budget = make_plan(m, RuleConfig(name=Rule.budget, interval=100))  # 0.5 s a refresh: up to 256
    assert (budget.block_size, budget.refresh_interval) == (256, 80)
    tight = make_plan(m, RuleConfig(name=Rule.budget, interval=10))  # 0.05 s: none fits
    assert (tight.block_size, tight.refresh_interval) == (64, 20)
    assert tight.crossover.warning.startswith("No candidate fits the budget: even b=64, the cheapest, takes 0.1 s per refresh")
    flat = make_plan(measured([0.1, 0.1, 0.1, 0.1]), RuleConfig(name=Rule.crossover))
    assert flat.block_size == 512 and flat.crossover.warning.startswith(
        "The curves do not cross: refreshing smaller blocks is not cheap enough to meet the loss curve")
    auto = make_plan(measured([0.1, 0.1, 0.1, 0.1]), RuleConfig())  # no crossing: auto takes the budget rule
    assert (auto.rule["chose"], auto.rule["because"]) == ("budget", "The curves do not cross")
    assert plan.rule["chose"] == "crossover"
