"""Native (operating-system) names for the service's threads.

Python before 3.14 leaves every thread named after the process in ``/proc/PID/task/TID/comm``, so ``top -H``,
``py-spy`` without ``--threads`` and per-thread CPU accounting cannot tell the inference lanes from the event
loop or the monitor. The threads that do the service's work name themselves (``shipyard-lane``,
``shipyard-mon``, ``shipyard-shadow``); ``benchmarks/serving.py`` reads these names to split the server's
CPU time per request by thread. A lane is one of anyio's worker threads, named when it first runs a batch: it
may also run the API's other off-loop work (large decodes, ``/feedback``), which is then counted with the lanes.
"""

from __future__ import annotations

import sys
import threading

#: Linux keeps the first 15 bytes of a thread's name.
MAX_NAME = 15
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


def native_thread_name(tid: int | None = None) -> str | None:
    """The operating-system name of thread ``tid`` of this process (default: the calling thread), or ``None``."""
    try:
        with open(f"/proc/self/task/{tid or threading.get_native_id()}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return None
