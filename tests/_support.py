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


def env_outside_checkout(**extra: str) -> dict[str, str]:
    """This environment without the checkout on ``sys.path`` (no PYTHONPATH, no user site), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    env.update(PYTHONNOUSERSITE="1", BENTOML_DO_NOT_TRACK="True", **extra)
    return env


def copy_project(dest: Path, packages: tuple[str, ...], *, skip: tuple[str, ...] = ()) -> Path:
    """The files ``pip install`` needs (pyproject, README, constraints and ``packages``), without this
    checkout's venv, build outputs or caches; ``skip`` names more folders or files to leave out."""
    import shutil

    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", *skip)
    for package in packages:
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    return dest


def fresh_venv(folder: Path, project: Path, extra: str, *, timeout: float) -> Path:
    """A new virtual environment in ``folder`` with ``project[extra]`` installed under the project's
    constraints.txt, as a user on a fresh machine would; returns its python.

    Fails the test with pip's error when the install fails.
    """
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    python = folder / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-c", str(project / "constraints.txt"), f"{project}[{extra}]"],
        capture_output=True,
        text=True,
        cwd=folder.parent,
        env=env_outside_checkout(),
        timeout=timeout,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def optimized_copy(package: Path, folder: Path, variants: list[str], name: str) -> tuple[Path, str, list[str]]:
    """A copy of ``package`` in ``folder`` with ``variants`` built (each must pass), renamed ``name`` and
    registered in the session's model store; returns ``(package, tag, labels)``."""
    import shutil

    from edge.manifest import read_manifest, write_manifest
    from training.optimize import optimize_config_for, run_optimize
    from training.registry import register

    pkg = folder / "pkg"
    shutil.copytree(package, pkg)
    config = optimize_config_for(
        read_manifest(pkg), None, ["optimize.latency=false", "optimize.representative_samples=50"]
    )
    outcome = run_optimize(pkg, config, variants=variants)
    failed = [(r.key, r.status, r.reason) for r in outcome.results if r.status != "passed"]
    assert not failed, failed
    manifest = read_manifest(pkg)
    manifest.name = name
    write_manifest(pkg, manifest)
    return pkg, register(pkg), list(manifest.labels)


def png_with_corrupt_idat(png: bytes) -> bytes:
    """``png`` with its pixel data (IDAT) scrambled and the chunk's CRC fixed: passes ``verify()``, fails decoding."""
    import struct
    import zlib

    data = bytearray(png)
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if bytes(data[pos + 4 : pos + 8]) == b"IDAT":
            start = pos + 8
            data[start : start + length] = bytes((b * 7 + 13) % 256 for b in range(length))
            crc = zlib.crc32(bytes(data[pos + 4 : start + length])) & 0xFFFFFFFF
            data[start + length : start + length + 4] = struct.pack(">I", crc)
            break
        pos += 12 + length
    return bytes(data)
