"""Checks on one file before it becomes a sample: its name, its header, and whether it is complete.

See :mod:`training.data` for why the scan reads headers and runs cheap structural checks instead of decoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ShipyardError
from edge.preprocess import ALLOWED_FORMATS, IMAGE_SUFFIXES, open_image, read_file

#: Image formats we recognise by suffix but cannot use; reported with a hint to convert.
UNSUPPORTED_IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {
        ".gif",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
        ".ico",
        ".ppm",
        ".pgm",
        ".pbm",
        ".jp2",
        ".svg",
        ".psd",
    }
)


@dataclass
class FileInfo:
    """What the scan learnt about one file: its size and header, or why it cannot be used."""

    path: Path
    size: int = 0
    reason: str | None = None  # None: usable
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""


def _looks_complete(data: bytes, img: Any) -> bool:
    """Cheap structural check that the file is not cut short (see the module docstring)."""
    fmt = img.format
    if fmt == "JPEG":
        return data[-64:].rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "PNG":
        try:
            img.verify()
        except Exception:
            return False
        return True
    if fmt == "WEBP":
        if len(data) < 12:
            return False
        (riff_size,) = struct.unpack("<I", data[4:8])
        return len(data) >= riff_size + 8
    if fmt == "BMP":
        if len(data) < 6:
            return False
        (file_size,) = struct.unpack("<I", data[2:6])
        return file_size > 0 and len(data) >= file_size
    return False


def check_file(path: Path, max_pixels: int) -> FileInfo:
    """Read a file's header (and decode it when a cheap completeness check fails); never raises."""
    info = FileInfo(path)
    try:
        data = read_file(path)
    except OSError as exc:
        info.reason = f"cannot be read: {exc.strerror or exc}; check its permissions"
        return info
    info.size = len(data)
    if not data:
        info.reason = "is empty (0 bytes)"
        return info
    try:
        img = open_image(data, max_pixels=max_pixels, source="file")
        info.width, info.height = img.size
        info.mode, info.format = img.mode, img.format or ""
        if not _looks_complete(data, img):
            full = open_image(data, max_pixels=max_pixels, source="file")
            full.load()
    except ShipyardError as exc:
        info.reason = str(exc).removeprefix("file ")
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error... for broken data
        info.reason = f"is corrupt or truncated ({info.size} bytes) and cannot be decoded: {exc}"
    return info


def check_file_fields(path: str, max_pixels: int) -> tuple[int, str | None, int, int, str, str]:
    """:func:`check_file`'s answer as (size, reason, width, height, mode, format): a plain tuple, cheaper to
    send back from a worker process than a :class:`FileInfo`."""
    info = check_file(Path(path), max_pixels)
    return info.size, info.reason, info.width, info.height, info.mode, info.format


def skip_reason_by_name(path: Path) -> str | None:
    """Why a file is skipped by its name alone (hidden, not an image suffix), or None."""
    if path.name.startswith("."):
        return "hidden file"
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return None
    allowed = ", ".join(sorted(ALLOWED_FORMATS))
    if suffix in UNSUPPORTED_IMAGE_SUFFIXES:
        return f"unsupported image format ({suffix}); allowed formats: {allowed}. Convert it to one of these"
    return f"not an image file (suffix {suffix or 'none'!r}); image suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}"
