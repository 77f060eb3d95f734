"""Tools whose pins conflict with ours, each in its own cached virtual environment.

MediaPipe's TFLite metadata writer needs ``absl-py`` 2, ``protobuf`` 4 and ``numpy`` 1 (our training side
pins ``absl-py`` 1.4, ``protobuf`` 7 and ``numpy`` 2), so it runs in a virtual environment of its own,
created once from exact pins and cached outside the checkout, keyed on the pins and the Python version:
``$SHIPYARD_CACHE`` (default ``~/.cache/shipyard``) ``/venvs/<name>-<key>``. The same environment runs
the real MediaPipe Tasks client in the tests. Nothing of Shipyard is installed in it: a script is run
there by path, in isolated mode (``python -I``), and talks to us through files.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from training.optimize.errors import OptimizeError

#: mediapipe 0.10.21 and everything it installs, pinned exactly. mediapipe 0.10.30+ and 1.x ship without
#: ``mediapipe.tasks.cc``, which their own ``metadata_writers`` import; 0.10.21 is the newest whose writer imports.
MEDIAPIPE_PINS: tuple[str, ...] = (
    "mediapipe==0.10.21",
    "absl-py==2.5.1",
    "attrs==26.1.0",
    "cffi==2.1.1",
    "contourpy==1.3.3",
    "cycler==0.12.1",
    "flatbuffers==25.12.19",
    "fonttools==4.68.0",
    "jax==0.7.1",
    "jaxlib==0.7.1",
    "kiwisolver==1.5.1",
    "matplotlib==3.11.2",
    "ml_dtypes==0.5.4",
    "numpy==1.26.4",
    "opencv-contrib-python==4.11.0.86",
    "opt_einsum==3.4.0",
    "packaging==26.4",
    "pillow==13.0.0",
    "protobuf==4.25.9",
    "pycparser==3.12",
    "pyparsing==3.3.3",
    "python-dateutil==4.0.0",
    "scipy==1.17.1",
    "sentencepiece==0.2.3",
    "sounddevice==0.5.6",
    "tzdata==2026.6",
)


class IsolatedEnvError(OptimizeError):
    """An isolated environment could not be created (no network, pip failed) or its script failed."""


def cache_root() -> Path:
    """Where Shipyard caches what it builds outside a checkout: ``$SHIPYARD_CACHE`` or ``~/.cache/shipyard``."""
    return Path(os.environ.get("SHIPYARD_CACHE") or Path.home() / ".cache" / "shipyard")


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class IsolatedEnv:
    """A virtual environment holding exactly ``requirements``, created on first use and then reused."""

    name: str
    requirements: tuple[str, ...]

    @property
    def key(self) -> str:
        """16 hex digits of the sha256 of the pins and this Python's version."""
        text = "\n".join((sys.version.split()[0], *sorted(self.requirements)))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def path(self) -> Path:
        """The environment's folder."""
        return cache_root() / "venvs" / f"{self.name}-{self.key}"

    @property
    def python(self) -> Path:
        """Its interpreter."""
        return self.path / "bin" / "python"

    @property
    def ready(self) -> bool:
        """It has been created completely."""
        return (self.path / ".complete").is_file()

    def ensure(self, timeout: float = 1200) -> Path:
        """Create the environment unless it exists (one process at a time); return its interpreter.

        Raises:
            IsolatedEnvError: ``venv`` or ``pip install`` failed (the message ends with pip's last lines).
        """
        if self.ready:
            return self.python
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f"{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.ready:
                self._create(timeout)
        return self.python

    def _create(self, timeout: float) -> None:
        staging = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        (staging.parent).mkdir(parents=True, exist_ok=True)
        requirements = staging.parent / f"{self.path.name}.requirements.txt"
        requirements.write_text("\n".join(self.requirements) + "\n")
        base = getattr(sys, "_base_executable", sys.executable)
        steps = (
            [base, "-m", "venv", str(staging)],
            [
                str(staging / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-input",
                "-r",
                str(requirements),
            ],
        )
        for cmd in steps:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise IsolatedEnvError(
                    f"creating the {self.name} environment timed out: {' '.join(cmd)}"
                ) from exc
            if done.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise IsolatedEnvError(
                    f"could not create the {self.name} environment ({' '.join(cmd[-4:])} exited "
                    f"{done.returncode}): {_tail(done.stderr or done.stdout)}"
                )
        shutil.copy(requirements, staging / "requirements.txt")
        (staging / ".complete").write_text(self.key + "\n")
        shutil.rmtree(self.path, ignore_errors=True)
        staging.rename(self.path)

    def run_script(self, script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``script`` with this environment's Python in isolated mode (creating the environment first).

        Raises:
            IsolatedEnvError: the environment cannot be created, or the script exits non-zero.
        """
        python = self.ensure()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        done = subprocess.run(
            [str(python), "-I", str(script), *args], capture_output=True, text=True, timeout=timeout, env=env
        )
        if done.returncode != 0:
            raise IsolatedEnvError(
                f"{script.name} failed in the {self.name} environment (exit {done.returncode}): "
                f"{_tail(done.stderr or done.stdout)}"
            )
        return done


#: MediaPipe (metadata writer and the Tasks client) in its own environment.
MEDIAPIPE = IsolatedEnv("mediapipe", MEDIAPIPE_PINS)

__all__ = ["MEDIAPIPE", "MEDIAPIPE_PINS", "IsolatedEnv", "IsolatedEnvError", "cache_root"]
