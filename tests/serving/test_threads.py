"""Native thread names (``serving.threads``) and the benchmarks' per-thread CPU grouping."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from serving.threads import name_native_thread, native_thread_name

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._common import cpu_by_thread, thread_cpu


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="native thread names are read from /proc (Linux)")
def test_a_thread_names_itself_once_and_long_names_are_cut():
    seen: dict[str, str | None] = {}

    def work() -> None:
        name_native_thread("shipyard-a-rather-long-name")
        seen["name"] = native_thread_name()
        seen["tid"] = str(threading.get_native_id())
        name_native_thread("shipyard-a-rather-long-name")  # the second call is a no-op
        seen["again"] = native_thread_name()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen["name"] == seen["again"] == "shipyard-a-rath"  # 15 bytes, as Linux keeps them
    assert native_thread_name() != "shipyard-a-rath"  # only the calling thread was renamed


def test_cpu_is_grouped_by_process_and_thread_name():
    before = {(10, 10): ("python", 1.0), (10, 11): ("shipyard-lane", 2.0), (10, 12): ("shipyard-lane", 0.0),
              (10, 13): ("shipyard-mon", 0.5), (10, 14): ("python", 0.0), (20, 20): ("bentoml", 3.0)}
    after = {(10, 10): ("python", 2.5), (10, 11): ("shipyard-lane", 4.0), (10, 12): ("shipyard-lane", 2.5),
             (10, 13): ("shipyard-mon", 1.0), (10, 14): ("python", 0.25), (10, 15): ("python", 0.25),
             (20, 20): ("bentoml", 3.5)}
    assert cpu_by_thread(before, after) == {
        "event loop": 1.5, "inference lanes": 4.5, "monitor": 0.5, "other threads": 0.5, "other processes": 0.5
    }


def test_thread_cpu_reads_this_process():
    snap = thread_cpu([os.getpid()])
    assert (os.getpid(), os.getpid()) in snap
    assert all(seconds >= 0 for _, seconds in snap.values())
