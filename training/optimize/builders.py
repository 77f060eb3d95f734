"""How each variant is built: one builder per name of :data:`edge.variants.VARIANTS`.

The table in ``edge`` says what a variant is (format, quantization, gate, outputs...); :data:`BUILDERS`
says how to make it from the Keras model, keyed by the same names (a test asserts that the key sets
are equal). A builder takes a :class:`BuildContext` and returns :class:`Built`: the file's bytes (or a
folder) and the float model it was converted from, when that differs from the reference.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ConfigError
from edge.manifest import InputContract
from edge.variants import EMBEDDING, PROBABILITIES, VARIANTS
from training.optimize.analysis import keras_weights, weight_sparsity
from training.optimize.conversion import (
    QuantizationConfig,
    convert_to_onnx,
    convert_to_tflite,
    export_saved_model,
    quantize_with_litert,
)
from training.optimize.errors import OptimizeError
from training.optimize.transforms import cluster_model, fine_tune, prune_model, quantize_aware_model


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
    info: dict[str, str] = field(default_factory=dict)  # name, version, description (TFLite metadata)

    def require_train(self, what: str) -> tuple[np.ndarray, np.ndarray]:
        """The fine-tuning images and labels, or a clear error when there are none."""
        x, y = self.data.train_x, self.data.train_y
        if x is None or y is None or not len(x):
            raise OptimizeError(
                f"{what} fine-tunes on the package's training split, which is not available: "
                f"{self.data.problem or 'no training images'}"
            )
        return x, y

    def require_representative(self) -> np.ndarray:
        """The int8 calibration images, or a clear error when there are none."""
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


Builder = Callable[[BuildContext], Built]


def _build_tflite(quant: Callable[[BuildContext], QuantizationConfig]) -> Builder:
    def build(ctx: BuildContext) -> Built:
        q = quant(ctx)
        rep = ctx.require_representative() if q.needs_representative else None
        return Built(content=convert_to_tflite(ctx.model, q, rep))

    return build


def _build_tflite_embedding(ctx: BuildContext) -> Built:
    from training.models import embedding_model

    # no parent: the Keras reference the gates compare with already has the embedding output
    return Built(content=convert_to_tflite(embedding_model(ctx.model), QuantizationConfig.for_float32()))


def _int8(ctx: BuildContext) -> QuantizationConfig:
    return QuantizationConfig.for_int8(ctx.config.representative_samples)


def _fine_tune(
    ctx: BuildContext, model: Any, x: np.ndarray, y: np.ndarray, epochs: int, callbacks: list | None = None
) -> dict[str, list[float]]:
    """Fine-tune a wrapped model with the optimize config's learning rate, batch size and seed."""
    cfg = ctx.config
    return fine_tune(
        model,
        x,
        y,
        epochs=epochs,
        learning_rate=cfg.fine_tune_learning_rate,
        batch_size=cfg.fine_tune_batch_size,
        callbacks=callbacks,
        seed=cfg.seed,
    )


def _int8_from(ctx: BuildContext, parent: Any, rep: np.ndarray, details: dict[str, Any]) -> Built:
    """The int8 TFLite file of a fine-tuned float model, with that model as the variant's parent."""
    return Built(content=convert_to_tflite(parent, _int8(ctx), rep), parent=parent, details=details)


def _build_litert_int8(ctx: BuildContext) -> Built:
    rep = ctx.require_representative()
    float_tflite = convert_to_tflite(ctx.model, QuantizationConfig.for_float32())
    return Built(content=quantize_with_litert(float_tflite, rep), details={"quantizer": "litert-quantizer"})


def _build_qat(ctx: BuildContext) -> Built:
    x, y = ctx.require_train("quantization-aware training")
    rep = ctx.require_representative()
    qat, info = quantize_aware_model(ctx.model)
    history = _fine_tune(ctx, qat, x, y, ctx.config.qat_epochs)
    return _int8_from(ctx, qat, rep, {**info, "history": history, "epochs": ctx.config.qat_epochs})


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
    history = _fine_tune(ctx, wrapped, x, y, cfg.prune_epochs, [tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    pruned_sparsity = weight_sparsity(
        [w for layer in stripped.layers if layer.name in names for w in keras_weights(layer)]
    )
    details = {
        "pruned_layers": names,
        "target_sparsity": cfg.prune_sparsity,
        "pruned_layers_sparsity": pruned_sparsity,
        "keras_sparsity": weight_sparsity(keras_weights(stripped)),
        "schedule": {"kind": "polynomial_decay", "begin_step": 0, "end_step": end, "frequency": freq},
        "history": history,
    }
    return _int8_from(ctx, stripped, rep, details)


def _build_clustered(ctx: BuildContext) -> Built:
    import tensorflow_model_optimization as tfmot

    cfg = ctx.config
    x, y = ctx.require_train("weight clustering")
    rep = ctx.require_representative()
    wrapped, names = cluster_model(ctx.model, clusters=cfg.clusters, min_weights=cfg.prune_min_weights)
    history = _fine_tune(ctx, wrapped, x, y, cfg.cluster_epochs)
    stripped = tfmot.clustering.keras.strip_clustering(wrapped)
    unique = {
        layer.name: len(np.unique(keras_weights(layer)[0]))
        for layer in stripped.layers
        if layer.name in names
    }
    details = {"clustered_layers": names, "clusters": cfg.clusters, "unique_values_per_layer": unique}
    return _int8_from(ctx, stripped, rep, {**details, "history": history})


def _build_onnx(ctx: BuildContext) -> Built:
    meta = {**ctx.metadata, "outputs": json.dumps([PROBABILITIES])}
    return Built(content=convert_to_onnx(ctx.model, opset=ctx.config.onnx_opset, metadata=meta))


def _build_onnx_embedding(ctx: BuildContext) -> Built:
    from training.models import embedding_model

    two = embedding_model(ctx.model)
    meta = {**ctx.metadata, "outputs": json.dumps([PROBABILITIES, EMBEDDING])}
    # no parent: the Keras reference the gates compare with already has the embedding output
    return Built(content=convert_to_onnx(two, opset=ctx.config.onnx_opset, metadata=meta))


def _build_saved_model(ctx: BuildContext) -> Built:
    directory = Path(tempfile.mkdtemp(prefix="shipyard-savedmodel-")) / "saved_model"
    export_saved_model(ctx.model, directory)
    return Built(directory=directory)


#: How to build each variant of :data:`edge.variants.VARIANTS`, keyed by the same names.
BUILDERS: dict[str, Builder] = {
    "fp32.tflite": _build_tflite(lambda ctx: QuantizationConfig.for_float32()),
    "fp32_embedding.tflite": _build_tflite_embedding,
    "fp16.tflite": _build_tflite(lambda ctx: QuantizationConfig.for_float16()),
    "dynamic.tflite": _build_tflite(lambda ctx: QuantizationConfig.for_dynamic()),
    "int8.tflite": _build_tflite(_int8),
    "litert_int8.tflite": _build_litert_int8,
    "qat_int8.tflite": _build_qat,
    "pruned_int8.tflite": _build_pruned,
    "clustered_int8.tflite": _build_clustered,
    "model.onnx": _build_onnx,
    "model_embedding.onnx": _build_onnx_embedding,
    "saved_model": _build_saved_model,
}


def resolve_variants(names: list[str] | None) -> list[str]:
    """Validate variant names against :data:`edge.variants.VARIANTS` (``None``: all, in registry order).

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
