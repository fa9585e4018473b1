"""What both profiles share (THOR's factors and the peer optimizers' gradient statistics): the
configuration of ``thor-plan profile``, the model's input shape, the first-sample check of model
and data, and the provenance record of the measurements."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

import torch

from thor_planner.inputs.data import BatchSource, check_batches
from thor_planner.inputs.models import LoadedModel
from thor_planner.inversion.backends import BACKENDS
from thor_planner.targets import TARGETS
from thor_planner.timing.candidates import TimingConfig
from thor_planner.timing.device import DEVICES
from thor_planner.optim.preconditioner import FAMILIES
from thor_planner.utils.errors import ConfigError, UserError, check_seed
from thor_planner.version import __version__

FISHERS = ("sampled", "empirical")
PEER_BATCHES = 8
PEER_MAX_SPLIT = 8192


def check_peer_options(cfg) -> None:
    """Refuse, for a plan made for a peer optimizer, the options that apply to THOR's plans only."""
    title = TARGETS[cfg.target].title
    refused = [("--fisher=sampled", cfg.fisher == "sampled",
                f"{title} keeps statistics of the training gradient (the batch labels' loss); drop --fisher"),
               (f"--backend={cfg.backend!r}", cfg.backend is not None,
                f"{title} refreshes with its own eigendecompositions, which are timed as it runs them; drop --backend"),
               ("--device-profile", cfg.device_profile is not None,
                f"device profiles predict block inversions; time {title}'s refresh on the device itself")]
    for option, given, why in refused:
        if given:
            raise UserError(f"Invalid {option} for --for {cfg.target}: {why}")


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    model: str = "resnet50"
    weights: str | None = None
    num_classes: int | None = None
    data: str = "synthetic"
    batches: int | None = None  # None: 2 for THOR, 8 for a peer optimizer (its statistics are per batch)
    batch_size: int = 8
    input_size: int | None = None
    seed: int = 0
    fisher: str | None = None  # None: "sampled" for THOR; a peer's statistics are of the batch labels' loss
    skip: str | None = None
    device: str = "auto"
    candidates: tuple[int, ...] | None = None
    max_split: int | None = None  # None: 2048 for THOR, 8192 for a peer optimizer
    backend: str | None = None  # None: auto on CUDA, torch-cholesky on CPU; "auto": fastest accurate per size
    device_profile: str | None = None  # predict timings from this device profile instead of timing here
    timing: TimingConfig = TimingConfig()
    refresh_backends: bool = False  # measure the backend choice again instead of reusing the cached one
    #: the optimizer the plan is for (a key of :data:`thor_planner.targets.TARGETS`): ``--for``
    target: str = "thor"
    #: THOR's preconditioner families whose refresh is timed: the first is the plan's, others are compared
    family: tuple[str, ...] = ("inverse",)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise UserError(f"Invalid --for={self.target!r}: use one of {', '.join(TARGETS)}")
        peer = TARGETS[self.target].peer
        for name, thor, other in (("batches", 2, PEER_BATCHES), ("fisher", "sampled", "empirical"),
                                  ("max_split", 2048, PEER_MAX_SPLIT)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, other if peer else thor)
        if peer:
            check_peer_options(self)
        for what in ("batches", "batch_size"):
            if getattr(self, what) < 1:
                raise ConfigError(what, getattr(self, what), "must be >= 1")
        if self.input_size is not None and self.input_size < 1:
            raise ConfigError("input_size", self.input_size, "must be >= 1")
        check_seed(self.seed)
        if self.fisher not in FISHERS:
            raise ConfigError("fisher", self.fisher, "use 'sampled' or 'empirical'", quote=True)
        if self.device not in DEVICES:
            raise ConfigError("device", self.device, "use auto, cpu or cuda", quote=True)
        if self.max_split < 16:
            raise ConfigError("max_split", self.max_split, "must be >= 16 (the candidates are 1, then powers of two "
                              "from 16); for other splits give --candidates")
        if self.candidates is not None and (
            not self.candidates or any(c < 1 for c in self.candidates) or list(self.candidates) != sorted(set(self.candidates))
        ):
            raise ConfigError("candidates", ",".join(map(str, self.candidates)),
                              "give increasing integers >= 1, e.g. 1,16,64,256")
        if self.backend is not None and self.backend != "auto" and self.backend not in BACKENDS:
            raise ConfigError("backend", self.backend, f"use auto or one of {', '.join(sorted(BACKENDS))}", quote=True)
        unknown = [f for f in self.family if f not in FAMILIES]
        if not self.family or unknown or len(set(self.family)) != len(self.family):
            raise ConfigError("family", ",".join(self.family), f"use one or more of {', '.join(FAMILIES)} (the "
                              "first is the plan's; the others are timed for comparison)")
        if self.skip is not None:
            try:
                re.compile(self.skip)
            except re.error as exc:
                raise UserError(f"Invalid --skip={self.skip!r}: not a regular expression ({exc})") from None


@dataclass
class Inputs:
    """What a profile measures on: the loaded model (on ``device``), its input shape and the batches."""

    loaded: LoadedModel
    model: torch.nn.Module
    shape: tuple[int, ...] | None
    source: BatchSource
    device: torch.device


def load_inputs(cfg: "ProfileConfig", device: torch.device, loaded: LoadedModel) -> Inputs:
    """The batches of ``cfg.data`` for ``loaded`` (its input shape resolved) and the model on
    ``device``, checked on one sample (:func:`check_model_takes`) before anything is measured."""
    from thor_planner.inputs.data import load_batches

    shape = input_shape_for(loaded, cfg.input_size)
    if shape is None and cfg.data == "synthetic":
        raise UserError(f"Model '{cfg.model}' has no known input shape: pass --input-size N "
                        "(images 3×N×N) or real batches with --data")
    source = load_batches(cfg.data, input_shape=shape, num_classes=loaded.num_classes,
                          batch_size=cfg.batch_size, batches=cfg.batches, seed=cfg.seed,
                          vocab_size=loaded.vocab_size, objective=loaded.objective)
    model = loaded.model.to(device)
    check_model_takes(loaded, model, source, cfg.data, device)
    return Inputs(loaded, model, shape, source, device)


def input_shape_for(loaded: LoadedModel, input_size: int | None) -> tuple[int, ...] | None:
    """The model's input shape; ``input_size`` is the image side, or the sequence length of a token
    model."""
    shape = loaded.input_shape
    if input_size is None:
        return shape
    if loaded.vocab_size is not None:
        return (input_size,)
    if shape is None:
        return (3, input_size, input_size)
    if len(shape) != 3:
        raise UserError(f"--input-size applies to image models; '{loaded.name}' takes inputs of shape "
                        f"{tuple(shape)}: drop --input-size")
    return (shape[0], input_size, input_size)


def check_model_takes(loaded: LoadedModel, model: torch.nn.Module, source: BatchSource, data: str,
                      device: torch.device) -> None:
    """Run one sample through the model (eval mode, no gradients) so that inputs it cannot take and
    labels beyond its outputs are refused with a message, before anything is measured."""
    inputs = source.batches[0][0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(inputs[:1].to(device))
    except Exception as exc:  # noqa: BLE001 - the user's model on the user's data
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        takes = f"; it takes {'×'.join(map(str, loaded.input_shape))}" if loaded.input_shape else ""
        raise UserError(f"Model '{loaded.name}' cannot take the inputs of data '{data}' (shape "
                        f"{'×'.join(map(str, inputs.shape[1:]))}{takes}): {type(exc).__name__}: {first}: "
                        "pass data shaped as the model expects") from None
    finally:
        model.train(was_training)
    if loaded.num_classes is None and isinstance(out, torch.Tensor) and out.dim() >= 1:
        check_batches(data, source.batches, int(out.shape[-1]))


def provenance_meta(cfg: ProfileConfig, loaded: LoadedModel, source: BatchSource, shape, device_section: dict,
                    step_times: list[float], captured) -> dict:
    """The provenance of the measurements (``captured``: anything with the ``skipped`` list)."""
    return {
        "tool_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": loaded.name, "source": loaded.source, "num_params": loaded.num_params},
        "device": device_section,
        "capture": {"data": source.kind, "data_description": source.description,
                    "batches": cfg.batches, "batch_size": cfg.batch_size,
                    "input_shape": list(shape) if shape else None, "fisher": cfg.fisher,
                    "seed": cfg.seed, "skip": cfg.skip},
        "step_seconds": sorted(step_times)[len(step_times) // 2] if step_times else None,
        "step_repeats": len(step_times),
        "skipped": captured.skipped,
    }
