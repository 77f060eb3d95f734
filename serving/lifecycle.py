"""Models that change while the server runs: follow an alias, load the next version beside the current one,
switch atomically, let in-flight requests finish on the old one, then release it.

Every server process (each API worker, and the model service with ``serve.model_service``) holds one
:class:`ModelHolder`. Its watcher thread polls the alias file's mtime (:class:`serving.aliases.AliasStore`)
every ``serve.alias_poll_s``; when the alias points at another version, it builds that version with the
``load`` function it was given (the sha256 check and the warm-up happen there, off the request path), swaps
the reference a request reads first, waits until the requests that had already taken the old version are
answered, and closes it. A version that fails to load is logged, counted in
``shipyard_model_load_failures_total`` and shown at ``/metadata``; the old one keeps serving, and the same
version is not retried until the alias moves again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from serving.aliases import AliasStore
from serving.processing import Scored

logger = logging.getLogger("shipyard.serving")

T = TypeVar("T")


def version_code(tag: str) -> float:
    """A number that names ``tag`` exactly in a ``float32`` column of the model's packed output (24 bits), so
    that an API worker can tell which version of a model service answered."""
    return float(zlib.crc32(tag.encode()) & 0xFFFFFF)


class Slot(Generic[T]):
    """One loaded version and the requests using it."""

    def __init__(self, tag: str, value: T, close: Callable[[T], None]) -> None:
        self.tag = tag
        self.value = value
        self.loaded_at = time.time()
        self.inflight = 0
        self._close = close
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.inflight += 1

    def leave(self) -> None:
        with self._lock:
            self.inflight -= 1

    def close(self) -> None:
        try:
            self._close(self.value)
        except Exception:
            logger.warning("releasing %s failed", self.tag, exc_info=True)


class ModelHolder(Generic[T]):
    """The version this process serves, switched atomically when the followed alias moves.

    Args:
        tag: the version loaded first (``name:version``).
        value: what :meth:`acquire` hands a request for it (built by ``load``).
        load: ``tag -> value``; raises when the version cannot be served.
        close: releases a value no request uses any more.
        on_event: called with ``("swap" | "failure", tag)`` (metrics).
        drain_s: how long to wait for the old version's requests before releasing it anyway.
    """

    def __init__(
        self,
        tag: str,
        value: T,
        load: Callable[[str], T],
        close: Callable[[T], None],
        *,
        on_event: Callable[[str, str], None] | None = None,
        drain_s: float = 60.0,
    ) -> None:
        self.current: Slot[T] = Slot(tag, value, close)
        self.recent: list[Slot[T]] = [self.current]
        self._load = load
        self._close = close
        self._on_event = on_event or (lambda kind, tag: None)
        self.drain_s = drain_s
        self.alias: str | None = None
        self.swaps = 0
        self.last_failure: dict[str, Any] | None = None
        self.previous: str | None = None
        self._failed_version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._call_soon: Callable[[Callable[[], None]], None] | None = None

    # -------------------------------------------------------------------------------------- requests

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Slot[T]]:
        """The current version for one request; a swap during the request does not release it."""
        slot = self.current
        slot.enter()
        if self._call_soon is None:
            self._call_soon = _loop_caller()
        try:
            yield slot
        finally:
            slot.leave()

    def by_tag(self, tag: str) -> Slot[T] | None:
        """A recently loaded version, by tag (the current one first)."""
        return next((s for s in self.recent if s.tag == tag), None)

    # -------------------------------------------------------------------------------------- following

    def follow(self, name: str, alias: str, *, poll_s: float = 1.0, store: AliasStore | None = None) -> None:
        """Start the watcher thread that keeps this holder on ``name``'s ``alias``."""
        self.alias = alias
        store = store or AliasStore()
        self._thread = threading.Thread(
            target=self._watch, args=(store, name, alias, poll_s), name=f"shipyard-alias-{alias}", daemon=True
        )
        self._thread.start()

    def _watch(self, store: AliasStore, name: str, alias: str, poll_s: float) -> None:
        seen: Any = object()
        while not self._stop.wait(poll_s):
            stamp = store.stamp()
            if stamp == seen:
                continue
            seen = stamp
            try:
                version = store.target(name, alias)
            except Exception as exc:  # the alias vanished or the file is broken: keep serving, say why
                self._failed(f"{name}:?", f"alias {alias!r}: {exc}")
                continue
            tag = f"{name}:{version}"
            if tag != self.current.tag and version != self._failed_version:
                self.switch(tag)

    def switch(self, tag: str) -> bool:
        """Load ``tag``, make it current and release the old version once its requests are answered.

        Returns:
            Whether the switch happened (a failure keeps the old version and is recorded).
        """
        started = time.perf_counter()
        logger.warning("shipyard: loading %s (alias %s) beside %s", tag, self.alias, self.current.tag)
        try:
            value = self._load(tag)
        except Exception as exc:
            self._failed(tag, f"{type(exc).__name__}: {exc}")
            return False
        old, self.current = self.current, Slot(tag, value, self._close)
        self.recent = [self.current, *self.recent][:3]
        self.previous, self.swaps, self._failed_version = old.tag, self.swaps + 1, None
        self._on_event("swap", tag)
        logger.warning("shipyard: now serving %s (loaded in %.2f s); releasing %s", tag,
                       time.perf_counter() - started, old.tag)
        self._release(old)
        return True

    def _release(self, old: Slot[T]) -> None:
        deadline = time.monotonic() + self.drain_s
        while old.inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        if old.inflight > 0:
            logger.warning("releasing %s with %d requests still on it after %.0f s", old.tag, old.inflight, self.drain_s)
        if self._call_soon is not None:
            done = threading.Event()
            self._call_soon(lambda: (old.close(), done.set()))
            done.wait(10.0)
        else:
            old.close()
        gc.collect()

    def _failed(self, tag: str, reason: str) -> None:
        self._failed_version = tag.split(":", 1)[-1]
        self.last_failure = {"tag": tag, "reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._on_event("failure", tag)
        logger.error("shipyard: cannot switch to %s, still serving %s: %s", tag, self.current.tag, reason)

    def status(self) -> dict[str, Any]:
        """What ``/metadata`` shows under ``lifecycle``."""
        return {
            "alias": self.alias,
            "serving": self.current.tag,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.current.loaded_at)),
            "previous": self.previous,
            "swaps": self.swaps,
            "last_failure": self.last_failure,
        }

    def close(self) -> None:
        """Stop following and release the current version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.current.close()


def _loop_caller() -> Callable[[Callable[[], None]], None] | None:
    """``call_soon_threadsafe`` of the running event loop (where BentoML's dispatcher must be shut down)."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return lambda fn: loop.call_soon_threadsafe(fn)


# ------------------------------------------------------------------------------------------ the API side


@dataclass(frozen=True)
class Loaded:
    """One version as the API service uses it: its package, the variant served, the model and its monitor."""

    tag: str
    package_dir: Path
    manifest: Any
    variant: str
    model: Any
    monitor: Any

    @property
    def variant_info(self) -> Any:
        return self.manifest.variants[self.variant]

    @property
    def variant_file(self) -> str:
        return self.variant_info.file.rsplit("/", 1)[-1]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    @property
    def code(self) -> float:
        return version_code(self.tag)

    def close(self) -> None:
        """Release the model and stop the monitor."""
        self.model.close()
        self.monitor.close()


def load_version(tag: str, config: Any, model: Callable[[str], Any]) -> Loaded:
    """Everything the API service needs to answer with ``tag``: ``model(tag)`` builds (and warms up) the model.

    Raises:
        PackageError / IntegrityError: not in the store, not runnable, a failed gate or a changed file.
    """
    from edge.manifest import read_manifest
    from serving.inference import served_variant
    from serving.processing import GuardedMonitor
    from serving.settings import package_dir

    folder = package_dir(tag)
    manifest = read_manifest(folder)
    variant = served_variant(manifest, config.variant, config.embeddings, config.allow_failed_gate)
    built = model(tag)
    try:
        monitor = GuardedMonitor(manifest, folder, config.monitor, workers=config.workers, variant=variant)
    except BaseException:
        built.close()
        raise
    return Loaded(tag, folder, manifest, variant, built, monitor)


@dataclass(frozen=True)
class Answered(Scored):
    """A scored image and the version that answered it."""

    served: Loaded | None = None
