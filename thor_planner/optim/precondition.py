"""The direction THOR gives each preconditioned layer: ``V = G⁻¹ ∇W A⁻¹`` on the layer's blocks,
its size grafted from the SGD direction, optionally KL-clipped.

**Grafting** (``graft="sgd"``, the default): per layer, ``V ← V · ‖∇‖_F / ‖V‖_F`` with ``∇`` the
layer's gradient (weight and bias together, as A's ones column joins them). The natural gradient
chooses the direction, plain SGD the length, so the learning rate, momentum and weight decay tuned
for ``torch.optim.SGD`` carry over unchanged (Distributed Shampoo grafts its preconditioned
directions the same way, and for the same reason). Without it (``graft=None``) the step is the raw
natural gradient, whose length scales like ``1/damping`` in flat directions: it needs a learning
rate of its own (or ``kl_clip``).

**AdamW grafting** (``graft="adamw"``): the layer's Adam-filtered gradient ``m̂`` is preconditioned
and the result takes, per layer, the norm of AdamW's own direction ``m̂ / (sqrt(v̂) + eps)`` (Distributed
Shampoo's Adam grafting): the learning rate, betas and weight decay tuned for ``torch.optim.AdamW``
carry over, and every parameter that is not preconditioned (embeddings, LayerNorm) is updated by
AdamW itself (:func:`~thor_planner.optim.update.adam_moments`).

**KL clipping** (``kl_clip=κ``, K-FAC's): after grafting, every preconditioned direction is scaled by
``ν = min(1, sqrt(κ / Σ lr²⟨V, ∇⟩))``.

Everything stays on the device (no host synchronisation).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from thor_planner.optim.blocks import left, right
from thor_planner.optim.layer import Layer

GRAFTS = ("sgd", "adamw", None)


def layer_gradient(layer: Layer, dtype: torch.dtype, of: Mapping | None = None) -> torch.Tensor:
    """The layer's gradient as ``(out, in·kh·kw [+ 1])`` in ``dtype`` (the bias as the last column);
    ``of`` maps a parameter to the tensor to use instead of its ``.grad``."""
    w, b = layer.weight, layer.bias
    grad = (w.grad if of is None else of[w]).reshape(w.shape[0], -1)
    if b is not None:
        bias_grad = b.grad if of is None else of.get(b)
        bias_grad = bias_grad if bias_grad is not None else torch.zeros_like(b)
        grad = torch.cat([grad, bias_grad.reshape(-1, 1)], dim=1)
    return grad.to(dtype)


def natural_gradient(layer: Layer, grad: torch.Tensor) -> torch.Tensor:
    """``G⁻¹ grad A⁻¹`` with the layer's block-diagonal inverses."""
    return right(left(layer.g_inv, grad, layer.g_part), layer.a_inv, layer.a_part)


def grafted(v: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``v`` rescaled to the Frobenius norm of ``grad`` (zero stays zero)."""
    return v * (torch.linalg.vector_norm(grad) / torch.linalg.vector_norm(v).clamp_min(1e-30))


def directions(layers: list[Layer], dtype: torch.dtype, lr_of: dict, *, graft: str | None,
               kl_clip: float | None, source: Mapping | None = None, reference: Mapping | None = None
               ) -> dict[torch.Tensor, torch.Tensor]:
    """The preconditioned direction of every parameter of the ``layers`` that have inverses.

    ``lr_of`` maps each parameter to its param group's learning rate (parameters outside every
    group are left out). ``source`` maps parameters to what is preconditioned (default: ``.grad``),
    ``reference`` to the direction whose norm a grafted layer takes (default: ``source``).
    """
    out: dict[torch.Tensor, torch.Tensor] = {}
    vg = []
    for layer in layers:
        w, b = layer.weight, layer.bias
        if layer.a_inv is None or w.grad is None or w not in lr_of:
            continue
        grad = layer_gradient(layer, dtype, source)
        v = natural_gradient(layer, grad)
        if graft is not None:
            v = grafted(v, grad if reference is None else layer_gradient(layer, dtype, reference))
        if kl_clip is not None:
            vg.append((v * grad).sum() * lr_of[w] ** 2)
        cols = w[0].numel()
        out[w] = v[:, :cols].reshape(w.shape).to(w.dtype)
        if b is not None and b.grad is not None and b in lr_of:
            out[b] = v[:, cols].to(b.dtype)
    if vg:
        nu = torch.sqrt(kl_clip / torch.stack(vg).sum().clamp_min(1e-30)).clamp(max=1.0)
        out = {p: v * nu.to(v.dtype) for p, v in out.items()}
    return out
