"""THOR: a ``torch.optim.Optimizer`` that preconditions Conv2d / Linear gradients with the
block-diagonal inverses of their Kronecker factors, as a plan prescribes.

One call of :meth:`THOR.step` (step ``t`` counts the steps taken, from 0):

1. Gradients with NaN/Inf: warn and return. Nothing changes (weights, momentum, factors, step
   counter); the statistics captured during that iteration are discarded.
2. Factor step (``t % factor_every == 0``; the collector was active during this iteration's forward
   and backward): fold the captured A and G into running averages ``F ← d·F + (1−d)·F_new``
   (``d = factor_decay``; the first capture initialises F). A capture with NaN/Inf is dropped.
   Only the diagonal blocks at the layer's splits are ever computed and kept (packed, see
   :mod:`.blocks`): capture costs ``R·d·s`` instead of ``R·d²`` and the state ``d·s`` numbers.
3. Check point (every ``schedule.interval(t)`` steps, the first at t = 0): the trace rule
   (:mod:`.trace`) decides per layer; the layers to update are inverted together, one
   :func:`~thor_planner.inversion.invert_groups` call per block size, on the plan's per-factor
   splits, with ``sqrt(damping(t))`` added to every factor's diagonal (as MindSpore's THOR does);
   kept inverses keep the damping they were computed with.
4. Update: ``V = G⁻¹ ∇W A⁻¹`` for every preconditioned layer (conv weights as ``(out, in·kh·kw)``,
   the bias as the last column, matching A's ones column); optional K-FAC KL clipping
   ``ν = min(1, sqrt(kl_clip / Σ lr²⟨V, ∇W⟩))``; then weight decay, momentum and the step exactly
   as ``torch.optim.SGD`` (dampening 0). Every other parameter gets plain SGD with momentum.
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

import math
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from thor_planner.capture.collector import find_layers, layer_specs
from thor_planner.inversion.backends import DEFAULT_BACKEND, invert_groups
from thor_planner.partition import BlockGroups, partition
from thor_planner.planning.plan import Plan, Schedule
from thor_planner.optim.layer import Layer, plan_backends
from thor_planner.optim.blocks import BlockFactorCollector, for_apply, group_packed, left, pack, packed_trace, right
from thor_planner.optim.trace import STOP, UPDATE, LayerTrace

Blocks = list[torch.Tensor]


class THOR(torch.optim.Optimizer):
    """THOR natural-gradient optimizer driven by a plan (see the module docstring for one step).

    Args:
        model: the model; every parameter goes into one param group.
        plan: a :class:`~thor_planner.plan.Plan` for this model (refused when it does not match).
            Without a plan every Conv2d/Linear layer is preconditioned, each factor split at
            ``split`` (``None``: dense, unsplit K-FAC), with ``schedule`` or ``Schedule()``.
        lr, momentum, weight_decay, nesterov: as ``torch.optim.SGD`` (dampening 0).
        schedule: overrides the plan's schedule (per-layer ω1/ω2 still come from the plan).
        precondition: ``False`` gives exactly ``torch.optim.SGD`` (no hooks).
        kl_clip: K-FAC KL clipping bound (``None``: off).
        grad_scaler: the ``torch.amp.GradScaler`` that scales the loss; needed because the G
            factor is captured from scaled gradients (divided by scale² here). Its ``step`` calls
            ``unscale_`` before ours, so the gradients we precondition are unscaled.
        backends: inversion backend name or {block size: name}; default: the plan's, else
            ``torch-cholesky``.
    """

    def __init__(self, model: nn.Module, plan: Plan | None = None, *, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, nesterov: bool = False, split: int | None = None,
                 schedule: Schedule | None = None, precondition: bool = True, kl_clip: float | None = None,
                 grad_scaler=None, backends: str | Mapping[int, str] | None = None):
        for what, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not value >= 0:
                raise ValueError(f"Invalid {what}={value}: must be >= 0")
        if nesterov and momentum == 0:
            raise ValueError("Invalid nesterov=True: Nesterov momentum requires momentum > 0")
        if kl_clip is not None and not kl_clip > 0:
            raise ValueError(f"Invalid kl_clip={kl_clip}: must be > 0 (or None to disable)")
        if split is not None and (plan is not None or split < 1):
            raise ValueError(f"Invalid split={split}: pass an integer >= 1 and no plan "
                             "(a plan carries its own splits)")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov}
        super().__init__(list(model.parameters()), defaults)

        if plan is not None:
            plan.check_model(model)
            self.schedule = schedule or plan.schedule
            entries = [(lp.name, lp.a_split, lp.g_split, lp.omega1, lp.omega2) for lp in plan.layers]
            backends = backends if backends is not None else plan_backends(plan.device)
        else:
            self.schedule = schedule or Schedule()
            s = self.schedule
            entries = [(sp.name, split or sp.a_dim, split or sp.g_dim, s.omega1, s.omega2)
                       for sp in find_layers(model)[0]]
        self.backends = backends if backends is not None else DEFAULT_BACKEND
        self.kl_clip, self.grad_scaler, self.precondition = kl_clip, grad_scaler, precondition
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
        self._step = 0
        self._next_check = 0
        self._skipped = 0
        self._replay = False
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
            dtype=self._dtype) if live else None
        self._activate()

    def _activate(self) -> None:
        if self._collector is not None:
            self._collector.active = self._step % self.schedule.factor_every == 0

    def _fold_factors(self) -> None:
        a_new, g_new = self._collector.factors()
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

    # -- inverses ----------------------------------------------------------------------------------

    def _invert(self, layers: list[Layer], factors: list[torch.Tensor],
                shift: float) -> tuple[BlockGroups, BlockGroups]:
        """Invert ``factors`` (A, G of each layer in turn), one call per block size: (blocks, inverses)."""
        parts = [p for l in layers for p in (l.a_part, l.g_part)]
        groups = group_packed(factors, parts)
        return groups, invert_groups(groups, shift, self.backends)

    def _check_point(self) -> None:
        t = self._step
        shift = math.sqrt(self.schedule.damping(t))
        ready = [l for l in self._live() if l.a is not None]
        if ready:
            traces = torch.stack([torch.stack([packed_trace(l.a, l.a_part), packed_trace(l.g, l.g_part)])
                                  for l in ready]).tolist()
            todo, froze = [], False
            for layer, (ta, tg) in zip(ready, traces):
                decision = layer.trace.check(ta, tg, layer.a_part.dim, layer.g_part.dim, shift,
                                             layer.omega1, layer.omega2)
                todo += [layer] if decision == UPDATE else []
                froze |= decision == STOP
            if todo:
                groups, inv = self._invert(todo, [f for l in todo for f in (l.a, l.g)], shift)
                for i, layer in enumerate(todo):
                    layer.a_blocks = [b.clone() for b in groups.blocks_of(2 * i)]
                    layer.g_blocks = [b.clone() for b in groups.blocks_of(2 * i + 1)]
                    self._set_inverses(layer, inv, i)
                    layer.inv_step, layer.inv_shift = t, shift
            if froze:
                for layer in self._layers:
                    if layer.trace.frozen:
                        layer.a = layer.g = None  # its inverses are final: the factors are not needed
                self._rebuild_collector()
        self._next_check = t + self.schedule.interval(t)

    def _replay_inverses(self) -> None:
        """After loading: recompute every layer's inverses from the saved blocks, grouped as inverted."""
        by_step: dict[int, list[Layer]] = {}
        for layer in self._layers:
            if layer.a_blocks is not None:
                by_step.setdefault(layer.inv_step, []).append(layer)
        for step in sorted(by_step):
            layers = by_step[step]
            factors = [pack(blocks) for l in layers for blocks in (l.a_blocks, l.g_blocks)]
            _, inv = self._invert(layers, factors, layers[0].inv_shift)
            for i, layer in enumerate(layers):
                self._set_inverses(layer, inv, i)
        self._replay = False

    @staticmethod
    def _set_inverses(layer: Layer, inv: BlockGroups, i: int) -> None:
        """Layer ``i`` of an inversion: its inverses, held as :func:`.blocks.left` / ``right`` apply them."""
        layer.a_inv = for_apply(inv.blocks_of(2 * i), layer.a_part, other=layer.g_part.dim)
        layer.g_inv = for_apply(inv.blocks_of(2 * i + 1), layer.g_part, other=layer.a_part.dim)

    # -- the step ----------------------------------------------------------------------------------

    def _preconditioned(self, group_of: dict) -> dict[torch.Tensor, torch.Tensor]:
        """``G⁻¹ ∇ A⁻¹`` (KL-clipped) for every parameter of the layers that have inverses."""
        out: dict[torch.Tensor, torch.Tensor] = {}
        vg = []
        for layer in self._layers:
            w, b = layer.weight, layer.bias
            if layer.a_inv is None or w.grad is None or w not in group_of:
                continue
            grad = w.grad.reshape(w.shape[0], -1)
            if b is not None:
                bias_grad = b.grad if b.grad is not None else torch.zeros_like(b)
                grad = torch.cat([grad, bias_grad.reshape(-1, 1)], dim=1)
            grad = grad.to(self._dtype)
            v = right(left(layer.g_inv, grad, layer.g_part), layer.a_inv, layer.a_part)
            if self.kl_clip is not None:
                vg.append((v * grad).sum() * group_of[w]["lr"] ** 2)
            cols = w[0].numel()
            out[w] = v[:, :cols].reshape(w.shape).to(w.dtype)
            if b is not None and b.grad is not None and b in group_of:
                out[b] = v[:, cols].to(b.dtype)
        if vg:
            nu = torch.sqrt(self.kl_clip / torch.stack(vg).sum()).clamp(max=1.0)
            out = {p: v * nu.to(v.dtype) for p, v in out.items()}
        return out

    def _grads_finite(self) -> bool:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        # one fused L2 norm per tensor: finite norms prove finite entries (NaN/Inf propagate); a
        # non-finite norm is an Inf/NaN entry or an overflow of the sum, told apart exactly
        if not grads:
            return True
        norms = torch.stack(torch._foreach_norm(grads, 2)).isfinite()
        return bool(norms.all()) or all(bool(torch.isfinite(g).all())
                                        for g, ok in zip(grads, norms.tolist()) if not ok)

    @torch.no_grad()
    def step(self, closure=None):
        """One THOR step (see the module docstring); returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._grads_finite():
            warnings.warn(f"THOR: step {self._step} skipped: gradients contain NaN or Inf",
                          RuntimeWarning, stacklevel=2)
            self._skipped += 1
            if self._collector is not None:
                self._collector.reset()
            return loss
        group_of = {p: g for g in self.param_groups for p in g["params"]}
        precond = {}
        if self._layers:
            if self._replay:
                self._replay_inverses()
            if self._collector is not None:
                if self._collector.active:
                    self._fold_factors()
                self._collector.reset()
            if self._step >= self._next_check:
                self._check_point()
            precond = self._preconditioned(group_of)
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            nesterov = group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = precond.get(p, p.grad)
                if wd != 0:
                    d_p = d_p.add(p, alpha=wd)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf.mul_(momentum).add_(d_p)
                    d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
                p.add_(d_p, alpha=-lr)
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
        return {
            "layers": {l.name: l.trace.stats() for l in self._layers},
            "interval": self.schedule.interval(self._step), "damping": self.schedule.damping(self._step),
            "step": self._step, "skipped_steps": self._skipped,
        }

    _SAVED = ("a", "g", "a_blocks", "g_blocks", "inv_step", "inv_shift")

    def state_dict(self) -> dict:
        """The SGD state plus ``"thor"``: counters, running factors, trace state, inverted blocks."""
        sd = super().state_dict()
        sd["thor"] = {
            "step": self._step, "next_check": self._next_check, "skipped_steps": self._skipped,
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
        self._step, self._next_check, self._skipped = thor["step"], thor["next_check"], thor["skipped_steps"]
        self._replay = True
        self._rebuild_collector()
