"""THOR on torch.distributed: measured on CPU ranks (gloo), predicted for many GPUs.

    python bench/distributed.py [--ranks 1,2,4] [--steps 40] [--no-write]
        [--device-profile FILE --gpus 8,16,32,64,128,256 --split 256 --step-ms MS]

**Measured** (gloo, one torch thread per rank, ResNet-18 with 10 classes at 32×32, a global batch
of 64 split across the ranks, DDP, ``THOR(split=128)`` with factors every 5 steps and check points
every 10): per rank count, the amortized step time on rank 0 after warm-up, the time rank 0 spends
in its share of the inversions per check point, and the bytes THOR's own collectives carry per step
(counted by wrapping ``torch.distributed.all_reduce`` / ``broadcast``; DDP's gradient all-reduce,
one parameter's worth of bytes per step, is listed separately). On a 2-core machine more than two
ranks share cores, so step times past 2 ranks show contention, not scaling.

**Predicted** (``--device-profile``, e.g. a GPU's ``thor-plan device-profile``): ResNet-50's factors
at ``--split``; the layers are assigned to N ranks by the runtime's LPT on ``Σ s³`` and the busiest
rank's blocks are priced by the profile's cost model: the per-rank refresh time, and amortized over
check points 100 and 1000 steps apart, as a share of ``--step-ms`` (a measured training step) when
given.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine_line, write_json, write_section  # noqa: E402

from thor_planner.capture.layers import find_layers  # noqa: E402
from thor_planner.inputs.models import load_model  # noqa: E402
from thor_planner.planning.assignment import assign_lpt, layer_cost  # noqa: E402
from thor_planner.partition import block_counts, partition  # noqa: E402

GLOBAL_BATCH, WARMUP = 64, 5


def _worker(rank: int, world: int, init: str, steps: int, out: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F

    from thor_planner import THOR
    from thor_planner.optim import distributed as thor_dist
    from thor_planner.planning.plan import Schedule

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    sent = {"bytes": 0}
    for name in ("all_reduce", "broadcast"):
        real = getattr(dist, name)

        def counted(tensor, *args, _real=real, **kwargs):
            sent["bytes"] += tensor.numel() * tensor.element_size()
            return _real(tensor, *args, **kwargs)
        setattr(thor_dist.dist, name, counted)
    torch.manual_seed(0)
    model = load_model("resnet18", num_classes=10).model
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    schedule = Schedule(factor_every=5, interval_initial=10, interval_max=10)
    opt = THOR(ddp, split=128, schedule=schedule, lr=0.1, momentum=0.9, distributed=world > 1)
    refresh = []
    inner = opt._solver  # this rank's share of the inversions plus the broadcasts (all of them on 1 rank)

    def timed(layers, factors, shift):
        start = time.perf_counter()
        result = inner(layers, factors, shift)
        refresh.append(time.perf_counter() - start)
        return result
    opt._solver = timed
    local = GLOBAL_BATCH // world
    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(local, 3, 32, 32, generator=gen), torch.randint(0, 10, (local,), generator=gen)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()

    for _ in range(WARMUP):
        step()
    dist.barrier()
    sent["bytes"], refresh[:] = 0, []
    start = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        torch.save({"ms": seconds / steps * 1e3, "thor_bytes_per_step": sent["bytes"] / steps,
                    "ddp_bytes_per_step": params, "refresh_ms": [r * 1e3 for r in refresh]}, out)
    dist.destroy_process_group()


def measure(world: int, steps: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.pt")
        mp.spawn(_worker, args=(world, f"file://{tmp}/store", steps, out), nprocs=world, join=True)
        return torch.load(out, weights_only=False)


def predict(profile_path: str, split: int, gpus: list[int], step_ms: float | None) -> list[dict]:
    from thor_planner.timing.device_profile import load_device_profile

    model = load_model("resnet50").model
    specs = find_layers(model)[0]
    parts = [(partition(s.a_dim, split), partition(s.g_dim, split)) for s in specs]
    costs = [layer_cost(a, g) for a, g in parts]
    cost_model = load_device_profile(profile_path).cost_model()
    all_counts = block_counts([d for s in specs for d in (s.a_dim, s.g_dim)], [split] * 2 * len(specs))
    chosen = cost_model.choose(all_counts)
    rows = []
    for n in [1, *gpus]:
        owner = assign_lpt(costs, n)
        per_rank = []
        for r in range(n):
            mine = [specs[i] for i, o in enumerate(owner) if o == r]
            if not mine:
                per_rank.append(0.0)
                continue
            counts = block_counts([d for s in mine for d in (s.a_dim, s.g_dim)], [split] * 2 * len(mine))
            per_rank.append(cost_model.refresh_seconds(counts, 2 * len(mine), chosen) * 1e3)
        worst = max(per_rank)
        row = {"gpus": n, "refresh_ms_busiest_rank": round(worst, 3),
               "amortized_ms_interval_100": round(worst / 100, 4), "amortized_ms_interval_1000": round(worst / 1000, 5)}
        if step_ms:
            row["share_of_step_interval_100"] = round(worst / 100 / step_ms, 5)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device-profile", help="a GPU device profile for the predicted part")
    parser.add_argument("--gpus", default="8,16,32,64,128,256")
    parser.add_argument("--split", type=int, default=256)
    parser.add_argument("--step-ms", type=float, help="a measured training step (ms) to express shares")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    measured = {}
    for world in (int(r) for r in args.ranks.split(",")):
        measured[world] = measure(world, args.steps)
        print(world, measured[world], flush=True)
    lines = ["## THOR on torch.distributed (`bench/distributed.py`)", "",
             f"Machine: {machine_line()}. Command: `python bench/distributed.py {' '.join(sys.argv[1:])}`.", "",
             "Measured (gloo on this CPU; see the script's docstring for the setting):", "",
             "| ranks | ms/step (rank 0) | inversion + sharing per check point, rank 0 (ms, median) | THOR bytes/step | DDP bytes/step |",
             "|---:|---:|---:|---:|---:|"]
    for world, m in measured.items():
        refresh = sorted(m["refresh_ms"])
        med = f"{refresh[len(refresh) // 2]:.1f}" if refresh else "— (no check point in the window)"
        lines.append(f"| {world} | {m['ms']:.1f} | {med} | {m['thor_bytes_per_step'] / 1e6:.2f} MB | "
                     f"{m['ddp_bytes_per_step'] / 1e6:.2f} MB |")
    predicted = []
    if args.device_profile:
        predicted = predict(args.device_profile, args.split, [int(g) for g in args.gpus.split(",")], args.step_ms)
        lines += ["", f"Predicted from `{args.device_profile}` (ResNet-50, every factor at split {args.split}, "
                  "LPT over the ranks, the busiest rank priced by the cost model"
                  + (f"; shares of a {args.step_ms:g} ms step" if args.step_ms else "") + "):", "",
                  "| GPUs | refresh, busiest rank (ms) | amortized, check every 100 (ms/step) | every 1000 |"
                  + (" share of step (every 100) |" if args.step_ms else ""),
                  "|---:|---:|---:|---:|" + ("---:|" if args.step_ms else "")]
        for row in predicted:
            share = f" {row['share_of_step_interval_100'] * 100:.2f}% |" if args.step_ms else ""
            lines.append(f"| {row['gpus']} | {row['refresh_ms_busiest_rank']:.2f} | {row['amortized_ms_interval_100']:.3f} "
                         f"| {row['amortized_ms_interval_1000']:.4f} |{share}")
    body = "\n".join(lines)
    if args.no_write:
        print(body)
        return
    write_section("distributed", body)
    write_json("distributed", {"machine": machine_line(), "command": " ".join(sys.argv), "measured": measured,
                               "predicted": predicted, "device_profile": args.device_profile, "split": args.split})


if __name__ == "__main__":
    main()
