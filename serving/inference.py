"""The model side of the service: ``edge`` runners of one variant (a copy per lane where the runtime needs one),
warmed up, and the batch wire format.

The API service decodes images and sends ``uint8`` batches of the input contract to the model service's
batchable ``predict``; BentoML's adaptive batching merges concurrent calls along the first axis and splits
the result again. Everything a request needs back travels in one ``float32`` array per image (see
:func:`pack` / :func:`unpack`), because a batchable API returns one array that BentoML slices per caller.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from edge.errors import PackageError
from edge.manifest import Manifest
from edge.package import choose_variant, open_package, open_variant_runner
from edge.runners import Runner, default_threads
from edge.variants import FORMATS, served_by_default, variant_of
from serving.lifecycle import version_code

#: Columns after the probabilities and the embedding: inference seconds of the batch, its size, and the
#: :func:`serving.lifecycle.version_code` of the model version that ran it.
TRAILER = 3


@dataclass(frozen=True)
class Unpacked:
    """One image's share of a batched inference."""

    probabilities: np.ndarray
    embedding: np.ndarray | None
    inference_s: float
    batch_size: int
    version_code: float = 0.0


def pack(probabilities: np.ndarray, embedding: np.ndarray | None, seconds: float, code: float = 0.0) -> np.ndarray:
    """One ``float32`` row per image: probabilities, embedding (if any), inference seconds, batch size, and
    the code of the version that ran it."""
    n, classes = probabilities.shape
    width = classes + (0 if embedding is None else embedding.shape[1]) + TRAILER
    out = np.empty((n, width), dtype=np.float32)
    out[:, :classes] = probabilities
    if embedding is not None:
        out[:, classes:-TRAILER] = embedding.reshape(n, -1)
    out[:, -3] = seconds
    out[:, -2] = n
    out[:, -1] = code
    return out


def unpack(rows: np.ndarray, num_classes: int) -> list[Unpacked]:
    """Split :func:`pack`'s rows back into per-image results (the embedding is ``None`` when absent)."""
    rows = np.asarray(rows, dtype=np.float32)
    emb_width = rows.shape[1] - num_classes - TRAILER
    return [
        Unpacked(
            probabilities=row[:num_classes],
            embedding=row[num_classes:-TRAILER] if emb_width > 0 else None,
            inference_s=float(row[-3]),
            batch_size=round(float(row[-2])),
            version_code=float(row[-1]),
        )
        for row in rows
    ]


def served_variant(manifest: Manifest, requested: str, embeddings: bool, allow_failed_gate: bool = False) -> str:
    """The variant key to serve for ``requested``.

    When ``embeddings`` is on and the requested variant has no embedding output, it is swapped for a
    passing variant whose table entry (:data:`edge.variants.VARIANTS`) outputs the embedding and extends
    the requested one (``fp32.tflite`` -> ``fp32_embedding.tflite``): the same graph with a second output,
    so the drift monitor gets the embedding at no extra inference.

    Raises:
        PackageError: the requested variant is unknown or not runnable (the message lists the runnable ones),
            or it failed its gate and ``allow_failed_gate`` is off.
    """
    key = _swap_for_embedding(manifest, choose_variant(manifest, requested), embeddings)
    info = manifest.variants[key]
    if info.status == "failed_gate" and not allow_failed_gate:
        passing = ", ".join(PurePosixPath(v.file).name for v in manifest.variants.values() if v.status == "passed")
        raise PackageError(
            f"variant {PurePosixPath(info.file).name} of {manifest.tag} failed its gate "
            f"({info.reason or 'no reason recorded'}); serve a passing variant ({passing or 'none'}) or set "
            "serve.allow_failed_gate=true to serve it anyway"
        )
    return key


def _swap_for_embedding(manifest: Manifest, key: str, embeddings: bool) -> str:
    chosen = variant_of(manifest.variants[key].file)
    if not embeddings or chosen is None or chosen.outputs_embedding:
        return key
    for other, info in manifest.variants.items():
        spec = variant_of(info.file)
        if spec is not None and spec.outputs_embedding and spec.extends == chosen.name and info.status == "passed":
            return other
    return key


class Predictor:
    """A warmed-up runner of one variant of a package; thread-safe :meth:`predict` of ``uint8`` batches.

    Up to ``lanes`` threads run batches at once. An ONNX Runtime session takes them all; a model whose
    runtime runs one call at a time (``edge.variants.Format.concurrent`` off: a TFLite interpreter) is
    opened once per lane, and one whose buffers are sized for a batch (``Format.fixed_batch``: TFLite again)
    runs a batch image by image instead of reallocating for each new batch size. Measured on MobileNetV2,
    one thread: LiteRT spent 3.02 ms of CPU per image at batch 1 and 3.25 at batch 4 (ONNX Runtime 3.43
    and 3.65), so nothing is lost by going image by image.
    """

    def __init__(
        self,
        package_dir: str | Path,
        variant: str | None = None,
        *,
        threads: int | None = None,
        lanes: int = 1,
        embeddings: bool = True,
        warmup_batches: tuple[int, ...] = (1,),
        allow_failed_gate: bool = False,
    ) -> None:
        """Open the variant after verifying its sha256, and run a warm-up inference per batch size.

        Raises:
            PackageError / IntegrityError / ModelFileError: as :func:`edge.package.open_variant_runner`.
        """
        self.package_dir = Path(package_dir)
        manifest = open_package(self.package_dir)
        key = served_variant(manifest, variant or served_by_default(), embeddings, allow_failed_gate)
        lanes = max(1, lanes)
        if threads is None and lanes > 1:
            threads = max(1, default_threads() // lanes)  # the lanes share the cores
        self.runner: Runner
        # a server waits between batches: ONNX Runtime's threads must not spin there (a core each)
        self.runner, self.manifest, self.variant = open_variant_runner(self.package_dir, key, threads, spin=False)
        self.variant_file = PurePosixPath(self.manifest.variants[self.variant].file).name
        self.has_embedding = "embedding" in self.runner.output_names
        self.tag = self.manifest.tag
        self.code = version_code(self.tag)
        fmt = FORMATS[self.runner.format]
        self._by_image = fmt.fixed_batch
        self._runners = [self.runner]
        self._free: queue.SimpleQueue[Runner] = queue.SimpleQueue()  # a runner per lane (ONNX: the same one)
        self._closing = threading.Lock()  # close() and a lane handing its copy back, one at a time
        self._closed = False
        self.warmup_s = 0.0
        self.ready = False
        try:
            while not fmt.concurrent and len(self._runners) < lanes:
                self._runners.append(open_variant_runner(self.package_dir, key, threads, spin=False)[0])
            self.warm_up(warmup_batches)
        except Exception:
            for runner in self._runners:
                runner.close()
            raise
        for lane in range(lanes):
            self._free.put(self._runners[lane % len(self._runners)])

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run zeros through every copy of the model once per batch size (allocations, kernel selection), then
        mark ready.

        Raises:
            PackageError: the warm-up output does not have one probability per label.
        """
        started = time.perf_counter()
        contract = self.manifest.input
        for runner in self._runners:
            for n in sorted(set(batch_sizes)):
                zeros = np.zeros((n, contract.height, contract.width, contract.channels), np.uint8)
                probs, _ = self._outputs(runner, zeros)
                if probs.shape != (n, self.num_classes):
                    raise PackageError(
                        f"variant {self.variant!r} returned shape {probs.shape} for a batch of {n}, expected "
                        f"({n}, {self.num_classes}); the package is inconsistent, re-export the variant"
                    )
        self.warmup_s = time.perf_counter() - started
        self.ready = True

    def _outputs(self, runner: Runner, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self._by_image and len(pixels) > 1:
            parts = [runner.run(pixels[i : i + 1]) for i in range(len(pixels))]
            outputs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        else:
            outputs = runner.run(pixels)
        probs = outputs.get("probabilities", next(iter(outputs.values())))
        emb = outputs.get("embedding") if self.has_embedding else None
        return probs, emb

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Run a ``uint8`` ``(N, H, W, 3)`` batch on a free copy of the model (waiting for one when every lane's
        is busy); return :func:`pack`'s rows, with the inference time (not the wait).

        Raises:
            RuntimeError: the predictor was closed.
        """
        runner = self._free.get()
        try:
            if self._closed:
                raise RuntimeError(f"the predictor of {self.tag} ({self.variant_file}) was closed")
            started = time.perf_counter()
            probs, emb = self._outputs(runner, pixels)
            seconds = time.perf_counter() - started
        finally:
            with self._closing:
                if self._closed:  # closed while this batch ran: release the copy now that it is free
                    runner.close()
                self._free.put(runner)  # back in any case, so that a thread waiting for a copy wakes up
        return pack(probs, emb, seconds, self.code)

    def close(self) -> None:
        """Release the runtime (every copy of it); the predictor cannot run after this. A copy a batch is running
        on is released when that batch ends; threads waiting for a copy get a ``RuntimeError``."""
        with self._closing:
            self._closed = True
            free: list[Runner] = []
            while True:
                try:
                    free.append(self._free.get_nowait())
                except queue.Empty:
                    break
            for runner in {id(r): r for r in free}.values():
                runner.close()
            for runner in free:
                self._free.put(runner)
