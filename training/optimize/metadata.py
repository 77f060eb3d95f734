"""TFLite metadata: what MediaPipe Tasks (and the TFLite Task Library) read to use a model without code.

Every TFLite variant gets, before it is written and hashed: the model's name, version and description;
an RGB image input whose normalization is mean 0 and std 1 (our contract: 0..255 pixels go in, the
scaling is inside the graph); a classification output with the labels as the associated file
``labels.txt``. MediaPipe's own writer does it (``metadata_writers`` of ``mediapipe`` 0.10.21), run in
its own cached environment (:data:`training.optimize.isolated.MEDIAPIPE`) because its pins conflict
with ours. :data:`FINISHERS` says which formats get a finishing step, keyed by format name.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.metadata import LABEL_FILE, NORM_MEAN, NORM_STD
from training.optimize.isolated import MEDIAPIPE, IsolatedEnvError

WRITER_SCRIPT = Path(__file__).with_name("tflite_metadata_writer.py")
WRITER = "mediapipe 0.10.21 metadata_writers (isolated environment)"


def metadata_spec(labels: list[str], info: dict[str, str]) -> dict[str, Any]:
    """What :mod:`training.optimize.tflite_metadata_writer` writes: general info, input, output labels."""
    return {
        "name": info.get("name", "shipyard-classifier"),
        "version": info.get("version", ""),
        "description": info.get("description", "Image classifier trained with Shipyard"),
        "author": "Shipyard",
        "license": info.get("license"),
        "labels": list(labels),
        "label_file": LABEL_FILE,
        "norm_mean": list(NORM_MEAN),
        "norm_std": list(NORM_STD),
        "input_description": "RGB image, pixels 0..255 (scaling is inside the model)",
    }


def add_tflite_metadata(content: bytes, labels: list[str], info: dict[str, str]) -> bytes:
    """``content`` with TFLite metadata and the label file (a pure function: bytes in, bytes out).

    Raises:
        IsolatedEnvError: the writer's environment cannot be created, or the writer fails.
    """
    with tempfile.TemporaryDirectory(prefix="shipyard-metadata-") as tmp:
        src, out, spec_file = Path(tmp) / "in.tflite", Path(tmp) / "out.tflite", Path(tmp) / "spec.json"
        src.write_bytes(content)
        spec_file.write_text(json.dumps({**metadata_spec(labels, info), "model": str(src), "out": str(out)}))
        MEDIAPIPE.run_script(WRITER_SCRIPT, str(spec_file))
        return out.read_bytes()


def _finish_tflite(content: bytes, labels: list[str], info: dict[str, str]) -> tuple[bytes, dict[str, Any]]:
    """The file with metadata; without the writer (offline, no environment) the file as it is, and why."""
    try:
        with_metadata = add_tflite_metadata(content, labels, info)
    except IsolatedEnvError as exc:
        return content, {"metadata": {"written": False, "reason": str(exc)}}
    return with_metadata, {
        "metadata": {
            "written": True,
            "writer": WRITER,
            "bytes_added": len(with_metadata) - len(content),
            "label_file": LABEL_FILE,
            "norm_mean": list(NORM_MEAN),
            "norm_std": list(NORM_STD),
        }
    }


Finisher = Callable[[bytes, list[str], dict[str, str]], tuple[bytes, dict[str, Any]]]

#: The step after building a file of a format, before it is written and hashed (by format name).
FINISHERS: dict[str, Finisher] = {"tflite": _finish_tflite}

__all__ = ["FINISHERS", "WRITER", "add_tflite_metadata", "metadata_spec"]
