"""Learning-rate schedules per phase, composed with reduce-on-plateau.

Each phase (the head, then fine-tuning) runs its own schedule from its own rate (``train.learning_rate``,
``train.fine_tune.learning_rate``) over its own epochs:

* ``constant``: the phase's rate;
* ``cosine``: half a cosine from the rate down to ``lr_min_fraction`` of it at the phase's end;
* ``step``: times ``lr_decay`` every ``lr_step_epochs`` epochs;
* ``exponential``: times ``lr_decay`` every epoch;

after ``warmup_epochs`` epochs of linear warm-up (``rate * (e + 1) / (warmup + 1)``), which the schedule
then starts after.

Reduce-on-plateau (``reduce_lr_patience``) composes by scaling: when ``train.monitor`` has not improved
for that many epochs, a plateau factor is multiplied by ``reduce_lr_factor``, and every later epoch runs at
``schedule(epoch) * factor``, never below ``min_learning_rate`` once reduced. So the schedule keeps its
shape and the plateau rule decides its level; with the ``constant`` schedule this is exactly Keras'
``ReduceLROnPlateau`` (``min_delta`` 1e-4, no cooldown). The plateau state is saved with the run
(``run_state.json``), so ``--resume`` continues at the reduced level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from training._tf import keras
from training.config import TrainConfig

MIN_DELTA = 1e-4


def schedule_factor(config: TrainConfig, epoch: int, epochs: int) -> float:
    """The fraction of the phase's rate the schedule gives epoch ``epoch`` (0-based) of an ``epochs``-long phase."""
    warmup = config.warmup_epochs
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    t, span = epoch - warmup, max(1, epochs - warmup)
    kind = config.lr_schedule
    if kind == "cosine":
        low = config.lr_min_fraction
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * t / span))
    if kind == "step":
        return config.lr_decay ** (t // config.lr_step_epochs)
    if kind == "exponential":
        return config.lr_decay**t
    return 1.0


def planned_rates(config: TrainConfig, rate: float, epochs: int) -> list[float]:
    """The rates of a phase's epochs without plateau reductions."""
    return [rate * schedule_factor(config, e, epochs) for e in range(epochs)]


class ScheduledLearningRate(keras.callbacks.Callback):
    """Sets the optimizer's rate at the start of every epoch of one phase: schedule times plateau factor.

    Args:
        config: the train section (schedule, warm-up, plateau options, monitor).
        rate: the phase's starting rate.
        epochs: the phase's length in epochs.
        start: the first (global) epoch of the phase.
        saved: the plateau state an earlier, interrupted run of this phase saved (or ``{}``).
        save: called with the plateau state after every epoch (a no-op on non-chief workers).
    """

    def __init__(
        self,
        config: TrainConfig,
        rate: float,
        epochs: int,
        start: int,
        saved: dict[str, Any],
        save: Callable[[dict[str, Any]], None],
    ):
        super().__init__()
        self.config, self.rate, self.epochs, self.start, self.save = config, rate, epochs, start, save
        self.minimize = "loss" in config.monitor
        self.scale = float(saved.get("scale", 1.0))
        self.best = saved.get("best")
        self.wait = int(saved.get("wait", 0))

    def rate_for(self, epoch: int) -> float:
        """The rate of global epoch ``epoch``."""
        lr = self.rate * schedule_factor(self.config, epoch - self.start, self.epochs) * self.scale
        return max(lr, self.config.min_learning_rate) if self.scale < 1.0 else lr

    def on_epoch_begin(self, epoch, logs=None):
        keras.backend.set_value(self.model.optimizer.learning_rate, self.rate_for(epoch))

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.config.monitor)
        if self.config.reduce_lr_patience and current is not None:
            self._plateau(float(current), epoch)
        self.save({"scale": self.scale, "best": self.best, "wait": self.wait})

    def _plateau(self, current: float, epoch: int) -> None:
        improved = self.best is None or (
            current < self.best - MIN_DELTA if self.minimize else current > self.best + MIN_DELTA
        )
        if improved:
            self.best, self.wait = current, 0
            return
        self.wait += 1
        if self.wait >= self.config.reduce_lr_patience:
            if self.rate_for(epoch) > self.config.min_learning_rate:
                self.scale *= self.config.reduce_lr_factor
            self.wait = 0
