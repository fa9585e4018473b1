"""LAMB: layer-wise adaptive moments for large-batch training (You et al., 2019), a first-order baseline.

Per parameter tensor ``w`` (a "layer") with gradient ``g``, at step ``t`` (from 1):

    m ← β1 m + (1 − β1) g          v ← β2 v + (1 − β2) g²           (m = v = 0 before the first step)
    m̂ = m / (1 − β1ᵗ)              v̂ = v / (1 − β2ᵗ)
    u = m̂ / (√v̂ + eps) + weight_decay · w                           (Adam's direction, decoupled decay)
    r = ‖w‖ / ‖u‖   (r = 1 when ‖w‖ = 0 or ‖u‖ = 0)                   (the layer-wise trust ratio)
    w ← w − lr · r · u

So every tensor moves by ``lr · ‖w‖`` per step whatever the scale of its gradient; a tensor whose norm
is zero (a freshly initialised bias) takes the plain Adam-with-decay step ``lr · u``. Parameters with
no gradient are left alone. The moments and the step count live in ``self.state[p]``, so
``state_dict`` / ``load_state_dict`` round-trip them, and per-group ``lr`` works with learning-rate
schedulers.
"""

from __future__ import annotations

import math

import torch


class LAMB(torch.optim.Optimizer):
    """LAMB (see the module docstring). A ``torch.optim.Optimizer``.

    Args:
        lr: step size, relative to each tensor's norm (> 0).
        betas: decays (β1, β2) of the first and second moments, each in [0, 1).
        eps: added to √v̂ (> 0).
        weight_decay: decoupled decay added to the update before the trust ratio (≥ 0).
    """

    def __init__(self, params, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"Invalid lr={lr}: must be > 0")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Invalid betas={tuple(betas)}: each must be in [0, 1)")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"Invalid eps={eps}: must be > 0")
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ValueError(f"Invalid weight_decay={weight_decay}: must be >= 0")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
                update = (m / (1 - beta1 ** t)).div_(denom)
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()  # kept on the device: no synchronisation
                ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.sub_(update.mul_(ratio * group["lr"]))
        return loss
