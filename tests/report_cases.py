"""Realistic fake plans and measurements for the report's tests: a small case, ResNet-50's 54 layers
and BERT-base's 73.

``python tests/report_cases.py out.html`` writes a demo report from the fake ResNet-50 data
(``--bert``: BERT-base's 146 factors).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from thor_planner.planning.plan import Plan, Schedule
from thor_planner.report.html import write_report

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


#: The reason the planner gives for BERT-base's tied output projection (a long line for the card).
TIED_REASON = ("output projection tied to the word embeddings (768→30522, factors A 769, G 30522; G would be "
               "3.73 GB in float32, ≈ 2.8e+13 flop to invert densely): its gradient also holds the embedding's, so "
               "it takes the first-order update")


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
                     skipped=[{"name": "cls.predictions.decoder", "reason": TIED_REASON}])
    d = plan.to_dict()
    d["model"].update(name="bert-base", num_params=109_514_298)
    d["device"]["backends"] = {str(b): "torch-cholesky" for b in [1, 16, 32, 64, 128, 256, 257, 512, 768, 769, 1024,
                                                                  1025, 2048]}
    return Plan.from_dict(d), losses, timings


if __name__ == "__main__":  # python tests/report_cases.py [out.html] [--bert]: the ResNet-50 or BERT-base demo
    args = [a for a in sys.argv[1:] if a != "--bert"]
    target = Path(args[0] if args else "report.html")
    print(write_report(target, *(bert_base_case() if "--bert" in sys.argv else resnet50_case())))
