"""Feedback survives a server restart: a real ``bentoml serve`` answers predictions, is stopped, and a new one on
the same feedback store takes their labels; the accuracy counts them and ``shipyard_live_accuracy`` starts where
the first server left it. The estimated accuracy is on ``/metrics`` from the start and set after a full window.
"""

from __future__ import annotations

import math
import time

import httpx
import pytest
from serving_support import running_server

from serving.config import MonitorConfig

pytestmark = pytest.mark.network

WINDOW = 10


def metric(base: str, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and not s.labels:
                return s.value
    return None


def settled(base: str) -> dict:
    """``/drift`` once the monitor has processed (and stored) every prediction so far."""
    deadline = time.monotonic() + 30
    while True:
        report = httpx.get(base + "/drift", timeout=30).json()
        if report["pending"] == 0 or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def test_labels_sent_after_a_restart_count_and_accuracy_carries_over(served, images, tmp_path):
    store = tmp_path / "feedback.sqlite3"
    settings = {"monitor": MonitorConfig(window=WINDOW, feedback_store=str(store), log_dir=str(tmp_path / "logs"))}
    picks = [0, 1, 6, 7, 12, 13, 2, 8, 14, 3, 9, 15]  # two of each class first, then more
    with running_server(served.tag, tmp_path / "first.log", **settings) as server:
        base = server.url
        assert math.isnan(metric(base, "shipyard_estimated_accuracy"))  # no full window yet
        answers = [
            httpx.post(base + "/classify", files={"image": ("d.png", images.png[i], "image/png")}, timeout=30).json()
            for i in picks
        ]
        ids = [a["request_id"] for a in answers]
        truth = [served.labels[images.labels[i]] for i in picks]
        early = [httpx.post(base + "/feedback", json={"request_id": r, "label": t}, timeout=30).json()
                 for r, t in zip(ids[:3], truth[:3], strict=True)]  # fmt: skip
        assert [e["details"]["feedback_count"] for e in early] == [1, 2, 3]
        report = settled(base)
        before = metric(base, "shipyard_live_accuracy")
        assert before == early[-1]["details"]["recent_accuracy"]
        estimate = metric(base, "shipyard_estimated_accuracy")
        assert 0.5 < estimate <= 1.0 and report["estimated_accuracy"]["value"] == pytest.approx(estimate)

    with running_server(served.tag, tmp_path / "second.log", **settings) as server:
        base = server.url
        assert metric(base, "shipyard_live_accuracy") == before  # the gauge starts where the last server left it
        late = [httpx.post(base + "/feedback", json={"request_id": r, "label": t}, timeout=30) for r, t in
                zip(ids[3:], truth[3:], strict=True)]  # fmt: skip
        assert [r.status_code for r in late] == [200] * len(late), [r.text for r in late]
        details = [r.json()["details"] for r in late]
        assert [d["feedback_count"] for d in details] == list(range(4, len(ids) + 1))
        correct = sum(a["predictions"][0]["label"] == t for a, t in zip(answers, truth, strict=True))
        assert details[-1]["correct_count"] == correct and details[-1]["model"] == served.tag
        again = httpx.post(base + "/feedback", json={"request_id": ids[0], "label": truth[0]}, timeout=30)
        assert again.status_code == 409
        summary = settled(base)["feedback"]
        assert summary["count"] == len(ids) and summary["store"] == f"file: {store}"
        assert summary["accuracy"] == pytest.approx(correct / len(ids))
        assert metric(base, "shipyard_live_accuracy") == details[-1]["recent_accuracy"]  # the last WINDOW labels
