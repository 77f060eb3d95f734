"""Accuracy estimated without labels: the served model's confidences, calibrated on the package's reference split.

The idea of NannyML's confidence-based performance estimation (CBPE): training measured, on a held-out split,
how often a top-1 prediction with each confidence was right (:class:`edge.reference.CalibrationStats`, in
``reference/stats.json``). Each prediction's calibrated confidence is then the probability that it is right, and
the expected accuracy of a window of predictions is their mean. It assumes no concept drift (the same image
still means the same class) and a calibration split like the traffic the model is sure or unsure about: a
model that is confidently wrong on new inputs (e.g. much darker images) is estimated too high, which the drift
signals are there to catch.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edge.manifest import Manifest, verify_file
from edge.reference import STATS_FILE, CalibrationStats, read_reference_stats


def load_calibration(manifest: Manifest, package_dir: Path) -> tuple[CalibrationStats | None, str | None]:
    """The package's calibration curve (verified against the manifest's sha256), or ``None`` and why not.

    Never raises.
    """
    try:
        stats = read_reference_stats(verify_file(package_dir, manifest, STATS_FILE))
    except Exception as exc:
        return None, f"no usable reference statistics: {exc}"
    if stats.calibration is None:
        return None, (
            f"{STATS_FILE} has schema_version {stats.schema_version}, without a calibration; re-create the "
            "package with this version of Shipyard to estimate accuracy"
        )
    if stats.calibration.count == 0:
        return None, f"{STATS_FILE} was calibrated on an empty split"
    return stats.calibration, None


class AccuracyEstimate:
    """The estimated accuracy of the last ``window`` predictions (updated by one thread, read by any).

    Args:
        calibration: the curve from the package's reference split, or ``None`` (then ``reason`` says why
            and the estimate stays unavailable).
        window: predictions per estimate; none is reported before the first full window.
        reason: why there is no calibration.
    """

    def __init__(self, calibration: CalibrationStats | None, window: int, reason: str | None = None) -> None:
        self.calibration = calibration
        self.window = window
        self.reason = reason
        self._values = np.zeros(window, dtype=np.float64)
        self._count = 0
        self._lock = threading.Lock()

    @classmethod
    def for_package(cls, manifest: Manifest, package_dir: Path, window: int) -> AccuracyEstimate:
        """The estimate of a served package, with its calibration from ``reference/stats.json``."""
        calibration, reason = load_calibration(manifest, Path(package_dir))
        return cls(calibration, window, reason)

    @property
    def available(self) -> bool:
        """True when the package has a calibration (the estimate then appears after a full window)."""
        return self.calibration is not None

    def add(self, confidences: list[float] | np.ndarray) -> float | None:
        """Add the top-1 probabilities of a batch of predictions; return the current estimate (``None`` before
        the first full window or without calibration)."""
        if self.calibration is None:
            return None
        calibrated = self.calibration.calibrated(confidences)[-self.window :]
        with self._lock:
            slots = (self._count + np.arange(len(calibrated))) % self.window
            self._values[slots] = calibrated
            self._count += len(calibrated)
        return self.value

    @property
    def value(self) -> float | None:
        """The mean calibrated confidence of the last ``window`` predictions, once that many arrived."""
        with self._lock:
            if self.calibration is None or self._count < self.window:
                return None
            return float(self._values.mean())

    def snapshot(self) -> dict[str, Any]:
        """What ``/drift`` shows under ``estimated_accuracy``."""
        out: dict[str, Any] = {
            "available": self.available,
            "method": "CBPE: mean calibrated top-1 probability (isotonic, on the reference split)",
            "value": self.value,
            "window": self.window,
            "observed": self._count,
        }
        if self.calibration is None:
            out["reason"] = self.reason
        else:
            out["reference_accuracy"] = self.calibration.reference_accuracy
            out["calibration_size"] = self.calibration.count
            if self._count < self.window:
                out["reason"] = f"waiting for a full window: {self._count} of {self.window} predictions"
        return out
