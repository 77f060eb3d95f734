"""Training: phase 1 trains the head on a frozen base, phase 2 (optional) fine-tunes the top of the base.

A run lives in ``<output>/<name>/<version>/``: the effective config, checkpoints, logs, BackupAndRestore
state, and in the end the model package. ``resume`` continues an interrupted run from its last epoch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from edge.config import ConfigError
from edge.manifest import InputContract, check_version_string
from training._tf import keras, tf
from training.config import TrainingConfig, load_training_config, require_data_dir
from training.models import base_layer_names, build_model, compile_model, image_size_for, set_base_trainable

RUN_STATE = "run_state.json"
RUN_CONFIG = "config.yaml"


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    model: Any
    history: dict[str, list[float]]
    datasets: Any
    epochs_run: int
    phase_epochs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def new_version() -> str:
    """A sortable, tag-safe version string: ``YYYYmmdd-HHMMSS-ffffff``."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")


def configure_determinism(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic`` make TF ops deterministic too."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        os.environ["TF_DETERMINISTIC_OPS"] = "1"
        tf.config.experimental.enable_op_determinism()


def make_strategy(distribution: str):
    """The ``tf.distribute`` strategy for ``train.distribution``; multi_worker reads ``TF_CONFIG``."""
    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribution == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError(
                "train.distribution = 'multi_worker' needs the TF_CONFIG environment variable "
                "(cluster and task) on every worker; see the tf.distribute MultiWorkerMirroredStrategy docs"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


class _RunInfo(keras.callbacks.Callback):
    """Adds the learning rate and the phase to each epoch's logs (so history.csv has them)."""

    def __init__(self, phase: int):
        super().__init__()
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.backend.get_value(self.model.optimizer.learning_rate))
            logs["phase"] = self.phase


class _PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves the weights every ``every`` epochs as ``checkpoints/epoch-NNN.weights.h5``."""

    def __init__(self, directory: Path, every: int):
        super().__init__()
        self.directory, self.every = directory, every

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self.model.save_weights(str(self.directory / f"epoch-{epoch + 1:03d}.weights.h5"))


class _StateWriter(keras.callbacks.Callback):
    """Keeps ``run_state.json`` current so that ``--resume`` and users can see how far a run got."""

    def __init__(self, run_dir: Path, phase: int):
        super().__init__()
        self.run_dir, self.phase = run_dir, phase

    def on_epoch_end(self, epoch, logs=None):
        _update_state(self.run_dir, status="running", phase=self.phase, last_epoch=epoch + 1)


def _update_state(run_dir: Path, **values: Any) -> dict[str, Any]:
    path = run_dir / RUN_STATE
    state = json.loads(path.read_text()) if path.is_file() else {}
    state.update(values)
    state["updated"] = datetime.now(UTC).isoformat()
    path.write_text(json.dumps(state, indent=2))
    return state


def read_state(run_dir: Path) -> dict[str, Any]:
    """The ``run_state.json`` of a run directory (empty dict when there is none)."""
    path = Path(run_dir) / RUN_STATE
    return json.loads(path.read_text()) if path.is_file() else {}


#: A log that Keras does not compute: :class:`_ValMacroF1` adds it when ``train.monitor`` names it.
VAL_MACRO_F1 = "val_macro_f1"


class _ValMacroF1(keras.callbacks.Callback):
    """Adds ``val_macro_f1`` (macro-averaged F1 on the validation split) to each epoch's logs.

    Runs first among the callbacks, so that checkpoints, early stopping, learning-rate reduction and the
    CSV log see the value. Costs one more pass over the validation split per epoch.
    """

    def __init__(self, val, num_classes: int):
        super().__init__()
        self.val, self.num_classes = val, num_classes

    def on_epoch_end(self, epoch, logs=None):
        from edge.evaluate import classification_metrics
        from training.evaluate import predict_dataset

        probs, y = predict_dataset(self.model, self.val)
        labels = [str(i) for i in range(self.num_classes)]
        f1 = classification_metrics(y, probs.argmax(axis=1), labels)["macro"]["f1"] if len(y) else 0.0
        if logs is not None:
            logs[VAL_MACRO_F1] = float(f1)


def monitor_mode(monitor: str) -> str:
    """``"min"`` for a loss, ``"max"`` for everything else (accuracy, F1, AUC...)."""
    return "min" if "loss" in monitor else "max"


def callbacks_for(
    run_dir: Path,
    config: TrainingConfig,
    phase: int,
    extra: list | None = None,
    *,
    val: Any = None,
    num_classes: int | None = None,
) -> list:
    """The callbacks of one phase: run info, checkpoints, CSV and TensorBoard logs, early stopping,
    learning-rate reduction, BackupAndRestore and the state file (plus ``val_macro_f1`` when
    ``train.monitor`` watches it: then ``val`` and ``num_classes`` are needed)."""
    t = config.train
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    mode = monitor_mode(t.monitor)
    cbs: list = []
    if t.monitor == VAL_MACRO_F1:
        if val is None or num_classes is None:
            raise ConfigError("train.monitor=val_macro_f1 needs the validation split to compute it")
        cbs.append(_ValMacroF1(val, num_classes))
    cbs += [
        _RunInfo(phase),
        _PeriodicCheckpoint(ckpt, t.checkpoint_every),
        keras.callbacks.ModelCheckpoint(
            str(ckpt / "best.weights.h5"), monitor=t.monitor, mode=mode, save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.CSVLogger(str(logs / "history.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(logs / "tensorboard"), histogram_freq=0, write_graph=False),
        keras.callbacks.BackupAndRestore(backup_dir=str(run_dir / "backup" / f"phase{phase}")),
        _StateWriter(run_dir, phase),
    ]
    if t.early_stopping_patience:
        cbs.append(
            keras.callbacks.EarlyStopping(
                monitor=t.monitor, mode=mode, patience=t.early_stopping_patience, restore_best_weights=True
            )
        )
    if t.reduce_lr_patience:
        cbs.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=t.monitor,
                mode=mode,
                patience=t.reduce_lr_patience,
                factor=t.reduce_lr_factor,
                min_lr=t.min_learning_rate,
            )
        )
    return cbs + list(extra or [])


def prepare_run_dir(config: TrainingConfig, output: Path) -> Path:
    """Create ``<output>/<name>/<version>/`` and write the effective config into it."""
    version = config.train.version or new_version()
    check_version_string(version, "train.version")
    run_dir = Path(output) / config.model.name / version
    if (run_dir / "manifest.json").exists():
        raise ConfigError(f"{run_dir} already holds a finished package; choose another train.version or output folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_CONFIG).write_text(yaml.safe_dump(config.training_dump(), sort_keys=False))
    _update_state(run_dir, status="running", version=version, phase=1, last_epoch=0)
    return run_dir


def find_resumable(output: Path, name: str) -> Path:
    """The newest run under ``<output>/<name>/`` that has not finished."""
    root = Path(output) / name
    candidates = sorted(
        (d for d in root.glob("*") if d.is_dir() and read_state(d).get("status") not in (None, "done")),
        key=lambda d: d.name,
    )
    if not candidates:
        raise ConfigError(f"no interrupted run of {name!r} under {root}; start one with 'shipyard train CONFIG'")
    return candidates[-1]


def load_run_config(run_dir: Path) -> TrainingConfig:
    """The config a run was started with."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a Shipyard run directory (no {RUN_CONFIG})")
    return load_training_config(path)


def train(
    config: TrainingConfig,
    output: Path | str = "runs",
    *,
    run_dir: Path | None = None,
    verbose: int | str = "auto",
    extra_callbacks: list | None = None,
) -> TrainResult:
    """Train a model as configured; with ``run_dir`` given, resume that (interrupted) run.

    Args:
        config: the pipeline config (data, model, train sections are used).
        output: parent folder of runs (``<output>/<name>/<version>``).
        run_dir: an existing run directory to resume (BackupAndRestore restores its last epoch).
        verbose: Keras' fit verbosity.
        extra_callbacks: more Keras callbacks for both phases.

    Returns:
        A :class:`TrainResult` with the trained model (not yet packaged).

    Raises:
        ConfigError / ShipyardError: bad data folder, config or weights.
    """
    from training.data import build_datasets

    started = time.perf_counter()
    require_data_dir(config)
    # Multi-worker collectives must be configured before TensorFlow runs any op: make the strategy first.
    strategy = make_strategy(config.train.distribution)
    configure_determinism(config.train.seed, config.train.deterministic)
    height, width = image_size_for(config.model, config.data.image_size)
    contract = InputContract(height=height, width=width)
    datasets = build_datasets(config.data, contract)
    num_classes = len(datasets.scan.labels)
    if run_dir is None:
        run_dir = prepare_run_dir(config, Path(output))
    state = read_state(run_dir)

    if config.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            model = build_model(config.model, num_classes, (height, width))
            compile_model(model, config.train, num_classes)
        base_names = base_layer_names(model)
        fit_kwargs = {
            "validation_data": datasets.val,
            "class_weight": datasets.class_weights,
            "verbose": verbose,
        }
        phase1_file = run_dir / "checkpoints" / "phase1_final.weights.h5"
        phases: dict[str, int] = {}
        if state.get("phase1_epochs") and phase1_file.is_file():
            model.load_weights(str(phase1_file))
            phases["head"] = int(state["phase1_epochs"])
        else:
            h1 = model.fit(
                datasets.train,
                epochs=config.train.epochs,
                callbacks=callbacks_for(run_dir, config, 1, extra_callbacks, val=datasets.val, num_classes=num_classes),
                **fit_kwargs,
            )
            phases["head"] = _epochs_done(h1)
            model.save_weights(str(phase1_file))
            _update_state(run_dir, phase1_epochs=phases["head"])
        ft = config.train.fine_tune
        if ft.enabled:
            with strategy.scope():
                set_base_trainable(
                    model, base_names, ft.unfreeze_layers, freeze_batchnorm=getattr(model, "_shipyard_pretrained", True)
                )
                compile_model(model, config.train, num_classes, learning_rate=ft.learning_rate)
            start = phases["head"]
            h2 = model.fit(
                datasets.train,
                initial_epoch=start,
                epochs=start + ft.epochs,
                callbacks=callbacks_for(run_dir, config, 2, extra_callbacks, val=datasets.val, num_classes=num_classes),
                **fit_kwargs,
            )
            phases["fine_tune"] = _epochs_done(h2, start)
    finally:
        if config.train.mixed_precision:
            keras.mixed_precision.set_global_policy("float32")
    history = read_history(run_dir)
    epochs_run = sum(phases.values())
    _update_state(run_dir, status="trained", epochs=epochs_run, phases=phases)
    return TrainResult(
        run_dir=run_dir,
        model=model,
        history=history,
        datasets=datasets,
        epochs_run=epochs_run,
        phase_epochs=phases,
        seconds=time.perf_counter() - started,
    )


def _epochs_done(h, start: int = 0) -> int:
    epochs = getattr(h, "epoch", None) or []
    return (max(epochs) + 1 - start) if epochs else 0


def read_history(run_dir: Path) -> dict[str, list[float]]:
    """The per-epoch history of a run from ``logs/history.csv`` (both phases, resumed epochs once)."""
    import csv

    path = Path(run_dir) / "logs" / "history.csv"
    if not path.is_file():
        return {}
    rows: dict[int, dict[str, str]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("epoch", "").isdigit():
                rows[int(row["epoch"])] = row  # a resumed epoch overwrites the interrupted one
    history: dict[str, list[float]] = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            if key and value not in (None, ""):
                try:
                    history.setdefault(key, []).append(float(value))
                except ValueError:
                    continue
    return history
