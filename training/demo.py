"""A small real dataset for demos and tests: scikit-learn's bundled digits written as PNG class folders.

The 1,797 digits are 8x8 grayscale images (0-16). Each is upscaled to ``size`` pixels and coloured
deterministically (a dark background and a bright foreground colour drawn from the seed), so a model
has to learn shapes, not colours. No download is needed.

This module does not import TensorFlow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from edge.errors import ShipyardError

#: Written into every demo folder; :func:`write_demo_data` only rewrites folders that hold it, and
#: :func:`training.data.scan_dataset` ignores it.
DEMO_MARKER = ".shipyard-demo.json"
DIGIT_CLASSES: tuple[int, ...] = tuple(range(10))


def _colorize(digit: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One 8x8 digit (0-16) -> ``uint8`` RGB ``(size, size, 3)``: bright strokes on a dark background."""
    from PIL import Image

    gray = Image.fromarray(np.clip(digit * (255.0 / 16.0), 0, 255).astype(np.uint8), mode="L")
    intensity = np.asarray(gray.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    background = rng.uniform(0, 70, size=3)
    foreground = rng.uniform(150, 255, size=3)
    foreground[rng.integers(3)] = 255.0  # always one saturated channel: bright on dark
    rgb = background + (foreground - background) * intensity[..., None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def write_demo_data(
    out: Path, *, size: int = 32, seed: int = 0, classes: list[int] | None = None
) -> dict[str, int]:
    """Write scikit-learn's digits as RGB PNG files in one folder per class (``"0"`` .. ``"9"``).

    Rewriting a folder made by this function is fine (its previous class folders are replaced);
    the same arguments give byte-identical files.

    Args:
        out: the folder to write (created if missing); must be empty or a previous demo folder.
        size: side of the square images in pixels (the 8x8 digits are upscaled bicubically).
        seed: seeds the colours of the images.
        classes: write only these digits (e.g. ``[0, 1, 2, 3, 4]``); default all ten.

    Returns:
        ``{class name: number of images written}`` (all ten classes: 1,797 images in total).

    Raises:
        ShipyardError: ``out`` is a file, or a non-empty folder without the demo marker; ``size``
            is below 8; ``classes`` holds something other than the digits 0-9.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    out = Path(out)
    chosen = _checked_classes(size, classes)
    _clear_previous_demo(out)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {str(c): 0 for c in chosen}
    for c in chosen:
        (out / str(c)).mkdir(parents=True, exist_ok=True)
    for i, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        # Draw colours for every image, chosen or not, so a subset has the same pixels as the full set.
        pixels = _colorize(image, size, rng)
        if int(target) not in chosen:
            continue
        Image.fromarray(pixels, mode="RGB").save(out / str(int(target)) / f"{int(target)}_{i:04d}.png")
        counts[str(int(target))] += 1
    record = {"generator": "shipyard demo-data", "size": size, "seed": seed, "classes": chosen, "counts": counts}
    (out / DEMO_MARKER).write_text(json.dumps(record) + "\n")
    return counts


def _checked_classes(size: int, classes: list[int] | None) -> list[int]:
    """The sorted digits to write; raises ShipyardError for a size below 8 or classes outside 0-9."""
    if size < 8:
        raise ShipyardError(f"demo image size {size} is too small; use 8 pixels or more (e.g. 32)")
    chosen = sorted(set(DIGIT_CLASSES if classes is None else classes))
    bad = [c for c in chosen if c not in DIGIT_CLASSES]
    if bad or not chosen:
        raise ShipyardError(f"demo classes {classes!r} are invalid; pick digits from 0 to 9, e.g. [0, 1, 2]")
    return chosen


def _clear_previous_demo(out: Path) -> None:
    """Remove the class folders of an earlier demo in ``out``; refuse a file or a foreign non-empty folder."""
    marker = out / DEMO_MARKER
    if out.exists() and not out.is_dir():
        raise ShipyardError(f"{out} is a file; pass a folder (new or empty) for the demo data")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not marker.is_file():
        raise ShipyardError(
            f"{out} is not empty and was not written by write_demo_data (no {DEMO_MARKER}); "
            "pass a new or empty folder"
        )
    for c in json.loads(marker.read_text()).get("classes", list(DIGIT_CLASSES)):
        if (out / str(c)).is_dir():
            shutil.rmtree(out / str(c))


__all__ = ["DEMO_MARKER", "write_demo_data"]
