"""THOR under ``torch.distributed`` (data parallel, gloo on CPU, NCCL on GPU).

With the model wrapped in ``DistributedDataParallel`` each rank sees its own part of the batch and
DDP averages the gradients. THOR adds two collectives, both only where it already synchronises:

- **Factor steps**: the packed A and G blocks every rank captured are averaged across the ranks
  (``all_reduce`` in buckets of :data:`BUCKET_BYTES`, issued asynchronously and then awaited), so
  every rank holds the full-batch factors: a rank's G is already a per-sample average over its
  local batch (its local mean loss is undone by its local sample count), so the mean over ranks of
  equal local batches is the full batch's. A layer a rank did not reach counts only where it was.
- **Check points**: the factors and hence the trace-rule decisions are identical on every rank.
  The layers to update are assigned to ranks by greedy LPT on their cost (:mod:`.assignment`);
  each rank solves its own layers with the preconditioner family (one batched call per block
  size) and broadcasts their solved blocks (inverses, eigenvectors: each the shape of its block),
  one flat buffer per rank, so every rank holds every layer's preconditioner and preconditions its
  own gradients (identical on every rank). Broadcasting inverses rather than preconditioned gradients
  costs ``Σ d·s`` numbers per check point instead of ``out·in`` per step: check points are tens to
  a thousand steps apart, so it is the cheaper choice at every cadence THOR uses (kfac-pytorch's
  "communication-optimal" mode makes the same trade when inverses are refreshed rarely).

Every rank therefore holds the same state: ``state_dict()`` on rank 0 is the checkpoint and
``load_state_dict`` on every rank resumes identically.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from thor_planner.optim.blocks import packed_size, unpack
from thor_planner.optim.layer import Layer
from thor_planner.optim.preconditioner import Family
from thor_planner.optim.preconditioner.base import Blocks
from thor_planner.optim.refresh import SolvedBlocks, solve_here
from thor_planner.partition import Partition
from thor_planner.planning.assignment import assign_lpt, layer_cost
from thor_planner.utils.errors import UserError

BUCKET_BYTES = 32 * 2**20


class DistributedError(UserError, RuntimeError):
    """THOR cannot run on this process group as configured."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` (or ``model`` itself): plan names carry no
    ``module.`` prefix."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def wanted(distributed: bool | None) -> bool:
    """Whether THOR runs distributed: ``None`` = when a process group of more than one rank exists."""
    ready = dist.is_available() and dist.is_initialized()
    if distributed is None:
        return ready and dist.get_world_size() > 1
    if distributed and not ready:
        raise DistributedError("THOR(distributed=True) needs an initialized process group: call "
                               "torch.distributed.init_process_group(...) first (torchrun sets its environment)")
    return bool(distributed)


class RankGroup:
    """The ranks THOR shares factors and inverses with."""

    def __init__(self, layers: list[Layer], device: torch.device, family: Family):
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.device, self.family = device, family
        mine = [(l.name, *l.dims, l.a_part.split, l.g_part.split, type(l).__name__) for l in layers]
        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, {"layers": mine, "device": device.type})
        devices = sorted({e["device"] for e in everyone})
        if len(devices) > 1:
            raise DistributedError(f"THOR ranks are on different device types ({', '.join(devices)}): put every "
                                   "rank's model on the same kind of device")
        for r, e in enumerate(everyone):
            if e["layers"] != mine:
                theirs, ours = set(map(tuple, e["layers"])), set(mine)
                raise DistributedError(
                    f"THOR layers differ between rank {self.rank} and rank {r}: only on rank {self.rank}: "
                    f"{sorted(n for n, *_ in ours - theirs)}, only on rank {r}: {sorted(n for n, *_ in theirs - ours)}; "
                    "build the same model and plan on every rank")

    # -- factors -----------------------------------------------------------------------------------

    def average_factors(self, layers: list[Layer], a_new: dict, g_new: dict, dtype) -> tuple[dict, dict]:
        """The mean over ranks of each layer's new packed factors (over the ranks that captured it)."""
        chunks, present = [], []
        for l in layers:
            has = l.name in a_new and l.name in g_new
            present.append(1.0 if has else 0.0)
            for new, part in zip((a_new, g_new), l.capture_parts):
                chunks.append(new[l.name].reshape(-1) if has else
                              torch.zeros(packed_size(part), dtype=dtype, device=self.device))
        flat = torch.cat(chunks + [torch.tensor(present, dtype=dtype, device=self.device)])
        step = max(1, BUCKET_BYTES // flat.element_size())
        pending = [dist.all_reduce(flat[i: i + step], async_op=True) for i in range(0, flat.numel(), step)]
        for work in pending:
            work.wait()
        counts = flat[-len(layers):].tolist() if layers else []
        a_out, g_out, offset = {}, {}, 0
        for l, count in zip(layers, counts):
            for out, part in zip((a_out, g_out), l.capture_parts):
                size = packed_size(part)
                if count > 0:
                    out[l.name] = flat[offset: offset + size] / count
                offset += size
        return a_out, g_out

    # -- solved blocks -----------------------------------------------------------------------------

    def solver(self, layers: list[Layer], factors: list[torch.Tensor], shift: float) -> list[SolvedBlocks]:
        """Solve each rank's share of ``layers`` there and broadcast the solved blocks."""
        owner = assign_lpt([layer_cost(l.a_part, l.g_part) for l in layers], self.world)
        mine = [i for i, r in enumerate(owner) if r == self.rank]
        solved = solve_here(self.family, [layers[i] for i in mine],
                            [f for i in mine for f in factors[2 * i: 2 * i + 2]], shift) if mine else []
        own = {i: list(pair) for i, pair in zip(mine, solved)}
        received = self.exchange(owner, [[l.a_part, l.g_part] for l in layers], own, factors[0].dtype)
        return [(received[i][0], received[i][1]) for i in range(len(layers))]

    def exchange(self, owner: list[int], parts: list[list[Partition]], own: dict[int, list[Blocks]],
                 dtype: torch.dtype) -> dict[int, list[Blocks]]:
        """Every job's solved blocks on every rank: job ``j`` (the factors of partitions ``parts[j]``)
        was solved on rank ``owner[j]``, this rank's in ``own``; one flat broadcast per rank."""
        received: dict[int, list[Blocks]] = {}
        for r in range(self.world):
            theirs = [j for j, o in enumerate(owner) if o == r]
            if not theirs:
                continue
            if r == self.rank:
                flat = torch.cat([b.reshape(-1) for j in theirs for stacks in own[j] for b in stacks])
            else:
                flat = torch.empty(sum(packed_size(p) for j in theirs for p in parts[j]), dtype=dtype,
                                   device=self.device)
            dist.broadcast(flat, src=r)
            offset = 0
            for j in theirs:
                received[j] = []
                for part in parts[j]:
                    received[j].append(unpack(flat[offset: offset + packed_size(part)], part))
                    offset += packed_size(part)
        return received

    # -- what differs from FSDP (:mod:`.sharded`) --------------------------------------------------

    #: sums a layer's direction statistics over the ranks holding parts of it: none under DDP
    band_total = None

    def pack_state(self, state: dict, groups: list[dict], *, adam: bool) -> dict:
        """The optimizer state as this rank saves it: under DDP every rank's is the same, as it is."""
        return state

    def unpack_state(self, state: dict) -> dict:
        return state
