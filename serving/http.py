"""HTTP plumbing of the service: the request guard, client errors, upload parsing and the GET routes.

:class:`RequestGuard` is an ASGI middleware on the API service. Before a request reaches BentoML it
refuses BentoML's pickle content type, a wrong content type per endpoint (415) and a body over the cap
(413, from ``Content-Length`` before anything is read; a body without one is read up to the cap and no
further). On the way out it rewrites every 4xx/5xx body into ``{"error": "..."}``: BentoML answers its own
validation errors, ``BentoMLException`` (as a one-element list) and Starlette's 404/405 in other shapes.

:class:`ClientError` is how the APIs report a client's mistake with its status; :func:`quiet_client_errors`
keeps BentoML from logging a traceback for each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import anyio
from bentoml.exceptions import BentoMLException

from edge.errors import InputError
from serving.errors import begin_request, kind_for_status, note_error

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART = "multipart/form-data"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
PICKLE = "application/vnd.bentoml+pickle"
#: Cap on the JSON bodies of the small endpoints (/feedback, /metadata, /drift).
MAX_JSON_BYTES = 64 * 1024
#: Error bodies longer than this are passed through untouched (no error body is this long).
_MAX_ERROR_BODY = 256 * 1024


class ClientError(BentoMLException):
    """A client's mistake, answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, error_code=HTTPStatus(status))
        self.status = status

    @classmethod
    def from_input_error(cls, exc: InputError, where: str | None = None) -> ClientError:
        """Wrap an :class:`~edge.errors.InputError`, keeping its status; ``where`` prefixes the message."""
        message = f"{where}: {exc}" if where else str(exc)
        return cls(message, getattr(exc, "status", 400))


class _QuietClientErrors(logging.Filter):
    """Log a :class:`ClientError` or a validation error as one warning line, not an error with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ClientError | ValidationError):
            status, message = (exc.status, exc.message) if isinstance(exc, ClientError) else (400, str(exc))
            record.msg = "%s %s -> %d: %s"
            record.args = (*(record.args or ())[:2][::-1], status, message.replace("\n", " "))  # type: ignore[misc]
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_client_errors() -> None:
    """Install the filter on BentoML's request-error logger (idempotent)."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, _QuietClientErrors) for f in logger.filters):
        logger.addFilter(_QuietClientErrors())


# ----------------------------------------------------------------------------------------------- uploads


@dataclass(frozen=True)
class Upload:
    """One uploaded file, in memory."""

    data: bytes
    filename: str | None
    content_type: str | None

    def describe(self, field: str, index: int | None = None) -> str:
        """How an error message names this file: ``image 'cat.jpg'`` or ``images[2] 'dog.png'``."""
        where = field if index is None else f"{field}[{index}]"
        return f"{where} {self.filename!r}" if self.filename else where


async def read_form(request: Any, *, max_files: int) -> Any:
    """Parse the multipart body of ``request`` (a Starlette request).

    Raises:
        ClientError: the body is not valid multipart (400) or has more than ``max_files`` files (413).
    """
    from starlette.exceptions import HTTPException

    try:
        return await request.form(max_files=max_files, max_fields=64, max_part_size=MAX_JSON_BYTES)
    except HTTPException as exc:
        detail = str(exc.detail)
        if "Too many files" in detail:
            raise ClientError(f"more than {max_files} files in one request, over the limit; split them", 413) from None
        raise ClientError(f"the multipart body could not be parsed: {detail}", 400) from None
    except Exception as exc:  # python-multipart raises several types on garbage
        raise ClientError(f"the multipart body could not be parsed: {exc}", 400) from None


async def uploads(form: Any, field: str, *, example: str) -> list[Upload]:
    """The files sent in form field ``field``, read into memory, in order.

    Raises:
        ClientError: the field is missing (400), or holds text instead of a file (400).
    """
    from starlette.datastructures import UploadFile

    values = form.getlist(field)
    if not values:
        sent = ", ".join(repr(k) for k in dict.fromkeys(form.keys())) or "none"
        raise ClientError(
            f"form field {field!r} is missing (fields sent: {sent}); upload the image as a file, e.g. {example}"
        )
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, UploadFile):
            where = repr(field) if len(values) == 1 else f"{field}[{i}]"
            raise ClientError(
                f"form field {where} holds text ({len(str(value))} characters), not a file; upload the image "
                f"bytes as a file part (with a filename), e.g. {example}. URLs are not fetched"
            )
        out.append(Upload(await value.read(), value.filename, value.content_type))
    return out


def form_int(form: Any, field: str, *, low: int, high: int | None = None) -> int | None:
    """An optional integer form field (``None`` when absent), checked against ``[low, high]``.

    Raises:
        ClientError: not an integer, or out of range (400).
    """
    raw = form.get(field)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ClientError(f"form field {field!r} must be a number, not a file")
    try:
        value = int(raw.strip().strip('"'))
    except ValueError:
        raise ClientError(f"form field {field!r} = {raw[:40]!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ClientError(f"form field {field!r} = {value} is out of range; use {bound}")
    return value


# ------------------------------------------------------------------------------------------ the guard


def error_response_body(message: str) -> bytes:
    """The JSON body of every error: ``{"error": message}``."""
    return json.dumps({"error": message}).encode()


async def send_error(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a complete JSON error response."""
    body = error_response_body(message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def describe_validation(detail: list[Any]) -> str:
    """One sentence per pydantic error of BentoML's ``{"detail": [...]}``: field, problem."""
    parts = []
    for err in detail[:5]:
        if not isinstance(err, dict):
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "root")) or "body"
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "missing":
            parts.append(f"field {loc!r} is required")
        elif err.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({msg})")
        else:
            parts.append(f"field {loc!r}: {msg}")
    return "; ".join(parts) or "the request does not match the endpoint's schema"


def normalize_error(status: int, body: bytes, method: str, path: str) -> str:
    """The message of an error response of any shape BentoML or Starlette produce."""
    try:
        data: Any = json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("detail"), list):
        return describe_validation(data["detail"])
    if isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"]:
        return data["error"]
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    text = body.decode("utf-8", "replace").strip() if data is None else json.dumps(data)
    if status == 404:
        return f"{method} {path}: no such endpoint ({text or 'Not Found'})"
    if status == 405:
        return f"{method} {path}: method not allowed ({text or 'Method Not Allowed'})"
    return text or HTTPStatus(status).phrase


@dataclass(frozen=True)
class Route:
    """What the guard checks on ``POST`` to one path (or to every path matching ``pattern``).

    Attributes:
        media: the Content-Types the endpoint takes; ``""`` allows a body sent without one.
        limit: most body bytes (413 above).
        example: how to call it, quoted in the 415 message.
        pattern: a regular expression of the paths this rule covers (when not one fixed path).
        answer: an ASGI app that answers the request here, after the checks, instead of BentoML's request stack
            (see :func:`serving.routing.answer_here`).
    """

    media: tuple[str, ...]
    limit: int
    example: str = ""
    pattern: str | None = None
    answer: ASGIApp | None = None


#: Paths that bypass the concurrency limit and the timeout (health checks and metrics), as BentoML's do.
BYPASS_PATHS = frozenset({"/metrics", "/healthz", "/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})


class RequestGuard:
    """ASGI middleware in front of every route of the API service.

    In front: the concurrency limit (429), the timeout (504), the pickle refusal, and for each ``POST``
    route its content types (415) and body cap (413, from ``Content-Length`` before anything is read; a
    body without one is read up to the cap and no further). Behind: every 4xx/5xx body rewritten into
    ``{"error": "..."}``; a route with an ``answer`` is answered by that app instead of BentoML's
    (:func:`serving.routing.answer_here`). Every error response, its own and the app's, is counted once with
    ``count_error`` (the kind noted with :func:`serving.errors.note_error`, else its status's kind).

    Args:
        app: the wrapped ASGI app.
        routes: ``{path: Route}`` of the POST endpoints; a key starting with ``^`` is a regular expression.
        max_concurrency: requests in progress (429 above); ``None``: no limit.
        timeout_s: seconds until the answer must start (504 after); ``None``: no timeout.
        count_error: called with the kind of each error response (must not raise).
        own: ``{path: ASGI app}`` answered here for ``GET`` before BentoML's routes (``/docs.json``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Mapping[str, Route],
        max_concurrency: int | None = None,
        timeout_s: float | None = None,
        count_error: Callable[[str], None] | None = None,
        own: Mapping[str, ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.own = dict(own or {})
        self.routes = {path: rule for path, rule in routes.items() if rule.pattern is None}
        self.patterns = [(re.compile(rule.pattern), rule) for rule in routes.values() if rule.pattern is not None]
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.count_error = count_error or (lambda kind: None)
        self._semaphore: asyncio.Semaphore | None = None

    def rule_for(self, path: str) -> Route | None:
        """The POST rule of ``path``, if any."""
        rule = self.routes.get(path)
        if rule is None:
            rule = next((r for rx, r in self.patterns if rx.fullmatch(path)), None)
        return rule

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["shipyard_start"] = time.perf_counter()
        holder = begin_request()
        counted = _Counted(send, holder, self.count_error)
        if scope.get("path", "") in BYPASS_PATHS:
            await self._checked(scope, receive, counted)
            return
        if scope.get("method") == "GET" and scope.get("path", "") in self.own:
            await self.own[scope["path"]](scope, receive, counted)
            return
        if self.max_concurrency is not None:
            if self._semaphore is None:
                self._semaphore = asyncio.Semaphore(self.max_concurrency)
            if self._semaphore.locked():
                await send_error(counted, 429, "Too many requests: the server is at its limit of "
                                 f"{self.max_concurrency} requests in progress (serve.max_concurrency); retry later")
                return
            async with self._semaphore:
                await self._timed(scope, receive, counted)
        else:
            await self._timed(scope, receive, counted)

    async def _timed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request; answer 504 when it has not started its answer within ``timeout_s``."""
        if self.timeout_s is None:
            await self._checked(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.create_future()
        timer = loop.call_later(self.timeout_s, lambda: started.done() or started.set_result(False))

        async def tracked(message: Message) -> None:
            if not started.done():
                started.set_result(True)
            await send(message)

        task = asyncio.ensure_future(self._checked(scope, receive, tracked))
        task.add_done_callback(lambda _t: started.done() or started.set_result(True))
        try:
            answered = await started
        finally:
            timer.cancel()
        if not answered and task.cancel():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            note_error("timeout")
            await send_error(
                send, 504, f"Not able to process the request in {self.timeout_s:g} seconds (serve.timeout_s)"
            )
            return
        await task

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The content-type and size checks, then the app with its error bodies rewritten."""
        method, path = scope.get("method", "GET"), scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media == PICKLE:
            note_error("unsupported_media_type")
            await send_error(send, 415, f"content type {PICKLE} is not accepted; send multipart/form-data or JSON")
            return
        rule = self.rule_for(path) if method == "POST" else None
        if rule is not None:
            problem = self._refusal(rule, media, headers.get("content-length"), path)
            if problem is not None:
                status, kind, message = problem
                note_error(kind)
                await send_error(send, status, message, [(b"connection", b"close")] if status == 413 else None)
                return
            if headers.get("content-length") is None:
                body, complete = await _read_capped(receive, rule.limit)
                if not complete:
                    note_error("too_large")
                    await send_error(
                        send,
                        413,
                        f"the request body is over the limit of {rule.limit:,} bytes; send smaller images or fewer "
                        "per request",
                        [(b"connection", b"close")],
                    )
                    return
                receive = _replay(body, receive)
            if rule.answer is not None:
                await rule.answer(scope, receive, send)
                return
        await self.app(scope, receive, _ErrorRewriter(send, method, path))

    @staticmethod
    def _refusal(rule: Route, media: str, length: str | None, path: str) -> tuple[int, str, str] | None:
        """``(status, kind, message)`` when the content type or the declared length is refused."""
        if media not in rule.media:
            takes = " or ".join(m or "no Content-Type" for m in rule.media)
            return (
                415,
                "unsupported_media_type",
                f"POST {path} takes {takes}, not {media or 'a body without a Content-Type'}"
                + (f"; e.g. {rule.example}" if rule.example else ""),
            )
        if length is None:
            return None
        try:
            declared = int(length)
        except ValueError:
            return 400, "bad_request", f"Content-Length {length[:20]!r} is not a number"
        if declared > rule.limit:
            return (
                413,
                "too_large",
                f"the request body is {declared:,} bytes, over the limit of {rule.limit:,}; send smaller images or "
                "fewer per request",
            )
        return None


class _Counted:
    """A ``send`` that counts the response once when its status is an error."""

    def __init__(self, send: Send, holder: dict[str, str], count: Callable[[str], None]) -> None:
        self.send, self.holder, self.count = send, holder, count

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            try:
                self.count(self.holder.get("kind") or kind_for_status(message["status"]))
            except Exception:  # counting must never fail a response
                logging.getLogger("shipyard.serving").debug("counting an error failed", exc_info=True)
        await self.send(message)


async def _read_capped(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """Read a body of unknown length; stop (``complete=False``) as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _ErrorRewriter:
    """A ``send`` that buffers an error response and re-sends it as ``{"error": ...}``."""

    def __init__(self, send: Send, method: str, path: str) -> None:
        self.send, self.method, self.path = send, method, path
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.size = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] < 400:
                await self.send(message)
                return
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        self.size += len(self.chunks[-1])
        if self.size > _MAX_ERROR_BODY:  # not an error body we know: pass it through as it is
            start, self.start = self.start, None
            await self.send(start)
            await self.send({"type": "http.response.body", "body": b"".join(self.chunks), "more_body": True})
            self.chunks = []
            if not message.get("more_body", False):
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if message.get("more_body", False):
            return
        status = self.start["status"]
        body = error_response_body(normalize_error(status, b"".join(self.chunks), self.method, self.path))
        kept = [
            (k, v)
            for k, v in self.start.get("headers", [])
            if k.lower() not in (b"content-type", b"content-length")
        ]
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *kept,
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        self.start = None
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


# ------------------------------------------------------------------------------------------ GET routes


def info_routes(routes: Mapping[str, str]) -> list[Any]:
    """Starlette routes answering ``GET path`` with the JSON of ``current_service.<method>()``.

    Mounted on the API service for the read-only endpoints (BentoML's own APIs are POST only). The
    method runs in a worker thread; a :class:`ClientError` becomes its status.
    """
    from starlette.responses import JSONResponse
    from starlette.routing import Route as StarletteRoute

    def endpoint(method_name: str) -> Callable[[Any], Awaitable[Any]]:
        async def handle(_request: Any) -> Any:
            import bentoml

            try:
                service = bentoml.get_current_service()
            except BentoMLException:
                note_error("unavailable")
                return JSONResponse({"error": "the service is still starting; retry shortly"}, status_code=503)
            try:
                payload = await anyio.to_thread.run_sync(getattr(service, method_name))
            except ClientError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            return JSONResponse(payload)

        return handle

    return [StarletteRoute(path, endpoint(name), methods=["GET"]) for path, name in routes.items()]
