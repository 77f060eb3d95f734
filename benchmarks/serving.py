"""The Shipyard service against its own limit and against the service a user would otherwise write.

Model: MobileNetV2 at 224 px, random weights, 10 classes, built by Shipyard
(``training.models.build_model(ModelConfig(base="mobilenet_v2", weights="none"), 10, (224, 224))``),
exported to fp32 TFLite (the service's default variant, ``fp32_embedding.tflite``) and to ONNX (the
competent server's model), each with and without the embedding output, checked against Keras, packaged with
reference statistics and registered in a throw-away BentoML model store.
Uploads: 224 px photo-like JPEGs (quality 90).

Four measurements, each in its own process:

1. **limit**: in one process without TensorFlow, what the service does per image with the same runner and
   variant (``serving.inference.Predictor``) and the same decoding (``edge.preprocess``): decode +
   preprocess + infer, in three layouts: one lane with a thread per core, at batch 1 and at the service's
   ``max_batch_size`` plus a short sweep of batch sizes; one single-threaded lane per core running at once;
   and two per core (the service's layout, ``serving.batching.inference_layout``), the last two at batch 1
   and ``max_batch_size``. Images/s and CPU seconds per image (process CPU time). The targets compare with
   the best layout.
2. **service**: ``bentoml serve serving.service:Shipyard`` on 127.0.0.1 with the default ``ServeConfig``,
   under 1, 8 and 32 concurrent clients (keep-alive connections, one request in flight each), batching on
   and off: throughput, p50/p95/p99 latency, errors, the mean batch the server formed, and the server's
   CPU seconds per request (user + system time of every server process, from ``psutil``, over the
   measured window), split by thread from ``/proc`` (the event loop, the inference lanes and the monitor,
   which name themselves through ``serving.threads``; the hand-written server's pool is "other threads").
   Once more at 32 clients with monitoring off, to show what monitoring costs.
3. **naive**: what a user would otherwise write: ``http.server.ThreadingHTTPServer`` that parses the
   upload, decodes it with Pillow and calls Keras ``model.predict`` on each request.
4. **competent**: what a competent engineer writes by hand: Starlette on uvicorn (uvloop, httptools),
   ONNX Runtime with one single-threaded session per core, decode + infer in a thread pool off the event
   loop, no batching, monitoring or hardening. For reference, the same server with a single-threaded LiteRT
   interpreter per core on ``fp32.tflite`` (the runtime the service uses by default).

Targets: the service (every feature on) >= 1.1x the competent server's throughput at 8 and 32 clients with
p95 no worse; at 32 clients >= 0.9x the limit's best throughput; monitoring on >= 0.95x off; server CPU per
request <= 1.15x the limit's CPU per image at the batch size the server formed
(32 clients, batching on, default settings); at 32 clients, throughput >= 5x the naive service; batching
on at least as fast as off; the Open Inference Protocol route (``POST /v2/models/{name}/infer`` with one
binary ``BYTES`` image, on the batching-on server) within 5% of ``/classify`` in throughput and p95 at 1, 8
and 32 clients.

The machine's cores are shared (with the load generator, whose own CPU time is reported, and with
whatever else runs), so the servers are measured in interleaved rounds: all of them run side by side (idle
when it is not their turn), and each client count is split into ``--rounds`` rounds in which every server
takes a turn, in a rotating order, so that changes in the neighbours' load hit them alike. The limit is
measured before and after the servers and averaged. Prints a table and writes
``benchmarks/results/serving.json``.

    .venv/bin/python benchmarks/serving.py                          # 12 s per setting, 4 rounds
    .venv/bin/python benchmarks/serving.py --duration 4 --rounds 2  # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import bench_workdir, cpu_name, make_jpeg  # noqa: E402 - after the path set-up
from edge.files import write_json_atomic  # noqa: E402
from edge.runners import default_threads  # noqa: E402
from serving.process import ServerProcess, free_port  # noqa: E402
from serving.threads import cpu_by_thread, thread_cpu  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZE = 224
CLASSES = 10
NAME, VERSION = "bench-mobilenet-v2", "v1"
CPU_TARGET = 1.15
NAIVE_TARGET = 5.0
#: V2 binary infer's throughput and p95 within this fraction of /classify's.
V2_TARGET = 0.05
#: The service's throughput (every feature on) over the competent hand-written server's, p95 no worse.
COMPETENT_TARGET = 1.1
#: The service's throughput at 32 clients over the in-process limit at its best batch.
LIMIT_TARGET = 0.9
#: Throughput with monitoring on over off (32 clients).
MONITORING_TARGET = 0.95


# ------------------------------------------------------------------------------------------ the package


#: The variants the benchmark package holds: the service's default (fp32 TFLite, with and without the
#: embedding output) and the ONNX ones (the competent server's model, and ``serve.variant=model.onnx``).
PACKAGE_VARIANTS = ("fp32.tflite", "fp32_embedding.tflite", "model.onnx", "model_embedding.onnx")


def build_package(folder: Path, images: list[bytes]) -> Path:
    """Build, check, package and return the MobileNetV2 package directory, ``folder/package`` (TensorFlow runs
    here); one already built there with every variant of :data:`PACKAGE_VARIANTS` is returned as it is."""
    manifest_file = folder / "package" / "manifest.json"
    if manifest_file.is_file() and set(PACKAGE_VARIANTS) <= set(json.loads(manifest_file.read_text())["variants"]):
        return folder / "package"
    print("building the MobileNetV2 package...", flush=True)
    from edge.manifest import InputContract, Manifest, VariantInfo, record_file, record_tree, write_manifest
    from edge.preprocess import decode
    from edge.reference import write_reference
    from edge.runners import open_runner
    from edge.variants import VARIANTS
    from training.config import ModelConfig
    from training.models import build_model, embedding_model
    from training.optimize import QuantizationConfig, convert_to_onnx, convert_to_tflite, onnx_metadata
    from training.package import reference_statistics

    contract = InputContract(height=SIZE, width=SIZE)
    labels = [f"class_{i}" for i in range(CLASSES)]
    model = build_model(ModelConfig(name=NAME, base="mobilenet_v2", weights="none"), CLASSES, (SIZE, SIZE))
    pkg = folder / "package"
    for sub in ("keras", "variants", "reference"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
    model.save(pkg / "keras" / "model.keras")
    meta = onnx_metadata(labels, contract)
    two = embedding_model(model)
    fp32 = QuantizationConfig.for_float32()
    (pkg / "variants" / "fp32.tflite").write_bytes(convert_to_tflite(model, fp32))
    (pkg / "variants" / "fp32_embedding.tflite").write_bytes(convert_to_tflite(two, fp32))
    (pkg / "variants" / "model.onnx").write_bytes(convert_to_onnx(model, metadata=meta))
    (pkg / "variants" / "model_embedding.onnx").write_bytes(convert_to_onnx(two, metadata=meta))

    x = np.stack([decode(b, contract) for b in images])
    reference = np.concatenate([x, x[:, ::-1]])  # mirrored copies: a few more reference rows
    stats, emb = reference_statistics(
        model, reference, np.arange(len(reference)) % CLASSES, labels, [(SIZE, SIZE)] * len(reference)
    )
    write_reference(pkg, stats, emb)

    keras_probs = model.predict(x.astype(np.float32), verbose=0)
    manifest = Manifest(
        name=NAME, version=VERSION, labels=labels, input=contract, base_model={"name": "mobilenet_v2"}
    )
    record_file(pkg, manifest, "keras/model.keras")
    record_tree(pkg, manifest, "reference")
    manifest.variants["keras"] = VariantInfo(file="keras/model.keras", format="keras", status="passed")
    for key in PACKAGE_VARIANTS:
        rel = f"variants/{key}"
        entry = record_file(pkg, manifest, rel)
        runner = open_runner(pkg / rel)
        outputs = runner.run(x)
        probs = outputs.get("probabilities", next(iter(outputs.values())))
        agree = np.allclose(probs, keras_probs, atol=1e-4)
        manifest.variants[key] = VariantInfo(
            file=rel,
            format=VARIANTS[key].format,
            status="passed" if agree else "failed_gate",
            reason=None if agree else "differs from Keras by more than 1e-4",
            sha256=entry.sha256,
            bytes=entry.bytes,
            outputs=list(VARIANTS[key].outputs),
            metrics={"max_abs_diff_keras": float(np.abs(probs - keras_probs).max())},
        )
    write_manifest(pkg, manifest)
    return pkg


def register_package(pkg: Path) -> str:
    from training.registry import register

    return register(pkg)


# --------------------------------------------------------------------------------------------- limit

LIMIT_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    import numpy as np
    from edge.preprocess import decode
    from serving.inference import Predictor
    from serving.config import ServeConfig

    args = json.loads(sys.argv[1])
    cfg = ServeConfig()
    images = [open(p, "rb").read() for p in args["images"]]
    rows = []
    for lanes, threads, batches, seconds in args["layouts"]:
        pred = Predictor(args["package"], cfg.variant, threads=threads, lanes=lanes, embeddings=cfg.embeddings,
                         warmup_batches=tuple(sorted(set(batches))))
        contract = pred.manifest.input
        for batch, secs in zip(batches, seconds):
            counts = [0] * lanes

            def lane(k):
                i, w0 = k * 7, time.perf_counter()
                while time.perf_counter() - w0 < secs:
                    x = np.stack([decode(images[(i + j) % len(images)], contract) for j in range(batch)])
                    pred.predict(x)
                    i += batch
                    counts[k] += batch

            w0, c0 = time.perf_counter(), time.process_time()
            running = [threading.Thread(target=lane, args=(k,)) for k in range(lanes)]
            for t in running:
                t.start()
            for t in running:
                t.join()
            wall, cpu, n = time.perf_counter() - w0, time.process_time() - c0, sum(counts)
            rows.append({"lanes": lanes, "threads": pred.runner.num_threads, "batch": batch, "images": n,
                         "images_per_s": n / wall, "cpu_s_per_image": cpu / n, "ms_per_image": wall / n * 1000})
        pred.close()
    print("RESULT=" + json.dumps({"variant": pred.variant_file, "tensorflow_loaded": "tensorflow" in sys.modules,
                                   "rows": rows}))
    """
)


def measure_limit(pkg: Path, image_paths: list[Path], layouts: list[tuple[int, int, list[int], list[float]]]) -> dict:
    """Run :data:`LIMIT_SCRIPT` in a fresh process (no TensorFlow) and return its result.

    Args:
        layouts: ``(lanes, threads, batch sizes, seconds per batch size)``: ``lanes`` threads each looping
            decode + predict on one ``Predictor`` with ``threads`` inference threads.
    """
    arg = json.dumps({"package": str(pkg), "images": [str(p) for p in image_paths], "layouts": layouts})
    proc = subprocess.run(
        [sys.executable, "-c", LIMIT_SCRIPT, arg],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_child_env(),
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"limit measurement failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT="))
    return json.loads(line.removeprefix("RESULT="))


# ------------------------------------------------------------------------------------------- servers


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(BENTOML_DO_NOT_TRACK="True", PYTHONPATH=str(ROOT), **extra)
    return env


def cpu_seconds(server: ServerProcess) -> float:
    """User + system CPU time of the server and all its descendants so far."""
    import psutil

    total = 0.0
    for pid in server.pids():
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


NAIVE_SCRIPT = textwrap.dedent(
    """
    # What a user would otherwise write: a threaded http.server calling Keras model.predict per request.
    import io, json, os, sys
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import numpy as np
    import tf_keras as keras
    from PIL import Image

    model = keras.models.load_model(sys.argv[1], compile=False)
    labels = json.loads(sys.argv[2])
    size = model.input_shape[1:3]
    model.predict(np.zeros((1, *size, 3), np.float32), verbose=0)

    def first_file(body, content_type):
        boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
        for part in body.split(b"--" + boundary):
            head, _, data = part.partition(b"\\r\\n\\r\\n")
            if b"filename=" in head:
                return data[: -2] if data.endswith(b"\\r\\n") else data
        raise ValueError("no file")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *args):
            pass
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            img = Image.open(io.BytesIO(first_file(body, self.headers["Content-Type"]))).convert("RGB")
            x = np.asarray(img.resize((size[1], size[0])), np.float32)[None]
            probs = model.predict(x, verbose=0)[0]
            top = np.argsort(-probs)[:5]
            out = json.dumps({"predictions": [{"label": labels[i], "probability": float(probs[i])} for i in top]})
            data = out.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[3])), Handler).serve_forever()
    """
)


COMPETENT_SCRIPT = textwrap.dedent(
    """
    # What a competent engineer writes by hand: Starlette on uvicorn (uvloop, httptools), ONNX Runtime with one
    # single-threaded session per core (or, given a .tflite file, a LiteRT interpreter per core), decode + infer
    # off the event loop in a pool of one thread per session. No batching, monitoring or hardening.
    import asyncio, io, json, os, sys, threading
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    import onnxruntime as ort
    import uvicorn
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    model_path, labels, port = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    cores = len(os.sched_getaffinity(0))
    local = threading.local()

    def session():
        if hasattr(local, "run"):
            return local.run
        if model_path.endswith(".tflite"):
            from ai_edge_litert.interpreter import Interpreter
            interp = Interpreter(model_path=model_path, num_threads=1)
            interp.allocate_tensors()
            inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
            local.size = tuple(int(d) for d in inp["shape"][1:3])

            def run(x):
                interp.set_tensor(inp["index"], x)
                interp.invoke()
                return interp.get_tensor(out["index"])[0]
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            local.size = tuple(sess.get_inputs()[0].shape[1:3])

            def run(x):
                return sess.run(None, {name: x})[0][0]
        local.run = run
        return run

    def classify(data):
        run = session()
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", local.size[::-1])
        img = img.convert("RGB")
        if img.size != local.size[::-1]:
            img = img.resize(local.size[::-1], Image.Resampling.BILINEAR)
        probs = run(np.asarray(img, np.float32)[None])
        top = np.argsort(-probs)[:5]
        return [{"label": labels[i], "probability": float(probs[i])} for i in top]

    pool = ThreadPoolExecutor(cores)
    for f in [pool.submit(classify, open(p, "rb").read()) for p in sys.argv[4:] * cores]:
        f.result()  # every thread's session built and warm

    async def predict(request):
        form = await request.form()
        data = await form["image"].read()
        preds = await asyncio.get_running_loop().run_in_executor(pool, classify, data)
        return JSONResponse({"predictions": preds})

    async def ready(request):
        return Response(status_code=200)

    app = Starlette(routes=[Route("/classify", predict, methods=["POST"]), Route("/", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False)
    """
)


# -------------------------------------------------------------------------------------------- client


def multipart_request(path: str, port: int, field: str, image: bytes) -> bytes:
    """A complete HTTP/1.1 keep-alive POST of one JPEG as ``multipart/form-data``."""
    boundary = "shipyardbenchboundary7d1e"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="img.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
        f"boundary={boundary}\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    return head + body


def v2_request(path: str, port: int, field: str, image: bytes) -> bytes:
    """A complete HTTP/1.1 keep-alive V2 ``infer`` of one JPEG as a binary ``BYTES`` tensor (the binary tensor
    data extension, as ``tritonclient.http`` sends it), asking for the probabilities (binary) and top labels."""
    header = json.dumps(
        {
            "inputs": [{"name": field, "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4 + len(image)}}],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "labels", "parameters": {"binary_data": True}},
            ],
        }
    ).encode()
    body = header + struct.pack("<I", len(image)) + image
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()
    return head + body


#: How a round talks to a server: ``/classify`` (multipart) or the V2 ``infer`` (binary BYTES) of the model.
ROUTES: dict[str, Any] = {
    "classify": lambda port, image, model: multipart_request("/classify", port, "image", image),
    "v2": lambda port, image, model: v2_request(f"/v2/models/{model}/infer", port, "image", image),
}

BATCH_SIZE_RE = re.compile(rb'"batch_size":(\d+)')


async def _one_client(
    port: int,
    requests: list[bytes],
    deadline: float,
    lat: list[float],
    errors: dict[str, int],
    offset: int,
    batches: list[int] | None = None,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length)
            status = int(status_line.split()[1]) if status_line else 0
            if status == 200:
                lat.append(time.perf_counter() - t0)
                if batches is not None and (m := BATCH_SIZE_RE.search(body)):
                    batches.append(int(m.group(1)))
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
                if not status_line:
                    break
    finally:
        writer.close()


@dataclass
class Sample:
    """Raw measurements of one server under one load, summed over rounds."""

    lat: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    own: float = 0.0
    threads: dict[str, float] = field(default_factory=dict)

    def summary(self, clients: int) -> dict[str, Any]:
        lat = np.array(self.lat) * 1000
        n = len(lat)
        return {
            "clients": clients,
            "requests": n,
            "errors": self.errors,
            "throughput_rps": n / self.wall if self.wall else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if n else None,
            "p95_ms": float(np.percentile(lat, 95)) if n else None,
            "p99_ms": float(np.percentile(lat, 99)) if n else None,
            "server_cpu_s_per_request": self.cpu / n if n else None,
            "client_cpu_s_per_request": self.own / n if n else None,
            "mean_batch_size": float(np.mean(self.batches)) if self.batches else None,
            "seconds": self.wall,
            "server_cpu_ms_per_request_by_thread": {k: v / n * 1000 for k, v in self.threads.items()} if n else {},
        }


def run_round(
    server: ServerProcess,
    images: list[bytes],
    clients: int,
    seconds: float,
    warmup: float,
    into: Sample,
    route: str = "classify",
    model: str = "",
) -> None:
    """One round: ``warmup`` unmeasured seconds, then ``seconds`` measured, of ``clients`` keep-alive
    connections posting images back to back to ``route`` (:data:`ROUTES`); adds requests, latencies and CPU
    (in all, and per thread: :func:`serving.threads.cpu_by_thread`) to ``into``."""
    requests = [ROUTES[route](server.port, im, model) for im in images]

    async def main() -> None:
        await asyncio.gather(
            *(
                _one_client(server.port, requests, time.perf_counter() + warmup, [], {}, c)
                for c in range(clients)
            )
        )
        cpu0, own0, threads0 = cpu_seconds(server), time.process_time(), thread_cpu(server.pids())
        started = time.perf_counter()
        errors: dict[str, int] = {}
        await asyncio.gather(
            *(
                _one_client(server.port, requests, started + seconds, into.lat, errors, c * 7, into.batches)
                for c in range(clients)
            )
        )
        into.wall += time.perf_counter() - started
        into.cpu += cpu_seconds(server) - cpu0
        into.own += time.process_time() - own0
        for group, spent in cpu_by_thread(threads0, thread_cpu(server.pids())).items():
            into.threads[group] = into.threads.get(group, 0.0) + spent
        for code, count in errors.items():
            into.errors[code] = into.errors.get(code, 0) + count

    asyncio.run(main())


def start_service(
    home: Path, tag: str, workdir: Path, name: str, **settings: Any
) -> tuple[ServerProcess, dict[str, Any]]:
    """``bentoml serve`` with the default ServeConfig but ``settings`` (``monitoring=False`` turns it off)."""
    from serving.config import ServeConfig

    monitoring = settings.pop("monitoring", True)
    config = ServeConfig(model=tag, port=free_port(), **settings)
    config.monitor.enabled = monitoring
    env = _child_env(BENTOML_HOME=str(home))
    server = ServerProcess(config, workdir / f"{name}.log", environ=env, cwd=ROOT).start()
    return server, json.loads(config.model_dump_json())


def start_naive(pkg: Path, workdir: Path) -> ServerProcess:
    """:data:`NAIVE_SCRIPT` on a free port (it ignores the ServeConfig handed to it)."""
    from edge.manifest import read_manifest
    from serving.config import ServeConfig

    labels = read_manifest(pkg).labels
    config = ServeConfig(port=free_port())
    cmd = [
        sys.executable,
        "-c",
        NAIVE_SCRIPT,
        str(pkg / "keras" / "model.keras"),
        json.dumps(labels),
        str(config.port),
    ]
    env = _child_env(TF_CPP_MIN_LOG_LEVEL="3")
    return ServerProcess(config, workdir / "naive.log", command=cmd, environ=env, cwd=ROOT).start()


def start_competent(pkg: Path, workdir: Path, warm_image: Path, variant: str = "model.onnx") -> ServerProcess:
    """:data:`COMPETENT_SCRIPT` on ``variant`` (``model.onnx``, or ``fp32.tflite`` for the LiteRT one; no
    embedding output: it has no monitor to feed)."""
    from edge.manifest import read_manifest
    from serving.config import ServeConfig

    labels = read_manifest(pkg).labels
    config = ServeConfig(port=free_port())
    model = pkg / "variants" / variant
    cmd = [sys.executable, "-c", COMPETENT_SCRIPT, str(model), json.dumps(labels), str(config.port), str(warm_image)]
    log = workdir / f"competent_{model.suffix[1:]}.log"
    return ServerProcess(config, log, command=cmd, environ=_child_env(), cwd=ROOT).start()


def bench_servers(
    servers: dict[str, ServerProcess],
    images: list[bytes],
    clients: list[int],
    seconds: float,
    warmup: float,
    rounds: int,
    only_32: tuple[str, ...] = (),
    routes: dict[str, tuple[str, str]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every server under every client count, interleaved: ``rounds`` rounds per client count, each
    server taking its turn in a rotating order, so that the neighbours' load hits them alike. ``routes``:
    ``{name: (route, model name)}`` for the entries that do not post to ``/classify``."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for n in clients:
        names = [name for name in servers if n == 32 or name not in only_32]
        samples = {name: Sample() for name in names}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                route, model = (routes or {}).get(name, ("classify", ""))
                run_round(servers[name], images, n, seconds / rounds, warmup, samples[name], route, model)
            print(f"  {n} clients, round {r + 1}/{rounds}", flush=True)
        for name in names:
            rows[name].append(samples[name].summary(n))
    return rows


def _row(rows: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    return next(r for r in rows if r["clients"] == clients)


def targets(report: dict[str, Any]) -> dict[str, Any]:
    limit: dict[int, dict[str, Any]] = {}  # per batch size, the layout with the least CPU per image
    for r in report["limit"]["rows"]:
        if r["batch"] not in limit or r["cpu_s_per_image"] < limit[r["batch"]]["cpu_s_per_image"]:
            limit[r["batch"]] = r
    best = max(report["limit"]["rows"], key=lambda r: r["images_per_s"])
    max_batch = report["service_on"]["config"]["max_batch_size"]
    on32 = _row(report["service_on"]["rows"], 32)
    off32 = _row(report["service_off"]["rows"], 32)
    quiet32 = _row(report["service_on_no_monitoring"]["rows"], 32)
    naive32 = _row(report["naive"]["rows"], 32)
    # the limit's row at the batch size the server actually formed (closest measured)
    served_batch = on32["mean_batch_size"] or max_batch
    same = min(limit, key=lambda b: abs(b - served_batch))
    ratio_batched = on32["server_cpu_s_per_request"] / limit[same]["cpu_s_per_image"]
    ratio_single = on32["server_cpu_s_per_request"] / limit[1]["cpu_s_per_image"]
    ratio_quiet = quiet32["server_cpu_s_per_request"] / limit[same]["cpu_s_per_image"]
    speedup = on32["throughput_rps"] / naive32["throughput_rps"]
    return {
        "limit_batch_compared": same,
        "cpu_ratio_vs_limit_same_batch": ratio_batched,
        "cpu_ratio_vs_limit_batch1": ratio_single,
        "cpu_ratio_without_monitoring": ratio_quiet,
        "cpu_target": CPU_TARGET,
        "cpu_met": ratio_batched <= CPU_TARGET,
        "throughput_vs_naive_32": speedup,
        "naive_target": NAIVE_TARGET,
        "naive_met": speedup >= NAIVE_TARGET,
        "batching_on_vs_off_32": on32["throughput_rps"] / off32["throughput_rps"],
        "batching_met": on32["throughput_rps"] >= off32["throughput_rps"],
        "v2_vs_classify": v2_vs_classify(report),
        "vs_competent": vs_competent(report),
        "vs_competent_litert": vs_competent(report, "competent_litert"),
        "limit_layout_compared": {"lanes": limit[same]["lanes"], "threads": limit[same]["threads"]},
        "limit_best": {k: best[k] for k in ("lanes", "threads", "batch", "images_per_s")},
        "throughput_32_vs_limit_best": on32["throughput_rps"] / best["images_per_s"],
        "limit_target": LIMIT_TARGET,
        "monitoring_on_vs_off_32": on32["throughput_rps"] / quiet32["throughput_rps"],
        "monitoring_target": MONITORING_TARGET,
    }


def vs_competent(report: dict[str, Any], key: str = "competent") -> dict[str, Any]:
    """Per client count: the service's (batching on, every feature on) throughput and p95 against the
    competent hand-written server's (``key``: ``competent`` with ONNX Runtime, the target's, or
    ``competent_litert``, for reference); the target is :data:`COMPETENT_TARGET` x the throughput, p95 no worse."""
    out = {}
    for base in report[key]["rows"]:
        ours = _row(report["service_on"]["rows"], base["clients"])
        throughput = ours["throughput_rps"] / base["throughput_rps"] if base["throughput_rps"] else None
        p95 = ours["p95_ms"] / base["p95_ms"] if ours["p95_ms"] and base["p95_ms"] else None
        met = throughput is not None and p95 is not None and throughput >= COMPETENT_TARGET and p95 <= 1.0
        out[str(base["clients"])] = {"throughput_ratio": throughput, "p95_ratio": p95, "met": met}
    return out


def v2_vs_classify(report: dict[str, Any]) -> dict[str, Any]:
    """Per client count: V2 binary infer's throughput and p95 against /classify's on the same server; the
    target is within :data:`V2_TARGET` (5%) on both."""
    out = {}
    for v2 in report["service_on_v2"]["rows"]:
        base = _row(report["service_on"]["rows"], v2["clients"])
        throughput = v2["throughput_rps"] / base["throughput_rps"] if base["throughput_rps"] else None
        p95 = v2["p95_ms"] / base["p95_ms"] if v2["p95_ms"] and base["p95_ms"] else None
        met = throughput is not None and p95 is not None and throughput >= 1 - V2_TARGET and p95 <= 1 + V2_TARGET
        out[str(v2["clients"])] = {"throughput_ratio": throughput, "p95_ratio": p95, "met": met}
    return out


def print_table(report: dict[str, Any]) -> None:
    lim = report["limit"]
    print(f"\nlimit (in-process, {lim['variant']}, decode + preprocess + infer):")
    print(f"{'lanes':>6}{'threads':>8}{'batch':>6}{'images/s':>10}{'ms/image':>10}{'CPU s/image':>13}")
    for r in lim["rows"]:
        print(
            f"{r['lanes']:>6}{r['threads']:>8}{r['batch']:>6}{r['images_per_s']:>10.1f}{r['ms_per_image']:>10.2f}"
            f"{r['cpu_s_per_image']:>13.4f}"
        )
    head = (
        f"{'server':<25}{'clients':>8}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'CPU s/req':>11}{'batch':>7}{'client CPU':>12}{'errors':>8}"
    )
    print("\n" + head)
    for name, key in (
        ("shipyard batching on", "service_on"),
        ("shipyard batching off", "service_off"),
        ("shipyard, no monitoring", "service_on_no_monitoring"),
        ("naive keras predict", "naive"),
        ("shipyard V2 binary infer", "service_on_v2"),
        ("competent starlette+ort", "competent"),
        ("competent starlette+litert", "competent_litert"),
    ):
        for r in report[key]["rows"]:
            errs = sum(r["errors"].values())
            batch = f"{r['mean_batch_size']:.1f}" if r.get("mean_batch_size") else "-"
            print(
                f"{name:<25}{r['clients']:>8}{r['throughput_rps']:>8.1f}{r['p50_ms'] or 0:>9.1f}"
                f"{r['p95_ms'] or 0:>9.1f}{r['p99_ms'] or 0:>9.1f}{r['server_cpu_s_per_request'] or 0:>11.4f}"
                f"{batch:>7}{r['client_cpu_s_per_request'] or 0:>12.4f}{errs:>8}"
            )
    print_threads(report)
    t = report["targets"]
    print(
        f"\nserver CPU/request at 32 clients vs the limit at batch {t['limit_batch_compared']} (the batch it "
        f"formed; layout {t['limit_layout_compared']}): {t['cpu_ratio_vs_limit_same_batch']:.2f}x (target <= {CPU_TARGET}x: "
        f"{'met' if t['cpu_met'] else 'NOT met'}); vs batch 1: {t['cpu_ratio_vs_limit_batch1']:.2f}x; "
        f"without monitoring: {t['cpu_ratio_without_monitoring']:.2f}x"
    )
    print(
        f"throughput at 32 clients vs naive: {t['throughput_vs_naive_32']:.1f}x "
        f"(target >= {NAIVE_TARGET}x: {'met' if t['naive_met'] else 'NOT met'})"
    )
    print(
        f"batching on vs off at 32 clients: {t['batching_on_vs_off_32']:.2f}x "
        f"({'met' if t['batching_met'] else 'NOT met'})"
    )
    for clients, v in t["vs_competent"].items():
        print(
            f"service vs competent hand-written server at {clients} clients: throughput "
            f"{v['throughput_ratio'] or 0:.2f}x, p95 {v['p95_ratio'] or 0:.2f}x (target >= {COMPETENT_TARGET}x, p95 "
            f"<= 1x: {'met' if v['met'] else 'NOT met'})"
        )
    for clients, v in t["vs_competent_litert"].items():
        print(
            f"service vs the same hand-written server on LiteRT at {clients} clients (for reference): throughput "
            f"{v['throughput_ratio'] or 0:.2f}x, p95 {v['p95_ratio'] or 0:.2f}x"
        )
    print(
        f"throughput at 32 clients vs the limit at its best batch and layout ({t['limit_best']}): "
        f"{t['throughput_32_vs_limit_best']:.2f}x "
        f"(target >= {LIMIT_TARGET}x: {'met' if t['throughput_32_vs_limit_best'] >= LIMIT_TARGET else 'NOT met'})"
    )
    print(
        f"throughput with monitoring on vs off at 32 clients: {t['monitoring_on_vs_off_32']:.2f}x (target >= "
        f"{MONITORING_TARGET}x: {'met' if t['monitoring_on_vs_off_32'] >= MONITORING_TARGET else 'NOT met'})"
    )
    for clients, v in t["v2_vs_classify"].items():
        print(
            f"V2 binary infer vs /classify at {clients} clients: throughput {v['throughput_ratio'] or 0:.3f}x, "
            f"p95 {v['p95_ratio'] or 0:.3f}x (target within {V2_TARGET:.0%}: {'met' if v['met'] else 'NOT met'})"
        )


def print_threads(report: dict[str, Any], clients: int = 32) -> None:
    """Where each server's CPU went at ``clients`` clients, in ms per request, by thread group."""
    rows = {name: _row(report[key]["rows"], clients)["server_cpu_ms_per_request_by_thread"]
            for name, key in (("shipyard", "service_on"), ("shipyard, no monitoring", "service_on_no_monitoring"),
                              ("competent", "competent"), ("competent, litert", "competent_litert")) if key in report}
    groups = sorted({g for r in rows.values() for g in r}, key=lambda g: -max(r.get(g, 0.0) for r in rows.values()))
    print(f"\nserver CPU per request by thread at {clients} clients (ms; the competent server's pool of decode + "
          "infer threads is 'other threads'):")
    print(f"{'server':<25}" + "".join(f"{g:>17}" for g in groups) + f"{'all':>9}")
    for name, r in rows.items():
        print(f"{name:<25}" + "".join(f"{r.get(g, 0.0):>17.2f}" for g in groups) + f"{sum(r.values()):>9.2f}")


def run_servers(
    home: Path, tag: str, pkg: Path, workdir: Path, images: list[bytes], args: argparse.Namespace
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float], dict[str, dict[str, Any]]]:
    """Start the three service settings and the naive server side by side, measure them in interleaved
    rounds, stop them all; return the rows, the startup seconds and the service configs per server."""
    servers: dict[str, ServerProcess] = {}
    configs: dict[str, dict[str, Any]] = {}
    startup: dict[str, float] = {}
    try:
        for name, settings in (
            ("service_on", {"batching": True}),
            ("service_off", {"batching": False}),
            ("service_on_no_monitoring", {"batching": True, "monitoring": False}),
        ):
            servers[name], configs[name] = start_service(home, tag, workdir, name, **settings)
            startup[name] = servers[name].wait_ready(path="/readyz")
        # the same server as service_on, called through the V2 route
        servers["service_on_v2"], configs["service_on_v2"] = servers["service_on"], configs["service_on"]
        startup["service_on_v2"] = startup["service_on"]
        servers["naive"] = start_naive(pkg, workdir)
        startup["naive"] = servers["naive"].wait_ready(path="/")
        for name, variant in (("competent", "model.onnx"), ("competent_litert", "fp32.tflite")):
            servers[name] = start_competent(pkg, workdir, workdir / "images" / "img_00.jpg", variant)
            startup[name] = servers[name].wait_ready(path="/")
        print("services (interleaved rounds)...", flush=True)
        rows = bench_servers(
            servers,
            images,
            args.clients,
            args.duration,
            args.warmup,
            args.rounds,
            only_32=("service_on_no_monitoring",),
            routes={"service_on_v2": ("v2", tag.split(":")[0])},
        )
    finally:
        for server in servers.values():
            server.stop()
    return rows, startup, configs


def average_limit(limit: dict[str, Any], after: dict[str, Any]) -> None:
    """Fold the limit measured after the servers into the one measured before (their mean, both kept)."""
    limit["rows_after"] = after["rows"]
    for row, later in zip(limit["rows"], after["rows"], strict=True):
        row["cpu_s_per_image_before_after"] = [row["cpu_s_per_image"], later["cpu_s_per_image"]]
        row["cpu_s_per_image"] = (row["cpu_s_per_image"] + later["cpu_s_per_image"]) / 2
        row["images_per_s"] = (row["images_per_s"] + later["images_per_s"]) / 2
        row["ms_per_image"] = (row["ms_per_image"] + later["ms_per_image"]) / 2


def make_report(
    tag: str,
    images: list[bytes],
    limit: dict[str, Any],
    rows: dict[str, list[dict[str, Any]]],
    startup: dict[str, float],
    configs: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The JSON report: the model, the limit, every server's rows, the machine and the settings."""

    def entry(name: str) -> dict[str, Any]:
        return {"startup_s": startup[name], "rows": rows[name], "config": configs.get(name)}

    on, off, quiet, naive, v2, competent, competent_litert = (
        entry(n)
        for n in ("service_on", "service_off", "service_on_no_monitoring", "naive", "service_on_v2", "competent",
                  "competent_litert")
    )

    return {
        "benchmark": "serving",
        "model": {
            "base": "mobilenet_v2",
            "weights": "random",
            "size": SIZE,
            "classes": CLASSES,
            "tag": tag,
            "upload_bytes_mean": float(np.mean([len(b) for b in images])),
        },
        "limit": limit,
        "service_on": on,
        "service_off": off,
        "service_on_no_monitoring": quiet,
        "naive": naive,
        "service_on_v2": v2,
        "competent": competent,
        "competent_litert": competent_litert,
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1_5_15_min_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s_per_round": args.warmup,
            "clients": args.clients,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds per setting")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the duration is split into")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each round")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the package and logs here")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args(argv)
    if 32 not in args.clients:
        parser.error("--clients must include 32 (the targets are stated at 32 clients)")

    workdir = bench_workdir(args.workdir, "shipyard-serving-bench-")
    home = workdir / "bentoml"

    images = [make_jpeg(seed) for seed in range(16)]
    image_paths = []
    for i, data in enumerate(images):
        path = workdir / "images" / f"img_{i:02d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        image_paths.append(path)

    pkg = build_package(workdir, images)
    tag = register_package(pkg)

    from serving.batching import LANES_PER_CORE
    from serving.config import ServeConfig

    max_batch = ServeConfig().max_batch_size
    sweep = sorted({1, 2, 4, 8, max_batch, 32})
    cores = default_threads()
    # one lane with every core's thread (with a sweep of batch sizes), and one and two single-threaded lanes
    # per core (the service's layout) at batch 1 and max_batch_size
    layouts = [
        (1, cores, sweep, [args.duration if b in (1, max_batch) else 4.0 for b in sweep]),
        *([(cores, 1, [1, max_batch], [args.duration] * 2)] if cores > 1 else []),
        (cores * LANES_PER_CORE, 1, [1, max_batch], [args.duration] * 2),
    ]
    print("limit...", flush=True)
    limit = measure_limit(pkg, image_paths, layouts)
    rows, startup, configs = run_servers(home, tag, pkg, workdir, images, args)
    print("limit again...", flush=True)
    limit_after = measure_limit(pkg, image_paths, layouts)
    average_limit(limit, limit_after)

    report = make_report(tag, images, limit, rows, startup, configs, args)
    report["targets"] = targets(report)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
