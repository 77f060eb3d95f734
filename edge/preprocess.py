"""The one preprocessing outside the model: bytes -> decoded RGB -> resized ``uint8`` array.

Training, evaluation, every runtime, the edge runner and the server call these functions, so all of
them see identical pixels. Scaling and normalization live inside the model graph.
"""

from __future__ import annotations

import io
import warnings
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

# We check the pixel count ourselves before decoding; keep Pillow's own guard as a backstop.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS * 2


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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageError(
                f"{source} is not a readable image ({len(data)} bytes); allowed formats: "
                f"{', '.join(sorted(allowed_formats))}"
            ) from exc
        raise ImageTooLargeError(f"{source} is too large: {exc}") from exc
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
    img = ImageOps.exif_transpose(img) or img
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
    if img.format == "JPEG":
        # Let libjpeg decode at a reduced scale when the target is much smaller (big speed-up for photos).
        img.draft("RGB", (contract.width, contract.height))
    try:
        img.load()
        rgb = to_rgb(img)
        return resize_to_contract(rgb, contract)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{source} is corrupt or truncated and could not be decoded: {exc}") from exc


def decode_file(path: str | Path, contract: InputContract, **kwargs) -> np.ndarray:
    """Read and :func:`decode` an image file. Raises :class:`ImageError` naming the path."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode(data, contract, source=str(path), **kwargs)


def decode_rgb(data: bytes, **kwargs) -> Image.Image:
    """Decode bytes to a full-size RGB ``PIL.Image`` (for image statistics); same checks as :func:`decode`."""
    img = open_image(data, **kwargs)
    try:
        img.load()
        return to_rgb(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image is corrupt or truncated: {exc}") from exc


def image_stats(pixels: np.ndarray) -> dict[str, float]:
    """Simple statistics of one ``uint8`` RGB image, used for input-drift monitoring.

    Returns brightness (mean luma, 0-255), contrast (luma standard deviation) and saturation
    (mean of (max-min)/max over channels, 0-1).
    """
    arr = pixels.astype(np.float32)
    luma = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    cmax = np.maximum(np.maximum(arr[..., 0], arr[..., 1]), arr[..., 2])  # ~10x faster than max(axis=-1)
    cmin = np.minimum(np.minimum(arr[..., 0], arr[..., 1]), arr[..., 2])
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)
    return {
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "saturation": float(sat.mean()),
    }
