"""Training augmentation from tf_keras preprocessing layers, applied to uint8 batches."""

from __future__ import annotations

from collections.abc import Callable

from training._tf import keras, tf
from training.config import AugmentConfig


def make_augmenter(cfg: AugmentConfig, *, seed: int | None = None) -> keras.Sequential | None:
    """Build the training augmentation from tf_keras preprocessing layers, or ``None`` when disabled.

    The layers take float pixels 0..255 (``value_range=(0, 255)``) and their output is clipped to
    0..255; :func:`build_datasets` rounds it back to ``uint8``.

    Args:
        cfg: the augmentation options (flips, rotation, zoom, translation, contrast, brightness).
        seed: base seed of the random layers (layer ``i`` gets ``seed + i``); ``None`` for unseeded.

    Returns:
        A ``keras.Sequential`` named ``augment``, or ``None`` when ``cfg`` enables nothing.
    """
    if not cfg.enabled:
        return None
    layers = keras.layers
    made: list[keras.layers.Layer] = []

    def s() -> int | None:
        return None if seed is None else seed + len(made)

    if cfg.horizontal_flip or cfg.vertical_flip:
        mode = (
            "horizontal_and_vertical"
            if cfg.horizontal_flip and cfg.vertical_flip
            else ("horizontal" if cfg.horizontal_flip else "vertical")
        )
        made.append(layers.RandomFlip(mode, seed=s()))
    if cfg.rotation:
        made.append(layers.RandomRotation(cfg.rotation, fill_mode="reflect", seed=s()))
    if cfg.zoom:
        made.append(layers.RandomZoom(cfg.zoom, fill_mode="reflect", seed=s()))
    if cfg.translation:
        made.append(layers.RandomTranslation(cfg.translation, cfg.translation, fill_mode="reflect", seed=s()))
    if cfg.contrast:
        made.append(layers.RandomContrast(cfg.contrast, seed=s()))
    if cfg.brightness:
        made.append(layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=s()))
    made.append(layers.Lambda(lambda x: tf.clip_by_value(x, 0.0, 255.0), name="clip_0_255"))
    return keras.Sequential(made, name="augment")


def augment_fn(augmenter: keras.Sequential) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A ``tf.data`` map function: augment a uint8 batch as float 0..255, round it back to uint8."""

    def apply(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        out = augmenter(tf.cast(images, tf.float32), training=True)
        return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8), labels

    return apply
