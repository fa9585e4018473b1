"""Search-space dimensions: what an optimizer's registry entry declares it is tuned over
(:mod:`.optimizers`); the tuner turns each into an optuna suggestion."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Param:
    """One dimension of a search space: a float or integer range, optionally log-scaled."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def suggest(self, trial):
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


#: Dimensions shared by several optimizers' spaces.
SGD_LR = Param(name="lr", low=1e-3, high=1.0, log=True)
ADAMW_LR = Param(name="lr", low=1e-4, high=0.1, log=True)
WEIGHT_DECAY = Param(name="weight_decay", low=1e-6, high=0.1, log=True)
MOMENTUM = Param(name="momentum", low=0.0, high=0.99)
BETA1 = Param(name="beta1", low=0.8, high=0.99)
WARMUP = Param(name="warmup", low=0.0, high=0.2)
