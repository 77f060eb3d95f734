"""Hyperparameter search with KerasTuner: ``shipyard tune CONFIG``.

The search space is ``tune.space`` in the config: config keys (``train.learning_rate``,
``model.head.dense``, ``data.augment.rotation``, ...) mapped to how to search them
(:class:`training.config.SearchParamConfig`). A trial is the whole :class:`TrainingConfig` with the
trial's values merged in the way ``--set`` merges overrides, validated like any config, and trained by
:func:`training.train.train`, the code behind ``shipyard train``. Its score is measured after training
on the validation split (or as the mean over ``tune.folds`` cross-validation folds), so the best trial's
config, written as ``best.yaml``, reproduces the trial's score with ``shipyard train best.yaml``
(exactly, with ``train.deterministic``).

KerasTuner provides the search algorithms (the oracles of :data:`TUNERS`), the trial bookkeeping that
makes a search resumable (``overwrite=False`` on the same folder: finished trials are kept, a trial that
was interrupted runs again) and distributed search: one process with ``KERASTUNER_TUNER_ID=chief`` runs
the oracle as a gRPC server on ``KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT``, every other process
(``KERASTUNER_TUNER_ID=worker0``, ...) asks it for trials, trains them and reports back. No Keras object
crosses into KerasTuner: only its oracles and :class:`BaseTuner` are used (KerasTuner itself imports
Keras 3; the models are tf_keras).

Design choices:

* Hyperband trials train from scratch for their bracket's epochs instead of continuing the weights of an
  earlier round, so that every trial is reproducible by training its config.
* ``val_loss`` as an objective is the cross-entropy of the validation split whatever ``train.loss`` is,
  so trials that search the loss (cross-entropy against focal) compare fairly.
* ``tune.max_time_s`` is checked by the oracle before each new trial; a running trial is not cut.

Output folder (``runs/tune/<model.name>/`` by default)::

    trials.csv, trials.md    every trial, best first: hyperparameters, objective (and its std over folds)
    objective.png            the objective against each hyperparameter
    best.yaml                the best trial's full config: ``shipyard train best.yaml``
    search.json              what the search was started with (a resumed search must match)
    search/                  KerasTuner's project: oracle.json, trial_<id>/trial.json and each trial's run
    tensorboard/             HParams dashboard: ``tensorboard --logdir <output>/tensorboard``
    folds/                   with tune.folds >= 2: the folds as split folders (symlinks to the images)
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import ValidationError

from edge.config import ConfigError, deep_merge, format_validation_error
from edge.errors import ShipyardError
from training._tf import quiet_tf_stderr  # first: pins tf_keras before KerasTuner imports TensorFlow
from training.config import SearchParamConfig, TrainingConfig, TuneConfig, require_data_dir
from training.tables import format_table, markdown_table

try:
    with quiet_tf_stderr():  # KerasTuner imports Keras 3, whose start-up lines are TensorFlow's
        import keras_tuner as kt
        from keras_tuner.engine.base_tuner import BaseTuner
except ImportError as _exc:  # pragma: no cover - the train extra installs it
    raise ShipyardError(
        "shipyard tune needs keras-tuner; install the training extra: pip install -e '.[train]'"
    ) from _exc

SEARCH_DIR = "search"
TENSORBOARD_DIR = "tensorboard"
FOLDS_DIR = "folds"
STATE_FILE = "search.json"
TRIAL_RECORD = "shipyard_trial.json"
#: Hyperband's own values in a trial; they are not config keys.
HYPERBAND_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")
#: Config keys a search may not change, and why.
FORBIDDEN_KEYS: dict[str, str] = {
    "data.path": "the data folder is given once (--data), not searched",
    "data.seed": "it changes the validation split, so scores would not be comparable",
    "data.val_fraction": "it changes the validation split, so scores would not be comparable",
    "data.test_fraction": "it changes the validation split, so scores would not be comparable",
    "model.name": "it names the package, it is not a hyperparameter",
    "train.version": "it names the run, it is not a hyperparameter",
    "train.distribution": "it changes where training runs, not the model",
}
FORBIDDEN_SECTIONS = ("tune", "optimize", "serve", "loadtest")


# ------------------------------------------------------------------------------------ registries


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


def _random(tune: TuneConfig, objective: Any, hps: Any, max_epochs: int) -> Any:
    return _RandomOracle(
        objective=objective,
        max_trials=tune.max_trials,
        seed=tune.seed,
        hyperparameters=hps,
        max_consecutive_failed_trials=tune.max_failed_trials,
    )


def _hyperband(tune: TuneConfig, objective: Any, hps: Any, max_epochs: int) -> Any:
    oracle = _HyperbandOracle(
        objective=objective,
        max_epochs=max_epochs,
        factor=tune.hyperband_factor,
        hyperband_iterations=tune.hyperband_iterations,
        seed=tune.seed,
        hyperparameters=hps,
        max_consecutive_failed_trials=tune.max_failed_trials,
    )
    oracle.max_trials = (
        tune.max_trials
    )  # the base Oracle enforces it; Hyperband's constructor does not take it
    return oracle


def _bayesian(tune: TuneConfig, objective: Any, hps: Any, max_epochs: int) -> Any:
    return _BayesianOracle(
        objective=objective,
        max_trials=tune.max_trials,
        num_initial_points=tune.bayesian_initial_points,
        seed=tune.seed,
        hyperparameters=hps,
        max_consecutive_failed_trials=tune.max_failed_trials,
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


# ----------------------------------------------------------------------------------- search space


def _scalar_type(values: list[Any]) -> type | None:
    """The one scalar type all values share (KerasTuner's Choice needs that), or None."""
    types = {type(v) for v in values}
    if len(types) == 1 and next(iter(types)) in (str, int, float, bool):
        return next(iter(types))
    return None


def _label(value: Any) -> str:
    """How a choice that KerasTuner cannot hold directly (a list, a mapping, mixed types) is named."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "))


@dataclass(frozen=True)
class SearchParam:
    """One validated entry of ``tune.space``.

    ``labels`` maps KerasTuner's value to the config value for choices that KerasTuner cannot hold
    directly (lists such as ``[128, 64]``, mappings, mixed types): KerasTuner then chooses among the
    labels (``"[128, 64]"``) and :meth:`decode` turns a label back into the value.
    """

    key: str
    spec: SearchParamConfig
    labels: dict[str, Any] = field(default_factory=dict)

    def declare(self, hps: Any) -> None:
        """Add this entry to a KerasTuner ``HyperParameters`` space."""
        s = self.spec
        sampling = "log" if s.log else "linear"
        if s.type == "float":
            hps.Float(self.key, float(s.min), float(s.max), step=s.step, sampling=sampling)
        elif s.type == "int":
            step = int(s.step) if s.step is not None else None
            hps.Int(self.key, int(s.min), int(s.max), step=step, sampling=sampling)
        elif s.type == "bool":
            hps.Boolean(self.key)
        else:
            hps.Choice(self.key, self.choices(), ordered=False)

    def choices(self) -> list[Any]:
        """What KerasTuner chooses among: the labels or values of a choice, ``[False, True]`` for a bool."""
        if self.spec.type == "bool":
            return [False, True]
        return list(self.labels) if self.labels else list(self.spec.values or [])

    def decode(self, raw: Any) -> Any:
        """The config value for KerasTuner's value."""
        if self.labels:
            return self.labels[raw]
        if self.spec.type == "float":
            return float(f"{float(raw):.10g}")  # 0.30000000000000004 -> 0.3
        if self.spec.type == "int":
            return int(raw)
        return raw

    def display(self, raw: Any) -> str:
        """A short text for tables and plots."""
        value = self.decode(raw)
        if isinstance(value, float):
            return f"{value:.4g}"
        return value if isinstance(value, str) else _label(value)

    def candidates(self) -> list[tuple[str, Any]]:
        """The values that must each be a valid config: the ends of a range, every choice, both booleans."""
        s = self.spec
        if s.type == "float":
            return [("min", float(s.min)), ("max", float(s.max))]
        if s.type == "int":
            return [("min", int(s.min)), ("max", int(s.max))]
        if s.type == "bool":
            return [("value", False), ("value", True)]
        return [("value", v) for v in s.values]

    @property
    def numeric(self) -> bool:
        """Whether the values are numbers on an axis (float, int, or a choice of one numeric type)."""
        if self.spec.type in ("float", "int"):
            return True
        return (
            self.spec.type == "choice" and not self.labels and _scalar_type(self.spec.values) in (int, float)
        )


def _nested(key: str, value: Any) -> dict[str, Any]:
    """``("a.b.c", v)`` -> ``{"a": {"b": {"c": v}}}``: the shape ``--set a.b.c=v`` merges in."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _check_key(key: str) -> None:
    """The key must name a field of the config (a setting or a whole section), and be searchable."""
    from pydantic import BaseModel

    if key in FORBIDDEN_KEYS:
        raise ConfigError(f"tune.space[{key!r}] cannot be searched: {FORBIDDEN_KEYS[key]}")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(
            f"tune.space[{key!r}] has an empty part; write the key as section.key, e.g. train.learning_rate"
        )
    if parts[0] in FORBIDDEN_SECTIONS:
        raise ConfigError(
            f"tune.space[{key!r}] cannot be searched: the {parts[0]} section does not change training; "
            "search keys of data, model and train"
        )
    model: Any = TrainingConfig
    for n, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:n]) or "the config"
            raise ConfigError(
                f"tune.space[{key!r}]: {part!r} is not a key of {where}; valid keys there: {', '.join(fields)}"
            )
        annotation = fields[part].annotation
        if n < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise ConfigError(
                    f"tune.space[{key!r}]: {'.'.join(parts[: n + 1])} is a setting, not a section; "
                    f"search it as a whole, e.g. tune.space[{'.'.join(parts[: n + 1])!r}]"
                )
            model = annotation


def parse_space(config: TrainingConfig) -> list[SearchParam]:
    """Validate ``tune.space`` against the config and return its entries, before any trial runs.

    Every key must name a setting (or section) of the data, model or train sections, and every value
    the entry can produce at its ends (a range's min and max, each choice, both booleans) must make a
    config that validates, merged into ``config`` like a ``--set``.

    Args:
        config: the base config, with ``tune.space`` set.

    Returns:
        The entries in the order of the space.

    Raises:
        ConfigError: an empty space, an unknown or unsearchable key, a value the config rejects, an
            unknown ``model.base``, or ``train.epochs`` searched by Hyperband (one line each).
    """
    from training.models import BACKBONES

    space = config.tune.space
    if not space:
        raise ConfigError(
            "tune.space is empty; map the config keys to search to their ranges, e.g. "
            "tune: {space: {train.learning_rate: {type: float, min: 0.0001, max: 0.01, log: true}}}"
        )
    params: list[SearchParam] = []
    for key, spec in space.items():
        _check_key(key)
        if key == "train.epochs" and config.tune.tuner == "hyperband":
            raise ConfigError(
                "tune.space['train.epochs'] cannot be searched with tune.tuner = 'hyperband': Hyperband sets each "
                "trial's epochs itself (up to train.epochs); remove the entry or use tune.tuner random or bayesian"
            )
        labels: dict[str, Any] = {}
        if spec.type == "choice" and _scalar_type(spec.values) is None:
            labels = {_label(v): v for v in spec.values}
            if len(labels) != len(spec.values):
                raise ConfigError(
                    f"tune.space[{key!r}]: values {spec.values!r} contain two values that read the same "
                    f"({', '.join(map(_label, spec.values))}); make them distinct"
                )
        param = SearchParam(key, spec, labels)
        for what, value in param.candidates():
            if key == "model.base" and value not in BACKBONES:
                raise ConfigError(
                    f"tune.space['model.base']: {value!r} is not a known base; choose among: {', '.join(BACKBONES)}"
                )
            try:
                _validated(config.training_dump(), {key: value})
            except ConfigError as exc:
                raise ConfigError(f"tune.space[{key!r}]: {what} {value!r} is rejected: {exc}") from None
        params.append(param)
    return params


def _validated(raw: dict[str, Any], values: dict[str, Any]) -> TrainingConfig:
    for key, value in values.items():
        raw = deep_merge(raw, _nested(key, value))
    try:
        return TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        message = format_validation_error(exc, TrainingConfig, "config").replace("config: ", "")
        raise ConfigError("; ".join(message.splitlines())) from None


def trial_config(
    base: TrainingConfig, params: list[SearchParam], values: dict[str, Any], *, epochs: int | None = None
) -> TrainingConfig:
    """The full config of one trial: ``base`` with the trial's values merged in (like ``--set``).

    ``tune.early_stopping_patience``, when set, becomes the trial's ``train.early_stopping_patience``
    (watching the objective's Keras log); ``epochs`` (Hyperband's budget) becomes ``train.epochs``.
    The result is what ``best.yaml`` holds for the best trial.

    Args:
        base: the config the search started from.
        params: the entries of :func:`parse_space`.
        values: KerasTuner's values of the trial (Hyperband's own keys are ignored).
        epochs: the trial's epochs, or None for ``train.epochs``.

    Returns:
        A validated :class:`TrainingConfig`.

    Raises:
        ConfigError: the combination of values is not a valid config.
    """
    merged = {p.key: p.decode(values[p.key]) for p in params if p.key in values}
    tune = base.tune
    if tune.early_stopping_patience is not None:
        merged["train.early_stopping_patience"] = tune.early_stopping_patience
        merged["train.monitor"] = OBJECTIVES[tune.objective].monitor
    if epochs is not None:
        merged["train.epochs"] = int(epochs)
    return _validated(base.training_dump(), merged)


def hyperparameters(params: list[SearchParam]) -> Any:
    """The KerasTuner ``HyperParameters`` space of the entries."""
    hps = kt.HyperParameters()
    for p in params:
        p.declare(hps)
    return hps


# ------------------------------------------------------------------------------------------ folds


def make_folds(config: TrainingConfig, root: Path, k: int) -> list[Path]:
    """Write ``k`` stratified cross-validation folds of the training data as split folders.

    The images of the train and validation splits (the test split stays out) are dealt per class,
    shuffled with ``data.seed``, into ``k`` folds. Fold ``i`` is ``root/fold-i/{train,val}/<class>/``
    holding symbolic links to the images (copies where links are not possible): ``val`` is fold ``i``,
    ``train`` the others. Written once (atomically, so parallel workers can share ``root``) and reused
    while the data and ``k`` stay the same.

    Returns:
        The ``k`` fold folders.

    Raises:
        ConfigError: a class has fewer than ``k`` images.
    """
    from training.data import scan_dataset

    data = require_data_dir(config)
    scan = scan_dataset(data, config.data)
    stamp = {"fingerprint": scan.fingerprint(), "k": k, "seed": config.data.seed}
    folders = [root / f"fold-{i + 1}" for i in range(k)]
    record = root / "folds.json"
    if record.is_file() and json.loads(record.read_text()) == stamp and all(f.is_dir() for f in folders):
        return folders
    pool = scan.splits["train"] + scan.splits["val"]
    by_class: dict[int, list[Any]] = {}
    for s in pool:
        by_class.setdefault(s.label, []).append(s)
    fold_of: dict[Path, int] = {}
    for label, items in sorted(by_class.items()):
        if len(items) < k:
            raise ConfigError(
                f"tune.folds = {k} needs at least {k} images of every class in the train and validation splits; "
                f"class {scan.labels[label]!r} has {len(items)}. Lower tune.folds or add images"
            )
        items = sorted(items, key=lambda s: s.path.as_posix())
        rng = np.random.default_rng([config.data.seed & 0xFFFFFFFF, zlib.crc32(scan.labels[label].encode())])
        for position, index in enumerate(rng.permutation(len(items))):
            fold_of[items[index].path] = position % k

    tmp = root.parent / f".{root.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for s in pool:
        rel = s.path.relative_to(scan.root).as_posix().replace("/", "__")
        for i in range(k):
            split = "val" if fold_of[s.path] == i else "train"
            dest = tmp / f"fold-{i + 1}" / split / scan.labels[s.label] / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            _link(s.path, dest)
    (tmp / "folds.json").write_text(json.dumps(stamp))
    shutil.rmtree(root, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another worker put the same folds there first
        shutil.rmtree(tmp, ignore_errors=True)
    return folders


def _link(src: Path, dest: Path) -> None:
    try:
        os.symlink(src, dest)
    except OSError:
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)


# ------------------------------------------------------------------------------------------ trials


def _validation_metrics(model: Any, dataset: Any, labels: list[str]) -> dict[str, float]:
    from training.evaluate import classification_metrics, predict_dataset

    probs, y = predict_dataset(model, dataset)
    m = classification_metrics(y, probs, labels)
    return {
        "val_accuracy": float(m["accuracy"]),
        "val_macro_f1": float(m["macro"]["f1"]),
        "val_loss": float(m["loss"]),
    }


def _hparam_value(param: SearchParam, raw: Any) -> Any:
    """HParams take bool, int, float or str: a label for a list-valued choice, else the config value."""
    if param.labels:
        return str(raw)
    value = param.decode(raw)
    return value.item() if isinstance(value, np.generic) else value


class _HParamsLog:
    """TensorBoard HParams summaries: the experiment (once) and one session per trial."""

    def __init__(self, root: Path, params: list[SearchParam], objective: str, folds: bool):
        self.root, self.params, self.objective, self.folds = root, params, objective, folds

    def _hparams(self) -> list[Any]:
        from tensorboard.plugins.hparams import api as hp_api

        out = []
        for p in self.params:
            s = p.spec
            if s.type == "float":
                domain = hp_api.RealInterval(float(s.min), float(s.max))
            elif s.type == "int":
                domain = hp_api.IntInterval(int(s.min), int(s.max))
            elif s.type == "bool":
                domain = hp_api.Discrete([False, True])
            else:
                domain = hp_api.Discrete(p.choices())
            out.append(hp_api.HParam(p.key, domain))
        return out

    def write_experiment(self) -> None:
        """The experiment's hyperparameters (with their domains) and metrics, in ``root``."""
        from tensorboard.plugins.hparams import api as hp_api

        from training._tf import tf

        metrics = [hp_api.Metric(name, display_name=name) for name in (*TRIAL_METRICS, "epochs", "seconds")]
        if self.folds:
            metrics.append(
                hp_api.Metric(self.objective + "_std", display_name=self.objective + " std over folds")
            )
        if any(self.root.glob("events.out.tfevents.*")):  # written when the search started (or by the chief)
            return
        writer = tf.summary.create_file_writer(str(self.root))
        with writer.as_default():
            hp_api.hparams_config(hparams=self._hparams(), metrics=metrics)
        writer.close()

    def write_trial(self, trial_id: str, values: dict[str, Any], metrics: dict[str, float]) -> None:
        """One trial's values and metrics, in ``root/trial_<id>``."""
        from tensorboard.plugins.hparams import api as hp_api

        from training._tf import tf

        writer = tf.summary.create_file_writer(str(self.root / f"trial_{trial_id}"))
        with writer.as_default():
            hp_api.hparams(
                {p.key: _hparam_value(p, values[p.key]) for p in self.params if p.key in values},
                trial_id=trial_id,
            )
            for name, value in metrics.items():
                tf.summary.scalar(name, value, step=1)
        writer.close()


@dataclass
class _Search:
    """Everything a trial needs: the base config, the space, the folds and where to log."""

    base: TrainingConfig
    params: list[SearchParam]
    folds: list[Path] | None
    hparams: _HParamsLog
    tuner_id: str
    progress: Callable[[str], None]
    trials_run: int = 0

    def run_trial(self, trial_id: str, values: dict[str, Any], trial_dir: Path) -> dict[str, float]:
        """Train one trial (on each fold) and return its metrics; the objective is among them."""
        from training._tf import keras
        from training.train import train

        started = time.perf_counter()
        epochs = values.get("tuner/epochs")
        try:
            config = trial_config(self.base, self.params, values, epochs=epochs)
        except ConfigError as exc:
            raise kt.errors.FailedTrialError(str(exc)) from None
        runs = trial_dir / "run"
        shutil.rmtree(runs, ignore_errors=True)  # a trial that was interrupted starts over
        per_fold: list[dict[str, float]] = []
        for n, fold in enumerate(self.folds or [None], start=1):
            # The trial trains in its own folder; a fold trains on its split-folder view of the data.
            run_values: dict[str, Any] = {"train.version": f"fold-{n}" if fold else "trial"}
            if fold is not None:
                run_values["data.path"] = str(fold)
            run_config = _validated(config.training_dump(), run_values)
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
            per_fold.append(metrics)
            # The trial's weights are not needed again (the best config is retrained): keep the logs only.
            for sub in ("checkpoints", "backup"):
                shutil.rmtree(runs / config.model.name / run_config.train.version / sub, ignore_errors=True)
        out = {name: float(statistics.fmean(m[name] for m in per_fold)) for name in per_fold[0]}
        objective = self.base.tune.objective
        if self.folds:
            out[objective + "_std"] = float(statistics.pstdev(m[objective] for m in per_fold))
        out["seconds"] = time.perf_counter() - started
        (trial_dir / TRIAL_RECORD).write_text(
            json.dumps(
                {
                    "trial_id": trial_id,
                    "tuner": self.tuner_id,
                    "values": _jsonable(values),
                    "config_values": {p.key: p.decode(values[p.key]) for p in self.params if p.key in values},
                    "metrics": out,
                    "folds": per_fold,
                },
                indent=2,
            )
        )
        self.hparams.write_trial(trial_id, values, out)
        self.trials_run += 1
        return out


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in values.items()}


class _Tuner(BaseTuner):
    """KerasTuner's base tuner running Shipyard trials (no Keras model passes through KerasTuner)."""

    def __init__(self, oracle: Any, search: _Search, directory: Path, overwrite: bool):
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


# ------------------------------------------------------------------------------------- the search


Role = Literal["standalone", "chief", "worker"]


def distributed_role() -> Role:
    """This process's part in a KerasTuner distributed search, from its environment variables.

    ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` name the chief's gRPC address;
    ``KERASTUNER_TUNER_ID`` is ``chief`` on the chief and a unique name (``worker0``, ...) on each worker.
    With none of them set, the search runs in this process alone.

    Raises:
        ConfigError: some of the variables are set but not all.
    """
    names = ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID")
    present = [n for n in names if os.environ.get(n)]
    if "KERASTUNER_ORACLE_IP" not in present:
        return "standalone"
    missing = [n for n in names if n not in present]
    if missing:
        raise ConfigError(
            f"KERASTUNER_ORACLE_IP is set but {', '.join(missing)} is not; a distributed search needs all of "
            "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID (chief on the chief, "
            "a unique name such as worker0 on each worker)"
        )
    port = os.environ["KERASTUNER_ORACLE_PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"KERASTUNER_ORACLE_PORT = {port!r} is not a port number (1..65535)")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


@dataclass
class TrialRow:
    """One trial in the report: its config values (for display), metrics and status."""

    trial_id: str
    status: str
    score: float | None
    values: dict[str, Any]
    display: dict[str, str]
    metrics: dict[str, float]
    tuner: str
    message: str = ""


@dataclass
class TuneOutcome:
    """What a search produced (on a worker: only ``role``, ``trials_run`` and ``output``)."""

    output: Path
    role: Role
    trials_run: int
    rows: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    best_config: TrainingConfig | None = None
    files: dict[str, Path] = field(default_factory=dict)
    stopped: str = ""
    table: str = ""


def _fingerprint(config: TrainingConfig) -> dict[str, Any]:
    """What a resumed search must share with the search it continues."""
    dump = config.training_dump()
    dump["data"].pop("path", None)
    tune = dump["tune"]
    for budget in ("max_trials", "max_time_s", "max_failed_trials"):
        tune.pop(budget, None)
    return {"data": dump["data"], "model": dump["model"], "train": dump["train"], "tune": tune}


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


def _check_resume(output: Path, config: TrainingConfig, fresh: bool, role: Role) -> None:
    path = output / STATE_FILE
    mine = _fingerprint(config)
    if path.is_file() and not fresh:
        try:
            theirs = json.loads(path.read_text())
        except json.JSONDecodeError:
            theirs = None
        if theirs is not None and theirs != mine:
            raise ConfigError(
                f"{output} holds a search started with other settings ({_first_difference(theirs, mine)}); a search "
                "resumes only with the same config (tune.max_trials, tune.max_time_s and data.path may change). "
                "Pass --fresh to start over or choose another --output"
            )
    if role != "worker":
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(mine, indent=2, sort_keys=True))
        os.replace(tmp, path)


def default_output(config: TrainingConfig) -> Path:
    """``runs/tune/<model.name>``."""
    return Path("runs") / "tune" / config.model.name


def run_tune(
    config: TrainingConfig,
    output: Path | str | None = None,
    *,
    fresh: bool = False,
    progress: Callable[[str], None] | None = None,
) -> TuneOutcome:
    """Search ``config.tune.space`` with KerasTuner and write the report and ``best.yaml``.

    A search in ``output`` that was interrupted (or ran out of ``tune.max_trials``) resumes where it
    stopped: finished trials are kept, an interrupted one runs again, and ``tune.max_trials`` counts
    them all. In a distributed search (see :func:`distributed_role`) the chief serves the oracle and
    writes the report; workers only run trials.

    Args:
        config: the base config with a ``tune`` section; ``data.path`` must be set (not on the chief).
        output: the search folder (default :func:`default_output`).
        fresh: discard an earlier search in ``output`` instead of resuming it (not on a worker).
        progress: receives one line per event (search start, each finished trial).

    Returns:
        A :class:`TuneOutcome`.

    Raises:
        ConfigError: a bad search space or setting, a resumed search with other settings, a missing
            data folder, too few images for the folds; ShipyardError: every trial failed.
    """
    say = progress or (lambda line: None)
    tune = config.tune
    role = distributed_role()
    if role == "worker" and fresh:
        raise ConfigError(
            "--fresh starts a search over and belongs on the chief (or a search without workers)"
        )
    params = parse_space(config)
    output = Path(output) if output is not None else default_output(config)
    output.mkdir(parents=True, exist_ok=True)
    _check_resume(output, config, fresh, role)
    if fresh:
        shutil.rmtree(output / TENSORBOARD_DIR, ignore_errors=True)
    folds = None
    if role != "chief":
        require_data_dir(config)
        if tune.folds >= 2:
            folds = make_folds(config, output / FOLDS_DIR, tune.folds)
        else:
            _require_validation_split(config)

    spec = OBJECTIVES[tune.objective]
    objective = kt.Objective(tune.objective, direction=spec.direction)
    oracle = TUNERS[tune.tuner].make_oracle(tune, objective, hyperparameters(params), config.train.epochs)
    oracle.verbose = 0
    hparams = _HParamsLog(output / TENSORBOARD_DIR, params, tune.objective, tune.folds >= 2)
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    search = _Search(config, params, folds, hparams, tuner_id, say)
    with contextlib.redirect_stdout(sys.stderr):  # KerasTuner prints "Reloading Tuner from ..."
        tuner = _Tuner(oracle, search, output, overwrite=fresh)
    if role == "worker":
        say(
            f"{tuner_id}: asking the chief at {os.environ['KERASTUNER_ORACLE_IP']}:"
            f"{os.environ['KERASTUNER_ORACLE_PORT']} for trials"
        )
        with _quiet_failures():
            tuner.search()
        say(f"{tuner_id}: ran {search.trials_run} trial(s); the chief writes the report")
        return TuneOutcome(output=output, role=role, trials_run=search.trials_run)

    done_before = sum(1 for t in oracle.trials.values() if t.status == "COMPLETED")
    oracle.deadline = time.monotonic() + tune.max_time_s if tune.max_time_s else None
    started = time.perf_counter()

    def trial_done(trial: Any) -> None:
        best = oracle.get_best_trials(1)
        best_score = best[0].score if best and best[0].score is not None else float("nan")
        values = ", ".join(
            f"{p.key}={p.display(trial.hyperparameters.values[p.key])}"
            for p in params
            if p.key in trial.hyperparameters.values
        )
        if trial.status == "COMPLETED":
            state = f"{tune.objective} {trial.score:.4f} (best {best_score:.4f})"
        else:
            state = f"{trial.status.lower()}: {_first_line(trial.message)}"
        say(f"trial {trial.trial_id} [{len(oracle.end_order)}/{tune.max_trials}] {state} | {values}")

    oracle.on_trial_end = trial_done
    hparams.write_experiment()
    say(
        f"{'chief: serving' if role == 'chief' else 'searching'} {len(params)} hyperparameter(s) with "
        f"{tune.tuner} ({TUNERS[tune.tuner].description}); objective {tune.objective} ({spec.direction}); "
        f"up to {tune.max_trials} trials"
        + (f" or {tune.max_time_s:g}s" if tune.max_time_s else "")
        + (f"; {tune.folds}-fold cross-validation" if folds else "")
        + (f"; resuming with {done_before} finished trial(s)" if done_before else "")
    )
    try:
        with _quiet_failures():
            tuner.search()
    except RuntimeError as exc:  # the oracle gives up after tune.max_failed_trials failures in a row
        if "consecutive failures" not in str(exc):
            raise
        raise ShipyardError(
            f"{tune.max_failed_trials} trials in a row failed, the last with: {_last_failure(str(exc))}"
        ) from None
    rows = trial_rows(oracle, params)
    if not any(r.status == "COMPLETED" for r in rows):
        failures = [r for r in rows if r.message]
        why = f"; the last failure: {_first_line(failures[-1].message)}" if failures else ""
        raise ShipyardError(f"no trial of the search in {output} finished{why}")
    stopped = (
        f"stopped by tune.max_time_s = {tune.max_time_s:g}s"
        if oracle.stopped_by_time
        else f"{len(rows)} of tune.max_trials = {tune.max_trials} trials"
        if len(rows) >= tune.max_trials
        else f"{tune.tuner} finished its schedule after {len(rows)} trials (tune.max_trials = {tune.max_trials})"
    )
    best = rows[0]
    epochs = best.values.get("tuner/epochs")
    best_config = trial_config(config, params, best.values, epochs=epochs)
    data_path = best_config.data.path
    if data_path is not None:
        best_config = _validated(
            best_config.training_dump(), {"data.path": str(Path(data_path).resolve())}
        )
    files = write_report(output, config, params, rows, best_config, stopped)
    outcome = TuneOutcome(
        output=output,
        role=role,
        trials_run=len(rows) - done_before,
        rows=rows,
        best=best,
        best_config=best_config,
        files=files,
        stopped=stopped,
        table=trials_table(rows, params, config.tune, limit=10),
    )
    say(f"search done in {time.perf_counter() - started:.1f}s ({stopped})")
    return outcome


@contextlib.contextmanager
def _quiet_failures() -> Any:
    """KerasTuner prints the traceback of every failed trial; the progress line says why in one line."""
    from keras_tuner.src import config as kt_config

    debug, kt_config.DEBUG = kt_config.DEBUG, False
    try:
        yield
    finally:
        kt_config.DEBUG = debug


def _require_validation_split(config: TrainingConfig) -> None:
    from training.data import scan_dataset

    scan = scan_dataset(require_data_dir(config), config.data)
    if not scan.splits["val"]:
        raise ConfigError(
            f"the data in {config.data.path} has no validation split (data.val_fraction = "
            f"{config.data.val_fraction:g}); trials are scored on it: raise data.val_fraction, add a val/ "
            "folder, or set tune.folds to 2 or more"
        )


def _first_line(text: str | None) -> str:
    """The exception line of a traceback that KerasTuner stored, without the exception's class name."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    found = next(
        (line for line in reversed(lines) if re.match(r"^[\w.]*(Error|Exception)\b", line)), lines[-1]
    )
    found = re.sub(r"^[\w.]*(?:FailedTrialError|ShipyardError): ", "", found.strip())
    return found[:300]


def _last_failure(text: str) -> str:
    return _first_line(text.split("\n", 1)[1] if "\n" in text else text)


# ------------------------------------------------------------------------------------------- report


def trial_rows(oracle: Any, params: list[SearchParam]) -> list[TrialRow]:
    """Every trial of the oracle, best first (finished trials by the objective, then the others)."""
    direction = oracle.objective.direction
    rows = []
    for trial in oracle.trials.values():
        values = dict(trial.hyperparameters.values)
        metrics = {name: float(trial.metrics.get_last_value(name)) for name in trial.metrics.metrics}
        score = trial.score if trial.status == "COMPLETED" else None
        rows.append(
            TrialRow(
                trial_id=trial.trial_id,
                status=trial.status,
                score=None if score is None else float(score),
                values=values,
                display={p.key: p.display(values[p.key]) for p in params if p.key in values},
                metrics=metrics,
                tuner=getattr(oracle, "trial_tuners", {}).get(trial.trial_id, ""),
                message=trial.message or "",
            )
        )
    sign = -1.0 if direction == "max" else 1.0
    return sorted(
        rows,
        key=lambda r: (r.score is None or math.isnan(r.score), sign * (r.score or 0.0), int(r.trial_id)),
    )


def _columns(
    rows: list[TrialRow], params: list[SearchParam], tune: TuneConfig, *, precise: bool = False
) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the trials table; ``precise`` keeps full precision (for the CSV file)."""
    objective = tune.objective
    std = tune.folds >= 2
    others = [m for m in TRIAL_METRICS if m != objective]
    hyperband = any("tuner/epochs" in r.values for r in rows)
    tuners = any(r.tuner not in ("", "tuner0") for r in rows)  # a distributed search: who ran each trial
    headers = [
        "rank",
        "trial",
        "status",
        objective,
        *([f"{objective}_std"] if std else []),
        *(p.key for p in params),
        *others,
        "epochs",
        *(["budget_epochs"] if hyperband else []),
        "seconds",
        *(["tuner"] if tuners else []),
    ]
    table = []
    for rank, r in enumerate(rows, start=1):
        m = r.metrics

        def num(name: str, fmt: str = ".4f", m: dict[str, float] = m) -> Any:
            if name not in m:
                return ""
            return m[name] if precise else format(m[name], fmt)

        def value(p: SearchParam, r: TrialRow = r) -> Any:
            if p.key not in r.values:
                return ""
            if not precise:
                return r.display[p.key]
            v = p.decode(r.values[p.key])
            return v if isinstance(v, int | float | str) else _label(v)

        table.append(
            [
                rank if r.score is not None else "",
                r.trial_id,
                r.status,
                num(objective),
                *([num(f"{objective}_std")] if std else []),
                *(value(p) for p in params),
                *(num(o) for o in others),
                num("epochs", ".3g"),
                *([r.values.get("tuner/epochs", "")] if hyperband else []),
                num("seconds", ".1f"),
                *([r.tuner] if tuners else []),
            ]
        )
    return headers, table


def trials_table(
    rows: list[TrialRow], params: list[SearchParam], tune: TuneConfig, limit: int | None = None
) -> str:
    """The trials as a plain-text table, best first (at most ``limit`` rows)."""
    headers, table = _columns(rows, params, tune)
    shown = table[:limit] if limit else table
    text = format_table(headers, shown)
    if limit and len(table) > limit:
        text += f"\n({len(table) - limit} more in trials.csv)"
    return text


def write_report(
    output: Path,
    config: TrainingConfig,
    params: list[SearchParam],
    rows: list[TrialRow],
    best_config: TrainingConfig,
    stopped: str,
) -> dict[str, Path]:
    """Write ``trials.csv``, ``trials.md``, ``objective.png`` and ``best.yaml`` into ``output``.

    Returns:
        ``{"csv", "markdown", "plot", "best"}`` paths.
    """
    tune = config.tune
    headers, table = _columns(rows, params, tune)
    _, precise = _columns(rows, params, tune, precise=True)
    files = {
        "csv": output / "trials.csv",
        "markdown": output / "trials.md",
        "plot": output / "objective.png",
        "best": output / "best.yaml",
    }
    with open(files["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(headers)
        writer.writerows(precise)
    best = rows[0]
    completed = sum(r.status == "COMPLETED" for r in rows)
    overrides = " ".join(
        f"--set {p.key}={_label(p.decode(best.values[p.key]))}" for p in params if p.key in best.values
    )
    md = [
        f"# Hyperparameter search: {config.model.name}",
        "",
        f"- tuner: {tune.tuner} ({TUNERS[tune.tuner].description})",
        f"- objective: {tune.objective}, {OBJECTIVES[tune.objective].description} ({OBJECTIVES[tune.objective].direction})"
        + (f", mean over {tune.folds} folds" if tune.folds >= 2 else ""),
        f"- trials: {completed} finished of {len(rows)} ({stopped})",
        f"- best: trial {best.trial_id}, {tune.objective} = {best.score:.4f}",
        f"- best config: `best.yaml` (`shipyard train best.yaml`), i.e. `{overrides}`",
        "",
        markdown_table(headers, table),
        "",
        "![objective against each hyperparameter](objective.png)",
        "",
    ]
    files["markdown"].write_text("\n".join(md))
    plot_objective(rows, params, tune.objective, files["plot"])
    header = (
        f"# Best of {completed} trials of 'shipyard tune' ({tune.tuner}): trial {best.trial_id}, "
        f"{tune.objective} = {best.score:.4f}\n# Train it with: shipyard train {files['best'].name}\n"
    )
    files["best"].write_text(header + yaml.safe_dump(best_config.training_dump(), sort_keys=False))
    return files


def plot_objective(rows: list[TrialRow], params: list[SearchParam], objective: str, path: Path) -> None:
    """One panel per hyperparameter: the objective of each finished trial against its value; best marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.score is not None and not math.isnan(r.score)]
    n = len(params)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, p in zip(axes.flat, params, strict=False):
        xs: list[Any] = []
        ys = [r.score for r in done if p.key in r.values]
        if p.numeric:
            xs = [float(p.decode(r.values[p.key])) for r in done if p.key in r.values]
            if p.spec.log:
                ax.set_xscale("log")
        else:
            ticks = [p.display(raw) for raw in p.choices()]
            index = {tick: i for i, tick in enumerate(ticks)}
            xs = [index.get(r.display[p.key], 0) for r in done if p.key in r.values]
            ax.set_xticks(range(len(ticks)))
            ax.set_xticklabels(ticks, rotation=30, ha="right", fontsize=8)
        ax.scatter(xs, ys, s=28, alpha=0.75)
        if done and p.key in done[0].values:
            ax.scatter(xs[:1], ys[:1], s=140, marker="*", color="tab:red", label="best", zorder=3)
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel(p.key, fontsize=9)
        ax.set_ylabel(objective, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{objective} of {len(done)} trials", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = [
    "OBJECTIVES",
    "TUNERS",
    "SearchParam",
    "TrialRow",
    "TuneOutcome",
    "default_output",
    "distributed_role",
    "make_folds",
    "parse_space",
    "run_tune",
    "trial_config",
    "trials_table",
    "write_report",
]
