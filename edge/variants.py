"""The variant table: every model format and every variant Shipyard builds, looked up by name.

:data:`FORMATS` says what a format is (its file suffix, whether it is a folder, the edge runner that
opens it, how to read its inputs/outputs and its weights from the file). :data:`VARIANTS` says what
each variant of a model package is (its format, quantization, parity gate, outputs, whether it needs
representative images or fine-tuning, and where it stands when a variant is picked by default).

Everything that asks "what kind of file is this?" reads these two tables: the optimizer (``training``
keeps only the builders, keyed by the same names), the package loader and the edge CLI, the server
(which variant also outputs the embedding) and the benchmarks. A variant's name is its file name in
``<package>/variants/``.

No TensorFlow here: the readers use ``ai-edge-litert`` and ``onnx``, imported where they are needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from edge.runners import OnnxRunner, Runner, TFLiteRunner

GateKind = Literal["float", "fp16", "dynamic", "int8"]
PROBABILITIES = "probabilities"
EMBEDDING = "embedding"

# ------------------------------------------------------------------------------------------- readers


def _tflite_interpreter(content: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_content=content, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interp.allocate_tensors()
    return interp


def tflite_op_counts(content: bytes) -> dict[str, int]:
    """How many of each operator a TFLite flatbuffer runs (``{"CONV_2D": 3, ...}``), without delegates."""
    interp = _tflite_interpreter(content)
    return dict(Counter(op["op_name"] for op in interp._get_ops_details()))


def _tflite_quant(det: dict[str, Any]) -> dict[str, float | int] | None:
    scale, zero = det.get("quantization", (0.0, 0))
    return {"scale": float(scale), "zero_point": int(zero)} if scale else None


def inspect_tflite(path: Path) -> dict[str, Any]:
    """Input/output dtypes and quantization, input shape and operator counts of a ``.tflite`` file."""
    interp = _tflite_interpreter(Path(path).read_bytes())
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    return {
        "input_dtype": np.dtype(inp["dtype"]).name,
        "output_dtype": np.dtype(out["dtype"]).name,
        "input_quantization": _tflite_quant(inp),
        "output_quantization": _tflite_quant(out),
        "input_shape": [int(d) for d in inp.get("shape_signature", inp["shape"])],
        "ops": dict(Counter(op["op_name"] for op in interp._get_ops_details())),
    }


def inspect_onnx(path: Path) -> dict[str, Any]:
    """Input/output dtypes, input shape, opset and ``metadata_props`` of an ``.onnx`` file (needs ``onnx``)."""
    import onnx

    model = onnx.load(str(path))
    elem = onnx.helper.tensor_dtype_to_np_dtype
    first_in, first_out = model.graph.input[0], model.graph.output[0]
    dims = [d.dim_value if d.dim_value else None for d in first_in.type.tensor_type.shape.dim]
    return {
        "input_dtype": np.dtype(elem(first_in.type.tensor_type.elem_type)).name,
        "output_dtype": np.dtype(elem(first_out.type.tensor_type.elem_type)).name,
        "input_shape": dims,
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def inspect_float(path: Path) -> dict[str, Any]:
    """The input/output description of a format that takes and returns float32 (SavedModel, Keras)."""
    return {"input_dtype": "float32", "output_dtype": "float32"}


_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def _centered(arr: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Quantized integers minus their zero point(s), so that a zero weight reads 0."""
    zps = params.get("zero_points")
    if arr.dtype.kind not in "iu" or zps is None or not len(zps) or not np.any(zps):
        return arr
    shape = [1] * arr.ndim
    shape[params.get("quantized_dimension", 0)] = -1
    return arr.astype(np.int32) - (np.asarray(zps).reshape(shape) if len(zps) > 1 else int(zps[0]))


def tflite_weights(content: bytes) -> list[np.ndarray]:
    """The weight tensors of a TFLite model's convolutions and fully connected layers, as stored.

    Quantized weights come back as their integers minus the zero point (so a zero weight is 0); float16
    weights stored behind a DEQUANTIZE op are read at their source.
    """
    interp = _tflite_interpreter(content)
    ops = interp._get_ops_details()
    producers = {int(t): op for op in ops for t in op["outputs"]}
    details = {d["index"]: d for d in interp.get_tensor_details()}
    arrays = []
    seen: set[int] = set()
    for op in ops:
        if op["op_name"] not in _WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        index = int(op["inputs"][1])
        producer = producers.get(index)
        if producer is not None and producer["op_name"] == "DEQUANTIZE":
            index = int(producer["inputs"][0])
        elif producer is not None:
            continue  # computed at run time, not a stored weight
        if index in seen or index < 0:
            continue
        seen.add(index)
        params = details[index].get("quantization_parameters", {})
        arrays.append(_centered(np.asarray(interp.get_tensor(index)), params))
    return arrays


def onnx_weights(content: bytes) -> list[np.ndarray]:
    """The multi-dimensional initializers (kernels, weight matrices) of an ONNX model (needs ``onnx``)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(content)
    return [numpy_helper.to_array(init) for init in model.graph.initializer if len(init.dims) >= 2]


def _open_tflite(path: str | Path, num_threads: int | None = None, *, spin: bool = True) -> Runner:
    return TFLiteRunner(path, num_threads=num_threads)


def _open_onnx(path: str | Path, num_threads: int | None = None, *, spin: bool = True) -> Runner:
    return OnnxRunner(path, num_threads=num_threads, spin=spin)


# --------------------------------------------------------------------------------------------- formats


@dataclass(frozen=True, kw_only=True)
class Format:
    """One entry of :data:`FORMATS`.

    Attributes:
        name: the manifest's ``format`` value.
        suffix: the file suffix (``""`` for a folder).
        directory: the model is a folder, not one file.
        open: ``open(path, num_threads, spin=...) -> Runner`` with the edge runner; ``None`` when no edge
            runtime runs it (the device side refuses it, the training side checks it with TensorFlow).
        inspect: ``inspect(path) -> dict``: input/output dtypes and quantization, read from the file.
        weights: ``weights(content) -> arrays``: the stored kernels, for the measured sparsity; ``None``
            for folders (the training side reads the Keras weights).
        threads: the runner honours a thread count (latency is measured with 1 thread and with all).
        concurrent: one opened model runs batches from several threads at once (an ONNX Runtime session
            does); a server that runs several batches at once opens one copy per thread of a model that
            does not (a TFLite interpreter).
        fixed_batch: changing the batch size reallocates the model's buffers (a TFLite interpreter): a
            server runs a batch image by image on the batch size it was opened with.
        label: how people call it, for messages.
    """

    name: str
    suffix: str
    label: str
    directory: bool = False
    open: Callable[..., Runner] | None = None
    inspect: Callable[[Path], dict[str, Any]] = inspect_float
    weights: Callable[[bytes], list[np.ndarray]] | None = None
    threads: bool = False
    concurrent: bool = False
    fixed_batch: bool = False

    @property
    def runnable(self) -> bool:
        """An edge runner runs it (on a device and in the server)."""
        return self.open is not None


FORMATS: dict[str, Format] = {
    "tflite": Format(
        name="tflite",
        suffix=".tflite",
        label="TFLite",
        open=_open_tflite,
        inspect=inspect_tflite,
        weights=tflite_weights,
        threads=True,
        fixed_batch=True,
    ),
    "onnx": Format(
        name="onnx",
        suffix=".onnx",
        label="ONNX",
        open=_open_onnx,
        inspect=inspect_onnx,
        weights=onnx_weights,
        threads=True,
        concurrent=True,
    ),
    "saved_model": Format(name="saved_model", suffix="", label="SavedModel", directory=True),
    "keras": Format(name="keras", suffix=".keras", label="Keras"),
}


def runnable_formats() -> list[str]:
    """Names of the formats an edge runner runs, in table order."""
    return [name for name, fmt in FORMATS.items() if fmt.runnable]


def runnable_labels() -> str:
    """``"TFLite or ONNX"``: the runnable formats, for messages."""
    return " or ".join(FORMATS[name].label for name in runnable_formats())


# -------------------------------------------------------------------------------------------- variants


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One entry of :data:`VARIANTS`.

    Attributes:
        name: the variant's name and file name (``int8.tflite``).
        format: a key of :data:`FORMATS`.
        quantization: the manifest's quantization label.
        gate: the parity gate kind (see ``training.config.GateConfig``).
        outputs: the model's outputs, in order.
        needs_representative: needs training images to calibrate int8 ranges.
        needs_fine_tuning: fine-tunes the model before converting it (QAT, pruning, clustering).
        default_rank: the order in which the device side picks a variant when none is named (lower
            first); ``None``: never picked by default.
        default_needs_pass: picked by default only when it passed its gate (a quantized variant); the
            float ones are picked whenever they exported.
        served: the variant the server serves when its config names none.
        extends: the variant this one equals plus more outputs (the server swaps that one for this one
            when it wants the embedding).
        description: one line for the report.
    """

    name: str
    format: str
    quantization: str
    gate: GateKind
    outputs: tuple[str, ...] = (PROBABILITIES,)
    needs_representative: bool = False
    needs_fine_tuning: bool = False
    default_rank: int | None = None
    default_needs_pass: bool = False
    served: bool = False
    extends: str | None = None
    description: str = ""

    @property
    def file_format(self) -> Format:
        """This variant's :class:`Format` entry."""
        return FORMATS[self.format]

    @property
    def outputs_embedding(self) -> bool:
        """The variant also outputs the embedding (it can feed the embedding drift signal)."""
        return EMBEDDING in self.outputs


def _variants(*entries: Variant) -> dict[str, Variant]:
    return {v.name: v for v in entries}


_INT8 = {"gate": "int8", "needs_representative": True}
_RETRAINED = {**_INT8, "needs_fine_tuning": True}

VARIANTS: dict[str, Variant] = _variants(
    Variant(
        name="fp32.tflite",
        format="tflite",
        quantization="none",
        gate="float",
        default_rank=1,
        served=True,
        description="plain TFLite conversion",
    ),
    Variant(
        name="fp32_embedding.tflite",
        format="tflite",
        quantization="none",
        gate="float",
        outputs=(PROBABILITIES, EMBEDDING),
        extends="fp32.tflite",
        description="plain TFLite with probabilities and the embedding (for drift monitoring)",
    ),
    Variant(
        name="fp16.tflite",
        format="tflite",
        quantization="float16",
        gate="fp16",
        description="float16 weights",
    ),
    Variant(
        name="dynamic.tflite",
        format="tflite",
        quantization="dynamic_range",
        gate="dynamic",
        description="dynamic-range quantization (int8 weights)",
    ),
    Variant(
        name="int8.tflite",
        format="tflite",
        quantization="int8",
        **_INT8,
        default_rank=0,
        default_needs_pass=True,
        description="full integer quantization, uint8 input and output",
    ),
    Variant(
        name="litert_int8.tflite",
        format="tflite",
        quantization="litert_int8",
        **_INT8,
        description="LiteRT quantizer (litert-quantizer) on fp32.tflite: int8 weights and activations, int8 input and output",
    ),
    Variant(
        name="qat_int8.tflite",
        format="tflite",
        quantization="qat_int8",
        **_RETRAINED,
        description="quantization-aware fine-tuning, then full integer",
    ),
    Variant(
        name="pruned_int8.tflite",
        format="tflite",
        quantization="pruned_int8",
        **_RETRAINED,
        description="magnitude pruning (polynomial schedule) with fine-tuning, then full integer",
    ),
    Variant(
        name="clustered_int8.tflite",
        format="tflite",
        quantization="clustered_int8",
        **_RETRAINED,
        description="weight clustering with fine-tuning, then full integer",
    ),
    Variant(
        name="model.onnx",
        format="onnx",
        quantization="none",
        gate="float",
        default_rank=2,
        description="ONNX (tf2onnx), dynamic batch",
    ),
    Variant(
        name="model_embedding.onnx",
        format="onnx",
        quantization="none",
        gate="float",
        outputs=(PROBABILITIES, EMBEDDING),
        extends="model.onnx",
        description="ONNX with probabilities and the embedding (for drift monitoring)",
    ),
    Variant(
        name="saved_model",
        format="saved_model",
        quantization="none",
        gate="float",
        description="TensorFlow SavedModel for TF Serving",
    ),
)


def variant_of(file: str) -> Variant | None:
    """The table entry of a package file (``variants/int8.tflite`` or ``int8.tflite``), if it is one."""
    return VARIANTS.get(PurePosixPath(file).name)


def default_order() -> list[Variant]:
    """The variants the device side picks when none is named, in order of preference."""
    ranked = [v for v in VARIANTS.values() if v.default_rank is not None]
    return sorted(ranked, key=lambda v: v.default_rank)  # type: ignore[arg-type, return-value]


def served_by_default() -> str:
    """The name of the variant the server serves when none is configured (``fp32.tflite``)."""
    return next(name for name, v in VARIANTS.items() if v.served)


def variants_where(pred: Callable[[Variant], bool], names: Iterable[str] | None = None) -> list[str]:
    """Names of the variants (of ``names``, default all, in table order) for which ``pred`` holds."""
    wanted = set(VARIANTS if names is None else names)
    return [name for name, v in VARIANTS.items() if name in wanted and pred(v)]


__all__ = [
    "EMBEDDING",
    "FORMATS",
    "PROBABILITIES",
    "VARIANTS",
    "Format",
    "GateKind",
    "Variant",
    "default_order",
    "inspect_onnx",
    "inspect_tflite",
    "onnx_weights",
    "runnable_formats",
    "runnable_labels",
    "served_by_default",
    "tflite_op_counts",
    "tflite_weights",
    "variant_of",
    "variants_where",
]
