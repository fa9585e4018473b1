"""Tests for thor_planner.inputs.models: torchvision-compatible ResNets, factories, weights."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from thor_planner.utils.errors import UserError
from thor_planner.inputs.models import BUILTIN_MODELS, load_model, resnet18, resnet50


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _message(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    return str(excinfo.value)


def test_resnet_parameter_counts_match_torchvision() -> None:
    assert _num_params(resnet50()) == 25_557_032
    assert _num_params(resnet18()) == 11_689_512


def test_resnet50_layout_matches_torchvision() -> None:
    model = resnet50()
    state = model.state_dict()
    assert len(state) == 320  # 161 parameters + 3 buffers for each of the 53 BatchNorms
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert state["layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert "layer2.0.downsample.1.running_var" in state
    assert state["fc.weight"].shape == (1000, 2048)
    assert model.layer2[0].conv2.stride == (2, 2)  # v1.5: stride on the 3x3
    assert model.layer2[0].conv1.stride == (1, 1)


def test_resnet_forward_shapes() -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert resnet50()(x).shape == (2, 1000)
        assert resnet18(num_classes=7)(x).shape == (2, 7)
        assert resnet18(in_channels=1)(torch.randn(2, 1, 32, 32)).shape == (2, 1000)


def test_resnet_init_like_torchvision() -> None:
    model = resnet18()
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    std = model.conv1.weight.std().item()
    expected = (2.0 / (64 * 7 * 7)) ** 0.5  # kaiming normal, fan_out, relu
    assert abs(std - expected) / expected < 0.1


def test_builtin_registry_and_small_models() -> None:
    assert sorted(BUILTIN_MODELS) == ["bert-base", "bert-tiny", "cnn", "gpt-small", "gpt-tiny", "mlp", "resnet18", "resnet50"]
    for name in ("cnn", "mlp"):
        loaded = load_model(name)
        spec = BUILTIN_MODELS[name]
        assert loaded.source == "builtin" and loaded.input_shape == spec.input_shape
        assert loaded.num_classes == 10
        out = loaded.model(torch.randn(3, *spec.input_shape))
        assert out.shape == (3, 10)
    assert load_model("mlp").model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert load_model("cnn", num_classes=4).model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    assert load_model("resnet18").num_params == 11_689_512


def test_unknown_model() -> None:
    with pytest.raises(UserError) as e:
        load_model("vgg")
    assert _message(e) == (
        "Unknown model 'vgg': use one of bert-base, bert-tiny, cnn, gpt-small, gpt-tiny, mlp, resnet18, resnet50, "
        "or a factory as 'pkg.module:function'"
    )


def test_weights_round_trip(tmp_path: Path) -> None:
    source = load_model("cnn").model
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    loaded = load_model("cnn", weights=str(path)).model
    for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, wrapped)
    loaded = load_model("cnn", weights=str(wrapped)).model
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    torch.save({"model": source.state_dict()}, wrapped)
    assert torch.equal(load_model("cnn", weights=str(wrapped)).model.fc2.bias, source.fc2.bias)


def test_weights_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(UserError) as e:
        load_model("cnn", weights=str(missing))
    assert _message(e) == f"Weights file '{missing}' not found: pass an existing file to --weights"

    mlp_path = tmp_path / "mlp.pt"
    torch.save(load_model("mlp").model.state_dict(), mlp_path)
    with pytest.raises(UserError) as e:
        load_model("cnn", weights=str(mlp_path))
    assert _message(e) == (
        f"Weights file '{mlp_path}' does not match model 'cnn': "
        "4 missing and 2 unexpected keys (first: conv1.weight)"
    )

    shape_path = tmp_path / "cnn4.pt"
    torch.save(load_model("cnn", num_classes=4).model.state_dict(), shape_path)
    with pytest.raises(UserError) as e:
        load_model("cnn", weights=str(shape_path))
    assert _message(e) == (
        f"Weights file '{shape_path}' does not match model 'cnn': size mismatch for fc2.weight: "
        "copying a param with shape torch.Size([4, 64]) from checkpoint, the shape in current "
        "model is torch.Size([10, 64])."
    )

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint\n")
    with pytest.raises(UserError) as e:
        load_model("cnn", weights=str(junk))
    assert _message(e).startswith(f"Cannot read weights file '{junk}': ")
    assert "\n" not in _message(e)


def _write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_factory_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, monkeypatch, "tp_models_ok", """
        import torch

        def tiny():
            return torch.nn.Sequential(torch.nn.Linear(5, 3))

        def sized(num_classes=2):
            model = torch.nn.Linear(5, num_classes)
            model.input_shape = (5,)
            return model

        def not_a_module():
            return [1, 2]
    """)
    loaded = load_model("tp_models_ok:tiny")
    assert loaded.source == "factory" and loaded.name == "tp_models_ok:tiny"
    assert loaded.num_params == 18 and loaded.num_classes == 3 and loaded.input_shape is None
    sized = load_model("tp_models_ok:sized", num_classes=6)
    assert sized.num_classes == 6 and sized.input_shape == (5,)

    with pytest.raises(UserError) as e:
        load_model("tp_models_ok:not_a_module")
    assert _message(e) == (
        "Model factory 'tp_models_ok:not_a_module' returned list, expected a torch.nn.Module"
    )
    with pytest.raises(UserError) as e:
        load_model("tp_models_ok:missing")
    assert _message(e) == (
        "Model factory 'tp_models_ok:missing' not found: "
        "module 'tp_models_ok' has no attribute 'missing'"
    )
    with pytest.raises(UserError) as e:
        load_model("tp_models_ok:tiny", num_classes=4)
    assert _message(e) == (
        "Model factory 'tp_models_ok:tiny' takes no num_classes argument: "
        "drop --num-classes or add a num_classes parameter to the factory"
    )


def test_factory_import_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, monkeypatch, "tp_models_broken", "raise ValueError('boom')\n")
    with pytest.raises(UserError) as e:
        load_model("tp_models_broken:fn")
    assert _message(e) == (
        "Cannot import module 'tp_models_broken' for model factory 'tp_models_broken:fn': boom"
    )
    with pytest.raises(UserError) as e:
        load_model("tp_no_such_module_xyz:fn")
    assert _message(e) == (
        "Cannot import module 'tp_no_such_module_xyz' for model factory "
        "'tp_no_such_module_xyz:fn': No module named 'tp_no_such_module_xyz'"
    )


def test_torchvision_and_timm_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UserError) as e:
        load_model("torchvision:resnet50")
    assert _message(e) == (
        "Model 'torchvision:resnet50' needs torchvision, which does not import here: "
        "install a torchvision build that matches torch, or use a built-in model"
    )
    with pytest.raises(UserError) as e:
        load_model("timm:resnet50")
    assert _message(e) == (
        "Model 'timm:resnet50' needs timm, which does not import here: "
        "install timm (pip install timm), or use a built-in model"
    )


def test_torchvision_state_dict_loads_strictly() -> None:
    tv_models = pytest.importorskip("torchvision.models")
    for ours, theirs in ((resnet50(), tv_models.resnet50()), (resnet18(), tv_models.resnet18())):
        ours.load_state_dict(theirs.state_dict(), strict=True)
        theirs.eval(), ours.eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(ours(x), theirs(x), atol=1e-5)
