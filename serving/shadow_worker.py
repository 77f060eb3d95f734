"""The shadow candidate's own process: ``python -m serving.shadow_worker FD NAME`` (started by :mod:`serving.shadow`).

The candidate runs here, not in the API worker, so that it never competes with the primary for the API
worker's GIL, and, once loaded and warmed up (the API worker waits for that), at the lowest CPU priority Linux
has (``SCHED_IDLE``; ``nice 19`` where that is refused): it computes on cores the primary leaves idle and is
preempted as soon as the primary's threads wake. Idle CPU is not free, though (whatever the two share:
caches, memory bandwidth, perhaps a virtual CPU's sibling hyperthread): on this 2-core machine a shadow that
took all the idle CPU it could get cost the primary 13-16% of its throughput, so it also rests after each
batch to stay under ``serve.shadow_cpu`` cores (0.1 by default: 0.97x the primary's throughput without a
shadow, same run). When it falls behind, the API worker's
queue fills and mirrored requests are shed.

It loads the version that ``NAME``'s alias ``serve.shadow`` points at (the serve config comes in the
environment, as for the server), follows the alias like the server follows its own, and answers the API
worker over one socket (``multiprocessing.connection`` framing, pickled tuples):

* ``("mirror", pixels, sizes, request_ids)`` -> ``("result", tag, labels, probabilities, seconds, state)``, or
  ``("failed", reason, state)``: the candidate's probabilities for the images (one inference), the seconds
  it took, and the images in the candidate's drift window (its own reference);
* ``("state",)`` -> ``("state", state)``;
* ``("close",)`` or the socket closing (the API worker is gone) -> the process exits.

``state`` is what ``/shadow`` shows of this process: the candidate's tag and labels, its lifecycle (swaps,
failed loads) and its drift scores. The first message is ``("ready", state)`` or ``("error", reason)``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from serving.config import ServeConfig

logger = logging.getLogger("shipyard.serving")


class Candidate:
    """One shadow version: a one-thread predictor and a drift window on its own reference."""

    def __init__(self, tag: str, config: ServeConfig) -> None:
        from serving.inference import Predictor
        from serving.monitoring.drift import DriftWindow, load_reference
        from serving.settings import package_dir

        self.tag = tag
        self.predictor = Predictor(package_dir(tag), config.variant, threads=1, embeddings=config.embeddings,
                                   allow_failed_gate=True, warmup_batches=(1, max(1, config.max_batch_size)))
        manifest = self.predictor.manifest
        self.labels = list(manifest.labels)
        self.window = DriftWindow(load_reference(manifest, self.predictor.package_dir), config.monitor,
                                  manifest.variants)

    def close(self) -> None:
        self.predictor.close()


class Worker:
    """The candidate of ``name``'s alias ``config.shadow``, following the alias."""

    def __init__(self, config: ServeConfig, name: str) -> None:
        from serving.lifecycle import ModelHolder
        from serving.settings import alias_tag

        tag = alias_tag(name, config.shadow or "")
        self.config = config
        self.models: ModelHolder[Candidate] = ModelHolder(
            tag, Candidate(tag, config), lambda t: Candidate(t, config), Candidate.close
        )
        self.models.follow(name, config.shadow or "", poll_s=config.alias_poll_s)

    def mirror(
        self, pixels: np.ndarray, sizes: list[tuple[int, int]], ids: list[str]
    ) -> tuple[str, list[str], np.ndarray, float]:
        """The current candidate's ``(tag, labels, probabilities, seconds)`` for ``pixels``; its drift window
        sees them."""
        from serving.inference import unpack

        with self.models.acquire() as slot:
            cand = slot.value
            started = time.perf_counter()
            outs = unpack(cand.predictor.predict(pixels), len(cand.labels))
            seconds = time.perf_counter() - started
            self._observe(cand, pixels, sizes, ids, outs)
            return slot.tag, cand.labels, np.stack([o.probabilities for o in outs]).astype(np.float32), seconds

    @staticmethod
    def _observe(cand: Candidate, pixels: np.ndarray, sizes: list[tuple[int, int]], ids: list[str],
                 outs: list[Any]) -> None:
        """The candidate's predictions into its drift window (evaluated when due)."""
        from edge.preprocess import image_stats_batch, stats_grid
        from serving.monitoring.signals import Observation

        grids = [np.ascontiguousarray(stats_grid(p)) for p in pixels]
        for rid, size, out, grid, row in zip(ids, sizes, outs, grids, image_stats_batch(grids), strict=True):
            pred = int(np.argmax(out.probabilities))
            obs = Observation(rid, grid, tuple(size), pred, float(out.probabilities[pred]), out.embedding,
                              cand.predictor.variant, time.time())
            cand.window.add(dataclasses.replace(obs, features=(*map(float, row), *map(float, size))))
            if cand.window.due():
                cand.window.evaluate()

    def state(self) -> dict[str, Any]:
        """The candidate's tag, labels, lifecycle and drift scores."""
        current = self.models.current
        drift = current.value.window.snapshot()
        return {
            "tag": current.tag,
            "labels": current.value.labels,
            "lifecycle": self.models.status(),
            "drift": {"detected": drift["detected"], "evaluations": drift["evaluations"],
                      "scores": {k: v.get("score") for k, v in drift["signals"].items()}},
        }

    def close(self) -> None:
        self.models.close()


def lowest_priority() -> str:
    """Put every thread of this process, and those it starts later, at the lowest CPU priority
    (``SCHED_IDLE``, else ``nice 19``); say which."""
    threads = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    try:
        for tid in threads:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        try:
            for tid in threads:
                os.setpriority(os.PRIO_PROCESS, tid, 19)
            return "nice 19"
        except (AttributeError, OSError) as exc:
            return f"default priority ({exc})"


def serve(conn: Connection, worker: Worker) -> None:
    """Answer the API worker until it says ``close`` or goes away; after each batch, rest long enough to keep
    this process's CPU time under ``serve.shadow_cpu`` cores."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "close":
            return
        used = time.process_time()
        if kind == "mirror":
            try:
                reply: tuple[Any, ...] = ("result", *worker.mirror(*message[1:]), worker.state())
            except Exception as exc:
                logger.warning("shadow inference failed", exc_info=True)
                reply = ("failed", f"{type(exc).__name__}: {exc}", worker.state())
        else:
            reply = ("state", worker.state())
        used = time.process_time() - used
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        time.sleep(max(0.0, used / worker.config.shadow_cpu - used))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="shipyard-shadow: %(message)s")
    conn = Connection(int(argv[0]))
    try:  # at normal priority: the API worker waits for this before it serves
        from serving.processing import limit_blas_threads

        limit_blas_threads()
        worker = Worker(ServeConfig.from_env(), argv[1])
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return 1
    priority = lowest_priority()
    logger.warning("candidate %s loaded at %s (pid %d)", worker.models.current.tag, priority, os.getpid())
    conn.send(("ready", worker.state()))
    try:
        serve(conn, worker)
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
