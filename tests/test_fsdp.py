"""THOR under FSDP2 (``fully_shard``, gloo, 2 CPU processes) against one process on the full batch;
resuming through torch.distributed.checkpoint; the shard constraint of partition, planner and
runtime, and the refusals."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from thor_planner import THOR
from thor_planner.capture.collector import layer_specs
from thor_planner.optim.checkpoint import StateMismatchError
from thor_planner.partition import crossed_rows, partition, shard_rows, tiling_split
from thor_planner.planning.assignment import sharded_loads
from thor_planner.planning.plan import Crossover, LayerPlan, Plan, Schedule

SCHEDULE = Schedule(damping_init=0.05, damping_decay=0.5, damping_decay_steps=8, factor_every=2, factor_decay=0.7,
                    interval_initial=2, interval_growth=2.0, interval_grow_every=8, interval_max=8,
                    omega1=0.02, omega2=0.0)
STEPS, RESUME_AT, BATCH = 22, 9, 8
#: per layer (a_split, g_split): G tiles 2 shards: conv1 4 rows (2 + 2), conv2 6 (3 + 3), fc 5 (3 + 2,
#: uneven), gate 1 row (rank 1 holds none: gathered)
SPLITS = {"conv1": (4, 2), "conv2": (8, 3), "fc": (16, 3), "gate": (4, 1)}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(6 * 9, 5)
        self.gate = nn.Linear(5, 1)

    def forward(self, x):
        h = torch.relu(self.conv1(x))  # no BatchNorm: its batch statistics differ per rank
        h = self.fc(torch.relu(self.conv2(h)).flatten(1))
        return h + self.gate(torch.tanh(h))


def make_plan(model: nn.Module, splits: dict = SPLITS) -> Plan:
    specs = {s.name: s for s in layer_specs(model)}
    layers = [LayerPlan(name=n, kind=specs[n].kind, a_dim=specs[n].a_dim, g_dim=specs[n].g_dim,
                        a_split=min(a, specs[n].a_dim), g_split=g, a_loss=0.0, g_loss=0.0, omega1=0.02, omega2=0.0)
              for n, (a, g) in splits.items()]
    return Plan(model={"name": "net"}, device={"type": "cpu", "backend": "torch-cholesky"}, capture={},
                rule={"name": "hand-picked", "loss_threshold": 0.01}, candidates=[1],
                curves={"loss_fraction": [1.0], "inversion_seconds": [0.0], "normalized_perf": [1.0]},
                crossover=Crossover(x=None, y=None, split_dim=1), schedule=SCHEDULE, layers=layers)


def batches():
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, 3, 6, 6, generator=gen, dtype=torch.float64),
             torch.randint(0, 5, (BATCH,), generator=gen)) for _ in range(STEPS)]


def make_opt(model, family: str):
    if family == "eigen":
        return THOR(model, make_plan(model), family="eigen", lr=3e-3, weight_decay=1e-2, kl_clip=1e-2, eps=1e-4)
    return THOR(model, make_plan(model), lr=0.1, momentum=0.9, weight_decay=1e-3, kl_clip=1.0)


def train(model, opt, data, shard=None):
    for x, y in data:
        if shard is not None:
            rank, world = shard
            part = BATCH // world
            x, y = x[rank * part:(rank + 1) * part], y[rank * part:(rank + 1) * part]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def sharded_net() -> Net:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = Net().double()
    fully_shard(model.conv1)
    fully_shard(model.fc)
    fully_shard(model)
    return model


def _train_and_resume(rank: int, world: int, family: str, folder: str) -> dict:
    import torch.distributed.checkpoint as dcp

    model = sharded_net()
    opt = make_opt(model, family)
    data = batches()
    train(model, opt, data[:RESUME_AT], (rank, world))
    dcp.save({"model": model, "optim": opt}, checkpoint_id=folder)
    train(model, opt, data[RESUME_AT:], (rank, world))
    resumed = sharded_net()
    opt2 = make_opt(resumed, family)
    dcp.load({"model": resumed, "optim": opt2}, checkpoint_id=folder)
    train(resumed, opt2, data[RESUME_AT:], (rank, world))
    return {"params": [p.full_tensor() for p in model.parameters()],
            "local": [p.to_local().clone() for p in model.parameters()],
            "resumed": [p.to_local().clone() for p in resumed.parameters()],
            "stats": opt.stats(),
            "held": {l.name: (type(l).__name__, l.g_part.dim, l.factors.g.numel() if l.factors.g is not None else 0)
                     for l in opt._layers}}


def _refusals(rank: int) -> dict:
    from thor_planner.optim.distributed import DistributedError

    out = {}
    for name, build in (("crossing", lambda m: THOR(m, make_plan(m, {**SPLITS, "fc": (16, 4)}), lr=0.1)),
                        ("local", lambda m: THOR(m, split=4, lr=0.1, distributed=False))):
        try:
            build(sharded_net())
        except DistributedError as exc:
            out[name] = str(exc)
    opt = THOR(sharded_net(), split=4, lr=0.1)  # no plan: each G split reduced until it tiles
    out["no_plan"] = {l.name: (type(l).__name__, l.g_part.split, l.g_part.dim) for l in opt._layers}
    state = opt.state_dict()
    for name, bad in (("other_rank", {**state, "thor": {"rank9": b""}}),):
        try:
            opt.load_state_dict(bad)
        except StateMismatchError as exc:
            out[name] = str(exc)
    out["eigen"] = _eigen_resumes(rank)
    out["device_decided"] = {family: _device_decided(rank, family) for family in ("inverse", "eigen")}
    return out


def _device_decided(rank: int, family: str) -> float:
    """The largest difference between steps whose skip is decided on the host and steps decided on the
    device (as on CUDA between captures and check points: the finiteness flag a tensor the update
    consumes; a DTensor reduced over the ranks under FSDP, which the update must take as a plain one)."""
    runs = []
    for on_device in (False, True):
        model = sharded_net()
        opt = make_opt(model, family)
        opt._sync_free = on_device
        train(model, opt, batches()[:4], (rank, 2))  # steps 1 and 3 neither capture nor check
        runs.append([p.to_local() for p in model.parameters()])
    return max(float((p - q).abs().max()) for p, q in zip(*runs) if p.numel())


def _eigen_resumes(rank: int) -> dict:
    """The eigen family under FSDP: Adam's moments kept for the band; a state_dict round trip resumes
    bitwise. (Its trajectory is not compared with one process: Adam in an eigenbasis amplifies
    rounding differences of the factors on this model, under DDP just as under FSDP.)"""
    data = batches()[:9]
    model = sharded_net()
    opt = make_opt(model, "eigen")
    train(model, opt, data[:6], (rank, 2))
    state, weights = opt.state_dict(), {k: v.detach().clone() for k, v in model.state_dict().items()}
    train(model, opt, data[6:], (rank, 2))
    resumed = sharded_net()
    resumed.load_state_dict(weights)
    opt2 = make_opt(resumed, "eigen")
    opt2.load_state_dict(state)
    train(resumed, opt2, data[6:], (rank, 2))
    fc = next(l for l in opt._layers if l.name == "fc")
    return {"moments": tuple(fc.precond.exp_avg.shape),
            "bitwise": all(torch.equal(p.to_local(), q.to_local()) for p, q in zip(model.parameters(), resumed.parameters()))}


def _worker(rank: int, world: int, init: str, out: str, mode: str, folder: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = _refusals(rank) if mode == "refuse" else _train_and_resume(rank, world, mode, folder)
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.barrier()  # both ranks leave together: gloo may abort a rank whose peer tore down first
        dist.destroy_process_group()


def spawn(tmp_path, mode: str, world: int = 2) -> list:
    init = f"file://{tmp_path / 'store'}"
    out = str(tmp_path / "out")
    mp.spawn(_worker, args=(world, init, out, mode, str(tmp_path / "checkpoint")), nprocs=world, join=True)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]


def decisions(stats: dict) -> dict:
    return {n: (s["updates"], s["keeps"], s["stops"], s["frozen"]) for n, s in stats["layers"].items()}


@pytest.mark.parametrize("family", ["inverse"])
def test_fsdp_on_two_ranks_equals_one_process_on_the_full_batch(tmp_path, family) -> None:
    ranks = spawn(tmp_path, family)
    torch.manual_seed(0)
    model = Net().double()
    opt = make_opt(model, family)
    train(model, opt, batches())
    stats = opt.stats()
    assert stats["step"] == STEPS and sum(s["updates"] + s["keeps"] for s in stats["layers"].values()) >= 12
    moved = [not torch.equal(p, q) for p, q in zip(Net().double().parameters(), model.parameters())]
    assert all(moved)
    for r in ranks:
        for p, q in zip(r["params"], model.parameters()):
            torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-9)
        assert decisions(r["stats"]) == decisions(stats)  # the same trace-rule decisions
        for p, q in zip(r["resumed"], r["local"]):
            assert torch.equal(p, q)  # resumed through torch.distributed.checkpoint: bitwise
    # each rank keeps the G blocks of its own rows only; the 1-row gate is gathered (whole G)
    assert ranks[0]["held"] == {"conv1": ("BandLayer", 2, 4), "conv2": ("BandLayer", 3, 9),
                                "fc": ("BandLayer", 3, 9), "gate": ("GatheredLayer", 1, 1)}
    assert ranks[1]["held"] == {"conv1": ("BandLayer", 2, 4), "conv2": ("BandLayer", 3, 9),
                                "fc": ("BandLayer", 2, 4), "gate": ("GatheredLayer", 1, 1)}


def test_fsdp_refusals_and_the_split_without_a_plan(tmp_path) -> None:
    out = spawn(tmp_path, "refuse")[0]
    assert out["crossing"] == (
        "THOR: the plan's G blocks cross the FSDP shard boundaries of 1 layer on 2 ranks: fc (g_dim=5, g_split=4: "
        "shards of 3 rows, a block crosses row 3). Plan for these shards: 'thor-plan plan --from FOLDER --fsdp 2' "
        "(or 'thor-plan profile ... --fsdp 2')")
    assert out["local"] == ("THOR(distributed=False) cannot precondition a model sharded with FSDP (fully_shard): "
                            "its factors and solves are shared by the ranks; drop distributed=False")
    assert out["no_plan"] == {"conv1": ("BandLayer", 2, 2), "conv2": ("BandLayer", 3, 3),
                              "fc": ("BandLayer", 3, 3), "gate": ("GatheredLayer", 4, 1)}
    assert out["eigen"] == {"moments": (3, 55), "bitwise": True}  # rank 0 holds 3 of fc's 5 rows
    # the device-decided update multiplies by a tensor step instead of an alpha: rounding apart, which THOR's
    # steps grow (to ~1e-9 and ~2e-8 after 7 steps, as in one process without FSDP)
    assert max(out["device_decided"].values()) < 1e-6
    assert out["other_rank"] == ("THOR state was not saved by rank 0 of a model sharded with FSDP: load a state "
                                 "saved by the same FSDP run's optimizer on as many ranks")


# ------------------------------------------------------------------------------ the constraint


def test_shard_rows_follow_fsdp2s_chunks() -> None:
    assert shard_rows(8, 2) == [(0, 4), (4, 4)]
    assert shard_rows(5, 2) == [(0, 3), (3, 2)]  # padded to 6: the last rank holds fewer
    assert shard_rows(5, 4) == [(0, 2), (2, 2), (4, 1), (5, 0)]  # and a rank may hold none
    for dim, shards in ((5, 2), (5, 4), (10, 4), (7, 3)):
        chunks = torch.arange(dim).chunk(shards)
        assert [len(c) for c in chunks] + [0] * (shards - len(chunks)) == [r for _, r in shard_rows(dim, shards)]


def test_a_split_tiles_when_no_block_crosses_a_band() -> None:
    assert crossed_rows(partition(5, 4), shard_rows(5, 2)) == [3]
    assert crossed_rows(partition(5, 3), shard_rows(5, 2)) == []  # 3 + 2: the uneven band is whole blocks
    assert crossed_rows(partition(1000, 128), shard_rows(1000, 8)) == [125, 250, 375, 500, 625, 750, 875]
    assert tiling_split(1000, 8, 128) == 125  # the largest split <= 128 that divides the 125-row bands
    assert tiling_split(1000, 8, 128, [1, 16, 32, 64, 128]) == 1  # among the candidates only 1
    assert tiling_split(768, 8, 256, [1, 16, 32, 64, 128, 256]) == 32
    assert tiling_split(64, 4, 16, [16, 32]) == 16  # a split that tiles stays
    assert tiling_split(6, 4, 4, [4]) is None


def test_sharded_loads_solve_bands_where_they_are() -> None:
    # two layers: each A (64 at 32: two 32-blocks) is one job for LPT; G (64 at 16) is cut into two bands
    # of two 16-blocks, each solved on the rank that holds it
    layer = (partition(64, 32), partition(64, 16))
    assert sharded_loads([layer, layer], 2) == [2 * 32**3 + 2 * 2 * 16**3] * 2
    # G of 1 row cannot be tiled on 2 ranks: shared like A
    assert sorted(sharded_loads([(partition(8, 8), partition(1, 1))], 2)) == [1.0, 512.0]


def test_the_plan_tiles_g_for_fsdp_and_records_what_it_cost() -> None:
    from test_plan import small_measurements

    from thor_planner.planning.planner import RuleConfig
    from thor_planner.planning.planner import make_plan as plan_from

    crossover = RuleConfig(name="crossover")
    free, sharded = plan_from(small_measurements(), crossover), plan_from(small_measurements(),
                                                                         RuleConfig(name="crossover", fsdp=2))
    assert {lp.name: lp.g_split for lp in free.layers} == {"conv1": 16, "conv2": 16, "fc1": 16, "fc2": 10}
    changed = {lp.name: (lp.g_split, lp.g_loss, lp.g_split_unconstrained, lp.g_loss_unconstrained)
               for lp in sharded.layers}
    # 2 shards: conv1's 16 rows → 8 + 8 (16 crosses; of the candidates below it only 1 tiles), conv2 32 → 16 + 16
    # and fc1 64 → 32 + 32 (16 tiles both), fc2 10 → 5 + 5 (the whole 10 crosses)
    assert changed == {"conv1": (1, 0.2, 16, 0.0), "conv2": (16, 0.02, None, None), "fc1": (16, 0.1, None, None),
                       "fc2": (1, 0.1, 10, 0.0)}
    assert sharded.rule["fsdp"] == 2 and "fsdp_gathered" not in sharded.rule
    assert [lp.a_split for lp in sharded.layers] == [lp.a_split for lp in free.layers]
    again = Plan.from_dict(sharded.to_dict())
    assert again.layers == sharded.layers
    assert "g_split_unconstrained" not in sharded.to_dict()["layers"][2]  # fc1: nothing to record
    on_16 = plan_from(small_measurements(), RuleConfig(fsdp=16))
    assert on_16.rule["fsdp_gathered"] == ["fc2"]  # 10 rows on 16 ranks: six hold none, THOR gathers it
    assert on_16.layer("fc2").g_split == 10 and on_16.layer("fc2").g_split_unconstrained is None
    assert len(on_16.curves["inversion_seconds_per_rank"]) == len(on_16.candidates)
