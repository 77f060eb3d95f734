"""What every benchmark script shares (imported as ``benchmarks._common``: the scripts put the repository
root on ``sys.path`` first)."""

from __future__ import annotations

import io
import os
import platform
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    """The processor's model name (from ``/proc/cpuinfo`` on Linux), for the JSON a benchmark writes."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_jpeg(seed: int = 0, size: int = 224) -> bytes:
    """A smooth random ``size`` px photo-like JPEG (quality 90), as bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-12, 13, size=(size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(noisy.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bench_workdir(given: Path | None, prefix: str) -> Path:
    """The benchmark's work folder (``given``, else a new temporary one), with BentoML's home inside it and
    the environment every benchmark needs (legacy Keras, no BentoML usage tracking)."""
    import os
    import tempfile

    workdir = given or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(workdir / "bentoml")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return workdir


#: How :func:`cpu_by_thread` names a server's threads: their native names (set by ``serving.threads``) first.
THREAD_GROUPS = {"shipyard-lane": "inference lanes", "shipyard-mon": "monitor", "shipyard-shadow": "shadow"}


def thread_cpu(pids: list[int]) -> dict[tuple[int, int], tuple[str, float]]:
    """``(pid, tid) -> (native thread name, user + system CPU seconds so far)`` for every thread of ``pids``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, int], tuple[str, float]] = {}
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            out[(pid, int(tid))] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_by_thread(before: dict[tuple[int, int], tuple[str, float]],
                  after: dict[tuple[int, int], tuple[str, float]]) -> dict[str, float]:
    """CPU seconds between two :func:`thread_cpu` snapshots, grouped: the busiest process's main thread is
    ``event loop``; its threads named in :data:`THREAD_GROUPS` go to their group and its other threads to
    ``other threads`` (the hand-written server's decode + infer pool lands there); every other process of the
    server is ``other processes``."""
    spent: dict[tuple[int, int], float] = {}
    for key, (_, seconds) in after.items():
        spent[key] = seconds - before.get(key, ("", 0.0))[1]
    per_process: dict[int, float] = {}
    for (pid, _), seconds in spent.items():
        per_process[pid] = per_process.get(pid, 0.0) + seconds
    worker = max(per_process, key=per_process.__getitem__, default=None)
    groups: dict[str, float] = {}
    for (pid, tid), seconds in spent.items():
        if pid != worker:
            group = "other processes"
        elif tid == pid:
            group = "event loop"
        else:
            group = THREAD_GROUPS.get(after[(pid, tid)][0], "other threads")
        groups[group] = groups.get(group, 0.0) + seconds
    return groups
