"""The service's OpenAPI document, served at ``/docs.json`` (and read by the Swagger UI at ``/``).

Written from one table of the endpoints (:data:`ENDPOINTS`) rather than derived from BentoML's, because the
service's real contract is wider than what BentoML can see: ``GET`` beside ``POST`` on ``/metadata`` and
``/drift``, the V2 routes, the constraints the server enforces (a non-empty upload, at least one image, a
non-empty label), and every status it answers, each with the ``{"error": "..."}`` body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.errors import ERROR_KINDS

ERROR_REF = {"$ref": "#/components/schemas/Error"}
#: Statuses any guarded endpoint can answer besides its own: the concurrency limit, a bug, the timeout.
TRAFFIC = (429, 500, 504)


@dataclass(frozen=True)
class Endpoint:
    """One method of one path: what it takes, what it answers on success, which error statuses."""

    summary: str
    ok: dict[str, Any]
    errors: tuple[int, ...] = ()
    body: dict[str, Any] | None = None
    body_required: bool = True
    ok_media: str = "application/json"
    parameters: list[dict[str, Any]] = field(default_factory=list)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _multipart(max_images: int) -> tuple[dict[str, Any], dict[str, Any]]:
    top_k = {"type": "integer", "minimum": 1, "description": "how many labels to return (default serve.top_k)"}
    one = {
        "type": "object",
        "required": ["image"],
        "properties": {"image": {"type": "string", "format": "binary", "minLength": 1}, "top_k": top_k},
    }
    many = {
        "type": "object",
        "required": ["images"],
        "properties": {
            "images": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_images,
                "items": {"type": "string", "format": "binary", "minLength": 1},
            },
            "top_k": top_k,
        },
    }
    return {"multipart/form-data": {"schema": one}}, {"multipart/form-data": {"schema": many}}


def _v2_infer_body() -> dict[str, Any]:
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string", "enum": ["image", "pixels"]},
            "datatype": {"type": "string", "enum": ["BYTES", "UINT8"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    }
    request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": tensor},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        },
    }
    return {
        "application/json": {"schema": request},
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": "the binary tensor data extension: the JSON request (Inference-Header-Content-Length "
            "bytes), then the inputs' binary data",
        },
    }


def endpoints(max_images: int, model_name: str | None = None, version: str | None = None) -> dict[str, dict[str, Endpoint]]:
    """``{path: {method: Endpoint}}`` of every route the service answers (the V2 ``{name}`` and ``{version}``
    listed as the served ones when given; any other answers 404)."""
    single, batch = _multipart(max_images)
    obj = {"type": "object"}
    no_body = {"application/json": {"schema": {"type": "object"}}}
    name_schema = {"type": "string", **({"enum": [model_name]} if model_name else {})}
    version_schema = {"type": "string", **({"enum": [version]} if version else {})}
    model = [{"name": "name", "in": "path", "required": True, "schema": name_schema}]
    versioned = [*model, {"name": "version", "in": "path", "required": True, "schema": version_schema}]
    v2_infer = Endpoint("V2 inference (JSON or binary tensor data)", _json(_ref("V2InferResponse")),
                        (400, 404, 413, 415, 503), _v2_infer_body())
    v2_model = Endpoint("V2 model metadata", _json(_ref("V2ModelMetadata")), (404, 503))
    v2_ready = Endpoint("V2 model readiness", _json(obj), (404, 503))
    meta = Endpoint("what is served and how", _json(_ref("Metadata")), (400, 413, 415), no_body, body_required=False)
    drift = Endpoint("drift statistics of the live traffic", _json(obj), (400, 413, 415), no_body, body_required=False)
    shadow = Endpoint("the shadow candidate against the served model", _json(obj), (400, 413, 415), no_body,
                      body_required=False)
    table = {
        "/classify": {"post": Endpoint("classify one image", _json(_ref("ClassifyResult")), (400, 413, 415, 503),
                                       single)},
        "/classify_batch": {"post": Endpoint("classify several images", _json(_ref("BatchResult")),
                                             (400, 413, 415, 503), batch)},
        "/feedback": {"post": Endpoint("the true label of an earlier prediction", _json(_ref("FeedbackResult")),
                                       (400, 404, 409, 413, 415, 503), _json(_ref("FeedbackInput")))},
        "/metadata": {"get": Endpoint("what is served and how", _json(_ref("Metadata"))), "post": meta},
        "/drift": {"get": Endpoint("drift statistics of the live traffic", _json(obj)), "post": drift},
        "/shadow": {"get": Endpoint("the shadow candidate against the served model", _json(obj)), "post": shadow},
        "/v2": {"get": Endpoint("V2 server metadata", _json(obj))},
        "/v2/health/live": {"get": Endpoint("V2 liveness", _json(obj))},
        "/v2/health/ready": {"get": Endpoint("V2 readiness", _json(obj), (503,))},
        "/v2/models/{name}": {"get": v2_model},
        "/v2/models/{name}/ready": {"get": v2_ready},
        "/v2/models/{name}/infer": {"post": v2_infer},
        "/v2/models/{name}/versions/{version}": {"get": v2_model},
        "/v2/models/{name}/versions/{version}/ready": {"get": v2_ready},
        "/v2/models/{name}/versions/{version}/infer": {"post": v2_infer},
    }
    for path, methods in table.items():
        for method, ep in methods.items():
            if "{version}" in path or "{name}" in path:
                methods[method] = Endpoint(ep.summary, ep.ok, ep.errors, ep.body, ep.body_required, ep.ok_media,
                                           versioned if "{version}" in path else model)
    return table


def _operation(ep: Endpoint) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "success", "content": ep.ok}}
    for status in sorted({*ep.errors, *TRAFFIC}):
        meaning = "; ".join(k.meaning for k in ERROR_KINDS.values() if k.status == status) or "error"
        responses[str(status)] = {"description": meaning, "content": _json(ERROR_REF)}
    op: dict[str, Any] = {"summary": ep.summary, "responses": responses}
    if ep.parameters:
        op["parameters"] = ep.parameters
    if ep.body is not None:
        op["requestBody"] = {"required": ep.body_required, "content": ep.body}
    return op


def _infra() -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    unavailable = {"description": "not ready", "content": text}
    return {
        "/healthz": {"get": {"summary": "liveness (BentoML)", "responses": {"200": {"description": "alive", "content": text}}}},
        "/livez": {"get": {"summary": "liveness (BentoML)", "responses": {"200": {"description": "alive", "content": text}}}},
        "/readyz": {"get": {"summary": "readiness (BentoML)", "responses": {
            "200": {"description": "ready", "content": text}, "503": unavailable}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "metrics", "content": text}}}},
    }


def components() -> dict[str, Any]:
    """The JSON schemas the operations refer to (from the service's pydantic models)."""
    from pydantic import BaseModel, Field

    from serving.schemas import BatchResult, ClassifyResult, FeedbackResult, Metadata

    class Error(BaseModel):
        """Every error body."""

        error: str = Field(min_length=1)

    class FeedbackInput(BaseModel):
        """``POST /feedback``."""

        request_id: str = Field(min_length=1, description="the request_id of the prediction")
        label: str = Field(min_length=1, description="its true label (one of the model's labels)")

    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
        "parameters": {"type": "object"}}}
    schemas: dict[str, Any] = {
        "V2InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "parameters": {"type": "object"}, "outputs": {"type": "array", "items": tensor}}},
        "V2ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                            "properties": {"name": {"type": "string"},
                                           "versions": {"type": "array", "items": {"type": "string"}},
                                           "platform": {"type": "string"},
                                           "inputs": {"type": "array", "items": tensor},
                                           "outputs": {"type": "array", "items": tensor}}},
    }
    for model in (Error, FeedbackInput, ClassifyResult, BatchResult, FeedbackResult, Metadata):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {"schemas": schemas}


def openapi_spec(
    title: str,
    description: str,
    version: str,
    *,
    max_images: int,
    model: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The whole OpenAPI 3.0 document; ``model`` is the served ``(name, version)`` when known."""
    paths = _infra()
    for path, methods in endpoints(max_images, *(model or (None, None))).items():
        paths[path] = {method: _operation(ep) for method, ep in methods.items()}
    return {
        "openapi": "3.0.2",
        "info": {"title": title, "description": description, "version": version},
        "servers": [{"url": "."}],
        "paths": paths,
        "components": components(),
    }
