"""What the Locust scenarios send and how they judge the answers: images, request bodies, response checks.
Plain functions without Locust, so that they can be tested and reused outside a Locust process (the
scenarios' settings are :class:`serving.loadtest.config.LoadTestConfig`)."""

from __future__ import annotations

import math
import random
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- the HTTP surface of serving/service.py -------------------------------------------------------------

CLASSIFY = "/classify"
CLASSIFY_BATCH = "/classify_batch"
METADATA = "/metadata"
FILE_FIELD = "image"
BATCH_FIELD = "images"
TOP_K_FIELD = "top_k"
RESULT_FIELDS = ("predictions", "model", "variant", "request_id", "latency_ms")

IMAGE_SUFFIXES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}
PROBABILITY_TOLERANCE = 1e-3
BAD_NAME = "{endpoint} [bad: {kind}]"


@dataclass(frozen=True)
class Image:
    """One image file held in memory."""

    name: str
    content: bytes
    content_type: str


def load_images(folder: str | Path, limit: int, seed: int = 0) -> list[Image]:
    """Read up to ``limit`` image files under ``folder`` (a seeded random sample when there are more).

    Raises:
        ValueError: the folder does not exist or holds no image files.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(
            f"image folder {root} does not exist; write the demo data with 'shipyard demo-data {root}' "
            "or pass --images DIR"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    if len(files) > limit:
        files = sorted(random.Random(seed).sample(files, limit))
    return [Image(p.name, p.read_bytes(), IMAGE_SUFFIXES[p.suffix.lower()]) for p in files]


# --- request bodies ----------------------------------------------------------------------------------------


def multipart(parts: list[tuple[str, str | None, bytes, str | None]]) -> tuple[bytes, str]:
    """Encode ``(field, filename, content, content_type)`` parts (``filename=None``: a plain form value);
    return the body and its Content-Type."""
    boundary = f"shipyard-{uuid.uuid4().hex}"
    chunks = []
    for field, filename, content, content_type in parts:
        disposition = f'form-data; name="{field}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        chunks += [(head + "\r\n").encode(), content, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A well-formed PNG whose header claims ``width x height`` pixels (10 gigapixels by default), with one
    tiny compressed row: a server that trusts the header and allocates the image would run out of memory."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def bad_inputs(sample: bytes) -> dict[str, tuple[bytes, str]]:
    """The bad requests: kind -> (body, Content-Type). ``sample`` is a valid image used for the corrupt one."""
    rng = random.Random(1)
    corrupt = sample[:16] + bytes(rng.randrange(256) for _ in range(max(64, len(sample) - 16)))
    return {
        "corrupt": multipart([(FILE_FIELD, "corrupt.png", corrupt, "image/png")]),
        "empty": multipart([(FILE_FIELD, "empty.png", b"", "image/png")]),
        "text": multipart([(FILE_FIELD, "notes.txt", b"this is not an image\n" * 8, "text/plain")]),
        "huge_pixels": multipart([(FILE_FIELD, "huge.png", huge_png_header(), "image/png")]),
        "not_multipart": (sample, "text/plain"),
    }


# --- response checks ------------------------------------------------------------------------------------------


def check_predictions(predictions: Any, labels: list[str] | None) -> str | None:
    """Why ``predictions`` is not a valid ranked list of ``{label, probability}``, or ``None`` if it is."""
    if not isinstance(predictions, list) or not predictions:
        return f"predictions is {type(predictions).__name__} {predictions!r:.80}, not a non-empty list"
    total = 0.0
    previous = math.inf
    for i, item in enumerate(predictions):
        if not isinstance(item, dict):
            return f"predictions[{i}] is not an object"
        label, p = item.get("label"), item.get("probability")
        if not isinstance(label, str) or not label:
            return f"predictions[{i}].label is {label!r}"
        if labels and label not in labels:
            return f"predictions[{i}].label {label!r} is not one of the model's labels"
        index = item.get("index")
        if (
            labels
            and index is not None
            and (not isinstance(index, int) or not 0 <= index < len(labels) or labels[index] != label)
        ):
            return f"predictions[{i}].index {index!r} does not point at label {label!r}"
        if (
            isinstance(p, bool)
            or not isinstance(p, int | float)
            or not (0.0 <= p <= 1.0 + PROBABILITY_TOLERANCE)
        ):
            return f"predictions[{i}].probability is {p!r}, not a number in [0, 1]"
        if p > previous + PROBABILITY_TOLERANCE:
            return "predictions are not sorted by probability"
        previous = p
        total += p
    if total > 1.0 + PROBABILITY_TOLERANCE * len(predictions):
        return f"probabilities sum to {total:.4f} > 1"
    if labels and len(predictions) == len(labels) and abs(total - 1.0) > 1e-2:
        return f"probabilities of all {len(labels)} classes sum to {total:.4f}, not 1"
    return None


def check_result(body: Any, labels: list[str] | None) -> str | None:
    """Why one classification result is malformed, or ``None``."""
    if not isinstance(body, dict):
        return f"result is {type(body).__name__}, not an object"
    missing = [f for f in RESULT_FIELDS if f not in body]
    if missing:
        return f"result lacks {', '.join(missing)}"
    return check_predictions(body["predictions"], labels)


def batch_results(body: Any) -> Any:
    """The per-image results of a ``/classify_batch`` response (a list, or an object holding one)."""
    if isinstance(body, dict):
        for key in ("results", "items", "predictions"):
            if isinstance(body.get(key), list):
                return body[key]
    return body


def check_batch(body: Any, n: int, labels: list[str] | None) -> str | None:
    """Why a ``/classify_batch`` response for ``n`` images is malformed, or ``None``."""
    results = batch_results(body)
    if not isinstance(results, list):
        return f"batch response holds no list of results: {str(body)[:80]}"
    if len(results) != n:
        return f"{len(results)} results for {n} images"
    if isinstance(body, dict) and "count" in body and body["count"] != n:
        return f"count is {body['count']!r} for {n} images"
    for i, result in enumerate(results):
        problem = check_result(result, labels)
        if problem:
            return f"results[{i}]: {problem}"
    return None


def error_message(response: Any) -> str | None:
    """The ``error`` text of a JSON error body (an object, or BentoML's one-element list), or ``None``."""
    try:
        body = response.json()
    except Exception:
        return None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if isinstance(body, dict) and isinstance(body.get("error"), str | dict | list):
        return str(body["error"])
    return None
