"""Tests for thor_planner.inputs.data: synthetic, digits, factory and image-folder batches."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from thor_planner.inputs.data import (
    digits_batches,
    digits_split,
    factory_batches,
    image_folder_batches,
    load_batches,
    synthetic_batches,
)
from thor_planner.utils.errors import UserError


def _load(data: str, **overrides: object):
    kwargs: dict = dict(input_shape=(1, 8, 8), num_classes=10, batch_size=4, batches=2, seed=0)
    kwargs.update(overrides)
    return load_batches(data, **kwargs)


def test_synthetic_is_deterministic() -> None:
    a = synthetic_batches((3, 5, 5), 7, batch_size=4, batches=3, seed=11)
    b = synthetic_batches((3, 5, 5), 7, batch_size=4, batches=3, seed=11)
    c = synthetic_batches((3, 5, 5), 7, batch_size=4, batches=3, seed=12)
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == (4, 3, 5, 5) and ya.shape == (4,) and ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert int(ya.min()) >= 0 and int(ya.max()) < 7
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], a[1][0])


def test_synthetic_source() -> None:
    source = _load("synthetic", input_shape=(64,))
    assert source.kind == "synthetic"
    assert source.description == "synthetic (random normal inputs, uniform labels; not real data)"
    assert source.batches[0][0].shape == (4, 64)


def test_digits_split() -> None:
    x_train, y_train, x_test, y_test = digits_split(seed=0)
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert set(y_train.tolist()) == set(range(10)) and set(y_test.tolist()) == set(range(10))
    assert abs(x_train.mean().item()) < 1e-4 and abs(x_train.std().item() - 1) < 1e-4
    again = digits_split(seed=0)
    assert torch.equal(again[0], x_train) and torch.equal(again[3], y_test)


def test_digits_batches_cycle_and_determinism() -> None:
    batches = digits_batches(batch_size=1000, batches=3, seed=1)
    assert [x.shape for x, _ in batches] == [(1000, 1, 8, 8)] * 3
    assert all(0 <= int(y.min()) and int(y.max()) <= 9 for _, y in batches)
    again = digits_batches(batch_size=1000, batches=3, seed=1)
    assert torch.equal(batches[2][0], again[2][0])
    first_epoch = torch.cat([y for _, y in batches])[:1437]
    assert torch.equal(first_epoch.sort().values, digits_split(seed=1)[1].sort().values)


def test_digits_source_shapes() -> None:
    source = _load("digits")
    assert source.kind == "digits" and source.batches[0][0].shape == (4, 1, 8, 8)
    flat = _load("digits", input_shape=(64,))
    assert flat.batches[0][0].shape == (4, 64)
    with pytest.raises(UserError) as e:
        _load("digits", input_shape=(3, 224, 224))
    assert str(e.value) == (
        "The 'digits' data is 1x8x8 images, but the model expects input shape (3, 224, 224): "
        "use --model cnn or --model mlp"
    )
    with pytest.raises(UserError) as e:
        _load("digits", num_classes=5, batch_size=200)
    assert str(e.value).startswith("Data 'digits' has labels up to 9, but the model has 5 classes")


def test_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(UserError) as e:
        digits_split()
    assert str(e.value) == (
        "The 'digits' data needs scikit-learn: pip install scikit-learn "
        "(or the project's 'digits' extra)"
    )


def test_load_batches_errors() -> None:
    with pytest.raises(UserError) as e:
        _load("synthetic", batch_size=0)
    assert str(e.value) == "Invalid --batch-size=0: must be >= 1"
    with pytest.raises(UserError) as e:
        _load("synthetic", batches=-1)
    assert str(e.value) == "Invalid --batches=-1: must be >= 1"
    with pytest.raises(UserError) as e:
        _load("imagenet")
    assert str(e.value) == (
        "Unknown data 'imagenet': use 'synthetic', 'digits', 'text', 'tokens', 'stdlib', a factory "
        "'pkg.module:function' or an image folder"
    )


@pytest.fixture
def data_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "tp_data_mod.py").write_text(textwrap.dedent("""
        import torch

        def pairs(batch_size, seed):
            g = torch.Generator().manual_seed(seed)
            return [(torch.randn(batch_size, 3, generator=g), torch.zeros(batch_size).long())
                    for _ in range(3)]

        def loader():
            data = torch.utils.data.TensorDataset(torch.randn(10, 2), torch.arange(10))
            return torch.utils.data.DataLoader(data, batch_size=4)

        def bad_items(**kwargs):
            return [1, 2]

        def bad_pair():
            return [(torch.zeros(2), [0, 1])]

        def not_iterable():
            return 5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tp_data_mod", raising=False)
    return "tp_data_mod"


def test_factory_batches(data_module: str) -> None:
    source = _load(f"{data_module}:pairs", batch_size=5, batches=2, seed=3)
    assert source.kind == "factory" and source.description == f"factory '{data_module}:pairs'"
    assert len(source.batches) == 2 and source.batches[0][0].shape == (5, 3)
    again = factory_batches(f"{data_module}:pairs", 5, 2, 3)
    assert torch.equal(again[1][0], source.batches[1][0])
    loader = factory_batches(f"{data_module}:loader", batch_size=99, batches=3, seed=0)
    assert [x.shape[0] for x, _ in loader] == [4, 4, 2]


def test_factory_batches_errors(data_module: str) -> None:
    spec = f"{data_module}:pairs"
    with pytest.raises(UserError) as e:
        factory_batches(spec, 2, 4, 0)
    assert str(e.value) == (
        f"Data factory '{spec}' yielded 3 batches, fewer than the 4 requested: lower --batches"
    )
    with pytest.raises(UserError) as e:
        factory_batches(f"{data_module}:bad_items", 2, 1, 0)
    assert str(e.value) == (
        f"Data factory '{data_module}:bad_items' must yield (inputs, labels) pairs, got int"
    )
    with pytest.raises(UserError) as e:
        factory_batches(f"{data_module}:bad_pair", 2, 1, 0)
    assert str(e.value) == (
        f"Data factory '{data_module}:bad_pair' must yield (inputs, labels) pairs, "
        "got tuple of (Tensor, list)"
    )
    with pytest.raises(UserError) as e:
        factory_batches(f"{data_module}:not_iterable", 2, 1, 0)
    assert str(e.value) == (
        f"Data factory '{data_module}:not_iterable' must return an iterable of (inputs, labels) "
        "pairs, got int"
    )
    with pytest.raises(UserError) as e:
        factory_batches(f"{data_module}:nope", 2, 1, 0)
    assert str(e.value) == (
        f"Data factory '{data_module}:nope' not found: "
        f"module '{data_module}' has no attribute 'nope'"
    )
    with pytest.raises(UserError) as e:
        _load("tp_no_such_data_xyz:fn")
    assert str(e.value) == (
        "Cannot import module 'tp_no_such_data_xyz' for data factory 'tp_no_such_data_xyz:fn': "
        "No module named 'tp_no_such_data_xyz'"
    )


def test_image_folder_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(UserError) as e:
        image_folder_batches(str(tmp_path), 32, 2, 1, 0)
    assert str(e.value) == "Reading an image folder needs Pillow: pip install pillow"


def test_image_folder(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    missing = tmp_path / "missing"
    with pytest.raises(UserError) as e:
        image_folder_batches(str(missing), 32, 2, 1, 0)
    assert str(e.value) == (
        f"Data folder '{missing}' not found: pass a folder with one subfolder of images per class"
    )
    for label, colour in enumerate(("red", "blue")):
        (tmp_path / f"c{label}").mkdir()
        for i in range(3):
            image.new("RGB", (20 + i, 10), colour).save(tmp_path / f"c{label}" / f"{i}.png")
    source = _load(str(tmp_path), input_shape=(3, 16, 12), num_classes=2, batch_size=4, batches=2)
    assert source.kind == "folder"
    assert source.description == f"image folder '{tmp_path}' (6 images in 2 classes)"
    x, y = source.batches[0]
    assert x.shape == (4, 3, 16, 12) and set(y.tolist()) <= {0, 1}

