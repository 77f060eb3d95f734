"""Model lifecycle: aliases in the registry (promote, rollback, history, bad input), a server that follows an alias
(in process: switches, a failed load keeps the old version), and a shadow candidate with live agreement."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from serving_support import SERVED_FILE, asgi_client

from edge.errors import IntegrityError, PackageError

NAME = "serving-tiny"


def _version(served, tmp_path: Path, version: str, *, failed_gate: bool = False) -> str:
    """A copy of the served package registered as ``serving-tiny:<version>``; its tag."""
    from edge.manifest import read_manifest, write_manifest
    from training.registry import register

    pkg = tmp_path / version
    shutil.copytree(served.package, pkg)
    manifest = read_manifest(pkg)
    manifest.version = version
    if failed_gate:
        for key in ("fp32.tflite", SERVED_FILE):
            manifest.variants[key].status = "failed_gate"
            manifest.variants[key].reason = "agreement 0.41 < 0.98 (test)"
    write_manifest(pkg, manifest)
    return register(pkg)


@pytest.fixture(scope="module")
def versions(served, tmp_path_factory) -> dict[str, str]:
    """Three more versions of the served model: two good ones and one whose default variant failed its gate."""
    folder = tmp_path_factory.mktemp("versions")
    return {
        "v2": _version(served, folder, "life-v2"),
        "v3": _version(served, folder, "life-v3"),
        "gate": _version(served, folder, "life-gate", failed_gate=True),
    }


def test_promote_rollback_history_and_list(served, versions, capsys):
    import shipyard
    from shipyard.cli import main

    shipyard.promote(served.tag, "staging")
    shipyard.promote(versions["v2"], "staging")
    entry = shipyard.promote(versions["v3"], "staging")
    assert entry["version"] == "life-v3" and entry["stack"][-3:] == ["v1", "life-v2", "life-v3"]
    assert shipyard.rollback(NAME, "staging")["version"] == "life-v2"
    entry = shipyard.rollback(NAME, "staging")
    assert entry["version"] == "v1" and [h["by"] for h in entry["history"]][-2:] == ["rollback", "rollback"]
    with pytest.raises(PackageError, match="no earlier version"):
        shipyard.rollback(NAME, "staging")  # rollback with no history left: one line

    assert main(["models", "list", NAME]) == 0
    out = capsys.readouterr().out
    assert "staging" in out and "rollback to" in out and f"{NAME}:v1" in out
    assert main(["models", "list", NAME, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert next(r for r in rows if r["tag"] == served.tag)["aliases"].keys() == {"staging"}


def test_bad_input_is_one_line(served, versions, tmp_path):
    import bentoml

    import shipyard
    from serving.aliases import AliasStore
    from serving.settings import alias_tag

    with pytest.raises(PackageError, match="has no alias 'nope'"):
        alias_tag(NAME, "nope")
    with pytest.raises(PackageError, match="has no alias 'nope'"):
        shipyard.rollback(NAME, "nope")
    with pytest.raises(PackageError, match="bad alias"):
        shipyard.promote(served.tag, "Not An Alias")
    with pytest.raises(PackageError, match=r"failed_gate.*--force"):
        shipyard.promote(versions["gate"], "gated")
    assert shipyard.promote(versions["gate"], "gated", force=True)["version"] == "life-gate"

    # an alias whose version was deleted from the store
    gone = _version(served, tmp_path, "life-gone")
    shipyard.promote(gone, "doomed")
    bentoml.models.delete(gone)
    with pytest.raises(PackageError, match=r"not in the model store \(deleted\?\)"):
        alias_tag(NAME, "doomed")

    # a package changed in the store after registration
    tampered = _version(served, tmp_path, "life-tampered")
    path = Path(bentoml.models.get(tampered).path) / "variants" / "model.onnx"
    path.write_bytes(path.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(IntegrityError):
        shipyard.promote(tampered, "production-x")
    assert "production-x" not in AliasStore().aliases(NAME)


def test_racing_promotes_are_serialized(served, versions):
    import shipyard
    from serving.aliases import AliasStore

    tags = [served.tag, versions["v2"], versions["v3"]] * 4
    errors: list[BaseException] = []

    def promote(tag: str) -> None:
        try:
            shipyard.promote(tag, "race")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(t,)) for t in tags]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    entry = AliasStore().aliases(NAME)["race"]
    # every promote happened, one at a time: the history holds all of them and the target is the last one
    assert len(entry["history"]) == len(tags)
    assert entry["version"] == entry["history"][-1]["version"]
    assert sorted(entry["stack"]) == sorted({"v1", "life-v2", "life-v3"})


def _metrics() -> str:
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY).decode()


def _classified_by(client, images) -> str:
    resp = client.post("/classify", files={"image": ("x.png", images.png[0], "image/png")})
    assert resp.status_code == 200, resp.text
    return resp.json()["model"]


def _wait_for(client, images, tag: str, timeout: float = 20.0) -> float:
    started = time.monotonic()
    while _classified_by(client, images) != tag:
        assert time.monotonic() - started < timeout, f"still not serving {tag}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_the_server_follows_its_alias_and_keeps_the_old_version_on_a_failed_load(served, versions, images, tmp_path):
    import bentoml

    import shipyard
    from serving.aliases import AliasStore

    shipyard.promote(served.tag, "follow")
    with asgi_client(NAME, alias="follow", alias_poll_s=0.2) as client:
        assert _classified_by(client, images) == served.tag
        shipyard.promote(versions["v2"], "follow")
        assert _wait_for(client, images, versions["v2"]) < 5
        meta = client.get("/metadata").json()
        assert meta["model"] == versions["v2"]
        assert meta["serving"]["lifecycle"]["previous"] == served.tag and meta["serving"]["lifecycle"]["swaps"] == 1
        shipyard.rollback(NAME, "follow")
        _wait_for(client, images, served.tag)

        # a version that cannot load (its file changed after registration): the old one keeps serving
        broken = _version(served, tmp_path, "life-broken")
        path = Path(bentoml.models.get(broken).path) / "variants" / SERVED_FILE
        path.write_bytes(b"not a model")
        AliasStore().move(NAME, "follow", "life-broken")  # bypasses promote's checks, as a hand edit would
        deadline = time.monotonic() + 20
        while client.get("/metadata").json()["serving"]["lifecycle"]["last_failure"] is None:
            assert time.monotonic() < deadline, "the failed load was never reported"
            time.sleep(0.2)
        failure = client.get("/metadata").json()["serving"]["lifecycle"]["last_failure"]
        assert failure["tag"] == broken and "sha256" in failure["reason"].lower(), failure
        assert _classified_by(client, images) == served.tag
        metrics = _metrics()
        assert "shipyard_model_load_failures_total 1.0" in metrics and "shipyard_model_swaps_total 2.0" in metrics


def test_a_shadow_candidate_reports_agreement_and_scores_feedback(served, versions, images):
    import shipyard

    shipyard.promote(served.tag, "prod-s")
    shipyard.promote(versions["v2"], "cand-s")
    with asgi_client(NAME, alias="prod-s", shadow="cand-s", shadow_window=10, alias_poll_s=0.2) as client:
        ids = []
        for i, png in enumerate(images.png):
            resp = client.post("/classify", files={"image": ("x.png", png, "image/png")})
            assert resp.status_code == 200 and resp.json()["model"] == served.tag
            ids.append((resp.json()["request_id"], images.labels[i]))
        deadline = time.monotonic() + 20
        while (client.get("/shadow").json()["cumulative"]["images"] or 0) < len(images.png):
            assert time.monotonic() < deadline, client.get("/shadow").json()
            time.sleep(0.1)
        report = client.get("/shadow").json()
        assert report["candidate"] == versions["v2"] and report["cumulative"]["agreement"] == 1.0
        assert report["cumulative"]["max_probability_difference"] < 1e-4
        assert report["window"]["images"] >= 10 and set(report["cumulative"]["latency_ms"]) == {"primary", "candidate"}
        label = served.labels[ids[0][1]]
        answer = client.post("/feedback", json={"request_id": ids[0][0], "label": label}).json()
        assert answer["details"]["shadow"]["candidate"]["correct"] == answer["details"]["shadow"]["primary"]["correct"]
        labelled = client.get("/shadow").json()["labelled"]
        assert labelled["candidate"]["labelled"] == 1, labelled
        assert answer["details"]["shadow"]["candidate"]["model"] == versions["v2"]
        metrics = _metrics()
        for name in ("shipyard_shadow_agreement{scope=\"cumulative\"} 1.0", "shipyard_shadow_mirrored_total",
                     "shipyard_shadow_drift_score", "shipyard_shadow_latency_seconds_bucket"):
            assert name in metrics, name
    # The candidate's labelled accuracy lives in the feedback store: a restarted server still reports it.
    with asgi_client(NAME, alias="prod-s", shadow="cand-s", shadow_window=10, alias_poll_s=0.2) as client:
        assert client.get("/shadow").json()["labelled"] == labelled


def _shadow_workers() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "serving.shadow_worker" in " ".join(p.cmdline())]


def test_the_shadow_runs_apart_at_idle_priority_and_its_death_leaves_the_primary_serving(served, versions, images):
    import os

    import shipyard

    shipyard.promote(served.tag, "prod-d")
    shipyard.promote(versions["v2"], "cand-d")
    png = ("x.png", images.png[0], "image/png")
    with asgi_client(NAME, alias="prod-d", shadow="cand-d", alias_poll_s=0.2) as client:
        workers = _shadow_workers()
        assert len(workers) == 1, workers
        assert os.sched_getscheduler(workers[0].pid) == os.SCHED_IDLE  # only the CPU the primary leaves idle
        workers[0].kill()
        workers[0].wait(10)
        deadline = time.monotonic() + 20
        while client.get("/shadow").json()["failed"] is None:
            assert client.post("/classify", files={"image": png}).status_code == 200
            assert time.monotonic() < deadline, "the shadow's death was never reported"
            time.sleep(0.2)
        assert "process ended" in client.get("/shadow").json()["failed"]
        resp = client.post("/classify", files={"image": png})
        assert resp.status_code == 200 and resp.json()["model"] == served.tag
    assert _shadow_workers() == []


def test_a_shadow_that_cannot_load_is_reported_and_the_primary_serves(served, versions, images, tmp_path):
    import bentoml

    import shipyard
    from serving.aliases import AliasStore

    shipyard.promote(served.tag, "prod-t")
    tampered = _version(served, tmp_path, "life-shadow-tampered")
    path = Path(bentoml.models.get(tampered).path) / "variants" / SERVED_FILE
    path.write_bytes(path.read_bytes()[:-64])
    AliasStore().move(NAME, "cand-t", "life-shadow-tampered")  # bypasses promote's checks, as a hand edit would
    with asgi_client(NAME, alias="prod-t", shadow="cand-t") as client:
        report = client.get("/shadow").json()
        assert report["enabled"] is False and "'cand-t' did not start" in report["reason"], report
        assert "sha256" in report["reason"].lower(), report
        resp = client.post("/classify", files={"image": ("x.png", images.png[0], "image/png")})
        assert resp.status_code == 200 and resp.json()["model"] == served.tag
    assert _shadow_workers() == []


def test_a_shadow_of_the_served_version_itself_leaves_feedback_working(served, images):
    import shipyard

    shipyard.promote(served.tag, "prod-same")
    shipyard.promote(served.tag, "cand-same")  # right after a promote both aliases name one version
    png = ("x.png", images.png[0], "image/png")
    with asgi_client(NAME, alias="prod-same", shadow="cand-same") as client:
        rid = client.post("/classify", files={"image": png}).json()["request_id"]
        deadline = time.monotonic() + 20
        while (client.get("/shadow").json()["cumulative"]["images"] or 0) < 1:
            assert time.monotonic() < deadline, client.get("/shadow").json()
            time.sleep(0.1)
        resp = client.post("/feedback", json={"request_id": rid, "label": served.labels[images.labels[0]]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["details"]["model"] == served.tag and resp.json()["details"]["shadow"] is None
        assert client.get("/shadow").json()["cumulative"]["agreement"] == 1.0


def test_the_shadow_process_rests_to_stay_under_its_cpu_cap():
    from multiprocessing import Pipe

    from serving.config import ServeConfig
    from serving.shadow_worker import serve

    class Busy:  # a candidate whose every batch costs 30 ms of CPU
        config = ServeConfig(shadow_cpu=0.25)

        def mirror(self, *args):
            start = time.process_time()
            while time.process_time() - start < 0.03:
                pass
            return "m:v", ["a"], None, 0.03

        def state(self):
            return {"tag": "m:v"}

    ours, theirs = Pipe()
    worker = threading.Thread(target=serve, args=(theirs, Busy()), daemon=True)
    worker.start()
    started = time.perf_counter()
    for _ in range(3):
        ours.send(("mirror", None, [], []))
        assert ours.recv()[0] == "result"
    ours.send(("close",))
    worker.join(5)
    # 3 batches of 30 ms CPU at a quarter of a core: the two rests between them take at least 2 x 90 ms
    elapsed = time.perf_counter() - started
    assert elapsed >= 0.03 * 3 + 2 * 0.09 * 0.9, elapsed
    with pytest.raises(Exception, match="greater than 0"):
        ServeConfig(shadow_cpu=0)
