"""The one place TensorFlow is first imported: it pins Keras 2 (``tf_keras``) for tfmot.

Every training module does ``from training._tf import tf, keras``; never ``import keras``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tf_keras as keras

tf.get_logger().setLevel("ERROR")

__all__ = ["keras", "tf"]
