"""ARM64, emulated: Shipyard's own wheel with its ``edge`` extra in an arm64 Debian root, under qemu.

The root (``scripts/arm64-rootfs.sh``: mmdebstrap, Python 3.11, the aarch64 wheels of numpy, Pillow,
pydantic and ai-edge-litert) is built once and cached outside the checkout. Shipyard is installed from
a wheel built from this checkout, offline, and ``shipyard-edge predict``, ``eval`` and ``bench`` run
there on the edge package; their answers are compared with this machine's. Two traps: LiteRT under
qemu segfaults when it can read the host's ``/sys`` (so: a chroot with no ``/sys``), and int8 outputs
may differ from x86 by a few quantized steps (so: top-1 exactly, probabilities within a tolerance,
never timings).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main

ROOT = Path(__file__).resolve().parents[2]
ROOTFS_SCRIPT = ROOT / "scripts" / "arm64-rootfs.sh"
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
EDGE_VENV = "/opt/edge"  # inside the root: the edge extra's dependencies
INT8_TOLERANCE = 4 / 256  # a few quantized steps of a uint8 probability
FLOAT_TOLERANCE = 1e-5


def _why_not() -> str | None:
    """Why this machine cannot run the emulated arm64 test, or ``None`` when it can."""
    if os.environ.get("SHIPYARD_SKIP_ARM64"):
        return "SHIPYARD_SKIP_ARM64 is set"
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the emulated arm64 test runs on x86_64 Linux hosts (this is {sys.platform} {platform.machine()})"
    if os.geteuid() != 0:
        return "building and entering the arm64 root needs root (chroot, mmdebstrap); run as root"
    missing = [tool for tool in ("mmdebstrap", "chroot", "qemu-aarch64-static") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed: run scripts/system-deps.sh as root"
    if not BINFMT.is_file() or "enabled" not in BINFMT.read_text():
        return (
            f"{BINFMT} is not registered and enabled (binfmt_misc not mounted, or not permitted in this "
            "container): run scripts/system-deps.sh as root"
        )
    return None


@pytest.fixture(scope="module")
def arm64_root() -> Path:
    """The cached arm64 root (built on first use: a few minutes)."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "PYTHON": sys.executable}
    try:
        done = subprocess.run(
            ["bash", str(ROOTFS_SCRIPT)], capture_output=True, text=True, timeout=1800, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"{ROOTFS_SCRIPT.name} took more than 30 minutes (mirror or PyPI unreachable?)")
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-4:])
        pytest.skip(f"{ROOTFS_SCRIPT.name} could not build the arm64 root (exit {done.returncode}): {tail}")
    return Path(done.stdout.strip().splitlines()[-1])


def _build_wheel(out: Path) -> Path:
    """Shipyard's wheel, built from a copy of this checkout's sources (no build files left in the tree)."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("shipyard", "training", "serving", "edge"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(out.glob("shipyard-*.whl"))


class Arm64:
    """Runs commands in the arm64 root: a chroot with no /proc, /sys or /dev mounted, a clean environment."""

    def __init__(self, root: Path, work: str):
        self.root, self.work = root, work

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        env = ["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8"]
        return subprocess.run(
            ["chroot", str(self.root), *env, *args], capture_output=True, text=True, timeout=timeout
        )

    def edge(self, *args: str) -> dict:
        done = self.run(f"{self.work}/venv/bin/shipyard-edge", *args, "--json")
        assert done.returncode == 0, f"shipyard-edge {' '.join(args)} on arm64: {done.stderr[-2000:]}"
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def arm64(arm64_root: Path, edge_assets, tmp_path_factory) -> Arm64:
    """Shipyard[edge] installed from its wheel in a fresh venv inside the root, with the edge package and data."""
    name = f"shipyard-test-{uuid.uuid4().hex[:8]}"
    host_work = arm64_root / "tmp" / name
    host_work.mkdir(parents=True)
    try:
        wheel = _build_wheel(tmp_path_factory.mktemp("wheel"))
        shutil.copy(wheel, host_work / wheel.name)
        shutil.copytree(edge_assets.package, host_work / "package")
        shutil.copytree(edge_assets.data_dir, host_work / "data")
        box = Arm64(arm64_root, f"/tmp/{name}")
        venv = f"{box.work}/venv"
        done = box.run("/usr/bin/python3", "-m", "venv", "--without-pip", venv)
        assert done.returncode == 0, done.stderr
        # the cached dependencies are visible to the new venv; pip checks the [edge] extra against them
        (host_work / "venv" / "lib" / "python3.11" / "site-packages" / "edge-deps.pth").write_text(
            f"{EDGE_VENV}/lib/python3.11/site-packages\n"
        )
        done = box.run(
            f"{EDGE_VENV}/bin/python",
            "-m",
            "pip",
            "--python",
            f"{venv}/bin/python",
            "install",
            "-q",
            "--no-index",
            f"shipyard[edge] @ file://{box.work}/{wheel.name}",
        )
        assert done.returncode == 0, f"pip install shipyard[edge] on arm64 failed: {done.stderr[-2000:]}"
        yield box
    finally:
        shutil.rmtree(host_work, ignore_errors=True)


def test_the_root_is_arm64(arm64):
    done = arm64.run(
        f"{arm64.work}/venv/bin/python", "-c", "import platform, edge; print(platform.machine())"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "aarch64"


def _host(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _probabilities(result: dict) -> np.ndarray:
    rows = [sorted(p["top_k"], key=lambda item: item["index"]) for p in result["predictions"]]
    return np.array([[item["probability"] for item in row] for row in rows])


@pytest.mark.parametrize(("variant", "tolerance"), [("fp32", FLOAT_TOLERANCE), ("int8", INT8_TOLERANCE)])
def test_predict_and_eval_on_arm64_match_x86(arm64, edge_assets, capsys, variant, tolerance):
    images = edge_assets.test_paths
    inside = arm64.edge(
        "predict",
        f"{arm64.work}/package",
        *[f"{arm64.work}/data/{p}" for p in images],
        "--variant",
        variant,
        "--threads",
        "1",
    )
    here = _host(
        capsys,
        "predict",
        str(edge_assets.package),
        *[str(edge_assets.data_dir / p) for p in images],
        "--variant",
        variant,
        "--threads",
        "1",
    )
    top1 = [p["top_k"][0]["label"] for p in inside["predictions"]]
    assert top1 == [p["top_k"][0]["label"] for p in here["predictions"]]
    np.testing.assert_allclose(_probabilities(inside), _probabilities(here), atol=tolerance)

    arm = arm64.edge(
        "eval", f"{arm64.work}/package", f"{arm64.work}/data", "--variant", variant, "--threads", "1"
    )
    x86 = _host(
        capsys,
        "eval",
        str(edge_assets.package),
        str(edge_assets.data_dir),
        "--variant",
        variant,
        "--threads",
        "1",
    )
    assert (arm["images"], arm["accuracy"], arm["confusion"]) == (
        x86["images"],
        x86["accuracy"],
        x86["confusion"],
    )
    assert arm["reference"]["top1_agreement"] == x86["reference"]["top1_agreement"] == 1.0


def test_bench_runs_on_arm64(arm64):
    result = arm64.edge(
        "bench",
        f"{arm64.work}/package",
        "--variant",
        "int8",
        "--runs",
        "3",
        "--min-time",
        "0",
        "--warmup",
        "1",
        "--threads",
        "1",
    )
    assert result["runs"] >= 3 and result["format"] == "tflite"  # no timing is asserted under emulation
