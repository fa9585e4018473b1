"""Train a built-in model with any registered optimizer and record loss and the task's metric
against time.

``train(TrainConfig(...), progress)`` is what ``thor-plan train``, ``thor-plan tune`` and the
benchmarks run:

- **Models and data** (:mod:`.workloads`): images (``cnn``, ``mlp``, ``mlp-wide``, ``resnet18`` on
  ``digits`` or ``synthetic``), a masked LM (``bert-tiny`` on ``text`` or ``tokens``) and causal
  LMs (``gpt-tiny``, ``gpt-small`` on ``stdlib`` or ``tokens``).
- **Optimizers** (:mod:`.optimizers`, the registry): ``thor`` (the plan's per-layer splits; without
  a plan the model is profiled first — two batches, 0.05 s of timing per candidate — and planned
  with the crossover rule), ``thor-128``, ``kfac``, ``sgd``, ``adamw``, ``mlbfgs``, ``lamb``, and
  whatever else is registered.
- **Budget**: ``epochs`` passes over the training split, or exactly ``steps`` steps.
- **Schedule** (:mod:`.schedule`): the same for every optimizer: an optional linear warm-up over
  ``warmup`` of the steps, then cosine decay to 0 (or ``constant``), per step.
- **Clock**: ``seconds`` counts training iterations only (forward, backward, optimizer step);
  evaluation and the planless profile (``profile_seconds``) are excluded.
- **Determinism**: the model's initialisation, the batches and THOR's factor sampling follow
  ``seed``; on CPU two runs with the same config give the same records (except the seconds).

Evaluations (the held-out set, in eval mode) come at the end of each epoch and, with ``eval_every``,
every that many steps (and at the last step); each gives one :class:`EvalRecord`. With ``target``
(in the task's metric: test accuracy, or validation bits per byte for causal LMs) training stops
at the first evaluation that reaches it. A non-finite training loss stops the run
(``stopped == "diverged"``).
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from thor_planner.planning.plan import Schedule
from thor_planner.training.optimizers import OPTIMIZERS, names, optimizer_spec, thor_variants
from thor_planner.training.schedule import LR_SCHEDULES, LRSchedule
from thor_planner.training.workloads import (CAUSAL_LM, DATA, IGNORE_INDEX, MASKED_LM, TRAIN_MODELS, Task,
                                             TrainingData, load_data)
from thor_planner.utils.errors import UNSHOWN, ConfigError, check_seed
from thor_planner.utils.progress import Progress

CSV_COLUMNS = ("epoch", "step", "seconds", "train_loss", "test_loss", "test_accuracy")
DEVICES, PRECISIONS = ("cpu", "cuda"), ("float32", "bf16")
PROFILE_BATCHES, PROFILE_BATCH_SIZE, PROFILE_TIME_BUDGET = 2, 32, 0.05


class TrainConfigError(ConfigError):
    """An invalid :class:`TrainConfig` (a ``ValueError`` for library users, one line in the CLI)."""


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What to train, on what, with which optimizer, for how long. ``lr=None``: the optimizer's
    default (:mod:`.optimizers`); ``steps`` (when set) replaces ``epochs``."""

    model: str = "cnn"
    data: str = "digits"
    optimizer: str = "thor"
    plan: str | Path | None = None
    epochs: int = 10
    steps: int | None = None
    lr: float | None = None
    batch_size: int = 32
    seed: int = 0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    warmup: float = 0.0
    eval_every: int | None = None
    #: stop at the first evaluation that reaches it, in the task's metric (test accuracy; bits per
    #: byte for causal LMs). ``target_accuracy``: the same for tasks measured in accuracy.
    target: float | None = None
    target_accuracy: float | None = None
    #: THOR variants: overrides the plan's (or the default) damping / interval / trace-threshold schedule.
    schedule: Schedule | None = None
    #: extra keyword options of the optimizer (its registry entry lists them: ``betas``, mL-BFGS's
    #: ``history_size`` …).
    options: dict = field(default_factory=dict)
    #: THOR variants: ``"sgd"`` (the step's length grafted from SGD's), ``"adamw"`` (a drop-in for
    #: AdamW: see :class:`~thor_planner.optim.THOR`), ``None`` (the raw natural gradient) or ``"auto"``
    #: (the variant's own: ``"adamw"`` for ``thor-eigen``, else ``"sgd"``; resolved at construction),
    #: and K-FAC's KL clipping bound (``None``: off).
    graft: str | None = "auto"
    kl_clip: float | None = None
    #: where to train (``"cuda"``: the current CUDA device) and in which precision (``"bf16"``: bfloat16
    #: autocast for the forward and loss; parameters, optimizer state and THOR's factors stay float32)
    device: str = "cpu"
    precision: str = "float32"

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_numbers()
        self._check_target()
        self._check_optimizer_settings()

    def _check_choices(self) -> None:
        if self.model not in TRAIN_MODELS:
            raise TrainConfigError("model", self.model, f"use {names(tuple(TRAIN_MODELS))}", quote=True)
        if self.data not in DATA:
            raise TrainConfigError("data", self.data, f"use {names(DATA)}", quote=True)
        fits = TRAIN_MODELS[self.model].data
        if self.data not in fits:
            raise TrainConfigError("data", self.data, f"model {self.model!r} takes {names(fits)}", quote=True)
        if self.optimizer not in OPTIMIZERS:
            raise TrainConfigError("optimizer", self.optimizer, f"use {names(tuple(OPTIMIZERS))}", quote=True)
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainConfigError("lr_schedule", self.lr_schedule, f"use {names(LR_SCHEDULES)}", quote=True)
        if self.device not in DEVICES:
            raise TrainConfigError("device", self.device, f"use {names(DEVICES)}", quote=True)
        if self.precision not in PRECISIONS:
            raise TrainConfigError("precision", self.precision, f"use {names(PRECISIONS)}", quote=True)
        if self.plan is not None and not optimizer_spec(self.optimizer).plans:
            raise TrainConfigError("plan", str(self.plan), f"a plan applies only to optimizer 'thor', not "
                                   f"'{self.optimizer}'", quote=True)

    def _check_numbers(self) -> None:
        check_seed(self.seed)
        for what in ("epochs", "batch_size"):
            if not _positive_int(getattr(self, what)):
                raise TrainConfigError(what, getattr(self, what), "must be >= 1")
        for what in ("steps", "eval_every"):
            if getattr(self, what) is not None and not _positive_int(getattr(self, what)):
                raise TrainConfigError(what, getattr(self, what), "must be >= 1 (or None: "
                                       + ("epochs set the budget)" if what == "steps" else "each epoch)"))
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainConfigError("lr", self.lr, "must be > 0")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise TrainConfigError("weight_decay", self.weight_decay, "must be >= 0")
        if not 0 <= self.momentum < 1:
            raise TrainConfigError("momentum", self.momentum, "must be in [0, 1)")
        if not 0 <= self.warmup < 1:
            raise TrainConfigError("warmup", self.warmup, "must be in [0, 1) (a fraction of the steps)")

    def _check_target(self) -> None:
        metric = self.task.metric
        if self.target_accuracy is not None:
            if metric != "accuracy":
                raise TrainConfigError("target_accuracy", self.target_accuracy, f"model {self.model!r} is measured "
                                       f"in {metric.replace('_', ' ')}: pass target=")
            if not 0 < self.target_accuracy <= 1:
                raise TrainConfigError("target_accuracy", self.target_accuracy, "must be in (0, 1]")
            if self.target is not None and self.target != self.target_accuracy:
                raise TrainConfigError("target", self.target, "give target or target_accuracy, not both")
            object.__setattr__(self, "target", self.target_accuracy)
        if self.target is not None:
            bad = not 0 < self.target <= 1 if metric == "accuracy" else not 0 < self.target < math.inf
            if bad:
                raise TrainConfigError("target", self.target, "must be in (0, 1] (test accuracy)" if metric == "accuracy"
                                       else "must be > 0 (validation bits per byte)")

    def _check_optimizer_settings(self) -> None:
        spec = optimizer_spec(self.optimizer)
        variants = names(thor_variants())
        if self.schedule is not None and not spec.thor:
            raise TrainConfigError("schedule", UNSHOWN, f"a schedule applies only to {variants}, not '{self.optimizer}'")
        from thor_planner.optim.arguments import Graft

        try:
            graft = Graft.parse(spec.resolve_graft(self.graft))  # one check of the value, in the runtime's words
        except ConfigError as exc:
            raise TrainConfigError(exc.argument, exc.value, exc.requirement, quote=exc.quote) from None
        if graft.value not in spec.grafts:
            raise TrainConfigError("graft", self.graft, f"grafting applies only to {variants}, not '{self.optimizer}'"
                                   if not spec.thor else f"{self.optimizer} stands in for {names(spec.grafts)}",
                                   quote=True)
        object.__setattr__(self, "graft", None if graft is Graft.NONE else graft.value)
        if self.kl_clip is not None and not self.kl_clip > 0:
            raise TrainConfigError("kl_clip", self.kl_clip, "must be > 0 (or None)")
        unknown = sorted(set(self.options) - set(spec.options))
        if unknown:
            takes = f"it takes {', '.join(spec.options)}" if spec.options else "it takes none"
            raise TrainConfigError("options", "{" + ", ".join(repr(k) for k in unknown) + ": …}",
                                   f"not options of optimizer '{self.optimizer}' ({takes})")

    @property
    def task(self) -> Task:
        return TRAIN_MODELS[self.model].task

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return optimizer_spec(self.optimizer).lr(self.graft)


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation: ``train_loss`` is the mean training loss since the previous evaluation;
    ``metric`` the task's (test accuracy, or validation bits per byte)."""

    epoch: float
    step: int
    seconds: float
    train_loss: float
    test_loss: float
    test_accuracy: float
    metric: float = math.nan


@dataclass
class TrainResult:
    """Records, how the run ended, the optimizer's statistics and the plan's global split."""

    config: TrainConfig
    records: list[EvalRecord]
    seconds: float
    steps: int
    steps_per_epoch: int
    stopped: str  # "completed" | "target" | "diverged"
    optimizer_stats: dict | None = None
    plan_split: int | None = None
    profile_seconds: float | None = None
    data: dict = field(default_factory=dict)

    @property
    def epochs_run(self) -> float:
        return self.steps / self.steps_per_epoch

    @property
    def target_seconds(self) -> float | None:
        """Training seconds at the first evaluation that reached the target (else None)."""
        hit = self.first_reaching(self.config.target)
        return hit.seconds if hit is not None else None

    def first_reaching(self, target: float | None) -> EvalRecord | None:
        if target is None:
            return None
        return next((r for r in self.records if self.config.task.reached(r.metric, target)), None)

    def summary(self) -> dict:
        """``optimizer``, ``epochs`` (run: the last one counts when it was cut short), ``steps``,
        ``stopped`` (``completed``, ``target`` or ``diverged``), ``seconds`` (training),
        ``test_accuracy``, ``final_loss`` (the last evaluation's mean training loss; None when it is
        not finite) and, for causal LMs, the validation ``bits_per_byte``."""
        last = self.records[-1] if self.records else None
        causal = {"bits_per_byte": last.metric if last and math.isfinite(last.metric) else None} \
            if self.config.task is CAUSAL_LM else {}
        return {
            "optimizer": self.config.optimizer,
            "epochs": math.ceil(self.steps / self.steps_per_epoch),
            "steps": self.steps,
            "seconds": round(self.seconds, 4),
            "test_accuracy": last.test_accuracy if last else None,
            "final_loss": last.train_loss if last and math.isfinite(last.train_loss) else None,
            "stopped": self.stopped, **causal,
        }

    def to_csv(self) -> str:
        """The records as CSV with :data:`CSV_COLUMNS` (plus ``bits_per_byte`` for causal LMs)."""
        causal = self.config.task is CAUSAL_LM
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS + (("bits_per_byte",) if causal else ()),
                                lineterminator="\n")
        writer.writeheader()
        for r in self.records:
            row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(r).items() if k != "metric"}
            writer.writerow({**row, **({"bits_per_byte": round(r.metric, 6)} if causal else {})})
        return buf.getvalue()


# -------------------------------------------------------------------------------- models and optimizers


def build_model(name: str) -> nn.Module:
    return TRAIN_MODELS[name].build()


def _thor_plan(config: TrainConfig, progress: Progress):
    """The plan for ``thor``: loaded from ``config.plan`` or measured now; (plan, profile seconds)."""
    from thor_planner.planning.plan import Plan

    if config.plan is not None:
        plan = Plan.load(config.plan)
        plan.require("thor")
        return plan, None
    from thor_planner.planning.planner import make_plan

    progress.note(f"No plan given: profiling {config.model} on {config.data} first "
                  f"({PROFILE_BATCHES} batches of {PROFILE_BATCH_SIZE}, {PROFILE_TIME_BUDGET} s timing per split)")
    start = time.perf_counter()
    measurements = quick_profile(config.model, config.data, config.seed, progress,
                                 family=optimizer_spec(config.optimizer).preconditioner)
    schedule = config.schedule or Schedule()
    plan = make_plan(measurements, quick_rule(schedule), schedule)
    seconds = time.perf_counter() - start
    layers = [f"{lp.name} {lp.a_split}/{lp.g_split}" for lp in plan.layers]
    shown = ", ".join(layers if len(layers) <= 6 else layers[:4] + [f"… {len(layers)} layers"])
    progress.note(f"Planned in {seconds:.1f} s: global split {plan.split_dim} (A/G splits: {shown})")
    return plan, seconds


def quick_rule(schedule: Schedule):
    """The rule a quick plan is made with: ``auto``, its budget amortized over the schedule's first
    check-point interval (what the run will refresh at)."""
    from thor_planner.planning.planner import RuleConfig

    return RuleConfig(interval=schedule.interval_initial)


def quick_profile(model: str, data: str, seed: int, progress: Progress = Progress(), family: str = "inverse"):
    """The measurements of a quick CPU profile of a training model for a preconditioner ``family``
    (what a planless ``thor`` / ``thor-eigen`` and the tuner plan from)."""
    from thor_planner.profiling.profiler import ProfileConfig, run_profile
    from thor_planner.timing.candidates import TimingConfig

    cfg = ProfileConfig(model=TRAIN_MODELS[model].profile_name, data=data, batches=PROFILE_BATCHES,
                        batch_size=PROFILE_BATCH_SIZE, seed=seed, device="cpu",
                        timing=TimingConfig(budget_s=PROFILE_TIME_BUDGET), family=(family,))
    measurements, _ = run_profile(cfg, progress)
    return measurements


def make_optimizer(config: TrainConfig, model: nn.Module, plan=None):
    """The registry's optimizer for ``config`` (``plan``: for ``thor``)."""
    return optimizer_spec(config.optimizer).build(model, config, plan)


# -------------------------------------------------------------------------------- the loop


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled outputs: ``(N, C)`` classes, or ``(B, T, V)`` LM logits
    over the tokens whose label is not ``IGNORE_INDEX``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX)


EVAL_BATCH = 128


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "float32") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the whole set in batches, in eval mode (LMs: over the
    labelled tokens), on the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters(), x).device  # a parameterless model evaluates where its inputs are
    loss_sum, hits, count = 0.0, 0, 0
    for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)):
        xb, yb = xb.to(device), yb.to(device)
        with _autocast(device, precision):
            logits = model(xb).float()
        labelled = yb != IGNORE_INDEX
        n = int(labelled.sum())
        loss_sum += float(task_loss(logits, yb)) * n
        hits += int((logits.argmax(-1) == yb)[labelled].sum())
        count += n
    model.train(was_training)
    return loss_sum / max(count, 1), hits / max(count, 1)  # exact: 324/360 is 0.9


class _Run:
    """One training run's state: the clock, the step, the running training loss and the records."""

    def __init__(self, config: TrainConfig, model: nn.Module, opt, data: TrainingData, progress: Progress,
                 on_eval) -> None:
        self.config, self.model, self.opt, self.data = config, model, opt, data
        self.progress, self.on_eval = progress, on_eval
        self.total = config.steps or data.steps_per_epoch * config.epochs
        self.schedule = LRSchedule(opt, self.total, config.lr_schedule, config.warmup)
        #: THOR on a masked LM: G for a loss over the masked tokens only (``step(loss_samples=…)``)
        self.counts_terms = config.task is MASKED_LM and optimizer_spec(config.optimizer).thor
        self.records: list[EvalRecord] = []
        self.seconds, self.step, self.loss_sum, self.loss_count, self.stopped = 0.0, 0, 0.0, 0, "completed"
        self.device = torch.device(config.device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One step; the clock runs from the batch's transfer to the loss read back (which waits for
        the device)."""
        start = time.perf_counter()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.schedule.apply(self.step)
        self.opt.zero_grad()
        with _autocast(self.device, self.config.precision):
            loss = task_loss(self.model(x).float(), y)
        loss.backward()
        if self.counts_terms:
            self.opt.step(loss_samples=max(int((y != IGNORE_INDEX).sum()), 1))
        else:
            self.opt.step()
        value = loss.item()
        self.seconds += time.perf_counter() - start
        self.step += 1
        self.loss_sum, self.loss_count = self.loss_sum + value, self.loss_count + 1
        return value

    def evaluate(self) -> EvalRecord:
        test_loss, accuracy = evaluate(self.model, *self.data.validation, precision=self.config.precision)
        record = EvalRecord(epoch=round(self.step / self.data.steps_per_epoch, 4), step=self.step,
                            seconds=self.seconds, train_loss=self.loss_sum / max(self.loss_count, 1),
                            test_loss=test_loss, test_accuracy=accuracy,
                            metric=self.config.task.value(test_loss, accuracy))
        self.records.append(record)
        self.loss_sum, self.loss_count = 0.0, 0
        if self.on_eval is not None:
            self.on_eval(record)
        if self.config.target is not None and self.config.task.reached(record.metric, self.config.target):
            self.stopped = "target"
        return record

    def due(self) -> bool:
        """Whether this step ends with an evaluation."""
        every = self.config.eval_every
        return (self.stopped == "diverged" or self.step % self.data.steps_per_epoch == 0
                or self.step == self.total or bool(every and self.step % every == 0))

    def note(self, record: EvalRecord) -> None:
        task = self.config.task
        shown = (f"test accuracy {record.test_accuracy:.4f}" if task.metric == "accuracy"
                 else f"validation {record.metric:.4f} bits/byte")
        where = (f"epoch {self.step // self.data.steps_per_epoch}/{self.config.epochs}" if not self.config.steps
                 else f"step {self.step}/{self.total}")
        self.progress.note(f"{where}: train loss {record.train_loss:.4f}, test loss {record.test_loss:.4f}, "
                           f"{shown} ({self.seconds:.2f} s training)")

    def loop(self) -> None:
        gen = torch.Generator().manual_seed(self.config.seed)
        self.model.train()
        with self.progress.stage("train", self.total) as advance:
            while self.stopped == "completed" and self.step < self.total:
                for x, y in self.data.epoch(gen):
                    if not math.isfinite(self.train_step(x, y)):
                        self.stopped = "diverged"
                    advance()
                    if self.due():
                        record = self.evaluate()
                        if self.config.steps or self.step % self.data.steps_per_epoch == 0:
                            self.note(record)
                    if self.stopped != "completed" or self.step == self.total:
                        break
        if self.stopped == "diverged":
            self.progress.note(f"Stopped at step {self.step}: the training loss is not finite (lower the "
                               "learning rate)")
        elif self.stopped == "target":
            self.progress.note(f"Reached {self.config.task.metric.replace('_', ' ')} {self.config.target:g} at "
                               f"step {self.step} ({self.seconds:.2f} s)")


def train(config: TrainConfig, progress: Progress = Progress(), on_eval=None) -> TrainResult:
    """Train as ``config`` says; see the module docstring. Raises :class:`UserError` on bad input
    (a plan file that is missing or does not match the model: :class:`~thor_planner.plan.PlanError`).
    ``on_eval(record)`` is called after each evaluation; what it raises propagates (a tuner's pruning)."""
    spec = TRAIN_MODELS[config.model]
    uses_plan = optimizer_spec(config.optimizer).plans
    plan, profile_seconds = _thor_plan(config, progress) if uses_plan else (None, None)
    torch.manual_seed(config.seed)
    model = spec.build().to(config.device)
    data = load_data(spec, config.data, config.batch_size, model)
    opt = make_optimizer(config, model, plan)  # refuses a plan that does not match the model
    run = _Run(config, model, opt, data, progress, on_eval)
    run.loop()
    stats = opt.stats() if hasattr(opt, "stats") else None
    return TrainResult(config=config, records=run.records, seconds=run.seconds, steps=run.step,
                       steps_per_epoch=data.steps_per_epoch, stopped=run.stopped, optimizer_stats=stats,
                       plan_split=plan.split_dim if plan is not None else None,
                       profile_seconds=profile_seconds, data=data.describe())
