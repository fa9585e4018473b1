"""THOR under torch.distributed (gloo, 2 CPU processes) against one process on the full batch."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from thor_planner import THOR
from thor_planner.planning.assignment import assign_lpt, makespan
from thor_planner.optim.distributed import DistributedError
from thor_planner.planning.plan import Schedule

SCHEDULE = Schedule(damping_init=0.05, damping_decay=0.5, damping_decay_steps=8, factor_every=2, factor_decay=0.7,
                    interval_initial=2, interval_growth=2.0, interval_grow_every=8, interval_max=8,
                    omega1=0.02, omega2=0.0)
STEPS, RESUME_AT, BATCH = 22, 9, 8


class Net(nn.Module):
    def __init__(self, extra: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(6 * 9, 5)
        if extra:
            self.fc2 = nn.Linear(5, 5)

    def forward(self, x):
        h = torch.relu(self.conv1(x))  # no BatchNorm: its batch statistics differ per rank
        return self.fc(torch.relu(self.conv2(h)).flatten(1))


def batches():
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, 3, 6, 6, generator=gen, dtype=torch.float64),
             torch.randint(0, 5, (BATCH,), generator=gen)) for _ in range(STEPS)]


def make_opt(model):
    return THOR(model, split=4, schedule=SCHEDULE, lr=0.1, momentum=0.9, weight_decay=1e-3)


def train(model, opt, data, shard=None):
    for x, y in data:
        if shard is not None:
            rank, world = shard
            part = BATCH // world
            x, y = x[rank * part:(rank + 1) * part], y[rank * part:(rank + 1) * part]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _worker(rank: int, world: int, init: str, out: str, mode: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        base = Net(extra=mode == "mismatch" and rank == 1).double()
        if mode == "mismatch":
            try:
                THOR(base, split=4, lr=0.1)
            except DistributedError as exc:
                torch.save(str(exc), f"{out}.{rank}")
            return
        model = nn.parallel.DistributedDataParallel(base)
        opt = make_opt(model)
        data = batches()
        train(model, opt, data[:RESUME_AT], (rank, world))
        state = copy.deepcopy(opt.state_dict())
        weights = copy.deepcopy(base.state_dict())
        train(model, opt, data[RESUME_AT:], (rank, world))
        # resume: every rank loads the checkpoint rank 0 holds and goes on
        sources = [state if rank == 0 else None, weights if rank == 0 else None]
        dist.broadcast_object_list(sources, src=0)
        resumed = Net().double()
        resumed.load_state_dict(sources[1])
        resumed_ddp = nn.parallel.DistributedDataParallel(resumed)
        opt2 = make_opt(resumed_ddp)
        opt2.load_state_dict(sources[0])
        train(resumed_ddp, opt2, data[RESUME_AT:], (rank, world))
        torch.save({"params": [p.detach() for p in base.parameters()],
                    "resumed": [p.detach() for p in resumed.parameters()],
                    "stats": opt.stats()}, f"{out}.{rank}")
    finally:
        dist.barrier()  # both ranks leave together: gloo may abort a rank whose peer tore down first
        dist.destroy_process_group()


def spawn(tmp_path, mode: str, world: int = 2) -> list:
    init = f"file://{tmp_path / 'store'}"
    out = str(tmp_path / "out")
    mp.spawn(_worker, args=(world, init, out, mode), nprocs=world, join=True)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]


def decisions(stats: dict) -> dict:
    return {n: (s["updates"], s["keeps"], s["stops"], s["frozen"]) for n, s in stats["layers"].items()}


def test_two_ranks_on_half_batches_equal_one_process_on_the_full_batch(tmp_path) -> None:
    ranks = spawn(tmp_path, "train")
    torch.manual_seed(0)
    model = Net().double()
    opt = make_opt(model)
    train(model, opt, batches())
    stats = opt.stats()
    assert stats["step"] == STEPS and sum(s["updates"] + s["keeps"] for s in stats["layers"].values()) >= 12
    for r in ranks:
        for p, q in zip(r["params"], model.parameters()):
            torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-9)
        assert decisions(r["stats"]) == decisions(stats)  # the same trace-rule decisions
    for p, q in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(p, q)  # the ranks agree bitwise
    for r in ranks:  # resuming from rank 0's checkpoint continues identically on every rank
        for p, q in zip(r["resumed"], r["params"]):
            assert torch.equal(p, q)


def test_layers_that_differ_between_ranks_are_refused(tmp_path) -> None:
    messages = spawn(tmp_path, "mismatch")
    assert messages[0] == ("THOR layers differ between rank 0 and rank 1: only on rank 0: [], only on rank 1: "
                           "['fc2']; build the same model and plan on every rank")


def test_distributed_without_a_process_group_is_refused() -> None:
    with pytest.raises(DistributedError) as err:
        THOR(Net(), lr=0.1, distributed=True)
    assert str(err.value) == ("THOR(distributed=True) needs an initialized process group: call "
                              "torch.distributed.init_process_group(...) first (torchrun sets its environment)")


def _optimum(costs, ranks):
    return min(makespan(costs, owner, ranks) for owner in itertools.product(range(ranks), repeat=len(costs)))


@pytest.mark.parametrize(("costs", "ranks"), [
    ([7, 7, 6, 6, 5, 5, 4, 4, 4], 4),  # Graham's tight case for m = 4 (with the 4·4·4 … pattern)
    ([5, 5, 4, 4, 3, 3, 3], 3),  # LPT 11 against the optimum 9
    ([2.0**3 * 9, 16.0**3 * 4, 64.0**3, 128.0**3 + 10.0**3, 1.0, 37.0**3], 2),
])
def test_lpt_assignment_is_within_grahams_bound(costs, ranks) -> None:
    owner = assign_lpt(costs, ranks)
    assert sorted(set(owner)) <= list(range(ranks))
    bound = (4 / 3 - 1 / (3 * ranks)) * _optimum(costs, ranks)
    assert makespan(costs, owner, ranks) <= bound + 1e-9
    assert assign_lpt(costs, ranks) == owner  # deterministic: every rank computes the same


def test_lpt_puts_the_largest_job_alone() -> None:
    assert assign_lpt([1, 1, 1, 10], 2) == [1, 1, 1, 0]


def test_rank_share_is_the_lpt_makespan_over_the_total() -> None:
    from thor_planner.planning.assignment import rank_share

    dims = [(64, 64), (64, 64), (128, 32), (16, 16)]
    # split 64: costs 2·64³, 2·64³, 2·64³ + 32³ (A 128 → two 64-blocks), 2·16³
    costs = [2 * 64**3, 2 * 64**3, 2 * 64**3 + 32**3, 2 * 16**3]
    assert rank_share(dims, 64, 1) == 1.0
    assert rank_share(dims, 64, 2) == pytest.approx((costs[0] + costs[1]) / sum(costs))  # {2, 3} vs {0, 1}
    assert rank_share(dims, 64, 8) == pytest.approx(costs[2] / sum(costs))
