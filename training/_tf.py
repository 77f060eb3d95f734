"""The one place TensorFlow is first imported: it pins Keras 2 (``tf_keras``) for tfmot.

Every training module does ``from training._tf import tf, keras``; never ``import keras``.

TensorFlow's C++ runtime prints start-up lines (oneDNN, CUDA probing) straight to file descriptor 2
while it loads; they are muted during the import and the device probe unless ``SHIPYARD_TF_LOGS=1``.
Python exceptions are unaffected.
"""

from __future__ import annotations

import contextlib
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _quiet_native_stderr():
    if os.environ.get("SHIPYARD_TF_LOGS") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _quiet_native_stderr():
    import tensorflow as tf
    import tf_keras as keras

    tf.config.list_physical_devices("GPU")  # triggers (and mutes) the CUDA probe once

tf.get_logger().setLevel("ERROR")

__all__ = ["keras", "tf"]
