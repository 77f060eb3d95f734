"""The service as it runs: ``bentoml serve serving.service:Shipyard`` on 127.0.0.1, called by
``bentoml.SyncHTTPClient`` and by raw HTTP (httpx). Bounded request counts and durations; every server
is stopped, with all its processes, when its test ends."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving_support import SERVED_FILE, assert_error, decode_all, reference_probabilities, running_server

pytestmark = pytest.mark.network


def _files(data: bytes, name: str = "digit.png", field: str = "image"):
    return {field: (name, data, "image/png")}


def test_sync_client_calls_every_api(server, served, images, tmp_path):
    import bentoml

    paths = []
    for i, data in enumerate(images.png[:3]):
        paths.append(tmp_path / f"d{i}.png")
        paths[-1].write_bytes(data)
    with bentoml.SyncHTTPClient(server.url, timeout=60) as c:
        assert c.is_ready()
        one = c.classify(image=paths[0], top_k=2)
        assert one["model"] == served.tag and len(one["predictions"]) == 2
        batch = c.classify_batch(images=paths)
        assert batch["count"] == 3 and [r["image"]["format"] for r in batch["results"]] == ["PNG"] * 3
        assert c.metadata()["labels"] == served.labels
        fb = c.feedback(request_id=one["request_id"], label=one["predictions"][0]["label"])
        assert fb["details"]["correct"] is True
        assert "signals" in c.drift()
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image at all")
        with pytest.raises(bentoml.exceptions.BentoMLException) as err:
            c.classify(image=bad)
        assert err.value.error_code == 400 and "not a readable image" in str(err.value)


def test_raw_http_classify_and_health(server, served, images):
    with httpx.Client(base_url=server.url, timeout=30) as h:
        resp = h.post("/classify", files=_files(images.jpeg, "d.jpg"))
        assert resp.status_code == 200, resp.text
        assert resp.json()["variant"] == SERVED_FILE
        assert h.get("/livez").status_code == 200 and h.get("/readyz").status_code == 200
        meta = h.get("/metadata").json()
        assert meta["model"] == served.tag and meta["serving"]["max_request_bytes"] == 1024 * 1024
        assert "signals" in h.get("/drift").json()
        metrics = h.get("/metrics").text
        assert "shipyard_" in metrics and "bentoml_service_request_total" in metrics


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("corrupt", 400),
        ("empty", 400),
        ("gif", 415),
        ("bomb", 413),
        ("json", 415),
        ("missing", 400),
        ("pickle", 415),
        ("too_big", 413),
    ],
)
def test_raw_http_bad_input_gets_4xx_json(server, images, kind, status):
    with httpx.Client(base_url=server.url, timeout=30) as h:
        if kind == "json":
            resp = h.post("/classify", json={"image": "x"})
        elif kind == "missing":
            resp = h.post("/classify", files=_files(images.png[0], field="file"))
        elif kind == "pickle":
            resp = h.post(
                "/classify", content=b"\x80\x05N.", headers={"content-type": "application/vnd.bentoml+pickle"}
            )
        elif kind == "too_big":
            resp = h.post("/classify", files=_files(images.large_png[: 2 * 1024 * 1024]))
        else:
            data = {
                "corrupt": b"\xff\xd8garbage" * 20,
                "empty": b"",
                "gif": images.gif,
                "bomb": images.bomb_png,
            }[kind]
            resp = h.post("/classify", files=_files(data))
    assert_error(resp, status)


def test_concurrent_requests_are_batched_and_match_unbatched(server, served, images):
    blobs = (images.png * 2)[:16]
    expected = reference_probabilities(
        served.package, SERVED_FILE, decode_all(served.package, blobs)
    )
    with httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=32)) as h:
        for b in blobs[:12]:  # BentoML's dispatcher times its first calls one by one
            h.post("/classify", files=_files(b))
        barrier = threading.Barrier(len(blobs))

        def one(i: int) -> dict:
            barrier.wait()
            resp = h.post("/classify", files=_files(blobs[i]), data={"top_k": "3"})
            assert resp.status_code == 200, resp.text
            return resp.json()

        sizes = []
        for _ in range(3):
            with ThreadPoolExecutor(len(blobs)) as pool:
                results = list(pool.map(one, range(len(blobs))))
            sizes += [r["timing"]["batch_size"] for r in results]
            for r, exp in zip(results, expected, strict=True):
                got = np.array([p["probability"] for p in sorted(r["predictions"], key=lambda p: p["index"])])
                np.testing.assert_allclose(got, exp, atol=1e-5)
            if max(sizes) > 1:
                break
    assert max(sizes) > 1, sizes


def test_health_and_metrics_stay_fast_under_load(server, images):
    stop = threading.Event()
    statuses: list[int] = []

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as h:
            while not stop.is_set():
                statuses.append(h.post("/classify", files=_files(images.png[0])).status_code)

    workers = [threading.Thread(target=hammer) for _ in range(12)]
    for w in workers:
        w.start()
    worst: dict[str, float] = {}
    try:
        time.sleep(0.5)
        with httpx.Client(base_url=server.url, timeout=10) as h:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                for path in ("/livez", "/readyz", "/metrics"):
                    t0 = time.perf_counter()
                    assert h.get(path).status_code == 200
                    worst[path] = max(worst.get(path, 0.0), time.perf_counter() - t0)
                time.sleep(0.1)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    assert statuses and set(statuses) == {200}
    assert max(worst.values()) < 1.0, worst


def test_the_server_never_loads_tensorflow(server):
    import psutil

    for pid in server.pids():
        maps = {m.path for m in psutil.Process(pid).memory_maps()}
        assert not any("tensorflow" in p or "tf_keras" in p for p in maps), pid
    assert any("ai_edge_litert" in m.path for pid in server.pids() for m in psutil.Process(pid).memory_maps())


def test_overload_gets_429_and_slow_requests_504(served, images, tmp_path):
    """A tight server: 2 requests at a time, 1.5 s timeout; big uploads keep it busy. Then a 50 ms timeout."""
    big = images.large_png
    with running_server(served.tag, tmp_path / "tight.log", max_concurrency=2, timeout_s=1.5) as srv:

        def post(_: int) -> httpx.Response:
            with httpx.Client(base_url=srv.url, timeout=30) as h:
                return h.post("/classify", files=_files(big, "big.png"))

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, i) for i in range(8)]
            with httpx.Client(base_url=srv.url, timeout=5) as h:
                live = h.get("/livez").status_code  # health checks bypass the concurrency limit
            responses = [f.result() for f in futures]
        codes = sorted(r.status_code for r in responses)
        assert live == 200
        assert 429 in codes, codes
        for r in responses:
            if r.status_code == 429:
                assert_error(r, 429, "Too many requests")
        assert all(c in (200, 429, 504) for c in codes), codes

    with (
        running_server(served.tag, tmp_path / "slow.log", timeout_s=0.05) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as h,
    ):
        assert_error(h.post("/classify", files=_files(big, "big.png")), 504, "seconds")
        assert h.post("/classify", files=_files(images.png[0])).status_code == 200


def test_model_service_mode_batches_in_its_own_process(served, images, tmp_path):
    blobs = images.png[:8]
    expected = reference_probabilities(
        served.package, SERVED_FILE, decode_all(served.package, blobs)
    )
    with running_server(served.tag, tmp_path / "remote.log", model_service=True) as srv:
        assert len(srv.pids()) >= 3  # the arbiter, the API worker and the model service
        with httpx.Client(base_url=srv.url, timeout=60) as h:
            assert h.get("/metadata").json()["serving"]["model_service"] is True
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda b: h.post("/classify", files=_files(b)).json(), blobs))
            assert_error(h.post("/classify", files=_files(b"junk" * 9)), 400)
            metrics = h.get("/metrics").text
    for r, exp in zip(results, expected, strict=True):
        got = np.array([p["probability"] for p in sorted(r["predictions"], key=lambda p: p["index"])])
        np.testing.assert_allclose(got, exp, atol=1e-5)
    assert "bentoml_service_adaptive_batch_size_count{" in metrics


def test_shipyard_serve_starts_and_stops_the_service(served, images, tmp_path):
    import signal
    import sys

    import psutil

    from serving.config import ServeConfig
    from serving.process import ServerProcess, free_port

    port = free_port()
    shipyard = Path(sys.executable).parent / "shipyard"
    cmd = [
        str(shipyard),
        "serve",
        served.tag,
        "--port",
        str(port),
        "--set",
        "serve.top_k=1",
        "--variant",
        "int8.tflite",
    ]
    server = ServerProcess(ServeConfig(port=port), tmp_path / "cli.log", command=cmd).start()
    try:
        server.wait_ready()
        body = httpx.post(server.url + "/classify", files=_files(images.png[0]), timeout=30).json()
        assert len(body["predictions"]) == 1 and body["variant"] == "int8.tflite"  # the settings reached it
        assert f"serving {served.tag}" in server.output()
        pids = server.pids()
        assert len(pids) >= 3  # shipyard, bentoml's arbiter, the API worker
        server.proc.send_signal(signal.SIGTERM)  # to shipyard alone: it must stop the server it started
        server.proc.wait(timeout=60)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            alive = [
                p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
            ]
            if not alive:
                break
            time.sleep(0.2)
        assert not alive, alive
    finally:
        server.stop()


def test_the_work_threads_carry_native_names_that_split_the_cpu(server, images):
    """While it answers requests the API worker's inference lanes and monitor carry their names at the operating-
    system level, and the serving benchmark's per-thread accounting attributes CPU time to each of them (counted
    in clock ticks: the requests go on until every group has some, for at most 30 s)."""
    from serving.threads import LANE, MONITOR, cpu_by_thread, thread_cpu

    wanted = ("event loop", "inference lanes", "monitor")
    before = thread_cpu(server.pids())
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while True:
            for data in images.png[:8]:
                r = client.post("/classify", files=_files(data))
                assert r.status_code == 200, r.text
            after = thread_cpu(server.pids())
            groups = cpu_by_thread(before, after)
            if all(groups.get(g, 0) > 0 for g in wanted) or time.monotonic() > deadline:
                break
    names = {name for name, _ in after.values()}
    assert {LANE, MONITOR} <= names, names
    assert all(groups.get(g, 0) > 0 for g in wanted), groups
