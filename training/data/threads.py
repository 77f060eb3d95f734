"""Thread pools for decoding: the memory scheme's one-off decode, small scans, and the stream scheme where
decode worker processes cannot run (:mod:`training.data.processes`).

Pillow releases the GIL only inside the codec; the Python around it (header parsing, ``tobytes``, the
futures) holds it, so on 224 px JPEGs a pool of threads decodes at about one core's rate however many
cores there are. The decode worker processes do not share a GIL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edge.runners import default_threads


def workers(n_items: int) -> int:
    """Threads for ``n_items`` of CPU-bound work: one per usable core (:func:`edge.runners.default_threads`,
    at most 16), no more than the items."""
    cores = default_threads()
    # Decoding is CPU-bound: one thread (or worker process) per core measured best.
    return max(1, min(16, cores, n_items))


def thread_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[fn(item) for item in items]`` in a short-lived thread pool (in order)."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers(len(items)), thread_name_prefix="shipyard-data") as pool:
        return list(pool.map(fn, items))


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def decode_pool() -> ThreadPoolExecutor:
    """The process-wide thread pool that streamed pipelines decode batches in (created on first use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(workers(1 << 30), thread_name_prefix="shipyard-decode")
        return _POOL
