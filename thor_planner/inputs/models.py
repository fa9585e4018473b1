"""Models to profile: built-ins, user factories, and torchvision/timm/Hugging Face models when they
import. The BERT masked LMs (``bert-base``, ``bert-tiny``) live in :mod:`.transformer`, the
byte-level causal LMs (``gpt-tiny``, ``gpt-small``) in :mod:`.causal`.

The ResNets are defined here (torchvision does not have to import) with exactly torchvision's
module names, parameter shapes and initialisation, so a torchvision ``state_dict`` loads into them
strictly. Nothing here downloads weights.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from thor_planner.inputs.causal import gpt_small, gpt_tiny
from thor_planner.inputs.transformer import bert_base, bert_tiny, hf_model, planner_skips
from thor_planner.utils.errors import UserError, first_line
from thor_planner.utils.imports import accepted_kwargs, call_factory, import_object

# --------------------------------------------------------------------------------------- ResNet


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (strided, v1.5) → 1x1 convolutions with a residual connection (ResNet-50+)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet (v1.5), same module names and initialisation."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50 v1.5 with torchvision's names: 25,557,032 parameters at 1000 classes."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels)


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 with torchvision's names: 11,689,512 parameters at 1000 classes."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels)


# ---------------------------------------------------------------------------------- small nets


def cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """A small conv net for 8x8 images (works on any size through adaptive pooling)."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 16, 3, padding=1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1, stride=2)),
        ("relu2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(128, 64)),
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(64, num_classes)),
    ]))


def mlp(num_classes: int = 10, in_features: int = 64, hidden: int = 128) -> nn.Sequential:
    """A three-layer perceptron; flattens its input, so (64,) and (1, 8, 8) both work."""
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(in_features, hidden)),
        ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(hidden, hidden)),
        ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(hidden, num_classes)),
    ]))


# ------------------------------------------------------------------------------------ registry


def resnet18_digits(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 1×8×8 inputs (a model factory ``load_model`` and the profiler can import)."""
    model = resnet18(num_classes=num_classes, in_channels=1)
    model.input_shape = (1, 8, 8)
    return model


def mlp_wide(num_classes: int = 10) -> nn.Module:
    """The built-in mlp with 512 hidden units (factors of 65, 513 and 513 dimensions)."""
    model = mlp(num_classes=num_classes, in_features=64, hidden=512)
    model.input_shape = (1, 8, 8)
    return model


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: its factory (called with ``num_classes=``) and default input shape."""

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    description: str


BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("cnn", cnn, (1, 8, 8), 10, "small conv net for 8x8 images (digits)"),
        ModelSpec("mlp", mlp, (64,), 10, "three-layer perceptron on 64 features (digits)"),
        ModelSpec("resnet18", resnet18, (3, 224, 224), 1000, "ResNet-18 (torchvision layout)"),
        ModelSpec("resnet50", resnet50, (3, 224, 224), 1000, "ResNet-50 v1.5 (torchvision layout)"),
        ModelSpec("bert-base", bert_base, (128,), 30522, "BERT-base masked LM on 128 token ids (vocab 30522)"),
        ModelSpec("bert-tiny", bert_tiny, (128,), 261, "BERT-tiny masked LM on 128 byte-level token ids"),
        ModelSpec("gpt-tiny", gpt_tiny, (128,), 256, "byte-level causal LM (4 layers, width 128) on 128 bytes"),
        ModelSpec("gpt-small", gpt_small, (1024,), 256,
                  "byte-level causal LM, GPT-2 small's shape (12 layers, width 768) on 1024 bytes"),
    )
}

Source = Literal["builtin", "factory", "torchvision", "timm", "hf"]


@dataclass
class LoadedModel:
    """A model ready to profile, with what is known about its input and output."""

    model: nn.Module
    name: str
    source: Source
    input_shape: tuple[int, ...] | None
    num_classes: int | None
    num_params: int
    #: Token models (the model declares ``vocab_size``): inputs are ids in ``[0, vocab_size)``.
    vocab_size: int | None = None
    #: Layers the planner leaves to the first-order update, with the reason (token models only).
    planner_skips: dict[str, str] = field(default_factory=dict)
    #: Token models only: ``"causal"`` when the model declares ``objective = "causal"`` (labels are
    #: the next tokens), else ``"masked"`` (masked-LM targets).
    objective: str | None = None


def _last_linear_out(model: nn.Module) -> int | None:
    """``out_features`` of the model's last leaf module when that is a Linear, else None."""
    leaves = [m for m in model.modules() if not list(m.children())]
    return leaves[-1].out_features if leaves and isinstance(leaves[-1], nn.Linear) else None


def _from_factory(spec: str, num_classes: int | None) -> tuple[nn.Module, tuple[int, ...] | None]:
    fn = import_object(spec, "model factory")
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs = accepted_kwargs(fn, {"num_classes": num_classes})
        if not kwargs:
            raise UserError(
                f"Model factory '{spec}' takes no num_classes argument: "
                "drop --num-classes or add a num_classes parameter to the factory"
            )
    obj = call_factory(fn, spec, "model factory", kwargs, "fix the factory, or pass another --model")
    if not isinstance(obj, nn.Module):
        raise UserError(
            f"Model factory '{spec}' returned {type(obj).__name__}, expected a torch.nn.Module"
        )
    shape = getattr(obj, "input_shape", None)
    return obj, tuple(shape) if isinstance(shape, (tuple, list)) else None


def _from_hub(name: str, num_classes: int | None) -> nn.Module:
    """``torchvision:NAME`` or ``timm:NAME``, always without pretrained weights."""
    lib, _, arch = name.partition(":")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    try:
        if lib == "torchvision":
            import torchvision.models as tv_models
        else:
            import timm
    except Exception as exc:  # noqa: BLE001 - a mismatched torchvision fails with RuntimeError
        fix = ("install a torchvision build that matches torch" if lib == "torchvision"
               else "install timm (pip install timm)")
        raise UserError(
            f"Model '{name}' needs {lib}, which does not import here: "
            f"{fix}, or use a built-in model"
        ) from exc
    try:
        if lib == "torchvision":
            if hasattr(tv_models, "get_model"):
                return tv_models.get_model(arch, weights=None, **kwargs)
            return getattr(tv_models, arch)(weights=None, **kwargs)
        return timm.create_model(arch, pretrained=False, **kwargs)
    except (ValueError, RuntimeError, AttributeError, KeyError) as exc:
        raise UserError(f"Unknown {lib} model '{arch}': {first_line(exc)}") from exc


def _is_torch_save_file(path: str) -> bool:
    """A zip archive (``torch.save`` since 1.6) or a pickle (the legacy format, protocol 2+)."""
    import zipfile

    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)
    except OSError:
        return True  # let torch.load report the I/O error


def load_weights(model: nn.Module, path: str, name: str) -> None:
    """Load a state dict file into ``model`` strictly, raising :class:`UserError` on any problem.

    The file may hold the state dict itself or a dict with a ``"state_dict"`` or ``"model"`` key.
    """
    if os.path.isdir(path):
        raise UserError(f"Weights file '{path}' is a folder: pass the file written by "
                        "torch.save(model.state_dict(), PATH) to --weights")
    if not os.path.isfile(path):
        raise UserError(f"Weights file '{path}' not found: pass an existing file to --weights")
    if not _is_torch_save_file(path):
        raise UserError(f"Cannot read weights file '{path}': it is not a PyTorch file: pass a state dict written by "
                        "torch.save(model.state_dict(), PATH)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and IO errors all mean "unreadable"
        raise UserError(f"Cannot read weights file '{path}': {first_line(exc)}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise UserError(
            f"Cannot read weights file '{path}': expected a state dict, got {type(obj).__name__}"
        )
    expected = list(model.state_dict().keys())
    missing = [k for k in expected if k not in obj]
    unexpected = [k for k in obj if k not in set(expected)]
    if missing or unexpected:
        first = missing[0] if missing else unexpected[0]
        raise UserError(
            f"Weights file '{path}' does not match model '{name}': {len(missing)} missing and "
            f"{len(unexpected)} unexpected keys (first: {first})"
        )
    try:
        model.load_state_dict(obj, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UserError(
            f"Weights file '{path}' does not match model '{name}': {first_line(exc)}"
        ) from exc


def load_model(name: str, *, num_classes: int | None = None,
               weights: str | None = None) -> LoadedModel:
    """Build the model ``name``: a built-in, ``'pkg.module:factory'``, ``'torchvision:NAME'``,
    ``'timm:NAME'`` or ``'hf:NAME-or-config'`` (a masked LM, :func:`~thor_planner.inputs.transformer.
    hf_model`); then load ``weights`` (a state dict file) strictly if given."""
    input_shape: tuple[int, ...] | None
    source: Source
    if num_classes is not None and num_classes < 1:
        raise UserError(f"Invalid --num-classes={num_classes}: must be >= 1")
    if name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name]
        classes = spec.num_classes if num_classes is None else num_classes
        model, source, input_shape = spec.factory(num_classes=classes), "builtin", spec.input_shape
    elif name.startswith(("torchvision:", "timm:")):
        model = _from_hub(name, num_classes)
        source = "torchvision" if name.startswith("torchvision:") else "timm"
        cfg = getattr(model, "pretrained_cfg", None) or {}  # timm records its input size
        input_shape = tuple(cfg.get("input_size", (3, 224, 224)))
    elif name.startswith("hf:"):
        model, source = hf_model(name[3:], num_classes), "hf"
        input_shape = model.input_shape
    elif ":" in name:
        model, input_shape = _from_factory(name, num_classes)
        source = "factory"
    else:
        names = ", ".join(sorted(BUILTIN_MODELS))
        raise UserError(
            f"Unknown model '{name}': use one of {names}, or a factory as 'pkg.module:function'"
        )
    if weights is not None:
        load_weights(model, weights, name)
    vocab = getattr(model, "vocab_size", None)
    vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None
    return LoadedModel(
        model=model,
        name=name,
        source=source,
        input_shape=input_shape,
        num_classes=num_classes if num_classes is not None else (vocab or _last_linear_out(model)),
        num_params=sum(p.numel() for p in model.parameters()),
        vocab_size=vocab,
        planner_skips=planner_skips(model) if vocab is not None else {},
        objective=None if vocab is None else ("causal" if getattr(model, "objective", None) == "causal"
                                              else "masked"),
    )
