"""The Open Inference Protocol (V2) over REST: parsing an inference request and encoding its response.

Pure functions over bytes and numpy (no BentoML, no Starlette). Both body forms are understood:

* plain JSON: ``{"inputs": [{"name", "datatype", "shape", "data"}], "outputs": [...], "parameters": {...}}``,
  where a ``BYTES`` element is a string (here: the base64 of an encoded image, as MLServer's ``base64``
  content type and KServe's clients send it) and numbers are a flat or nested list;
* the binary tensor data extension (what ``tritonclient.http`` sends by default): the JSON header of
  ``Inference-Header-Content-Length`` bytes, then each binary input's bytes in input order, sized by its
  ``binary_data_size`` parameter; a ``BYTES`` element is a 4-byte little-endian length and its bytes.

Every problem in a request is a :class:`V2Error` with a 4xx status and a message that says what to send.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The header of the binary tensor data extension: how many bytes of the body are the JSON part.
HEADER_LENGTH = "inference-header-content-length"

#: V2 datatypes with a fixed element size, and their numpy types ("BYTES" is variable-length).
NUMERIC: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"


class V2Error(Exception):
    """A request the protocol or the model cannot take: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400, kind: str = "bad_request") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind


@dataclass(frozen=True)
class Tensor:
    """One input tensor of a request: ``data`` is a numpy array, or a list of ``bytes`` for ``BYTES``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of the request's ``outputs``: its name, whether it comes back binary, its parameters."""

    name: str
    binary: bool
    parameters: dict[str, Any]


@dataclass(frozen=True)
class InferRequest:
    """A parsed ``POST .../infer``."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None
    parameters: dict[str, Any]
    binary_output: bool

    def parameter(self, name: str, output: str | None = None) -> Any:
        """The value of parameter ``name``: on the requested ``output`` first, then on the request."""
        for requested in self.outputs or ():
            if requested.name == output and name in requested.parameters:
                return requested.parameters[name]
        return self.parameters.get(name)


@dataclass(frozen=True)
class OutputTensor:
    """One output of a response: ``data`` a numpy array, or a list of ``bytes`` for ``BYTES``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any


# ------------------------------------------------------------------------------------------- request


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an inference request body; ``header_length`` is the ``Inference-Header-Content-Length`` header.

    Raises:
        V2Error: not JSON, not the protocol's shape, or binary data that does not add up (400).
    """
    header, binary = _split(body, header_length)
    raw = _json_object(header)
    inputs_raw = raw.get("inputs")
    if not isinstance(inputs_raw, list) or not inputs_raw:
        raise V2Error('"inputs" must be a non-empty list of tensors {"name", "datatype", "shape", "data"}')
    offset = 0
    inputs = []
    for i, item in enumerate(inputs_raw):
        tensor, used = _tensor(item, i, binary, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise V2Error(
            f"the body carries {len(binary)} bytes of binary tensor data but the inputs' binary_data_size "
            f"parameters add up to {offset}"
        )
    parameters = _parameters(raw.get("parameters"), "the request")
    binary_output = bool(parameters.get("binary_data_output", False))
    outputs = _requested_outputs(raw.get("outputs"), binary_output)
    request_id = raw.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error(f'"id" must be a string, not {type(request_id).__name__}')
    return InferRequest(request_id, inputs, outputs, parameters, binary_output)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        size = int(header_length)
    except ValueError:
        raise V2Error(f"Inference-Header-Content-Length {header_length[:20]!r} is not a number") from None
    if not 0 < size <= len(body):
        raise V2Error(
            f"Inference-Header-Content-Length is {size} but the body has {len(body)} bytes; it must give the "
            "length of the JSON part, which comes first"
        )
    return body[:size], body[size:]


def _json_object(header: bytes) -> dict[str, Any]:
    if not header.strip():
        raise V2Error('the request body is empty; send a JSON inference request {"inputs": [...]}')
    try:
        raw = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise V2Error(f"the inference request is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise V2Error(f"the inference request must be a JSON object, not {type(raw).__name__}")
    return raw


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2Error(f'"parameters" of {where} must be a JSON object, not {type(value).__name__}')
    return value


def _requested_outputs(value: Any, binary_output: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise V2Error('"outputs" must be a list of {"name": ...} objects')
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise V2Error(f'outputs[{i}] must be an object with a string "name"')
        params = _parameters(item.get("parameters"), f"outputs[{i}]")
        out.append(RequestedOutput(item["name"], bool(params.get("binary_data", binary_output)), params))
    return out


def _tensor(item: Any, index: int, binary: bytes, offset: int) -> tuple[Tensor, int]:
    """One input tensor and how many bytes of the binary section it used."""
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise V2Error(f"{where} must be an object, not {type(item).__name__}")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not name:
        raise V2Error(f'{where} needs a string "name"')
    where = f"input {name!r}"
    if datatype != BYTES and datatype not in NUMERIC:
        raise V2Error(f"{where}: datatype {datatype!r} is not a V2 datatype; use one of BYTES, {', '.join(NUMERIC)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise V2Error(f'{where}: "shape" must be a list of non-negative integers, not {shape!r}')
    params = _parameters(item.get("parameters"), where)
    size = params.get("binary_data_size")
    count = int(np.prod(shape)) if shape else 1
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise V2Error(
                f"{where}: binary_data_size {size!r} does not fit the {len(binary) - offset} bytes of binary data left"
            )
        if "data" in item:
            raise V2Error(f'{where} has both "data" and binary_data_size; send one of them')
        chunk = binary[offset : offset + size]
        data = _binary_bytes(chunk, count, where) if datatype == BYTES else _binary_numeric(chunk, datatype, shape, where)
        return Tensor(name, datatype, tuple(shape), data, params), size
    if "data" not in item:
        raise V2Error(f'{where} has no "data" (and no binary_data_size parameter)')
    data = _json_bytes(item["data"], count, where) if datatype == BYTES else _json_numeric(item["data"], datatype, shape, where)
    return Tensor(name, datatype, tuple(shape), data, params), 0


def _binary_bytes(chunk: bytes, count: int, where: str) -> list[bytes]:
    out, pos = [], 0
    while pos < len(chunk):
        if pos + 4 > len(chunk):
            raise V2Error(f"{where}: BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", chunk, pos)
        if pos + 4 + n > len(chunk):
            raise V2Error(f"{where}: a BYTES element claims {n} bytes, more than the data left")
        out.append(chunk[pos + 4 : pos + 4 + n])
        pos += 4 + n
    if len(out) != count:
        raise V2Error(f"{where}: the shape holds {count} elements but the binary data has {len(out)}")
    return out


def _binary_numeric(chunk: bytes, datatype: str, shape: list[int], where: str) -> np.ndarray:
    dtype = NUMERIC[datatype]
    count = int(np.prod(shape)) if shape else 1
    if len(chunk) != count * dtype.itemsize:
        raise V2Error(
            f"{where}: {datatype} {shape} needs {count * dtype.itemsize} bytes, the binary data has {len(chunk)}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _json_bytes(data: Any, count: int, where: str) -> list[bytes]:
    flat = _flatten(data)
    if len(flat) != count:
        raise V2Error(f"{where}: the shape holds {count} elements but \"data\" has {len(flat)}")
    out = []
    for i, value in enumerate(flat):
        if not isinstance(value, str):
            raise V2Error(f"{where}[{i}]: a BYTES element in JSON must be a string (the base64 of the image file)")
        try:
            out.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise V2Error(
                f"{where}[{i}] is not base64; in JSON send each image file base64-encoded, or send raw bytes with "
                "the binary tensor data extension (tritonclient's default)"
            ) from None
    return out


def _json_numeric(data: Any, datatype: str, shape: list[int], where: str) -> np.ndarray:
    flat = _flatten(data)
    count = int(np.prod(shape)) if shape else 1
    if len(flat) != count:
        raise V2Error(f"{where}: the shape {shape} holds {count} elements but \"data\" has {len(flat)}")
    if not all(isinstance(v, int | float) for v in flat):
        raise V2Error(f"{where}: {datatype} data must be numbers")
    dtype = NUMERIC[datatype]
    array = np.asarray(flat, dtype=np.float64 if dtype.kind == "f" else np.int64 if dtype.kind in "iu" else bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise V2Error(f"{where}: a value is outside the range of {datatype} ({info.min}..{info.max})")
    return array.astype(dtype).reshape(shape)


# ------------------------------------------------------------------------------------------ response


def encode_response(
    body: dict[str, Any], outputs: list[OutputTensor], binary: dict[str, bool]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers.

    Args:
        body: the response's other fields (``model_name``, ``model_version``, ``id``, ``parameters``).
        outputs: the output tensors, in order.
        binary: ``{output name: send as binary}``; any binary output adds the extension's header.
    """
    entries, chunks = [], []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        if binary.get(out.name, False):
            chunk = _to_binary(out)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = _to_json(out)
        entries.append(entry)
    header = json.dumps({**body, "outputs": entries}, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def _to_binary(out: OutputTensor) -> bytes:
    if out.datatype == BYTES:
        return b"".join(struct.pack("<I", len(v)) + v for v in out.data)
    return np.ascontiguousarray(out.data, dtype=NUMERIC[out.datatype]).tobytes()


def _to_json(out: OutputTensor) -> list[Any]:
    if out.datatype == BYTES:
        return [v.decode("utf-8", "replace") for v in out.data]
    return np.asarray(out.data).reshape(-1).tolist()
