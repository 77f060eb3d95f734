"""The Shipyard prediction service (BentoML 1.4): ``bentoml serve serving.service:Shipyard``.

:class:`Shipyard` is the HTTP API: it parses uploads, decodes them with ``edge``'s preprocessing and
answers. :class:`ShipyardModel` holds the model: a warmed-up :class:`serving.inference.Predictor` of one variant
of a registered package, behind a batchable ``predict`` where BentoML's adaptive batching merges concurrent requests
into one inference call. By default each API worker holds the model and batches in process
(:class:`serving.batching.LocalModel`); with ``serve.model_service`` the model runs in its own process,
reached through ``bentoml.depends`` (:class:`serving.batching.RemoteModel`).

Settings come from the environment (see :class:`edge.config.ServeConfig`), read when this module is
imported because batching and traffic limits are fixed when the classes are declared.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import bentoml
import numpy as np
from starlette.responses import JSONResponse

from serving.batching import LocalModel, Overloaded, RemoteModel, inference_layout
from serving.errors import note_error
from serving.http import ClientError, RequestGuard, Upload, quiet_client_errors
from serving.inference import Predictor, unpack
from serving.lifecycle import Answered, Loaded, ModelHolder, load_version
from serving.processing import (
    Decoded,
    Scored,
    decode_opened,
    limit_blas_threads,
    open_uploads,
    rank,
)
from serving.routing import guard_options, mounted_app
from serving.schemas import (
    BatchResult,
    ClassifyBatchInput,
    ClassifyInput,
    ClassifyResult,
    FeedbackResult,
    Metadata,
    Timing,
)
from serving.settings import package_dir, startup
from serving.shadow import start_shadow

#: What to serve; a model that cannot be served ends ``bentoml serve`` here with one line (no worker restarts).
SETTINGS, SERVED_VARIANT = startup()
CONFIG = SETTINGS.config
BATCHING = CONFIG.batching and CONFIG.max_batch_size > 1
#: Batches one model runs at once and the inference threads of each (see :func:`inference_layout`).
LANES, THREADS = inference_layout(CONFIG, SERVED_VARIANT or "")
#: Requests with at most this many pixels decode on the event loop (a 512x512 JPEG: ~1 ms); bigger
#: ones in a worker thread, where the hand-over costs less than the decoding.
INLINE_DECODE_PIXELS = 512 * 512
ClassifyInput.max_files = 4
ClassifyBatchInput.max_files = CONFIG.max_batch_images
quiet_client_errors()


@bentoml.service(
    name="shipyard_model",
    workers=1,
    threads=1,  # one inference at a time, each using every inference thread
    traffic={"timeout": CONFIG.timeout_s * 2},
    # BentoML 1.4 replaces the API service's connection pool to this service every 100 requests and
    # closes the old pool with requests still in flight on it; one local model worker needs no rotation.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0 * 365 * 86400},
    logging={"access": {"enabled": False}},  # the internal hop; the API service logs every request
)
class ShipyardModel:
    """The model: a warmed-up ``edge`` runner behind one batchable API.

    Built by BentoML (the model service, ``serve.model_service``), it follows ``serve.alias`` by itself; built
    by the API service for one version (``tag``), it serves that version until the API service releases it.
    """

    def __init__(self, tag: str | None = None) -> None:
        first = tag or SETTINGS.require_tag()
        self.models = ModelHolder(first, open_predictor(first), open_predictor, Predictor.close,
                                  drain_s=CONFIG.timeout_s * 2)
        if tag is None and CONFIG.alias:
            self.models.follow(first.split(":", 1)[0], CONFIG.alias, poll_s=CONFIG.alias_poll_s)

    @property
    def predictor(self) -> Predictor:
        return self.models.current.value

    @bentoml.api(
        batchable=BATCHING,
        max_batch_size=max(2, CONFIG.max_batch_size),
        max_latency_ms=CONFIG.max_latency_ms,
    )
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """``uint8`` images ``(N, H, W, 3)`` -> one packed row per image (see :func:`serving.inference.pack`)."""
        with self.models.acquire() as slot:
            return slot.value.predict(pixels)

    def __is_ready__(self) -> bool:
        return self.predictor.ready

    @bentoml.on_shutdown
    def close(self) -> None:
        self.models.close()


def open_predictor(tag: str) -> Predictor:
    """A warmed-up predictor of ``tag``'s configured variant (its file's sha256 checked first)."""
    return Predictor(
        package_dir(tag),
        CONFIG.variant,
        threads=THREADS,
        lanes=LANES,
        embeddings=CONFIG.embeddings,
        allow_failed_gate=CONFIG.allow_failed_gate,
        warmup_batches=(1, CONFIG.max_batch_size) if BATCHING else (1,),
    )


# BentoML derives an output's media type from its JSON schema, rebuilt for every response: fix it once.
ShipyardModel.apis["predict"].output_spec.media_type = ShipyardModel.apis["predict"].output_spec.mime_type()


@bentoml.asgi_app(mounted_app(), path="/")
@bentoml.service(
    name="shipyard",
    workers=CONFIG.workers,
    # The request guard answers 429 over max_concurrency and 504 after timeout_s (and counts them);
    # BentoML's own timeout is only a backstop behind it.
    traffic={"timeout": CONFIG.timeout_s * 2 + 10},
    # BentoML records a span for each request and for each message of its body, even when it samples
    # none of them for export: serve.tracing turns that on, and leaving it off excludes every URL.
    **({} if CONFIG.tracing else {"tracing": {"excluded_urls": [".*"]}}),
)
class Shipyard:
    """Image classification over HTTP: ``/classify``, ``/classify_batch``, ``/metadata``, ``/feedback``, ``/drift``,
    ``/shadow``; the model follows ``serve.alias`` (:mod:`serving.lifecycle`)."""

    if SETTINGS.tag is not None:
        # Declared so that 'bentoml build' packs the model into the Bento.
        package = bentoml.models.BentoModel(SETTINGS.tag)
    if CONFIG.model_service:
        model_service = bentoml.depends(ShipyardModel)
    #: The running instance of this class in this process, if any.
    running: Shipyard | None = None

    def __init__(self) -> None:
        from serving.monitoring.metrics import lifecycle_event, lifecycle_metrics, shadow_metrics

        limit_blas_threads()  # the cores are for inference; the monitor's matrix products get one
        lifecycle_metrics()  # the swap and load-failure counters start at 0
        first = SETTINGS.require_tag()
        self.models = ModelHolder(first, self._load(first), self._load, Loaded.close, on_event=lifecycle_event,
                                  drain_s=CONFIG.timeout_s * 2)
        if CONFIG.alias:
            self.models.follow(first.split(":", 1)[0], CONFIG.alias, poll_s=CONFIG.alias_poll_s)
        shadow_metrics(tuple(self.labels))  # every shadow series at 0, with or without a shadow
        self.shadow, self.shadow_problem = (
            start_shadow(CONFIG, first.split(":", 1)[0], lambda: self.models.current.value)
            if CONFIG.shadow else (None, "no shadow: serve with --shadow ALIAS (serve.shadow)")
        )
        self.default_top_k = CONFIG.top_k
        self.max_batch_images = CONFIG.max_batch_images
        self._decode_limiter = anyio.CapacityLimiter(4)
        self.ready = True
        type(self).running = self  # the request guard answers /classify* with it (serving.routing.answer_here)

    def _load(self, tag: str) -> Loaded:
        """``tag`` loaded beside whatever is served (the model service's process loads its own copy)."""
        if CONFIG.model_service:
            return load_version(tag, CONFIG, lambda _: RemoteModel(self.model_service))
        return load_version(
            tag, CONFIG, lambda t: LocalModel(ShipyardModel.inner(t), ShipyardModel.apis["predict"], LANES)
        )

    # The version being served now; a request keeps the one it started with (see ``score``).
    tag = property(lambda self: self.models.current.value.tag)
    manifest = property(lambda self: self.models.current.value.manifest)
    package_dir = property(lambda self: self.models.current.value.package_dir)
    variant = property(lambda self: self.models.current.value.variant)
    variant_info = property(lambda self: self.models.current.value.variant_info)
    variant_file = property(lambda self: self.models.current.value.variant_file)
    labels = property(lambda self: self.models.current.value.labels)
    model = property(lambda self: self.models.current.value.model)
    monitor = property(lambda self: self.models.current.value.monitor)

    def __is_ready__(self) -> bool:
        return self.ready

    @bentoml.on_shutdown
    def close(self) -> None:
        if type(self).running is self:
            type(self).running = None
        if self.shadow is not None:
            self.shadow.close()
        self.models.close()

    # ------------------------------------------------------------------------------------------- APIs

    @bentoml.api(input_spec=ClassifyInput, route="/classify")
    async def classify(
        self,
        image: Upload,
        top_k: int | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> ClassifyResult:
        """Classify one uploaded image: top-k labels with probabilities, the model tag and variant."""
        return await self.answer_classify(image, top_k, _request_start(ctx))  # type: ignore[return-value]

    @bentoml.api(input_spec=ClassifyBatchInput, route="/classify_batch")
    async def classify_batch(
        self,
        images: list[Upload],
        top_k: int | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> BatchResult:
        """Classify several uploaded images; one result per image, in upload order."""
        return await self.answer_batch(images, top_k, _request_start(ctx))  # type: ignore[return-value]

    @bentoml.api(route="/feedback")
    async def feedback(self, request_id: str, label: str) -> FeedbackResult:
        """Record the true label of an earlier prediction (by its ``request_id``) for the live accuracy."""
        details = await anyio.to_thread.run_sync(self.record_feedback, request_id, label)
        return FeedbackResult(request_id=request_id, label=label, details=details)

    @bentoml.api(route="/shadow")
    async def shadow_report(self) -> dict[str, Any]:
        """The shadow candidate against the served model, per window and in total (also ``GET``)."""
        return await anyio.to_thread.run_sync(self.shadow_summary)  # it reads the feedback store

    @bentoml.api(route="/metadata")
    async def metadata(self) -> Metadata:
        """The model tag, labels, input contract, variant, metrics and serving settings (also ``GET``)."""
        return Metadata.model_validate(self.describe())

    @bentoml.api(route="/drift")
    async def drift(self) -> dict[str, Any]:
        """Current drift statistics of the live traffic against the package's reference (also ``GET``)."""
        return await anyio.to_thread.run_sync(self.drift_report)

    # ------------------------------------------------------------------------------------ the work

    async def answer_classify(self, image: Upload, top_k: int | None, started: float) -> ClassifyResult | JSONResponse:
        """``/classify``'s answer (also called by the request guard, see :func:`serving.routing.answer_here`)."""
        results = await self._classify([image], "image", top_k, started)
        return results if isinstance(results, JSONResponse) else results[0]

    async def answer_batch(self, images: list[Upload], top_k: int | None, started: float) -> BatchResult | JSONResponse:
        """``/classify_batch``'s answer (also called by the request guard)."""
        results = await self._classify(images, "images", top_k, started)
        if isinstance(results, JSONResponse):
            return results
        return BatchResult(
            model=results[0].model,
            variant=results[0].variant,
            count=len(results),
            latency_ms=(time.perf_counter() - started) * 1000,
            results=results,
        )

    def describe(self) -> dict[str, Any]:
        """What ``/metadata`` shows."""
        return Metadata(
            model=self.tag,
            name=self.manifest.name,
            version=self.manifest.version,
            labels=self.labels,
            input=self.manifest.input.model_dump(),
            variant=self.variant_file,
            variant_file=self.variant_info.file,
            embedding="embedding" in self.variant_info.outputs,
            metrics=self.manifest.metrics,
            variant_metrics=self.variant_info.metrics,
            serving={
                "batching": BATCHING,
                "max_batch_size": CONFIG.max_batch_size,
                "max_latency_ms": CONFIG.max_latency_ms,
                "top_k": CONFIG.top_k,
                "max_request_bytes": CONFIG.max_request_bytes,
                "max_batch_images": CONFIG.max_batch_images,
                "max_pixels": CONFIG.max_pixels,
                "max_concurrency": CONFIG.max_concurrency,
                "timeout_s": CONFIG.timeout_s,
                "workers": CONFIG.workers,
                "threads": THREADS,
                "lanes": LANES,
                "model_service": CONFIG.model_service,
                "warmup_ms": None if self.model.warmup_s is None else self.model.warmup_s * 1000,
                "monitoring": self.monitor.monitor is not None,
                "tracing": CONFIG.tracing,
                "lifecycle": self.models.status(),
                "shadow": None if self.shadow is None else self.shadow.brief(),
            },
        ).model_dump(mode="json")

    def drift_report(self) -> dict[str, Any]:
        """What ``/drift`` shows."""
        return self.monitor.drift()

    def shadow_summary(self) -> dict[str, Any]:
        """What ``/shadow`` shows (``{"enabled": false}`` without ``serve.shadow``)."""
        if self.shadow is None:
            return {"enabled": False, "reason": self.shadow_problem}
        return self.shadow.report()

    def record_feedback(self, request_id: str, label: str) -> dict[str, Any]:
        """``/feedback``: the label scores the version that answered ``request_id`` (the current one or one
        released since) and, with a shadow, the candidate's prediction of the same request."""
        slots = self.models.recent
        for i, slot in enumerate(slots):
            try:
                details = slot.value.monitor.feedback(request_id, label)
                break
            except ClientError as exc:
                if exc.status != 404 or i == len(slots) - 1:
                    raise
        if self.shadow is not None:
            details["shadow"] = self.shadow.feedback(request_id)
        return details

    async def _classify(
        self, uploads: list[Upload], field: str, top_k: int | None, started: float
    ) -> list[ClassifyResult] | JSONResponse:
        """Decode, predict, answer and monitor the images of one request."""
        scored = await self.score(await self.decode(uploads, field), started)
        if isinstance(scored, JSONResponse):
            return scored
        k = top_k or CONFIG.top_k
        results = [self._answer(s, k) for s in scored]  # type: ignore[arg-type]
        latency_ms = (time.perf_counter() - started) * 1000
        for result in results:
            result.latency_ms = latency_ms
        return results

    async def decode(self, uploads: list[Upload], field: str) -> list[Decoded]:
        """The uploads as model inputs: small ones decoded on the event loop, bigger ones in a thread.

        Raises:
            ClientError: a file is empty, not an image, of an unsupported format or too large (its kind noted).
        """
        contract = self.manifest.input
        try:
            opened = open_uploads(uploads, max_pixels=CONFIG.max_pixels, field=field)
            if sum(o.pixels for o in opened) <= INLINE_DECODE_PIXELS:
                return decode_opened(opened, contract)
            return await anyio.to_thread.run_sync(decode_opened, opened, contract, limiter=self._decode_limiter)
        except ClientError as exc:
            note_error({413: "too_large", 415: "unsupported_format"}.get(exc.status, "bad_image"))
            raise

    async def score(self, decoded: list[Decoded], started: float) -> list[Scored] | JSONResponse:
        """Predict a request's images in one batch and hand each to the monitor under a new request id;
        a 503 answer when the batch queue is overloaded. Shared by ``/classify*`` and the V2 ``infer``."""
        sent = time.perf_counter()
        pixels = np.stack([d.pixels for d in decoded])
        with self.models.acquire() as slot:  # a swap meanwhile releases this version only after we answer
            rows = await self._predict(slot.value.model, pixels)
            if isinstance(rows, JSONResponse):
                return rows
            roundtrip = time.perf_counter() - sent
            outs = unpack(rows, len(slot.value.labels))
            served = self._answered_by(slot.value, outs[0].version_code)
            scored = []
            for d, out in zip(decoded, outs, strict=True):
                request_id = uuid.uuid4().hex
                served.monitor.prediction(
                    request_id, d.pixels, (d.info.width, d.info.height), out.probabilities, out.embedding,
                    served.variant,
                )
                scored.append(Answered(request_id, d, out, max(0.0, roundtrip - out.inference_s), served))
            total = time.perf_counter() - started
            for s in scored:
                served.monitor.timings(decode=s.decoded.seconds, queue=s.queue_s, inference=s.out.inference_s,
                                       total=total)
        if self.shadow is not None:
            self.shadow.offer(pixels, scored, roundtrip)
        return scored

    def _answered_by(self, asked: Loaded, code: float) -> Loaded:
        """The version whose code the model's rows carry: ``asked`` in process; with a model service that
        switched before this worker did, the version it switched to, once this worker has it."""
        if not code or code == asked.code:
            return asked
        return next((s.value for s in self.models.recent if s.value.code == code), asked)

    async def _predict(self, model: Any, pixels: np.ndarray) -> np.ndarray | JSONResponse:
        """The model's packed output rows, or a 503 answer when the batch queue is overloaded."""
        try:
            return await model.predict(pixels)
        except Overloaded:
            note_error("overloaded")
            return JSONResponse(
                {
                    "error": f"the model is overloaded: the request waited longer than max_latency_ms "
                    f"({CONFIG.max_latency_ms} ms) for its batch; retry later or send fewer requests at once"
                },
                status_code=503,
            )

    def _answer(self, s: Answered, k: int) -> ClassifyResult:
        """One image's result, named by the version that answered it (latency filled in by the caller)."""
        served = s.served
        return ClassifyResult(
            request_id=s.request_id,
            model=served.tag,
            variant=served.variant_file,
            predictions=rank(s.probabilities, served.labels, k),
            latency_ms=0.0,
            image=s.decoded.info,
            timing=Timing(
                decode_ms=s.decoded.seconds * 1000,
                queue_ms=s.queue_s * 1000,
                inference_ms=s.out.inference_s * 1000,
                batch_size=s.out.batch_size,
            ),
        )


def _request_start(ctx: Any) -> float:
    """When the request reached the server (set by :class:`RequestGuard`), else now."""
    try:
        return float(ctx.request.scope["state"]["shipyard_start"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return time.perf_counter()


Shipyard.add_asgi_middleware(RequestGuard, **guard_options(CONFIG, Shipyard.name, Shipyard.inner))
