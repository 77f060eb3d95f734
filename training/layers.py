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


@keras.saving.register_keras_serializable(package="shipyard")
class AffineSampler(keras.layers.Layer):
    """Warp an image with a per-image affine transform by bilinear sampling (a spatial transformer's sampler).

    Inputs ``[images (B, H, W, C), theta (B, 6)]``; ``theta`` maps output coordinates to input coordinates,
    both normalized to [-1, 1] (``x_in = t0 x + t1 y + t2``, ``y_in = t3 x + t4 y + t5``); points outside
    the image read zeros. The output has the input's size.

    Bilinear weights are ``max(0, 1 - |p - k|)`` for every input row and column, so the sampling is two
    batched matrix products: only element-wise ops, ``BatchMatMul``, ``Reshape`` and ``Sum``, which TFLite
    and ONNX convert to built-in operators (no gather, no custom op). The cost is ``H*W*(H + W*C)`` per
    image, small for the small inputs a spatial transformer is for.
    """

    def call(self, inputs):
        images, theta = inputs
        height, width, channels = (int(d) for d in images.shape[1:])
        theta = tf.cast(theta, self.compute_dtype)
        ys, xs = tf.meshgrid(tf.linspace(-1.0, 1.0, height), tf.linspace(-1.0, 1.0, width), indexing="ij")
        grid = tf.cast(tf.stack([tf.reshape(xs, [-1]), tf.reshape(ys, [-1]), tf.ones([height * width])]), theta.dtype)
        source = tf.matmul(tf.reshape(theta, [-1, 2, 3]), grid)  # (B, 2, P): x_in and y_in of each output pixel
        px = (source[:, 0, :] + 1.0) * (0.5 * (width - 1))
        py = (source[:, 1, :] + 1.0) * (0.5 * (height - 1))
        wx = tf.nn.relu(1.0 - tf.abs(px[:, :, None] - tf.range(width, dtype=px.dtype)[None, None, :]))
        wy = tf.nn.relu(1.0 - tf.abs(py[:, :, None] - tf.range(height, dtype=py.dtype)[None, None, :]))
        rows = tf.matmul(wy, tf.reshape(tf.cast(images, wy.dtype), [-1, height, width * channels]))
        rows = tf.reshape(rows, [-1, height * width, width, channels])
        out = tf.reduce_sum(rows * wx[:, :, :, None], axis=2)
        return tf.reshape(out, [-1, height, width, channels])

    def compute_output_shape(self, input_shape):
        return input_shape[0]
