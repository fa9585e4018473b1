"""The first-order part of a THOR step: weight decay, momentum and the parameter update, exactly as
``torch.optim.SGD`` (dampening 0) computes them (:func:`sgd_update`), or Adam's moments and AdamW's
decoupled step (:func:`adam_moments`, :func:`adamw_update`, for ``graft="adamw"``), with
``torch._foreach_*`` ops (a handful of kernel launches per param group instead of several per
parameter).

``ok`` (optional, a 0-dim bool tensor on the parameters' device) makes the step conditional
without reading it on the host: when it is false, parameters and momentum buffers are left exactly
as they were (the directions are replaced by zeros with ``torch.where``, so NaN/Inf never reach
them, the momentum factor becomes 1 and the step 0).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def sgd_update(group: dict, state: Mapping, directions: Mapping[torch.Tensor, torch.Tensor],
               ok: torch.Tensor | None = None) -> None:
    """Update the parameters of one param ``group`` along ``directions`` (default: ``p.grad``)."""
    params = [p for p in group["params"] if p.grad is not None]
    if not params:
        return
    lr, momentum, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
    d = [directions.get(p, p.grad) for p in params]
    if wd != 0:
        d = torch._foreach_add(d, params, alpha=wd)
    if ok is not None:
        d = [torch.where(ok, x, torch.zeros((), dtype=x.dtype, device=x.device)) for x in d]
    if momentum != 0:
        old = [i for i, p in enumerate(params) if "momentum_buffer" in state[p]]
        for i, p in enumerate(params):
            if "momentum_buffer" not in state[p]:
                state[p]["momentum_buffer"] = torch.clone(d[i]).detach()
        if old:
            bufs = [state[params[i]]["momentum_buffer"] for i in old]
            factor = momentum if ok is None else torch.where(ok, momentum, 1.0).to(bufs[0].device)
            torch._foreach_mul_(bufs, factor)
            torch._foreach_add_(bufs, [d[i] for i in old])
        bufs = [state[p]["momentum_buffer"] for p in params]
        d = torch._foreach_add(d, bufs, alpha=momentum) if nesterov else bufs
    if ok is None:
        torch._foreach_add_(params, d, alpha=-lr)
    else:
        step = torch.where(ok, -lr, 0.0).to(params[0].device)
        torch._foreach_add_(params, torch._foreach_mul(d, step))


# -------------------------------------------------------------------------------- AdamW


def adam_moments(group: dict, state: Mapping, ok: torch.Tensor | None = None, skip: set | frozenset = frozenset()
                 ) -> tuple[dict[torch.Tensor, torch.Tensor], dict[torch.Tensor, torch.Tensor]]:
    """Update Adam's moments of one param ``group`` from ``p.grad``, as ``torch.optim.AdamW`` does
    (per-parameter step counts, bias corrections); returns ``(m̂, m̂ / (sqrt(v̂) + eps))`` per
    parameter: the filtered gradient THOR preconditions, and AdamW's own direction. Parameters in
    ``skip`` (those whose preconditioner keeps its own moments) are left out.

    With ``ok`` false the moments and step counts are left exactly as they were.
    """
    params = [p for p in group["params"] if p.grad is not None and p not in skip]
    if not params:
        return {}, {}
    (beta1, beta2), eps = group["betas"], group["eps"]
    for p in params:
        if "exp_avg" not in state[p]:
            state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    grads = [p.grad for p in params]
    m, v = [state[p]["exp_avg"] for p in params], [state[p]["exp_avg_sq"] for p in params]
    steps = [state[p]["step"] for p in params]
    if ok is None:
        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
    else:  # a skipped step: zero gradients and decay factors of 1 leave m, v and the counts as they were
        grads = [torch.where(ok, g, torch.zeros((), dtype=g.dtype, device=g.device)) for g in grads]
        torch._foreach_add_(steps, ok.float())
        torch._foreach_mul_(m, torch.where(ok, beta1, 1.0).to(m[0].device))
        torch._foreach_add_(m, grads, alpha=1 - beta1)
        torch._foreach_mul_(v, torch.where(ok, beta2, 1.0).to(v[0].device))
    torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
    t = [s.to(torch.float64) for s in steps]  # bias corrections in float64 (0-dim: no type promotion)
    bc1 = torch._foreach_neg(torch._foreach_sub(torch._foreach_pow(beta1, t), 1))  # 1 - β1^t
    bc2 = torch._foreach_sqrt(torch._foreach_neg(torch._foreach_sub(torch._foreach_pow(beta2, t), 1)))
    m_hat = torch._foreach_div(m, bc1)
    denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(v), bc2), eps)
    return dict(zip(params, m_hat)), dict(zip(params, torch._foreach_div(m_hat, denom)))


def adamw_update(group: dict, directions: Mapping[torch.Tensor, torch.Tensor],
                 ok: torch.Tensor | None = None) -> None:
    """``p ← p·(1 − lr·wd) − lr·d``: AdamW's decoupled weight decay and step along ``directions``
    (every parameter with a gradient has one)."""
    params = [p for p in group["params"] if p.grad is not None]
    if not params:
        return
    lr, wd = group["lr"], group["weight_decay"]
    d = [directions[p] for p in params]
    if ok is None:
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, d, alpha=-lr)
        return
    d = [torch.where(ok, x, torch.zeros((), dtype=x.dtype, device=x.device)) for x in d]
    if wd != 0:
        torch._foreach_mul_(params, torch.where(ok, 1 - lr * wd, 1.0).to(params[0].device))
    torch._foreach_add_(params, torch._foreach_mul(d, torch.where(ok, -lr, 0.0).to(params[0].device)))
