"""Predictions awaiting their true label (``/feedback``), and the live accuracy they give.

Each process keeps its recent predictions in memory (the request path only inserts into a dict). With
several API workers a feedback request may reach another worker than the prediction did, so the store
can also share them through a SQLite file: the monitor's thread copies each batch of predictions into
it, and :meth:`FeedbackStore.record` looks there when the id is not in this process's memory. Under
``bentoml serve`` the file lives in the server's ``PROMETHEUS_MULTIPROC_DIR``, which BentoML creates
empty for every server start and shares with all of its workers.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from edge.errors import InputError

logger = logging.getLogger("serving.monitoring")

#: File name of the shared store inside ``PROMETHEUS_MULTIPROC_DIR`` (not ``*.db``: that glob is
#: what prometheus_client's multiprocess collector reads).
SHARED_FILE = "shipyard-feedback.sqlite3"
#: Seconds between two clean-ups of expired rows in the shared file.
CLEANUP_EVERY_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    model TEXT NOT NULL, request_id TEXT NOT NULL, pred INTEGER NOT NULL, t REAL NOT NULL,
    true_label INTEGER, correct INTEGER, labelled_at REAL, PRIMARY KEY (model, request_id));
CREATE INDEX IF NOT EXISTS predictions_t ON predictions (model, t);
CREATE INDEX IF NOT EXISTS predictions_labelled ON predictions (model, labelled_at);
CREATE TABLE IF NOT EXISTS totals (model TEXT PRIMARY KEY, count INTEGER NOT NULL, correct INTEGER NOT NULL);
"""


class FeedbackNotFoundError(InputError):
    """``/feedback`` named a request id this monitor does not know (never seen, expired or forgotten)."""

    status = 404


class FeedbackConflictError(InputError):
    """``/feedback`` for a request that already received its label."""

    status = 409


def shared_path(
    setting: str | None, environ: dict[str, str] | None = None, *, workers: int | None = None
) -> Path | None:
    """Where to share feedback state: ``"auto"`` -> a file in ``PROMETHEUS_MULTIPROC_DIR`` when that is
    set (under ``bentoml serve``) unless ``workers`` says this is the only API worker, ``None``/``"memory"``
    -> nowhere, anything else -> that path."""
    env = os.environ if environ is None else environ
    if setting is None or setting == "memory" or (setting == "auto" and workers == 1):
        return None
    if setting == "auto":
        directory = env.get("PROMETHEUS_MULTIPROC_DIR")
        return Path(directory) / SHARED_FILE if directory else None
    return Path(setting)


class FeedbackStore:
    """Recent predictions by request id, their labels, and the accuracy so far.

    Args:
        labels: the model's labels (for the answer's label names).
        model: the model tag; rows of other models in a shared file are ignored.
        ttl_s: how long a prediction accepts feedback.
        capacity: how many predictions each process (and the shared file) keeps.
        recent: how many of the latest labels ``recent_accuracy`` covers.
        path: the shared SQLite file, or ``None`` to keep everything in this process.
    """

    def __init__(
        self, labels: list[str], model: str, *, ttl_s: float, capacity: int, recent: int, path: Path | None
    ) -> None:
        self.labels = labels
        self.model = model
        self.ttl_s = ttl_s
        self.capacity = capacity
        self.recent_size = recent
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, list[Any]] = OrderedDict()  # id -> [pred, time, labelled]
        self._recent: deque[bool] = deque(maxlen=recent)
        self._count = 0
        self._correct = 0
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self._last_cleanup = 0.0
        self.problem: str | None = None
        self.path = path
        if path is not None:
            try:
                self._db = self._open(path)
            except Exception as exc:
                self.problem = (
                    f"shared feedback store {path} unusable ({type(exc).__name__}: {exc}); per-process only"
                )
                logger.warning("%s", self.problem)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # losing recent predictions on a power cut is acceptable
        db.executescript(_SCHEMA)
        return db

    @property
    def shared(self) -> bool:
        """True when predictions are shared with other processes through the SQLite file."""
        return self._db is not None

    # -- request path ------------------------------------------------------------------------------
    def remember(self, request_id: str, pred: int, now: float) -> None:
        """Keep a prediction for feedback (this process's memory; cheap)."""
        with self._lock:
            self._pending[request_id] = [pred, now, False]
            self._pending.move_to_end(request_id)
            self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self.ttl_s
        pending = self._pending
        while pending:
            first = next(iter(pending.values()))
            if first[1] >= horizon and len(pending) <= self.capacity:
                break
            pending.popitem(last=False)

    # -- monitor thread ----------------------------------------------------------------------------
    def sync(self, rows: list[tuple[str, int, float]]) -> None:
        """Copy ``(request_id, pred, time)`` rows into the shared file; drop expired rows now and then."""
        if self._db is None:
            return
        now = time.time()
        with self._db_lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR IGNORE INTO predictions (model, request_id, pred, t) VALUES (?, ?, ?, ?)",
                    [(self.model, rid, pred, t) for rid, pred, t in rows],
                )
                if now - self._last_cleanup > CLEANUP_EVERY_S:
                    self._last_cleanup = now
                    db.execute(
                        "DELETE FROM predictions WHERE model = ? AND t < ?", (self.model, now - self.ttl_s)
                    )
                    db.execute(
                        "DELETE FROM predictions WHERE model = ? AND rowid IN (SELECT rowid FROM predictions "
                        "WHERE model = ? ORDER BY t DESC LIMIT -1 OFFSET ?)",
                        (self.model, self.model, self.capacity),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- feedback ----------------------------------------------------------------------------------
    def record(self, request_id: str, true_index: int) -> dict[str, Any]:
        """Label an earlier prediction; return the answer of ``/feedback``.

        Raises:
            FeedbackNotFoundError: unknown, expired or forgotten request id.
            FeedbackConflictError: the request already has its label.
        """
        now = time.time()
        with self._lock:
            self._expire(now)
            entry = self._pending.get(request_id)
            if entry is not None and entry[2]:
                raise FeedbackConflictError(
                    f"request {request_id!r} already received its label; send feedback once"
                )
            local = None if entry is None else (entry[0], entry[1])
        shared: tuple[int, int, int, list[int]] | None = None
        if self._db is not None:
            try:
                shared = self._record_shared(request_id, local, true_index, now)
            except InputError:
                raise
            except Exception as exc:  # a broken file: answer from this process's memory
                logger.warning("shared feedback store failed, answering from memory: %s", exc)
        if shared is None and local is None:
            raise FeedbackNotFoundError(
                f"request {request_id!r} is unknown or expired: feedback is accepted for {self.ttl_s:g} s "
                f"after a prediction, for the last {self.capacity} predictions"
            )
        pred = shared[0] if shared is not None else local[0]  # type: ignore[index]
        correct = pred == true_index
        with self._lock:
            entry = self._pending.get(request_id)
            if entry is not None:
                if entry[2] and shared is None:
                    raise FeedbackConflictError(
                        f"request {request_id!r} already received its label; send feedback once"
                    )
                entry[2] = True
            self._count += 1
            self._correct += int(correct)
            self._recent.append(correct)
            if shared is not None:
                count, right, recent = shared[1], shared[2], shared[3]
            else:
                count, right, recent = self._count, self._correct, [int(c) for c in self._recent]
        return {
            "request_id": request_id,
            "predicted_label": self.labels[pred],
            "true_label": self.labels[true_index],
            "correct": bool(correct),
            "accuracy": right / count,
            "recent_accuracy": sum(recent) / len(recent),
            "feedback_count": count,
            "correct_count": right,
        }

    def _record_shared(
        self, request_id: str, local: tuple[int, float] | None, true_index: int, now: float
    ) -> tuple[int, int, int, list[int]]:
        """The shared-file part of :meth:`record` in one write transaction: (pred, count, correct, recent)."""
        if self._db is None:
            raise RuntimeError("no shared feedback store")
        with self._db_lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                pred = self._label_row(db, request_id, local, true_index, now)
                db.execute(
                    "INSERT INTO totals (model, count, correct) VALUES (?, 1, ?) "
                    "ON CONFLICT (model) DO UPDATE SET count = count + 1, correct = correct + excluded.correct",
                    (self.model, int(pred == true_index)),
                )
                count, right = db.execute(
                    "SELECT count, correct FROM totals WHERE model = ?", (self.model,)
                ).fetchone()
                recent = [
                    int(r[0])
                    for r in db.execute(
                        "SELECT correct FROM predictions WHERE model = ? AND labelled_at IS NOT NULL "
                        "ORDER BY labelled_at DESC LIMIT ?",
                        (self.model, self.recent_size),
                    )
                ]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return int(pred), int(count), int(right), recent

    def _label_row(
        self, db: Any, request_id: str, local: tuple[int, float] | None, true_index: int, now: float
    ) -> int:
        """Store the true label on the prediction's row (inserting the row from ``local`` when another
        worker never saw it); return the predicted index.

        Raises:
            FeedbackNotFoundError: unknown or expired request id.
            FeedbackConflictError: the request already has its label.
        """
        row = db.execute(
            "SELECT pred, t, true_label FROM predictions WHERE model = ? AND request_id = ?",
            (self.model, request_id),
        ).fetchone()
        if row is None:
            if local is None:
                raise FeedbackNotFoundError(
                    f"request {request_id!r} is unknown or expired: feedback is accepted for "
                    f"{self.ttl_s:g} s after a prediction, for the last {self.capacity} predictions"
                )
            pred = local[0]
            db.execute(
                "INSERT INTO predictions (model, request_id, pred, t, true_label, correct, labelled_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.model, request_id, pred, local[1], true_index, int(pred == true_index), now),
            )
            return pred
        pred, t, labelled = row
        if labelled is not None:
            raise FeedbackConflictError(f"request {request_id!r} already received its label; send feedback once")
        if t < now - self.ttl_s:
            raise FeedbackNotFoundError(
                f"request {request_id!r} is expired: feedback is accepted for {self.ttl_s:g} s after a prediction"
            )
        db.execute(
            "UPDATE predictions SET true_label = ?, correct = ?, labelled_at = ? WHERE model = ? AND request_id = ?",
            (true_index, int(pred == true_index), now, self.model, request_id),
        )
        return pred

    def summary(self) -> dict[str, Any]:
        """Counts and accuracy for ``drift()``: shared totals when a shared file is used."""
        count, right = self._count, self._correct
        recent = [int(c) for c in self._recent]
        if self._db is not None:
            try:
                with self._db_lock:
                    row = self._db.execute(
                        "SELECT count, correct FROM totals WHERE model = ?", (self.model,)
                    ).fetchone()
                    recent = [
                        int(r[0])
                        for r in self._db.execute(
                            "SELECT correct FROM predictions WHERE model = ? AND labelled_at IS NOT NULL "
                            "ORDER BY labelled_at DESC LIMIT ?",
                            (self.model, self.recent_size),
                        )
                    ]
                count, right = (int(row[0]), int(row[1])) if row else (0, 0)
            except Exception as exc:
                logger.debug("shared feedback summary failed: %s", exc)
        return {
            "count": count,
            "correct": right,
            "accuracy": right / count if count else None,
            "recent_accuracy": sum(recent) / len(recent) if recent else None,
            "store": f"shared: {self.path}" if self._db is not None else "memory",
            "problem": self.problem,
        }

    def close(self) -> None:
        """Close the shared file."""
        if self._db is not None:
            with self._db_lock:
                self._db.close()
                self._db = None
