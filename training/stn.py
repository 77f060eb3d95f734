"""A spatial transformer front-end (Jaderberg et al., 2015): ``model.spatial_transformer``.

A small localization network looks at the image and predicts an affine transform (six numbers); a
differentiable bilinear sampler (:class:`training.layers.AffineSampler`) warps the image with it before
the base sees it. The last layer of the localization network starts with zero weights and the identity as
its bias, so an untrained transformer passes the image through unchanged and training moves away from
the identity only as far as it helps the loss. Its layers are named ``stn_*``: they are not part of the
base, so ``model.freeze`` never freezes them.
"""

from __future__ import annotations

from typing import Any

from training._tf import keras
from training.config import SpatialTransformerConfig
from training.layers import AffineSampler

STN_PREFIX = "stn_"
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def spatial_transformer(x: Any, config: SpatialTransformerConfig) -> Any:
    """Apply a spatial transformer to ``x`` (float pixels 0..255, NHWC); return the warped image (same shape)."""
    s = keras.layers.Rescaling(1.0 / 255.0, name=STN_PREFIX + "scale")(x)
    if config.downsample > 1:
        s = keras.layers.AveragePooling2D(config.downsample, name=STN_PREFIX + "pool")(s)
    for i, filters in enumerate(config.filters, start=1):
        s = keras.layers.Conv2D(
            filters, 3, strides=2, padding="same", activation="relu", name=f"{STN_PREFIX}conv{i}"
        )(s)
    s = keras.layers.Flatten(name=STN_PREFIX + "flatten")(s)
    s = keras.layers.Dense(config.dense, activation="relu", name=STN_PREFIX + "dense")(s)
    theta = keras.layers.Dense(
        6,
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(list(IDENTITY)),
        dtype="float32",
        name=STN_PREFIX + "theta",
    )(s)
    return AffineSampler(dtype="float32", name=STN_PREFIX + "sampler")([x, theta])
