"""Running trials: one trial trains its config (on each fold) and is scored; KerasTuner's tuner runs them."""

from __future__ import annotations

import gc
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ConfigError
from edge.errors import ShipyardError
from edge.files import write_json_atomic
from training.config import TrainingConfig
from training.tune._kt import BaseTuner, kt
from training.tune.hparams import HParamsLog
from training.tune.space import SearchParam, trial_config, validated

SEARCH_DIR = "search"
TRIAL_RECORD = "shipyard_trial.json"


def _validation_metrics(model: Any, dataset: Any, labels: list[str]) -> dict[str, float]:
    from training.evaluate import classification_metrics, predict_dataset

    probs, y = predict_dataset(model, dataset)
    m = classification_metrics(y, probs, labels)
    return {
        "val_accuracy": float(m["accuracy"]),
        "val_macro_f1": float(m["macro"]["f1"]),
        "val_loss": float(m["loss"]),
    }


@dataclass
class Search:
    """Everything a trial needs: the base config, the space, the folds and where to log."""

    base: TrainingConfig
    params: list[SearchParam]
    folds: list[Path] | None
    hparams: HParamsLog
    tuner_id: str
    progress: Callable[[str], None]
    trials_run: int = 0

    def run_trial(self, trial_id: str, values: dict[str, Any], trial_dir: Path) -> dict[str, float]:
        """Train one trial (on each fold) and return its metrics; the objective is among them."""
        started = time.perf_counter()
        try:
            config = trial_config(self.base, self.params, values, epochs=values.get("tuner/epochs"))
        except ConfigError as exc:
            raise kt.errors.FailedTrialError(str(exc)) from None
        runs = trial_dir / "run"
        shutil.rmtree(runs, ignore_errors=True)  # a trial that was interrupted starts over
        per_fold = [
            self._train_fold(config, runs, n, fold) for n, fold in enumerate(self.folds or [None], start=1)
        ]
        out = self._combine(per_fold)
        out["seconds"] = time.perf_counter() - started
        self._record(trial_id, values, out, per_fold, trial_dir)
        self.trials_run += 1
        return out

    def _train_fold(self, config: TrainingConfig, runs: Path, n: int, fold: Path | None) -> dict[str, float]:
        """Train the trial's config once (on ``fold`` when given) and score it on its validation split."""
        from training._tf import keras
        from training.train import train

        # The trial trains in its own folder; a fold trains on its split-folder view of the data.
        run_values: dict[str, Any] = {"train.version": f"fold-{n}" if fold else "trial"}
        if fold is not None:
            run_values["data.path"] = str(fold)
        run_config = validated(config.training_dump(), run_values)
        keras.backend.clear_session()
        try:
            result = train(run_config, runs, verbose=0)
            if result.datasets.val is None:
                raise ConfigError("the validation split is empty; set data.val_fraction above 0")
            metrics = _validation_metrics(result.model, result.datasets.val, result.datasets.scan.labels)
            metrics["epochs"] = float(result.epochs_run)
        except ShipyardError as exc:
            raise kt.errors.FailedTrialError(str(exc)) from None
        finally:
            result = None
            gc.collect()
        # The trial's weights are not needed again (the best config is retrained): keep the logs only.
        for sub in ("checkpoints", "backup"):
            shutil.rmtree(runs / config.model.name / run_config.train.version / sub, ignore_errors=True)
        return metrics

    def _combine(self, per_fold: list[dict[str, float]]) -> dict[str, float]:
        """The mean of each metric over the folds, and the objective's spread with folds."""
        out = {name: float(statistics.fmean(m[name] for m in per_fold)) for name in per_fold[0]}
        objective = self.base.tune.objective
        if self.folds:
            out[objective + "_std"] = float(statistics.pstdev(m[objective] for m in per_fold))
        return out

    def _record(
        self,
        trial_id: str,
        values: dict[str, Any],
        metrics: dict[str, float],
        per_fold: list[dict[str, float]],
        trial_dir: Path,
    ) -> None:
        """Write the trial's record beside KerasTuner's and its HParams session."""
        record = {
            "trial_id": trial_id,
            "tuner": self.tuner_id,
            "values": _jsonable(values),
            "config_values": {p.key: p.decode(values[p.key]) for p in self.params if p.key in values},
            "metrics": metrics,
            "folds": per_fold,
        }
        write_json_atomic(trial_dir / TRIAL_RECORD, record)
        self.hparams.write_trial(trial_id, values, metrics)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in values.items()}


class Tuner(BaseTuner):
    """KerasTuner's base tuner running Shipyard trials (no Keras model passes through KerasTuner)."""

    def __init__(self, oracle: Any, search: Search, directory: Path, overwrite: bool):
        self.shipyard = search
        super().__init__(
            oracle=oracle,
            hypermodel=None,
            directory=str(directory),
            project_name=SEARCH_DIR,
            overwrite=overwrite,
        )

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        values = dict(trial.hyperparameters.values)
        metrics = self.shipyard.run_trial(trial.trial_id, values, Path(self.get_trial_dir(trial.trial_id)))
        if self._is_worker():
            self.shipyard.progress(
                f"{self.shipyard.tuner_id}: trial {trial.trial_id} done in {metrics['seconds']:.1f}s, "
                f"{self.shipyard.base.tune.objective} {metrics[self.shipyard.base.tune.objective]:.4f}"
            )
        return metrics

    def save_model(self, trial_id: str, model: Any, step: int = 0) -> None:  # pragma: no cover - unused
        """Trials keep no model: the best config is retrained."""

    def load_model(self, trial: Any) -> None:  # pragma: no cover - unused
        """Trials keep no model: the best config is retrained."""
        raise ShipyardError("tuning keeps no trial models; train best.yaml with 'shipyard train'")
