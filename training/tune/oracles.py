"""The registries of a search: objectives (what a trial is scored by) and tuners (KerasTuner oracles)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from training.config import TuneConfig
from training.tune._kt import kt


@dataclass(frozen=True)
class ObjectiveSpec:
    """A search objective: its direction, what it measures, and the Keras log that early stopping watches."""

    direction: Literal["min", "max"]
    description: str
    monitor: str


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "val_accuracy": ObjectiveSpec("max", "accuracy on the validation split", "val_accuracy"),
    "val_macro_f1": ObjectiveSpec("max", "macro-averaged F1 on the validation split", "val_macro_f1"),
    "val_loss": ObjectiveSpec("min", "cross-entropy on the validation split", "val_loss"),
}
#: Metrics every trial reports (the objective is one of them).
TRIAL_METRICS = ("val_accuracy", "val_macro_f1", "val_loss")


class _OracleMixin:
    """What Shipyard adds to a KerasTuner oracle.

    It records which tuner ran each trial (kept in ``oracle.json``), stops handing out trials after a
    deadline, and calls ``on_trial_end`` for each finished trial (in a distributed search: on the chief).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trial_tuners: dict[str, str] = {}
        self.deadline: float | None = None
        self.stopped_by_time = False
        self.on_trial_end: Callable[[Any], None] | None = None

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped_by_time = True
            return {"status": "STOPPED"}
        return super().populate_space(trial_id)

    @kt.synchronized
    def create_trial(self, tuner_id: str):
        trial = super().create_trial(tuner_id)
        if trial.status == "RUNNING":
            self.trial_tuners[trial.trial_id] = tuner_id
        return trial

    @kt.synchronized
    def end_trial(self, trial) -> None:
        try:
            super().end_trial(trial)
        finally:  # also when the oracle gives up after too many failures in a row
            if self.on_trial_end is not None:
                self.on_trial_end(self.trials[trial.trial_id])

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["shipyard_trial_tuners"] = dict(self.trial_tuners)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.trial_tuners = dict(state.get("shipyard_trial_tuners", {}))


class _RandomOracle(_OracleMixin, kt.oracles.RandomSearchOracle):
    pass


class _HyperbandOracle(_OracleMixin, kt.oracles.HyperbandOracle):
    pass


class _BayesianOracle(_OracleMixin, kt.oracles.BayesianOptimizationOracle):
    pass


def _shared(tune: TuneConfig, objective: Any, hps: Any) -> dict[str, Any]:
    """What every oracle is given: the objective, the search space, the seed and the failure limit."""
    return {
        "objective": objective,
        "seed": tune.seed,
        "hyperparameters": hps,
        "max_consecutive_failed_trials": tune.max_failed_trials,
    }


def _random(tune: TuneConfig, objective: Any, hps: Any, max_epochs: int) -> Any:
    return _RandomOracle(**_shared(tune, objective, hps), max_trials=tune.max_trials)


def _hyperband(tune: TuneConfig, objective: Any, hps: Any, max_epochs: int) -> Any:
    oracle = _HyperbandOracle(
        **_shared(tune, objective, hps),
        max_epochs=max_epochs,
        factor=tune.hyperband_factor,
        hyperband_iterations=tune.hyperband_iterations,
    )
    # The base Oracle enforces max_trials; Hyperband's constructor does not take it.
    oracle.max_trials = tune.max_trials
    return oracle


def _bayesian(tune: TuneConfig, objective: Any, hps: Any, max_epochs: int) -> Any:
    return _BayesianOracle(
        **_shared(tune, objective, hps),
        max_trials=tune.max_trials,
        num_initial_points=tune.bayesian_initial_points,
    )


@dataclass(frozen=True)
class TunerSpec:
    """A search algorithm: how to build its KerasTuner oracle, and a sentence about it."""

    make_oracle: Callable[[TuneConfig, Any, Any, int], Any]
    description: str


TUNERS: dict[str, TunerSpec] = {
    "random": TunerSpec(_random, "random search: tune.max_trials independent samples of the space"),
    "hyperband": TunerSpec(
        _hyperband,
        "Hyperband: many short trials, the best 1/tune.hyperband_factor trained longer, up to train.epochs",
    ),
    "bayesian": TunerSpec(
        _bayesian, "Bayesian optimization: a Gaussian process proposes each trial from the scores so far"
    ),
}
