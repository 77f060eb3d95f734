"""Training: phase 1 trains the head on a frozen base, phase 2 (optional) fine-tunes the top of the base.

A run lives in ``<output>/<name>/<version>/``: the effective config, checkpoints, logs, BackupAndRestore
state, and in the end the model package. ``resume`` continues an interrupted run from its last epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from edge.config import ConfigError
from edge.files import write_json_atomic
from edge.manifest import InputContract, check_version_string
from training._tf import keras, tf
from training.config import TrainingConfig, load_training_config, require_data_dir
from training.distributed import Writer, make_strategy
from training.freeze import describe, trainable_summary
from training.models import (
    add_kernel_l2,
    base_layer_names,
    build_model,
    compile_model,
    image_size_for,
    set_fine_tune_trainable,
)
from training.schedules import ScheduledLearningRate

RUN_STATE = "run_state.json"
RUN_CONFIG = "config.yaml"


@dataclass
class TrainResult:
    """What a training run produced; ``strategy`` and ``replicas`` name the ``tf.distribute`` strategy it ran under,
    ``chief`` whether this process writes the run (false on the other workers of a multi-worker run)."""

    run_dir: Path
    model: Any
    history: dict[str, list[float]]
    datasets: Any
    epochs_run: int
    phase_epochs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    strategy: str = ""
    replicas: int = 1
    chief: bool = True


def new_version() -> str:
    """A sortable, tag-safe version string: ``YYYYmmdd-HHMMSS-ffffff``."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")


def configure_determinism(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic`` make TF ops deterministic too."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        os.environ["TF_DETERMINISTIC_OPS"] = "1"
        tf.config.experimental.enable_op_determinism()


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
    """Keeps ``run_state.json`` current so that ``--resume`` and users can see how far a run got (the chief only)."""

    def __init__(self, run_dir: Path, phase: int):
        super().__init__()
        self.run_dir, self.phase = run_dir, phase

    def on_epoch_end(self, epoch, logs=None):
        _update_state(self.run_dir, status="running", phase=self.phase, last_epoch=epoch + 1)


def _plateau_saver(writer: Writer, phase: int):
    """Saves the learning-rate plateau state of a phase into ``run_state.json`` (a no-op off the chief)."""

    def save(state: dict[str, Any]) -> None:
        if writer.chief:
            _update_state(writer.run_dir, **{f"lr_plateau_phase{phase}": state})

    return save


def _update_state(run_dir: Path, **values: Any) -> dict[str, Any]:
    path = run_dir / RUN_STATE
    state = json.loads(path.read_text()) if path.is_file() else {}
    state.update(values)
    state["updated"] = datetime.now(UTC).isoformat()
    write_json_atomic(path, state)
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


@dataclass(frozen=True)
class PhaseSpan:
    """The epochs of one phase: its starting rate, its length and its first (global) epoch."""

    rate: float
    epochs: int
    start: int = 0


def callbacks_for(
    run_dir: Path,
    config: TrainingConfig,
    phase: int,
    extra: list | None = None,
    *,
    val: Any = None,
    num_classes: int | None = None,
    span: PhaseSpan | None = None,
    writer: Writer | None = None,
) -> list:
    """The callbacks of one phase: run info, checkpoints, CSV and TensorBoard logs, early stopping, the
    learning-rate schedule with plateau reduction (:mod:`training.schedules`), BackupAndRestore and the
    state file (plus ``val_macro_f1`` when ``train.monitor`` watches it: then ``val`` and ``num_classes``
    are needed). ``writer`` says where this process writes (a non-chief worker: a temporary folder, and no
    state file); BackupAndRestore always uses ``run_dir``."""
    t = config.train
    writer = writer or Writer(run_dir, run_dir, True)
    ckpt = writer.write_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    logs = writer.write_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    mode = monitor_mode(t.monitor)
    span = span or PhaseSpan(t.learning_rate, t.epochs)
    cbs: list = []
    if t.monitor == VAL_MACRO_F1:
        if val is None or num_classes is None:
            raise ConfigError("train.monitor=val_macro_f1 needs the validation split to compute it")
        cbs.append(_ValMacroF1(val, num_classes))
    saved = read_state(run_dir).get(f"lr_plateau_phase{phase}") or {}
    cbs += [
        _RunInfo(phase),
        ScheduledLearningRate(t, span.rate, span.epochs, span.start, saved, _plateau_saver(writer, phase)),
        _PeriodicCheckpoint(ckpt, t.checkpoint_every),
        keras.callbacks.ModelCheckpoint(
            str(ckpt / "best.weights.h5"), monitor=t.monitor, mode=mode, save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.CSVLogger(str(logs / "history.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(logs / "tensorboard"), histogram_freq=0, write_graph=False),
        keras.callbacks.BackupAndRestore(backup_dir=str(run_dir / "backup" / f"phase{phase}")),
    ]
    if writer.chief:
        cbs.append(_StateWriter(run_dir, phase))
    if t.early_stopping_patience:
        cbs.append(
            keras.callbacks.EarlyStopping(
                monitor=t.monitor, mode=mode, patience=t.early_stopping_patience, restore_best_weights=True
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
    started = time.perf_counter()
    require_data_dir(config)
    # Multi-worker collectives must be configured before TensorFlow runs any op: make the strategy first.
    strategy = make_strategy(config.train.distribution)
    configure_determinism(config.train.seed, config.train.deterministic)
    height, width = image_size_for(config.model, config.data.image_size)
    datasets = _datasets(config, (height, width), int(strategy.num_replicas_in_sync))
    keras.utils.set_random_seed(config.train.seed)  # measuring the step memory built a model: seed the real one alike
    writer = _writer(config, Path(output), run_dir)
    _say(verbose, writer, f"batch size {datasets.plan.batch_size}: {datasets.plan.batch_reason}")
    phases = _Phases(writer, config, datasets, len(datasets.scan.labels), strategy, verbose, extra_callbacks)
    model, epochs = phases.run((height, width))
    where = {"strategy": type(strategy).__name__, "replicas": int(strategy.num_replicas_in_sync)}
    if writer.chief:
        _update_state(writer.run_dir, status="trained", epochs=sum(epochs.values()), phases=epochs, **where)
    writer.close()
    return TrainResult(
        run_dir=writer.run_dir,
        model=model,
        history=read_history(writer.run_dir),
        datasets=datasets,
        epochs_run=sum(epochs.values()),
        phase_epochs=epochs,
        seconds=time.perf_counter() - started,
        chief=writer.chief,
        **where,
    )


def _datasets(config: TrainingConfig, size: tuple[int, int], replicas: int) -> Any:
    """The data pipelines, batched by the configured model's measured step memory times the replicas."""
    from training.data import build_datasets
    from training.step_memory import measure_step_memory

    def memory(num_classes: int):
        return measure_step_memory(config, num_classes, size)

    contract = InputContract(height=size[0], width=size[1])
    return build_datasets(config.data, contract, memory=memory, replicas=replicas)


def _writer(config: TrainingConfig, output: Path, run_dir: Path | None) -> Writer:
    """Who writes this run where: the chief creates a new run directory (when not resuming one)."""
    if run_dir is None:
        path = output / config.model.name / str(config.train.version)
        writer = Writer.for_run(path, config.train.distribution)
        if writer.chief:
            made = prepare_run_dir(config, output)
            writer = Writer(made, made, True)
        return writer
    return Writer.for_run(Path(run_dir), config.train.distribution)


def _say(verbose: int | str, writer: Writer, line: str) -> None:
    """Print a line about the run (on the chief, unless Keras is quiet)."""
    if verbose != 0 and writer.chief:
        print(line, flush=True)


def _local_copy(model: Any) -> Any:
    """The trained model outside the multi-worker strategy (its ``predict`` would wait for the other workers)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _float32_config(value: Any) -> Any:
    """A layer config with every mixed-precision dtype policy replaced by plain float32."""
    if isinstance(value, dict):
        if value.get("class_name") in ("Policy", "DTypePolicy") and "config" in value:
            return "float32"
        return {k: _float32_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_float32_config(v) for v in value]
    return "float32" if value in ("mixed_float16", "mixed_bfloat16") else value


def float32_model(model: Any) -> Any:
    """The same model with float32 weights and compute (a model trained with ``mixed_float16``, made exportable).

    Mixed precision keeps float32 variables and computes in float16; the saved model would carry that
    policy, and TFLite cannot convert its float16 convolutions (``'tf.Conv2D' op is neither a custom op
    nor a flex op``). The copy is rebuilt from the model's config with every policy set to float32 (same
    layers, names and trainable flags) and gets the trained weights.
    """
    import training.layers
    import training.losses  # noqa: F401

    copy = keras.Model.from_config(_float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


@contextlib.contextmanager
def _precision_policy(mixed: bool) -> Iterator[None]:
    """Keras' global ``mixed_float16`` policy while the block runs (with ``mixed``), float32 afterwards."""
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        if mixed:
            keras.mixed_precision.set_global_policy("float32")


@dataclass
class _Phases:
    """The two phases of a run: the head on a frozen base, then (optionally) fine-tuning the base's top."""

    writer: Writer
    config: TrainingConfig
    datasets: Any
    num_classes: int
    strategy: Any
    verbose: int | str
    extra_callbacks: list | None

    def _fit(self, model: Any, phase: int, span: PhaseSpan) -> Any:
        return model.fit(
            self.datasets.train,
            validation_data=self.datasets.val,
            class_weight=self.datasets.class_weights,
            verbose=self.verbose,
            callbacks=callbacks_for(
                self.writer.run_dir,
                self.config,
                phase,
                self.extra_callbacks,
                val=self.datasets.val,
                num_classes=self.num_classes,
                span=span,
                writer=self.writer,
            ),
            initial_epoch=span.start,
            epochs=span.start + span.epochs,
        )

    def run(self, size: tuple[int, int]) -> tuple[Any, dict[str, int]]:
        """Build and compile the model, train the head, then fine-tune when enabled.

        Returns:
            (the trained model, float32 and local to this worker; epochs per phase).
        """
        config = self.config
        with _precision_policy(config.train.mixed_precision):
            with self.strategy.scope():
                model = build_model(config.model, self.num_classes, size)
                compile_model(model, config.train, self.num_classes)
            base_names = base_layer_names(model)
            _say(self.verbose, self.writer, describe(trainable_summary(model, base_names), "phase 1 (head)"))
            epochs = {"head": self.head(model)}
            if config.train.fine_tune.enabled:
                epochs["fine_tune"] = self.fine_tune(model, base_names, start=epochs["head"])
            if config.train.distribution == "multi_worker":
                model = _local_copy(model)
        if config.train.mixed_precision:
            model = float32_model(model)
        return model, epochs

    def head(self, model: Any) -> int:
        """Phase 1 (skipped on resume when it finished): train the head; return its epochs."""
        run_dir = self.writer.run_dir
        phase1_file = run_dir / "checkpoints" / "phase1_final.weights.h5"
        state = read_state(run_dir)
        if state.get("phase1_epochs") and phase1_file.is_file():
            model.load_weights(str(phase1_file))
            return int(state["phase1_epochs"])
        t = self.config.train
        epochs = _epochs_done(self._fit(model, 1, PhaseSpan(t.learning_rate, t.epochs)))
        model.save_weights(str(self.writer.write_dir / "checkpoints" / "phase1_final.weights.h5"))
        if self.writer.chief:
            _update_state(run_dir, phase1_epochs=epochs)
        return epochs

    def fine_tune(self, model: Any, base_names: list[str], start: int) -> int:
        """Phase 2: unfreeze ``fine_tune.unfreeze`` (default: the base's top layers), with ``fine_tune.l2`` on
        their kernels, and train on at its learning rate; return its epochs."""
        ft = self.config.train.fine_tune
        with self.strategy.scope():
            pretrained = getattr(model, "_shipyard_pretrained", True)
            unfrozen = set_fine_tune_trainable(model, base_names, ft, freeze_batchnorm=pretrained)
            if ft.l2:
                add_kernel_l2(model, unfrozen, ft.l2)
            compile_model(model, self.config.train, self.num_classes, learning_rate=ft.learning_rate)
        _say(self.verbose, self.writer, describe(trainable_summary(model, base_names), "phase 2 (fine-tuning)"))
        return _epochs_done(self._fit(model, 2, PhaseSpan(ft.learning_rate, ft.epochs, start)), start)


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
