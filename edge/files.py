"""Package files: written so that a reader never sees half of one (write beside the target, then rename over
it), and versioned JSON read back with one schema check and one-line errors."""

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


def read_versioned_json(path: Path, model: Any, versions: tuple[int, ...], *, absent_version: int | None = None) -> Any:
    """``path``'s JSON object validated as the pydantic ``model``, when its ``schema_version`` is one of
    ``versions`` (``absent_version`` stands in for a file written before it had one).

    Raises:
        PackageError: the file cannot be read, is not a JSON object, has another schema version, or a field
            does not validate (the first one, named, and how many more).
    """
    from pydantic import ValidationError

    from edge.errors import PackageError

    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path} is not valid JSON ({exc}); the package is damaged, re-create it") from exc
    if not isinstance(raw, dict):
        raise PackageError(f"{path} holds a JSON {type(raw).__name__}, not an object; re-create the package")
    if absent_version is not None:
        raw.setdefault("schema_version", absent_version)
    version = raw.get("schema_version")
    if version not in versions:
        raise PackageError(
            f"{path} has schema_version {version!r}; this Shipyard reads schema_version "
            f"{' and '.join(map(str, versions))}. Re-create the package with this version of Shipyard"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PackageError(f"{path}: field {where!r} is invalid: {first['msg']}{more}") from exc
