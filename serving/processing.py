"""Request-side work of the API service around ``edge``'s preprocessing: decode uploads, rank outputs,
and feed the monitor without ever letting it fail a prediction."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import MonitorConfig
from edge.errors import InputError
from edge.manifest import InputContract, Manifest
from edge.preprocess import ALLOWED_FORMATS, decode, open_image
from serving.http import ClientError, Upload
from serving.schemas import ImageInfo, Prediction

logger = logging.getLogger("shipyard.serving")


@dataclass(frozen=True)
class Decoded:
    """One upload turned into the model's input."""

    pixels: np.ndarray
    info: ImageInfo
    seconds: float


def decode_upload(upload: Upload, contract: InputContract, *, max_pixels: int, where: str) -> Decoded:
    """Check the upload's format and pixel count from its header, then decode it to the input contract.

    Raises:
        ClientError: empty, not an image, a format outside JPEG/PNG/WebP/BMP (415), too many pixels
            (413), or corrupt; the message names the file (``where``).
    """
    started = time.perf_counter()
    try:
        header = open_image(upload.data, allowed_formats=ALLOWED_FORMATS, max_pixels=max_pixels, source=where)
        info = ImageInfo(width=header.width, height=header.height, format=str(header.format))
        pixels = decode(
            upload.data, contract, allowed_formats=ALLOWED_FORMATS, max_pixels=max_pixels, source=where
        )
    except InputError as exc:
        raise ClientError.from_input_error(exc) from None
    return Decoded(pixels, info, time.perf_counter() - started)


def decode_all(
    uploads: list[Upload], contract: InputContract, *, max_pixels: int, field: str
) -> list[Decoded]:
    """:func:`decode_upload` for each file of a request, naming each by field and position."""
    many = len(uploads) > 1
    return [
        decode_upload(u, contract, max_pixels=max_pixels, where=u.describe(field, i if many else None))
        for i, u in enumerate(uploads)
    ]


def rank(probabilities: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    """The ``k`` most probable labels, most probable first (ties keep label order)."""
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    k = max(1, min(int(k), probs.shape[0]))
    order = np.argsort(-probs, kind="stable")[:k]
    return [Prediction(label=labels[i], index=int(i), probability=float(probs[i])) for i in order]


class GuardedMonitor:
    """The service's view of :class:`serving.monitoring.Monitor`: no call can fail a prediction.

    When the monitor cannot start (its module missing, a broken reference), predictions go on and
    ``/drift`` says why monitoring is off; ``/feedback`` then answers 503.
    """

    def __init__(self, manifest: Manifest, package_dir: Path, config: MonitorConfig) -> None:
        self.monitor: Any | None = None
        self.problem: str | None = None
        try:
            from serving.monitoring import Monitor

            self.monitor = Monitor(manifest, package_dir, config)
        except Exception as exc:
            self.problem = f"monitoring could not start: {type(exc).__name__}: {exc}"
            logger.warning("%s; serving without it", self.problem)

    def timings(self, **stages: float) -> None:
        """Record the seconds of each stage (``decode``, ``queue``, ``inference``, ``total``)."""
        if self.monitor is None:
            return
        for stage, seconds in stages.items():
            try:
                self.monitor.observe_timing(stage, max(0.0, float(seconds)))
            except Exception:  # the monitor promises not to raise; this is the belt to its braces
                logger.debug("observe_timing failed", exc_info=True)

    def prediction(
        self,
        request_id: str,
        pixels: np.ndarray,
        original_size: tuple[int, int],
        probabilities: np.ndarray,
        embedding: np.ndarray | None,
        variant: str,
    ) -> None:
        """Record one prediction for live accuracy and drift."""
        if self.monitor is None:
            return
        try:
            self.monitor.observe_prediction(
                request_id, pixels, original_size, probabilities, embedding, variant=variant
            )
        except Exception:
            logger.debug("observe_prediction failed", exc_info=True)

    def error(self, kind: str) -> None:
        """Count one failed request."""
        if self.monitor is None:
            return
        try:
            self.monitor.count_error(kind)
        except Exception:
            logger.debug("count_error failed", exc_info=True)

    def feedback(self, request_id: str, label: str) -> dict[str, Any]:
        """The monitor's feedback answer.

        Raises:
            ClientError: unknown request id (404), unknown label (400), repeated feedback (409), or
                monitoring unavailable (503).
        """
        if self.monitor is None:
            raise ClientError(f"feedback is not recorded: {self.problem}", 503)
        try:
            return dict(self.monitor.feedback(request_id, label))
        except InputError as exc:
            raise ClientError.from_input_error(exc) from None

    def drift(self) -> dict[str, Any]:
        """The monitor's drift report, or why there is none."""
        if self.monitor is None:
            return {"enabled": False, "reason": self.problem}
        try:
            return dict(self.monitor.drift())
        except Exception as exc:
            logger.warning("drift report failed: %s", exc, exc_info=True)
            return {"enabled": True, "error": f"the drift report failed: {type(exc).__name__}: {exc}"}

    def close(self) -> None:
        """Stop the monitor's thread."""
        if self.monitor is not None and hasattr(self.monitor, "close"):
            try:
                self.monitor.close()
            except Exception:
                logger.debug("monitor close failed", exc_info=True)
