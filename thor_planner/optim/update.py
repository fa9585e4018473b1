"""The first-order part of a THOR step: weight decay, momentum and the parameter update, exactly as
``torch.optim.SGD`` (dampening 0) computes them, with ``torch._foreach_*`` ops (a handful of
kernel launches per param group instead of several per parameter).

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
