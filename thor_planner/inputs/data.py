"""Batch sources for profiling: each yields ``(inputs, labels)`` tensor pairs.

``synthetic`` is random data (fast, but not real statistics), ``digits`` is scikit-learn's bundled
8x8 digits (no download), a ``'pkg.module:function'`` factory is the user's own data, and a folder
of class subfolders is read as images when Pillow imports. Token models (they declare
``vocab_size``) take batches of ``(input_ids, labels)``, both ``(B, T)``:

- masked LMs: ``text`` (Python's bundled documentation, byte-level, masked-LM targets) or synthetic
  ``tokens`` (also what ``synthetic`` means for them); labels ``-100`` where no token is masked
  (:mod:`thor_planner.inputs.text`);
- causal LMs (they declare ``objective = "causal"``): ``stdlib`` (windows of the standard library's
  source, :mod:`thor_planner.inputs.stdlib`) or ``tokens`` / ``synthetic`` (uniform random bytes);
  labels are the next bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from thor_planner.inputs import stdlib
from thor_planner.inputs import text as text_data
from thor_planner.inputs.causal import BYTE_VOCAB
from thor_planner.utils.errors import UserError, out_of_memory
from thor_planner.utils.imports import accepted_kwargs, call_factory, import_object, user_code_error

Batch = tuple[torch.Tensor, torch.Tensor]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_SHAPE = (1, 8, 8)
DIGITS_CLASSES = 10
IGNORE_LABEL = -100  # cross-entropy's ignore_index (e.g. unmasked tokens of a masked-LM batch)
TOKEN_DATA = ("text", "tokens", "stdlib")  # data for token models (``synthetic`` means ``tokens`` for them)


@dataclass
class BatchSource:
    """The batches to profile on, what they are, and which kind of source gave them."""

    batches: list[Batch]
    description: str
    kind: Literal["synthetic", "digits", "factory", "folder", "text", "stdlib"]


def synthetic_batches(input_shape: tuple[int, ...], num_classes: int, batch_size: int,
                      batches: int, seed: int) -> list[Batch]:
    """Standard-normal inputs and uniform labels in ``[0, num_classes)``, deterministic in
    ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn((batch_size, *input_shape), generator=gen),
         torch.randint(0, num_classes, (batch_size,), generator=gen))
        for _ in range(batches)
    ]


def digits_split(seed: int = 0, test_fraction: float = 0.2
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``.

    Images are float32 ``(N, 1, 8, 8)`` scaled to [0, 1], then normalised with the train split's
    mean and std; labels are int64 in ``[0, 10)``; the split is stratified.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise UserError(
            "The 'digits' data needs scikit-learn: pip install scikit-learn "
            "(or the project's 'digits' extra)"
        ) from exc
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).reshape(-1, *DIGITS_SHAPE) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed,
        stratify=y.numpy(),
    )
    x_train, x_test = x[torch.as_tensor(idx_train)], x[torch.as_tensor(idx_test)]
    mean, std = x_train.mean(), x_train.std()
    return ((x_train - mean) / std, y[torch.as_tensor(idx_train)],
            (x_test - mean) / std, y[torch.as_tensor(idx_test)])


def _cycled_indices(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` indices into ``n`` items: shuffled epochs, reshuffled each time they run out."""
    epochs = math.ceil(count / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])[:count]


def digits_batches(batch_size: int, batches: int, seed: int) -> list[Batch]:
    """Batches from the digits train split, shuffled with ``seed``, cycling if needed."""
    x, y, _, _ = digits_split(seed=seed)
    idx = _cycled_indices(len(y), batch_size * batches, torch.Generator().manual_seed(seed))
    return [(x[i], y[i]) for i in idx.split(batch_size)]


def token_batches(data: str, seq_len: int, vocab_size: int, batch_size: int, batches: int,
                  seed: int) -> list[Batch]:
    """Masked-LM batches ``(input_ids, labels)`` of ``seq_len`` tokens: from the text's train split
    (shuffled with ``seed``, cycling if needed) or uniform random byte tokens; masks follow ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    if data == "text":
        train = text_data.text_split(seq_len)[0]
        ids = train[_cycled_indices(len(train), batch_size * batches, gen)]
    else:
        ids = text_data.random_tokens(batch_size * batches, seq_len, gen, vocab_size)
    inputs, labels = text_data.mask_tokens(ids, gen, vocab_size)
    return list(zip(inputs.split(batch_size), labels.split(batch_size)))


def causal_batches(data: str, seq_len: int, batch_size: int, batches: int, seed: int) -> list[Batch]:
    """Causal-LM batches ``(input_ids, labels)``, int64 ``(batch_size, seq_len)``, labels the next
    bytes: random windows of the standard library's train split (``'stdlib'``, positions drawn with
    ``seed``) or uniform random bytes (``'tokens'``)."""
    gen = torch.Generator().manual_seed(seed)
    count = batch_size * batches
    if data == "stdlib":
        corpus = stdlib.load_corpus()
        if seq_len >= len(corpus.train):
            raise UserError(f"Invalid --input-size={seq_len}: the stdlib train split holds {len(corpus.train)} "
                            "bytes: use a shorter sequence")
        x, y = stdlib.train_windows(corpus, count, seq_len, gen)
    else:
        stream = torch.randint(0, BYTE_VOCAB, (count, seq_len + 1), generator=gen)
        x, y = stream[:, :-1], stream[:, 1:]
    return list(zip(x.split(batch_size), y.split(batch_size)))


def _causal_source(data: str, seq_len: int, vocab_size: int, batch_size: int, batches: int,
                   seed: int) -> BatchSource:
    if data == "text":
        raise UserError("Data 'text' is masked-LM sequences, but the model is a causal LM: use --data stdlib "
                        "(or tokens)")
    if vocab_size < BYTE_VOCAB:
        raise UserError(f"Data '{data}' is bytes (ids 0-255), but the model's vocabulary has {vocab_size}: "
                        f"use --num-classes {BYTE_VOCAB} or more")
    source = causal_batches(data, seq_len, batch_size, batches, seed)
    if data == "stdlib":
        info = stdlib.load_corpus().describe()
        return BatchSource(source, f"stdlib (Python {info['python']}'s standard-library source, {info['files']} "
                           f"files, {info['total_bytes']} bytes, sha256 {info['sha256'][:12]}; random "
                           f"{seq_len}-byte windows of the train split, next-byte labels)", "stdlib")
    return BatchSource(source, f"synthetic bytes (uniform random, {seq_len} per sequence, next-byte labels; "
                       "not real text)", "synthetic")


def _token_source(data: str, input_shape: tuple[int, ...] | None, vocab_size: int | None,
                  batch_size: int, batches: int, seed: int, objective: str | None) -> BatchSource:
    if vocab_size is None or input_shape is None or len(input_shape) != 1:
        raise UserError(f"Data '{data}' is token ids, but the model does not take token ids: use --model "
                        "bert-tiny, bert-base, gpt-tiny or gpt-small (or a model that declares vocab_size)")
    if objective == "causal":
        return _causal_source(data, input_shape[0], vocab_size, batch_size, batches, seed)
    if data == "stdlib":
        raise UserError("Data 'stdlib' is next-byte prediction for causal LMs, but the model is a masked LM: "
                        "use --model gpt-tiny or gpt-small, or --data text")
    if vocab_size < text_data.VOCAB_SIZE:
        raise UserError(f"Data '{data}' uses a {text_data.VOCAB_SIZE}-token byte vocabulary, but the model's "
                        f"has {vocab_size}: use --num-classes {text_data.VOCAB_SIZE} or more")
    seq_len = input_shape[0]
    source = token_batches(data, seq_len, vocab_size, batch_size, batches, seed)
    if data == "text":
        return BatchSource(source, f"text (Python's bundled documentation, byte tokens, {seq_len} per "
                           "sequence, train split, 15% masked)", "text")
    return BatchSource(source, f"synthetic tokens (uniform random bytes, {seq_len} per sequence, 15% "
                       "masked; not real text)", "synthetic")


def _describe(item: object) -> str:
    if isinstance(item, (tuple, list)):
        inner = ", ".join(type(v).__name__ for v in item)
        return f"{type(item).__name__} of ({inner})"
    return type(item).__name__


#: How to fix a data factory that fails.
DATA_FACTORY_FIX = "fix the factory, or pass other data with --data"


def factory_batches(spec: str, batch_size: int, batches: int, seed: int) -> list[Batch]:
    """The first ``batches`` pairs from a user factory.

    The factory is called with whichever of ``batch_size=`` and ``seed=`` it accepts, and must
    return an iterable (a DataLoader, a list, a generator) of ``(inputs, labels)`` tensor pairs.
    """
    fn = import_object(spec, "data factory")
    result = call_factory(fn, spec, "data factory", accepted_kwargs(fn, {"batch_size": batch_size, "seed": seed}),
                          DATA_FACTORY_FIX)
    if not isinstance(result, Iterable):
        raise UserError(
            f"Data factory '{spec}' must return an iterable of (inputs, labels) pairs, "
            f"got {type(result).__name__}"
        )
    out: list[Batch] = []
    items = iter(result)
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - raised while iterating the user's data
            if out_of_memory(exc):
                raise
            raise user_code_error(f"Data factory '{spec}'", exc, DATA_FACTORY_FIX) from None
        if not (isinstance(item, (tuple, list)) and len(item) == 2
                and all(isinstance(v, torch.Tensor) for v in item)):
            raise UserError(
                f"Data factory '{spec}' must yield (inputs, labels) pairs, got {_describe(item)}"
            )
        out.append((item[0], item[1]))
        if len(out) == batches:
            return out
    raise UserError(
        f"Data factory '{spec}' yielded {len(out)} batches, fewer than the {batches} requested: "
        "lower --batches"
    )


def _list_images(path: str) -> tuple[list[tuple[str, int]], list[str]]:
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    files = [
        (os.path.join(path, c, f), label)
        for label, c in enumerate(classes)
        for f in sorted(os.listdir(os.path.join(path, c)))
        if f.lower().endswith(IMAGE_EXTENSIONS)
    ]
    return files, classes


def image_folder_batches(path: str, input_size: int | tuple[int, int], batch_size: int,
                         batches: int, seed: int) -> list[Batch]:
    """RGB images from ``path/<class>/<image>``, resized to ``input_size`` (an int is square),
    ImageNet-normalised; labels are class indices in sorted folder order."""
    try:
        import numpy as np
        from PIL import Image
    except ImportError as exc:
        raise UserError("Reading an image folder needs Pillow: pip install pillow") from exc
    if not os.path.isdir(path):
        raise UserError(
            f"Data folder '{path}' not found: pass a folder with one subfolder of images per class"
        )
    files, _ = _list_images(path)
    if not files:
        raise UserError(
            f"Data folder '{path}' has no images: pass a folder with one subfolder of images "
            "per class"
        )
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def read(file: str) -> torch.Tensor:
        try:
            with Image.open(file) as img:
                rgb = img.convert("RGB").resize((width, height), Image.BILINEAR)
                arr = np.asarray(rgb, dtype=np.float32) / 255.0
        except Exception as exc:  # noqa: BLE001 - any decoding failure
            raise UserError(f"Cannot read image '{file}': {exc}") from exc
        return (torch.from_numpy(arr).permute(2, 0, 1) - mean) / std

    idx = _cycled_indices(len(files), batch_size * batches, torch.Generator().manual_seed(seed))
    out: list[Batch] = []
    for chunk in idx.split(batch_size):
        picked = [files[i] for i in chunk.tolist()]
        out.append((torch.stack([read(f) for f, _ in picked]),
                    torch.tensor([label for _, label in picked], dtype=torch.int64)))
    return out


def check_batches(data: str, source: list[Batch], num_classes: int | None) -> None:
    """Refuse batches the profile cannot use: non-finite inputs, labels that are not class indices
    (integer, >= 0, below ``num_classes`` when known; ``IGNORE_LABEL`` = -100, which cross-entropy
    skips, is allowed) or not one per sample."""
    for i, (inputs, labels) in enumerate(source, 1):
        if inputs.is_floating_point() or inputs.is_complex():
            if not bool(torch.isfinite(inputs).all()):
                raise UserError(f"Data '{data}' has NaN or Inf inputs in batch {i}: "
                                "clean or normalise the data before profiling")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise UserError(f"Data '{data}' has {str(labels.dtype).removeprefix('torch.')} labels: "
                            "labels must be integer class indices (torch.long)")
        if labels.numel() == 0 or len(inputs) == 0 or labels.shape[0] != inputs.shape[0]:
            raise UserError(f"Data '{data}' batch {i} has {inputs.shape[0] if inputs.dim() else 0} inputs but "
                            f"labels of shape {tuple(labels.shape)}: give one label per sample")
    counted = [labels[labels != IGNORE_LABEL] for _, labels in source]  # cross-entropy skips IGNORE_LABEL
    counted = [c for c in counted if c.numel()] or [torch.zeros(1, dtype=torch.long)]
    low = min(int(c.min()) for c in counted)
    if low < 0:
        raise UserError(f"Data '{data}' has negative labels (down to {low}): labels must be class indices "
                        "from 0")
    top = max(int(c.max()) for c in counted)
    if num_classes is not None and top >= num_classes:
        raise UserError(
            f"Data '{data}' has labels up to {top}, but the model has {num_classes} classes: "
            f"use a model with at least {top + 1} classes (--num-classes)"
        )


def load_batches(data: str, *, input_shape: tuple[int, ...] | None, num_classes: int | None,
                 batch_size: int, batches: int, seed: int, vocab_size: int | None = None,
                 objective: str | None = None) -> BatchSource:
    """The batches named by ``data``: ``'synthetic'``, ``'digits'``, ``'text'``, ``'tokens'``,
    ``'stdlib'``, an image folder, or a factory ``'pkg.module:function'``. ``input_shape``,
    ``num_classes``, ``vocab_size`` and ``objective`` (token models only: ``input_shape`` is then
    ``(seq_len,)``, ``objective`` ``'masked'`` (the default) or ``'causal'``) describe the model."""
    if batch_size < 1:
        raise UserError(f"Invalid --batch-size={batch_size}: must be >= 1")
    if batches < 1:
        raise UserError(f"Invalid --batches={batches}: must be >= 1")
    if data in TOKEN_DATA or (data == "synthetic" and vocab_size is not None):
        return _token_source("tokens" if data == "synthetic" else data, input_shape, vocab_size,
                             batch_size, batches, seed, objective)
    if data == "synthetic":
        if input_shape is None or num_classes is None:
            raise UserError(
                "Synthetic data needs the model's input shape and class count: "
                "use a model that declares them, or pass real data with --data"
            )
        return BatchSource(
            synthetic_batches(input_shape, num_classes, batch_size, batches, seed),
            "synthetic (random normal inputs, uniform labels; not real data)", "synthetic")
    if data == "digits":
        if input_shape is not None and math.prod(input_shape) != math.prod(DIGITS_SHAPE):
            raise UserError(
                f"The 'digits' data is 1x8x8 images, but the model expects input shape "
                f"{tuple(input_shape)}: use --model cnn or --model mlp"
            )
        source = digits_batches(batch_size, batches, seed)
        if input_shape is not None and tuple(input_shape) != DIGITS_SHAPE:
            source = [(x.reshape(len(x), *input_shape), y) for x, y in source]
        check_batches(data, source, num_classes)
        return BatchSource(source, "digits (scikit-learn 8x8 handwritten digits, train split)",
                           "digits")
    if os.path.isdir(data):
        if not _list_images(data)[0]:
            raise UserError(
                f"Data folder '{data}' has no images: pass a folder with one subfolder of images "
                "per class"
            )
        if input_shape is not None and (len(input_shape) != 3 or input_shape[0] != 3):
            raise UserError(
                f"Image folder '{data}' gives 3-channel images, but the model expects input "
                f"shape {tuple(input_shape)}: use a model that takes (3, H, W) images"
            )
        size = (input_shape[1], input_shape[2]) if input_shape is not None else (224, 224)
        source = image_folder_batches(data, size, batch_size, batches, seed)
        check_batches(data, source, num_classes)
        count, classes = (len(v) for v in _list_images(data))
        return BatchSource(source, f"image folder '{data}' ({count} images in {classes} classes)",
                           "folder")
    if ":" in data:
        source = factory_batches(data, batch_size, batches, seed)
        check_batches(data, source, num_classes)
        return BatchSource(source, f"factory '{data}'", "factory")
    raise _unknown(data)


def _unknown(data: str) -> UserError:
    """Data that names no source: a file, a folder path that does not exist, or an unknown name."""
    if os.path.isfile(data):
        return UserError(f"Data '{data}' is a file: pass the folder of images (one subfolder per class) that holds "
                         "it, or a factory 'pkg.module:function'")
    if os.sep in data or "/" in data:
        return UserError(f"Data folder '{data}' not found: pass a folder with one subfolder of images per class")
    return UserError(f"Unknown data '{data}': use 'synthetic', 'digits', 'text', 'tokens', 'stdlib', a factory "
                     "'pkg.module:function' or an image folder")
