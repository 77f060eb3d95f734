"""Model aliases (``production``, ``candidate``...): named pointers at versions of a registered model.

They live beside the BentoML model store, in one JSON file (``$BENTOML_HOME/shipyard/aliases.json``), so that
they survive restarts and every process of a server (API workers, the model service) reads the same ones.
The file is rewritten atomically (:func:`edge.files.write_json_atomic`) under an exclusive file lock, so two
promotes racing each other are serialized: both succeed, in the order they took the lock, and the history
holds both. A reader never locks: it sees the old file or the new one.

One alias of one model::

    {"version": "v2", "moved": "2026-01-05T10:12:00Z", "by": "promote",
     "stack": ["v1", "v2"],                       # what rollback walks back along
     "history": [{"version": "v1", "moved": ..., "by": "promote"}, ...]}

Pure Python (no BentoML): the CLI and every server process import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge.errors import PackageError
from edge.files import write_json_atomic

SCHEMA = 1
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: Moves kept in an alias's history (the rollback stack is bounded the same way).
HISTORY = 50


def aliases_path(home: str | Path | None = None) -> Path:
    """The alias file of the model store at ``home`` (default ``$BENTOML_HOME``, else ``~/bentoml``)."""
    base = home or os.environ.get("BENTOML_HOME") or Path.home() / "bentoml"
    return Path(base).expanduser().absolute() / "shipyard" / "aliases.json"


def check_alias(alias: str) -> str:
    """``alias`` when it is a valid name, else a :class:`PackageError` that says what is allowed."""
    if not ALIAS_PATTERN.match(alias or ""):
        raise PackageError(
            f"bad alias {alias!r}: use lower-case letters, digits, '-' and '_', starting with a letter "
            "(e.g. production, candidate)"
        )
    return alias


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class AliasStore:
    """The alias file of one model store.

    Args:
        path: the JSON file (default :func:`aliases_path`).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else aliases_path()

    # ------------------------------------------------------------------------------------------ reading

    def read(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{model name: {alias: entry}}`` (empty when no alias was ever set).

        Raises:
            PackageError: the file exists but is not an alias file (it names the file and how to fix it).
        """
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise PackageError(f"the alias file {self.path} is unreadable ({exc}); restore it or delete it") from None
        models = raw.get("models") if isinstance(raw, dict) else None
        if not isinstance(models, dict):
            raise PackageError(f"the alias file {self.path} has no 'models' mapping; restore it or delete it")
        return models

    def aliases(self, name: str) -> dict[str, dict[str, Any]]:
        """The aliases of model ``name`` (``{alias: entry}``)."""
        return dict(self.read().get(name, {}))

    def target(self, name: str, alias: str) -> str:
        """The version ``name``'s ``alias`` points at.

        Raises:
            PackageError: no such alias (the message lists the model's aliases and how to set one).
        """
        aliases = self.aliases(name)
        entry = aliases.get(alias)
        if entry is None:
            known = ", ".join(sorted(aliases)) or "none"
            raise PackageError(
                f"model {name!r} has no alias {alias!r} (its aliases: {known}); set it with "
                f"'shipyard models promote {name}:VERSION --alias {alias}'"
            )
        return str(entry["version"])

    def stamp(self) -> tuple[int, int] | None:
        """What changes whenever the file is rewritten (mtime and inode), ``None`` while there is none."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    # ------------------------------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, dict[str, Any]]]]:
        """The models mapping under the exclusive lock; written back atomically when the block succeeds."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                models = self.read()
                yield models
                write_json_atomic(self.path, {"schema": SCHEMA, "models": models}, sort_keys=True)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def move(self, name: str, alias: str, version: str, *, check: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Point ``name``'s ``alias`` at ``version`` (a promote); return the alias's new entry.

        Args:
            check: called with the alias's current version (or ``""``) under the lock before the move; it
                raises to refuse the move.
        """
        check_alias(alias)
        with self._locked() as models:
            entry = models.setdefault(name, {}).get(alias) or {"stack": [], "history": []}
            if check is not None:
                check(str(entry.get("version", "")))
            stack = [*[v for v in entry["stack"] if v != version][-(HISTORY - 1):], version]
            models[name][alias] = _moved(entry, version, "promote", stack)
            return dict(models[name][alias])

    def rollback(self, name: str, alias: str) -> dict[str, Any]:
        """Point ``name``'s ``alias`` back at the version it pointed at before; return the new entry.

        Raises:
            PackageError: no such alias, or it has no earlier version to go back to.
        """
        with self._locked() as models:
            entry = models.get(name, {}).get(alias)
            if entry is None:
                self.target(name, alias)  # raises the one-line "no alias" error
            stack = list(entry["stack"])
            if len(stack) < 2:
                raise PackageError(
                    f"alias {alias!r} of {name!r} has no earlier version to roll back to (it has only pointed at "
                    f"{entry['version']}); promote another version instead"
                )
            stack.pop()
            models[name][alias] = _moved(entry, stack[-1], "rollback", stack)
            return dict(models[name][alias])


def _moved(entry: dict[str, Any], version: str, by: str, stack: list[str]) -> dict[str, Any]:
    moved = _now()
    history = [*entry.get("history", []), {"version": version, "moved": moved, "by": by}][-HISTORY:]
    return {"version": version, "moved": moved, "by": by, "stack": stack, "history": history}
