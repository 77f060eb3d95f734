"""Losses on integer labels: cross-entropy with label smoothing, and focal loss."""

from __future__ import annotations

from training._tf import keras, tf


@keras.saving.register_keras_serializable(package="shipyard")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy on integer labels, with optional label smoothing."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, name: str = "crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), self.num_classes)
        return keras.losses.categorical_crossentropy(y_true, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="shipyard")
class SparseFocalLoss(keras.losses.Loss):
    """Focal loss (Lin et al. 2017) on integer labels: down-weights easy examples by ``(1 - p)^gamma``."""

    def __init__(self, num_classes: int, gamma: float = 2.0, label_smoothing: float = 0.0, name: str = "focal", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), self.num_classes)
        return keras.losses.categorical_focal_crossentropy(
            y_true, y_pred, gamma=self.gamma, alpha=1.0, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "gamma": self.gamma,
            "label_smoothing": self.label_smoothing,
        }
