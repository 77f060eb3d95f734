"""Helpers shared by test modules (imported as ``_support``; conftest modules cannot be imported by name
because every test folder has its own ``conftest.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Training runs on tiny models: many threads only contend on a 2-core machine.
TINY_TRAIN = [
    "data.image_size=32",
    "model.base=small_cnn",
    "model.weights=none",
    "model.freeze=none",
    "train.early_stopping_patience=0",
    "train.reduce_lr_patience=0",
    "train.learning_rate=0.003",
]


def run_cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``shipyard`` (or ``shipyard-edge`` when args[0] == 'edge') from this venv; capture output."""
    exe = BIN / "shipyard"
    if args and args[0] == "edge":
        exe, args = BIN / "shipyard-edge", args[1:]
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd
    )
