"""How the API service's routes are put together: the Starlette app mounted beside BentoML's APIs (the
``GET`` routes, the OpenAPI document, the V2 protocol), the request guard's rules for every ``POST``, and the
guard's own answers to ``/classify`` and ``/classify_batch`` below BentoML's request stack (:func:`answer_here`).

Kept out of ``serving.service`` so that the service module holds the service classes and nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

from serving.config import ServeConfig
from serving.http import JSON, MAX_JSON_BYTES, MULTIPART, OCTET_STREAM, Route
from serving.schemas import BATCH_EXAMPLE, CLASSIFY_EXAMPLE, ClassifyBatchInput, ClassifyInput

FEEDBACK_EXAMPLE = 'curl -H "Content-Type: application/json" -d \'{"request_id": "...", "label": "cat"}\''
V2_EXAMPLE = "tritonclient.http, or curl -H 'Content-Type: application/json' -d '{\"inputs\": [...]}'"
logger = logging.getLogger("bentoml._internal.server.http_app")  # where BentoML logs its request errors


def guard_options(config: ServeConfig, service_name: str, live: Any) -> dict[str, Any]:
    """The keyword arguments of :class:`serving.http.RequestGuard` for ``config`` and the service named
    ``service_name``, whose running instance is ``live.running`` (see :func:`answer_here`; ``None``: BentoML
    answers every API itself)."""
    from serving.v2.routes import INFER_PATTERN

    cap = config.max_request_bytes
    no_input = Route((JSON, ""), MAX_JSON_BYTES, "curl -X POST http://HOST:3000/metadata (no body, or {})")
    here = {"server": f"BentoML Service/{service_name}", "live": live} if live and answers_here(config) else None
    return {
        "routes": {
            "/classify": Route((MULTIPART,), cap, CLASSIFY_EXAMPLE,
                               answer=here and answer_here("answer_classify", ClassifyInput, **here)),
            "/classify_batch": Route((MULTIPART,), cap, BATCH_EXAMPLE,
                                     answer=here and answer_here("answer_batch", ClassifyBatchInput, **here)),
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


def answers_here(config: ServeConfig) -> bool:
    """Whether the request guard answers ``/classify`` and ``/classify_batch`` itself (:func:`answer_here`): yes,
    unless ``serve.tracing`` or BentoML's CORS is on, which BentoML's inner request stack provides."""
    if config.tracing:
        return False
    try:
        from bentoml._internal.container import BentoMLContainer

        return not BentoMLContainer.http.cors.enabled.get()
    except Exception:  # another BentoML layout: keep its request stack
        return False


def answer_here(method: str, input_spec: Any, server: str, live: Any) -> Any:
    """An ASGI app answering a ``POST`` to one of the service's upload APIs below BentoML's request stack.

    The same parsing (the API's IO descriptor, ``input_spec.from_http_request``), the same service method
    (``method``, which the ``@bentoml.api`` method also calls) and the same answers; skipped are BentoML's
    routing, request context, keyword binding and response building, about 0.3 ms of the event loop per
    request. Measured on MobileNetV2, 2 cores, interleaved rounds: 1.71 -> 1.37 ms of event-loop CPU per
    request, 276 -> 295 req/s at 32 clients, 262 -> 288 at 8. BentoML's outer middleware (its request
    metrics, access log and request span) and the request guard around it still see every request. Its
    answers carry the ``Server`` header BentoML's would (``server``). The service instance is ``live.running``
    (the service class, where the instance puts itself while it runs: BentoML's ``get_current_service`` is one
    per process, and tests run several services in one).
    """
    from starlette.requests import Request
    from starlette.responses import Response

    from serving.http import ClientError, send_error

    named = (b"server", server.encode())

    async def app(scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        service = getattr(live, "running", None)
        if service is None:
            await send_error(send, 503, "the service is still starting or stopping; retry shortly", [named])
            return
        try:
            parsed = await input_spec.from_http_request(request, None)
            fields = {name: getattr(parsed, name) for name in type(parsed).model_fields}
            result = await getattr(service, method)(**fields, started=scope["state"]["shipyard_start"])
        except ClientError as exc:
            logger.warning("%s %s -> %d: %s", scope["method"], scope["path"], exc.status, exc.message)
            await send_error(send, exc.status, exc.message, [named])
            return
        except Exception:
            logger.exception("%s %s failed", scope["method"], scope["path"])
            await send_error(send, 500, "An unexpected error has occurred, please check the server log.", [named])
            return
        finally:
            await request.close()
        if isinstance(result, Response):
            await result(scope, receive, send)
            return
        body = result.model_dump_json().encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), named]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app


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
