"""Where this process stands in a search: its distributed role, and whether the search in its folder can resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from edge.config import ConfigError
from edge.files import write_json_atomic
from training.config import TrainingConfig

STATE_FILE = "search.json"

Role = Literal["standalone", "chief", "worker"]


def distributed_role() -> Role:
    """This process's part in a KerasTuner distributed search, from its environment variables.

    ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` name the chief's gRPC address;
    ``KERASTUNER_TUNER_ID`` is ``chief`` on the chief and a unique name (``worker0``, ...) on each worker.
    With none of them set, the search runs in this process alone.

    Raises:
        ConfigError: some of the variables are set but not all.
    """
    names = ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID")
    present = [n for n in names if os.environ.get(n)]
    if "KERASTUNER_ORACLE_IP" not in present:
        return "standalone"
    missing = [n for n in names if n not in present]
    if missing:
        raise ConfigError(
            f"KERASTUNER_ORACLE_IP is set but {', '.join(missing)} is not; a distributed search needs all of "
            "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID (chief on the chief, "
            "a unique name such as worker0 on each worker)"
        )
    port = os.environ["KERASTUNER_ORACLE_PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"KERASTUNER_ORACLE_PORT = {port!r} is not a port number (1..65535)")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def _fingerprint(config: TrainingConfig) -> dict[str, Any]:
    """What a resumed search must share with the search it continues."""
    dump = config.training_dump()
    dump["data"].pop("path", None)
    tune = dump["tune"]
    for budget in ("max_trials", "max_time_s", "max_failed_trials"):
        tune.pop(budget, None)
    return {"data": dump["data"], "model": dump["model"], "train": dump["train"], "tune": tune}


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


def check_resume(output: Path, config: TrainingConfig, fresh: bool, role: Role) -> None:
    """Refuse to resume a search in ``output`` that was started with other settings; record these.

    Raises:
        ConfigError: ``output`` holds a search with another config (and ``fresh`` is not set).
    """
    path = output / STATE_FILE
    mine = _fingerprint(config)
    if path.is_file() and not fresh:
        try:
            theirs = json.loads(path.read_text())
        except json.JSONDecodeError:
            theirs = None
        if theirs is not None and theirs != mine:
            raise ConfigError(
                f"{output} holds a search started with other settings ({_first_difference(theirs, mine)}); a search "
                "resumes only with the same config (tune.max_trials, tune.max_time_s and data.path may change). "
                "Pass --fresh to start over or choose another --output"
            )
    if role != "worker":
        write_json_atomic(path, mine, indent=2, sort_keys=True)
