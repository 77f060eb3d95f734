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
    to shuffle or convert); each batch is decoded by one ``numpy_function`` call that
    splits its files between worker processes, one per core (:mod:`training.data.processes`), which
    write the pixels into shared memory; several batches are in flight at once, so a worker always has
    the next files waiting. One call per batch instead of per image measured 20-40% faster on 224 px
    JPEGs; processes instead of threads FIXME. Where processes cannot run (one core, not Linux) a thread
    pool decodes. Files that fail are masked out of their batch and recorded in ``failures``.
    """
    height, width = contract.height, contract.width
    lock = threading.Lock()
    processes = decode_processes(workers(1 << 30))
    paths = [str(s.path) for s in samples]
    labels = np.array([s.label for s in samples], dtype=np.int32)

    def decode_batch(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = [paths[i] for i in idx.tolist()]
        decoded = None
        if processes is not None and not processes.broken:
            decoded = processes.decode(raw, contract, max_pixels)
        images, failed = decoded if decoded is not None else decode_batch_threads(raw, contract, max_pixels)
        if not failed:
            return images, labels[idx]
        for row, reason in failed:
            path = Path(raw[row])
            with lock:
                if path not in failures:
                    failures[path] = reason
                    log.warning("skipping %s: %s", path, reason)
        return images, np.delete(labels[idx], [row for row, _ in failed])

    def load(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images, kept = tf.numpy_function(decode_batch, [idx], (tf.uint8, tf.int32), name="edge_decode_batch")
        images.set_shape((None, height, width, 3))
        kept.set_shape((None,))
        return images, kept

    ds = tf.data.Dataset.range(len(paths))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    # With worker processes: a batch for each worker to decode and one waiting for it.
    calls = 2 * processes.processes if processes is not None else tf.data.AUTOTUNE
    return ds.batch(batch_size).map(load, num_parallel_calls=calls)
