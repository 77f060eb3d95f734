"""The V2 routes of the API service: a Starlette app mounted beside the service's own APIs.

They run on the service instance that BentoML created (``bentoml.get_current_service()``): the same model,
adaptive batching, monitoring, request guard and metrics as ``/classify``. Inputs are either encoded image
files (``BYTES``, input ``image``) or pixels already preprocessed to the package's input contract (``UINT8``
``[N, H, W, 3]``, input ``pixels``); outputs are the probabilities (``FP32 [N, classes]``), the top labels
(``BYTES [N, top_k]``) and each image's request id for ``/feedback`` (``BYTES [N]``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from serving.errors import note_error
from serving.v2.codec import (
    BYTES,
    HEADER_LENGTH,
    InferRequest,
    OutputTensor,
    Tensor,
    V2Error,
    encode_response,
    parse_request,
)

#: The protocol's name for this server and the extensions it implements (``GET /v2``).
SERVER_NAME = "shipyard"
EXTENSIONS = ["binary_tensor_data", "classification", "parameters"]
#: Input name -> its datatype; output name -> its datatype.
INPUTS = {"image": BYTES, "pixels": "UINT8"}
OUTPUTS = {"probabilities": "FP32", "labels": BYTES, "request_id": BYTES}
#: The V2 paths with a model (``{name}``, optionally ``versions/{version}``), for the request guard.
INFER_PATTERN = r"/v2/models/[^/]+(/versions/[^/]+)?/infer"


def error(message: str, status: int, kind: str | None = None) -> Any:
    """A V2 error answer ``{"error": message}`` (the kind noted for ``shipyard_errors_total``)."""
    from starlette.responses import JSONResponse

    if kind is not None:
        note_error(kind)
    return JSONResponse({"error": message}, status_code=status)


def _service() -> Any:
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return bentoml.get_current_service()
    except BentoMLException:
        return None


def _model(service: Any, name: str, version: str | None) -> str | None:
    """``None`` when ``name``/``version`` is the served model, else why not (the 404 message)."""
    manifest = service.manifest
    if name != manifest.name:
        return f"model {name!r} is not served here; this server serves {manifest.name!r} (GET /v2/models/{manifest.name})"
    if version is not None and version != manifest.version:
        return f"version {version!r} of {name!r} is not served here; the served version is {manifest.version!r}"
    return None


def model_metadata(service: Any) -> dict[str, Any]:
    """``GET /v2/models/{name}``: versions, platform, inputs and outputs with their shapes."""
    contract = service.manifest.input
    return {
        "name": service.manifest.name,
        "versions": [service.manifest.version],
        "platform": f"shipyard_{service.variant_info.format}",
        "inputs": [
            {"name": "image", "datatype": BYTES, "shape": [-1]},
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, contract.height, contract.width, contract.channels]},
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(service.labels)]},
            {"name": "labels", "datatype": BYTES, "shape": [-1, -1]},
            {"name": "request_id", "datatype": BYTES, "shape": [-1]},
        ],
    }


async def server_metadata(_request: Any) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS})


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shipyard")
    except PackageNotFoundError:
        return "unknown"


async def live(_request: Any) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"live": True})


async def server_ready(_request: Any) -> Any:
    from starlette.responses import JSONResponse

    service = _service()
    if service is None or not getattr(service, "ready", False):
        return JSONResponse({"ready": False}, status_code=503)
    return JSONResponse({"ready": True})


async def model_route(request: Any) -> Any:
    """``GET /v2/models/{name}[/versions/{version}]`` and their ``/ready``."""
    from starlette.responses import JSONResponse

    service = _service()
    if service is None:
        return error("the service is still starting; retry shortly", 503, "unavailable")
    name, version = request.path_params["name"], request.path_params.get("version")
    problem = _model(service, name, version)
    if problem is not None:
        return error(problem, 404, "not_found")
    if request.url.path.endswith("/ready"):
        return JSONResponse({"name": name, "ready": bool(service.ready)})
    return JSONResponse(model_metadata(service))


async def infer(request: Any) -> Any:
    """``POST /v2/models/{name}[/versions/{version}]/infer``."""
    from starlette.responses import Response

    from serving.http import ClientError

    started = float(request.scope.get("state", {}).get("shipyard_start", time.perf_counter()))
    service = _service()
    if service is None:
        return error("the service is still starting; retry shortly", 503, "unavailable")
    problem = _model(service, request.path_params["name"], request.path_params.get("version"))
    if problem is not None:
        return error(problem, 404, "not_found")
    try:
        parsed = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
        top_k = _top_k(parsed, len(service.labels), service.default_top_k)
        wanted = _wanted_outputs(parsed)
        decoded = await _inputs(service, parsed)
    except V2Error as exc:
        return error(exc.message, exc.status, exc.kind)
    except ClientError as exc:
        return error(exc.message, exc.status)  # its kind was noted where it was raised
    scored = await service.score(decoded, started)
    if isinstance(scored, Response):
        return scored  # 503: overloaded
    probabilities = np.stack([s.probabilities for s in scored]).astype(np.float32)
    outputs = _outputs(wanted, parsed, probabilities, [s.request_id for s in scored], service.labels, top_k)
    body, headers = encode_response(
        {
            "model_name": service.manifest.name,
            "model_version": service.manifest.version,
            "id": parsed.id or scored[0].request_id,
            "parameters": {"variant": service.variant_file, "top_k": top_k},
        },
        outputs,
        {o.name: binary for o, binary in zip(outputs, _binary_flags(parsed, outputs), strict=True)},
    )
    return Response(body, headers=headers)


def _top_k(parsed: InferRequest, classes: int, default: int) -> int:
    value = parsed.parameter("top_k", "labels")
    if value is None:
        return min(default, classes)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise V2Error(f"parameter top_k = {value!r} is invalid; give an integer >= 1")
    return min(value, classes)


def _wanted_outputs(parsed: InferRequest) -> list[str]:
    if parsed.outputs is None:
        return list(OUTPUTS)
    for requested in parsed.outputs:
        if requested.name not in OUTPUTS:
            raise V2Error(f"unknown output {requested.name!r}; the model's outputs are {', '.join(OUTPUTS)}")
    return [o.name for o in parsed.outputs]


async def _inputs(service: Any, parsed: InferRequest) -> list[Any]:
    """The request's images as the model's inputs (decoded files or checked pixels)."""
    if len(parsed.inputs) != 1:
        raise V2Error(
            f"send one input: 'image' (BYTES, encoded files) or 'pixels' (UINT8 [N, H, W, 3]); got {len(parsed.inputs)}"
        )
    tensor = parsed.inputs[0]
    expected = INPUTS.get(tensor.name)
    if expected is None:
        raise V2Error(f"unknown input {tensor.name!r}; the model's inputs are 'image' (BYTES) and 'pixels' (UINT8)")
    if tensor.datatype != expected:
        raise V2Error(f"input {tensor.name!r} takes datatype {expected}, not {tensor.datatype}")
    count = len(tensor.data) if tensor.datatype == BYTES else (tensor.shape[0] if tensor.shape else 0)
    if count < 1:
        raise V2Error(f"input {tensor.name!r} holds no image; send at least one")
    if count > service.max_batch_images:
        raise V2Error(
            f"{count} images in one request, over the limit of {service.max_batch_images} (serve.max_batch_images); "
            "split them",
            413,
            "too_large",
        )
    if tensor.datatype == BYTES:
        from serving.http import Upload

        return await service.decode([Upload(data, None, None) for data in tensor.data], "image")
    return _pixels(service, tensor)


def _pixels(service: Any, tensor: Tensor) -> list[Any]:
    from serving.processing import Decoded
    from serving.schemas import ImageInfo

    contract = service.manifest.input
    want = (contract.height, contract.width, contract.channels)
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != want:
        raise V2Error(
            f"input 'pixels' has shape {list(tensor.shape)}; this model takes [N, {want[0]}, {want[1]}, {want[2]}] "
            "uint8 pixels resized to its input contract (GET /metadata), or send encoded files as 'image'"
        )
    info = ImageInfo(width=contract.width, height=contract.height, format="UINT8")
    return [Decoded(np.ascontiguousarray(p), info, 0.0) for p in tensor.data]


def _outputs(
    wanted: list[str],
    parsed: InferRequest,
    probabilities: np.ndarray,
    request_ids: list[str],
    labels: list[str],
    top_k: int,
) -> list[OutputTensor]:
    order = np.argsort(-probabilities, axis=1, kind="stable")
    out = []
    for name in wanted:
        classes = parsed.parameter("classification", name)
        if classes is not None:  # Triton's classification extension: "value:index:label", best first
            k = _classification(classes, len(labels))
            rows = [f"{probabilities[i, j]:f}:{j}:{labels[j]}".encode() for i in range(len(order)) for j in order[i, :k]]
            out.append(OutputTensor(name, BYTES, (len(order), k), rows))
        elif name == "probabilities":
            out.append(OutputTensor(name, "FP32", probabilities.shape, probabilities))
        elif name == "labels":
            rows = [labels[j].encode() for i in range(len(order)) for j in order[i, :top_k]]
            out.append(OutputTensor(name, BYTES, (len(order), top_k), rows))
        else:
            out.append(OutputTensor(name, BYTES, (len(request_ids),), [r.encode() for r in request_ids]))
    return out


def _classification(value: Any, classes: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise V2Error(f"parameter classification = {value!r} is invalid; give an integer >= 1")
    return min(value, classes)


def _binary_flags(parsed: InferRequest, outputs: list[OutputTensor]) -> list[bool]:
    requested = {o.name: o.binary for o in parsed.outputs or ()}
    return [requested.get(o.name, parsed.binary_output) for o in outputs]


def v2_app() -> Any:
    """The Starlette app of the V2 routes (full paths: mount it at ``/``)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    model = "/v2/models/{name}"
    version = model + "/versions/{version}"
    return Starlette(
        routes=[
            Route("/v2", server_metadata, methods=["GET"]),
            Route("/v2/health/live", live, methods=["GET"]),
            Route("/v2/health/ready", server_ready, methods=["GET"]),
            *(Route(path, model_route, methods=["GET"]) for path in (model, model + "/ready", version, version + "/ready")),
            *(Route(path + "/infer", infer, methods=["POST"]) for path in (model, version)),
        ]
    )
