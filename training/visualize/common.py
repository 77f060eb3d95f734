"""What every module of :mod:`training.visualize` shares: file names, the skip signal, JSON helpers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("shipyard.visualize")

PLOTS_DIR = "plots"
INDEX_FILE = f"{PLOTS_DIR}/index.json"
HISTOGRAMS_FILE = "logs/histograms.json"
PREDICTIONS_FILE = "logs/val_predictions.json"
TENSORBOARD_HISTOGRAMS = "logs/tensorboard/histograms"
#: Bins of a recorded histogram.
BINS = 30


class PlotSkipped(Exception):
    """A picture cannot be made here (its data is missing); the message says what to do."""


def read_json(path: Path) -> Any:
    """The JSON content of ``path``, or ``None`` when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def json_default(value: Any) -> Any:
    """``json.dumps``' fallback for NumPy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)
