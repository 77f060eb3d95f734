"""What every benchmark script shares (imported as ``benchmarks._common``: the scripts put the repository
root on ``sys.path`` first)."""

from __future__ import annotations

import io
import platform
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    """The processor's model name (from ``/proc/cpuinfo`` on Linux), for the JSON a benchmark writes."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_jpeg(seed: int = 0, size: int = 224) -> bytes:
    """A smooth random ``size`` px photo-like JPEG (quality 90), as bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-12, 13, size=(size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(noisy.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bench_workdir(given: Path | None, prefix: str) -> Path:
    """The benchmark's work folder (``given``, else a new temporary one), with BentoML's home inside it and
    the environment every benchmark needs (legacy Keras, no BentoML usage tracking)."""
    import os
    import tempfile

    workdir = given or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(workdir / "bentoml")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return workdir
