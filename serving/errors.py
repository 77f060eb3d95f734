"""The kinds of failed request that ``shipyard_errors_total{kind}`` counts: one row each, one place to count.

Every error response of the API service passes through :class:`serving.http.RequestGuard`, which counts it
once: with the kind the code that refused the request noted (:func:`note_error`), else the kind of its HTTP
status. The series of every kind exist (at 0) from the start, so an alert on a rate sees 0, not "no data".
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    """One label value of ``shipyard_errors_total``: its usual status and what it means."""

    status: int
    meaning: str


ERROR_KINDS: dict[str, ErrorKind] = {
    "bad_request": ErrorKind(400, "a malformed body, a missing or invalid field or parameter (e.g. top_k)"),
    "bad_image": ErrorKind(400, "an uploaded file that is empty, not an image, or corrupt"),
    "not_found": ErrorKind(404, "no such endpoint, model or version, or an unknown request_id on /feedback"),
    "method_not_allowed": ErrorKind(405, "a method the endpoint does not take"),
    "conflict": ErrorKind(409, "feedback for a request that already has it"),
    "too_large": ErrorKind(413, "a body over serve.max_request_bytes, too many files or too many pixels"),
    "unsupported_media_type": ErrorKind(415, "a Content-Type the endpoint does not take"),
    "unsupported_format": ErrorKind(415, "an image format other than JPEG, PNG, WebP or BMP"),
    "too_many_requests": ErrorKind(429, "more than serve.max_concurrency requests in progress"),
    "internal": ErrorKind(500, "a server fault (a bug: please report it)"),
    "unavailable": ErrorKind(503, "the service is starting, or monitoring (for /feedback) is off"),
    "overloaded": ErrorKind(503, "shed by the batch queue (waited longer than serve.max_latency_ms)"),
    "timeout": ErrorKind(504, "not answered within serve.timeout_s"),
}

#: The kind of each status when the code did not note one.
_BY_STATUS: dict[int, str] = {}
for _name, _kind in ERROR_KINDS.items():
    _BY_STATUS.setdefault(_kind.status, _name)

#: Per-request holder of the noted kind (set by the guard for each request).
_NOTED: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("shipyard_error_kind", default=None)


def kind_for_status(status: int) -> str:
    """The kind of an error response of ``status`` when nothing more specific was noted."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return "internal" if status >= 500 else "bad_request"


def note_error(kind: str) -> None:
    """Say what kind of error the current request is about to answer (the guard counts it)."""
    holder = _NOTED.get()
    if holder is not None:
        holder["kind"] = kind


def begin_request() -> dict[str, str]:
    """A fresh holder for the request the caller is about to run (see :func:`note_error`)."""
    holder: dict[str, str] = {}
    _NOTED.set(holder)
    return holder
