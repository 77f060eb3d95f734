"""Conversions: a Keras model in, a file's bytes out (TFLite, ONNX) or a SavedModel folder.

The conversions are pure: :func:`convert_to_tflite` and :func:`convert_to_onnx` return bytes, writing
the file is the caller's step. Every converted model takes the ``uint8`` pixels of the input contract
through its runner: the float ones have a ``float32`` input holding 0..255 (the runner casts), the
integer ones a ``uint8`` input with its scale and zero point (the runner quantizes). Scaling stays
inside the graph, as in the Keras model.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.config import ConfigError
from edge.manifest import InputContract
from edge.variants import PROBABILITIES
from training.optimize.errors import OptimizeError


@dataclass(frozen=True)
class QuantizationConfig:
    """How :func:`convert_to_tflite` quantizes. Build it with a named constructor.

    Attributes:
        kind: ``"none"`` (float32), ``"float16"`` (float16 weights), ``"dynamic"`` (int8 weights,
            activations quantized at run time) or ``"int8"`` (everything integer, ``uint8`` input and output).
        representative_samples: images used to calibrate activation ranges (``int8`` only).
    """

    kind: Literal["none", "float16", "dynamic", "int8"] = "none"
    representative_samples: int = 0

    @classmethod
    def for_float32(cls) -> QuantizationConfig:
        """A plain float32 conversion."""
        return cls("none")

    @classmethod
    def for_float16(cls) -> QuantizationConfig:
        """Float16 weights (half the size; CPUs compute in float32 after dequantizing once)."""
        return cls("float16")

    @classmethod
    def for_dynamic(cls) -> QuantizationConfig:
        """Dynamic-range quantization: int8 weights, float input and output."""
        return cls("dynamic")

    @classmethod
    def for_int8(cls, representative_samples: int = 100) -> QuantizationConfig:
        """Full integer quantization with ``uint8`` input and output.

        Raises:
            ConfigError: ``representative_samples`` is below 1.
        """
        if representative_samples < 1:
            raise ConfigError(
                f"int8 quantization needs representative images to calibrate ranges; got representative_samples="
                f"{representative_samples}. Set optimize.representative_samples to 100 or so"
            )
        return cls("int8", representative_samples)

    @property
    def needs_representative(self) -> bool:
        return self.kind == "int8"

    def apply(self, converter: Any, representative: np.ndarray | None) -> None:
        """Set a ``tf.lite.TFLiteConverter`` up for this quantization (in place).

        Raises:
            OptimizeError: int8 without representative images.
        """
        from training._tf import tf

        if self.kind == "none":
            return
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.kind == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif self.kind == "int8":
            if representative is None or len(representative) == 0:
                raise OptimizeError(
                    "int8 conversion needs representative images from the training split and got none; "
                    "make the package's training data available (--data DIR)"
                )
            images = np.asarray(representative)[: self.representative_samples]

            def generate():
                for i in range(len(images)):
                    yield [images[i : i + 1].astype(np.float32)]

            converter.representative_dataset = generate
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8


def convert_to_tflite(
    model: Any, quantization: QuantizationConfig, representative: np.ndarray | None = None
) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer.

    Args:
        model: a Keras 2 model taking float32 0..255 pixels.
        quantization: see :class:`QuantizationConfig`.
        representative: ``uint8`` (or float) images ``(N, H, W, 3)`` for int8 calibration.

    Returns:
        The ``.tflite`` file's bytes.

    Raises:
        OptimizeError: int8 without representative images.
        Exception: whatever the converter raises for an op it cannot convert.
    """
    from training._tf import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    quantization.apply(converter, representative)
    with warnings.catch_warnings():
        # uint8 input/output of a QAT model: the converter takes the ranges from the graph, as intended
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return bytes(converter.convert())


def quantize_with_litert(float_tflite: bytes, representative: np.ndarray) -> bytes:
    """Full-integer quantization of a float TFLite model with LiteRT's quantizer (``litert-quantizer``).

    The recipe is ``static_wi8_ai8`` (int8 weights per channel, int8 activations calibrated on
    ``representative``); the quantizer makes the input and output int8 too (the runner quantizes pixels
    with the input's scale and zero point).

    Args:
        float_tflite: a float32 ``.tflite`` file's bytes (one signature, one image input).
        representative: ``uint8`` images ``(N, H, W, 3)``: the same calibration images as ``int8.tflite``.

    Returns:
        The quantized ``.tflite`` file's bytes.

    Raises:
        OptimizeError: ``litert-quantizer`` is not installed, or there are no representative images.
    """
    try:
        from litert_quantizer import Quantizer, recipe
    except ImportError as exc:
        raise OptimizeError(
            f"LiteRT's quantizer is not installed ({exc}); pip install litert-quantizer (the train extra has it)"
        ) from exc
    from ai_edge_litert.interpreter import Interpreter

    if representative is None or len(representative) == 0:
        raise OptimizeError("the LiteRT quantizer needs representative images from the training split and got none")
    signatures = Interpreter(model_content=float_tflite).get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    images = np.asarray(representative, dtype=np.float32)
    quantizer = Quantizer(bytearray(float_tflite), recipe.static_wi8_ai8())
    calibration = quantizer.calibrate({key: [{name: images[i : i + 1]} for i in range(len(images))]})
    result = quantizer.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
    return _inline_buffers(bytes(result.quantized_model))


def _inline_buffers(content: bytes) -> bytes:
    """``content`` with every weight buffer inside the flatbuffer. Above 256 KB of weights the quantizer appends
    them after it (buffers by offset), which tools built on the older schema, such as the metadata writer,
    silently drop (MobileNetV2: 2.7 MB became 0.46 MB and would not load)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))  # resolves offset buffers
    if not any(getattr(b, "offset", 0) for b in model.buffers):
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    raise OptimizeError("the quantized model still has buffers by offset after inlining them")


def convert_to_onnx(model: Any, *, opset: int = 17, metadata: dict[str, str] | None = None) -> bytes:
    """Convert a Keras model to ONNX with tf2onnx: input ``image`` float32 ``(batch, H, W, 3)``, dynamic batch.

    Args:
        model: a Keras 2 model (one input; one or more named outputs).
        opset: the ONNX opset (13..18 with tf2onnx 1.17).
        metadata: written into ``metadata_props`` (values must be strings).

    Returns:
        The ``.onnx`` file's bytes.
    """
    import tf2onnx

    from training._tf import tf

    shape = (None, *[int(d) for d in model.inputs[0].shape[1:]])
    spec = (tf.TensorSpec(shape, tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    for key, value in (metadata or {}).items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    return proto.SerializeToString()


def export_saved_model(model: Any, directory: Path) -> Path:
    """Write a TensorFlow SavedModel for TF Serving: signature ``serving_default``, input ``image`` float32
    ``(None, H, W, 3)`` of 0..255 pixels, output ``probabilities``.

    Returns:
        ``directory``.
    """
    from training._tf import tf

    shape = (None, *[int(d) for d in model.inputs[0].shape[1:]])

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    def serve(image):
        return {PROBABILITIES: model(image, training=False)}

    module = tf.Module()
    module.model = model
    module.serve = serve
    tf.saved_model.save(module, str(directory), signatures={"serving_default": serve})
    return directory


def onnx_metadata(labels: list[str], contract: InputContract) -> dict[str, str]:
    """ONNX ``metadata_props``: ``labels`` (JSON list), ``input_contract`` (JSON) and ``shipyard_version``."""
    return {
        "labels": json.dumps(list(labels)),
        "input_contract": contract.model_dump_json(),
        "shipyard_version": shipyard_version(),
    }


def shipyard_version() -> str:
    """The installed Shipyard version (``0+unknown`` when not installed as a distribution)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shipyard")
    except PackageNotFoundError:
        return "0+unknown"
