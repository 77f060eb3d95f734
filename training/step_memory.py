"""How much memory one training step takes, measured from the built model (for the automatic batch size).

A step holds, per image of the batch:

* the input, as float32 pixels;
* the activations backpropagation keeps: the output of every layer from the first layer that trains (in
  either phase) to the end, times :data:`BACKPROP_FACTOR` (the forward outputs kept for the backward pass
  and as much again for the gradients flowing back through them); layers before the first trainable one
  (a frozen base) keep nothing for backpropagation, so only their largest output counts, twice (one
  layer's input and output are alive at once);

and once:

* the weights (4 bytes each: variables stay float32 under mixed precision);
* one gradient per trainable weight, in the phase with the most trainable weights;
* the optimizer's slots: Adam and AdamW keep two per trainable weight, SGD with momentum one.

Activations count 2 bytes under mixed precision, else 4. The model is built with ``weights: none`` (same
shapes, no download) and thrown away.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.config import TrainingConfig
from training.data.plan import StepMemory, size_text

BACKPROP_FACTOR = 2
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "sgd": 1}


def _output_elements(layer: Any) -> int:
    """Elements per image of a layer's output(s)."""
    shapes = layer.output_shape if isinstance(layer.output_shape, list) else [layer.output_shape]
    return int(sum(np.prod([d for d in shape[1:] if d is not None]) for shape in shapes))


def _trainable_counts(model: Any, config: TrainingConfig) -> tuple[set[str], int]:
    """Names of the layers trainable in either phase, and the most trainable weights of any phase."""
    from training.models import base_layer_names, set_fine_tune_trainable

    def count() -> int:
        return int(sum(np.prod(w.shape) for w in model.trainable_weights))

    trains = {layer.name for layer in model.layers if layer.trainable and layer.trainable_weights}
    most = count()
    if config.train.fine_tune.enabled:
        set_fine_tune_trainable(
            model, base_layer_names(model), config.train.fine_tune, freeze_batchnorm=model._shipyard_pretrained
        )
        trains |= {layer.name for layer in model.layers if layer.trainable and layer.trainable_weights}
        most = max(most, count())
    return trains, most


def step_memory_of(model: Any, config: TrainingConfig) -> StepMemory:
    """The :class:`StepMemory` of a model built by :func:`training.models.build_model` (its trainable flags
    are changed to look at the fine-tuning phase)."""
    trains, trainable = _trainable_counts(model, config)
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    first = next((i for i, layer in enumerate(layers) if layer.name in trains), len(layers))
    kept = sum(_output_elements(layer) for layer in layers[first:])
    transient = max((_output_elements(layer) for layer in layers[:first]), default=0)
    act_bytes = 2 if config.train.mixed_precision else 4
    activations = (BACKPROP_FACTOR * kept + 2 * transient) * act_bytes
    h, w = (int(d) for d in model.input_shape[1:3])
    weights = int(sum(np.prod(v.shape) for v in model.weights))
    slots = OPTIMIZER_SLOTS[config.train.optimizer]
    return StepMemory(
        input_per_image=h * w * 3 * 4,
        activations_per_image=activations,
        weights=weights * 4,
        gradients=trainable * 4,
        optimizer_slots=slots * trainable * 4,
        detail=(
            f"activations: {kept:,} values per image kept by {len(layers) - first} layers from "
            f"{layers[first].name if first < len(layers) else '-'} on x {BACKPROP_FACTOR} for backpropagation, "
            f"plus {transient:,} transient ({size_text(activations)} per image); {weights:,} weights, {trainable:,} trainable, "
            f"{slots} optimizer slot(s) each"
        ),
    )


def measure_step_memory(config: TrainingConfig, num_classes: int, image_size: tuple[int, int]) -> StepMemory:
    """Build the configured model (``weights: none``, float32 variables) and measure its step memory.

    Args:
        config: the training config (model, train sections).
        num_classes: classes of the dataset.
        image_size: the model input ``(height, width)``.

    Returns:
        The model's :class:`StepMemory`.
    """
    from training.models import build_model

    model_config = config.model
    if model_config.base_model is None:
        model_config = model_config.model_copy(update={"weights": "none"})
    model = build_model(model_config, num_classes, image_size)
    # Built with weights "none", the base would train its BatchNormalization: judge freezing as the real run.
    pretrained = config.model.base_model is not None or config.model.weights.lower() != "none"
    if pretrained != model._shipyard_pretrained:
        from training.models import base_layer_names, set_base_trainable

        model._shipyard_pretrained = pretrained
        set_base_trainable(model, base_layer_names(model), config.model.freeze, freeze_batchnorm=pretrained)
    return step_memory_of(model, config)
