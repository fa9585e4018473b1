"""mL-BFGS: momentum-based limited-memory BFGS (Niu et al.), a quasi-Newton baseline for THOR.

Stochastic gradients make plain L-BFGS's curvature pairs ``(θ_k − θ_{k−1}, g_k − g_{k−1})`` noisy:
the two gradients come from different mini-batches. mL-BFGS smooths both sides with the same
momentum (an exponential moving average) and takes the pairs from differences of the averages:

    θ̄_t = β θ̄_{t−1} + (1 − β) θ_t          ḡ_t = β ḡ_{t−1} + (1 − β) g_t     (θ̄_0 = θ_0, ḡ_0 = g_0)
    every ``update_every`` steps:  s = θ̄_t − θ̄_last,  y = ḡ_t − ḡ_last + damping · s

(``last``: the averages at the previous pair). On a quadratic, ``g = Aθ − b`` is affine, so
``ḡ = Aθ̄ − b`` and ``y = (A + damping·I) s`` exactly: the averaging removes noise without biasing the
curvature. A pair is kept only if ``sᵀy > 1e-10 · ‖s‖‖y‖`` (positive curvature); the newest
``history_size`` pairs are kept. The step is ``θ ← θ − lr · H ḡ_t`` where ``H ḡ`` is the standard
two-loop recursion over the stored pairs with ``H_0 = (sᵀy / yᵀy) I`` from the newest pair (no pair
yet: ``H = I``, i.e. SGD on the averaged gradient). ``damping`` (added to ``y``) bounds the inverse
curvature by ``1 / damping``. ``weight_decay`` is added to the gradient before averaging (L2). A
step whose gradient holds NaN/Inf is skipped (counted in the group state's ``skipped_steps``).

Each parameter group is one flattened vector with its own history (per-group ``lr`` works, so
learning-rate schedulers apply unchanged); the state lives in ``self.state`` under the group's first
parameter, so ``state_dict`` / ``load_state_dict`` round-trip it.
"""

from __future__ import annotations

import math

import torch

_CURVATURE_EPS = 1e-10


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def two_loop(grad: torch.Tensor, pairs_s: list[torch.Tensor], pairs_y: list[torch.Tensor]) -> torch.Tensor:
    """``H · grad`` for the L-BFGS inverse-Hessian approximation built from the pairs (oldest first)."""
    if not pairs_s:
        return grad.clone()
    q = grad.clone()
    rhos = [1.0 / float(y.dot(s)) for s, y in zip(pairs_s, pairs_y)]
    alphas = []
    for s, y, rho in zip(reversed(pairs_s), reversed(pairs_y), reversed(rhos)):
        alpha = rho * float(s.dot(q))
        q.add_(y, alpha=-alpha)
        alphas.append(alpha)
    s, y = pairs_s[-1], pairs_y[-1]
    q.mul_(float(s.dot(y)) / float(y.dot(y)))
    for s, y, rho, alpha in zip(pairs_s, pairs_y, rhos, reversed(alphas)):
        beta = rho * float(y.dot(q))
        q.add_(s, alpha=alpha - beta)
    return q


class MLBFGS(torch.optim.Optimizer):
    """Momentum-based L-BFGS (see the module docstring). A ``torch.optim.Optimizer``.

    Args:
        lr: step size on ``H ḡ``.
        momentum: β of the parameter and gradient averages, in [0, 1) (0: plain stochastic L-BFGS).
        history_size: curvature pairs kept (≥ 1).
        update_every: steps between curvature pairs (≥ 1).
        damping: added to ``y`` as ``damping · s`` (≥ 0); bounds the step's inverse curvature.
        weight_decay: L2 coefficient added to the gradient (≥ 0).
    """

    def __init__(self, params, *, lr: float, momentum: float = 0.9, history_size: int = 10,
                 update_every: int = 10, damping: float = 0.3, weight_decay: float = 0.0) -> None:
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"Invalid lr={lr}: must be > 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"Invalid momentum={momentum}: must be in [0, 1)")
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"Invalid history_size={history_size}: must be an integer >= 1")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"Invalid update_every={update_every}: must be an integer >= 1")
        if not (damping >= 0 and math.isfinite(damping)):
            raise ValueError(f"Invalid damping={damping}: must be >= 0")
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ValueError(f"Invalid weight_decay={weight_decay}: must be >= 0")
        defaults = dict(lr=lr, momentum=momentum, history_size=history_size, update_every=update_every,
                        damping=damping, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _group_state(self, group: dict) -> dict:
        return self.state[group["params"][0]]

    def direction(self, group_index: int = 0) -> torch.Tensor | None:
        """The last step's direction ``H ḡ`` of a group, flattened (None before the first step)."""
        return self._group_state(self.param_groups[group_index]).get("direction")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if len(params) != len(group["params"]):
                raise RuntimeError("MLBFGS needs a gradient for every parameter of a group "
                                   "(a parameter without one would shift the flattened curvature pairs)")
            dtype = torch.promote_types(params[0].dtype, torch.float32)  # half / bf16 kept in float32
            theta = _flat([p.detach() for p in params]).to(dtype)
            grad = _flat([p.grad for p in params]).to(dtype)
            if group["weight_decay"]:
                grad = grad.add(theta, alpha=group["weight_decay"])
            state, beta = self._group_state(group), group["momentum"]
            if not torch.isfinite(grad).all():  # skip the step; the caller sees the non-finite loss
                state["skipped_steps"] = state.get("skipped_steps", 0) + 1
                continue
            if "avg_param" not in state:
                state.update(step=0, avg_param=theta.clone(), avg_grad=grad.clone(), last_param=theta.clone(),
                             last_grad=grad.clone(), history_s=[], history_y=[])
            else:
                state["avg_param"].mul_(beta).add_(theta, alpha=1 - beta)
                state["avg_grad"].mul_(beta).add_(grad, alpha=1 - beta)
            state["step"] += 1
            if state["step"] % group["update_every"] == 0:
                self._add_pair(state, group)
            direction = two_loop(state["avg_grad"], state["history_s"], state["history_y"])
            state["direction"] = direction
            offset = 0
            for p in params:
                n = p.numel()
                p.add_(direction[offset:offset + n].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += n
        return loss

    @staticmethod
    def _add_pair(state: dict, group: dict) -> None:
        s = state["avg_param"] - state["last_param"]
        y = state["avg_grad"] - state["last_grad"]
        y.add_(s, alpha=group["damping"])
        state["last_param"].copy_(state["avg_param"])
        state["last_grad"].copy_(state["avg_grad"])
        sy = float(s.dot(y))
        if not (sy > _CURVATURE_EPS * float(s.norm()) * float(y.norm())) or not math.isfinite(sy):
            return  # no positive curvature along s: keep the old pairs
        state["history_s"].append(s)
        state["history_y"].append(y)
        del state["history_s"][:-group["history_size"]]
        del state["history_y"][:-group["history_size"]]
