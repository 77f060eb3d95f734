"""How the API service's routes are put together: the Starlette app mounted beside BentoML's APIs (the
``GET`` routes, the OpenAPI document, the V2 protocol) and the request guard's rules for every ``POST``.

Kept out of ``serving.service`` so that the service module holds the service classes and nothing else.
"""

from __future__ import annotations

from typing import Any

from serving.config import ServeConfig
from serving.http import JSON, MAX_JSON_BYTES, MULTIPART, OCTET_STREAM, Route
from serving.schemas import BATCH_EXAMPLE, CLASSIFY_EXAMPLE

FEEDBACK_EXAMPLE = 'curl -H "Content-Type: application/json" -d \'{"request_id": "...", "label": "cat"}\''
V2_EXAMPLE = "tritonclient.http, or curl -H 'Content-Type: application/json' -d '{\"inputs\": [...]}'"


def guard_options(config: ServeConfig) -> dict[str, Any]:
    """The keyword arguments of :class:`serving.http.RequestGuard` for ``config``."""
    from serving.v2.routes import INFER_PATTERN

    cap = config.max_request_bytes
    no_input = Route((JSON, ""), MAX_JSON_BYTES, "curl -X POST http://HOST:3000/metadata (no body, or {})")
    return {
        "routes": {
            "/classify": Route((MULTIPART,), cap, CLASSIFY_EXAMPLE),
            "/classify_batch": Route((MULTIPART,), cap, BATCH_EXAMPLE),
            "/feedback": Route((JSON,), MAX_JSON_BYTES, FEEDBACK_EXAMPLE),
            "/metadata": no_input,
            "/drift": no_input,
            "/shadow": no_input,
            "v2-infer": Route((JSON, OCTET_STREAM, ""), cap, V2_EXAMPLE, pattern=INFER_PATTERN),
        },
        "max_concurrency": config.max_concurrency,
        "timeout_s": config.timeout_s,
        "count_error": count_error,
        "own": {"/docs.json": docs_app(config)},
    }


def count_error(kind: str) -> None:
    """Count one error response in ``shipyard_errors_total{kind}`` through the running service's monitor."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        return
    monitor = getattr(service, "monitor", None)
    if monitor is not None:
        monitor.error(kind)


def docs_app(config: ServeConfig) -> Any:
    """The ASGI app answering ``GET /docs.json`` with :func:`serving.openapi.openapi_spec` (built once)."""
    from starlette.responses import JSONResponse

    from serving.openapi import openapi_spec
    from serving.v2.routes import server_version

    spec: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if not spec:
            import bentoml
            from bentoml.exceptions import BentoMLException

            try:
                manifest = bentoml.get_current_service().manifest
                model = (manifest.name, manifest.version)
            except (BentoMLException, AttributeError):
                model = None
            spec.update(
                openapi_spec(
                    "shipyard",
                    "Image classification: Shipyard's own API and the Open Inference Protocol (V2)",
                    server_version(),
                    max_images=config.max_batch_images,
                    model=model,
                )
            )
        await JSONResponse(spec)(scope, receive, send)

    return app


def mounted_app() -> Any:
    """The Starlette app mounted at ``/``: ``GET /metadata``, ``GET /drift``, ``GET /shadow`` and the V2 routes."""
    from starlette.applications import Starlette

    from serving.http import info_routes
    from serving.v2.routes import v2_app

    return Starlette(routes=[*info_routes({"/metadata": "describe", "/drift": "drift_report", "/shadow": "shadow_summary"}), *v2_app().routes])
