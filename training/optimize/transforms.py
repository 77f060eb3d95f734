"""Model transforms with tfmot: quantization-aware training, magnitude pruning and weight clustering.

Each transform returns a new model and leaves the one it was given untouched (tfmot's
``prune_low_magnitude(model) -> new model``). Only the layers tfmot can wrap are wrapped, so that
transfer-learned graphs with preprocessing and custom layers still take the technique.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.variants import PROBABILITIES
from training.optimize.errors import NotApplicableError


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


def _quantizable_layers(base: Any, registry: Any) -> set[str]:
    """Names of the layers tfmot's registry supports, plus each BatchNormalization right after one of them
    that folds (Conv2D, DepthwiseConv2D, Dense)."""
    from training._tf import keras

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
    return annotated


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
    annotated = _quantizable_layers(base, registry)
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
        if layer.name == PROBABILITIES or type(layer) not in (keras.layers.Conv2D, keras.layers.Dense):
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


def _wrap_big_layers(
    model: Any, technique: str, min_weights: int, hint: str, wrap: Any
) -> tuple[Any, list[str]]:
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
    clone = keras.models.clone_model(
        base, clone_function=lambda layer: wrap(layer) if layer.name in names else layer
    )
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
