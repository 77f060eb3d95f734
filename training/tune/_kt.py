"""KerasTuner, imported once with TensorFlow's start-up lines muted (it imports Keras 3)."""

from __future__ import annotations

from edge.errors import ShipyardError
from training._tf import quiet_tf_stderr  # first: pins tf_keras before KerasTuner imports TensorFlow

try:
    with quiet_tf_stderr():  # KerasTuner imports Keras 3, whose start-up lines are TensorFlow's
        import keras_tuner as kt
        from keras_tuner.engine.base_tuner import BaseTuner
except ImportError as _exc:  # pragma: no cover - the train extra installs it
    raise ShipyardError(
        "shipyard tune needs keras-tuner; install the training extra: pip install -e '.[train]'"
    ) from _exc

__all__ = ["BaseTuner", "kt"]
