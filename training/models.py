"""Transfer-learning models: a registry of bases, cut, frozen, with a head, as one flat functional graph.

The model takes ``float32`` pixels 0..255 (the ``uint8`` pixels of the input contract, cast), does its
own scaling inside the graph, and ends in a softmax layer named ``probabilities``. The tensor fed to
that layer is the embedding used for drift monitoring (:func:`embedding_model`).

No ``Model`` is nested inside the model: tfmot's quantization-aware training and pruning fail on
nested models, so bases are built on our own input tensor and their layers live in the top graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import ConfigError
from training._tf import keras, tf
from training.config import ModelConfig, TrainConfig
from training.freeze import apply_trainable, select_layers
from training.layers import ReverseChannels
from training.losses import SparseFocalLoss, SparseSmoothedCrossentropy

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
PREPROCESS_PREFIX = "preprocess_"
HEAD_PREFIX = "head_"
STN_PREFIX = "stn_"
#: Layers of these prefixes are never part of the base (so never frozen by model.freeze).
NOT_BASE = (HEAD_PREFIX, PREPROCESS_PREFIX, STN_PREFIX)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one base network.

    Attributes:
        build: ``build(input_tensor, weights, alpha) -> keras.Model`` without top, built on the tensor.
        default_size: the input size it was designed for.
        preprocess: in-graph scaling before the base: ``"minus_one_one"`` ([-1, 1]), ``"unit"`` ([0, 1]),
            ``"caffe"`` (BGR, ImageNet mean subtracted) or ``"builtin"`` (the base scales by itself).
        default_cut: layer to cut at by default (None: the base's last layer).
        fine_tune_layers: a sensible number of top layers to unfreeze in phase 2.
        alpha: whether ``model.alpha`` (width multiplier) applies.
    """

    build: Callable[[Any, str | None, float | None], Any]
    default_size: int
    preprocess: str
    default_cut: str | None = None
    fine_tune_layers: int = 20
    alpha: bool = False


def _app(fn: Callable[..., Any], *, alpha: bool = False, **fixed: Any) -> Callable[[Any, str | None, float | None], Any]:
    def build(input_tensor, weights, alpha_value):
        kwargs = dict(fixed)
        if alpha and alpha_value is not None:
            kwargs["alpha"] = alpha_value
        shape = tuple(int(d) for d in input_tensor.shape[1:])
        return fn(include_top=False, weights=weights, input_tensor=input_tensor, input_shape=shape, **kwargs)

    return build


def _small_cnn(input_tensor, weights, alpha_value):
    """A tiny conv net for tests and small images: three Conv-BN-ReLU blocks."""
    x = input_tensor
    width = int(16 * (alpha_value or 1.0))
    for i, filters in enumerate((width, width * 2, width * 4), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        # A low momentum lets the moving statistics keep up in the short runs this base is meant for.
        x = keras.layers.BatchNormalization(momentum=0.6, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i < 3:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    return keras.Model(keras.utils.get_source_inputs(input_tensor), x, name="small_cnn")


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(_app(keras.applications.MobileNetV2, alpha=True), 224, "minus_one_one", alpha=True),
    "mobilenet_v3_small": BackboneSpec(
        _app(keras.applications.MobileNetV3Small, alpha=True, include_preprocessing=True), 224, "builtin", alpha=True
    ),
    "mobilenet_v3_large": BackboneSpec(
        _app(keras.applications.MobileNetV3Large, alpha=True, include_preprocessing=True), 224, "builtin", alpha=True
    ),
    "efficientnet_b0": BackboneSpec(_app(keras.applications.EfficientNetB0), 224, "builtin"),
    "efficientnet_v2_b0": BackboneSpec(
        _app(keras.applications.EfficientNetV2B0, include_preprocessing=True), 224, "builtin"
    ),
    "resnet50": BackboneSpec(_app(keras.applications.ResNet50), 224, "caffe", fine_tune_layers=30),
    "small_cnn": BackboneSpec(_small_cnn, 32, "unit", fine_tune_layers=3, alpha=True),
}

_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)


def image_size_for(config: ModelConfig, requested: int | tuple[int, int] | None) -> tuple[int, int]:
    """The (height, width) the model will take: the data config's, a saved base's, or the base's default."""
    if config.base_model is not None and requested is None:
        base = load_keras_model(config.base_model)
        _, h, w, _ = base.input_shape
        return int(h), int(w)
    if requested is None:
        spec = _spec(config.base)
        return spec.default_size, spec.default_size
    if isinstance(requested, int):
        return requested, requested
    return int(requested[0]), int(requested[1])


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"model.base = {name!r} is not a known base; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _preprocess(x, kind: str):
    if kind == "minus_one_one":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PREPROCESS_PREFIX + "scale")(x)
    if kind == "unit":
        return keras.layers.Rescaling(1.0 / 255.0, name=PREPROCESS_PREFIX + "scale")(x)
    if kind == "caffe":
        x = ReverseChannels(name=PREPROCESS_PREFIX + "bgr")(x)
        return keras.layers.Rescaling(1.0, offset=[-m for m in _IMAGENET_MEAN_BGR], name=PREPROCESS_PREFIX + "mean")(x)
    return x


def load_keras_model(path: str | Path, *, compile: bool = False):
    """Load a ``.keras`` or ``.h5`` model with ``safe_mode=True`` (no arbitrary code), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Keras model file {path} does not exist")
    import training.layers
    import training.losses  # noqa: F401

    try:
        if path.suffix == ".keras":
            return keras.models.load_model(path, compile=compile, safe_mode=True)
        return keras.models.load_model(path, compile=compile)
    except Exception as exc:
        raise ConfigError(
            f"{path} could not be loaded as a Keras model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "is it a complete .keras/.h5 file saved by Keras 2 (tf_keras)?"
        ) from exc


def _resolve_weights(config: ModelConfig) -> tuple[str | None, Path | None]:
    """Return (weights argument for keras.applications, local file to load afterwards)."""
    w = config.weights
    if w.lower() == "none":
        return None, None
    if w.lower() == "imagenet":
        return "imagenet", None
    path = Path(w)
    if not path.is_file():
        raise ConfigError(
            f"model.weights = {w!r} is neither 'imagenet', 'none' nor an existing .h5/.keras file; "
            "give a path to a weights file or use weights: none"
        )
    if path.suffix not in (".h5", ".keras"):
        raise ConfigError(f"model.weights = {w!r}: weights files must end in .h5 or .keras")
    return None, path


def _build_base(config: ModelConfig, x, spec: BackboneSpec):
    weights, local = _resolve_weights(config)
    if spec.build is _small_cnn and weights == "imagenet":
        raise ConfigError("model.base = 'small_cnn' has no ImageNet weights; use weights: none or a local file")
    if config.alpha is not None and not spec.alpha:
        raise ConfigError(f"model.alpha applies to MobileNets and small_cnn only, not to {config.base!r}")
    try:
        base = spec.build(x, weights, config.alpha)
    except ValueError as exc:
        raise ConfigError(f"cannot build base {config.base!r}: {exc}") from exc
    except Exception as exc:  # download failures come as URLError, HTTPError, Exception("URL fetch failure")
        if weights == "imagenet":
            raise ConfigError(
                f"could not download ImageNet weights for {config.base!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160]}). Offline? On a connected machine run "
                f"keras.applications with weights='imagenet' once (the file lands in ~/.keras/models/), "
                "copy that *no_top*.h5 file here and set model.weights: /path/to/file.h5, or use weights: none"
            ) from exc
        raise
    if local is not None:
        _load_local_weights(base, local)
    return base


def _load_local_weights(base, path: Path) -> None:
    if path.suffix == ".keras":
        source = load_keras_model(path)
        by_name = {layer.name: layer for layer in source.layers if layer.weights}
        copied = 0
        for layer in base.layers:
            other = by_name.get(layer.name)
            if other is not None and [w.shape for w in other.weights] == [w.shape for w in layer.weights]:
                layer.set_weights(other.get_weights())
                copied += 1
        if copied == 0:
            raise ConfigError(f"{path} shares no layer (by name and shape) with the base; wrong weights file?")
        return
    try:
        base.load_weights(str(path), by_name=True, skip_mismatch=False)
    except Exception as exc:
        raise ConfigError(f"weights file {path} does not fit the base: {str(exc).splitlines()[0][:200]}") from exc


def build_model(config: ModelConfig, num_classes: int, image_size: tuple[int, int]):
    """Build the classifier as one flat functional graph.

    Args:
        config: the model section of the config.
        num_classes: number of output classes (>= 2).
        image_size: (height, width) of the input.

    Returns:
        A ``keras.Model`` with input ``image`` (float32 0..255, shape (None, H, W, 3)) and output
        ``probabilities``; the base frozen according to ``config.freeze``.

    Raises:
        ConfigError: unknown base, bad weights, an unknown cut layer, weights that cannot be had.
    """
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    inputs, features, base_layers = _base_features(config, image_size)
    base_names = {layer.name for layer in base_layers}
    pretrained = config.base_model is not None or config.weights.lower() != "none"
    outputs = _head(config, features, num_classes)
    model = keras.Model(inputs, outputs, name=config.name.replace("-", "_").replace(".", "_"))
    set_base_trainable(model, base_names, config.freeze, freeze_batchnorm=pretrained)
    model._shipyard_base_layers = sorted(base_names)  # kept for phase 2 on this object
    model._shipyard_pretrained = pretrained
    return model


def _base_features(config: ModelConfig, image_size: tuple[int, int]):
    """The model input, the base's output at the cut, and the base layers up to it (without preprocessing)."""
    h, w = image_size
    if config.base_model is not None:
        base = load_keras_model(config.base_model)
        inputs = base.inputs[0]
        if tuple(inputs.shape[1:3]) != (h, w):
            raise ConfigError(
                f"model.base_model {config.base_model} takes {tuple(inputs.shape[1:3])} images but data.image_size "
                f"is {(h, w)}; remove data.image_size or set it to the base's size"
            )
        if config.spatial_transformer.enabled:
            raise ConfigError("model.spatial_transformer works with a registered model.base, not with model.base_model")
        features = _cut(base, config.cut_at or _default_cut_saved(base))
        return inputs, features, _layers_between(base, features)
    spec = _spec(config.base)
    inputs = keras.Input((h, w, 3), name=INPUT_NAME, dtype="float32")
    x = inputs
    if config.spatial_transformer.enabled:
        from training.stn import spatial_transformer

        x = spatial_transformer(x, config.spatial_transformer)
    x = _preprocess(x, spec.preprocess)
    base = _build_base(config, x, spec)
    features = _cut(base, config.cut_at or spec.default_cut)
    base_layers = [layer for layer in _layers_between(base, features) if not layer.name.startswith(NOT_BASE)]
    return inputs, features, base_layers


def _head(config: ModelConfig, features, num_classes: int):
    """Pooling (for a 4-D cut), the dense layers (each followed by BatchNormalization with
    ``head.batch_norm``, as is the pooling), dropout and the float32 softmax ``probabilities``."""
    x = features
    if len(x.shape) == 4:
        pool = keras.layers.GlobalAveragePooling2D if config.head.pooling == "avg" else keras.layers.GlobalMaxPooling2D
        x = pool(name=HEAD_PREFIX + "pool")(x)
    elif len(x.shape) != 2:
        raise ConfigError(f"the base's output at the cut has shape {tuple(x.shape)}; cut at a 4-D or 2-D layer")
    if config.head.batch_norm:
        x = keras.layers.BatchNormalization(name=HEAD_PREFIX + "bn0")(x)
    reg = keras.regularizers.l2(config.head.l2) if config.head.l2 else None
    for i, width in enumerate(config.head.dense, start=1):
        x = keras.layers.Dense(width, activation=config.head.activation, kernel_regularizer=reg, name=f"{HEAD_PREFIX}dense{i}")(x)
        if config.head.batch_norm:
            x = keras.layers.BatchNormalization(name=f"{HEAD_PREFIX}bn{i}")(x)
    if config.head.dropout:
        x = keras.layers.Dropout(config.head.dropout, name=HEAD_PREFIX + "dropout")(x)
    return keras.layers.Dense(
        num_classes, activation="softmax", kernel_regularizer=reg, dtype="float32", name=OUTPUT_NAME
    )(x)


def _cut(base, layer_name: str | None):
    if layer_name is None:
        return base.outputs[0]
    try:
        return base.get_layer(layer_name).output
    except ValueError:
        names = [layer.name for layer in base.layers]
        raise ConfigError(
            f"model.cut_at = {layer_name!r} is not a layer of the base; some layer names: "
            f"{', '.join(names[-8:])} (of {len(names)})"
        ) from None


def _default_cut_saved(base) -> str:
    """For a saved classifier used as a base: cut before its head (the first global pooling layer)."""
    for layer in base.layers:
        if isinstance(layer, keras.layers.GlobalAveragePooling2D | keras.layers.GlobalMaxPooling2D):
            return layer._inbound_nodes[0].inbound_layers.name
    return base.layers[-2].name


def _layers_between(model, tensor) -> list:
    """Layers of ``model`` that ``tensor`` depends on (the base up to the cut), in model order."""
    sub = keras.Model(model.inputs, tensor)
    names = {layer.name for layer in sub.layers}
    return [layer for layer in model.layers if layer.name in names and not isinstance(layer, keras.layers.InputLayer)]


def base_layer_names(model) -> list[str]:
    """Names of the base layers of a model built by :func:`build_model` (in model order)."""
    names = set(getattr(model, "_shipyard_base_layers", []))
    if not names:  # a reloaded model: everything that is not head, preprocessing or input
        names = {
            layer.name
            for layer in model.layers
            if not layer.name.startswith(NOT_BASE)
            and layer.name != OUTPUT_NAME
            and not isinstance(layer, keras.layers.InputLayer)
        }
    return [layer.name for layer in model.layers if layer.name in names]


def set_base_trainable(
    model, base_names: set[str] | list[str], freeze, *, freeze_batchnorm: bool = True, what: str = "model.freeze"
) -> int:
    """Freeze base layers as ``model.freeze`` says (see :mod:`training.freeze`): ``"all"``, ``"none"``,
    all but the last N layers, or a list of names, patterns and types, or ``{until: LAYER}``.

    With ``freeze_batchnorm`` (a pretrained base) BatchNormalization layers stay frozen, so they run in
    inference mode and keep their pretrained statistics; a base trained from scratch trains them.

    Returns the number of trainable base layers (with weights).

    Raises:
        ConfigError: a name or pattern that matches no base layer.
    """
    ordered = [layer for layer in model.layers if layer.name in set(base_names)]
    frozen = select_layers(ordered, freeze, what=what, count_means="all_but_last")
    apply_trainable(ordered, {layer.name for layer in ordered} - frozen, freeze_batchnorm=freeze_batchnorm)
    return sum(int(layer.trainable and bool(layer.weights)) for layer in ordered)


def set_fine_tune_trainable(model, base_names: set[str] | list[str], fine_tune, *, freeze_batchnorm: bool) -> list:
    """Phase 2: make the base layers ``fine_tune.unfreeze`` selects (default: the last ``unfreeze_layers``)
    trainable and freeze the rest of the base; return the base layers now trainable.

    Raises:
        ConfigError: a name or pattern that matches no base layer.
    """
    ordered = [layer for layer in model.layers if layer.name in set(base_names)]
    selection = fine_tune.unfreeze if fine_tune.unfreeze is not None else fine_tune.unfreeze_layers
    chosen = select_layers(ordered, selection, what="train.fine_tune.unfreeze", count_means="last")
    apply_trainable(ordered, chosen, freeze_batchnorm=freeze_batchnorm)
    return [layer for layer in ordered if layer.trainable and layer.weights]


def add_kernel_l2(model, layers: list, l2: float) -> int:
    """Add an L2 penalty ``l2 * sum(kernel**2)`` on the kernels of ``layers`` to the model's losses
    (weights of a built model cannot take a ``kernel_regularizer`` any more); return how many kernels."""
    kernels = [
        getattr(layer, attr) for layer in layers for attr in ("kernel", "depthwise_kernel") if hasattr(layer, attr)
    ]
    for kernel in kernels:
        model.add_loss(lambda k=kernel: l2 * tf.reduce_sum(tf.square(tf.cast(k, tf.float32))))
    return len(kernels)


def embedding_model(model):
    """A model with two outputs, ``probabilities`` and ``embedding`` (the input of the last layer)."""
    out = model.get_layer(OUTPUT_NAME)
    emb = keras.layers.Activation("linear", name="embedding")(out.input)
    return keras.Model(model.inputs, [model.outputs[0], emb], name=model.name + "_with_embedding")


def make_loss(config: TrainConfig, num_classes: int):
    """The loss for integer labels: smoothed cross-entropy or focal."""
    if config.loss == "focal":
        return SparseFocalLoss(num_classes, gamma=config.focal_gamma, label_smoothing=config.label_smoothing)
    return SparseSmoothedCrossentropy(num_classes, label_smoothing=config.label_smoothing)


def make_optimizer(config: TrainConfig, learning_rate: float):
    """adam, adamw (decoupled weight decay) or sgd with momentum."""
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=config.momentum, nesterov=True)
    return keras.optimizers.Adam(learning_rate=learning_rate)


def make_metrics(config: TrainConfig, num_classes: int) -> list:
    """Accuracy, plus top-k accuracy when there are more than k classes."""
    metrics: list = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if num_classes > config.top_k:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=config.top_k, name=f"top{config.top_k}_accuracy"))
    return metrics


def compile_model(model, config: TrainConfig, num_classes: int, learning_rate: float | None = None) -> None:
    """Compile with the configured loss, optimizer and metrics (in place, as Keras does)."""
    model.compile(
        optimizer=make_optimizer(config, learning_rate or config.learning_rate),
        loss=make_loss(config, num_classes),
        metrics=make_metrics(config, num_classes),
    )


def count_params(model) -> dict[str, int]:
    """Trainable and frozen parameter counts."""
    trainable = int(sum(tf.size(w).numpy() for w in model.trainable_weights))
    frozen = int(sum(tf.size(w).numpy() for w in model.non_trainable_weights))
    return {"trainable": trainable, "non_trainable": frozen, "total": trainable + frozen}
