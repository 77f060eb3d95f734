"""Streaming: batches decoded from the files on the fly, in worker processes, several batches in flight."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from edge.errors import ShipyardError
from edge.manifest import InputContract
from edge.preprocess import decode_file
from training._tf import tf
from training.data.processes import decode_processes
from training.data.scan import Sample
from training.data.threads import decode_pool, workers

log = logging.getLogger("shipyard.data")


def decode_batch_threads(
    paths: list[str], contract: InputContract, max_pixels: int
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """:meth:`DecodeProcesses.decode` in this process's thread pool (where worker processes cannot run)."""
    images = np.empty((len(paths), contract.height, contract.width, 3), dtype=np.uint8)
    failed: list[tuple[int, str]] = []

    def work(i: int) -> None:
        try:
            images[i] = decode_file(paths[i], contract, max_pixels=max_pixels)
        except ShipyardError as exc:
            failed.append((i, str(exc)))

    list(decode_pool().map(work, range(len(paths))))
    if not failed:
        return images, failed
    ok = np.ones(len(paths), dtype=bool)
    ok[[i for i, _ in failed]] = False
    return images[ok], sorted(failed)


def stream_pipeline(
    samples: list[Sample],
    contract: InputContract,
    batch_size: int,
    shuffle_seed: int | None,
    max_pixels: int,
    failures: dict[Path, str],
) -> tf.data.Dataset:
    """Batches decoded from the files on the fly: ``tf.numpy_function`` around ``edge.preprocess``.

    Indices into the file list are shuffled and batched first (as in the memory scheme: no string tensors
    to shuffle or convert); each batch is one ``numpy_function`` call that hands its files to a decode
    worker process (one per core, :mod:`training.data.processes`), which writes the pixels into shared
    memory that becomes the batch's tensor without a copy; two batches per worker are in flight, so a
    worker always has the next batch waiting. Where worker processes cannot run (one core, not Linux,
    ``/dev/shm`` full) or a worker died (killed for memory, say), a thread pool decodes. Files that fail
    are masked out of their batch (in numpy, labels with them) and recorded in ``failures``.

    Measured on 2,000 224 px JPEGs, batch 32, 2 cores (``benchmarks/input_pipeline.py``, medians of 3
    interleaved rounds; six runs at load averages 0.5-1.7, the machine shared): 7,000-8,200 images/s
    steady and 5,500-6,400 in the first epoch (scan included), 1.04-1.25x (median 1.17x) and 0.92-1.15x
    (median 1.03x) ``image_dataset_from_directory`` without cache, 0.76-0.93x of ``decode_file`` in one
    process per core at once; 230-265 us of CPU per image against Keras' 275-300. The thread pool it
    replaced did 3,100-3,200 images/s in both (0.50x and 0.57x Keras, same machine and load): the Python
    around Pillow's codec holds the GIL, so threads ran on about one core. When other processes take a
    core, throughput follows CPU per image and the margin over Keras shrinks or goes (0.8x at load 2-3).
    """
    height, width = contract.height, contract.width
    decoder = _BatchDecoder(samples, contract, max_pixels, failures)

    def load(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images, kept = tf.numpy_function(decoder, [idx], (tf.uint8, tf.int32), name="edge_decode_batch")
        images.set_shape((None, height, width, 3))
        kept.set_shape((None,))
        return images, kept

    ds = tf.data.Dataset.range(len(samples))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(samples), seed=shuffle_seed, reshuffle_each_iteration=True)
    # With worker processes: a batch for each worker to decode and one waiting for it.
    calls = 2 * decoder.processes.processes if decoder.processes is not None else tf.data.AUTOTUNE
    return ds.batch(batch_size).map(load, num_parallel_calls=calls)


class _BatchDecoder:
    """What a streamed pipeline's ``numpy_function`` calls: a batch of sample indices -> (pixels, labels)
    of the files that decoded; the others go to ``failures`` (path -> reason), each logged once."""

    def __init__(
        self, samples: list[Sample], contract: InputContract, max_pixels: int, failures: dict[Path, str]
    ) -> None:
        self.paths = [str(s.path) for s in samples]
        self.labels = np.array([s.label for s in samples], dtype=np.int32)
        self.contract, self.max_pixels, self.failures = contract, max_pixels, failures
        self.processes = decode_processes(workers(1 << 30))
        self._lock = threading.Lock()
        self._said_broken = False

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = [self.paths[i] for i in idx.tolist()]
        decoded = self._in_processes(raw)
        if decoded is None:
            decoded = decode_batch_threads(raw, self.contract, self.max_pixels)
        images, failed = decoded
        if not failed:
            return images, self.labels[idx]
        with self._lock:
            for row, reason in failed:
                path = Path(raw[row])
                if path not in self.failures:
                    self.failures[path] = reason
                    log.warning("skipping %s: %s", path, reason)
        return images, np.delete(self.labels[idx], [row for row, _ in failed])

    def _in_processes(self, raw: list[str]) -> tuple[np.ndarray, list[tuple[int, str]]] | None:
        """The batch decoded by the worker processes, or None: none, no room, or they died (said once)."""
        if self.processes is None:
            return None
        if not self.processes.broken:
            try:
                return self.processes.decode(raw, self.contract, self.max_pixels)
            except RuntimeError:
                if not self.processes.broken:  # a bug in a worker: raise it
                    raise
        with self._lock:
            if not self._said_broken:
                self._said_broken = True
                log.warning("%s; decoding in threads from here on", self.processes.broken)
        return None
