"""The direction THOR gives each preconditioned layer: the family's preconditioned direction
(:mod:`.preconditioner`), its length grafted from the first-order direction, optionally KL-clipped.

**Grafting** (``graft="sgd"``, the default): per layer, ``V ← V · ‖∇‖_F / ‖V‖_F`` with ``∇`` the
layer's gradient (weight and bias together, as A's ones column joins them). The natural gradient
chooses the direction, plain SGD the length, so the learning rate, momentum and weight decay tuned
for ``torch.optim.SGD`` carry over unchanged (Distributed Shampoo grafts its preconditioned
directions the same way, and for the same reason). Without it (``graft=None``) the step is the raw
natural gradient, whose length scales like ``1/damping`` in flat directions: it needs a learning
rate of its own (or ``kl_clip``).

**AdamW grafting** (``graft="adamw"``): the layer's Adam-filtered gradient ``m̂`` is preconditioned
and the result takes, per layer, the norm of AdamW's own direction ``m̂ / (sqrt(v̂) + eps)``
(Distributed Shampoo's Adam grafting): the learning rate, betas and weight decay tuned for
``torch.optim.AdamW`` carry over, and every parameter that is not preconditioned (embeddings,
LayerNorm) is updated by AdamW itself (:func:`~thor_planner.optim.update.adam_moments`).

**KL clipping** (``kl_clip=κ``, K-FAC's): after grafting, every preconditioned direction is scaled by
``ν = min(1, sqrt(κ / Σ lr²⟨V, ∇⟩))``.

**Layers held in bands** (FSDP2, :mod:`.sharded`): a rank holds only some rows of such a layer's
``∇`` and ``V``, so the norms of grafting and the ``⟨V, ∇⟩`` of KL clipping are sums over the ranks:
their squares and products are summed by ``total`` (one all-reduce a step for all such layers) and
each band scaled as the whole layer is.

Everything stays on the device (no host synchronisation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from thor_planner.optim.layer import Layer


def grafted(v: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``v`` rescaled to the Frobenius norm of ``grad`` (zero stays zero)."""
    return v * (torch.linalg.vector_norm(grad) / torch.linalg.vector_norm(v).clamp_min(1e-30))


def directions(layers: list[Layer], dtype: torch.dtype, group_of: Mapping, *, graft: bool, kl_clip: float | None,
               ok: torch.Tensor | None = None, source: Mapping | None = None, reference: Mapping | None = None,
               total: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[torch.Tensor, torch.Tensor]:
    """The preconditioned direction of every parameter of the ``layers`` whose preconditioner is ready.

    ``group_of`` maps each parameter to its param group (parameters outside every group are left
    out). ``source`` maps parameters to what is preconditioned (default: ``.grad``); with ``graft``
    each layer takes the norm of ``reference``'s matrix (default: ``source``'s). ``total`` sums the
    statistics of layers held in bands over the ranks (see the module docstring).
    """
    out: dict[torch.Tensor, torch.Tensor] = {}
    vg, bands = [], []
    for layer in layers:
        w = layer.weight
        if not layer.precond.ready or w not in group_of:
            continue
        grad = layer.gradient_matrix(dtype, source)
        if grad is None:
            continue
        v = layer.precond.direction(grad, group=group_of[w], ok=ok)
        ref = (grad if reference is None else layer.gradient_matrix(dtype, reference)) if graft else None
        if total is not None and layer.banded:
            bands.append((layer, v, grad, ref))
            continue
        if graft:
            v = grafted(v, ref)
        if kl_clip is not None:
            vg.append((v * grad).sum() * group_of[w]["lr"] ** 2)
        out.update((p, d) for p, d in layer.split_matrix(v).items() if p in group_of and p.grad is not None)
    if bands:
        vg += _banded(bands, group_of, out, graft=graft, total=total)
    if vg and kl_clip is not None:
        nu = torch.sqrt(kl_clip / torch.stack(vg).sum().clamp_min(1e-30)).clamp(max=1.0)
        out = {p: v * nu.to(v.dtype) for p, v in out.items()}
    return out


def _banded(bands: list, group_of: Mapping, out: dict, *, graft: bool, total: Callable) -> list[torch.Tensor]:
    """Graft the ``(layer, V band, ∇ band, reference band)`` of layers held in bands by their whole
    norms and put their directions in ``out``; returns their ``lr²⟨V, ∇⟩`` terms (whole layers)."""
    zero = bands[0][1].new_zeros(())
    stats = total(torch.stack([torch.stack([(ref * ref).sum() if graft else zero, (v * v).sum(), (v * grad).sum()])
                               for _, v, grad, ref in bands]))
    terms = []
    for (layer, v, _, _), (ref_sq, v_sq, v_grad) in zip(bands, stats):
        scale = ref_sq.sqrt() / v_sq.sqrt().clamp_min(1e-30) if graft else torch.ones_like(v_sq)
        terms.append(v_grad * scale * group_of[layer.weight]["lr"] ** 2)
        out.update((p, d) for p, d in layer.split_matrix(v * scale).items() if p in group_of and p.grad is not None)
    return terms
