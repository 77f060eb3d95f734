"""How the API service reaches the model's batchable ``predict``: in its own process or in a model service.

Both paths run :meth:`serving.service.ShipyardModel.predict`, a ``@bentoml.api(batchable=True)`` method,
under BentoML's adaptive batching (its ``CorkDispatcher``, with the method's ``max_batch_size`` and
``max_latency_ms``):

* :class:`LocalModel` (the default) holds the model service's instance in the API worker and wraps the
  method in the dispatcher as BentoML's server does for a batchable API
  (``ServiceAppFactory.batch_infer``): concurrent calls are concatenated along the first axis, run in a
  worker thread, and split again; up to ``lanes`` batches run at once (:func:`inference_layout`). No
  extra process and no HTTP hop: measured on MobileNetV2 that hop (pickle, aiohttp, a second BentoML
  request stack) costs about as much CPU per request as decoding and the whole HTTP handling of the
  request itself.
* :class:`RemoteModel` calls the model service declared with ``bentoml.depends`` (``serve.model_service``):
  BentoML runs it in its own process and batches there; every API worker shares one model.

BentoML's dispatcher is an internal class (``bentoml._internal``): Shipyard pins ``bentoml==1.4.39`` in
``constraints.txt``, and an import error here names the version it was written against.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import anyio
import numpy as np
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from serving.threads import LANE, name_native_thread

BENTOML_VERSION = "1.4.39"
logger = logging.getLogger("shipyard.serving")
#: Single-threaded inference lanes per core when ``serve.lanes`` and ``serve.threads`` are unset (see
#: :func:`inference_layout`).
LANES_PER_CORE = 2
#: The most lanes one API worker gets by default: its event loop spends about 1.25 ms per request (MobileNetV2,
#: ``benchmarks/serving.py``), so it feeds at most ~800 requests/s, which 8 lanes of ~300 images/s exceed; and
#: each lane of a TFLite model holds its own copy of the model. More cores want more API workers.
MAX_DEFAULT_LANES = 8


class Overloaded(Exception):
    """A request waited longer than ``max_latency_ms`` for its batch and was shed."""


def inference_layout(config: Any, variant_file: str, cores: int | None = None) -> tuple[int, int]:
    """``(lanes, threads)``: how many batches one model of this server runs at once, and the inference threads
    of each, from ``serve.lanes`` and ``serve.threads`` or, where they are unset, from the cores.

    The cores (``cores``, default all usable ones: :func:`edge.runners.default_threads` counts a container's CPU
    quota) are split over the API workers first; then each core gets :data:`LANES_PER_CORE` single-threaded
    lanes, at most :data:`MAX_DEFAULT_LANES` (an ONNX Runtime session runs them all; a TFLite model is
    opened once per lane, see :class:`serving.inference.Predictor`), or, with ``serve.threads`` set, as many
    lanes of that many threads as fit. Measured on MobileNetV2, 2 cores, the service under 8 and 32 clients in
    interleaved rounds: with ONNX, two single-threaded lanes 270-272 and 283-288 req/s against one
    two-threaded lane's 248 and 238-247 (+10% and +17-19%), 5.8-5.9 against 6.3-6.5 ms of server CPU per
    request, p95 no worse. With ``fp32_embedding.tflite``: a single-threaded interpreter lets go of the GIL
    while it runs (two of them ran 618 images/s against one's 328); one two-threaded lane 310 / 323 req/s
    against two single-threaded lanes' 323 / 346; and four lanes on the two cores 339 / 369 and 329 / 362
    against two lanes' 318 / 344 and 322 / 348, p95 1-7% higher (at 32 clients three lanes 360-372 against
    344-346): while a lane hands its results back and waits for the next batch, another keeps the core busy.
    With ``serve.model_service`` the model's own process keeps one lane (BentoML's dispatcher there runs one
    batch at a time).
    """
    from edge.runners import default_threads
    from edge.variants import variant_of

    variant = variant_of(variant_file)
    several = variant is not None and variant.file_format.runnable and not config.model_service
    per_model = max(1, (cores or default_threads()) // (1 if config.model_service else config.workers))
    fit = per_model // config.threads if config.threads else min(per_model * LANES_PER_CORE, MAX_DEFAULT_LANES)
    lanes = config.lanes or (max(1, fit) if several else 1)
    if lanes > 1 and not several:
        why = "the model service runs one batch at a time" if config.model_service else "not a runnable variant"
        logger.warning("serve.lanes=%d ignored for %s: %s", lanes, variant_file, why)
        lanes = 1
    return lanes, config.threads or max(1, per_model // lanes)


class LocalModel:
    """The model service's instance in this process, behind BentoML's adaptive batching.

    Args:
        instance: an instance of the model service (``ShipyardModel()``).
        method: the batchable API method object (``ShipyardModel.apis["predict"]``).
        lanes: batches run at once, each in its own thread (see :func:`inference_layout`).
    """

    def __init__(self, instance: Any, method: Any, lanes: int = 1) -> None:
        self.instance = instance
        self.method = method
        self._predict = getattr(instance, method.name).local
        self._limiter = anyio.CapacityLimiter(lanes)
        self._dispatch: Any | None = None
        if method.batchable:
            try:
                from bentoml._internal.marshal.dispatcher import CorkDispatcher, NonBlockSema
                from bentoml._internal.runner.container import AutoContainer
            except ImportError as exc:  # pragma: no cover - depends on the installed BentoML
                raise ImportError(
                    f"serving.batching uses BentoML's internal CorkDispatcher as of bentoml=={BENTOML_VERSION}; "
                    f"install that version (pip install -c constraints.txt '.[serve]'): {exc}"
                ) from exc

            def fallback() -> Any:
                raise ServiceUnavailable("process is overloaded")

            self._container = AutoContainer
            dispatcher = CorkDispatcher(
                max_latency_in_ms=method.max_latency_ms,
                max_batch_size=method.max_batch_size,
                fallback=fallback,
                get_batch_size=functools.partial(AutoContainer.get_batch_size, batch_dim=method.batch_dim[0]),
                batch_dim=method.batch_dim,
                shared_sema=NonBlockSema(lanes),  # how many batches the dispatcher lets out at once
            )
            self._dispatcher = dispatcher
            self._dispatch = dispatcher(self._infer_batches)

    def _func(self, pixels: np.ndarray) -> np.ndarray:
        name_native_thread(LANE)  # once per worker thread: per-thread CPU shows the lanes
        return self._predict(pixels)

    @property
    def warmup_s(self) -> float | None:
        """Seconds the model's warm-up took."""
        return float(self.instance.predictor.warmup_s)

    async def _infer_batches(self, batches: Any) -> Any:
        batch, indices = self._container.batches_to_batch(batches, self.method.batch_dim[0])
        result = await anyio.to_thread.run_sync(self._func, batch, limiter=self._limiter)
        return self._container.batch_to_batches(result, indices, self.method.batch_dim[1])

    async def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Packed rows for ``pixels`` (see :func:`serving.inference.pack`), batched with concurrent calls.

        Raises:
            Overloaded: shed by the dispatcher (waited longer than ``max_latency_ms``).
        """
        if self._dispatch is None:
            return await anyio.to_thread.run_sync(self._func, pixels, limiter=self._limiter)
        try:
            return await self._dispatch(pixels)
        except ServiceUnavailable as exc:
            raise Overloaded(str(exc)) from None

    def close(self) -> None:
        """Stop the dispatcher and release the model."""
        if self._dispatch is not None:
            self._dispatcher.shutdown()
        close = getattr(self.instance, "close", None)
        if callable(close):
            close()


class RemoteModel:
    """The model service reached through ``bentoml.depends`` (in its own process under ``bentoml serve``)."""

    #: The warm-up ran in the model service's process; its readiness gates this service's /readyz.
    warmup_s: float | None = None

    def __init__(self, dependency: Any) -> None:
        self.dependency = dependency

    async def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Packed rows for ``pixels``; BentoML batches them with other API workers' calls.

        Raises:
            Overloaded: the model service shed the request (503).
            BentoMLException: any other failure of the call.
        """
        try:
            return await self.dependency.to_async.predict(pixels)
        except BentoMLException as exc:
            if int(getattr(exc, "error_code", 500)) == 503:
                raise Overloaded(str(exc)) from None
            raise

    def close(self) -> None:
        """Nothing to release: BentoML closes its clients."""
