"""Errors shared by every stage.

All are ``ValueError`` subclasses, so library callers can catch one type; the server maps
:class:`InputError` subclasses to HTTP 4xx with the status each one carries.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class ShipyardError(ValueError):
    """Base class of every error Shipyard raises on purpose (the message says what and how to fix)."""


class InputError(ShipyardError):
    """A client's input was wrong. ``status`` is the HTTP status a server should answer with."""

    status: int = 400


class ImageError(InputError):
    """An image could not be used: not an image, corrupt, wrong format, empty."""

    status = 400


class UnsupportedFormatError(ImageError):
    """The image's format is not one of the allowed formats."""

    status = 415


class ImageTooLargeError(ImageError):
    """The image has more pixels (or bytes) than allowed."""

    status = 413


class PackageError(ShipyardError):
    """A model package is missing, malformed or of an unknown schema."""


class IntegrityError(PackageError):
    """A file's sha256 does not match the one recorded in the manifest."""


class ModelFileError(ShipyardError):
    """A model file is not a TFLite/ONNX model, is truncated, or needs an operator the runtime lacks."""


class DataError(InputError):
    """A data folder is missing, empty, or not laid out as one subfolder per class (optionally under splits)."""


def run_mapped(run: Callable[[], int | None]) -> int:
    """Run a command's handler and return its exit status: a :class:`ShipyardError` becomes one line
    ``error: ...`` on stderr and 2, Ctrl+C becomes ``interrupted`` and 130. The one error mapper of the
    ``shipyard`` command line and of ``python -m serving.loadtest``."""
    try:
        return int(run() or 0)
    except ShipyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
