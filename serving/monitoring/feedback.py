"""Predictions awaiting their true label (``/feedback``), and the accuracy the labels give, kept on disk.

The request path only inserts into this process's memory (:meth:`FeedbackStore.remember`). The monitor's
thread copies each batch of predictions into a SQLite file in one transaction (:meth:`FeedbackStore.sync`;
WAL, so API workers read while one writes). Every API worker of a server and every server that follows it
on the same file share it, so a label finds its prediction whichever worker, server start or model version
made it, and the accuracy counts survive restarts and model swaps. The default (``"auto"``) file is
:data:`DEFAULT_FILE` in the monitoring folder (``serve.monitor.log_dir``, default ``$BENTOML_HOME/monitoring``).

Accuracy is counted per model version (the tag that made the prediction): a total, and the outcomes of the
last ``recent`` labels. A second model that predicted the same requests (a shadow) is scored by the same
labels when its predictions are stored with :meth:`FeedbackStore.remember_many`; :meth:`FeedbackStore.accuracy`
reads any version's counts.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge.errors import InputError

logger = logging.getLogger("serving.monitoring")

#: File name of the ``"auto"`` store in the monitoring folder (not ``*.db``: that glob is what
#: prometheus_client's multiprocess collector reads).
DEFAULT_FILE = "feedback.sqlite3"
#: ``PRAGMA user_version`` of the layout below; a file with another version is not used.
STORE_VERSION = 2
#: Seconds between two clean-ups of expired rows.
CLEANUP_EVERY_S = 30.0
#: The role of the model that answered a request; shadows get their own role.
PRIMARY = "primary"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL, model TEXT NOT NULL, role TEXT NOT NULL, pred TEXT NOT NULL, t REAL NOT NULL,
    true_label TEXT, labelled_at REAL, PRIMARY KEY (request_id, model));
CREATE INDEX IF NOT EXISTS predictions_t ON predictions (t);
CREATE TABLE IF NOT EXISTS totals (model TEXT PRIMARY KEY, count INTEGER NOT NULL, correct INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes (model TEXT NOT NULL, labelled_at REAL NOT NULL, correct INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outcomes_model ON outcomes (model, labelled_at);
"""


class FeedbackNotFoundError(InputError):
    """``/feedback`` named a request id this monitor does not know (never seen, expired or forgotten)."""

    status = 404


class FeedbackConflictError(InputError):
    """``/feedback`` for a request that already received its label."""

    status = 409


class FeedbackUnavailableError(InputError):
    """The feedback store's file failed while recording a label; the client may retry."""

    status = 503


def store_path(setting: str | None, folder: Path) -> Path | None:
    """Where the feedback store lives: ``"auto"`` -> :data:`DEFAULT_FILE` in ``folder`` (the monitoring
    folder), ``None``/``"memory"`` -> nowhere (this process's memory), anything else -> that file."""
    if setting is None or setting == "memory":
        return None
    if setting == "auto":
        return Path(folder) / DEFAULT_FILE
    return Path(setting).expanduser()


def _open(path: Path | None) -> sqlite3.Connection:
    """The store's connection: the file at ``path`` (created, WAL) or, for ``None``, an in-memory database."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(":memory:" if path is None else path, timeout=5.0, isolation_level=None,
                         check_same_thread=False)  # fmt: skip
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, STORE_VERSION):
            raise ValueError(f"it has store version {version}, this Shipyard uses {STORE_VERSION}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: survives a crashed process, fsyncs at checkpoints
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={STORE_VERSION}")
    except BaseException:
        db.close()
        raise
    return db


def _not_found(request_id: str, ttl_s: float, capacity: int) -> FeedbackNotFoundError:
    return FeedbackNotFoundError(
        f"request {request_id!r} is unknown or expired: feedback is accepted for {ttl_s:g} s "
        f"after a prediction, for the last {capacity} predictions"
    )


class FeedbackStore:
    """Recent predictions by request id, their labels, and the accuracy per model version.

    Args:
        labels: the served model's labels (index -> name).
        model: the served model's tag, under which :meth:`remember` and :meth:`sync` store predictions.
        ttl_s: how long a prediction accepts feedback.
        capacity: how many predictions this process (and the file) keeps.
        recent: how many of the latest labels ``recent_accuracy`` covers.
        path: the SQLite file, or ``None`` for an in-memory database (this process only, lost on exit).
            An unusable file falls back to memory, with the reason in :attr:`problem`.
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
        self._pending: OrderedDict[str, list[Any]] = OrderedDict()  # id -> [pred index, time, labelled]
        self._db_lock = threading.Lock()
        self._last_cleanup = 0.0
        self.problem: str | None = None
        self.path = path
        try:
            self._db: sqlite3.Connection | None = _open(path)
        except Exception as exc:
            self.problem = f"feedback store {path} unusable ({type(exc).__name__}: {exc}); kept in memory"
            logger.warning("%s", self.problem)
            self.path = None
            self._db = _open(None)

    @property
    def shared(self) -> bool:
        """True when predictions and labels are kept in a file (shared by workers, kept across restarts)."""
        return self.path is not None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the store (``BEGIN IMMEDIATE``), committed unless the block raises."""
        with self._db_lock:
            db = self._db
            if db is None:
                raise RuntimeError("the feedback store is closed")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- request path ------------------------------------------------------------------------------
    def remember(self, request_id: str, pred: int, now: float) -> None:
        """Keep a prediction of the served model for feedback (this process's memory; cheap)."""
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
        """Store ``(request_id, predicted index, time)`` rows of the served model in one transaction."""
        self.remember_many(self.model, [(rid, self.labels[pred], t) for rid, pred, t in rows], role=PRIMARY)

    def remember_many(
        self, model: str, rows: list[tuple[str, str, float]], *, role: str = "shadow"
    ) -> None:
        """Store ``(request_id, predicted label, time)`` predictions of ``model`` in one transaction.

        A shadow model calls this with the request ids of the primary's answers: a label that arrives
        on ``/feedback`` for such a request then scores the shadow too (see :meth:`accuracy`), and a label
        that arrived before the shadow's prediction scores it now. Off the request path: it writes to the
        file. Drops expired rows now and then.
        """
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO predictions (request_id, model, role, pred, t) VALUES (?, ?, ?, ?, ?)",
                [(rid, model, role, pred, t) for rid, pred, t in rows],
            )
            if role != PRIMARY:
                self._label_late(db, model, [rid for rid, _, _ in rows], now)
            if now - self._last_cleanup > CLEANUP_EVERY_S:
                self._last_cleanup = now
                self._cleanup(db, now)

    def _label_late(self, db: sqlite3.Connection, model: str, request_ids: list[str], now: float) -> None:
        """Score ``model``'s new predictions of requests whose label arrived before them."""
        for start in range(0, len(request_ids), 500):  # SQLite's limit on variables per statement
            chunk = request_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for rid, pred, true_label in db.execute(
                f"SELECT s.request_id, s.pred, p.true_label FROM predictions s JOIN predictions p ON "
                f"p.request_id = s.request_id AND p.role = ? AND p.true_label IS NOT NULL WHERE s.model = ? "
                f"AND s.true_label IS NULL AND s.request_id IN ({marks})",
                (PRIMARY, model, *chunk),
            ).fetchall():
                self._score(db, rid, model, pred, true_label, now)

    def _score(self, db: sqlite3.Connection, request_id: str, model: str, pred: str, true_label: str,
               now: float) -> None:
        """Label ``model``'s prediction of ``request_id`` and count it in the totals and recent outcomes."""
        correct = int(pred == true_label)
        db.execute(
            "UPDATE predictions SET true_label = ?, labelled_at = ? WHERE request_id = ? AND model = ?",
            (true_label, now, request_id, model),
        )
        db.execute(
            "INSERT INTO totals (model, count, correct) VALUES (?, 1, ?) "
            "ON CONFLICT (model) DO UPDATE SET count = count + 1, correct = correct + excluded.correct",
            (model, correct),
        )
        db.execute("INSERT INTO outcomes (model, labelled_at, correct) VALUES (?, ?, ?)", (model, now, correct))

    def _cleanup(self, db: sqlite3.Connection, now: float) -> None:
        """Forget expired predictions, the oldest beyond ``capacity`` (the served models' and the shadows'
        each), and outcomes beyond ``recent``."""
        db.execute("DELETE FROM predictions WHERE t < ?", (now - self.ttl_s,))
        for role in ("role = ?", "role != ?"):
            db.execute(
                f"DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions WHERE {role} "
                "ORDER BY t DESC LIMIT -1 OFFSET ?)",
                (PRIMARY, self.capacity),
            )
        db.execute(
            "DELETE FROM outcomes WHERE rowid IN (SELECT rowid FROM (SELECT rowid, ROW_NUMBER() OVER "
            "(PARTITION BY model ORDER BY labelled_at DESC) AS n FROM outcomes) WHERE n > ?)",
            (self.recent_size,),
        )

    # -- feedback ----------------------------------------------------------------------------------
    def record(self, request_id: str, true_index: int) -> dict[str, Any]:
        """Label an earlier prediction (and every shadow prediction of the same request); return the
        answer of ``/feedback``, with the accuracy of the model version that made the prediction.

        Raises:
            FeedbackNotFoundError: unknown, expired or forgotten request id.
            FeedbackConflictError: the request already has its label.
            FeedbackUnavailableError: the store's file failed.
        """
        now = time.time()
        with self._lock:
            self._expire(now)
            entry = self._pending.get(request_id)
            if entry is not None and entry[2]:
                raise FeedbackConflictError(f"request {request_id!r} already received its label; send feedback once")
            local = None if entry is None else (self.labels[entry[0]], entry[1])
        true_label = self.labels[true_index]
        try:
            with self._transaction() as db:
                model, pred = self._label_rows(db, request_id, local, true_label, now)
                counts = self._counts(db, model)
        except InputError:
            raise
        except Exception as exc:
            logger.warning("feedback store %s failed: %s", self.path or "(memory)", exc)
            raise FeedbackUnavailableError(
                f"the feedback store failed ({type(exc).__name__}: {exc}); the label was not recorded, retry"
            ) from exc
        with self._lock:
            entry = self._pending.get(request_id)
            if entry is not None:
                entry[2] = True
        return {
            "request_id": request_id,
            "model": model,
            "predicted_label": pred,
            "true_label": true_label,
            "correct": pred == true_label,
            "accuracy": counts["accuracy"],
            "recent_accuracy": counts["recent_accuracy"],
            "feedback_count": counts["count"],
            "correct_count": counts["correct"],
        }

    def _label_rows(
        self, db: sqlite3.Connection, request_id: str, local: tuple[str, float] | None, true_label: str, now: float
    ) -> tuple[str, str]:
        """Store the true label on every prediction of the request (inserting the served model's row from
        ``local`` when the monitor's thread has not copied it yet) and count it; return the answering
        (model, predicted label).

        Raises:
            FeedbackNotFoundError: unknown or expired request id.
            FeedbackConflictError: the request already has its label.
        """
        rows = db.execute(
            "SELECT model, role, pred, t, true_label FROM predictions WHERE request_id = ?", (request_id,)
        ).fetchall()
        primary = [r for r in rows if r[1] == PRIMARY]
        if not primary:
            if local is None:
                raise _not_found(request_id, self.ttl_s, self.capacity)
            primary = [(self.model, PRIMARY, local[0], local[1], None)]
            rows.append(primary[0])
            db.execute(
                "INSERT INTO predictions (request_id, model, role, pred, t) VALUES (?, ?, ?, ?, ?)",
                (request_id, self.model, PRIMARY, local[0], local[1]),
            )
        model, _, pred, t, labelled = primary[0]
        if labelled is not None:
            raise FeedbackConflictError(f"request {request_id!r} already received its label; send feedback once")
        if t < now - self.ttl_s:
            raise FeedbackNotFoundError(
                f"request {request_id!r} is expired: feedback is accepted for {self.ttl_s:g} s after a prediction"
            )
        for row_model, _, row_pred, _, row_label in rows:
            if row_label is None:
                self._score(db, request_id, row_model, row_pred, true_label, now)
        return model, pred

    def _counts(self, db: sqlite3.Connection, model: str) -> dict[str, Any]:
        """Labels, correct ones, accuracy and the accuracy of the last ``recent`` labels of ``model``."""
        row = db.execute("SELECT count, correct FROM totals WHERE model = ?", (model,)).fetchone()
        recent = [
            int(r[0])
            for r in db.execute(
                "SELECT correct FROM outcomes WHERE model = ? ORDER BY labelled_at DESC, rowid DESC LIMIT ?",
                (model, self.recent_size),
            )
        ]
        count, right = (int(row[0]), int(row[1])) if row else (0, 0)
        return {
            "model": model,
            "count": count,
            "correct": right,
            "accuracy": right / count if count else None,
            "recent_accuracy": sum(recent) / len(recent) if recent else None,
        }

    def accuracy(self, model: str | None = None) -> dict[str, Any]:
        """The labelled accuracy of ``model`` (default: the served model) so far, from the store.

        Returns:
            ``model``, ``count`` (labels), ``correct``, ``accuracy`` and ``recent_accuracy`` (the last
            ``recent`` labels); the accuracies are ``None`` before the first label.
        """
        with self._db_lock:
            if self._db is None:
                raise RuntimeError("the feedback store is closed")
            return self._counts(self._db, model or self.model)

    def outcomes(self, request_id: str) -> list[dict[str, Any]]:
        """The labelled predictions of ``request_id``, one per model that made one (the served model's and any
        shadow's): ``model``, ``role``, ``predicted_label``, ``true_label``, ``correct``."""
        with self._db_lock:
            if self._db is None:
                raise RuntimeError("the feedback store is closed")
            rows = self._db.execute(
                "SELECT model, role, pred, true_label FROM predictions WHERE request_id = ? AND true_label IS NOT NULL",
                (request_id,),
            ).fetchall()
        return [{"model": m, "role": r, "predicted_label": p, "true_label": t, "correct": p == t} for m, r, p, t in rows]

    def paired(self, model: str) -> dict[str, Any]:
        """The served models' and ``model``'s (a shadow's) accuracy on the same labelled requests still kept:
        ``requests``, ``primary_accuracy``, ``candidate_accuracy`` (``None`` before the first)."""
        with self._db_lock:
            if self._db is None:
                raise RuntimeError("the feedback store is closed")
            n, primary, candidate = self._db.execute(
                "SELECT COUNT(*), SUM(p.pred = p.true_label), SUM(s.pred = s.true_label) FROM predictions s "
                "JOIN predictions p ON p.request_id = s.request_id AND p.role = ? "
                "WHERE s.model = ? AND s.role != ? AND s.true_label IS NOT NULL AND p.true_label IS NOT NULL",
                (PRIMARY, model, PRIMARY),
            ).fetchone()
        return {"requests": n, "primary_accuracy": primary / n if n else None,
                "candidate_accuracy": candidate / n if n else None}

    def models(self) -> list[str]:
        """Every model version the store has labels for."""
        with self._db_lock:
            if self._db is None:
                return []
            return [r[0] for r in self._db.execute("SELECT model FROM totals ORDER BY model")]

    def summary(self) -> dict[str, Any]:
        """What ``drift()`` shows: the served model's counts, every version's, and where they are kept."""
        try:
            served = self.accuracy()
            versions = {model: self.accuracy(model) for model in self.models()}
        except Exception as exc:
            logger.debug("feedback summary failed: %s", exc)
            served, versions = {"count": 0, "correct": 0, "accuracy": None, "recent_accuracy": None}, {}
        return {
            **{k: served[k] for k in ("count", "correct", "accuracy", "recent_accuracy")},
            "models": {m: {k: v for k, v in counts.items() if k != "model"} for m, counts in versions.items()},
            "store": f"file: {self.path}" if self.shared else "memory",
            "problem": self.problem,
        }

    def close(self) -> None:
        """Close the store's connection."""
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
