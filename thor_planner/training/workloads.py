"""What ``thor-plan train`` trains on: the built-in models (:data:`TRAIN_MODELS`), each with its
task (:class:`Task`: classification, masked LM, causal LM, with the metric a target is set in) and
the data it takes (:func:`load_data`).

- ``cnn``, ``mlp``, ``mlp-wide`` (the mlp with 512 hidden units, where block splits below the
  factor dimension actually bite), ``resnet18`` (torchvision layout, 1 input channel): 1×8×8 images,
  10 classes, on ``digits`` (scikit-learn's bundled 8×8 digits, stratified 80/20 split) or
  ``synthetic`` (2048 train / 512 test standard-normal images labelled by a fixed random linear
  teacher, ``argmax(x·W)``; the same for every run seed). Metric: test accuracy.
- ``bert-tiny``: a masked LM on 128 byte tokens, on ``text`` (Python's bundled documentation, 90/10
  split of sequences, BERT's 15% masking fixed once) or ``tokens`` (uniform random tokens). Metric:
  accuracy over the masked test tokens.
- ``gpt-tiny`` and ``gpt-small``: byte-level causal LMs (context 128 and 1024) on ``stdlib`` (the
  running interpreter's standard-library source, split by file; :mod:`thor_planner.inputs.stdlib`)
  or ``tokens`` (uniform random bytes). Training batches are random windows; validation is a fixed
  set of :data:`VALIDATION_WINDOWS` windows spread over the held-out files. Metric: validation bits
  per byte (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from thor_planner.inputs import models

SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_SEED = 2048, 512, 1234
#: Held-out windows a causal LM is evaluated on (fixed positions, the same in every run).
VALIDATION_WINDOWS = 256
#: Random bytes of the ``tokens`` data for causal LMs: train and validation stream lengths, seed.
TOKENS_TRAIN_BYTES, TOKENS_VALIDATION_BYTES, TOKENS_SEED = 1 << 20, 1 << 16, 4321
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Task:
    """What a model is trained for and the metric a target is set in (``direction``: which way is
    better)."""

    name: str
    metric: str
    direction: str  # "max" | "min"

    def value(self, test_loss: float, test_accuracy: float) -> float:
        """The metric of one evaluation."""
        return test_accuracy if self.metric == "accuracy" else test_loss / math.log(2)

    def reached(self, value: float, target: float) -> bool:
        return value >= target if self.direction == "max" else value <= target


CLASSIFICATION = Task("classification", "accuracy", "max")
MASKED_LM = Task("masked language model", "accuracy", "max")  # over the masked tokens
CAUSAL_LM = Task("causal language model", "bits_per_byte", "min")


@dataclass(frozen=True)
class TrainModel:
    """A built-in model of ``thor-plan train``: its builder, task, data and its name for the profiler."""

    name: str
    build: Callable[[], nn.Module]
    task: Task
    data: tuple[str, ...]
    profile_name: str


def _image(name: str, build: Callable[[], nn.Module], profile_name: str) -> TrainModel:
    return TrainModel(name, build, CLASSIFICATION, ("digits", "synthetic"), profile_name)


TRAIN_MODELS: dict[str, TrainModel] = {m.name: m for m in (
    _image("cnn", lambda: models.cnn(num_classes=10, in_channels=1), "cnn"),
    _image("mlp", lambda: models.mlp(num_classes=10), "mlp"),
    _image("mlp-wide", models.mlp_wide, "thor_planner.inputs.models:mlp_wide"),
    _image("resnet18", models.resnet18_digits, "thor_planner.inputs.models:resnet18_digits"),
    TrainModel("bert-tiny", models.bert_tiny, MASKED_LM, ("text", "tokens"), "bert-tiny"),
    TrainModel("gpt-tiny", lambda: _gpt("gpt-tiny"), CAUSAL_LM, ("stdlib", "tokens"), "gpt-tiny"),
    TrainModel("gpt-small", lambda: _gpt("gpt-small"), CAUSAL_LM, ("stdlib", "tokens"), "gpt-small"),
)}
DATA = tuple(dict.fromkeys(d for m in TRAIN_MODELS.values() for d in m.data))


def _gpt(name: str) -> nn.Module:
    from thor_planner.inputs.causal import gpt_small, gpt_tiny

    return gpt_tiny() if name == "gpt-tiny" else gpt_small()


# -------------------------------------------------------------------------------- data


class TrainingData:
    """Training batches by epoch, and the held-out set every evaluation uses."""

    steps_per_epoch: int
    validation: tuple[torch.Tensor, torch.Tensor]

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What the data is, for results (a corpus's identity, sizes)."""
        return {}


class TensorData(TrainingData):
    """A fixed training split, shuffled each epoch, cut into batches."""

    def __init__(self, split, batch_size: int) -> None:
        self.x, self.y, x_test, y_test = split
        self.validation = (x_test, y_test)
        self.batch_size = batch_size
        self.steps_per_epoch = math.ceil(len(self.y) / batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in torch.randperm(len(self.y), generator=generator).split(self.batch_size):
            yield self.x[idx], self.y[idx]

    def describe(self) -> dict:
        return {"train": len(self.y), "test": len(self.validation[1])}


class WindowData(TrainingData):
    """Random windows of a byte stream (an "epoch": as many windows as the stream holds bytes)."""

    def __init__(self, train: torch.Tensor, validation: tuple[torch.Tensor, torch.Tensor], batch_size: int,
                 seq_len: int, about: dict) -> None:
        self.train, self.validation, self.batch_size, self.seq_len = train, validation, batch_size, seq_len
        self.steps_per_epoch = max(len(train) // (batch_size * seq_len), 1)
        self.about = about

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from thor_planner.inputs.stdlib import byte_windows

        top = max(len(self.train) - self.seq_len, 1)
        for _ in range(self.steps_per_epoch):
            yield byte_windows(self.train, torch.randint(0, top, (self.batch_size,), generator=generator), self.seq_len)

    def describe(self) -> dict:
        return {**self.about, "validation_windows": len(self.validation[1]), "seq_len": self.seq_len}


def _window_data(model: nn.Module, data: str, batch_size: int) -> WindowData:
    from thor_planner.inputs.stdlib import byte_windows, load_corpus, validation_starts

    seq_len = model.input_shape[0]
    if data == "stdlib":
        corpus = load_corpus()
        train, held_out, about = corpus.train, corpus.validation, corpus.describe()
    else:
        gen = torch.Generator().manual_seed(TOKENS_SEED)
        stream = torch.randint(0, 256, (TOKENS_TRAIN_BYTES + TOKENS_VALIDATION_BYTES,), generator=gen,
                               dtype=torch.uint8)
        train, held_out = stream[:TOKENS_TRAIN_BYTES], stream[TOKENS_TRAIN_BYTES:]
        about = {"data": "tokens", "seed": TOKENS_SEED}
    starts = validation_starts(len(held_out), VALIDATION_WINDOWS, seq_len)
    return WindowData(train, byte_windows(held_out, starts, seq_len), batch_size, seq_len, about)


def synthetic_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed teacher-labelled data: ``(x_train, y_train, x_test, y_test)``, inputs 1×8×8."""
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    x = torch.randn(SYNTHETIC_TRAIN + SYNTHETIC_TEST, 1, 8, 8, generator=gen)
    teacher = torch.randn(64, 10, generator=gen)
    y = (x.flatten(1) @ teacher).argmax(1)
    return x[:SYNTHETIC_TRAIN], y[:SYNTHETIC_TRAIN], x[SYNTHETIC_TRAIN:], y[SYNTHETIC_TRAIN:]


def load_split(data: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of a fixed split (images or masked-LM sequences)."""
    if data == "digits":
        from thor_planner.inputs.data import digits_split

        return digits_split(seed=0)
    if data in ("text", "tokens"):  # masked inputs, labels -100 where nothing is masked
        from thor_planner.inputs.text import mlm_split

        return mlm_split(data)
    return synthetic_split()


def load_data(spec: TrainModel, data: str, batch_size: int, model: nn.Module) -> TrainingData:
    """The training data of ``spec`` on ``data`` (``model``: the built model, for its context)."""
    if spec.task is CAUSAL_LM:
        return _window_data(model, data, batch_size)
    return TensorData(load_split(data), batch_size)
