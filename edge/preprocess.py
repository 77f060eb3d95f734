"""The one preprocessing outside the model: bytes -> decoded RGB -> resized ``uint8`` array.

Training, evaluation, every runtime, the edge runner and the server call these functions, so all of
them see identical pixels. Scaling and normalization live inside the model graph.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge.errors import ImageError, ImageTooLargeError, UnsupportedFormatError
from edge.manifest import InputContract

ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "BMP"})
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
#: 50 megapixels: a 7000x7000 photo passes, a decompression bomb does not.
DEFAULT_MAX_PIXELS = 50_000_000

# open_image checks the pixel count against the caller's max_pixels from the header, before anything is
# decoded. Pillow's own guard (Image.MAX_IMAGE_PIXELS, a process-wide setting left as the user has it) still
# refuses headers over twice its value, about 179 million pixels by default, whatever max_pixels says.


def open_image(
    data: bytes,
    *,
    allowed_formats: Iterable[str] = ALLOWED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str = "image",
) -> Image.Image:
    """Open image bytes lazily and check format and pixel count from the header, before decoding.

    Raises:
        ImageError: empty or not an image.
        UnsupportedFormatError: a format outside ``allowed_formats``.
        ImageTooLargeError: more than ``max_pixels`` pixels.
    """
    if not data:
        raise ImageError(f"{source} is empty (0 bytes); send the image file's contents")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{source} is too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"{source} is not a readable image ({len(data)} bytes); allowed formats: "
            f"{', '.join(sorted(allowed_formats))}"
        ) from exc
    except Exception as exc:  # Pillow raises many types for garbage headers
        raise ImageError(f"{source} could not be opened as an image: {exc}") from exc
    allowed = {f.upper() for f in allowed_formats}
    if img.format not in allowed:
        raise UnsupportedFormatError(
            f"{source} is {img.format or 'of an unknown format'}; allowed formats: {', '.join(sorted(allowed))}. "
            "Convert it to one of these first"
        )
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{source} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "downscale it before sending"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{source} has a zero dimension ({width}x{height})")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Return ``img`` as 8-bit RGB, honouring EXIF orientation; alpha is composited onto white.

    Handles grayscale (L, 1, I, I;16, F), palette (with or without transparency), RGBA/LA and CMYK.
    """
    ImageOps.exif_transpose(img, in_place=True)  # only when it has an orientation; no copy otherwise
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_to_contract(img: Image.Image, contract: InputContract) -> np.ndarray:
    """Resize an RGB image to the contract's size (bilinear) and return ``uint8`` ``(H, W, 3)``."""
    size = (contract.width, contract.height)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def decode(
    data: bytes,
    contract: InputContract,
    *,
    allowed_formats: Iterable[str] = ALLOWED_FORMATS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str = "image",
) -> np.ndarray:
    """Decode image bytes into the model's input: ``uint8`` array of shape ``(H, W, 3)``.

    Raises:
        ImageError (or a subclass): the bytes are not a usable image; the message says why.
    """
    img = open_image(data, allowed_formats=allowed_formats, max_pixels=max_pixels, source=source)
    return decode_image(img, contract, source=source)


def decode_image(img: Image.Image, contract: InputContract, *, source: str = "image") -> np.ndarray:
    """:func:`decode` of an image :func:`open_image` has opened (and checked) already.

    Raises:
        ImageError: the image data is corrupt or truncated.
    """
    if img.format == "JPEG":
        # Let libjpeg decode at a reduced scale when the target is much smaller (big speed-up for photos).
        img.draft("RGB", (contract.width, contract.height))
    try:
        img.load()
        rgb = to_rgb(img)
        return resize_to_contract(rgb, contract)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{source} is corrupt or truncated and could not be decoded: {exc}") from exc


def read_file(path: str | Path) -> bytes:
    """``Path(path).read_bytes()`` without a buffered reader (about 5 us less per file).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb", buffering=0) as f:
        return f.readall()


def decode_file(path: str | Path, contract: InputContract, **kwargs) -> np.ndarray:
    """Read and :func:`decode` an image file. Raises :class:`ImageError` naming the path."""
    path = Path(path)
    try:
        data = read_file(path)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode(data, contract, source=str(path), **kwargs)


#: Image statistics read a grid of at most this many pixels per side: every k-th row and column.
STATS_GRID = 64
_STATS_KEYS = ("brightness", "contrast", "saturation")


def stats_grid(pixels: np.ndarray) -> np.ndarray:
    """The pixels :func:`image_stats` reads: a strided view (no copy) of every k-th row and column,
    at most :data:`STATS_GRID` per side (a 224 px input: 56x56, 1/16 of the pixels)."""
    step = max(1, -(-max(pixels.shape[0], pixels.shape[1]) // STATS_GRID))
    return pixels[::step, ::step]


def image_stats_batch(images: list[np.ndarray]) -> np.ndarray:
    """:func:`image_stats` of many ``uint8`` RGB images, as rows of (brightness, contrast, saturation).

    Images whose grids have one shape are computed together (one set of numpy calls per shape). No
    matrix product: BLAS would wake its thread pool for a few thousand pixels.

    Raises:
        ValueError: an image is not (height, width, 3).
    """
    out = np.empty((len(images), 3), dtype=np.float64)
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    rows: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"pixels have shape {img.shape}; expected (height, width, 3)")
        grid = stats_grid(img)
        groups.setdefault(grid.shape, []).append(grid)
        rows.setdefault(grid.shape, []).append(i)
    for shape, grids in groups.items():
        arr = np.stack(grids).astype(np.float32)
        r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
        luma = 0.299 * r + 0.587 * g + 0.114 * b
        cmax = np.maximum(np.maximum(r, g), b)  # ~10x faster in numpy than max over a length-3 axis
        cmin = np.minimum(np.minimum(r, g), b)
        sat = (cmax - cmin) / np.maximum(cmax, 1e-6)  # black pixels: 0 / 1e-6 = 0
        index = rows[shape]
        out[index, 0] = luma.mean(axis=(1, 2))
        out[index, 1] = luma.std(axis=(1, 2))
        out[index, 2] = sat.mean(axis=(1, 2))
    return out


def image_stats(pixels: np.ndarray) -> dict[str, float]:
    """Simple statistics of one ``uint8`` RGB image, used for input-drift monitoring.

    Returns brightness (mean luma, 0-255), contrast (luma standard deviation) and saturation
    (mean of (max-min)/max over channels, 0-1), over :func:`stats_grid`'s pixels: training's reference
    and the server's live traffic are measured alike, and on photos the values differ from a
    full-resolution pass by far less than they differ between images.
    """
    return dict(zip(_STATS_KEYS, (float(v) for v in image_stats_batch([pixels])[0]), strict=True))
