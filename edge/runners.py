"""One small class per runtime, with the same surface: ``predict(uint8 batch) -> probabilities``.

The runners take the ``uint8`` pixels of the input contract and do the rest: casting to the model's
input dtype, quantizing with the input's scale and zero point, and dequantizing outputs. They need
no TensorFlow: TFLite runs on ``ai-edge-litert``, ONNX on ``onnxruntime``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ImageError, ModelFileError

TFLITE_MAGIC = b"TFL3"


def default_threads() -> int:
    """All cores this process may use: its CPU affinity, capped by its cgroup's CPU quota (a container's
    ``--cpus``, a Kubernetes CPU limit), which the affinity does not show."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """This process's cgroup CPU quota in whole cores (rounded up); ``None`` when there is none or it cannot be
    read. cgroup v2 (``cpu.max``: ``"200000 100000"`` or ``"max 100000"``), else v1 (``cpu.cfs_quota_us``)."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (root / quota_file).read_text().split()
            if period_file is not None:
                fields.append((root / period_file).read_text().strip())
            if fields[0] == "max" or int(fields[0]) <= 0:
                return None
            return max(1, math.ceil(int(fields[0]) / int(fields[1])))
        except (OSError, ValueError, IndexError, ZeroDivisionError):
            continue
    return None


def sniff_format(path: str | Path) -> str:
    """Return ``"tflite"`` or ``"onnx"`` from a file's content (and suffix), else raise.

    Raises:
        ModelFileError: missing, empty, or neither format.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
    if size < 16:
        raise ModelFileError(f"{path} is {size} bytes: too small to be a model (truncated?)")
    if head[4:8] == TFLITE_MAGIC:
        return "tflite"
    # An ONNX ModelProto starts with ir_version (field 1, tag byte 0x08).
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        return "onnx"
    raise ModelFileError(
        f"{path} is neither a TFLite model (no 'TFL3' identifier) nor an ONNX model; "
        "pass a .tflite or .onnx file or a model package"
    )


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model, as the runtime reports it.

    ``shape`` has ``None`` for dimensions the model leaves open (usually the batch); ``quant`` is the
    affine ``(scale, zero_point)`` of a quantized tensor, else ``None``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    quant: tuple[float, int] | None = None

    def concrete_shape(self, batch_size: int | None = None) -> tuple[int, ...]:
        """The shape with open dimensions filled: the batch with ``batch_size`` (or 1), the rest with 1."""
        dims = []
        for i, d in enumerate(self.shape):
            if i == 0 and batch_size is not None:
                dims.append(int(batch_size))
            else:
                dims.append(1 if d is None else int(d))
        return tuple(dims)


def tflite_custom_ops(content: bytes) -> list[str]:
    """Names of the custom (non-builtin) operators a TFLite flatbuffer uses, in model order.

    Reads the flatbuffer's operator codes with the schema that ships in ``ai-edge-litert``; returns an
    empty list when the bytes cannot be parsed.
    """
    try:
        from ai_edge_litert import schema_py_generated as schema

        model = schema.Model.GetRootAs(content, 0)
        names: list[str] = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
            if builtin == schema.BuiltinOperator.CUSTOM:
                raw = code.CustomCode()
                name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
                if name and name not in names:
                    names.append(name)
        return names
    except Exception:
        return []


class _Output:
    __slots__ = ("dtype", "index", "name", "quant")

    def __init__(self, name: str, index: Any, dtype: np.dtype, quant: tuple[float, int] | None):
        self.name, self.index, self.dtype, self.quant = name, index, dtype, quant


def _dequantize(arr: np.ndarray, quant: tuple[float, int] | None) -> np.ndarray:
    if quant is None:
        return arr.astype(np.float32, copy=False)
    scale, zero = quant
    return (arr.astype(np.float32) - zero) * scale


class Runner:
    """Common surface of the runtime-specific runners."""

    format: str = ""
    path: Path | None = None
    input_shape: tuple[int | None, ...] = ()
    input_dtype: np.dtype = np.dtype(np.float32)
    input_quant: tuple[float, int] | None = None
    output_names: list[str]
    input_specs: list[TensorSpec]
    output_specs: list[TensorSpec]
    num_threads: int = 1
    _lut: tuple[tuple[float, int], np.dtype, np.ndarray | None] | None = None

    @property
    def height(self) -> int | None:
        return self.input_shape[1] if len(self.input_shape) == 4 else None

    @property
    def width(self) -> int | None:
        return self.input_shape[2] if len(self.input_shape) == 4 else None

    @property
    def channels(self) -> int | None:
        """Channels of the (first) input if it is 4-D NHWC, else ``None``."""
        return self.input_shape[3] if len(self.input_shape) == 4 else None

    @property
    def max_batch(self) -> int | None:
        """The batch size the model is fixed to, or ``None`` when its batch dimension is open."""
        return self.input_shape[0] if self.input_shape else None

    def check_image_input(self) -> None:
        """Check that the model's first input takes RGB images (``N, H, W, 3``).

        Raises:
            ModelFileError: the input is not 4-D, is channels-first, or has another number of channels.
        """
        where = self.path or f"the {self.format} model"
        shape = tuple(self.input_shape)
        if len(shape) != 4:
            raise ModelFileError(
                f"{where} takes an input of shape {shape}, not an image batch (N, H, W, 3); "
                "shipyard-edge runs image classifiers with an NHWC RGB input"
            )
        if shape[3] != 3:
            hint = " (it looks channels-first, NCHW)" if shape[1] == 3 else ""
            raise ModelFileError(
                f"{where} takes {shape[3]} channel(s) per pixel{hint}, input shape {shape}; shipyard-edge feeds "
                "RGB images (N, H, W, 3): export the model with a 3-channel NHWC input"
            )

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """Turn a ``uint8`` NHWC batch into what the model's input tensor takes."""
        batch = np.asarray(batch)
        if batch.ndim == 3:
            batch = batch[None]
        want = self.input_shape
        if batch.ndim != 4 or (
            len(want) == 4
            and any(w not in (None, -1) and w != g for w, g in zip(want[1:], batch.shape[1:], strict=True))
        ):
            raise ImageError(
                f"input batch has shape {tuple(batch.shape)}, the model takes {tuple(want)} (N, H, W, C); "
                "preprocess the images to the model's input size"
            )
        if self.input_quant is not None:
            scale, zero = self.input_quant
            if batch.dtype == np.uint8 and self.input_dtype.kind in "iu":
                lut = self._quant_lut()
                return np.ascontiguousarray(batch) if lut is None else lut[batch]
            info = np.iinfo(self.input_dtype)
            q = np.round(batch.astype(np.float32) / scale + zero)
            return np.clip(q, info.min, info.max).astype(self.input_dtype)
        return np.ascontiguousarray(batch, dtype=self.input_dtype)

    def _quant_lut(self) -> np.ndarray | None:
        """The 256-entry ``uint8`` pixel -> quantized input table, or ``None`` when it is the identity."""
        key = (self.input_quant, self.input_dtype)
        if self._lut is None or self._lut[:2] != key:
            scale, zero = self.input_quant  # type: ignore[misc]
            info = np.iinfo(self.input_dtype)
            values = np.arange(256, dtype=np.float64)
            table = np.clip(np.round(values / scale + zero), info.min, info.max).astype(self.input_dtype)
            identity = self.input_dtype == np.uint8 and np.array_equal(table, values.astype(np.uint8))
            self._lut = (*key, None if identity else table)
        return self._lut[2]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        """Run a ``uint8`` batch; return every output, dequantized to float32, by name."""
        raise NotImplementedError

    # The low-level surface (used by the benchmark): raw tensors of every input, no preprocessing.
    def set_inputs(self, arrays: Sequence[np.ndarray]) -> None:  # pragma: no cover - abstract
        """Set every input tensor from arrays already in the model's dtype and shape (one per input)."""
        raise NotImplementedError

    def invoke(self) -> None:  # pragma: no cover - abstract
        """Run the model on the inputs set by :meth:`set_inputs` (or :meth:`set_input`)."""
        raise NotImplementedError

    def get_outputs(self) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        """Every output of the last :meth:`invoke`, dequantized to float32, by name."""
        raise NotImplementedError

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 ``(N, num_classes)``, for a ``uint8`` NHWC batch."""
        outputs = self.run(batch)
        return outputs.get("probabilities", next(iter(outputs.values())))

    def close(self) -> None:
        """Release the runtime (a no-op for most)."""


class TFLiteRunner(Runner):
    """Runs a ``.tflite`` model with LiteRT (``ai-edge-litert``); no TensorFlow needed."""

    format = "tflite"

    def __init__(self, model: str | Path | bytes, num_threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ModelFileError("TFLite needs ai-edge-litert: pip install 'shipyard[edge]'") from exc
        if isinstance(model, bytes):
            content, self.path = model, None
            if len(content) < 8 or content[4:8] != TFLITE_MAGIC:
                raise ModelFileError("the bytes given are not a TFLite model (no 'TFL3' identifier)")
        else:
            self.path = Path(model)
            if sniff_format(self.path) != "tflite":
                raise ModelFileError(f"{self.path} is not a TFLite model")
            content = self.path.read_bytes()
        self.num_threads = num_threads or default_threads()
        try:
            self._interp = Interpreter(model_content=content, num_threads=self.num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(_tflite_error(self.path, exc, tflite_custom_ops(content))) from exc
        inputs = self._interp.get_input_details()
        if len(inputs) < 1:
            raise ModelFileError(f"{self.path} has no inputs")
        self._inputs = inputs
        first = inputs[0]
        self._in_index = first["index"]
        sig = tuple(int(d) for d in first.get("shape_signature", first["shape"]))
        self.input_shape = tuple(None if d == -1 else d for d in sig)
        self.input_dtype = np.dtype(first["dtype"])
        scale, zero = first.get("quantization", (0.0, 0))
        self.input_quant = (float(scale), int(zero)) if scale else None
        names = _tflite_output_names(self._interp)
        self._outputs = []
        for i, det in enumerate(self._interp.get_output_details()):
            scale, zero = det.get("quantization", (0.0, 0))
            name = names.get(det["index"]) or (det["name"] if len(names) else f"output_{i}")
            self._outputs.append(
                _Output(
                    name, det["index"], np.dtype(det["dtype"]), (float(scale), int(zero)) if scale else None
                )
            )
        if len(self._outputs) == 1:
            self._outputs[0].name = "probabilities"
        self.output_names = [o.name for o in self._outputs]
        self._batch = int(first["shape"][0])
        self.input_specs = [_tflite_spec(d) for d in inputs]
        self.output_specs = [
            TensorSpec(o.name, _tflite_spec(d).shape, o.dtype, o.quant)
            for o, d in zip(self._outputs, self._interp.get_output_details(), strict=True)
        ]

    @property
    def input_details(self) -> list[dict[str, Any]]:
        return self._inputs

    @property
    def interpreter(self) -> Any:
        """The underlying LiteRT ``Interpreter`` (for measurements against the runner; do not resize it)."""
        return self._interp

    def _set_batch(self, n: int) -> None:
        if n == self._batch:
            return
        shape = [n, *[int(d) for d in self._inputs[0]["shape"][1:]]]
        self._interp.resize_tensor_input(self._in_index, shape, strict=False)
        self._interp.allocate_tensors()
        self._batch = n

    def set_input(self, prepared: np.ndarray) -> None:
        """Copy an already prepared batch into the input tensor (resizing the batch if needed)."""
        self._set_batch(prepared.shape[0])
        self._interp.set_tensor(self._in_index, prepared)

    def invoke(self) -> None:
        """Run the interpreter on the current input tensor."""
        self._interp.invoke()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        prepared = self.prepare(batch)
        try:
            self.set_input(prepared)
            self._interp.invoke()
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(_tflite_error(self.path, exc)) from exc
        return {o.name: _dequantize(self._interp.get_tensor(o.index), o.quant) for o in self._outputs}

    def set_inputs(self, arrays: Sequence[np.ndarray]) -> None:
        """Set every input tensor from raw arrays (model dtype), resizing inputs whose shape changed.

        Raises:
            ModelFileError: wrong number of arrays, or the runtime refuses a shape or dtype.
        """
        if len(arrays) != len(self._inputs):
            raise ModelFileError(
                f"{self.path or 'the TFLite model'} has {len(self._inputs)} input(s), {len(arrays)} array(s) were given"
            )
        try:
            current = self._interp.get_input_details()
            resized = False
            for det, arr in zip(current, arrays, strict=True):
                if tuple(int(d) for d in det["shape"]) != tuple(arr.shape):
                    self._interp.resize_tensor_input(det["index"], list(arr.shape), strict=False)
                    resized = True
            if resized:
                self._interp.allocate_tensors()
                self._batch = int(arrays[0].shape[0]) if arrays[0].ndim else self._batch
            for det, arr in zip(current, arrays, strict=True):
                self._interp.set_tensor(det["index"], arr)
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(_tflite_error(self.path, exc)) from exc

    def get_outputs(self) -> dict[str, np.ndarray]:
        """Every output of the last :meth:`invoke`, dequantized to float32, by name."""
        return {o.name: _dequantize(self._interp.get_tensor(o.index), o.quant) for o in self._outputs}

    def close(self) -> None:
        """Drop the interpreter (its model copy and tensor arena); the runner cannot run after this."""
        self._interp = None


def _tflite_spec(det: dict[str, Any]) -> TensorSpec:
    sig = det.get("shape_signature")
    dims = sig if sig is not None and len(sig) else det["shape"]
    scale, zero = det.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(det["name"]),
        shape=tuple(None if int(d) == -1 else int(d) for d in dims),
        dtype=np.dtype(det["dtype"]),
        quant=(float(scale), int(zero)) if scale else None,
    )


def _tflite_output_names(interp: Any) -> dict[int, str]:
    """Map output tensor index -> the Keras output name kept in the TFLite signature, when there is one."""
    try:
        sigs = interp._get_full_signature_list()
    except Exception:
        return {}
    if not sigs:
        return {}
    sig = sigs.get("serving_default") or next(iter(sigs.values()))
    return {int(idx): name for name, idx in sig.get("outputs", {}).items()}


def _tflite_error(path: Path | None, exc: Exception, custom_ops: Sequence[str] = ()) -> str:
    text = str(exc)
    where = str(path) if path else "the TFLite model"
    if (
        "Encountered unresolved custom op" in text
        or "Op type not registered" in text
        or "custom" in text.lower()
    ):
        import re

        found = re.findall(r"custom op:? ?'?([A-Za-z0-9_/-]+(?:\.[A-Za-z0-9_/-]+)*)", text) or re.findall(
            r"op '([^']+)'", text
        )
        ops = list(dict.fromkeys([*found, *custom_ops]))
        named = ", ".join(repr(op) for op in ops) if ops else "(see the runtime message)"
        noun = "operator" if len(ops) <= 1 else "operators"
        return (
            f"{where} needs the custom {noun} {named}, which this LiteRT runtime does not provide; "
            f"rebuild the model with built-in ops only or register the op. Runtime said: {text.splitlines()[0]}"
        )
    if "flatbuffer" in text.lower() or "Model provided" in text or "not a valid" in text:
        return f"{where} is not a valid TFLite model (truncated or corrupt): {text.splitlines()[0]}"
    return f"{where} could not be run: {text.splitlines()[0] if text else type(exc).__name__}"


class OnnxRunner(Runner):
    """Runs an ``.onnx`` model with ONNX Runtime on the CPU."""

    format = "onnx"

    def __init__(self, model: str | Path | bytes, num_threads: int | None = None, *, spin: bool = True):
        """``spin=False`` stops ONNX Runtime's intra-op threads from busy-waiting for more work after each
        run: free in a tight loop, but a server that is idle between batches would burn a core on it
        (measured on MobileNetV2: ~70% more CPU per request)."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelFileError("ONNX models need onnxruntime: pip install 'shipyard[onnx]'") from exc
        opts = ort.SessionOptions()
        self.num_threads = num_threads or default_threads()
        opts.intra_op_num_threads = self.num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if isinstance(model, bytes):
            self.path, content = None, model
        else:
            self.path = Path(model)
            sniff_format(self.path)
            content = self.path.read_bytes()
        try:
            self._sess = ort.InferenceSession(content, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelFileError(
                f"{self.path or 'the ONNX bytes'} is not a loadable ONNX model (truncated or corrupt?): {first}"
            ) from exc
        inp = self._sess.get_inputs()[0]
        self._in_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        self.input_dtype = np.dtype(_ORT_TYPES.get(inp.type, np.float32))
        self.input_quant = None
        outs = self._sess.get_outputs()
        self.output_names = [o.name for o in outs] if len(outs) > 1 else ["probabilities"]
        self._ort_names = [o.name for o in outs]
        self.metadata: dict[str, str] = dict(self._sess.get_modelmeta().custom_metadata_map or {})
        self.input_specs = [_onnx_spec(i) for i in self._sess.get_inputs()]
        self.output_specs = [
            TensorSpec(name, _onnx_spec(o).shape, np.dtype(np.float32))
            for name, o in zip(self.output_names, outs, strict=True)
        ]
        self._feed: dict[str, np.ndarray] = {}
        self._last: list[np.ndarray] = []

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        prepared = self.prepare(batch)
        try:
            outs = self._sess.run(self._ort_names, {self._in_name: prepared})
        except Exception as exc:
            raise ModelFileError(f"ONNX Runtime failed on {self.path}: {str(exc).splitlines()[0]}") from exc
        return {
            name: o.astype(np.float32, copy=False) for name, o in zip(self.output_names, outs, strict=True)
        }

    def set_inputs(self, arrays: Sequence[np.ndarray]) -> None:
        """Keep raw arrays (model dtype, one per input) as the feed of the next :meth:`invoke`.

        Raises:
            ModelFileError: the number of arrays differs from the model's inputs.
        """
        if len(arrays) != len(self.input_specs):
            raise ModelFileError(
                f"{self.path or 'the ONNX model'} has {len(self.input_specs)} input(s), {len(arrays)} array(s) were given"
            )
        self._feed = {spec.name: arr for spec, arr in zip(self.input_specs, arrays, strict=True)}

    def invoke(self) -> None:
        """Run the session on the feed set by :meth:`set_inputs`.

        Raises:
            ModelFileError: ONNX Runtime refused the inputs or failed.
        """
        try:
            self._last = self._sess.run(self._ort_names, self._feed)
        except Exception as exc:
            raise ModelFileError(f"ONNX Runtime failed on {self.path}: {str(exc).splitlines()[0]}") from exc

    def get_outputs(self) -> dict[str, np.ndarray]:
        """Every output of the last :meth:`invoke`, as float32, by name."""
        return {
            name: o.astype(np.float32, copy=False)
            for name, o in zip(self.output_names, self._last, strict=True)
        }

    def close(self) -> None:
        """Drop the session (its weights and memory arena); the runner cannot run after this."""
        self._sess = None
        self._last = []


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _onnx_spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (arg.shape or ()))
    return TensorSpec(name=arg.name, shape=shape, dtype=np.dtype(_ORT_TYPES.get(arg.type, np.float32)))


def open_runner(path: str | Path, num_threads: int | None = None, *, spin: bool = True) -> Runner:
    """Open a ``.tflite`` or ``.onnx`` file with the right runner (``spin``: see :class:`OnnxRunner`).

    Raises:
        ModelFileError: not a model file, truncated, or the runtime refuses it.
    """
    from edge.variants import FORMATS  # the table names each format's runner (and imports this module)

    # sniff_format recognizes runnable formats only, so the entry has an opener
    return FORMATS[sniff_format(path)].open(path, num_threads, spin=spin)  # type: ignore[misc]
