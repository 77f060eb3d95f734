"""Cross-validation as a verb (``shipyard evaluate --folds K CONFIG``): a more reliable estimate than one split.

The train and validation images (the test split stays out) are dealt into ``K`` stratified folds by
the same code as ``tune.folds`` (:func:`training.tune.folds.make_folds`). Fold ``i`` trains a full
package on the other folds and is scored on fold ``i`` (its validation split, which also drives early
stopping and the best-epoch choice, as in ``tune``: the estimate is slightly optimistic where those are
on). Each metric is reported as its mean and standard deviation over the folds (population standard
deviation, ``ddof=0``, as scikit-learn's ``cross_val_score(...).std()``).

Written to ``<output>/<model.name>/cv-<version>/``: ``folds/`` (links to the images),
``<model.name>/fold-i/`` (one package per fold, without pictures or recordings) and ``crossval.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ConfigError
from edge.files import write_json_atomic
from training.config import TrainingConfig

RESULT_FILE = "crossval.json"


@dataclass
class CrossValOutcome:
    """What :func:`cross_validate` measured.

    Attributes:
        folder: ``<output>/<model.name>/cv-<version>/``.
        packages: one package per fold.
        metrics: ``{metric: {"values": [per fold], "mean", "std"}}``.
        table: the printed table (a column per fold, then mean and standard deviation).
    """

    folder: Path
    packages: list[Path]
    metrics: dict[str, dict[str, Any]]
    table: str

    @property
    def k(self) -> int:
        return len(self.packages)


def fold_config(config: TrainingConfig, fold: Path, index: int) -> TrainingConfig:
    """The config that trains fold ``index`` (1-based) on its split-folder view, without pictures."""
    raw = config.training_dump()
    raw["data"]["path"] = str(fold)
    raw["train"]["version"] = f"fold-{index}"
    raw["report"].update(plots=False, record=False)
    return TrainingConfig.model_validate(raw)


def summarize(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation (``ddof=0``) of each headline metric over the folds' metrics."""
    from training.evaluate import _get, _metric_keys

    out: dict[str, dict[str, Any]] = {}
    for key in _metric_keys(per_fold[0]):
        values = [_get(m, key) for m in per_fold]
        if any(v is None for v in values):
            continue
        out[key] = {"values": values, "mean": float(np.mean(values)), "std": float(np.std(values))}
    return out


def crossval_table(metrics: dict[str, dict[str, Any]]) -> str:
    """A row per metric: each fold's value, the mean and the standard deviation."""
    from training.tables import format_table

    k = len(next(iter(metrics.values()))["values"])
    rows = [
        [key, *(f"{v:.4f}" for v in m["values"]), f"{m['mean']:.4f}", f"{m['std']:.4f}"]
        for key, m in metrics.items()
    ]
    return format_table(["metric", *(f"fold {i}" for i in range(1, k + 1)), "mean", "std"], rows)


def cross_validate(
    config: TrainingConfig,
    k: int,
    output: Path | str = "runs",
    *,
    verbose: int | str = 0,
    progress=None,
) -> CrossValOutcome:
    """Train ``k`` models on stratified folds of the data and report each metric's mean and spread.

    Args:
        config: the training config (``data.path`` set); ``train.version`` names the run (default: now).
        k: the number of folds (>= 2; every class needs at least ``k`` train+validation images).
        output: the parent folder of runs.
        verbose: Keras progress for each fold.
        progress: called with a line per step.

    Returns:
        A :class:`CrossValOutcome` (also written to ``crossval.json``).

    Raises:
        ConfigError: ``k`` below 2, no data folder, too few images of a class.
    """
    if k < 2:
        raise ConfigError(f"--folds {k}: cross-validation needs at least 2 folds")
    from training._tf import keras
    from training.pipeline import run_train
    from training.train import new_version
    from training.tune.folds import make_folds

    say = progress or (lambda line: None)
    folder = Path(output) / config.model.name / f"cv-{config.train.version or new_version()}"
    folds = make_folds(config.data, folder / "folds", k, setting="--folds")
    packages, per_fold = [], []
    for i, fold in enumerate(folds, start=1):
        say(f"fold {i}/{k}: training on the other {k - 1} fold(s), scoring on fold {i}")
        keras.backend.clear_session()  # each fold's model starts from a clean graph
        outcome = run_train(fold_config(config, fold, i), folder, verbose=verbose)
        packages.append(outcome.package)
        per_fold.append(_fold_metrics(outcome.package))
        say(f"fold {i}/{k}: accuracy {per_fold[-1]['accuracy']:.4f}")
    metrics = summarize(per_fold)
    write_json_atomic(
        folder / RESULT_FILE,
        {"k": k, "packages": [str(p) for p in packages], "metrics": metrics, "folds": per_fold},
    )
    return CrossValOutcome(folder, packages, metrics, crossval_table(metrics))


def _fold_metrics(package: Path) -> dict[str, Any]:
    import json

    return json.loads((package / "eval" / "metrics.json").read_text())["metrics"]


__all__ = ["RESULT_FILE", "CrossValOutcome", "cross_validate", "crossval_table", "fold_config", "summarize"]
