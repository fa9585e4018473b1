"""Train a small model with THOR, K-FAC, SGD or AdamW and record loss and accuracy against time.

``train(TrainConfig(...), progress)`` is what ``thor-plan train`` and the benchmarks run:

- **Models** (all 10 classes, 1×8×8 inputs): ``cnn`` and ``mlp`` (the built-ins), ``mlp-wide``
  (the mlp with 512 hidden units, where block splits below the factor dimension actually bite),
  ``resnet18`` (torchvision layout, ``in_channels=1``); and ``bert-tiny``, a masked LM on 128
  byte-level tokens (:mod:`thor_planner.inputs.transformer`), which takes the token data.
- **Data**: ``digits`` (scikit-learn's bundled 8×8 digits, stratified 80/20 split, normalised) or
  ``synthetic`` (a fixed dataset: 2048 train / 512 test standard-normal images labelled by a fixed
  random linear teacher, ``argmax(x·W)``; the same for every run seed, so it is learnable); for
  ``bert-tiny``: ``text`` (Python's bundled documentation, 90/10 split of sequences, BERT's 15%
  masking fixed once) or ``tokens`` (uniform random tokens, nothing to learn); loss and accuracy
  are then over the masked tokens (:mod:`thor_planner.inputs.text`).
- **Optimizers**: ``thor`` (the plan's per-layer splits; without a plan the model is profiled first
  — two batches, 0.05 s of timing per candidate — and planned with the crossover rule), ``thor-128``
  (every factor split at 128, no plan), ``kfac`` (dense, unsplit factors), ``sgd`` (momentum 0.9),
  ``adamw``, ``mlbfgs`` (momentum-based L-BFGS, :mod:`thor_planner.optim.mlbfgs`), ``lamb`` (AdamW's
  moments with a per-tensor trust ratio, :mod:`thor_planner.optim.lamb`). THOR variants use
  momentum 0.9 and the default :class:`~thor_planner.plan.Schedule` (or the plan's, or ``schedule``).
- **Schedule**: the same for every optimizer: cosine decay of the learning rate from ``lr`` to 0
  over ``epochs`` (per step), or ``constant``.
- **Clock**: ``seconds`` counts training iterations only (forward, backward, optimizer and LR
  scheduler step); evaluation and the planless profile (``profile_seconds``) are excluded.
- **Determinism**: the model's initialisation, the shuffling and THOR's factor sampling follow
  ``seed``; on CPU two runs with the same config give the same records (except the seconds).

Evaluations (the whole test split, in eval mode) come at the end of each epoch and, with
``eval_every``, every that many steps; each gives one :class:`EvalRecord`. With
``target_accuracy`` training stops at the first evaluation that reaches it. A non-finite training
loss stops the run (``stopped == "diverged"``).
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from thor_planner.inputs import models
from thor_planner.planning.plan import Schedule
from thor_planner.utils.errors import UserError
from thor_planner.utils.progress import Progress

MODELS = ("cnn", "mlp", "mlp-wide", "resnet18", "bert-tiny")
DATA = ("digits", "synthetic", "text", "tokens")
#: Masked-LM models take token data (``text``, ``tokens``); the others take 1×8×8 images.
TOKEN_MODELS, TOKEN_DATA = ("bert-tiny",), ("text", "tokens")
OPTIMIZERS = ("thor", "thor-128", "kfac", "sgd", "adamw", "mlbfgs", "lamb")
THOR_VARIANTS = ("thor", "thor-128", "kfac")
LR_SCHEDULES = ("cosine", "constant")
#: Learning rates used when ``lr`` is None: SGD's for the THOR variants (their steps are grafted to SGD's
#: length, so SGD's rate carries over: bench/convergence.py runs them on SGD's grid); mlbfgs is not in
#: that grid (1.0 trains the cnn stably); lamb's is a step relative to each tensor's norm (0.05 trains
#: the cnn in one epoch about as well as adamw's 0.01).
DEFAULT_LR = {"thor": 0.1, "thor-128": 0.1, "kfac": 0.1, "sgd": 0.1, "adamw": 0.01, "mlbfgs": 1.0, "lamb": 0.05}
CSV_COLUMNS = ("epoch", "step", "seconds", "train_loss", "test_loss", "test_accuracy")
SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_SEED = 2048, 512, 1234
PROFILE_BATCHES, PROFILE_BATCH_SIZE, PROFILE_TIME_BUDGET = 2, 32, 0.05


class TrainConfigError(UserError, ValueError):
    """An invalid :class:`TrainConfig` (a ``ValueError`` for library users, one line in the CLI)."""


def _names(options: tuple[str, ...]) -> str:
    return ", ".join(options[:-1]) + f" or {options[-1]}"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What to train, on what, with which optimizer, for how long. ``lr=None``: ``DEFAULT_LR``."""

    model: str = "cnn"
    data: str = "digits"
    optimizer: str = "thor"
    plan: str | Path | None = None
    epochs: int = 10
    lr: float | None = None
    batch_size: int = 32
    seed: int = 0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    eval_every: int | None = None
    target_accuracy: float | None = None
    #: THOR variants: overrides the plan's (or the default) damping / interval / trace-threshold schedule.
    schedule: Schedule | None = None
    #: ``mlbfgs``: keyword options of :class:`~thor_planner.optim.mlbfgs.MLBFGS` (history_size,
    #: update_every, damping); its momentum is ``momentum``.
    mlbfgs_options: dict | None = None
    #: THOR variants: ``"sgd"`` (the step's length grafted from SGD's), ``"adamw"`` (a drop-in for
    #: AdamW: see :class:`~thor_planner.optim.THOR`) or ``None`` (the raw natural gradient), and
    #: K-FAC's KL clipping bound (``None``: off).
    graft: str | None = "sgd"
    kl_clip: float | None = None

    def __post_init__(self) -> None:
        for what, value, options in (("model", self.model, MODELS), ("data", self.data, DATA),
                                     ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("lr_schedule", self.lr_schedule, LR_SCHEDULES)):
            if value not in options:
                raise TrainConfigError(f"Invalid {what}={value!r}: use {_names(options)}")
        if (self.model in TOKEN_MODELS) != (self.data in TOKEN_DATA):
            fits = TOKEN_DATA if self.model in TOKEN_MODELS else tuple(d for d in DATA if d not in TOKEN_DATA)
            raise TrainConfigError(f"Invalid data={self.data!r} for model {self.model!r}: use {_names(fits)}")
        if self.plan is not None and self.optimizer != "thor":
            raise TrainConfigError(f"Invalid plan='{self.plan}': a plan applies only to optimizer 'thor', "
                                   f"not '{self.optimizer}'")
        for what in ("epochs", "batch_size"):
            if getattr(self, what) < 1:
                raise TrainConfigError(f"Invalid {what}={getattr(self, what)}: must be >= 1")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainConfigError(f"Invalid lr={self.lr}: must be > 0")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise TrainConfigError(f"Invalid weight_decay={self.weight_decay}: must be >= 0")
        if not 0 <= self.momentum < 1:
            raise TrainConfigError(f"Invalid momentum={self.momentum}: must be in [0, 1)")
        if self.eval_every is not None and self.eval_every < 1:
            raise TrainConfigError(f"Invalid eval_every={self.eval_every}: must be >= 1 (or None: each epoch)")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise TrainConfigError(f"Invalid target_accuracy={self.target_accuracy}: must be in (0, 1]")
        if self.schedule is not None and self.optimizer not in THOR_VARIANTS:
            raise TrainConfigError(f"Invalid schedule: a schedule applies only to {_names(THOR_VARIANTS)}, "
                                   f"not '{self.optimizer}'")
        if self.graft not in ("sgd", "adamw", None):
            raise TrainConfigError(f"Invalid graft={self.graft!r}: use 'sgd', 'adamw' or None")
        if self.graft != "sgd" and self.optimizer not in THOR_VARIANTS:
            raise TrainConfigError(f"Invalid graft={self.graft!r}: grafting applies only to "
                                   f"{_names(THOR_VARIANTS)}, not '{self.optimizer}'")
        if self.kl_clip is not None and not self.kl_clip > 0:
            raise TrainConfigError(f"Invalid kl_clip={self.kl_clip}: must be > 0 (or None)")
        if self.mlbfgs_options is not None and self.optimizer != "mlbfgs":
            raise TrainConfigError(f"Invalid mlbfgs_options: they apply only to optimizer 'mlbfgs', "
                                   f"not '{self.optimizer}'")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_LR["adamw" if self.graft == "adamw" else self.optimizer]


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation: ``train_loss`` is the mean training loss since the previous evaluation."""

    epoch: float
    step: int
    seconds: float
    train_loss: float
    test_loss: float
    test_accuracy: float


@dataclass
class TrainResult:
    """Records, how the run ended, THOR's trace-rule statistics and the plan's global split."""

    config: TrainConfig
    records: list[EvalRecord]
    seconds: float
    steps: int
    steps_per_epoch: int
    stopped: str  # "completed" | "target" | "diverged"
    optimizer_stats: dict | None = None
    plan_split: int | None = None
    profile_seconds: float | None = None

    @property
    def epochs_run(self) -> float:
        return self.steps / self.steps_per_epoch

    @property
    def target_seconds(self) -> float | None:
        """Training seconds at the first evaluation that reached ``target_accuracy`` (else None)."""
        target = self.config.target_accuracy
        hits = [r.seconds for r in self.records if target is not None and r.test_accuracy >= target]
        return hits[0] if hits else None

    def summary(self) -> dict:
        """``optimizer``, ``epochs`` (run: the last one counts when it was cut short), ``steps``,
        ``stopped`` (``completed``, ``target`` or ``diverged``), ``seconds`` (training),
        ``test_accuracy`` and ``final_loss`` (the last evaluation's mean training loss; None when it
        is not finite)."""
        last = self.records[-1] if self.records else None
        return {
            "optimizer": self.config.optimizer,
            "epochs": math.ceil(self.steps / self.steps_per_epoch),
            "steps": self.steps,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 4),
            "test_accuracy": last.test_accuracy if last else None,
            "final_loss": last.train_loss if last and math.isfinite(last.train_loss) else None,
        }

    def to_csv(self) -> str:
        """The records as CSV with :data:`CSV_COLUMNS` (loss and accuracy against training time)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in self.records:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(r).items()})
        return buf.getvalue()


# -------------------------------------------------------------------------------- models and data


#: How :func:`~thor_planner.profiling.profiler.run_profile` names each model (built-in or factory).
PROFILE_NAMES = {"cnn": "cnn", "mlp": "mlp", "mlp-wide": "thor_planner.inputs.models:mlp_wide",
                 "resnet18": "thor_planner.inputs.models:resnet18_digits", "bert-tiny": "bert-tiny"}


def build_model(name: str) -> nn.Module:
    if name == "cnn":
        return models.cnn(num_classes=10, in_channels=1)
    if name == "mlp":
        return models.mlp(num_classes=10)
    if name == "bert-tiny":
        return models.bert_tiny()
    return models.mlp_wide() if name == "mlp-wide" else models.resnet18_digits()


def synthetic_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed teacher-labelled data: ``(x_train, y_train, x_test, y_test)``, inputs 1×8×8."""
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    x = torch.randn(SYNTHETIC_TRAIN + SYNTHETIC_TEST, 1, 8, 8, generator=gen)
    teacher = torch.randn(64, 10, generator=gen)
    y = (x.flatten(1) @ teacher).argmax(1)
    return x[:SYNTHETIC_TRAIN], y[:SYNTHETIC_TRAIN], x[SYNTHETIC_TRAIN:], y[SYNTHETIC_TRAIN:]


def load_split(data: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if data == "digits":
        from thor_planner.inputs.data import digits_split

        return digits_split(seed=0)
    if data in TOKEN_DATA:  # masked inputs, labels -100 where nothing is masked
        from thor_planner.inputs.text import mlm_split

        return mlm_split(data)
    return synthetic_split()


# -------------------------------------------------------------------------------- optimizers


def _thor_plan(config: TrainConfig, progress: Progress):
    """The plan for ``thor``: loaded from ``config.plan`` or measured now; (plan, profile seconds)."""
    from thor_planner.planning.plan import Plan

    if config.plan is not None:
        return Plan.load(config.plan), None
    from thor_planner.planning.planner import make_plan
    from thor_planner.profiling.profiler import ProfileConfig, run_profile
    from thor_planner.timing.candidates import TimingConfig

    progress.note(f"No plan given: profiling {config.model} on {config.data} first "
                  f"({PROFILE_BATCHES} batches of {PROFILE_BATCH_SIZE}, {PROFILE_TIME_BUDGET} s timing per split)")
    start = time.perf_counter()
    cfg = ProfileConfig(model=PROFILE_NAMES[config.model], data=config.data, batches=PROFILE_BATCHES,
                        batch_size=PROFILE_BATCH_SIZE, seed=config.seed, device="cpu",
                        timing=TimingConfig(budget_s=PROFILE_TIME_BUDGET))
    measurements, _ = run_profile(cfg, progress)
    plan = make_plan(measurements)
    seconds = time.perf_counter() - start
    layers = [f"{lp.name} {lp.a_split}/{lp.g_split}" for lp in plan.layers]
    shown = ", ".join(layers if len(layers) <= 6 else layers[:4] + [f"… {len(layers)} layers"])
    progress.note(f"Planned in {seconds:.1f} s: global split {plan.split_dim} (A/G splits: {shown})")
    return plan, seconds


def make_optimizer(config: TrainConfig, model: nn.Module, plan=None) -> torch.optim.Optimizer:
    lr, wd, momentum = config.learning_rate, config.weight_decay, config.momentum
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    if config.optimizer == "lamb":
        from thor_planner.optim.lamb import LAMB

        return LAMB(model.parameters(), lr=lr, weight_decay=wd)
    if config.optimizer == "mlbfgs":
        from thor_planner.optim.mlbfgs import MLBFGS

        return MLBFGS(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd, **(config.mlbfgs_options or {}))
    from thor_planner.optim import THOR

    common = {"lr": lr, "momentum": momentum, "weight_decay": wd, "schedule": config.schedule,
              "graft": config.graft, "kl_clip": config.kl_clip}
    if config.optimizer == "thor":
        return THOR(model, plan, **common)
    return THOR(model, split=128 if config.optimizer == "thor-128" else None, **common)


# -------------------------------------------------------------------------------- the loop


IGNORE_INDEX = -100


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled outputs: ``(N, C)`` classes, or ``(B, T, V)`` masked-LM
    logits over the tokens whose label is not ``IGNORE_INDEX``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the whole set, in eval mode (masked LM: over masked tokens)."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    hit = (logits.argmax(-1) == y)[y != IGNORE_INDEX]  # masked LM: only the masked tokens count
    return float(task_loss(logits, y)), int(hit.sum()) / max(hit.numel(), 1)  # exact: 324/360 is 0.9


def train(config: TrainConfig, progress: Progress = Progress(), on_eval=None) -> TrainResult:
    """Train as ``config`` says; see the module docstring. Raises :class:`UserError` on bad input
    (a plan file that is missing or does not match the model: :class:`~thor_planner.plan.PlanError`).
    ``on_eval(record)`` is called after each evaluation; what it raises propagates (a tuner's pruning)."""
    x_train, y_train, x_test, y_test = load_split(config.data)
    plan, profile_seconds = _thor_plan(config, progress) if config.optimizer == "thor" else (None, None)
    torch.manual_seed(config.seed)
    model = build_model(config.model)
    opt = make_optimizer(config, model, plan)  # refuses a plan that does not match the model
    steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
    else:
        scheduler = None
    counts_terms = config.data in TOKEN_DATA and config.optimizer in THOR_VARIANTS  # THOR on a masked LM
    gen = torch.Generator().manual_seed(config.seed)
    records: list[EvalRecord] = []
    seconds, step, loss_sum, loss_count, stopped = 0.0, 0, 0.0, 0, "completed"
    model.train()
    with progress.stage("train", total) as advance:
        for epoch in range(1, config.epochs + 1):
            for idx in torch.randperm(len(y_train), generator=gen).split(config.batch_size):
                start = time.perf_counter()
                opt.zero_grad()
                loss = task_loss(model(x_train[idx]), y_train[idx])
                loss.backward()
                if counts_terms:  # THOR's G for a loss over the masked tokens only
                    opt.step(loss_samples=max(int((y_train[idx] != IGNORE_INDEX).sum()), 1))
                else:
                    opt.step()
                if scheduler is not None:
                    scheduler.step()
                value = loss.item()
                seconds += time.perf_counter() - start
                step += 1
                loss_sum, loss_count = loss_sum + value, loss_count + 1
                advance()
                if not math.isfinite(value):
                    stopped = "diverged"
                end_of_epoch = step % steps_per_epoch == 0
                if stopped == "diverged" or end_of_epoch or (config.eval_every and step % config.eval_every == 0):
                    test_loss, accuracy = evaluate(model, x_test, y_test)
                    records.append(EvalRecord(epoch=round(step / steps_per_epoch, 4), step=step,
                                              seconds=seconds, train_loss=loss_sum / loss_count,
                                              test_loss=test_loss, test_accuracy=accuracy))
                    loss_sum, loss_count = 0.0, 0
                    if on_eval is not None:
                        on_eval(records[-1])
                    if end_of_epoch:
                        progress.note(f"epoch {epoch}/{config.epochs}: train loss {records[-1].train_loss:.4f}, "
                                      f"test loss {test_loss:.4f}, test accuracy {accuracy:.4f} "
                                      f"({seconds:.2f} s training)")
                    if config.target_accuracy is not None and accuracy >= config.target_accuracy:
                        stopped = "target"
                if stopped != "completed":
                    break
            if stopped != "completed":
                break
    if stopped == "diverged":
        progress.note(f"Stopped at step {step}: the training loss is not finite (lower the learning rate)")
    elif stopped == "target":
        progress.note(f"Reached test accuracy {config.target_accuracy:g} at step {step} ({seconds:.2f} s)")
    stats = opt.stats() if hasattr(opt, "stats") else None
    return TrainResult(config=config, records=records, seconds=seconds, steps=step,
                       steps_per_epoch=steps_per_epoch, stopped=stopped, optimizer_stats=stats,
                       plan_split=plan.split_dim if plan is not None else None,
                       profile_seconds=profile_seconds)
