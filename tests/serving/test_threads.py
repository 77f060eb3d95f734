"""Native thread names (``serving.threads``) and the benchmarks' per-thread CPU grouping."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from serving.threads import LANE, MONITOR, cpu_by_thread, name_native_thread, thread_cpu


def _name(tid: int) -> str:
    return thread_cpu([os.getpid()])[(os.getpid(), tid)][0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="native thread names are read from /proc (Linux)")
def test_a_thread_names_itself_once_and_long_names_are_cut():
    seen: dict[str, str | None] = {}

    def work() -> None:
        tid = threading.get_native_id()
        name_native_thread("shipyard-a-rather-long-name")
        seen["name"] = _name(tid)
        name_native_thread("shipyard-a-rather-long-name")  # the second call is a no-op
        seen["again"] = _name(tid)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen["name"] == seen["again"] == "shipyard-a-rath"  # 15 bytes, as Linux keeps them
    assert _name(threading.get_native_id()) != "shipyard-a-rath"  # only the calling thread was renamed


def test_cpu_is_grouped_by_process_and_thread_name():
    before = {(10, 10): ("python", 1.0), (10, 11): (LANE, 2.0), (10, 12): (LANE, 0.0),
              (10, 13): (MONITOR, 0.5), (10, 14): ("python", 0.0), (20, 20): ("bentoml", 3.0)}
    after = {(10, 10): ("python", 2.5), (10, 11): (LANE, 4.0), (10, 12): (LANE, 2.5),
             (10, 13): (MONITOR, 1.0), (10, 14): ("python", 0.25), (10, 15): ("python", 0.25),
             (20, 20): ("bentoml", 3.5)}
    assert cpu_by_thread(before, after) == {
        "event loop": 1.5, "inference lanes": 4.5, "monitor": 0.5, "other threads": 0.5, "other processes": 0.5
    }


def test_thread_cpu_reads_this_process():
    snap = thread_cpu([os.getpid()])
    assert (os.getpid(), os.getpid()) in snap
    assert all(seconds >= 0 for _, seconds in snap.values())
