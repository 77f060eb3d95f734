"""Request-side work of the API service around ``edge``'s preprocessing: decode uploads, rank outputs,
and feed the monitor without ever letting it fail a prediction."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import InputError
from edge.manifest import InputContract, Manifest
from edge.preprocess import ALLOWED_FORMATS, decode_image, open_image
from serving.config import MonitorConfig
from serving.http import ClientError, Upload
from serving.schemas import ImageInfo, Prediction

logger = logging.getLogger("shipyard.serving")


@dataclass(frozen=True)
class Decoded:
    """One upload turned into the model's input."""

    pixels: np.ndarray
    info: ImageInfo
    seconds: float


@dataclass
class Opened:
    """One upload whose header passed the checks: the lazily opened image, not decoded yet."""

    image: Any
    info: ImageInfo
    where: str
    seconds: float

    @property
    def pixels(self) -> int:
        return self.info.width * self.info.height


def open_uploads(uploads: list[Upload], *, max_pixels: int, field: str) -> list[Opened]:
    """Open each file of a request and check its format and pixel count from the header (no decoding:
    tens of microseconds an image), naming each file by field and position in errors.

    Raises:
        ClientError: empty, not an image, a format outside JPEG/PNG/WebP/BMP (415), or too many
            pixels (413).
    """
    many = len(uploads) > 1
    out = []
    for i, upload in enumerate(uploads):
        where = upload.describe(field, i if many else None)
        started = time.perf_counter()
        try:
            img = open_image(upload.data, allowed_formats=ALLOWED_FORMATS, max_pixels=max_pixels, source=where)
        except InputError as exc:
            raise ClientError.from_input_error(exc) from None
        info = ImageInfo(width=img.width, height=img.height, format=str(img.format))
        out.append(Opened(img, info, where, time.perf_counter() - started))
    return out


def decode_opened(opened: list[Opened], contract: InputContract) -> list[Decoded]:
    """Decode opened uploads to the input contract.

    Raises:
        ClientError: a file is corrupt or truncated (400); the message names it.
    """
    out = []
    for o in opened:
        started = time.perf_counter()
        try:
            pixels = decode_image(o.image, contract, source=o.where)
        except InputError as exc:
            raise ClientError.from_input_error(exc) from None
        out.append(Decoded(pixels, o.info, o.seconds + time.perf_counter() - started))
    return out


def rank(probabilities: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    """The ``k`` most probable labels, most probable first (ties keep label order)."""
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    k = max(1, min(int(k), probs.shape[0]))
    order = np.argsort(-probs, kind="stable")[:k]
    return [Prediction(label=labels[i], index=int(i), probability=float(probs[i])) for i in order]


def limit_blas_threads() -> None:
    """Hold numpy's BLAS to one thread in this process.

    Only the monitor's drift tests use BLAS here (matrix products over the window's embeddings). With
    its default pool of one thread per core, OpenBLAS wakes every core for them and its threads then
    busy-wait for more work: measured on MobileNetV2, ~0.5 ms of CPU per request taken from inference.
    One thread keeps the monitor to one core. Changes nothing (and logs why) when ``threadpoolctl`` is
    missing or cannot drive the library.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        logger.info("threadpoolctl is not installed: numpy's BLAS keeps its default thread pool")
        return
    try:
        threadpool_limits(limits=1, user_api="blas")
    except Exception as exc:  # a library threadpoolctl cannot drive: nothing to limit
        logger.info("could not limit BLAS threads: %s", exc)


class GuardedMonitor:
    """The service's view of :class:`serving.monitoring.Monitor`: no call can fail a prediction.

    When the monitor cannot start (its module missing, a broken reference), predictions go on and
    ``/drift`` says why monitoring is off; ``/feedback`` then answers 503.
    """

    def __init__(
        self,
        manifest: Manifest,
        package_dir: Path,
        config: MonitorConfig,
        *,
        workers: int | None = None,
        variant: str | None = None,
    ) -> None:
        self.monitor: Any | None = None
        self.problem: str | None = None
        try:
            from serving.monitoring import Monitor

            self.monitor = Monitor(manifest, package_dir, config, workers=workers, variant=variant)
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


@dataclass(frozen=True)
class Scored:
    """One image's prediction: the id ``/feedback`` takes, its input, the model's share of the batch, and the
    seconds it spent waiting for and travelling to the model."""

    request_id: str
    decoded: Decoded
    out: Any
    queue_s: float

    @property
    def probabilities(self) -> np.ndarray:
        return self.out.probabilities
