"""Writing files so that a reader never sees half of one: write beside the target, then rename over it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    Creates the parent folders. A reader (another process, a crash halfway) sees the old file or the
    new one, never a truncated one.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(
    path: Path | str, payload: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None, **dumps: Any
) -> Path:
    """Write ``payload`` as JSON (UTF-8) to ``path`` atomically (see :func:`write_bytes_atomic`).

    Args:
        path: the target file.
        payload: anything ``json.dumps`` takes with ``default``.
        indent: JSON indentation (``None``: one line).
        default: ``json.dumps``' fallback for values it cannot encode.
        **dumps: other ``json.dumps`` options (``sort_keys``...).
    """
    text = json.dumps(payload, indent=indent, default=default, **dumps)
    return write_bytes_atomic(path, text.encode("utf-8"))
