"""The service's request and response schemas (pydantic), as they appear in its OpenAPI document.

The two image endpoints take ``multipart/form-data``. Their input descriptors parse the form themselves
(:meth:`ClassifyInput.from_http_request`): uploads are read into memory (no temporary file per image),
a text value where a file belongs is refused (BentoML would fetch it as a URL), and every problem is a
:class:`~serving.http.ClientError` with its status instead of a validation error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import bentoml
from pydantic import BaseModel, Field

from serving.http import ClientError, form_int, read_form, uploads

CLASSIFY_EXAMPLE = "curl -F image=@photo.jpg http://HOST:3000/classify"
BATCH_EXAMPLE = "curl -F images=@a.jpg -F images=@b.png http://HOST:3000/classify_batch"


class ClassifyInput(bentoml.IODescriptor):
    """``POST /classify``: one image file in form field ``image``; optional ``top_k``."""

    image: Path = Field(description="the image file (JPEG, PNG, WebP or BMP)")
    top_k: int | None = Field(
        None, ge=1, description="how many labels to return (default: the server's top_k)"
    )

    #: Most file parts the parser accepts before answering 413 (set by the service from its config).
    max_files: ClassVar[int] = 1

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> ClassifyInput:
        form = await read_form(request, max_files=cls.max_files)
        files = await uploads(form, "image", example=CLASSIFY_EXAMPLE)
        if len(files) > 1:
            raise ClientError(
                f"POST /classify takes one image, {len(files)} were sent; use POST /classify_batch for several"
            )
        return cls.model_construct(image=files[0], top_k=form_int(form, "top_k", low=1))


class ClassifyBatchInput(bentoml.IODescriptor):
    """``POST /classify_batch``: image files in form field ``images`` (repeat it); optional ``top_k``."""

    images: list[Path] = Field(description="the image files, in order")
    top_k: int | None = Field(None, ge=1, description="how many labels to return per image")

    max_files: ClassVar[int] = 32

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> ClassifyBatchInput:
        form = await read_form(request, max_files=cls.max_files)
        files = await uploads(form, "images", example=BATCH_EXAMPLE)
        return cls.model_construct(images=files, top_k=form_int(form, "top_k", low=1))


class Prediction(BaseModel):
    """One label of the ranking."""

    label: str
    index: int = Field(description="the label's position in the model's label list")
    probability: float


class ImageInfo(BaseModel):
    """The uploaded image as received (before resizing to the model's input)."""

    width: int
    height: int
    format: str


class Timing(BaseModel):
    """Where the server spent the time of one image."""

    decode_ms: float = Field(description="decoding and resizing")
    queue_ms: float = Field(description="waiting for and travelling to the model, batching included")
    inference_ms: float = Field(description="the model call of the batch this image was part of")
    batch_size: int = Field(description="images in that model call (adaptive batching)")


class ClassifyResult(BaseModel):
    """``POST /classify``'s answer, and one item of ``/classify_batch``'s ``results``."""

    request_id: str = Field(description="id to send back to POST /feedback with the true label")
    model: str = Field(description="the model tag name:version")
    variant: str = Field(description="the variant file served, e.g. fp32_embedding.tflite")
    predictions: list[Prediction] = Field(description="top-k labels, most probable first")
    latency_ms: float = Field(description="server-side time from receiving the request to this answer")
    image: ImageInfo
    timing: Timing


class BatchResult(BaseModel):
    """``POST /classify_batch``'s answer: one result per image, in upload order."""

    model: str
    variant: str
    count: int
    latency_ms: float
    results: list[ClassifyResult]


class FeedbackResult(BaseModel):
    """``POST /feedback``'s answer: what the monitor recorded."""

    request_id: str
    label: str
    recorded: bool = True
    details: dict[str, Any] = Field(default_factory=dict, description="the monitor's view (live accuracy...)")


class Metadata(BaseModel):
    """``GET /metadata``: what is served and how."""

    model: str
    name: str
    version: str
    labels: list[str]
    input: dict[str, Any] = Field(description="the input contract: size, dtype, colour, resize")
    variant: str
    variant_file: str
    embedding: bool = Field(description="whether the served variant also returns the embedding")
    metrics: dict[str, Any] = Field(description="the package's evaluation metrics")
    variant_metrics: dict[str, Any] = Field(
        description="the served variant's metrics from the optimize stage"
    )
    serving: dict[str, Any] = Field(description="batching, limits and threads of this server")
