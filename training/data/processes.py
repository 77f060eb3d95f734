"""Decode worker processes: ``edge.preprocess.decode_file`` in one process per core, pixels in shared memory.

Threads do not scale past about one core here: Pillow releases the GIL only inside the codec, and the
Python around it (header parsing, ``tobytes``, the pool's futures) holds it, so decoding threads and
TensorFlow's ``numpy_function`` calls queue on one lock. Processes have a GIL each. What crosses a process
boundary is small: the task (file paths, the contract, where to write) goes down a pipe and the answer (the
files that failed, with ``decode_file``'s reason) comes back; the pixels are written by the worker straight
into a shared-memory block, never pickled (pickling them back measured slower than threads). The block is
handed to TensorFlow as the batch's memory without a copy (``numpy_function`` keeps an aligned array as
its tensor's buffer) and reused once TensorFlow lets go of it. The scan's header checks use the same workers
(:class:`StreamedMap`).

The workers are forked: a fork starts in milliseconds and imports nothing (a spawned interpreter would
import ``training``, and with it TensorFlow, only to find the worker function). TensorFlow's threads are
not copied into the child, which runs only this module's loop (Pillow, numpy, ``edge.preprocess``), never
TensorFlow, and leaves with ``os._exit``; the garbage collector is frozen across the fork so that the child
never finalizes the parent's objects. Where ``fork`` is not available (not Linux), with one core, or when
``/dev/shm`` is short of room, the callers use their thread pools instead.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import gc
import itertools
import logging
import multiprocessing as mp
import os
import pickle
import sys
import threading
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from edge.errors import ShipyardError
from edge.manifest import InputContract
from edge.preprocess import decode_file
from training.data.threads import thread_map, workers

log = logging.getLogger("shipyard.data")

#: In a worker: the shared-memory blocks it has attached, by name.
_ATTACHED: dict[str, SharedMemory] = {}


def decode_rows(
    paths: list[str], out: np.ndarray, contract: InputContract, max_pixels: int
) -> list[tuple[int, str]]:
    """Decode the files at ``paths`` into the rows of ``out`` with ``decode_file``; return (row, reason) of
    the files that raised :class:`ShipyardError` (their rows are left as they were)."""
    failed: list[tuple[int, str]] = []
    for row, path in enumerate(paths):
        try:
            out[row] = decode_file(path, contract, max_pixels=max_pixels)
        except ShipyardError as exc:
            failed.append((row, str(exc)))
    return failed


def _decode_into_block(
    name: str,
    shape: tuple[int, ...],
    start: int,
    paths: list[str],
    contract: InputContract,
    max_pixels: int,
) -> list[tuple[int, str]]:
    """In a worker: :func:`decode_rows` into rows ``start:`` of the batch in shared-memory block ``name``."""
    if name not in _ATTACHED:
        _ATTACHED[name] = SharedMemory(name)
    batch = np.ndarray(shape, np.uint8, buffer=_ATTACHED[name].buf)
    return decode_rows(paths, batch[start : start + len(paths)], contract, max_pixels)


def _apply(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """In a worker: ``[fn(item) for item in items]``."""
    return [fn(item) for item in items]


def _serve(conn: Connection) -> None:
    """A worker's loop: run each task, answer with (task id, result, None) or (task id, None, traceback)."""
    while True:
        try:
            message: tuple[int, bytes] | None = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        task_id, payload = message
        try:
            fn, args = pickle.loads(payload)  # here, so that a task that cannot be unpickled is answered
            answer = (task_id, fn(*args), None)
        except Exception:  # a bug, not a bad file (decode_rows catches those): the caller raises it
            answer = (task_id, None, traceback.format_exc())
        conn.send(answer)


def _child(conn: Connection, inherited: list[int]) -> None:
    """The forked process's entry: close the parent's ends of the pipes (so that a worker sees its parent
    go), serve, then leave without running the parent's exit handlers."""
    code = 0
    try:
        for fd in inherited:
            os.close(fd)
        _serve(conn)
    except BaseException:  # anything: report it on stderr and leave
        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


#: Batches are handed to TensorFlow without a copy while they hold less shared memory than this in all;
#: past it (a consumer that keeps many batches, e.g. a ``cache()`` after the map) they are copied out.
LEASED_BYTES = 256 << 20
#: A new block is made only while ``/dev/shm`` keeps this much room beside it: a full tmpfs would kill the
#: process that touches the block (SIGBUS) instead of failing the allocation; callers fall back to threads.
SHM_HEADROOM = 16 << 20


def _shm_has_room(nbytes: int) -> bool:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= nbytes + SHM_HEADROOM


class _Blocks:
    """Shared-memory blocks for batches, reused: a caller takes one of at least the bytes it needs and
    gives it back, or hands its pixels out as a view that gives the block back once it is garbage."""

    def __init__(self) -> None:
        self._free: list[SharedMemory] = []
        self._all: list[SharedMemory] = []
        self._lock = threading.RLock()  # a view's finalizer may run while this thread holds it
        self.leased = 0  # bytes of the blocks handed out as views

    def take(self, nbytes: int) -> SharedMemory | None:
        """A free block of at least ``nbytes``, a new one, or ``None`` when ``/dev/shm`` is short of room."""
        with self._lock:
            for k, block in enumerate(self._free):
                if block.size >= nbytes:
                    return self._free.pop(k)
        if not _shm_has_room(nbytes):
            return None
        block = SharedMemory(create=True, size=max(nbytes, 1))
        try:  # reserve the pages now: tmpfs counts them only when written, and a worker writing into a
            # block that /dev/shm cannot hold dies of SIGBUS
            os.posix_fallocate(block._fd, 0, block.size)
        except (AttributeError, OSError):
            block.close()
            block.unlink()
            return None
        with self._lock:
            self._all.append(block)
        return block

    def give(self, block: SharedMemory) -> None:
        with self._lock:
            self._free.append(block)

    def hand_out(self, block: SharedMemory, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` (a view of ``block``) for the caller to keep; the block is reused once the view is
        garbage (TensorFlow keeps such an array as its tensor's memory). A copy when too much is out."""
        with self._lock:
            if self.leased + block.size > LEASED_BYTES:
                out = pixels.copy()
                self._free.append(block)
                return out
            self.leased += block.size
        weakref.finalize(pixels, self._returned, block)
        return pixels

    def _returned(self, block: SharedMemory) -> None:
        with self._lock:
            self.leased -= block.size
            self._free.append(block)

    def close(self) -> None:
        with self._lock:
            for block in self._all:
                with contextlib.suppress(BufferError):  # a view is still alive: the mapping goes at exit
                    block.close()
                with contextlib.suppress(FileNotFoundError):
                    block.unlink()
            self._all.clear()
            self._free.clear()


class DecodeProcesses:
    """Forked worker processes that decode files into shared memory; several callers may use it at once.

    Each task goes to the least loaded worker, so with several calls in flight a worker always has the
    next task waiting; one reader thread routes the answers back to the callers' futures. A worker that
    dies fails the pending calls, and every later one, with an error that says so.
    """

    def __init__(self, processes: int) -> None:
        ctx = mp.get_context("fork")
        self._conns: list[Connection] = []
        self._procs = []
        self._send_locks: list[threading.Lock] = []
        self._load = [0] * processes  # images queued per worker
        self._pending: dict[int, tuple[int, int, Future]] = {}  # task id -> (worker, images, future)
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._blocks = _Blocks()
        self._pid = os.getpid()  # a process forked from this one must not use (or close) these workers
        self.broken: str | None = None
        # The workers must share this process's resource tracker: one they started themselves would unlink
        # the shared memory they attached when they exit.
        resource_tracker.ensure_running()
        for k in range(processes):
            parent, child = ctx.Pipe()
            inherited = [c.fileno() for c in (*self._conns, parent)]
            proc = ctx.Process(
                target=_child, args=(child, inherited), name=f"shipyard-decode-{k}", daemon=True
            )
            gc.freeze()  # the child never collects (and finalizes) the parent's objects
            try:
                with warnings.catch_warnings():  # Python 3.12+ warns of forking threads: see the module doc
                    warnings.filterwarnings("ignore", r".*multi-threaded.*fork", DeprecationWarning)
                    proc.start()
            finally:
                gc.unfreeze()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
            self._send_locks.append(threading.Lock())
        self._reader = threading.Thread(target=self._read, name="shipyard-decode-reader", daemon=True)
        self._reader.start()

    @property
    def processes(self) -> int:
        """The number of worker processes."""
        return len(self._procs)

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], weight: int = 1) -> Future:
        """Run ``fn(*args)`` in the least loaded worker (``weight``: its share of work, e.g. files); return
        a future of the result. ``fn`` must be a module-level function (it is pickled by name)."""
        future: Future = Future()
        with self._lock:
            if self.broken:
                raise RuntimeError(self.broken)
            worker = min(range(self.processes), key=self._load.__getitem__)
            task_id = next(self._ids)
            self._pending[task_id] = (worker, weight, future)
            self._load[worker] += weight
        payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with self._send_locks[worker]:
                self._conns[worker].send((task_id, payload))
        except OSError as exc:  # the worker is gone; the reader thread fails the pending futures
            raise RuntimeError(self.broken or f"decode worker process {worker} is gone: {exc}") from exc
        return future

    def map(self, fn: Callable[[Any], Any], items: list[Any], chunk: int = 64) -> list[Any]:
        """``[fn(item) for item in items]`` in the workers, ``chunk`` items per task, in order.

        Raises:
            RuntimeError: ``fn`` raised (its traceback is in the message) or a worker died.
        """
        futures = [
            self.submit(_apply, (fn, items[i : i + chunk]), len(items[i : i + chunk]))
            for i in range(0, len(items), chunk)
        ]
        return [result for future in futures for result in future.result()]

    def decode(
        self, paths: list[str], contract: InputContract, max_pixels: int, shares: int = 1
    ) -> tuple[np.ndarray, list[tuple[int, str]]] | None:
        """Decode the files at ``paths`` with ``decode_file`` in the workers, in ``shares`` contiguous tasks.

        One task per batch, with several batches in flight, measured about 8% less CPU per image than a
        share of every batch for every worker (224 px JPEGs, batch 32, 2 workers).

        Returns:
            ``uint8`` ``(n, H, W, 3)`` pixels of the ``n`` files that decoded, in order (a view of shared
            memory, reused once it is garbage), and the (row, reason) of every file that raised
            :class:`ShipyardError`, sorted by row; ``None`` when ``/dev/shm`` has no room for the batch.

        Raises:
            RuntimeError: a worker raised something else (its traceback is in the message) or died.
        """
        shape = (len(paths), contract.height, contract.width, 3)
        if not paths:
            return np.empty(shape, np.uint8), []
        block = self._blocks.take(int(np.prod(shape)))
        if block is None:
            return None
        n, shares = len(paths), max(1, min(shares, len(paths)))
        bounds = [n * k // shares for k in range(shares + 1)]
        futures: list[tuple[int, Future]] = []
        try:
            for start, stop in itertools.pairwise(bounds):
                args = (block.name, shape, start, paths[start:stop], contract, max_pixels)
                futures.append((start, self.submit(_decode_into_block, args, stop - start)))
            failed = sorted((start + row, reason) for start, f in futures for row, reason in f.result())
        except BaseException:
            concurrent.futures.wait([f for _, f in futures])  # no worker may still write into the block
            self._blocks.give(block)
            raise
        pixels = np.ndarray(shape, np.uint8, buffer=block.buf)
        if not failed:
            return self._blocks.hand_out(block, pixels), failed
        ok = np.ones(n, dtype=bool)
        ok[[row for row, _ in failed]] = False
        decoded = pixels[ok]  # a copy
        del pixels
        self._blocks.give(block)
        return decoded, failed

    def _read(self) -> None:
        """The reader thread: route each worker's answer to its future; fail everything if a worker dies."""
        live = dict(enumerate(self._conns))
        while live:
            for conn in wait(list(live.values())):
                worker = self._conns.index(conn)
                try:
                    task_id, failed, error = conn.recv()
                except (EOFError, OSError):
                    del live[worker]
                    self._fail(worker)
                    continue
                with self._lock:
                    pending = self._pending.pop(task_id, None)
                    if pending is not None:
                        self._load[worker] -= pending[1]
                if pending is None:  # failed already, when another worker died
                    continue
                future = pending[2]
                if error is None:
                    future.set_result(failed)
                else:
                    future.set_exception(RuntimeError(f"decode worker {worker} raised:\n{error}"))

    def _fail(self, worker: int) -> None:
        proc = self._procs[worker]
        proc.join(timeout=1.0)
        reason = (
            f"decode worker process {worker} (pid {proc.pid}) exited unexpectedly (exit code "
            f"{proc.exitcode}); the data cannot be decoded in worker processes. If it was killed for "
            "memory, lower data.batch_size"
        )
        with self._lock:
            self.broken = self.broken or reason
            pending = list(self._pending.items())
            self._pending.clear()
        for _, (_, _, future) in pending:
            future.set_exception(RuntimeError(reason))

    def close(self) -> None:
        """Stop the workers and free the shared memory (idempotent; nothing in a forked copy of the owner)."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            self.broken = self.broken or "the decode worker processes were closed"
        for conn, lock in zip(self._conns, self._send_locks, strict=True):
            try:
                with lock:
                    conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.kill()
        self._blocks.close()


_POOL: DecodeProcesses | None = None
_POOL_LOCK = threading.Lock()


def decode_processes(processes: int) -> DecodeProcesses | None:
    """The process-wide decode workers, ``processes`` of them started on first use (in each process: a
    forked copy of this one starts its own), or ``None`` where they cannot run: fewer than 2 ``processes``
    (a thread does as well), no ``fork`` (not Linux), or a pool whose worker died."""
    global _POOL
    if processes < 2 or "fork" not in mp.get_all_start_methods() or sys.platform != "linux":
        return None
    with _POOL_LOCK:
        if _POOL is None or _POOL._pid != os.getpid():
            _POOL = DecodeProcesses(processes)
            atexit.register(_POOL.close)
        return None if _POOL.broken else _POOL


def _forget_pool_in_child() -> None:
    """After a fork: the child has no reader thread for the parent's workers, and the lock may be held."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)

#: Fewer items than this are mapped in threads: a chunk or two would leave a core idle anyway.
MIN_ITEMS_FOR_PROCESSES = 256


class StreamedMap:
    """``[fn(item) for item in items]`` for items that arrive one at a time (a folder walk), in order.

    Once :data:`MIN_ITEMS_FOR_PROCESSES` items have arrived, every full chunk goes to the decode worker
    processes at once, so they work while the caller is still walking, and :meth:`results` hands the
    results over chunk by chunk as they come back (the caller tallies while the workers finish). Fewer
    items, no workers, or workers that died: a thread pool maps them. ``fn`` must be module-level (a
    ``functools.partial`` of one is fine), items and results picklable.
    """

    def __init__(self, fn: Callable[[Any], Any], chunk: int = 64) -> None:
        self._fn, self._chunk = fn, chunk
        self._items: list[Any] = []
        self._sent: list[tuple[list[Any], Future]] = []
        self._count = 0
        self._pool: DecodeProcesses | None = None  # None: threads (so far, or from now on)
        self._used: DecodeProcesses | None = None
        self._decided = False

    def add(self, item: Any) -> None:
        """One more item; it may be sent to a worker right away."""
        self._items.append(item)
        self._count += 1
        if not self._decided and self._count >= MIN_ITEMS_FOR_PROCESSES:
            self._decided = True
            self._pool = self._used = decode_processes(workers(self._count))
        if self._pool is not None and len(self._items) >= self._chunk:
            self._send()

    def _send(self) -> None:
        items, self._items = self._items, []
        try:
            self._sent.append((items, self._pool.submit(_apply, (self._fn, items), len(items))))
        except RuntimeError:  # the workers died: threads from here on
            self._pool = None
            self._sent.append((items, _done(thread_map(self._fn, items))))

    def results(self) -> Iterator[Any]:
        """The results in the order the items arrived.

        Raises:
            RuntimeError: ``fn`` raised in a worker (its traceback is in the message).
        """
        if self._pool is not None and self._items:
            self._send()
        for items, future in self._sent:
            try:
                yield from future.result()
            except RuntimeError:
                if self._used is None or not self._used.broken:  # a bug in fn: raise it
                    raise
                yield from thread_map(self._fn, items)
        yield from thread_map(self._fn, self._items)


def _done(result: Any) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future
