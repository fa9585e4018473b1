"""THOR on a model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``): each rank
preconditions the rows of the weights it holds, with no gathering of gradients.

FSDP2 shards every parameter along its first dimension over the ranks of a 1-D mesh: for a
Conv2d / Linear weight that is the output features, the rows of the layer's ``(g_dim, a_dim)``
gradient matrix and the dimension of G, cut into one band per rank (``ceil(g_dim / N)`` rows, the
last ranks fewer or none: :func:`~thor_planner.partition.shard_rows`). THOR's update of a band,
``(G⁻¹ ∇ A⁻¹)`` restricted to its rows, needs only the blocks of G inside the band and the whole
(small, replicated) A, as long as no G block crosses a band boundary. Each layer is held here in
one of three ways (:func:`rank_group` decides, once):

- **in bands** (:class:`BandLayer`), when the G split tiles the shards: the layer's ``g_part`` is
  its band's partition and its row range ``(offset, rows)``, so the packed-block machinery, the
  families and checkpoints work on the band unchanged. Its running G is the band's blocks
  (:class:`BandFactors`), its preconditioner solves and applies the band's blocks only, its
  gradient and direction are the local shard (``DTensor.to_local`` / ``from_local``).
- **gathered** (:class:`GatheredLayer`), the fallback for a layer whose rows cannot be tiled: a rank
  holds none of them (a layer with fewer rows than FSDP's chunking needs, e.g. a 10-class head on 16
  ranks), or its weight is not sharded along its rows alone (another placement, a 2-D mesh, a layer
  type whose matrix rows are not the weight's first dimension). Its gradient is all-gathered
  (``full_tensor``) and preconditioned whole on every rank exactly as without sharding, and its
  direction cut back to the rank's shard: the same result, for one all-gather of that layer's
  gradient a step and its whole G on every rank.
- **whole** (:class:`~thor_planner.optim.layer.Layer`): a weight that is not a DTensor, as under DDP.

A plan whose G blocks cross the shard boundaries this run meets is refused with the layers and
rows named (plan with ``thor-plan profile --fsdp N``); without a plan, ``THOR(split=b)`` takes the
largest G split ``<= b`` that tiles (:func:`~thor_planner.partition.tiling_split`).

What the ranks share (:class:`ShardGroup`, a :class:`~thor_planner.optim.distributed.RankGroup`):
every rank captures A and the whole G's blocks from its local batch (FSDP2's outputs and their
gradients are not sharded), and the factors are averaged with DDP's bucketed all-reduce; a banded
layer keeps its band's blocks and the running trace of the whole G (the trace rule sees the whole
layer, identically on every rank). At a check point each rank solves the G blocks of its own bands,
and LPT shares out every A and the G of the other layers, broadcast as under DDP. The direction's
grafting norms and KL term of banded layers are summed over the ranks (one small all-reduce a step,
:func:`~thor_planner.optim.direction.directions`).

Checkpoints (:meth:`ShardGroup.pack_state`): the first-order state is saved as DTensors, sharded as
the parameters are, and THOR's own state, which differs between ranks, as one object per rank under
``"thor"``/``"rank{r}"``; the first-order state of parameters that have none yet is saved as its
initial value, so a freshly built optimizer's ``state_dict()`` has the layout of any later one and
``torch.distributed.checkpoint`` can load into it: ``dcp.save({"optim": opt})`` and
``dcp.load({"optim": opt})``. Resuming needs the same number of ranks.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.distributed as dist

from thor_planner.capture.layers import LayerType
from thor_planner.optim.blocks import group_packed, packed_size, packed_trace
from thor_planner.optim.checkpoint import StateMismatchError
from thor_planner.optim.distributed import DistributedError, RankGroup, wanted
from thor_planner.optim.factors import RunningFactors
from thor_planner.optim.layer import Layer
from thor_planner.optim.preconditioner import Family
from thor_planner.optim.refresh import SolvedBlocks
from thor_planner.partition import (Partition, crossed_rows, every_shard_holds_rows, partition, shard_rows,
                                    tiling_split)
from thor_planner.planning.assignment import assign_lpt, factor_cost, shared_factors


def _dtensor():
    """The DTensor class, or ``None`` where this torch has none."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return DTensor


def is_sharded(t) -> bool:
    cls = _dtensor()
    return cls is not None and isinstance(t, cls)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if is_sharded(t) else t


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if is_sharded(t) else t


def _as_shard(local: torch.Tensor, like) -> torch.Tensor:
    """``local`` (this rank's shard of ``like``) as a DTensor placed as ``like``."""
    return _dtensor().from_local(local.to(like.dtype).contiguous(), like.device_mesh, like.placements,
                                 shape=like.shape, stride=like.stride(), run_check=False)


def _from_whole(whole: torch.Tensor, like) -> torch.Tensor:
    """The whole tensor ``whole`` (the same on every rank) cut as ``like`` is (no communication)."""
    from torch.distributed.tensor import Replicate

    mesh = like.device_mesh
    return _dtensor().from_local(whole.to(like.dtype), mesh, [Replicate()] * mesh.ndim,
                                 run_check=False).redistribute(mesh, like.placements)


@dataclasses.dataclass
class BandFactors(RunningFactors):
    """The running A and the running blocks of a band of G, folded from whole captured factors:
    ``whole`` is G's partition, ``span`` the band's slice of the whole packed G, and ``g_trace`` the
    running trace of the whole G (float64, on the device)."""

    whole: Partition | None = None
    span: tuple[int, int] = (0, 0)
    g_trace: torch.Tensor | None = None

    def fold(self, a: torch.Tensor, g: torch.Tensor, decay: float) -> None:
        trace = packed_trace(g, self.whole)
        band = g[self.span[0]: self.span[1]].clone()  # not a view: the whole G is freed
        if self.g_trace is None:
            self.g_trace = trace
        else:
            self.g_trace.mul_(decay).add_(trace, alpha=1 - decay)
        super().fold(a, band, decay)

    def traces(self, a_part: Partition, g_part: Partition) -> torch.Tensor:
        return torch.stack([packed_trace(self.a, a_part), self.g_trace])

    def clear(self) -> None:
        super().clear()
        self.g_trace = None


@dataclasses.dataclass(eq=False)
class BandLayer(Layer):
    """A layer of which this rank holds the rows ``offset … offset + g_part.dim − 1`` (its G band;
    ``g_whole`` is the whole G's partition) out of ``shards`` bands."""

    g_whole: Partition | None = None
    offset: int = 0
    shards: int = 1
    banded: ClassVar[bool] = True

    @property
    def dims(self) -> tuple[int, int]:
        return self.a_part.dim, self.g_whole.dim

    @property
    def capture_parts(self) -> tuple[Partition, Partition]:
        return self.a_part, self.g_whole

    def gradient_matrix(self, dtype: torch.dtype, of: Mapping | None = None) -> torch.Tensor | None:
        """The band's ``(rows, a_dim)`` matrix, from the local shards."""
        held = {}
        for p in (self.weight, self.bias):
            t = None if p is None else (p.grad if of is None else of.get(p))
            held[p] = _local(t) if t is not None else None
        if self.bias is not None and held[self.bias] is None:
            held[self.bias] = torch.zeros(self.g_part.dim, dtype=self.bias.dtype, device=self.bias.device)
        return super().gradient_matrix(dtype, held)

    def split_matrix(self, v: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        w, b = self.weight, self.bias
        cols = v.shape[1] - (b is not None)
        out = {w: _as_shard(v[:, :cols].reshape(_local(w).shape), w)}
        if b is not None:
            out[b] = _as_shard(v[:, cols], b)
        return out

    def band_state(self) -> dict:
        return {"offset": self.offset, "rows": self.g_part.dim, "shards": self.shards}

    def state_dict(self, family: str, version: int) -> dict:
        state = super().state_dict(family, version)
        state["factors"]["g_trace"] = self.factors.g_trace
        state["band"] = self.band_state()
        return state

    def load_state_dict(self, state: dict, dtype: torch.dtype) -> None:
        if state.get("band") != self.band_state():
            raise StateMismatchError(f"THOR state of {self.name} was saved for the rows {state.get('band')} of its "
                                     f"weight, this rank holds {self.band_state()}: resume on as many ranks as saved")
        super().load_state_dict(state, dtype)
        trace = state["factors"].get("g_trace")
        self.factors = BandFactors(self.factors.a, self.factors.g, whole=self.g_whole, span=self.factors_span(),
                                   g_trace=None if trace is None else trace.to(self.weight.device, torch.float64,
                                                                                copy=True))

    def factors_span(self) -> tuple[int, int]:
        start = (self.offset // self.g_whole.block) * self.g_whole.block ** 2
        return start, start + packed_size(self.g_part)


@dataclasses.dataclass(eq=False)
class GatheredLayer(Layer):
    """A sharded layer preconditioned whole on every rank: its gradient all-gathered, its direction
    cut back to this rank's shard (the fallback for rows that cannot be tiled)."""

    def gradient_matrix(self, dtype: torch.dtype, of: Mapping | None = None) -> torch.Tensor | None:
        whole = {}
        for p in (self.weight, self.bias):
            t = None if p is None else (p.grad if of is None else of.get(p))
            whole[p] = _whole(t) if t is not None else None
        if self.bias is not None and whole[self.bias] is None:
            whole[self.bias] = torch.zeros(self.bias.shape, dtype=self.bias.dtype, device=self.bias.device)
        return super().gradient_matrix(dtype, whole)

    def split_matrix(self, v: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        return {p: _from_whole(d, p) if is_sharded(p) else d for p, d in super().split_matrix(v).items()}


def _fields(layer: Layer) -> dict:
    return {f.name: getattr(layer, f.name) for f in dataclasses.fields(Layer)}


def untileable(layer: Layer, world: int) -> str | None:
    """Why a sharded layer's rows cannot be held in bands on ``world`` ranks (``None``: they can)."""
    w, g_dim = layer.weight, layer.dims[1]
    from torch.distributed.tensor import Shard

    params = [p for p in (w, layer.bias) if p is not None]
    if not all(is_sharded(p) and p.device_mesh.ndim == 1 and tuple(p.placements) == (Shard(0),) for p in params):
        return "its weight is not sharded along its rows alone (Shard(0) on a 1-D mesh)"
    if w.device_mesh.size() != world:
        return f"its mesh holds {w.device_mesh.size()} of the {world} ranks"
    kind = type(layer.kind)
    if kind.matrix is not LayerType.matrix or kind.unmatrix is not LayerType.unmatrix:
        return f"its layer type ({layer.kind.kind}) maps the weight to its matrix otherwise than by rows"
    if not every_shard_holds_rows(g_dim, world):
        return f"{g_dim} rows leave some of {world} ranks none"
    rank = w.device_mesh.get_local_rank()
    if _local(w).shape[0] != shard_rows(g_dim, world)[rank][1]:
        return "its shard is not FSDP2's band of rows"
    return None


def band_layer(layer: Layer, family: Family, split: int, world: int) -> BandLayer:
    """``layer`` held in bands of its rows, G split at ``split`` (which tiles the shards)."""
    g_dim = layer.dims[1]
    offset, rows = shard_rows(g_dim, world)[layer.weight.device_mesh.get_local_rank()]
    whole, band = partition(g_dim, split), partition(rows, split)
    held = BandLayer(**{**_fields(layer), "g_part": band, "precond": family.layer(layer.a_part, band)},
                     g_whole=whole, offset=offset, shards=world)
    held.factors = BandFactors(whole=whole, span=held.factors_span())
    return held


def _crossing(layer: Layer, world: int) -> str | None:
    """How the layer's planned G blocks cross its shards (``None`` when they tile them)."""
    rows = crossed_rows(layer.g_part, shard_rows(layer.g_part.dim, world))
    if not rows:
        return None
    return (f"{layer.name} (g_dim={layer.g_part.dim}, g_split={layer.g_part.split}: shards of "
            f"{shard_rows(layer.g_part.dim, world)[0][1]} rows, a block crosses row {', '.join(map(str, rows))})")


def hold(layers: list[Layer], family: Family, *, planned: bool) -> list[Layer]:
    """Each layer as this rank holds it (see the module docstring); a plan whose G blocks cross the
    shards is refused, a split given without a plan is reduced until it tiles."""
    world, out, crossing = dist.get_world_size(), [], []
    for layer in layers:
        if not is_sharded(layer.weight):
            out.append(layer)
        elif untileable(layer, world) is not None:
            out.append(GatheredLayer(**_fields(layer)))
        elif (problem := _crossing(layer, world)) is None:
            out.append(band_layer(layer, family, layer.g_part.split, world))
        elif planned:
            crossing.append(problem)
        else:
            out.append(band_layer(layer, family, tiling_split(layer.g_part.dim, world, layer.g_part.split), world))
    if crossing:
        raise DistributedError(
            f"THOR: the plan's G blocks cross the FSDP shard boundaries of {len(crossing)} layer"
            f"{'s' if len(crossing) > 1 else ''} on {world} ranks: {'; '.join(crossing)}. Plan for these shards: "
            f"'thor-plan plan --from FOLDER --fsdp {world}' (or 'thor-plan profile ... --fsdp {world}')")
    return out


def rank_group(layers: list[Layer], family: Family, distributed: bool | None, *,
               planned: bool) -> tuple[list[Layer], RankGroup | None]:
    """The layers as this rank holds them and the ranks it shares with: a :class:`ShardGroup` when
    the model's weights are DTensors (FSDP2), else a :class:`RankGroup` under ``torch.distributed``
    (``distributed``: as ``THOR(distributed=...)``), else none."""
    if not layers:
        return layers, None
    if not any(is_sharded(l.weight) for l in layers):
        return layers, (RankGroup(layers, layers[0].weight.device, family) if wanted(distributed) else None)
    if distributed is False:
        raise DistributedError("THOR(distributed=False) cannot precondition a model sharded with FSDP "
                               "(fully_shard): its factors and solves are shared by the ranks; drop distributed=False")
    held = hold(layers, family, planned=planned)
    return held, ShardGroup(held, held[0].weight.device, family)


def _initial_state(p: torch.Tensor, group: dict, adam: bool) -> dict:
    """The first-order state a parameter starts from (what the first update would create)."""
    if adam:
        return {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
    return {"momentum_buffer": torch.zeros_like(p)} if group["momentum"] != 0 else {}


class ShardGroup(RankGroup):
    """The ranks of an FSDP2 model: factors averaged as under DDP, G bands solved where they are held,
    the rest shared out by LPT (see the module docstring)."""

    def solver(self, layers: list[Layer], factors: list[torch.Tensor], shift: float) -> list[SolvedBlocks]:
        jobs = shared_factors([l.banded for l in layers])
        parts = [[(layers[i].a_part, layers[i].g_part)[f]] for i, f in jobs]
        owner = assign_lpt([factor_cost(p[0]) for p in parts], self.world)
        mine = [j for j, r in enumerate(owner) if r == self.rank]
        here = [jobs[j] for j in mine] + [(i, 1) for i, l in enumerate(layers) if l.banded]
        done: dict[tuple[int, int], list[torch.Tensor]] = {}
        if here:
            solved = self.family.solve(group_packed([factors[2 * i + f] for i, f in here],
                                                    [(layers[i].a_part, layers[i].g_part)[f] for i, f in here]), shift)
            done = {job: solved.blocks_of(k) for k, job in enumerate(here)}
        received = self.exchange(owner, parts, {j: [done[jobs[j]]] for j in mine}, factors[0].dtype)
        done.update((jobs[j], blocks[0]) for j, blocks in received.items())
        return [(done[(i, 0)], done[(i, 1)]) for i in range(len(layers))]

    def band_total(self, stats: torch.Tensor) -> torch.Tensor:
        """``stats`` summed over the ranks (every rank holds one band of each banded layer)."""
        dist.all_reduce(stats)
        return stats

    def pack_state(self, state: dict, groups: list[dict], *, adam: bool) -> dict:
        """This rank's state for ``torch.distributed.checkpoint`` (see the module docstring)."""
        per_param, index = dict(state["state"]), 0
        for group in groups:
            for p in group["params"]:
                if not per_param.get(index):
                    per_param[index] = _initial_state(p, group, adam)
                index += 1
        blob = io.BytesIO()
        torch.save({**state["thor"], "shards": self.world, "rank": self.rank}, blob)
        return {**state, "state": {i: s for i, s in per_param.items() if s}, "thor": {f"rank{self.rank}": blob.getvalue()}}

    def unpack_state(self, state: dict) -> dict:
        """The state :meth:`pack_state` saved on this rank, THOR's part unpacked."""
        thor = state.get("thor")
        if thor is None:
            return state
        mine = thor.get(f"rank{self.rank}") if isinstance(thor, Mapping) else None
        if not isinstance(mine, (bytes, bytearray)):
            raise StateMismatchError(f"THOR state was not saved by rank {self.rank} of a model sharded with FSDP: "
                                     "load a state saved by the same FSDP run's optimizer on as many ranks")
        inner = torch.load(io.BytesIO(mine), map_location=self.device, weights_only=True)
        if inner.get("shards") != self.world:
            raise StateMismatchError(f"THOR state was saved on {inner.get('shards')} FSDP ranks, this run has "
                                     f"{self.world}: resume on as many ranks as saved")
        return {**state, "thor": inner}
