"""Native (operating-system) names for the service's threads.

Python before 3.14 leaves every thread named after the process in ``/proc/PID/task/TID/comm``, so ``top -H``,
``py-spy`` without ``--threads`` and per-thread CPU accounting cannot tell the inference lanes from the event
loop or the monitor. The threads that do the service's work name themselves (``shipyard-lane``,
``shipyard-mon``, ``shipyard-shadow``: :data:`GROUPS`), and :func:`thread_cpu` / :func:`cpu_by_thread` read
them back to split a server's CPU time by thread (``benchmarks/serving.py``, the tests). A lane is one of
anyio's worker threads, named when it first runs a batch: it may also run the API's other off-loop work (large
decodes, ``/feedback``), which is then counted with the lanes.
"""

from __future__ import annotations

import os
import sys
import threading

#: Linux keeps the first 15 bytes of a thread's name.
MAX_NAME = 15
LANE, MONITOR, SHADOW = "shipyard-lane", "shipyard-mon", "shipyard-shadow"
#: How :func:`cpu_by_thread` groups a server's threads, by native name.
GROUPS = {LANE: "inference lanes", MONITOR: "monitor", SHADOW: "shadow"}
_named = threading.local()


def name_native_thread(name: str) -> None:
    """Give the calling thread ``name`` (cut to 15 bytes) at the operating-system level; a no-op off Linux,
    and silent when ``/proc`` is not writable (a name is a diagnostic aid, never a reason to fail)."""
    if getattr(_named, "name", None) == name or not sys.platform.startswith("linux"):
        return
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write(name[:MAX_NAME])
    except OSError:
        return
    _named.name = name


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
    ``event loop``; its threads named in :data:`GROUPS` go to their group and its other threads to
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
            group = GROUPS.get(after[(pid, tid)][0], "other threads")
        groups[group] = groups.get(group, 0.0) + seconds
    return groups
