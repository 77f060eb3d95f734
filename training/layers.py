"""Small custom layers that keep preprocessing inside the graph and survive ``safe_mode`` loading."""

from __future__ import annotations

from training._tf import keras, tf


@keras.saving.register_keras_serializable(package="shipyard")
class ReverseChannels(keras.layers.Layer):
    """RGB -> BGR (for bases trained on Caffe-style inputs, e.g. ResNet50)."""

    def call(self, inputs):
        return tf.reverse(inputs, axis=[-1])

    def compute_output_shape(self, input_shape):
        return input_shape
