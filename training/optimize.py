"""Optimization and export: one registry of variants drives building, evaluation, the report and the benchmark.

:data:`VARIANTS` maps a variant's file name (``int8.tflite``, ``model.onnx``, ``saved_model``...) to a
:class:`VariantSpec`: how to build it, its format, whether it needs representative data or fine-tuning,
and which parity gate it must pass. :func:`optimize_model` builds every requested variant from a Keras
model into a folder and checks it with the edge runners; :func:`run_optimize` does that for a model
package and rewrites its manifest and report. A variant that cannot be built is a row with the reason,
never a crash of the whole run.

The conversions are pure: :func:`convert_to_tflite` and :func:`convert_to_onnx` return bytes, and the
model transforms (:func:`quantize_aware_model`, :func:`prune_model`, :func:`cluster_model`) return new
models, leaving the one they were given untouched.

Every variant takes the ``uint8`` pixels of the input contract through its runner: the float variants
have a ``float32`` input holding 0..255 (the runner casts), the integer ones a ``uint8`` input with its
scale and zero point (the runner quantizes). Scaling stays inside the graph, as in the Keras model.

TensorFlow is imported inside the functions that need it, so that importing this module (for the CLI's
choices) stays cheap.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.config import ConfigError
from edge.errors import ShipyardError
from edge.manifest import InputContract, Manifest, QuantParams, VariantInfo

VARIANTS_DIR = "variants"
OUTPUT_LAYER = "probabilities"
EVAL_BATCH = 64

GateKind = Literal["float", "fp16", "dynamic", "int8"]
Status = Literal["passed", "failed_gate", "failed_export", "not_checked"]


class OptimizeError(ShipyardError):
    """Optimization could not run at all (no such variant, a package without its model...)."""


class NotApplicableError(OptimizeError):
    """A technique cannot be applied to this model; the message says why and what would make it apply."""


# ------------------------------------------------------------------------------------ quantization


@dataclass(frozen=True)
class QuantizationConfig:
    """How :func:`convert_to_tflite` quantizes. Build it with a named constructor.

    Attributes:
        kind: ``"none"`` (float32), ``"float16"`` (float16 weights), ``"dynamic"`` (int8 weights,
            activations quantized at run time) or ``"int8"`` (everything integer, ``uint8`` input and output).
        representative_samples: images used to calibrate activation ranges (``int8`` only).
    """

    kind: Literal["none", "float16", "dynamic", "int8"] = "none"
    representative_samples: int = 0

    @classmethod
    def for_float32(cls) -> QuantizationConfig:
        """A plain float32 conversion."""
        return cls("none")

    @classmethod
    def for_float16(cls) -> QuantizationConfig:
        """Float16 weights (half the size; CPUs compute in float32 after dequantizing once)."""
        return cls("float16")

    @classmethod
    def for_dynamic(cls) -> QuantizationConfig:
        """Dynamic-range quantization: int8 weights, float input and output."""
        return cls("dynamic")

    @classmethod
    def for_int8(cls, representative_samples: int = 100) -> QuantizationConfig:
        """Full integer quantization with ``uint8`` input and output.

        Raises:
            ConfigError: ``representative_samples`` is below 1.
        """
        if representative_samples < 1:
            raise ConfigError(
                f"int8 quantization needs representative images to calibrate ranges; got representative_samples="
                f"{representative_samples}. Set optimize.representative_samples to 100 or so"
            )
        return cls("int8", representative_samples)

    @property
    def needs_representative(self) -> bool:
        return self.kind == "int8"

    def apply(self, converter: Any, representative: np.ndarray | None) -> None:
        """Set a ``tf.lite.TFLiteConverter`` up for this quantization (in place).

        Raises:
            OptimizeError: int8 without representative images.
        """
        from training._tf import tf

        if self.kind == "none":
            return
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.kind == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif self.kind == "int8":
            if representative is None or len(representative) == 0:
                raise OptimizeError(
                    "int8 conversion needs representative images from the training split and got none; "
                    "make the package's training data available (--data DIR)"
                )
            images = np.asarray(representative)[: self.representative_samples]

            def generate():
                for i in range(len(images)):
                    yield [images[i : i + 1].astype(np.float32)]

            converter.representative_dataset = generate
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8


def convert_to_tflite(
    model: Any, quantization: QuantizationConfig, representative: np.ndarray | None = None
) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer.

    Args:
        model: a Keras 2 model taking float32 0..255 pixels.
        quantization: see :class:`QuantizationConfig`.
        representative: ``uint8`` (or float) images ``(N, H, W, 3)`` for int8 calibration.

    Returns:
        The ``.tflite`` file's bytes.

    Raises:
        OptimizeError: int8 without representative images.
        Exception: whatever the converter raises for an op it cannot convert.
    """
    from training._tf import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    quantization.apply(converter, representative)
    with warnings.catch_warnings():
        # uint8 input/output of a QAT model: the converter takes the ranges from the graph, as intended
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return bytes(converter.convert())


def convert_to_onnx(model: Any, *, opset: int = 17, metadata: dict[str, str] | None = None) -> bytes:
    """Convert a Keras model to ONNX with tf2onnx: input ``image`` float32 ``(batch, H, W, 3)``, dynamic batch.

    Args:
        model: a Keras 2 model (one input; one or more named outputs).
        opset: the ONNX opset (13..18 with tf2onnx 1.17).
        metadata: written into ``metadata_props`` (values must be strings).

    Returns:
        The ``.onnx`` file's bytes.
    """
    import tf2onnx

    from training._tf import tf

    shape = (None, *[int(d) for d in model.inputs[0].shape[1:]])
    spec = (tf.TensorSpec(shape, tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    for key, value in (metadata or {}).items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    return proto.SerializeToString()


def export_saved_model(model: Any, directory: Path) -> Path:
    """Write a TensorFlow SavedModel for TF Serving: signature ``serving_default``, input ``image`` float32
    ``(None, H, W, 3)`` of 0..255 pixels, output ``probabilities``.

    Returns:
        ``directory``.
    """
    from training._tf import tf

    shape = (None, *[int(d) for d in model.inputs[0].shape[1:]])

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    def serve(image):
        return {OUTPUT_LAYER: model(image, training=False)}

    module = tf.Module()
    module.model = model
    module.serve = serve
    tf.saved_model.save(module, str(directory), signatures={"serving_default": serve})
    return directory


# ---------------------------------------------------------------------------------- model transforms


def _nested_models(model: Any) -> list[str]:
    from training._tf import keras

    return [layer.name for layer in model.layers if isinstance(layer, keras.Model)]


def _require_flat(model: Any, technique: str) -> None:
    nested = _nested_models(model)
    if nested:
        raise NotApplicableError(
            f"{technique} cannot be applied: the model nests Keras model(s) {', '.join(repr(n) for n in nested)}, "
            "and tfmot wraps only the layers of one flat functional graph. Rebuild the model flat "
            "(training.models.build_model builds bases on the model's own input)"
        )


def fresh_copy(model: Any, *, trainable: bool = False) -> Any:
    """A new model with the same graph and weights (so that wrapping it never touches ``model``).

    With ``trainable``, every layer but BatchNormalization is trainable (BatchNormalization stays in
    inference mode, keeping the statistics that int8 conversion folds into the convolutions).
    """
    from training._tf import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    if trainable:
        for layer in copy.layers:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return copy


def _inbound_layers(layer: Any) -> list[Any]:
    nodes = getattr(layer, "_inbound_nodes", [])
    if not nodes:
        return []
    inbound = nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, list | tuple) else [inbound]


def quantize_aware_model(model: Any) -> tuple[Any, dict[str, Any]]:
    """Prepare a model for quantization-aware training (tfmot default 8-bit scheme).

    ``tfmot.quantization.keras.quantize_model`` refuses a whole transfer-learned graph: preprocessing
    (``Rescaling``, ``Normalization``, the custom ``ReverseChannels``) and squeeze-excite ``Multiply``
    layers have no quantize config. So only the layers the registry supports are annotated, plus each
    ``BatchNormalization`` that directly follows an annotated Conv2D/DepthwiseConv2D/Dense (tfmot's
    transforms then simulate the folded convolution, which is what TFLite runs). The other layers stay
    float during training; the int8 converter calibrates them from representative data.

    Returns:
        ``(qat_model, info)``: the new model (not compiled) and ``{"annotated": n, "float_layers": [...]}``.

    Raises:
        NotApplicableError: a nested model, or no layer tfmot can quantize.
    """
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    from training._tf import keras

    _require_flat(model, "quantization-aware training")
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    base = fresh_copy(model, trainable=True)
    folding = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    annotated: set[str] = set()
    for layer in base.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            inbound = _inbound_layers(layer)
            ok = len(inbound) == 1 and isinstance(inbound[0], folding) and inbound[0].name in annotated
        else:
            ok = registry.supports(layer)
        if ok:
            annotated.add(layer.name)
    skipped = [
        f"{layer.name} ({type(layer).__name__})"
        for layer in base.layers
        if layer.name not in annotated and not isinstance(layer, keras.layers.InputLayer)
    ]
    if not annotated:
        raise NotApplicableError(
            "quantization-aware training cannot be applied: no layer of the model is one tfmot's default 8-bit "
            f"scheme can quantize (layers: {', '.join(skipped[:8])})"
        )

    def annotate(layer):
        return tfmot.quantization.keras.quantize_annotate_layer(layer) if layer.name in annotated else layer

    marked = keras.models.clone_model(base, clone_function=annotate)
    with tfmot.quantization.keras.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(marked)
    return qat, {"annotated_layers": len(annotated), "float_layers": skipped}


def _prunable(model: Any, min_weights: int) -> list[str]:
    from training._tf import keras

    names = []
    for layer in model.layers:
        if layer.name == OUTPUT_LAYER or type(layer) not in (keras.layers.Conv2D, keras.layers.Dense):
            continue
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and int(np.prod(kernel.shape)) >= min_weights:
            names.append(layer.name)
    return names


def prune_model(
    model: Any, *, target_sparsity: float, end_step: int, frequency: int, min_weights: int = 1024
) -> tuple[Any, list[str]]:
    """Wrap the model's big Conv2D/Dense kernels in tfmot magnitude pruning with a polynomial schedule.

    Only ``Conv2D`` and ``Dense`` layers with at least ``min_weights`` kernel weights are pruned, never
    the output layer (pruning it costs accuracy and saves little) nor depthwise convolutions (few weights,
    each one matters). Preprocessing and custom layers are left as they are, which is why the model is
    wrapped layer by layer rather than with ``prune_low_magnitude(model)`` (that refuses them).

    Args:
        model: the Keras model (left untouched).
        target_sparsity: fraction of zeros reached at ``end_step``.
        end_step: the training step at which the schedule reaches the target.
        frequency: steps between mask updates.
        min_weights: smallest kernel that is pruned.

    Returns:
        ``(wrapped model to fine-tune with tfmot's UpdatePruningStep callback, names of pruned layers)``.

    Raises:
        NotApplicableError: a nested model, or no layer big enough to prune.
    """
    import tensorflow_model_optimization as tfmot

    sparsity = tfmot.sparsity.keras
    schedule = sparsity.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=target_sparsity,
        begin_step=0,
        end_step=end_step,
        frequency=frequency,
    )
    return _wrap_big_layers(
        model,
        "pruning",
        min_weights,
        "lower prune_min_weights to prune smaller layers",
        lambda layer: sparsity.prune_low_magnitude(layer, pruning_schedule=schedule),
    )


def _wrap_big_layers(model: Any, technique: str, min_weights: int, hint: str, wrap: Any) -> tuple[Any, list[str]]:
    """A trainable copy of a flat ``model`` with ``wrap`` applied to its big Conv2D/Dense layers.

    Raises:
        NotApplicableError: a nested model, or no layer big enough (the message ends with ``hint``).
    """
    from training._tf import keras

    _require_flat(model, technique)
    names = set(_prunable(model, min_weights))
    if not names:
        raise NotApplicableError(
            f"{technique} cannot be applied: no Conv2D/Dense layer (other than the output layer) has at least "
            f"optimize.prune_min_weights={min_weights} weights; {hint}"
        )
    base = fresh_copy(model, trainable=True)
    clone = keras.models.clone_model(base, clone_function=lambda layer: wrap(layer) if layer.name in names else layer)
    return clone, sorted(names)


def cluster_model(model: Any, *, clusters: int, min_weights: int = 1024) -> tuple[Any, list[str]]:
    """Wrap the model's big Conv2D/Dense kernels in tfmot weight clustering (k-means++ centroids).

    The same layers as :func:`prune_model` are chosen, for the same reasons.

    Returns:
        ``(wrapped model to fine-tune, names of clustered layers)``.

    Raises:
        NotApplicableError: a nested model, or no layer big enough to cluster.
    """
    import tensorflow_model_optimization as tfmot

    clustering = tfmot.clustering.keras
    return _wrap_big_layers(
        model,
        "weight clustering",
        min_weights,
        "lower it to cluster smaller layers",
        lambda layer: clustering.cluster_weights(
            layer,
            number_of_clusters=clusters,
            cluster_centroids_init=clustering.CentroidInitialization.KMEANS_PLUS_PLUS,
        ),
    )


def fine_tune(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    callbacks: list | None = None,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Compile and fit ``model`` in place on ``uint8`` images (cast to float32) and integer labels.

    Returns:
        The Keras history (``loss``, ``accuracy`` per epoch).
    """
    from training._tf import keras, tf

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    ds = (
        tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(lambda a, b: (tf.cast(a, tf.float32), b))
        .prefetch(2)
    )
    history = model.fit(ds, epochs=epochs, callbacks=callbacks or [], verbose=0)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


# ----------------------------------------------------------------------------------------- analysis


def _tflite_interpreter(content: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_content=content, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interp.allocate_tensors()
    return interp


_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def tflite_op_counts(content: bytes) -> dict[str, int]:
    """How many of each operator a TFLite flatbuffer runs (``{"CONV_2D": 3, ...}``), without delegates."""
    interp = _tflite_interpreter(content)
    return dict(Counter(op["op_name"] for op in interp._get_ops_details()))


def tflite_weights(content: bytes) -> list[np.ndarray]:
    """The weight tensors of a TFLite model's convolutions and fully connected layers, as stored.

    Quantized weights come back as their integers minus the zero point (so a zero weight is 0); float16
    weights stored behind a DEQUANTIZE op are read at their source.
    """
    interp = _tflite_interpreter(content)
    ops = interp._get_ops_details()
    producers = {int(t): op for op in ops for t in op["outputs"]}
    details = {d["index"]: d for d in interp.get_tensor_details()}
    arrays = []
    seen: set[int] = set()
    for op in ops:
        if op["op_name"] not in _WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        index = int(op["inputs"][1])
        producer = producers.get(index)
        if producer is not None and producer["op_name"] == "DEQUANTIZE":
            index = int(producer["inputs"][0])
        elif producer is not None:
            continue  # computed at run time, not a stored weight
        if index in seen or index < 0:
            continue
        seen.add(index)
        arr = np.asarray(interp.get_tensor(index))
        zps = details[index].get("quantization_parameters", {}).get("zero_points")
        if arr.dtype.kind in "iu" and zps is not None and len(zps) and np.any(zps):
            axis = details[index]["quantization_parameters"].get("quantized_dimension", 0)
            shape = [1] * arr.ndim
            shape[axis] = -1
            arr = arr.astype(np.int32) - (np.asarray(zps).reshape(shape) if len(zps) > 1 else int(zps[0]))
        arrays.append(arr)
    return arrays


def onnx_weights(content: bytes) -> list[np.ndarray]:
    """The multi-dimensional initializers (kernels, weight matrices) of an ONNX model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(content)
    return [numpy_helper.to_array(init) for init in model.graph.initializer if len(init.dims) >= 2]


def keras_weights(model: Any) -> list[np.ndarray]:
    """The kernels (weights with 2 or more dimensions) of a Keras model or layer."""
    return [w.numpy() for w in model.weights if len(w.shape) >= 2 and "kernel" in w.name]


def weight_sparsity(arrays: list[np.ndarray]) -> float | None:
    """Fraction of exact zeros over all given weight tensors (``None`` when there are none)."""
    total = sum(int(a.size) for a in arrays)
    if total == 0:
        return None
    return float(sum(int(np.count_nonzero(a == 0)) for a in arrays) / total)


def count_macs(model: Any) -> dict[str, int]:
    """Multiply-accumulates of one image through a Keras model, counted per layer from the shapes.

    Convolutions: ``H_out * W_out * k_h * k_w * C_in / groups * C_out``; depthwise:
    ``H_out * W_out * k_h * k_w * C_in * depth_multiplier``; dense: ``inputs * units``. Element-wise
    work (BatchNormalization, activations, additions, pooling) is counted separately as ``elementwise``
    (one operation per output value), since it is not multiply-accumulate bound.

    Returns:
        ``{"conv": ..., "depthwise": ..., "dense": ..., "total": ..., "elementwise": ...}``.
    """
    from training._tf import keras

    counts = {"conv": 0, "depthwise": 0, "dense": 0, "elementwise": 0}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer | keras.Model):
            continue
        out = layer.output_shape
        out_shape = out[0] if isinstance(out, list) else out
        out_size = int(np.prod([d for d in out_shape[1:] if d is not None]))
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            cin = int(layer.input_shape[-1])
            counts["depthwise"] += int(np.prod(out_shape[1:3])) * kh * kw * cin * layer.depth_multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = int(layer.input_shape[-1])
            counts["conv"] += out_size * kh * kw * cin // max(1, getattr(layer, "groups", 1))
        elif isinstance(layer, keras.layers.Dense):
            counts["dense"] += int(layer.input_shape[-1]) * out_size
        else:
            counts["elementwise"] += out_size
    counts["total"] = counts["conv"] + counts["depthwise"] + counts["dense"]
    return counts


def gzip_size(content: bytes) -> int:
    """Size after ``gzip -9``: what the weights cost to download or store compressed."""
    return len(gzip.compress(content, compresslevel=9, mtime=0))


def _dir_digest(directory: Path) -> tuple[str, int, int]:
    """(sha256 over sorted relative paths and file hashes, total bytes, total gzip bytes) of a folder."""
    from edge.manifest import file_sha256

    digest = hashlib.sha256()
    total = gz = 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        digest.update(f"{rel}\t{file_sha256(path)}\n".encode())
        total += path.stat().st_size
        gz += gzip_size(path.read_bytes())
    return digest.hexdigest(), total, gz


# ------------------------------------------------------------------------------------------ registry


@dataclass
class OptimizeData:
    """The images optimization works with (``uint8`` ``(N, H, W, 3)`` and integer labels).

    ``train_x`` feeds representative data and fine-tuning; ``test_x`` the gates. ``problem`` says why the
    training data is not there (the variants that need it become failed rows); ``note`` is shown in the
    report (a dataset that changed since training, synthetic images...).
    """

    train_x: np.ndarray | None = None
    train_y: np.ndarray | None = None
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    test_split: str = "test"
    problem: str | None = None
    notes: list[str] = field(default_factory=list)
    synthetic_test: bool = False

    @property
    def has_train(self) -> bool:
        return self.train_x is not None and len(self.train_x) > 0


@dataclass
class BuildContext:
    """What a variant's build function gets."""

    model: Any
    labels: list[str]
    contract: InputContract
    config: Any  # OptimizeConfig
    data: OptimizeData
    representative: np.ndarray | None
    metadata: dict[str, str]

    def require_train(self, what: str) -> tuple[np.ndarray, np.ndarray]:
        """The fine-tuning images and labels, or a clear error when there are none."""
        if not self.data.has_train:
            raise OptimizeError(
                f"{what} fine-tunes on the package's training split, which is not available: "
                f"{self.data.problem or 'no training images'}"
            )
        assert self.data.train_x is not None and self.data.train_y is not None
        return self.data.train_x, self.data.train_y

    def require_representative(self) -> np.ndarray:
        if self.representative is None or len(self.representative) == 0:
            raise OptimizeError(
                "int8 calibration needs representative images from the training split, which is not available: "
                f"{self.data.problem or 'no training images'}"
            )
        return self.representative


@dataclass
class Built:
    """What a build function returns: the file's bytes (or a folder), the float model it came from, details."""

    content: bytes | None = None
    directory: Path | None = None
    parent: Any = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VariantSpec:
    """One entry of :data:`VARIANTS`.

    Attributes:
        build: ``build(ctx) -> Built``.
        suffix: the file suffix (``""`` for a folder).
        format: the manifest format and the runner that runs it (``tflite``, ``onnx``, ``saved_model``).
        quantization: the manifest's quantization label.
        gate: the parity gate kind (see :class:`training.config.GateConfig`).
        needs_representative: needs training images to calibrate int8 ranges.
        needs_retraining: fine-tunes the model (QAT, pruning, clustering).
        outputs: the model's outputs, in order.
        description: one line for the report.
    """

    build: Callable[[BuildContext], Built]
    suffix: str
    format: Literal["tflite", "onnx", "saved_model"]
    quantization: str
    gate: GateKind
    needs_representative: bool = False
    needs_retraining: bool = False
    outputs: tuple[str, ...] = (OUTPUT_LAYER,)
    description: str = ""


def _build_tflite(quant: Callable[[BuildContext], QuantizationConfig]) -> Callable[[BuildContext], Built]:
    def build(ctx: BuildContext) -> Built:
        q = quant(ctx)
        rep = ctx.require_representative() if q.needs_representative else None
        return Built(content=convert_to_tflite(ctx.model, q, rep))

    return build


def _int8(ctx: BuildContext) -> QuantizationConfig:
    return QuantizationConfig.for_int8(ctx.config.representative_samples)


def _build_qat(ctx: BuildContext) -> Built:
    x, y = ctx.require_train("quantization-aware training")
    rep = ctx.require_representative()
    qat, info = quantize_aware_model(ctx.model)
    history = fine_tune(
        qat,
        x,
        y,
        epochs=ctx.config.qat_epochs,
        learning_rate=ctx.config.fine_tune_learning_rate,
        batch_size=ctx.config.fine_tune_batch_size,
        seed=ctx.config.seed,
    )
    content = convert_to_tflite(qat, _int8(ctx), rep)
    return Built(
        content=content, parent=qat, details={**info, "history": history, "epochs": ctx.config.qat_epochs}
    )


def _pruning_schedule(n: int, batch: int, epochs: int) -> tuple[int, int]:
    """(end_step, frequency): reach the target one epoch before the end (so the last epoch recovers)."""
    steps = max(1, math.ceil(n / batch))
    end = steps * max(1, epochs - 1)
    frequency = max(1, end // 10)
    return max(frequency, frequency * (end // frequency)), frequency


def _build_pruned(ctx: BuildContext) -> Built:
    import tensorflow_model_optimization as tfmot

    cfg = ctx.config
    x, y = ctx.require_train("pruning")
    rep = ctx.require_representative()
    end, freq = _pruning_schedule(len(x), cfg.fine_tune_batch_size, cfg.prune_epochs)
    wrapped, names = prune_model(
        ctx.model,
        target_sparsity=cfg.prune_sparsity,
        end_step=end,
        frequency=freq,
        min_weights=cfg.prune_min_weights,
    )
    history = fine_tune(
        wrapped,
        x,
        y,
        epochs=cfg.prune_epochs,
        learning_rate=cfg.fine_tune_learning_rate,
        batch_size=cfg.fine_tune_batch_size,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        seed=cfg.seed,
    )
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    pruned_sparsity = weight_sparsity(
        [w for layer in stripped.layers if layer.name in names for w in keras_weights(layer)]
    )
    content = convert_to_tflite(stripped, _int8(ctx), rep)
    return Built(
        content=content,
        parent=stripped,
        details={
            "pruned_layers": names,
            "target_sparsity": cfg.prune_sparsity,
            "pruned_layers_sparsity": pruned_sparsity,
            "keras_sparsity": weight_sparsity(keras_weights(stripped)),
            "schedule": {"kind": "polynomial_decay", "begin_step": 0, "end_step": end, "frequency": freq},
            "history": history,
        },
    )


def _build_clustered(ctx: BuildContext) -> Built:
    import tensorflow_model_optimization as tfmot

    cfg = ctx.config
    x, y = ctx.require_train("weight clustering")
    rep = ctx.require_representative()
    wrapped, names = cluster_model(ctx.model, clusters=cfg.clusters, min_weights=cfg.prune_min_weights)
    history = fine_tune(
        wrapped,
        x,
        y,
        epochs=cfg.cluster_epochs,
        learning_rate=cfg.fine_tune_learning_rate,
        batch_size=cfg.fine_tune_batch_size,
        seed=cfg.seed,
    )
    stripped = tfmot.clustering.keras.strip_clustering(wrapped)
    unique = {
        layer.name: len(np.unique(keras_weights(layer)[0]))
        for layer in stripped.layers
        if layer.name in names
    }
    content = convert_to_tflite(stripped, _int8(ctx), rep)
    return Built(
        content=content,
        parent=stripped,
        details={
            "clustered_layers": names,
            "clusters": cfg.clusters,
            "unique_values_per_layer": unique,
            "history": history,
        },
    )


def _build_onnx(ctx: BuildContext) -> Built:
    meta = {**ctx.metadata, "outputs": json.dumps([OUTPUT_LAYER])}
    return Built(content=convert_to_onnx(ctx.model, opset=ctx.config.onnx_opset, metadata=meta))


def _build_onnx_embedding(ctx: BuildContext) -> Built:
    from training.models import embedding_model

    two = embedding_model(ctx.model)
    meta = {**ctx.metadata, "outputs": json.dumps([OUTPUT_LAYER, "embedding"])}
    # no parent: the Keras reference the gates compare with already has the embedding output
    return Built(content=convert_to_onnx(two, opset=ctx.config.onnx_opset, metadata=meta))


def _build_saved_model(ctx: BuildContext) -> Built:
    directory = Path(tempfile.mkdtemp(prefix="shipyard-savedmodel-")) / "saved_model"
    export_saved_model(ctx.model, directory)
    return Built(directory=directory)


VARIANTS: dict[str, VariantSpec] = {
    "fp32.tflite": VariantSpec(
        _build_tflite(lambda ctx: QuantizationConfig.for_float32()),
        ".tflite",
        "tflite",
        "none",
        "float",
        description="plain TFLite conversion",
    ),
    "fp16.tflite": VariantSpec(
        _build_tflite(lambda ctx: QuantizationConfig.for_float16()),
        ".tflite",
        "tflite",
        "float16",
        "fp16",
        description="float16 weights",
    ),
    "dynamic.tflite": VariantSpec(
        _build_tflite(lambda ctx: QuantizationConfig.for_dynamic()),
        ".tflite",
        "tflite",
        "dynamic_range",
        "dynamic",
        description="dynamic-range quantization (int8 weights)",
    ),
    "int8.tflite": VariantSpec(
        _build_tflite(_int8),
        ".tflite",
        "tflite",
        "int8",
        "int8",
        needs_representative=True,
        description="full integer quantization, uint8 input and output",
    ),
    "qat_int8.tflite": VariantSpec(
        _build_qat,
        ".tflite",
        "tflite",
        "qat_int8",
        "int8",
        needs_representative=True,
        needs_retraining=True,
        description="quantization-aware fine-tuning, then full integer",
    ),
    "pruned_int8.tflite": VariantSpec(
        _build_pruned,
        ".tflite",
        "tflite",
        "pruned_int8",
        "int8",
        needs_representative=True,
        needs_retraining=True,
        description="magnitude pruning (polynomial schedule) with fine-tuning, then full integer",
    ),
    "clustered_int8.tflite": VariantSpec(
        _build_clustered,
        ".tflite",
        "tflite",
        "clustered_int8",
        "int8",
        needs_representative=True,
        needs_retraining=True,
        description="weight clustering with fine-tuning, then full integer",
    ),
    "model.onnx": VariantSpec(
        _build_onnx, ".onnx", "onnx", "none", "float", description="ONNX (tf2onnx), dynamic batch"
    ),
    "model_embedding.onnx": VariantSpec(
        _build_onnx_embedding,
        ".onnx",
        "onnx",
        "none",
        "float",
        outputs=(OUTPUT_LAYER, "embedding"),
        description="ONNX with probabilities and the embedding (for drift monitoring)",
    ),
    "saved_model": VariantSpec(
        _build_saved_model,
        "",
        "saved_model",
        "none",
        "float",
        description="TensorFlow SavedModel for TF Serving",
    ),
}


def resolve_variants(names: list[str] | None) -> list[str]:
    """Validate variant names against :data:`VARIANTS` (``None``: all, in registry order).

    Raises:
        ConfigError: an unknown name (the message lists the valid ones).
    """
    if not names:
        return list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(
            f"unknown variant(s) {', '.join(repr(n) for n in unknown)}; choose from: {', '.join(VARIANTS)}"
        )
    return [n for n in VARIANTS if n in set(names)]


# ------------------------------------------------------------------------------------ gates, results


@dataclass
class GateCheck:
    """One limit of a gate: ``value`` compared with ``limit`` (``">="`` or ``"<="``)."""

    name: str
    value: float | None
    limit: float
    op: Literal[">=", "<="]

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.op == ">=" else self.value <= self.limit

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.6g}"
        return f"{self.name} {value} (limit {self.op} {self.limit:g})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "op": self.op,
            "passed": self.passed,
        }


def gate_checks(
    kind: GateKind, metrics: dict[str, Any], gates: Any, *, retrained: bool = False
) -> list[GateCheck]:
    """The checks of a gate kind for a variant's metrics (see :class:`training.config.GateConfig`)."""
    if kind == "float":
        checks = [
            GateCheck("top-1 agreement", metrics.get("agreement"), gates.float_min_agreement, ">="),
            GateCheck(
                "max probability difference", metrics.get("max_prob_diff"), gates.float_max_prob_diff, "<="
            ),
        ]
        if "embedding_rel_diff" in metrics:
            checks.append(
                GateCheck(
                    "embedding relative difference",
                    metrics["embedding_rel_diff"],
                    gates.embedding_max_rel_diff,
                    "<=",
                )
            )
        return checks
    if kind == "fp16":
        return [
            GateCheck("top-1 agreement", metrics.get("agreement"), gates.fp16_min_agreement, ">="),
            GateCheck(
                "max probability difference", metrics.get("max_prob_diff"), gates.fp16_max_prob_diff, "<="
            ),
        ]
    if kind == "dynamic":
        return [
            GateCheck("top-1 agreement", metrics.get("agreement"), gates.dynamic_min_agreement, ">="),
            GateCheck("accuracy drop", metrics.get("accuracy_drop"), gates.dynamic_max_accuracy_drop, "<="),
        ]
    use_parent = retrained and gates.int8_agreement_with == "parent"
    name = "top-1 agreement with fine-tuned float" if use_parent else "top-1 agreement"
    return [
        GateCheck(
            name,
            metrics.get("agreement_parent" if use_parent else "agreement"),
            gates.int8_min_agreement,
            ">=",
        ),
        GateCheck("accuracy drop", metrics.get("accuracy_drop"), gates.int8_max_accuracy_drop, "<="),
    ]


@dataclass
class VariantResult:
    """One row of the report: how a variant was built and how it did."""

    key: str
    spec: VariantSpec
    status: Status = "not_checked"
    reason: str | None = None
    path: Path | None = None
    sha256: str | None = None
    bytes: int | None = None
    gzip_bytes: int | None = None
    sparsity: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[GateCheck] = field(default_factory=list)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    io: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    build_seconds: float | None = None
    earlier_run: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def failed_checks(self) -> list[GateCheck]:
        return [c for c in self.checks if c.passed is False]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the row of report.json)."""
        return {
            "variant": self.key,
            "format": self.spec.format,
            "quantization": self.spec.quantization,
            "description": self.spec.description,
            "gate_kind": self.spec.gate,
            "needs_representative": self.spec.needs_representative,
            "needs_retraining": self.spec.needs_retraining,
            "outputs": list(self.spec.outputs),
            "status": self.status,
            "reason": self.reason,
            "file": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "gzip_bytes": self.gzip_bytes,
            "sparsity": self.sparsity,
            "metrics": self.metrics,
            "gate": [c.to_dict() for c in self.checks],
            "latency_ms": self.latency,
            "io": self.io,
            "details": _jsonable(self.details),
            "build_seconds": self.build_seconds,
            "earlier_run": self.earlier_run,
        }

    def variant_info(self, relfile: str) -> VariantInfo:
        """The manifest entry of this variant."""
        io = self.io
        metrics = {
            **self.metrics,
            "gzip_bytes": self.gzip_bytes,
            "sparsity": self.sparsity,
            "latency_ms": self.latency,
            "gate": [c.to_dict() for c in self.checks],
        }
        return VariantInfo(
            file=relfile,
            format=self.spec.format,
            status=self.status,
            reason=self.reason,
            sha256=self.sha256,
            bytes=self.bytes,
            quantization=self.spec.quantization,
            input_dtype=io.get("input_dtype", "float32"),
            output_dtype=io.get("output_dtype", "float32"),
            input_quantization=QuantParams(**io["input_quantization"])
            if io.get("input_quantization")
            else None,
            output_quantization=QuantParams(**io["output_quantization"])
            if io.get("output_quantization")
            else None,
            outputs=list(self.spec.outputs),
            metrics=_jsonable(metrics),
        )


def result_from_manifest(key: str, info: VariantInfo) -> VariantResult:
    """Rebuild a report row from a variant's manifest entry (a variant not rebuilt in this run)."""
    metrics = dict(info.metrics)
    checks = [
        GateCheck(c["name"], c.get("value"), c["limit"], c["op"]) for c in metrics.pop("gate", []) or []
    ]
    io = {
        "input_dtype": info.input_dtype,
        "output_dtype": info.output_dtype,
        "input_quantization": info.input_quantization.model_dump() if info.input_quantization else None,
        "output_quantization": info.output_quantization.model_dump() if info.output_quantization else None,
    }
    return VariantResult(
        key=key,
        spec=VARIANTS[key],
        status=info.status,
        reason=info.reason,
        sha256=info.sha256,
        bytes=info.bytes,
        gzip_bytes=metrics.pop("gzip_bytes", None),
        sparsity=metrics.pop("sparsity", None),
        latency=metrics.pop("latency_ms", None) or {},
        metrics=metrics,
        checks=checks,
        io=io,
        earlier_run=True,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# ------------------------------------------------------------------------------------------- running


class _SavedModelRunner:
    """Runs a SavedModel's ``serving_default`` with TensorFlow (a training-side check; devices use TFLite/ONNX)."""

    format = "saved_model"

    def __init__(self, directory: Path):
        from training._tf import tf

        self._loaded = tf.saved_model.load(str(directory))
        self._fn = self._loaded.signatures["serving_default"]
        self.path = directory

    def predict(self, batch: np.ndarray) -> np.ndarray:
        from training._tf import tf

        out = self._fn(image=tf.constant(np.asarray(batch, dtype=np.float32)))
        return out[OUTPUT_LAYER].numpy()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {OUTPUT_LAYER: self.predict(batch)}

    def close(self) -> None:
        self._loaded = None


def open_variant(spec: VariantSpec, path: Path, num_threads: int | None = None) -> Any:
    """A runner for a built variant: the edge runner for TFLite/ONNX, TensorFlow for a SavedModel."""
    if spec.format == "saved_model":
        return _SavedModelRunner(path)
    from edge.runners import open_runner

    return open_runner(path, num_threads=num_threads)


def _run_all(runner: Any, x: np.ndarray, batch: int = EVAL_BATCH) -> dict[str, np.ndarray]:
    outs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), batch):
        for name, arr in runner.run(x[start : start + batch]).items():
            outs.setdefault(name, []).append(arr)
    return {k: np.concatenate(v) for k, v in outs.items()}


def _keras_outputs(model: Any, x: np.ndarray) -> list[np.ndarray]:
    out = model.predict(x.astype(np.float32), verbose=0, batch_size=EVAL_BATCH)
    return out if isinstance(out, list) else [out]


def _accuracy_f1(
    y: np.ndarray | None, probs: np.ndarray, num_classes: int
) -> tuple[float | None, float | None]:
    if y is None:
        return None, None
    from edge.evaluate import classification_metrics

    preds = probs.argmax(axis=1)
    metrics = classification_metrics(y, preds, [str(i) for i in range(num_classes)])  # as training's evaluation
    return float(metrics["accuracy"]), float(metrics["macro"]["f1"])


def _io_info(spec: VariantSpec, path: Path) -> dict[str, Any]:
    """Input/output dtypes and quantization of a built file, read from the file itself."""
    if spec.format == "tflite":
        interp = _tflite_interpreter(path.read_bytes())

        def q(det):
            scale, zero = det.get("quantization", (0.0, 0))
            return {"scale": float(scale), "zero_point": int(zero)} if scale else None

        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        return {
            "input_dtype": np.dtype(inp["dtype"]).name,
            "output_dtype": np.dtype(out["dtype"]).name,
            "input_quantization": q(inp),
            "output_quantization": q(out),
            "input_shape": [int(d) for d in inp.get("shape_signature", inp["shape"])],
            "ops": dict(Counter(op["op_name"] for op in interp._get_ops_details())),
        }
    if spec.format == "onnx":
        import onnx

        model = onnx.load(str(path))
        elem = onnx.helper.tensor_dtype_to_np_dtype
        first_in, first_out = model.graph.input[0], model.graph.output[0]
        dims = [d.dim_value if d.dim_value else None for d in first_in.type.tensor_type.shape.dim]
        return {
            "input_dtype": np.dtype(elem(first_in.type.tensor_type.elem_type)).name,
            "output_dtype": np.dtype(elem(first_out.type.tensor_type.elem_type)).name,
            "input_shape": dims,
            "opset": max(
                (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None
            ),
            "metadata": {p.key: p.value for p in model.metadata_props},
        }
    return {"input_dtype": "float32", "output_dtype": "float32"}


def _latency(spec: VariantSpec, path: Path, threads: int, config: Any, image: np.ndarray) -> dict[str, float]:
    """p50/p90/p99 (ms) of one-image predictions with ``threads`` threads (warm-up, then >= N runs and >= T s)."""
    runner = open_variant(spec, path, num_threads=threads)
    try:
        if spec.format != "saved_model":
            from edge.bench import benchmark

            res = benchmark(
                runner,
                runs=config.latency_runs,
                min_time=config.latency_min_time_s,
                warmup_runs=config.latency_warmup_runs,
                mode="predict",
            )
            return {"p50": res.p50_ms, "p90": res.p90_ms, "p99": res.p99_ms, "runs": res.runs, "threads": threads}
        return _time_loop(lambda: runner.predict(image), config, threads)
    finally:
        runner.close()


def _time_loop(step: Callable[[], Any], config: Any, threads: int) -> dict[str, float]:
    for _ in range(max(1, config.latency_warmup_runs)):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < config.latency_runs or time.perf_counter() - start < config.latency_min_time_s:
        t0 = time.perf_counter_ns()
        step()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    arr = np.asarray(times)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "runs": len(times),
        "threads": threads,
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400]}" if text else type(exc).__name__


def _write_output(built: Built, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    if built.directory is not None:
        shutil.move(str(built.directory), str(target))
        shutil.rmtree(built.directory.parent, ignore_errors=True)
    else:
        assert built.content is not None
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(built.content)
        tmp.replace(target)


@dataclass
class Reference:
    """The Keras float reference's outputs and scores on the evaluation images."""

    probabilities: np.ndarray
    embedding: np.ndarray | None
    accuracy: float | None
    macro_f1: float | None
    evaluated_on: str = "test"
    notes: list[str] = field(default_factory=list)


def reference_outputs(model: Any, data: OptimizeData, num_classes: int) -> Reference:
    """Run the Keras model (with its embedding) on the evaluation images."""
    from training.models import embedding_model

    assert data.test_x is not None
    probs, emb = _keras_outputs(embedding_model(model), data.test_x)
    acc, f1 = _accuracy_f1(data.test_y, probs, num_classes)
    where = "synthetic" if data.synthetic_test else data.test_split
    return Reference(probs, emb, acc, f1, evaluated_on=where, notes=list(data.notes))


def evaluate_variant(
    result: VariantResult, path: Path, parent: Any, reference: Reference, data: OptimizeData, config: Any
) -> None:
    """Fill ``result`` with accuracy, agreement, probability differences and the gate verdict (in place)."""
    assert data.test_x is not None
    spec = result.spec
    runner = open_variant(spec, path)
    try:
        outs = _run_all(runner, data.test_x)
    finally:
        runner.close()
    probs = outs.get(OUTPUT_LAYER, next(iter(outs.values())))
    num_classes = reference.probabilities.shape[1]
    if probs.shape != reference.probabilities.shape:
        raise OptimizeError(
            f"{result.key} returned probabilities of shape {probs.shape}, the Keras model {reference.probabilities.shape}"
        )
    preds = probs.argmax(axis=1)
    ref_preds = reference.probabilities.argmax(axis=1)
    acc, f1 = _accuracy_f1(data.test_y, probs, num_classes)
    m: dict[str, Any] = {
        "count": len(preds),
        "accuracy": acc,
        "macro_f1": f1,
        "reference_accuracy": reference.accuracy,
        "accuracy_drop": None if acc is None or reference.accuracy is None else reference.accuracy - acc,
        "agreement": float(np.mean(preds == ref_preds)),
        "max_prob_diff": float(np.max(np.abs(probs - reference.probabilities))),
        "evaluated_on": "synthetic" if data.synthetic_test else data.test_split,
    }
    if parent is not None:
        parent_out = _keras_outputs(parent, data.test_x)
        parent_probs = parent_out[0]
        m["agreement_parent"] = float(np.mean(preds == parent_probs.argmax(axis=1)))
        m["max_prob_diff_parent"] = float(np.max(np.abs(probs - parent_probs)))
        m["parent_accuracy"], _ = _accuracy_f1(data.test_y, parent_probs, num_classes)
    else:
        m["agreement_parent"], m["max_prob_diff_parent"] = m["agreement"], m["max_prob_diff"]
    if "embedding" in spec.outputs and reference.embedding is not None:
        if "embedding" not in outs:
            raise OptimizeError(f"{result.key} has no 'embedding' output (outputs: {', '.join(outs)})")
        diff = float(np.max(np.abs(outs["embedding"] - reference.embedding)))
        scale = float(np.max(np.abs(reference.embedding))) or 1.0
        m["embedding_max_diff"], m["embedding_rel_diff"] = diff, diff / scale
    result.metrics = m
    result.checks = gate_checks(spec.gate, m, config.gates, retrained=spec.needs_retraining)
    failed = result.failed_checks()
    unknown = [c for c in result.checks if c.passed is None]
    if failed:
        result.status = "failed_gate"
        result.reason = "gate failed: " + "; ".join(c.describe() for c in failed)
    elif unknown:
        result.status = "not_checked"
        result.reason = (
            "gate not checked: "
            + "; ".join(c.describe() for c in unknown)
            + " (no labelled test images; make the package's data available with --data DIR)"
        )
    else:
        result.status = "passed"
        result.reason = None


def _representative(data: OptimizeData, count: int, seed: int) -> np.ndarray | None:
    if not data.has_train:
        return None
    assert data.train_x is not None
    rng = np.random.default_rng(seed)
    n = min(count, len(data.train_x))
    return data.train_x[np.sort(rng.choice(len(data.train_x), n, replace=False))]


def optimize_model(
    model: Any,
    *,
    labels: list[str],
    contract: InputContract,
    data: OptimizeData,
    config: Any,
    out_dir: Path,
    variants: list[str] | None = None,
    metadata: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[VariantResult], Reference]:
    """Build, evaluate and time every requested variant of ``model`` into ``out_dir/<variant key>``.

    A variant that cannot be built (the technique does not apply, a converter error, no training data)
    becomes a ``failed_export`` row with the reason; the others still build. A stale file of a variant
    that failed is removed so it cannot be mistaken for a fresh one.

    Args:
        model: the Keras float reference (not modified).
        labels: class names (for ONNX metadata and the metrics).
        contract: the input contract (size of the uint8 images).
        data: training and test images (see :class:`OptimizeData`); without test images, random ones
            are used for parity (accuracy is then not measured).
        config: an :class:`training.config.OptimizeConfig`.
        out_dir: where the variant files go.
        variants: keys of :data:`VARIANTS` (default: ``config.variants`` or all).
        metadata: ONNX metadata_props (default: labels, input contract, shipyard version).
        progress: called with one line per step (for the CLI).

    Returns:
        (one :class:`VariantResult` per variant in registry order, the Keras reference outputs).

    Raises:
        ConfigError: an unknown variant name.
    """
    from training._tf import keras

    say = progress or (lambda _msg: None)
    keys = resolve_variants(variants if variants is not None else config.variants)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _evaluation_data(data, contract, config)
    reference = reference_outputs(model, data, len(labels))
    ctx = BuildContext(
        model=model,
        labels=labels,
        contract=contract,
        config=config,
        data=data,
        representative=_representative(data, config.representative_samples, config.seed),
        metadata=metadata or onnx_metadata(labels, contract),
    )
    probe = (
        data.test_x[:1] if len(data.test_x) else np.zeros((1, contract.height, contract.width, 3), np.uint8)
    )
    from edge.runners import default_threads

    all_threads = default_threads()
    results = []
    for key in keys:
        spec = VARIANTS[key]
        result = VariantResult(key=key, spec=spec)
        target = out_dir / key
        say(f"{key}: building ({spec.description})")
        keras.utils.set_random_seed(config.seed)
        started = time.perf_counter()
        try:
            built = spec.build(ctx)
            _write_output(built, target)
        except Exception as exc:  # a failed variant is a row, not a crash
            result.status, result.reason = "failed_export", _first_line(exc)
            result.details["traceback"] = traceback.format_exc(limit=6).splitlines()[-8:]
            result.build_seconds = time.perf_counter() - started
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            say(f"{key}: failed to export: {result.reason}")
            results.append(result)
            continue
        result.build_seconds = time.perf_counter() - started
        result.path = target
        result.details.update(built.details)
        try:
            _describe_file(result, target, built, model)
            evaluate_variant(result, target, built.parent, reference, data, config)
            if config.latency:
                lat1 = _latency(spec, target, 1, config, probe) if spec.format != "saved_model" else None
                latn = (
                    lat1 if all_threads == 1 and lat1 else _latency(spec, target, all_threads, config, probe)
                )
                result.latency = {k: v for k, v in (("1", lat1), ("all", latn)) if v is not None}
        except Exception as exc:
            result.status, result.reason = (
                "failed_gate",
                f"exported, but could not be checked: {_first_line(exc)}",
            )
            result.details["traceback"] = traceback.format_exc(limit=6).splitlines()[-8:]
        say(f"{key}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        results.append(result)
        del built
    return results, reference


def _evaluation_data(data: OptimizeData, contract: InputContract, config: Any) -> OptimizeData:
    """``data`` with test images capped at ``eval_samples``, or random ones (and no labels) when there are none."""
    if data.test_x is None or len(data.test_x) == 0:
        rng = np.random.default_rng(config.seed)
        images = rng.integers(0, 256, (32, contract.height, contract.width, 3), dtype=np.uint8)
        note = "no test images: parity was checked on 32 random images and accuracy was not measured"
        return replace(data, test_x=images, test_y=None, synthetic_test=True, notes=[*data.notes, note])
    if config.eval_samples is not None and len(data.test_x) > config.eval_samples:
        # a random subset: splits are ordered by class, so the first N would hold the first classes only
        keep = np.sort(np.random.default_rng(config.seed).choice(len(data.test_x), config.eval_samples, replace=False))
        return replace(data, test_x=data.test_x[keep], test_y=None if data.test_y is None else data.test_y[keep])
    return data


def _describe_file(result: VariantResult, target: Path, built: Built, model: Any) -> None:
    from edge.manifest import file_sha256

    if built.directory is not None:
        result.sha256, result.bytes, result.gzip_bytes = _dir_digest(target)
        result.sparsity = weight_sparsity(keras_weights(built.parent if built.parent is not None else model))
    else:
        content = target.read_bytes()
        result.sha256, result.bytes, result.gzip_bytes = file_sha256(target), len(content), gzip_size(content)
        arrays = tflite_weights(content) if result.spec.format == "tflite" else onnx_weights(content)
        result.sparsity = weight_sparsity(arrays)
    result.io = _io_info(result.spec, target)


def onnx_metadata(labels: list[str], contract: InputContract) -> dict[str, str]:
    """ONNX ``metadata_props``: ``labels`` (JSON list), ``input_contract`` (JSON) and ``shipyard_version``."""
    return {
        "labels": json.dumps(list(labels)),
        "input_contract": contract.model_dump_json(),
        "shipyard_version": shipyard_version(),
    }


def shipyard_version() -> str:
    """The installed Shipyard version (``0+unknown`` when not installed as a distribution)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shipyard")
    except PackageNotFoundError:
        return "0+unknown"


# ------------------------------------------------------------------------------------------ packages


@dataclass
class OptimizeOutcome:
    """What :func:`run_optimize` did."""

    package: Path
    manifest: Manifest
    results: list[VariantResult]
    reference: Reference
    report_files: list[str]
    notes: list[str]
    seconds: float

    @property
    def failed(self) -> list[VariantResult]:
        """Rows that did not pass (failed a gate, failed to export, or could not be checked)."""
        return [r for r in self.results if not r.passed]

    @property
    def exit_code(self) -> int:
        """0 when every variant passed its gate, else 1."""
        return 1 if self.failed else 0


def optimize_config_for(
    manifest: Manifest, config_file: str | Path | None = None, overrides: list[str] | None = None
) -> Any:
    """The :class:`training.config.TrainingConfig` for optimizing a package.

    The package's own training config is the base (its data section says where the training split is);
    a config file given here replaces its ``optimize`` section; ``--set`` overrides come last.

    Raises:
        ConfigError: a bad file, key or value.
    """
    from edge.config import deep_merge, parse_overrides, read_yaml_mapping, section_mapping, validate_config
    from training.config import TrainingConfig, saved_sections

    raw = saved_sections(manifest.training_config)
    source = "package config"
    if config_file is not None:
        loaded = read_yaml_mapping(config_file, hint="pass a YAML file such as configs/demo.yaml")
        if "optimize" in loaded:
            raw["optimize"] = section_mapping(loaded, "optimize", config_file)
        source = str(config_file)
    return validate_config(TrainingConfig, deep_merge(raw, parse_overrides(overrides)), source)


def load_optimize_data(manifest: Manifest, config: Any) -> OptimizeData:
    """Load the package's training and test splits as in training (same folder, seed and fractions).

    Never raises for missing data: the returned :class:`OptimizeData` says what the problem is, and the
    variants that need the images become failed rows.
    """
    from training.data import load_split_arrays, scan_dataset

    opt = config.optimize
    path = config.data.path
    if path is None:
        return OptimizeData(problem="the package's config has no data.path; pass --data DIR")
    if not Path(path).is_dir():
        return OptimizeData(
            problem=f"the training data folder {str(path)!r} does not exist (moved or deleted since training?); "
            "pass --data DIR with the folder the package was trained on"
        )
    try:
        scan = scan_dataset(path, config.data)
    except ShipyardError as exc:
        return OptimizeData(problem=f"the training data at {path} cannot be read: {exc}")
    notes = []
    if scan.labels != manifest.labels:
        return OptimizeData(
            problem=f"the data at {path} has classes {scan.labels}, the model {manifest.labels}; pass --data DIR "
            "with the folder the package was trained on"
        )
    if manifest.dataset is not None and scan.fingerprint() != manifest.dataset.fingerprint:
        notes.append(
            f"the dataset at {path} changed since training (fingerprint differs): the test split may overlap "
            "what the model was trained on"
        )
    rng = np.random.default_rng(opt.seed)
    train = list(scan.splits.get("train", []))
    if opt.fine_tune_samples is not None and len(train) > opt.fine_tune_samples:
        keep = np.sort(rng.choice(len(train), opt.fine_tune_samples, replace=False))
        train = [train[i] for i in keep]
    split = "test" if scan.splits.get("test") else "val"
    test = list(scan.splits.get(split, []))
    if opt.eval_samples is not None and len(test) > opt.eval_samples:  # decode only what is evaluated
        keep = np.sort(np.random.default_rng(opt.seed).choice(len(test), opt.eval_samples, replace=False))
        test = [test[i] for i in keep]
    if not test:
        notes.append("the dataset has no test or validation split: accuracy was not measured")
    try:
        train_x, train_y = load_split_arrays(train, manifest.input) if train else (None, None)
        test_x, test_y = load_split_arrays(test, manifest.input) if test else (None, None)
    except ShipyardError as exc:
        return OptimizeData(problem=f"the training data at {path} cannot be decoded: {exc}")
    return OptimizeData(
        train_x=train_x,
        train_y=None if train_y is None else np.asarray(train_y, dtype=np.int64),
        test_x=test_x,
        test_y=None if test_y is None else np.asarray(test_y, dtype=np.int64),
        test_split=split,
        problem=None if train else f"the data at {path} has no training split",
        notes=notes,
    )


def run_optimize(
    package: str | Path,
    config: Any | None = None,
    *,
    variants: list[str] | None = None,
    data: str | Path | None = None,
    register: bool = False,
    progress: Callable[[str], None] | None = None,
) -> OptimizeOutcome:
    """Optimize a model package: build and check the variants, write the report, rewrite the manifest.

    Args:
        package: the package directory.
        config: a :class:`training.config.TrainingConfig` (default: the package's own training config).
        variants: keys of :data:`VARIANTS` (default: ``config.optimize.variants`` or all).
        data: the training data folder, when it moved since training (overrides ``data.path``).
        register: also update the package in the BentoML model store.
        progress: called with one line per step.

    Returns:
        An :class:`OptimizeOutcome`; its ``exit_code`` is 1 when any variant did not pass.

    Raises:
        PackageError / IntegrityError: not a package, or the Keras model's hash does not match.
        ConfigError: an unknown variant or bad config.
    """
    from edge.manifest import record_file, record_tree, write_manifest
    from training.optimize_report import write_report
    from training.package import load_package_model

    started = time.perf_counter()
    package = Path(package)
    model, manifest = load_package_model(package)
    if config is None:
        config = optimize_config_for(manifest)
    if data is not None:
        config = config.model_copy(update={"data": config.data.model_copy(update={"path": Path(data)})})
    keys = resolve_variants(variants if variants is not None else config.optimize.variants)
    loaded = load_optimize_data(manifest, config)
    results, reference = optimize_model(
        model,
        labels=manifest.labels,
        contract=manifest.input,
        data=loaded,
        config=config.optimize,
        out_dir=package / VARIANTS_DIR,
        variants=keys,
        progress=progress,
    )
    notes = list(reference.notes)
    if loaded.problem:
        notes.insert(0, loaded.problem)

    for result in results:
        rel = f"{VARIANTS_DIR}/{result.key}"
        for old in [p for p in manifest.files if p == rel or p.startswith(rel + "/")]:
            del manifest.files[old]
        if result.path is not None and result.path.is_dir():
            record_tree(package, manifest, rel)
        elif result.path is not None and result.path.is_file():
            record_file(package, manifest, rel)
        manifest.variants[result.key] = result.variant_info(rel)
    if "keras" in manifest.variants:
        manifest.variants["keras"].metrics.update(
            {
                "accuracy": reference.accuracy,
                "macro_f1": reference.macro_f1,
                "evaluated_on": reference.evaluated_on,
            }
        )
    earlier = {
        key: result_from_manifest(key, info)
        for key, info in manifest.variants.items()
        if key in VARIANTS and key not in keys
    }
    if earlier:
        notes.append(
            f"{', '.join(earlier)}: not rebuilt in this run; their rows are from an earlier run (marked *)"
        )
    shown = [
        next(r for r in results if r.key == k) if k in keys else earlier[k]
        for k in VARIANTS
        if k in keys or k in earlier
    ]
    seconds = time.perf_counter() - started
    report_files = write_report(
        package, manifest, shown, reference, notes=notes, config=config.optimize, seconds=seconds
    )
    for rel in report_files:
        record_file(package, manifest, rel)
    write_manifest(package, manifest)
    if register:
        from training.registry import update_registered

        update_registered(package)
    return OptimizeOutcome(package, manifest, results, reference, report_files, notes, seconds)


__all__ = [
    "VARIANTS",
    "BuildContext",
    "Built",
    "GateCheck",
    "NotApplicableError",
    "OptimizeData",
    "OptimizeError",
    "OptimizeOutcome",
    "QuantizationConfig",
    "VariantResult",
    "VariantSpec",
    "cluster_model",
    "convert_to_onnx",
    "convert_to_tflite",
    "count_macs",
    "export_saved_model",
    "fine_tune",
    "gate_checks",
    "optimize_config_for",
    "optimize_model",
    "prune_model",
    "quantize_aware_model",
    "resolve_variants",
    "run_optimize",
    "tflite_op_counts",
    "tflite_weights",
    "weight_sparsity",
]
