"""The one place TensorFlow is first imported: it pins Keras 2 (``tf_keras``) for tfmot.

Every training module does ``from training._tf import tf, keras``; never ``import keras``.

TensorFlow's C++ runtime prints start-up lines (oneDNN, CUDA probing) straight to file descriptor 2
while it loads; they are muted during the import and the device probe unless ``SHIPYARD_TF_LOGS=1``.
Python exceptions are unaffected.
"""

from __future__ import annotations

import os

from edge.stdio import quiet_native_stderr

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def quiet_tf_stderr():
    """Mute TensorFlow's native start-up lines unless ``SHIPYARD_TF_LOGS=1``."""
    return quiet_native_stderr(os.environ.get("SHIPYARD_TF_LOGS") != "1")


with quiet_tf_stderr():
    import tensorflow as tf
    import tf_keras as keras

    tf.config.list_physical_devices("GPU")  # triggers (and mutes) the CUDA probe once

tf.get_logger().setLevel("ERROR")

__all__ = ["keras", "tf"]
