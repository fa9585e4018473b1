"""THOR: a ``torch.optim.Optimizer`` that preconditions Conv2d / Linear (and any registered layer
type's) gradients with the diagonal blocks of their Kronecker factors, as a plan prescribes. A
drop-in for ``torch.optim.SGD`` (or, with ``graft="adamw"``, ``torch.optim.AdamW``): the same
learning rate, momentum or betas, weight decay and param groups train.

One call of :meth:`THOR.step` (step ``t`` counts the calls, from 0) runs five phases:

1. **Guard** (:mod:`.guard`): gradients with NaN/Inf skip the step: weights, moments and factors
   stay as they were, the statistics of that iteration are dropped, the skip is counted
   (``stats()``) and warned about at the caller's line; ``max_skipped_steps`` consecutive skips
   raise :class:`DivergedError`. Where the step neither captures nor checks, the skip is decided on
   the device without a host synchronisation (CUDA), and reported at the next step that synchronises.
2. **Fold** (factor steps, ``t % factor_every == 0``; the collector was active during this
   iteration's forwards and backwards): the captured A and G blocks join running averages
   ``F ← d·F + (1−d)·F_new`` (:mod:`.factors`; averaged over ranks first under
   ``torch.distributed``). A capture with NaN/Inf is dropped.
3. **Refresh** (check points, every ``schedule.interval(t)`` steps, the first at t = 0): the trace
   rule decides per layer, and the family solves the blocks of the layers to update in one batched
   call per block size (:mod:`.refresh`, :mod:`.preconditioner`).
4. **Direction** (:mod:`.direction`): the family's direction for every preconditioned layer (the
   inverse family: ``V = G⁻¹ ∇W A⁻¹``), grafted to the first-order direction's norm and optionally
   KL-clipped.
5. **Update** (:mod:`.update`): weight decay, momentum and the step exactly as ``torch.optim.SGD``
   (dampening 0), or AdamW's with ``graft="adamw"``; every other parameter gets plain SGD / AdamW.

Weight decay is added *after* preconditioning, as MindSpore's THOR (``apply_decay`` on the
preconditioned gradients), kfac-pytorch and Martens & Grosse's K-FAC do: the factors approximate
the curvature of the loss alone, so preconditioning ``wd·w`` with them would amplify the decay by up
to ``1/damping`` in flat directions.

Checkpoints (:mod:`.checkpoint`) hold the running factors, the trace-rule state and, per layer, the
undamped blocks its preconditioner was solved from, never the solved blocks. Loading re-solves
them, grouped by the check point that solved them, so a resumed run is bitwise identical to an
uninterrupted one wherever a block's result does not depend on the other blocks of its batch (true
on CPU).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from thor_planner.capture.collector import find_layers, layer_specs, layer_type
from thor_planner.capture.layers import tied_layers
from thor_planner.inversion.backends import DEFAULT_BACKEND
from thor_planner.optim.checkpoint import (VERSION, check_same_family, check_same_layers, check_same_model,
                                          param_shapes, upgrade)
from thor_planner.optim.arguments import Graft, check_arguments, check_group
from thor_planner.optim.direction import directions
from thor_planner.optim.distributed import unwrap
from thor_planner.optim.factors import BlockFactorCollector
from thor_planner.optim.guard import DivergedError, SkipGuard
from thor_planner.optim.layer import Layer, plan_backends
from thor_planner.optim.preconditioner import Family, family_class
from thor_planner.optim.refresh import check_point, local_solver, replay
from thor_planner.optim.sharded import rank_group
from thor_planner.optim.update import adam_moments, adamw_update, sgd_update
from thor_planner.partition import partition
from thor_planner.planning.plan import Plan, Schedule
from thor_planner.utils.errors import ConfigError

__all__ = ["THOR", "DivergedError"]


class THOR(torch.optim.Optimizer):
    """THOR natural-gradient optimizer driven by a plan (see the module docstring for one step).

    Args:
        model: the model (may be wrapped in ``DistributedDataParallel``).
        plan: a :class:`~thor_planner.planning.plan.Plan` for this model, or the path of a plan file
            (refused when it does not match). Without a plan every Conv2d/Linear layer is
            preconditioned, each factor split at ``split`` (``None``: dense, unsplit K-FAC), with
            ``schedule`` or ``Schedule()``.
        params: the parameters or param groups to optimize, as every ``torch.optim`` optimizer takes
            them (per-group ``lr``, ``momentum``, ``weight_decay``, ``nesterov``, ``betas``, ``eps``);
            default: every parameter of ``model`` in one group. Parameters outside every group are
            not updated.
        lr, momentum, weight_decay, nesterov: as ``torch.optim.SGD`` (dampening 0).
        graft: ``"sgd"``: each layer's natural-gradient direction takes the norm of its gradient, so
            SGD's settings carry over; ``"adamw"``: a drop-in for ``torch.optim.AdamW`` (``lr``,
            ``betas``, ``eps``, decoupled ``weight_decay``; ``momentum`` unused): the Adam-filtered
            gradient is preconditioned and takes the norm of AdamW's direction (the eigen family:
            Adam runs in the eigenbasis), other parameters get AdamW's update; ``None``: the raw
            natural gradient (:class:`Graft`). ``"auto"`` (default): the family's own, ``"sgd"`` for
            the inverse family, ``"adamw"`` for the eigen family.
        schedule: overrides the plan's schedule (per-layer ω1/ω2 still come from the plan).
        precondition: ``False`` gives exactly ``torch.optim.SGD`` / ``AdamW`` (no hooks).
        kl_clip: K-FAC KL clipping bound (``None``: off), applied after grafting.
        grad_scaler: the ``torch.amp.GradScaler`` that scales the loss; needed because the G
            factor is captured from scaled gradients (divided by scale² here). Its ``step`` calls
            ``unscale_`` before ours, so the gradients we precondition are unscaled.
        backends: inversion backend name or {block size: name}; default: the plan's, else
            ``torch-cholesky``.
        max_skipped_steps: consecutive NaN/Inf steps tolerated before :class:`DivergedError`
            (``None``: never raise).
        capture_tf32: on CUDA, compute each factor's Gram as one TF32 GEMM and take its blocks
            (:class:`~thor_planner.optim.factors.BlockFactorCollector`); ``False``: float32 products.
        distributed: share factors and solved blocks across the ranks of ``torch.distributed``
            (:mod:`.distributed`); ``None`` (default): when a process group of more than one rank is
            initialized. A model sharded with FSDP2 (``fully_shard``: DTensor weights) is preconditioned
            band by band, each rank its own rows (:mod:`.sharded`).
        family: the preconditioner family (:data:`~thor_planner.optim.FAMILIES`): ``"inverse"``
            (THOR's block inverses) or ``"eigen"`` (Adam in the Kronecker eigenbasis); default: the
            plan's ``family``, else ``"inverse"``.
    """

    def __init__(self, model: nn.Module, plan: Plan | str | os.PathLike | None = None, *, params=None, lr: float,
                 momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False, split: int | None = None,
                 graft: str | Graft | None = "auto", schedule: Schedule | None = None, precondition: bool = True,
                 kl_clip: float | None = None, grad_scaler=None, backends: str | Mapping[int, str] | None = None,
                 max_skipped_steps: int | None = 10, capture_tf32: bool = True, distributed: bool | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, family: str | None = None):
        if not isinstance(model, nn.Module):
            raise ConfigError("model", type(model).__name__, "must be a torch.nn.Module")
        plan = _as_plan(plan)
        if plan is not None:
            plan.require("thor")
        family_cls = family_class(family or (plan.family if plan is not None else "inverse"))
        self.graft = _family_graft(family_cls, graft)
        check_arguments(kl_clip=kl_clip, split=split, planned=plan is not None, max_skipped_steps=max_skipped_steps)
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov,
                    "betas": tuple(betas) if isinstance(betas, (list, tuple)) else betas, "eps": eps}
        check_group(defaults, self.graft)
        super().__init__(list(model.parameters()) if params is None else params, defaults)
        self._model = model = unwrap(model)
        self.kl_clip, self.grad_scaler, self.precondition = kl_clip, grad_scaler, precondition
        self.capture_tf32 = capture_tf32
        entries = self._entries(model, plan, split, schedule)
        self.backends = backends if backends is not None else (
            plan_backends(plan.device) if plan is not None and family_cls.uses_backends else DEFAULT_BACKEND)
        self.family = family_cls(self.backends)
        self._layers = self._make_layers(model, entries) if precondition else []
        double = any(layer.weight.dtype == torch.float64 for layer in self._layers)
        self._dtype = torch.float64 if double else torch.float32  # factors and solved blocks
        #: decide skips on the device (no host sync) on steps that neither capture nor check
        self._sync_free = any(p.is_cuda for g in self.param_groups for p in g["params"])
        self._step = self._next_check = 0
        self._guard = SkipGuard(max_skipped_steps, self._hint)
        self._replay = False
        self._layers, self._ranks = rank_group(self._layers, self.family, distributed, planned=plan is not None)
        self._solver = self._ranks.solver if self._ranks is not None else local_solver(self.family)
        self._collector: BlockFactorCollector | None = None
        self._rebuild_collector()

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        check_group(self.param_groups[-1], self.graft)

    # -- construction ------------------------------------------------------------------------------

    def _entries(self, model: nn.Module, plan: Plan | None, split: int | None, schedule: Schedule | None) -> list:
        """``(name, a_split, g_split, omega1, omega2)`` of every layer to precondition; sets the schedule."""
        if plan is not None:
            plan.check_model(model)
            self.schedule = schedule or plan.schedule
            return [(lp.name, lp.a_split, lp.g_split, lp.omega1, lp.omega2) for lp in plan.layers]
        self.schedule = s = schedule or Schedule()
        tied = tied_layers(model)  # e.g. an output projection tied to the embedding: first-order update
        return [(sp.name, split or sp.a_dim, split or sp.g_dim, s.omega1, s.omega2)
                for sp in find_layers(model)[0] if sp.name not in tied]

    def _make_layers(self, model: nn.Module, entries: list) -> list[Layer]:
        specs = {sp.name: sp for sp in layer_specs(model)}
        modules = dict(model.named_modules())
        self._specs = specs
        layers = []
        for name, a_split, g_split, o1, o2 in entries:
            a_part, g_part = partition(specs[name].a_dim, a_split), partition(specs[name].g_dim, g_split)
            layers.append(Layer(name, modules[name], layer_type(modules[name]), a_part, g_part, o1, o2,
                                self.family.layer(a_part, g_part)))
        if not layers:
            warnings.warn("THOR: the model has no layer to precondition (no Conv2d, Linear or registered layer "
                          "type): every parameter gets the first-order update", UserWarning, stacklevel=3)
        return layers

    # -- factors -----------------------------------------------------------------------------------

    def _live(self) -> list[Layer]:
        return [l for l in self._layers if not l.trace.frozen]

    def _rebuild_collector(self) -> None:
        """Hooks on the layers that still need factors (frozen layers need none)."""
        if self._collector is not None:
            self._collector.remove()
        live = self._live()
        self._collector = BlockFactorCollector(
            self._model, [self._specs[l.name] for l in live], {l.name: l.capture_parts for l in live},
            dtype=self._dtype, tf32=self.capture_tf32) if live else None
        self._activate()

    def _activate(self) -> None:
        if self._collector is not None:
            self._collector.active = self._step % self.schedule.factor_every == 0

    def _capturing(self) -> bool:
        return self._collector is not None and self._collector.active

    def _new_factors(self, loss_samples) -> tuple[dict, dict]:
        """This iteration's A and G per layer: G rescaled for ``loss_samples`` and the GradScaler,
        averaged over ranks."""
        a_new, g_new = self._collector.factors()
        if loss_samples is not None:  # G was scaled for a loss averaged over N rows: rescale to M
            seen = self._collector.samples()
            g_new = {n: g * (loss_samples / seen[n]) for n, g in g_new.items()}
        if self._ranks is not None:
            a_new, g_new = self._ranks.average_factors(self._live(), a_new, g_new, self._dtype)
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            scale = 1.0 / float(self.grad_scaler.get_scale()) ** 2
            g_new = {n: g * scale for n, g in g_new.items()}
        return a_new, g_new

    # -- the phases of a step ----------------------------------------------------------------------

    def _hint(self) -> str:
        lr = self.param_groups[0]["lr"]
        return (f"Lower the learning rate (lr={lr:g}) or raise the damping "
                f"(damping={self.schedule.damping(self._step):.3g}, Schedule(damping_init=...))")

    def _on_host(self) -> bool:
        """Whether this step decides skips on the host: always off CUDA; on CUDA when it synchronises
        anyway (a capture, a check point or a replay after loading)."""
        return (not self._sync_free or self._capturing() or self._replay
                or (bool(self._layers) and self._step >= self._next_check))

    def _guard_phase(self) -> tuple[bool, torch.Tensor | None]:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        skip, ok = self._guard.check(grads, self._step, self._on_host())
        if skip and self._collector is not None:
            self._collector.reset()
        return skip, ok

    def _fold_phase(self, loss_samples) -> None:
        if self._collector is None:
            return
        if self._capturing():
            a_new, g_new = self._new_factors(loss_samples)
            live = [l for l in self._live() if l.name in a_new and l.name in g_new]
            finite = torch.stack([torch.isfinite(a_new[l.name]).all() & torch.isfinite(g_new[l.name]).all()
                                  for l in live]).tolist() if live else []
            for layer, ok in zip(live, finite):
                if ok:
                    layer.factors.fold(a_new[layer.name], g_new[layer.name], self.schedule.factor_decay)
                else:
                    warnings.warn(f"THOR: step {self._step}: factors of {layer.name} contain NaN/Inf; "
                                  "not folded into the running average", RuntimeWarning, stacklevel=4)
        self._collector.reset()

    def _refresh_phase(self) -> None:
        if self._replay:
            replay(self._layers, self.family)
            self._replay = False
        t = self._step
        if t < self._next_check:
            return
        if check_point(self._live(), t, self.schedule.shift(t), self._solver):
            for layer in self._layers:
                if layer.trace.frozen:
                    layer.factors.clear()  # its preconditioner is final: the factors are not needed
            self._rebuild_collector()
        self._next_check = t + self.schedule.interval(t)

    def _direction_phase(self, ok) -> tuple[dict, dict]:
        """``(preconditioned directions, first-order directions)`` per parameter (the latter: AdamW's,
        for ``graft="adamw"``; SGD's are the gradients themselves). A family that keeps its own
        moments preconditions the raw gradient, is not regrafted, and AdamW skips its parameters."""
        source, reference = {}, {}
        own = self.family.own_moments
        if self.graft.adam:  # AdamW: the filtered gradients and AdamW's directions
            owned = {p for l in self._layers if own and l.precond.ready for p in (l.weight, l.bias) if p is not None}
            for group in self.param_groups:
                m_hat, adam_dir = adam_moments(group, self.state, ok, skip=owned)
                source.update(m_hat)
                reference.update(adam_dir)
        group_of = {p: g for g in self.param_groups for p in g["params"]}
        filtered = self.graft.adam and not own
        precond = directions(self._layers, self._dtype, group_of, graft=self.graft is not Graft.NONE and not own,
                             kl_clip=self.kl_clip, ok=ok, source=source if filtered else None,
                             reference=reference if filtered else None,
                             total=self._ranks.band_total if self._ranks is not None else None) if self._layers else {}
        return precond, reference

    def _update_phase(self, precond: dict, reference: dict, ok) -> None:
        for group in self.param_groups:
            if self.graft.adam:
                adamw_update(group, {**reference, **precond}, ok)
            else:
                sgd_update(group, self.state, precond, ok)

    @torch.no_grad()
    def step(self, closure=None, *, loss_samples: int | torch.Tensor | None = None):
        """One THOR step (see the module docstring); returns the closure's loss if given.

        ``loss_samples``: how many terms the loss of this step's backward averaged over, when that is
        not one per sample and token (the factor default: batch for Conv2d, batch·tokens for Linear).
        A masked-LM loss averaged over the masked tokens passes their count,
        ``(labels != -100).sum()``: a 0-dim tensor stays on the device (no host sync). It scales
        the captured G by ``loss_samples / N`` (exact for one backward per step; with gradient
        accumulation pass the total over the micro-batches). Ignored on steps that capture nothing.
        """
        _check_loss_samples(loss_samples)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skip, ok = self._guard_phase()
        if skip:
            return loss
        if self._layers:
            self._fold_phase(loss_samples)
            self._refresh_phase()
        precond, reference = self._direction_phase(ok)
        self._update_phase(precond, reference, ok)
        self._step += 1
        self._activate()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients; also drop factor statistics of an iteration whose step never ran.

        A ``GradScaler`` skips ``step`` on overflow, leaving that iteration's A and G in the
        collector; they are dropped here when a backward has run since the last step (so calling
        ``zero_grad`` between forward and backward keeps the forward's statistics).
        """
        super().zero_grad(set_to_none=set_to_none)
        if self._collector is not None and self._collector.has_gradients():
            self._collector.reset()

    # -- state -------------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Trace-rule counters per layer, plus the current interval, damping, step and skips."""
        self._guard.sync()
        return {
            "layers": {l.name: l.trace.stats() for l in self._layers},
            "interval": self.schedule.interval(self._step), "damping": self.schedule.damping(self._step),
            "step": self._step, "skipped_steps": self._guard.total,
            "consecutive_skips": self._guard.consecutive,
        }

    def state_dict(self) -> dict:
        """The SGD / AdamW state plus ``"thor"`` (:mod:`.checkpoint`): counters, running factors, trace
        state and the blocks each preconditioner was solved from."""
        sd = super().state_dict()
        family = self.family
        sd["thor"] = {
            "version": VERSION, "family": family.name, "step": self._step,
            "next_check": self._next_check, "skips": self._guard.state(), "skipped_steps": self._guard.total,
            "params": param_shapes(self.param_groups),
            "layers": {l.name: l.state_dict(family.name, family.version) for l in self._layers},
        }
        return self._ranks.pack_state(sd, self.param_groups, adam=self.graft.adam) if self._ranks is not None else sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict` (also one of an older version, or a plain SGD / AdamW state);
        another model's, plan's or family's state is refused. The solved blocks are recomputed from
        the saved ones at the next step."""
        sd = dict(self._ranks.unpack_state(state_dict) if self._ranks is not None else state_dict)
        thor = sd.pop("thor", None)
        check_same_model(self.param_groups, sd, thor, {p: n for n, p in self._model.named_parameters()})
        if thor is not None:
            thor = upgrade(thor)
            check_same_layers({l.name: (l.a_part.split, l.g_part.split) for l in self._layers}, thor)
            check_same_family(self.family.name, thor)
        super().load_state_dict(sd)
        if thor is None:
            return
        for layer in self._layers:
            layer.load_state_dict(thor["layers"][layer.name], self._dtype)
        self._step, self._next_check = thor["step"], thor["next_check"]
        self._guard.load(thor["skips"])
        self._replay = True
        self._rebuild_collector()


def _family_graft(family: type[Family], graft) -> Graft:
    """The graft for ``family``: ``"auto"`` is the family's first choice; others must be among them."""
    chosen = Graft.parse(family.grafts[0] if graft == "auto" else graft)
    if chosen.value not in family.grafts:
        raise ConfigError("graft", graft, f"the {family.name!r} family stands in for "
                          f"{' or '.join(repr(g) for g in family.grafts)} only", quote=True)
    return chosen


def _as_plan(plan) -> Plan | None:
    """A plan object from a :class:`Plan`, a path to a plan file, or None."""
    if plan is None or isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, os.PathLike)):
        return Plan.load(plan)
    raise ConfigError("plan", type(plan).__name__, "pass a Plan (Plan.load('plan.json')), a plan file's path "
                      "or None")


def _check_loss_samples(loss_samples) -> None:
    if loss_samples is None:
        return
    if isinstance(loss_samples, torch.Tensor):
        if loss_samples.dim() != 0 or loss_samples.is_floating_point() or loss_samples.is_complex():
            raise ConfigError("loss_samples", f"tensor of shape {tuple(loss_samples.shape)} and dtype "
                              f"{loss_samples.dtype}", "must be an int or a 0-dim integer tensor (e.g. "
                              "(labels != -100).sum())")
        return
    if isinstance(loss_samples, bool) or not isinstance(loss_samples, int) or loss_samples < 1:
        raise ConfigError("loss_samples", loss_samples, "must be >= 1 (the number of terms the loss averages over)",
                          quote=isinstance(loss_samples, str))
