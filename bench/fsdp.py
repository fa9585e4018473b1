"""THOR under FSDP2 against THOR under DDP: per-rank memory measured on CPU ranks (gloo), per-rank
refresh time predicted for many GPUs.

    python bench/fsdp.py [--ranks 2,4] [--split 128] [--no-write]
        [--device-profile profiles/devices/nvidia-h100-80gb-hbm3.json --gpus 8,16,32,64,128,256 --gpu-split 256]

**Measured** (gloo, one torch thread per rank): gpt-tiny (17 Linear layers, the tied output head left
to the first-order update, as THOR does without a plan) on 4 × 64 tokens per rank, ``THOR(split=…)``
with factors every step and a check point every 2 steps (ω1 = ω2 = 0: no layer frozen, so every
layer keeps its factors), 3 steps; then on every rank the bytes THOR
keeps per layer: the running factors (A and G blocks, and under FSDP the running trace of G), the
undamped blocks of the last refresh (what a checkpoint saves) and the solved blocks the direction
applies (inverses, held as the direction applies them). Under DDP every rank holds all of it for
every layer; under FSDP a rank holds A whole and the G blocks of its own rows only. The whole G's
blocks a factor step captures and all-reduces are transient (freed at the fold) and listed apart. The
numbers do not depend on timing, so the run is short.

**Predicted** (``--device-profile``): gpt-small (GPT-2-small sized, 48 Linear layers besides the
tied head) with every factor at ``--gpu-split``; G at the largest split that tiles the shards
(``tiling_split``), a layer some rank holds no rows of gathered. Per N ranks the busiest rank's
blocks at a whole-network refresh are priced by the profile's cost model: under DDP its LPT share of
the layers (``assign_lpt``), under FSDP its own bands' G blocks plus its LPT share of the A factors
(and of the gathered layers' G), as the runtime assigns them; and the bytes of factors plus solved
blocks one rank keeps (float32, blocks only).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine_line, write_json, write_section  # noqa: E402

from thor_planner.capture.layers import find_layers, tied_layers  # noqa: E402
from thor_planner.inputs.models import load_model  # noqa: E402
from thor_planner.optim.blocks import packed_size  # noqa: E402
from thor_planner.partition import block_counts, every_shard_holds_rows, partition, shard_rows, tiling_split  # noqa: E402
from thor_planner.planning.assignment import assign_lpt, factor_cost, layer_cost, shared_factors, tiles  # noqa: E402

TOKENS, LOCAL_BATCH, STEPS = 64, 4, 3


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def thor_bytes(opt) -> dict:
    """The bytes THOR keeps on this rank, by kind (see the module docstring)."""
    out = {"factors": 0, "sources": 0, "solved": 0, "capture": 0}
    for layer in opt._layers:
        f = layer.factors
        out["factors"] += _bytes([f.a, f.g, getattr(f, "g_trace", None)])
        if layer.source is not None:
            out["sources"] += _bytes(list(_tensors(layer.source.a_blocks)) + list(_tensors(layer.source.g_blocks)))
        out["solved"] += _bytes(t for value in vars(layer.precond).values() for t in _tensors(value))
        out["capture"] += sum(packed_size(p) for p in layer.capture_parts) * 4
    return out


def _worker(rank: int, world: int, init: str, mode: str, split: int, out: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F

    from thor_planner import THOR
    from thor_planner.planning.plan import Schedule

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    loaded = load_model("gpt-tiny")
    model = loaded.model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
        wrapped = model
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    schedule = Schedule(factor_every=1, interval_initial=2, interval_max=2, omega1=0.0, omega2=0.0)  # no freezing
    opt = THOR(wrapped, split=split, schedule=schedule, lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(rank)
    for _ in range(STEPS):
        x = torch.randint(0, loaded.vocab_size, (LOCAL_BATCH, TOKENS), generator=gen)
        opt.zero_grad()
        logits = wrapped(x)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.roll(x, -1, 1).reshape(-1)).backward()
        opt.step()
    mine = {**thor_bytes(opt), "g_splits": sorted({l.g_part.split for l in opt._layers}),
            "held": sorted({type(l).__name__ for l in opt._layers})}
    everyone: list = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        torch.save(everyone, out)
    dist.destroy_process_group()


def measure(world: int, mode: str, split: int) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.pt")
        mp.spawn(_worker, args=(world, f"file://{tmp}/store", mode, split, out), nprocs=world, join=True)
        return torch.load(out, weights_only=False)


def _gpt_small_layers() -> list[tuple[int, int]]:
    model = load_model("gpt-small").model
    tied = tied_layers(model)
    return [(s.a_dim, s.g_dim) for s in find_layers(model)[0] if s.name not in tied]


def _priced(cost_model, chosen, blocks: list[tuple[int, int]], factors: int) -> float:
    """Seconds of one batched refresh of ``blocks`` (``(dim, split)`` of each factor) on the profile."""
    if not blocks:
        return 0.0
    counts = block_counts([d for d, _ in blocks], [s for _, s in blocks])
    return cost_model.refresh_seconds(counts, factors, {size: chosen.get(size) or cost_model.best(size, n)[0]
                                                         for size, n in counts.items()})


def _fsdp_rank(layers, split: int, n: int, cost_model, chosen) -> dict:
    """The busiest FSDP rank's refresh (ms) and one rank's kept bytes on ``n`` ranks."""
    parts = []
    for a, g in layers:
        g_split = tiling_split(g, n, split) if every_shard_holds_rows(g, n) else split
        parts.append((partition(a, split), partition(g, g_split)))
    banded = [tiles(g, n) for _, g in parts]
    jobs = shared_factors(banded)
    owner = assign_lpt([factor_cost(parts[i][f]) for i, f in jobs], n)
    worst, worst_bytes = 0.0, 0
    for r in range(n):
        blocks = [(parts[i][f].dim, parts[i][f].split) for (i, f), o in zip(jobs, owner) if o == r]
        blocks += [(shard_rows(g.dim, n)[r][1], g.split) for (_, g), b in zip(parts, banded) if b]
        worst = max(worst, _priced(cost_model, chosen, [(d, s) for d, s in blocks if d], len(blocks)))
        kept = sum(packed_size(a) + (packed_size(partition(shard_rows(g.dim, n)[r][1], g.split)) if b else packed_size(g))
                   for (a, g), b in zip(parts, banded))
        worst_bytes = max(worst_bytes, kept * 4 * 2)  # running factors + solved blocks, float32
    return {"refresh_ms": worst * 1e3, "bytes": worst_bytes, "gathered": sum(not b for b in banded),
            "g_splits": sorted({g.split for _, g in parts})}


def predict(profile_path: str, split: int, gpus: list[int]) -> list[dict]:
    from thor_planner.timing.device_profile import load_device_profile

    layers = _gpt_small_layers()
    cost_model = load_device_profile(profile_path).cost_model()
    chosen = cost_model.choose(block_counts([d for pair in layers for d in pair], [split] * 2 * len(layers)))
    parts = [(partition(a, split), partition(g, split)) for a, g in layers]
    rows = []
    for n in gpus:
        owner = assign_lpt([layer_cost(a, g) for a, g in parts], n)
        ddp = max(_priced(cost_model, chosen, [(p.dim, p.split) for (a, g), o in zip(parts, owner) if o == r
                                               for p in (a, g)], 2 * sum(o == r for o in owner)) for r in range(n))
        ddp_bytes = sum(packed_size(a) + packed_size(g) for a, g in parts) * 4 * 2
        fsdp = _fsdp_rank(layers, split, n, cost_model, chosen)
        rows.append({"gpus": n, "ddp_refresh_ms": round(ddp * 1e3, 3), "fsdp_refresh_ms": round(fsdp["refresh_ms"], 3),
                     "ddp_mib_per_rank": round(ddp_bytes / 2**20, 1), "fsdp_mib_per_rank": round(fsdp["bytes"] / 2**20, 1),
                     "fsdp_gathered_layers": fsdp["gathered"], "fsdp_g_splits": fsdp["g_splits"]})
    return rows


def _mib(b: float) -> str:
    return f"{b / 2**20:.2f}"


def _measured_lines(measured: dict) -> list[str]:
    lines = ["| ranks | THOR | G splits | factors (MiB) | refresh sources (MiB) | solved blocks (MiB) | kept, total (MiB) "
             "| whole G captured per factor step, transient (MiB) |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for (world, mode), ranks in measured.items():
        top = max(ranks, key=lambda r: r["factors"] + r["sources"] + r["solved"])
        kept = top["factors"] + top["sources"] + top["solved"]
        lines.append(f"| {world} | {mode.upper()} ({', '.join(top['held'])}) | {', '.join(map(str, top['g_splits']))} | "
                     f"{_mib(top['factors'])} | {_mib(top['sources'])} | {_mib(top['solved'])} | {_mib(kept)} | "
                     f"{_mib(top['capture'])} |")
    return lines


def _kept(ranks: list[dict]) -> int:
    return max(r["factors"] + r["sources"] + r["solved"] for r in ranks)


def _findings(measured: dict, predicted: list[dict]) -> list[str]:
    saved = [f"{1 - _kept(measured[(w, 'fsdp')]) / _kept(measured[(w, 'ddp')]):.0%} at {w} ranks"
             for w, m in measured if m == "fsdp" and (w, "ddp") in measured]
    out = []
    if saved:
        out.append(f"FSDP-THOR keeps less per rank than DDP-THOR: {', '.join(saved)} (A stays whole on every "
                   "rank, G shrinks with the ranks).")
    if predicted:
        first, last = predicted[0], predicted[-1]
        out.append(f"Predicted: THOR's kept state per rank falls from {first['ddp_mib_per_rank']:.0f} MiB (DDP) to "
                   f"{first['fsdp_mib_per_rank']:.0f} MiB on {first['gpus']} GPUs and {last['fsdp_mib_per_rank']:.0f} MiB on "
                   f"{last['gpus']}; the busiest rank's refresh is {first['fsdp_refresh_ms']:.1f} ms against DDP's "
                   f"{first['ddp_refresh_ms']:.1f} ms on {first['gpus']} GPUs: every rank solves a band of every layer's G at "
                   "the split that tiles it, so its refresh has more block sizes (one batched call each) and more "
                   "factors than a DDP rank's share of whole layers, which the profile prices above their flops; the G "
                   f"splits that tile shrink with the ranks (to {', '.join(map(str, last['fsdp_g_splits']))} on "
                   f"{last['gpus']}), so sharding over fewer ranks (HSDP) keeps more of G.")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="2,4")
    parser.add_argument("--split", type=int, default=128)
    parser.add_argument("--device-profile", default="profiles/devices/nvidia-h100-80gb-hbm3.json")
    parser.add_argument("--gpus", default="8,16,32,64,128,256")
    parser.add_argument("--gpu-split", type=int, default=256)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    measured = {}
    for world in (int(r) for r in args.ranks.split(",") if r):
        for mode in ("ddp", "fsdp"):
            measured[(world, mode)] = measure(world, mode, args.split)
            print(world, mode, measured[(world, mode)][0], flush=True)
    predicted = predict(args.device_profile, args.gpu_split, [int(g) for g in args.gpus.split(",")])
    lines = ["## THOR under FSDP2 against DDP (`bench/fsdp.py`)", "",
             f"Machine: {machine_line()}. Command: `python bench/fsdp.py {' '.join(sys.argv[1:])}`.", "",
             f"Measured per rank (gloo on this CPU; gpt-tiny, `THOR(split={args.split})`, float32; the busiest rank; "
             "see the script's docstring):", "", *_measured_lines(measured), "",
             f"Predicted from `{args.device_profile}` (gpt-small, every factor at split {args.gpu_split}, G tiled "
             "for FSDP; the busiest rank's refresh priced by the cost model; kept = running factors + solved "
             "blocks, float32):", "",
             "| GPUs | DDP refresh (ms) | FSDP refresh (ms) | DDP kept (MiB/rank) | FSDP kept (MiB/rank) | FSDP gathered "
             "layers | FSDP G splits |", "|---:|---:|---:|---:|---:|---:|---|"]
    for row in predicted:
        lines.append(f"| {row['gpus']} | {row['ddp_refresh_ms']:.2f} | {row['fsdp_refresh_ms']:.2f} | "
                     f"{row['ddp_mib_per_rank']:.1f} | {row['fsdp_mib_per_rank']:.1f} | {row['fsdp_gathered_layers']} | "
                     f"{', '.join(map(str, row['fsdp_g_splits']))} |")
    lines += ["", *_findings(measured, predicted)]
    body = "\n".join(lines)
    if args.no_write:
        print(body)
        return
    write_section("fsdp", body)
    write_json("fsdp", {"machine": machine_line(), "command": " ".join(sys.argv),
                        "measured": {f"{w}-{m}": v for (w, m), v in measured.items()}, "predicted": predicted,
                        "device_profile": args.device_profile, "split": args.split, "gpu_split": args.gpu_split})


if __name__ == "__main__":
    main()
