"""The layer types THOR preconditions, one small class each: the shapes of A and G, the rows of A a
forward input gives, the rows of G an output gradient gives, and how many samples a call holds.

A layer type is a :class:`LayerType`: supporting a new one (say a 1-D convolution) means one
subclass and one :func:`register_layer_type` call, from inside the package or outside it; the
collector, the profiler, the plan's validation and the runtime use only this interface and the
registry :data:`LAYER_TYPES`. A type also owns the mapping between its weight's gradient and the
``(g_dim, a_dim)`` matrix that ``G⁻¹ · ∇W · A⁻¹`` works on (:meth:`LayerType.matrix`,
:meth:`LayerType.unmatrix`): out-first weights (``(out, in, …)``) reshape, others override both.

Samples, and with them the scale of G (see :mod:`thor_planner.capture.collector`):

- ``Conv2d``: one sample per batch element; its output positions are summed into G (KFC, Grosse &
  Martens 2016) and averaged into A.
- ``Linear``: every row of the input is a sample, whatever the layout: ``(B, D)``, batch-first
  ``(B, T, D)``, sequence-first ``(T, B, D)`` or any ``(…, D)``: per-token Fisher, which is what a
  mean loss over all tokens implies. The same tokens laid out as ``(B·T, D)`` give the same factors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LayerSpec:
    """A preconditionable layer: its name, kind and factor dimensions."""

    name: str
    kind: str  # a key of LAYER_TYPES: "conv2d", "linear", or a registered type
    a_dim: int
    g_dim: int
    has_bias: bool


class LayerType:
    """How one kind of layer turns its input and output gradient into factor rows."""

    kind: str = ""
    module_class: type[nn.Module] = nn.Module

    def unsupported(self, module: nn.Module) -> str | None:
        """Why ``module`` cannot be preconditioned (``None``: it can)."""
        return None

    def dims(self, module: nn.Module) -> tuple[int, int]:
        """``(a_dim without the bias column, g_dim)``."""
        raise NotImplementedError

    def input_rows(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The input as rows ``(R, a_dim − bias)``."""
        raise NotImplementedError

    def grad_rows(self, module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. the output as rows ``(R', g_dim)``."""
        raise NotImplementedError

    def samples(self, module: nn.Module, output: torch.Tensor) -> int:
        """How many samples one call's output holds (the per-sample scale of a mean loss)."""
        raise NotImplementedError

    def matrix(self, module: nn.Module, weight_like: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like the weight as the ``(g_dim, a_dim − bias)`` matrix whose rows G and
        columns A precondition (out-first weights: a reshape)."""
        return weight_like.reshape(weight_like.shape[0], -1)

    def unmatrix(self, module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`matrix`: a ``(g_dim, a_dim − bias)`` matrix shaped like the weight."""
        return matrix.reshape(module.weight.shape)


def conv_patches(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """im2col rows ``(N·oh·ow, C·kh·kw)`` in ``F.unfold``'s column order (C, kh, kw).

    Built from strided views of the (padded) input and one copy, instead of ``F.unfold`` and a
    transposed copy; a 1×1 convolution without padding is a strided slice and a permute.
    """
    kh, kw = module.kernel_size
    sh, sw = module.stride
    dh, dw = module.dilation
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    elif any(padding):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    n, c = x.shape[:2]
    if kh == kw == 1:
        return x[:, :, ::sh, ::sw].permute(0, 2, 3, 1).reshape(-1, c)
    ph, pw = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # the dilated kernel's extent
    patches = x.unfold(2, ph, sh).unfold(3, pw, sw)  # (N, C, oh, ow, ph, pw), a view
    if dh > 1 or dw > 1:
        patches = patches[..., ::dh, ::dw]
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)


class Conv2dType(LayerType):
    kind = "conv2d"
    module_class = nn.Conv2d

    def unsupported(self, module: nn.Module) -> str | None:
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups}) is not supported; trained with SGD"
        return None

    def dims(self, module: nn.Module) -> tuple[int, int]:
        kh, kw = module.kernel_size
        return module.in_channels * kh * kw, module.out_channels

    def input_rows(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv_patches(module, x)

    def grad_rows(self, module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
        return grad.movedim(1, -1).reshape(-1, grad.shape[1])

    def samples(self, module: nn.Module, output: torch.Tensor) -> int:
        return output.shape[0]


class LinearType(LayerType):
    kind = "linear"
    module_class = nn.Linear

    def dims(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def input_rows(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])

    def grad_rows(self, module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
        return grad.reshape(-1, grad.shape[-1])

    def samples(self, module: nn.Module, output: torch.Tensor) -> int:
        return output.numel() // output.shape[-1]


#: The registry of layer types by kind, in registration order.
LAYER_TYPES: dict[str, LayerType] = {}


def register_layer_type(kind: LayerType) -> LayerType:
    """Add ``kind`` to :data:`LAYER_TYPES` (its ``kind`` name must be new); returns it."""
    if not kind.kind or kind.kind in LAYER_TYPES:
        raise ValueError(f"Invalid layer type kind={kind.kind!r}: must be a new, non-empty name "
                         f"(registered: {', '.join(LAYER_TYPES)})")
    LAYER_TYPES[kind.kind] = kind
    return kind


register_layer_type(Conv2dType())
register_layer_type(LinearType())


def layer_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order (what a plan's ``kind`` may be)."""
    return tuple(LAYER_TYPES)


def layer_type(module: nn.Module) -> LayerType | None:
    """The :class:`LayerType` of ``module`` (``None`` when THOR does not precondition its kind): the
    type registered for its exact class, else the first whose class it derives from."""
    types = list(LAYER_TYPES.values())
    exact = [t for t in types if type(module) is t.module_class]
    return next(iter(exact or [t for t in types if isinstance(module, t.module_class)]), None)


def _spec(name: str, module: nn.Module, kind: LayerType) -> LayerSpec | str:
    """The layer's spec, or the reason it cannot be preconditioned."""
    reason = kind.unsupported(module)
    if reason is not None:
        return reason
    bias = module.bias is not None
    a_dim, g_dim = kind.dims(module)
    return LayerSpec(name, kind.kind, a_dim + bias, g_dim, bias)


def find_layers(model: nn.Module, skip: str | None = None) -> tuple[list[LayerSpec], list[dict]]:
    """All Conv2d / Linear layers of ``model``: the preconditionable specs and the skipped layers.

    ``skip`` is a regular expression; layers whose names it matches (``re.search``) are skipped.
    """
    pattern = re.compile(skip) if skip else None
    specs, skipped = [], []
    for name, module in model.named_modules():
        kind = layer_type(module)
        if kind is None:
            continue
        if pattern is not None and pattern.search(name):
            skipped.append({"name": name, "reason": f"matched --skip {skip!r}"})
            continue
        spec = _spec(name, module, kind)
        if isinstance(spec, str):
            skipped.append({"name": name, "reason": spec})
        else:
            specs.append(spec)
    return specs, skipped


def layer_specs(model: nn.Module) -> list[LayerSpec]:
    """Specs of every preconditionable layer of ``model`` (no skipping)."""
    return find_layers(model)[0]


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows ``(R, a_dim)``: im2col for convolutions, ones column for a bias."""
    rows = layer_type(module).input_rows(module, x)
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def output_grad_rows(module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    """The gradient w.r.t. the layer's output as rows ``(R, g_dim)``."""
    return layer_type(module).grad_rows(module, grad)


def tied_layers(model: nn.Module) -> set[str]:
    """Names of Conv2d / Linear layers whose weight another module also owns (a decoder tied to an
    embedding): their gradient sums both uses, so their Kronecker factors describe neither."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    return {name for name, m in model.named_modules()
            if layer_type(m) is not None and owners.get(id(m.weight), 0) > 1}
