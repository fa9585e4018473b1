"""THOR: a ``torch.optim.Optimizer`` that preconditions Conv2d / Linear gradients with the
block-diagonal inverses of their Kronecker factors, as a plan prescribes. A drop-in for
``torch.optim.SGD``: the same learning rate, momentum and weight decay train.

One call of :meth:`THOR.step` (step ``t`` counts the calls, from 0):

1. Gradients with NaN/Inf skip the step: weights, momentum and factors stay as they were, the
   statistics of that iteration are dropped, the skip is counted (``stats()``) and warned about at
   the caller's line; ``max_skipped_steps`` consecutive skips raise :class:`DivergedError`. Where
   the step neither captures nor checks, the skip is decided on the device without a host
   synchronisation (CUDA), and its warning comes at the next factor step or check point.
2. Factor step (``t % factor_every == 0``; the collector was active during this iteration's
   forwards and backwards): fold the captured A and G into running averages
   ``F ← d·F + (1−d)·F_new`` (``d = factor_decay``; the first capture initialises F). A capture with
   NaN/Inf is dropped. Only the diagonal blocks at the layer's splits are ever computed and kept
   (packed, see :mod:`.blocks`); they are float32 whatever the autocast dtype (float64 for float64
   models).
3. Check point (every ``schedule.interval(t)`` steps, the first at t = 0): the trace rule and the
   batched inversion of :mod:`.refresh`.
4. Direction (:mod:`.precondition`): ``V = G⁻¹ ∇W A⁻¹`` for every preconditioned layer, grafted to
   the SGD direction's norm (``graft="sgd"``, default) and optionally KL-clipped; then weight decay,
   momentum and the step exactly as ``torch.optim.SGD`` (dampening 0; :mod:`.update`); every other
   parameter gets SGD. ``graft="adamw"``: ∇W is Adam's m̂, the norm AdamW's, the rest AdamW.
5. The collector is switched on when step ``t + 1`` is a factor step.

Weight decay is added *after* preconditioning, as MindSpore's THOR (``apply_decay`` on the
preconditioned gradients), kfac-pytorch (the preconditioner rewrites ``.grad``, then SGD adds
``wd·w``) and Martens & Grosse's K-FAC do: the factors approximate the curvature of the loss alone,
so preconditioning ``wd·w`` with them would amplify the decay by up to ``1/damping`` in flat
directions.

Checkpoints hold the running factors (packed diagonal blocks), the trace-rule state and, per
layer, the diagonal blocks of the factors its current inverses were computed from (plus the step
and damping of that inversion), never the inverses. Loading re-inverts those blocks, grouped by
the check point that inverted them, so a resumed run is bitwise identical to an uninterrupted one
wherever a block's inverse does not depend on the other blocks of its batch (true on CPU).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn

from thor_planner.capture.collector import find_layers, layer_specs
from thor_planner.capture.layers import tied_layers
from thor_planner.inversion.backends import DEFAULT_BACKEND
from thor_planner.optim.blocks import BlockFactorCollector
from thor_planner.optim.distributed import RankGroup, unwrap, wanted
from thor_planner.optim.layer import Layer, plan_backends
from thor_planner.optim.arguments import check_arguments
from thor_planner.optim.precondition import directions
from thor_planner.optim.refresh import check_point, local_inverter, replay_inverses
from thor_planner.optim.skips import DivergedError, SkipCounter
from thor_planner.optim.trace import LayerTrace
from thor_planner.optim.update import adam_moments, adamw_update, sgd_update
from thor_planner.partition import partition
from thor_planner.planning.plan import Plan, Schedule

__all__ = ["THOR", "DivergedError"]


class THOR(torch.optim.Optimizer):
    """THOR natural-gradient optimizer driven by a plan (see the module docstring for one step).

    Args:
        model: the model; every parameter goes into one param group.
        plan: a :class:`~thor_planner.planning.plan.Plan` for this model (refused when it does not
            match). Without a plan every Conv2d/Linear layer is preconditioned, each factor split at
            ``split`` (``None``: dense, unsplit K-FAC), with ``schedule`` or ``Schedule()``.
        lr, momentum, weight_decay, nesterov: as ``torch.optim.SGD`` (dampening 0).
        graft: ``"sgd"`` (default): each layer's natural-gradient direction takes the norm of its
            gradient, so SGD's settings carry over; ``"adamw"``: a drop-in for ``torch.optim.AdamW``
            (``lr``, ``betas``, ``eps``, decoupled ``weight_decay``; ``momentum`` unused): the
            Adam-filtered gradient is preconditioned and takes the norm of AdamW's direction, other
            parameters get AdamW's update; ``None``: the raw natural gradient.
        schedule: overrides the plan's schedule (per-layer ω1/ω2 still come from the plan).
        precondition: ``False`` gives exactly ``torch.optim.SGD`` (no hooks).
        kl_clip: K-FAC KL clipping bound (``None``: off), applied after grafting.
        grad_scaler: the ``torch.amp.GradScaler`` that scales the loss; needed because the G
            factor is captured from scaled gradients (divided by scale² here). Its ``step`` calls
            ``unscale_`` before ours, so the gradients we precondition are unscaled.
        backends: inversion backend name or {block size: name}; default: the plan's, else
            ``torch-cholesky``.
        max_skipped_steps: consecutive NaN/Inf steps tolerated before :class:`DivergedError`
            (``None``: never raise).
        capture_tf32: on CUDA, compute each factor's Gram as one TF32 GEMM and take its blocks
            (:class:`~thor_planner.optim.blocks.BlockFactorCollector`); ``False``: float32 products.
        distributed: share factors and inverses across the ranks of ``torch.distributed``
            (:mod:`.distributed`); ``None`` (default): when a process group of more than one rank is
            initialized. The model may be wrapped in ``DistributedDataParallel``.
    """

    def __init__(self, model: nn.Module, plan: Plan | None = None, *, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, nesterov: bool = False, split: int | None = None,
                 graft: str | None = "sgd", schedule: Schedule | None = None, precondition: bool = True,
                 kl_clip: float | None = None, grad_scaler=None, backends: str | Mapping[int, str] | None = None,
                 max_skipped_steps: int | None = 10, capture_tf32: bool = True, distributed: bool | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        check_arguments(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, kl_clip=kl_clip,
                        split=split, planned=plan is not None, graft=graft, betas=betas, eps=eps,
                        max_skipped_steps=max_skipped_steps)
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov,
                    "betas": tuple(betas), "eps": eps}
        super().__init__(list(model.parameters()), defaults)
        model = unwrap(model)

        if plan is not None:
            plan.check_model(model)
            self.schedule = schedule or plan.schedule
            entries = [(lp.name, lp.a_split, lp.g_split, lp.omega1, lp.omega2) for lp in plan.layers]
            backends = backends if backends is not None else plan_backends(plan.device)
        else:
            self.schedule = schedule or Schedule()
            s = self.schedule
            tied = tied_layers(model)  # e.g. an output projection tied to the embedding: SGD
            entries = [(sp.name, split or sp.a_dim, split or sp.g_dim, s.omega1, s.omega2)
                       for sp in find_layers(model)[0] if sp.name not in tied]
        self.backends = backends if backends is not None else DEFAULT_BACKEND
        self.graft, self.kl_clip, self.grad_scaler, self.precondition = graft, kl_clip, grad_scaler, precondition
        self.capture_tf32 = capture_tf32
        self._inverter = local_inverter(self.backends)
        self._ranks: RankGroup | None = None
        specs = {sp.name: sp for sp in layer_specs(model)}
        modules = dict(model.named_modules())
        self._model = model
        self._layers = [
            Layer(name, modules[name].weight, modules[name].bias, partition(specs[name].a_dim, a_split),
                  partition(specs[name].g_dim, g_split), o1, o2)
            for name, a_split, g_split, o1, o2 in entries
        ] if precondition else []
        self._specs = specs
        double = any(layer.weight.dtype == torch.float64 for layer in self._layers)
        self._dtype = torch.float64 if double else torch.float32  # factors and inverses
        params = [p for g in self.param_groups for p in g["params"]]
        #: decide skips on the device (no host sync) on steps that neither capture nor check
        self._sync_free = any(p.is_cuda for p in params)
        self._step = 0
        self._next_check = 0
        self._skips = SkipCounter(max_skipped_steps)
        self._device_skips: torch.Tensor | None = None  # see _count_on_device
        self._device_first = self._device_steps = 0  # the first step and the number of steps counted there
        self._replay = False
        if wanted(distributed) and self._layers:
            self._ranks = RankGroup(self._layers, self._layers[0].weight.device, self.backends)
            self._inverter = self._ranks.inverter
        self._collector: BlockFactorCollector | None = None
        self._rebuild_collector()

    # -- factors -----------------------------------------------------------------------------------

    def _live(self) -> list[Layer]:
        return [l for l in self._layers if not l.trace.frozen]

    def _rebuild_collector(self) -> None:
        """Hooks on the layers that still need factors (frozen layers need none)."""
        if self._collector is not None:
            self._collector.remove()
        live = self._live()
        self._collector = BlockFactorCollector(
            self._model, [self._specs[l.name] for l in live], {l.name: (l.a_part, l.g_part) for l in live},
            dtype=self._dtype, tf32=self.capture_tf32) if live else None
        self._activate()

    def _activate(self) -> None:
        if self._collector is not None:
            self._collector.active = self._step % self.schedule.factor_every == 0

    def _fold_factors(self, loss_samples) -> None:
        a_new, g_new = self._collector.factors()
        if loss_samples is not None:  # G was scaled for a loss averaged over N rows: rescale to M
            seen = self._collector.samples()
            g_new = {n: g * (loss_samples / seen[n]) for n, g in g_new.items()}
        if self._ranks is not None:
            a_new, g_new = self._ranks.average_factors(self._live(), a_new, g_new, self._dtype)
        live = [l for l in self._live() if l.name in a_new and l.name in g_new]
        if not live:
            return
        g_scale = 1.0
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            g_scale = 1.0 / float(self.grad_scaler.get_scale()) ** 2
        finite = torch.stack([torch.isfinite(a_new[l.name]).all() & torch.isfinite(g_new[l.name]).all()
                              for l in live]).tolist()
        d = self.schedule.factor_decay
        for layer, ok in zip(live, finite):
            if not ok:
                warnings.warn(f"THOR: step {self._step}: factors of {layer.name} contain NaN/Inf; "
                              "not folded into the running average", RuntimeWarning, stacklevel=3)
                continue
            a, g = a_new[layer.name], g_new[layer.name]
            if g_scale != 1.0:
                g = g * g_scale
            if layer.a is None:
                layer.a, layer.g = a, g
            else:
                layer.a.mul_(d).add_(a, alpha=1 - d)
                layer.g.mul_(d).add_(g, alpha=1 - d)

    # -- skipped steps -----------------------------------------------------------------------------

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]

    @staticmethod
    def _finite_flag(grads: list[torch.Tensor]) -> torch.Tensor:
        """0-dim bool on the device: every gradient's L2 norm is finite (NaN/Inf propagate into it)."""
        return torch.stack([n.float() for n in torch._foreach_norm(grads, 2)]).isfinite().all()

    @staticmethod
    def _grads_finite(grads: list[torch.Tensor], flag: torch.Tensor) -> bool:
        """Exact host-side check: a non-finite norm is an Inf/NaN entry or an overflow of the sum."""
        if bool(flag):
            return True
        norms = torch.stack([n.float() for n in torch._foreach_norm(grads, 2)]).isfinite().tolist()
        return all(bool(torch.isfinite(g).all()) for g, ok in zip(grads, norms) if not ok)

    def _hint(self) -> str:
        lr = self.param_groups[0]["lr"]
        return (f"Lower the learning rate (lr={lr:g}) or raise the damping "
                f"(damping={self.schedule.damping(self._step):.3g}, Schedule(damping_init=...))")

    def _count_on_device(self, ok: torch.Tensor) -> None:
        """Skip counters kept on the device (no host sync): read at the next factor step or check
        point. ``[skipped, leading run, trailing run, longest run]`` over the steps since then."""
        if self._device_skips is None:
            self._device_skips = torch.zeros(4, dtype=torch.int64, device=ok.device)
            self._device_first, self._device_steps = self._step, 0
        c, bad = self._device_skips, (~ok).long()
        c[0] += bad
        c[1] += bad * (c[1] == self._device_steps).long()
        c[2] = (c[2] + bad) * bad
        c[3] = torch.maximum(c[3], c[2])
        self._device_steps += 1

    def _read_device_skips(self) -> int:
        """Fold the device counters into the host's; returns how many of those steps were skipped."""
        if self._device_skips is None:
            return 0
        skipped, lead, trail, longest = self._device_skips.tolist()
        n, self._device_skips = self._device_steps, None
        k = self._skips
        k.longest = max(k.longest, longest, k.consecutive + lead)
        k.consecutive = k.consecutive + n if lead == n else trail
        k.total += skipped
        return skipped

    def _report_device_skips(self) -> None:
        first, last = self._device_first, self._step - 1
        skipped = self._read_device_skips()
        if not skipped:
            return
        k = self._skips
        warnings.warn(f"THOR: {skipped} of steps {first}-{last} skipped: gradients contain NaN or Inf "
                      f"({k.consecutive} in a row now, {k.total} in all)", RuntimeWarning, stacklevel=3)
        if k.limit is not None and k.longest >= k.limit:
            raise DivergedError(
                f"THOR: {k.longest} consecutive steps had NaN or Inf gradients (before step {self._step}): "
                f"training has diverged. {self._hint()} (max_skipped_steps={k.limit} sets how many skipped "
                "steps in a row are tolerated)")

    # -- the step ----------------------------------------------------------------------------------

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
        if loss_samples is not None and not isinstance(loss_samples, torch.Tensor) and not loss_samples >= 1:
            raise ValueError(f"Invalid loss_samples={loss_samples}: must be >= 1 (the number of terms the "
                             "loss averages over)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = self._grads()
        ok = self._finite_flag(grads) if grads else None
        capturing = self._collector is not None and self._collector.active
        host = not self._sync_free or capturing or self._replay or (self._layers and self._step >= self._next_check)
        if ok is not None and host:
            self._report_device_skips()
            skipped = not self._grads_finite(grads, ok)
            self._skips.record(self._step, skipped, self._hint())
            if skipped:
                if self._collector is not None:
                    self._collector.reset()
                return loss
            ok = None
        elif ok is not None:
            self._count_on_device(ok)
        lr_of = {p: g["lr"] for g in self.param_groups for p in g["params"]}
        precond = {}
        if self._layers:
            if self._replay:
                replay_inverses(self._layers, self.backends)
                self._replay = False
            if self._collector is not None:
                if capturing:
                    self._fold_factors(loss_samples)
                self._collector.reset()
            if self._step >= self._next_check:
                t = self._step
                if check_point(self._live(), t, self.schedule.shift(t), self._inverter):
                    for layer in self._layers:
                        if layer.trace.frozen:
                            layer.a = layer.g = None  # its inverses are final: the factors are not needed
                    self._rebuild_collector()
                self._next_check = t + self.schedule.interval(t)
        adam = self.graft == "adamw"
        source, reference = {}, {}  # AdamW: the filtered gradients and AdamW's directions
        for group in self.param_groups if adam else ():
            for into, part in zip((source, reference), adam_moments(group, self.state, ok)):
                into.update(part)
        if self._layers:
            precond = directions(self._layers, self._dtype, lr_of, graft=self.graft, kl_clip=self.kl_clip,
                                 **({"source": source, "reference": reference} if adam else {}))
        for group in self.param_groups:
            if adam:
                adamw_update(group, {**reference, **precond}, ok)
            else:
                sgd_update(group, self.state, precond, ok)
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
        self._read_device_skips()
        return {
            "layers": {l.name: l.trace.stats() for l in self._layers},
            "interval": self.schedule.interval(self._step), "damping": self.schedule.damping(self._step),
            "step": self._step, "skipped_steps": self._skips.total,
            "consecutive_skips": self._skips.consecutive,
        }

    _SAVED = ("a", "g", "a_blocks", "g_blocks", "inv_step", "inv_shift")

    def state_dict(self) -> dict:
        """The SGD state plus ``"thor"``: counters, running factors, trace state, inverted blocks."""
        self._read_device_skips()
        sd = super().state_dict()
        sd["thor"] = {
            "step": self._step, "next_check": self._next_check, "skipped_steps": self._skips.total,
            "skips": self._skips.state(),
            "layers": {l.name: {"a_split": l.a_part.split, "g_split": l.g_part.split,
                                "trace": l.trace.to_dict(), **{k: getattr(l, k) for k in self._SAVED}}
                       for l in self._layers},
        }
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict`; inverses are recomputed from the saved blocks at the next step."""
        sd = dict(state_dict)
        thor = sd.pop("thor", None)
        super().load_state_dict(sd)
        if thor is None:
            return
        saved = thor["layers"]
        mine = {l.name: (l.a_part.split, l.g_part.split) for l in self._layers}
        theirs = {n: (s["a_split"], s["g_split"]) for n, s in saved.items()}
        if mine != theirs:
            raise ValueError("THOR state does not match this optimizer's layers and splits: "
                             f"saved {sorted(theirs.items())}, here {sorted(mine.items())}")

        def load(v, device):
            if isinstance(v, torch.Tensor):
                return v.to(device=device, dtype=self._dtype, copy=True)
            return [load(x, device) for x in v] if isinstance(v, list) else v

        for layer in self._layers:
            s = saved[layer.name]
            for key in self._SAVED:
                setattr(layer, key, load(s[key], layer.weight.device))
            layer.trace = LayerTrace.from_dict(s["trace"])
            layer.a_inv = layer.g_inv = None
        self._step, self._next_check = thor["step"], thor["next_check"]
        self._skips.load(thor.get("skips", {"total": thor["skipped_steps"], "consecutive": 0, "longest": 0}))
        self._replay = True
        self._rebuild_collector()
