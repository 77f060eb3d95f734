"""The service in process (``Shipyard.to_asgi()`` behind Starlette's TestClient): the APIs, the variants,
adaptive batching, bad input and overload. The model is real (the tiny trained package), never mocked."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving_support import SERVED_FILE, asgi_client, assert_error, decode_all, reference_probabilities

from edge.runners import default_threads

RESULT_FIELDS = {"request_id", "model", "variant", "predictions", "latency_ms", "image", "timing"}


def _upload(data: bytes, name: str = "digit.png", ctype: str = "image/png", field: str = "image"):
    return {field: (name, data, ctype)}


# ------------------------------------------------------------------------------------------- the APIs


def test_classify_returns_ranked_labels_of_the_served_model(client, served, images):
    resp = client.post("/classify", files=_upload(images.png[0]))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == RESULT_FIELDS
    assert body["model"] == served.tag and body["variant"] == SERVED_FILE
    assert len(body["request_id"]) == 32 and body["latency_ms"] > 0
    preds = body["predictions"]
    assert len(preds) == 3  # default top_k 5, clipped to the 3 classes
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    assert {p["label"] for p in preds} == set(served.labels)
    assert all(served.labels[p["index"]] == p["label"] for p in preds)
    assert body["image"] == {"width": 32, "height": 32, "format": "PNG"}
    timing = body["timing"]
    assert timing["batch_size"] >= 1 and timing["decode_ms"] > 0 and timing["inference_ms"] > 0

    expected = reference_probabilities(
        served.package, SERVED_FILE, decode_all(served.package, images.png[:1])
    )[0]
    got = np.array([p["probability"] for p in sorted(preds, key=lambda p: p["index"])])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_classify_is_accurate_on_real_digits(client, images, served):
    correct = 0
    for data, label in zip(images.png, images.labels, strict=True):
        top = client.post("/classify", files=_upload(data)).json()["predictions"][0]
        correct += top["label"] == served.labels[label]
    assert correct >= 0.8 * len(images.png)


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "bmp", "rgba_png"])
def test_every_allowed_format_is_classified(client, images, fmt):
    resp = client.post("/classify", files=_upload(getattr(images, fmt), name=f"digit.{fmt}"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["image"]["format"] in {"JPEG", "WEBP", "BMP", "PNG"}


def test_top_k_is_honoured_and_checked(client, images):
    one = client.post("/classify", files=_upload(images.png[0]), data={"top_k": "1"}).json()
    assert len(one["predictions"]) == 1
    assert_error(client.post("/classify", files=_upload(images.png[0]), data={"top_k": "0"}), 400, "top_k")
    assert_error(client.post("/classify", files=_upload(images.png[0]), data={"top_k": "many"}), 400, "top_k")


def test_classify_batch_returns_one_result_per_image_in_order(client, images, served):
    blobs = [*images.png[:5], images.jpeg]
    files = [("images", (f"img{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    resp = client.post("/classify_batch", files=files, data={"top_k": "3"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == len(blobs) == len(body["results"])
    assert body["model"] == served.tag
    assert len({r["request_id"] for r in body["results"]}) == len(blobs)
    singles = [client.post("/classify", files=_upload(b), data={"top_k": "3"}).json() for b in blobs]
    for batched, single in zip(body["results"], singles, strict=True):
        assert set(batched) == RESULT_FIELDS
        assert [p["label"] for p in batched["predictions"]] == [p["label"] for p in single["predictions"]]
        np.testing.assert_allclose(
            [p["probability"] for p in batched["predictions"]],
            [p["probability"] for p in single["predictions"]],
            atol=1e-5,
        )


@pytest.mark.parametrize("method", ["get", "post"])
def test_metadata_describes_model_contract_variant_and_metrics(client, served, method):
    resp = getattr(client, method)("/metadata")
    assert resp.status_code == 200, resp.text
    meta = resp.json()
    assert meta["model"] == served.tag and meta["labels"] == served.labels
    assert meta["input"]["height"] == meta["input"]["width"] == 32 and meta["input"]["dtype"] == "uint8"
    assert meta["variant"] == SERVED_FILE and meta["embedding"] is True
    assert "accuracy" in meta["metrics"] and meta["variant_metrics"]
    assert meta["serving"]["batching"] is True and meta["serving"]["max_batch_size"] >= 2
    assert meta["serving"]["warmup_ms"] > 0
    # two single-threaded batches per usable core at once (serving.batching.inference_layout)
    assert (meta["serving"]["lanes"], meta["serving"]["threads"]) == (2 * default_threads(), 1)


def test_feedback_feeds_live_accuracy(client, images, served):
    rid = client.post("/classify", files=_upload(images.png[0])).json()["request_id"]
    resp = client.post("/feedback", json={"request_id": rid, "label": served.labels[images.labels[0]]})
    assert resp.status_code == 200, resp.text
    details = resp.json()["details"]
    assert details["feedback_count"] >= 1 and 0 <= details["accuracy"] <= 1
    assert_error(
        client.post("/feedback", json={"request_id": rid, "label": served.labels[0]}), 409, "already"
    )
    assert_error(
        client.post("/feedback", json={"request_id": "f" * 32, "label": served.labels[0]}), 404, "unknown"
    )
    rid2 = client.post("/classify", files=_upload(images.png[1])).json()["request_id"]
    assert_error(client.post("/feedback", json={"request_id": rid2, "label": "giraffe"}), 400, "giraffe")
    assert_error(client.post("/feedback", json={"request_id": rid2}), 400, "label", "required")
    assert_error(
        client.post("/feedback", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "JSON",
    )


@pytest.mark.parametrize("method", ["get", "post"])
def test_drift_reports_json_statistics(client, method):
    resp = getattr(client, method)("/drift")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body, dict) and "signals" in body


def test_health_endpoints(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


# ----------------------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    ("variant", "embeddings", "served_as"),
    [
        ("model.onnx", False, "model.onnx"),
        ("model.onnx", True, "model_embedding.onnx"),
        ("fp32.tflite", False, "fp32.tflite"),
        ("fp32.tflite", True, "fp32_embedding.tflite"),
        ("int8.tflite", True, "int8.tflite"),
    ],
)
def test_each_variant_serves_what_its_runner_computes(served, images, variant, embeddings, served_as):
    with asgi_client(served.tag, variant=variant, embeddings=embeddings) as c:
        assert c.get("/metadata").json()["variant"] == served_as
        body = c.post("/classify", files=_upload(images.png[3]), data={"top_k": "3"}).json()
    assert body["variant"] == served_as
    expected = reference_probabilities(
        served.package, served_as, decode_all(served.package, images.png[3:4])
    )[0]
    got = np.array([p["probability"] for p in sorted(body["predictions"], key=lambda p: p["index"])])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_unknown_variant_fails_at_startup_naming_the_runnable_ones(served):
    with pytest.raises(Exception, match=r"fp32\.tflite"), asgi_client(served.tag, variant="nope.tflite"):
        pass


def test_unknown_model_fails_at_import_naming_the_store(served):
    with pytest.raises(Exception, match="not in the BentoML model store"), asgi_client("no-such-model:v9"):
        pass


def test_no_model_fails_at_startup_saying_how_to_name_one():
    with pytest.raises(Exception, match="SHIPYARD_MODEL"), asgi_client(None):
        pass


def test_a_tampered_variant_is_refused(served, tmp_path):
    import shutil

    from edge.manifest import read_manifest, write_manifest
    from training.registry import package_path, register

    pkg = tmp_path / "pkg"
    shutil.copytree(served.package, pkg)
    manifest = read_manifest(pkg)
    manifest.name = "serving-tampered"
    write_manifest(pkg, manifest)
    tag = register(pkg)
    stored = package_path(tag) / "variants" / SERVED_FILE
    data = bytearray(stored.read_bytes())
    data[-20] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256"), asgi_client(tag):
        pass


# ------------------------------------------------------------------------------------------ batching


def test_concurrent_requests_are_batched_and_equal_unbatched_results(served, images):
    blobs = (images.png * 3)[:16]
    expected = reference_probabilities(
        served.package, SERVED_FILE, decode_all(served.package, blobs)
    )
    with asgi_client(served.tag, max_batch_size=8) as c:
        for b in blobs[:12]:  # BentoML's dispatcher times its first calls one by one before batching
            c.post("/classify", files=_upload(b))
        barrier = threading.Barrier(len(blobs))

        def one(i: int) -> dict:
            barrier.wait()
            return c.post("/classify", files=_upload(blobs[i]), data={"top_k": "3"}).json()

        with ThreadPoolExecutor(len(blobs)) as pool:
            results = list(pool.map(one, range(len(blobs))))
    sizes = [r["timing"]["batch_size"] for r in results]
    assert max(sizes) > 1, sizes  # concurrent requests shared an inference call
    assert max(sizes) <= 8
    for r, exp in zip(results, expected, strict=True):
        got = np.array([p["probability"] for p in sorted(r["predictions"], key=lambda p: p["index"])])
        np.testing.assert_allclose(got, exp, atol=1e-5)


def _watched_runners(monkeypatch, fail_at: int | None = None) -> list:
    """Make serving.inference open runners whose runs are recorded as (runner, start, end); the ``fail_at``-th
    opening (1-based) raises."""
    import serving.inference as inference

    opened, real = [], inference.open_variant_runner

    def watched(*args, **kwargs):
        if fail_at is not None and len(opened) + 1 == fail_at:
            raise inference.PackageError("test: this copy cannot be opened")
        result = real(*args, **kwargs)
        runner, run = result[0], result[0].run

        def timed(x):
            started = time.perf_counter()
            try:
                return run(x)
            finally:
                runner.spans.append((started, time.perf_counter()))

        runner.spans, runner.run = [], timed
        opened.append(runner)
        return result

    monkeypatch.setattr(inference, "open_variant_runner", watched)
    return opened


@pytest.mark.parametrize(("variant", "copies"), [(SERVED_FILE, 2), ("model_embedding.onnx", 1)])
def test_lanes_run_batches_at_once_on_a_copy_each_where_the_runtime_needs_one(
    served, images, monkeypatch, variant, copies
):
    from serving.inference import Predictor, unpack

    pixels = decode_all(served.package, (images.png * 2)[:6])
    expected = reference_probabilities(served.package, variant, pixels)
    opened = _watched_runners(monkeypatch)
    predictor = Predictor(served.package, variant, threads=1, lanes=2)
    try:
        # a TFLite interpreter runs one call at a time: one copy per lane, each warmed up; ONNX shares its session
        assert len(opened) == copies and all(r.spans for r in opened)
        barrier = threading.Barrier(4)

        def batch(k: int) -> np.ndarray:
            barrier.wait()
            rows = unpack(predictor.predict(pixels[k % 2 :: 2]), predictor.num_classes)
            return np.stack([r.probabilities for r in rows])

        with ThreadPoolExecutor(4) as pool:  # more callers than lanes: they wait for a free copy
            results = list(pool.map(batch, range(4)))
    finally:
        predictor.close()
    for k, got in enumerate(results):  # batches of 3 (TFLite: image by image) equal single images
        np.testing.assert_allclose(got, expected[k % 2 :: 2], atol=1e-5)
    if copies > 1:  # no copy ever ran two calls at once
        for runner in opened:
            spans = sorted(runner.spans)
            assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans)), spans
    with pytest.raises(RuntimeError, match="closed"):
        predictor.predict(pixels[:1])


def test_closing_during_a_batch_releases_its_copy_after_it_and_fails_the_waiting_callers(served, images, monkeypatch):
    from serving.inference import Predictor

    pixels = decode_all(served.package, images.png[:1])
    opened = _watched_runners(monkeypatch)
    predictor = Predictor(served.package, SERVED_FILE, threads=1, lanes=1)
    runner, run, started, release = opened[0], opened[0].run, threading.Event(), threading.Event()

    def held(x):
        started.set()
        release.wait(10)
        return run(x)

    runner.run = held
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(predictor.predict, pixels)
        assert started.wait(10)
        waiting = pool.submit(predictor.predict, pixels)  # no free copy: it waits
        predictor.close()
        assert runner._interp is not None  # the running batch keeps its copy
        release.set()
        assert running.result(10).shape[0] == 1  # the batch that was running finishes
        with pytest.raises(RuntimeError, match="closed"):
            waiting.result(10)  # the waiting caller is told, not left hanging
    assert runner._interp is None  # released once its batch ended


def test_a_copy_that_cannot_be_opened_closes_the_ones_already_open(served, monkeypatch):
    from edge.errors import PackageError
    from serving.inference import Predictor

    opened = _watched_runners(monkeypatch, fail_at=2)
    with pytest.raises(PackageError, match="cannot be opened"):
        Predictor(served.package, SERVED_FILE, threads=1, lanes=2)
    assert len(opened) == 1 and opened[0]._interp is None  # the first copy was released


def test_batching_off_runs_one_request_per_inference(served, images):
    with asgi_client(served.tag, batching=False) as c:
        assert c.get("/metadata").json()["serving"]["batching"] is False
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda b: c.post("/classify", files=_upload(b)).json(), images.png[:6]))
    assert {r["timing"]["batch_size"] for r in results} == {1}


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kind", "status", "words"),
    [
        ("corrupt", 400, ("not a readable image",)),
        ("truncated", 400, ("truncated",)),
        ("empty", 400, ("empty",)),
        ("text", 400, ("not a readable image",)),
        ("gif", 415, ("GIF", "allowed formats")),
        ("bomb", 413, ("pixels", "limit")),
    ],
)
def test_bad_images_get_a_4xx_saying_what_was_wrong(client, images, kind, status, words):
    data = {
        "corrupt": b"\x00\x01garbage" * 50,
        "truncated": images.jpeg[: len(images.jpeg) // 2],
        "empty": b"",
        "text": b"hello, I am not an image\n" * 10,
        "gif": images.gif,
        "bomb": images.bomb_png,
    }[kind]
    started = time.perf_counter()
    resp = client.post("/classify", files=_upload(data, name=f"{kind}.bin"))
    elapsed = time.perf_counter() - started
    message = assert_error(resp, status, *words)
    assert f"{kind}.bin" in message  # names the file
    if kind == "bomb":
        assert elapsed < 2.0  # rejected from the header, never decoded


def test_small_images_decode_on_the_event_loop_and_large_ones_in_a_thread(client, served, images):
    """Up to INLINE_DECODE_PIXELS a request decodes inline (no thread hand-over); above, in a worker
    thread. Both give the runner's own result, and a corrupt large image is still a 400."""
    import io

    from PIL import Image

    module = client.module
    seen: list[str] = []
    original = module.decode_opened

    def spy(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return original(*args, **kwargs)

    small = images.jpeg
    buf = io.BytesIO()
    Image.open(io.BytesIO(images.png[0])).convert("RGB").resize((600, 600)).save(buf, "JPEG", quality=95)
    large = buf.getvalue()
    assert 32 * 32 <= module.INLINE_DECODE_PIXELS < 600 * 600
    module.decode_opened = spy
    try:
        bodies = [client.post("/classify", files=_upload(b, name="x.jpg", ctype="image/jpeg")) for b in (small, large)]
        corrupt = client.post("/classify", files=_upload(large[: len(large) // 2], name="cut.jpg"))
    finally:
        module.decode_opened = original
    assert "AnyIO worker thread" not in seen[0] and "AnyIO worker thread" in seen[1], seen
    assert_error(corrupt, 400, "cut.jpg", "truncated")
    expected = reference_probabilities(served.package, SERVED_FILE, decode_all(served.package, [small, large]))
    for resp, want, size in zip(bodies, expected, (32, 600), strict=True):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["image"]["width"] == size
        got = np.array([p["probability"] for p in sorted(body["predictions"], key=lambda p: p["index"])])
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_bad_image_in_a_batch_names_its_position(client, images):
    files = [
        ("images", ("a.png", images.png[0], "image/png")),
        ("images", ("b.png", b"junk" * 10, "image/png")),
    ]
    assert_error(client.post("/classify_batch", files=files), 400, "images[1]", "b.png")


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("json_body", 415, ("multipart/form-data", "application/json")),
        ("no_content_type", 415, ("multipart/form-data",)),
        ("raw_image", 415, ("multipart/form-data", "image/png")),
        ("pickle", 415, ("pickle",)),
        ("missing_field", 400, ("'image'", "missing")),
        ("text_field", 400, ("not a file", "URLs are not fetched")),
        ("two_images", 400, ("classify_batch",)),
        ("broken_multipart", 400, ("'image'", "missing")),
    ],
)
def test_malformed_requests_get_a_4xx_json_error(client, images, case, status, words):
    post = {
        "json_body": lambda: client.post("/classify", json={"image": "http://169.254.169.254/latest"}),
        "no_content_type": lambda: client.post("/classify", content=images.png[0]),
        "raw_image": lambda: client.post(
            "/classify", content=images.png[0], headers={"content-type": "image/png"}
        ),
        "pickle": lambda: client.post(
            "/classify", content=b"\x80\x05N.", headers={"content-type": "application/vnd.bentoml+pickle"}
        ),
        "missing_field": lambda: client.post("/classify", files=_upload(images.png[0], field="photo")),
        "text_field": lambda: client.post(
            "/classify",
            data={"image": "http://169.254.169.254/latest"},
            files={"other": ("x.txt", b"1", "text/plain")},
        ),
        "two_images": lambda: client.post(
            "/classify", files=[("image", ("a.png", images.png[0], "image/png"))] * 2
        ),
        "broken_multipart": lambda: client.post(
            "/classify",
            content=b"--xx\r\nnonsense",
            headers={"content-type": "multipart/form-data; boundary=xx"},
        ),
    }[case]
    assert_error(post(), status, *words)


def test_pickle_is_refused_on_every_api(client):
    for path in ("/classify_batch", "/feedback", "/metadata", "/drift"):
        resp = client.post(
            path, content=b"\x80\x05N.", headers={"content-type": "application/vnd.bentoml+pickle"}
        )
        assert_error(resp, 415, "pickle")


def test_unknown_routes_and_methods_answer_json(client):
    assert_error(client.get("/nope"), 404, "/nope")
    assert_error(client.get("/classify"), 405, "GET /classify")


def test_body_over_the_cap_is_refused_before_it_is_read(served, images):
    with asgi_client(served.tag, max_request_bytes=64 * 1024, max_batch_images=3) as c:
        big = images.large_png[: 200 * 1024]
        assert_error(c.post("/classify", files=_upload(big)), 413, "over the limit")

        def chunks():  # no Content-Length: the guard counts as it reads
            for _ in range(100):
                yield b"x" * 4096

        resp = c.post(
            "/classify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert_error(resp, 413, "over the limit")
        files = [("images", (f"{i}.png", images.png[i], "image/png")) for i in range(4)]
        assert_error(c.post("/classify_batch", files=files), 413, "more than 3 files", "split them")
        # under the caps everything still works
        assert c.post("/classify", files=_upload(images.png[0])).status_code == 200
        assert_error(
            c.post(
                "/feedback", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"}
            ),
            413,
        )


def test_pixel_cap_is_configurable(served, images):
    with asgi_client(served.tag, max_pixels=32 * 32 - 1) as c:
        assert_error(c.post("/classify", files=_upload(images.png[0])), 413, "1,023")


# ------------------------------------------------------------------------------------------ overload


def test_requests_beyond_the_concurrency_limit_get_429(served, images):
    with asgi_client(served.tag, max_concurrency=1) as c:
        module = c.module
        original = module.decode_opened
        decoding, release = threading.Event(), threading.Event()

        def held(*args, **kwargs):  # the first request holds the only slot until the second is answered
            decoding.set()
            release.wait(60)
            return original(*args, **kwargs)

        module.decode_opened = held
        try:
            with ThreadPoolExecutor(1) as pool:
                slow = pool.submit(
                    lambda: c.post("/classify", files=_upload(images.large_png, name="big.png")).status_code
                )
                assert decoding.wait(60)
                fast_resp = c.post("/classify", files=_upload(images.png[0]))
                livez = c.get("/livez")
                release.set()
                assert slow.result() == 200
        finally:
            release.set()
            module.decode_opened = original
        assert_error(fast_resp, 429, "Too many requests")
        assert livez.status_code == 200  # health checks are never counted


def test_a_request_over_the_timeout_gets_504(served, images):
    # 1 ms: far below what reading, decoding and predicting a large PNG takes, however idle the machine
    with asgi_client(served.tag, timeout_s=0.001) as c:
        assert_error(
            c.post("/classify", files=_upload(images.large_png, name="big.png")), 504, "0.001 seconds"
        )
        assert c.get("/livez").status_code == 200


def test_tracing_is_off_unless_asked_for(served, images):
    """BentoML records spans even when it exports none; Shipyard leaves requests out unless serve.tracing."""
    for tracing in (False, True):
        with asgi_client(served.tag, tracing=tracing) as c:
            assert ("tracing" not in c.module.Shipyard.config) is tracing
            if not tracing:
                assert c.module.Shipyard.config["tracing"] == {"excluded_urls": [".*"]}
            assert c.get("/metadata").json()["serving"]["tracing"] is tracing
            assert c.post("/classify", files=_upload(images.png[0])).status_code == 200


# ------------------------------------------------------------------ the guard's own answers vs BentoML's


def _answers(c, images) -> list[tuple[int, dict, str | None]]:
    """Status, body (ids and timings dropped) and Server header of the same requests, good and bad."""
    two = [("images", ("a.png", images.png[0], "image/png")), ("images", ("b.png", images.png[1], "image/png"))]
    sent = [
        ("/classify", {"files": _upload(images.png[0]), "data": {"top_k": "2"}}),
        ("/classify", {"files": _upload(images.png[1])}),
        ("/classify", {"files": _upload(images.png[0]), "data": {"top_k": "0"}}),
        ("/classify", {"files": _upload(images.png[0], field="file")}),
        ("/classify", {"files": _upload(b"\x00garbage" * 20, name="bad.bin")}),
        ("/classify", {"files": [("image", ("a.png", images.png[0], "image/png"))] * 2}),
        ("/classify_batch", {"files": two, "data": {"top_k": "1"}}),
        ("/classify_batch", {"files": _upload(images.gif, name="x.gif", field="images")}),
    ]
    out = []
    for path, kwargs in sent:
        r = c.post(path, **kwargs)
        body = r.json()
        for result in [body, *body.get("results", [])]:
            for key in ("request_id", "latency_ms", "timing"):
                result.pop(key, None)
        out.append((r.status_code, body, r.headers.get("server")))
    return out


def test_the_guard_answers_classify_itself_and_exactly_as_bentoml_would(served, images):
    """By default the request guard answers /classify and /classify_batch below BentoML's request stack
    (``serving.routing.answer_here``); with tracing on, BentoML's stack answers. Both give the same statuses,
    bodies and Server header, for good requests and bad ones."""
    from serving.routing import guard_options

    with asgi_client(served.tag) as direct:
        rules = guard_options(direct.module.CONFIG, "shipyard", direct.module.Shipyard.inner)["routes"]
        assert rules["/classify"].answer is not None and rules["/classify_batch"].answer is not None
        ours = _answers(direct, images)
        assert direct.module.Shipyard.inner.running is not None
    with asgi_client(served.tag, tracing=True) as bento:
        assert guard_options(bento.module.CONFIG, "shipyard", bento.module.Shipyard.inner)["routes"][
            "/classify"].answer is None
        theirs = _answers(bento, images)
    assert [s for s, _, _ in ours] == [200, 200, 400, 400, 400, 400, 200, 415]
    assert ours == theirs
    assert {server for _, _, server in ours} == {"BentoML Service/shipyard"}
