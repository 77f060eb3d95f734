"""Streaming: batches decoded from the files on the fly, in a thread pool, several batches in flight."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from edge.errors import ShipyardError
from edge.manifest import InputContract
from edge.preprocess import decode_file
from training._tf import tf
from training.data.scan import Sample
from training.data.threads import decode_pool

log = logging.getLogger("shipyard.data")


def stream_pipeline(
    samples: list[Sample],
    contract: InputContract,
    batch_size: int,
    shuffle_seed: int | None,
    max_pixels: int,
    failures: dict[Path, str],
) -> tf.data.Dataset:
    """Batches decoded from the files on the fly: ``tf.numpy_function`` around ``edge.preprocess``.

    Paths are shuffled and batched first; each batch is decoded by one ``numpy_function`` call that
    fans the files out to a thread pool (Pillow releases the GIL while decoding), and several batches
    are in flight at once (``num_parallel_calls=AUTOTUNE``). One call per batch instead of per image
    measured 20-40% faster on 224 px JPEGs. Files that fail are masked out of their batch.
    """
    height, width = contract.height, contract.width
    lock = threading.Lock()

    def decode_batch(paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.zeros((len(paths), height, width, 3), dtype=np.uint8)
        ok = np.ones(len(paths), dtype=bool)

        def work(i: int) -> None:
            path = Path(paths[i].decode("utf-8"))
            try:
                images[i] = decode_file(path, contract, max_pixels=max_pixels)
            except ShipyardError as exc:
                ok[i] = False
                with lock:
                    if path not in failures:
                        failures[path] = str(exc)
                        log.warning("skipping %s: %s", path, exc)

        list(decode_pool().map(work, range(len(paths))))
        return images, ok

    def load(paths: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images, ok = tf.numpy_function(decode_batch, [paths], (tf.uint8, tf.bool), name="edge_decode_batch")
        images.set_shape((None, height, width, 3))
        ok.set_shape((None,))
        return tf.cond(
            tf.reduce_all(ok),
            lambda: (images, labels),
            lambda: (tf.boolean_mask(images, ok), tf.boolean_mask(labels, ok)),
        )

    paths = [str(s.path) for s in samples]
    labels = np.array([s.label for s in samples], dtype=np.int32)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
