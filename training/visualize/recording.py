"""Data recorded while training for the pictures: histograms of a few layers and predicted classes per epoch.

:func:`recording_callbacks` (on by default, see ``report.record``) returns one Keras callback that drives
two recorders; both save their file after every record (atomically), so a killed run keeps what it
recorded and a resumed run continues it.
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ConfigError
from edge.files import write_json_atomic
from edge.manifest import InputContract
from training.config import TrainingConfig
from training.visualize.common import (
    BINS,
    HISTOGRAMS_FILE,
    PREDICTIONS_FILE,
    TENSORBOARD_HISTOGRAMS,
    json_default,
    log,
    read_json,
)


def _hist(values: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"counts": [], "edges": [], "size": 0}
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:  # a constant tensor (zero biases at the start): a narrow bin range around it
        lo, hi = lo - max(1e-6, 1e-3 * abs(lo)), hi + max(1e-6, 1e-3 * abs(hi))
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return {
        "counts": counts.tolist(),
        "edges": [float(f"{e:.6g}") for e in edges],
        "size": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _short(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


class ValidationSample:
    """A fixed, seeded set of validation images (training images if there is no validation split).

    Decoded once, on first use, from a scan of ``data.path`` (the same split training uses).

    Args:
        config: the pipeline config (``data`` and ``report`` sections are used).
        limit: at most this many images.
    """

    def __init__(self, config: TrainingConfig, limit: int):
        self.config = config
        self.limit = limit
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self.split = "validation"

    def get(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 images, int labels)`` at the given size, in a fixed order."""
        if self._arrays is None:
            self._arrays = self._load(InputContract(height=height, width=width))
        return self._arrays

    def _load(self, contract: InputContract) -> tuple[np.ndarray, np.ndarray]:
        from training.data import DataError, load_split_arrays, scan_dataset

        scan = scan_dataset(self.config.data.path, self.config.data)
        self.split = "validation" if scan.splits.get("val") else "training"
        samples = scan.splits.get("val") or scan.splits["train"]
        if len(samples) > self.limit:
            rng = np.random.default_rng(self.config.report.seed)
            samples = [samples[i] for i in np.sort(rng.choice(len(samples), self.limit, replace=False))]
        try:
            return load_split_arrays(samples, contract, max_pixels=self.config.data.max_pixels)
        except DataError:  # keep the images that decode
            return self._decode_each(samples, contract)

    def _decode_each(self, samples: list, contract: InputContract) -> tuple[np.ndarray, np.ndarray]:
        from edge.preprocess import decode_file

        kept = []
        for s in samples:
            try:
                kept.append((decode_file(s.path, contract, max_pixels=self.config.data.max_pixels), s.label))
            except Exception:
                continue
        return np.stack([k[0] for k in kept]), np.array([k[1] for k in kept], np.int32)

    def batch(self, height: int, width: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """A fixed, seeded mix of ``size`` of the images (the splits are sorted by class)."""
        images, labels = self.get(height, width)
        order = np.random.default_rng(self.config.report.seed).permutation(len(labels))[:size]
        return images[order], labels[order]


class _Recorder:
    """Shared plumbing: a JSON file under the run directory, rewritten atomically after each record."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.state: dict[str, Any] = {}
        self.seconds = 0.0

    def load(self, empty: dict[str, Any]) -> None:
        self.state = read_json(self.path) or empty
        self.seconds = float(self.state.get("seconds", 0.0))

    def save(self) -> None:
        self.state["seconds"] = round(self.seconds, 3)
        write_json_atomic(self.path, self.state, indent=None, default=json_default)

    def close(self) -> None:
        """Release resources (a failed recorder is closed and skipped for the rest of the run)."""


class HistogramRecorder(_Recorder):
    """Records histograms of weights, activations and gradients of a few layers while training.

    Records before training (epoch 0), every ``every`` epochs, and after the last epoch of each phase.
    Activations and gradients use one fixed batch of validation images, in inference mode (Dropout off,
    BatchNormalization statistics untouched), so the model's state and training are unchanged.

    Args:
        run_dir: the run directory; writes ``logs/histograms.json`` and, with ``tensorboard``,
            ``logs/tensorboard/histograms`` (TensorBoard's HISTOGRAMS tab).
        sample: the fixed images (the first ``batch`` are used).
        layers: layer names; default: the first and the last base layer with a kernel, and the output.
        every: record every N epochs.
        batch: images in the fixed batch.
        tensorboard: also write ``tf.summary.histogram`` events.
    """

    def __init__(
        self,
        run_dir: Path,
        sample: ValidationSample,
        *,
        layers: list[str] | None = None,
        every: int = 2,
        batch: int = 16,
        tensorboard: bool = True,
    ):
        super().__init__(Path(run_dir) / HISTOGRAMS_FILE)
        self.run_dir = Path(run_dir)
        self.sample = sample
        self.layers_asked = layers
        self.every = every
        self.batch = batch
        self.tensorboard = tensorboard
        self._writer = None
        self._probe = None
        self._last_epoch = 0
        self._phase = 1

    def _layers(self, model) -> list:
        from training.models import OUTPUT_NAME, base_layer_names

        if self.layers_asked:
            found = {layer.name: layer for layer in model.layers}
            missing = [n for n in self.layers_asked if n not in found]
            if missing:
                with_weights = [layer.name for layer in model.layers if layer.weights]
                raise ConfigError(
                    f"report.record_layers {missing} are not layers of the model; layers with weights: "
                    f"{', '.join(with_weights[:12])}{' ...' if len(with_weights) > 12 else ''}"
                )
            return [found[n] for n in self.layers_asked]
        base = set(base_layer_names(model))
        kernels = [
            layer
            for layer in model.layers
            if layer.name in base and any(_short(w) in ("kernel", "depthwise_kernel") for w in layer.weights)
        ]
        chosen = [*kernels[:1], *kernels[-1:], model.get_layer(OUTPUT_NAME)]
        seen: set[str] = set()
        return [layer for layer in chosen if not (layer.name in seen or seen.add(layer.name))]

    def begin(self, model) -> None:
        """Load earlier records (a resumed run), pick the layers, record epoch 0 on a fresh run."""
        from training._tf import keras, tf

        self.load({"layers": [], "every": self.every, "batch": self.batch, "bins": BINS, "records": []})
        layers = self._layers(model)
        self.state["layers"] = [layer.name for layer in layers]
        self._chosen = layers
        self._probe = keras.Model(model.inputs, [model.outputs[0], *[layer.output for layer in layers]])
        if self.tensorboard and self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.run_dir / TENSORBOARD_HISTOGRAMS))
        if not self.state["records"]:
            self.record(model, 0)

    def epoch_end(self, model, epoch: int, logs: dict[str, Any]) -> None:
        """Record after every ``every``-th epoch."""
        self._last_epoch = epoch + 1
        self._phase = int(logs.get("phase", self._phase) or 1)
        if self._last_epoch % self.every == 0:
            self.record(model, self._last_epoch)

    def end(self, model) -> None:
        """Record the final state of the phase (unless its last epoch was just recorded), close TensorBoard."""
        records = self.state.get("records", [])
        if self._last_epoch and (not records or records[-1]["epoch"] != self._last_epoch):
            self.record(model, self._last_epoch)
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def record(self, model, epoch: int) -> None:
        """Histograms of the chosen layers now, stored under ``epoch``."""
        started = time.perf_counter()
        variables = {
            layer.name: [v for v in layer.weights if "moving_" not in v.name] for layer in self._chosen
        }
        loss, outputs, grad_of = self._loss_and_gradients(model, [v for vs in variables.values() for v in vs])
        rec: dict[str, Any] = {
            "epoch": epoch,
            "phase": self._phase,
            "loss": float(loss.numpy()),
            "trainable": {layer.name: bool(layer.trainable) for layer in self._chosen},
            "weights": {},
            "activations": {},
            "gradients": {},
        }
        for layer, act in zip(self._chosen, outputs[1:], strict=True):
            rec["weights"][layer.name] = {_short(v): _hist(v.numpy()) for v in variables[layer.name]}
            rec["activations"][layer.name] = _hist(act.numpy())
            rec["gradients"][layer.name] = {
                _short(v): _hist(grad_of[id(v)].numpy()) for v in variables[layer.name]
            }
        if self._writer is not None:
            self._write_tensorboard(rec, epoch)
        # a resumed epoch replaces its record
        self.state["records"] = [*(r for r in self.state["records"] if r["epoch"] < epoch), rec]
        self.seconds += time.perf_counter() - started
        self.save()

    def _loss_and_gradients(self, model, flat: list) -> tuple[Any, list, dict[int, Any]]:
        """(loss, probe outputs, ``{id(variable): gradient}``) on the fixed batch, in inference mode."""
        from training._tf import keras, tf

        h, w = (int(d) for d in model.input_shape[1:3])
        images, labels = self.sample.batch(h, w, self.batch)
        x = tf.constant(images, tf.float32)
        y = tf.constant(labels)
        loss_fn = getattr(model, "loss", None)

        def step():
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                for v in flat:
                    tape.watch(v)
                outputs = self._probe(x, training=False)
                probs = tf.cast(outputs[0], tf.float32)
                # Per-image losses, averaged here: a Loss object's own reduction refuses replica contexts.
                if isinstance(loss_fn, keras.losses.Loss):
                    loss = tf.reduce_mean(loss_fn.call(y, probs))
                else:
                    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
            grads = tape.gradient(loss, flat)
            return (
                loss,
                outputs,
                [tf.zeros_like(v) if g is None else g for v, g in zip(flat, grads, strict=True)],
            )

        # In a replica context, so that distributed (mirrored) variables can be watched; the first replica's
        # values are kept (the default strategy simply calls step()).
        strategy = model.distribute_strategy
        loss, outputs, grads = (strategy.experimental_local_results(part)[0] for part in strategy.run(step))
        return loss, outputs, {id(v): g for v, g in zip(flat, grads, strict=True)}

    def _write_tensorboard(self, rec: dict[str, Any], epoch: int) -> None:
        """Write the record's histograms as TensorBoard histogram summaries (no second bucketing)."""
        from tensorboard.plugins.histogram import metadata

        from training._tf import tf

        def write(tag: str, hist: dict[str, Any]) -> None:
            if not hist.get("counts"):
                return
            edges = np.asarray(hist["edges"], dtype=np.float64)
            buckets = np.stack([edges[:-1], edges[1:], np.asarray(hist["counts"], np.float64)], axis=1)
            tf.summary.write(
                tag, tf.constant(buckets), step=epoch, metadata=metadata.create_summary_metadata(tag, "")
            )

        with self._writer.as_default():
            for kind in ("weights", "gradients"):
                for layer, hists in rec[kind].items():
                    for name, hist in hists.items():
                        write(f"{kind}/{layer}/{name}", hist)
            for layer, hist in rec["activations"].items():
                write(f"activations/{layer}", hist)
        self._writer.flush()


class PredictionRecorder(_Recorder):
    """Records the histogram of predicted classes on the validation images after every epoch.

    Args:
        run_dir: the run directory; writes ``logs/val_predictions.json``.
        sample: the validation images.
    """

    def __init__(self, run_dir: Path, sample: ValidationSample):
        super().__init__(Path(run_dir) / PREDICTIONS_FILE)
        self.sample = sample
        self._count = None

    def begin(self, model) -> None:
        """Load earlier records (a resumed run) and the true class counts; compile the counting step."""
        from training._tf import tf

        self.load({"epochs": []})
        n_classes = int(model.outputs[0].shape[-1])

        # One traced function per phase: ~3x faster than eager calls, ~10x faster than model.predict here.
        @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)])
        def count(images):
            probs = model(tf.cast(images, tf.float32), training=False)
            return tf.math.bincount(tf.cast(tf.argmax(probs, axis=1), tf.int32), minlength=n_classes)

        self._count = count
        h, w = (int(d) for d in model.input_shape[1:3])
        _, labels = self.sample.get(h, w)
        self.state["true_counts"] = np.bincount(labels, minlength=n_classes).tolist()
        self.state["images"] = len(labels)
        self.state["split"] = self.sample.split

    def epoch_end(self, model, epoch: int, logs: dict[str, Any]) -> None:
        """Predict the validation images and count the predicted classes."""
        started = time.perf_counter()
        h, w = (int(d) for d in model.input_shape[1:3])
        images, _ = self.sample.get(h, w)
        counts = sum(self._count(images[i : i + 128]).numpy() for i in range(0, len(images), 128))
        row = {"epoch": epoch + 1, "phase": int(logs.get("phase", 1) or 1), "counts": counts.tolist()}
        rows = [r for r in self.state["epochs"] if r["epoch"] < epoch + 1]
        self.state["epochs"] = [*rows, row]
        self.seconds += time.perf_counter() - started
        self.save()

    def end(self, model) -> None:
        """Nothing to finish (the file is saved after every epoch)."""


@functools.cache
def _callback_class() -> type:
    """The Keras callback that drives the recorders (built on first use: TensorFlow loads lazily)."""
    from training._tf import keras

    class RecordingCallback(keras.callbacks.Callback):
        """Calls each recorder; one that fails logs a warning and stops, training goes on."""

        def __init__(self, recorders: list[_Recorder]):
            super().__init__()
            self.recorders = recorders
            self.failed: set[int] = set()

        def _each(self, method: str, *args: Any) -> None:
            for i, recorder in enumerate(self.recorders):
                if i in self.failed:
                    continue
                try:
                    getattr(recorder, method)(self.model, *args)
                except Exception as exc:
                    self.failed.add(i)
                    log.warning(
                        "%s stopped recording: %s: %s", type(recorder).__name__, type(exc).__name__, exc
                    )
                    with contextlib.suppress(Exception):
                        recorder.close()

        def on_train_begin(self, logs=None):
            self._each("begin")

        def on_epoch_end(self, epoch, logs=None):
            self._each("epoch_end", epoch, logs or {})

        def on_train_end(self, logs=None):
            self._each("end")

    return RecordingCallback


def recording_callbacks(config: TrainingConfig, run_dir: Path | str) -> list:
    """The Keras callbacks that record histograms and validation predictions into ``run_dir/logs``.

    Empty when ``report.record`` is off, and for ``train.distribution: multi_worker`` (every worker
    would record the same thing into its own folder).

    Args:
        config: the pipeline config (``report``, ``data`` sections).
        run_dir: the run directory (``<output>/<name>/<version>``).

    Returns:
        A list with one callback, or an empty list.
    """
    r = config.report
    if not r.record:
        return []
    if config.train.distribution == "multi_worker":
        log.info("recording histograms is off for multi-worker training")
        return []
    sample = ValidationSample(config, max(r.val_prediction_images, r.record_batch))
    recorders: list[_Recorder] = [
        HistogramRecorder(
            Path(run_dir),
            sample,
            layers=r.record_layers,
            every=r.record_every,
            batch=r.record_batch,
            tensorboard=r.tensorboard_histograms,
        ),
        PredictionRecorder(Path(run_dir), sample),
    ]
    return [_callback_class()(recorders)]
