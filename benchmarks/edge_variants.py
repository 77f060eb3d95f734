"""Edge variants: size, latency and distance from the compute floor, on MobileNetV2 and the demo model.

Builds the variants of ``edge.variants.VARIANTS`` (the same table as ``shipyard optimize``) for

* MobileNetV2 (alpha 1.0, 224 px, ``weights=None``, 10 classes) with a few random representative images;
  fine-tuning for pruning/QAT/clustering runs on random images and labels, which is fine for size and
  latency (accuracy numbers on it mean nothing and are not reported);
* optionally a trained package (``--package runs/digits/<version>``, e.g. the demo model), built from its
  own training data into a temporary folder (the package is not modified).

For each variant it measures the file size, the gzip size, the weight sparsity, and latency with the edge
runners through :func:`edge.bench.benchmark` (``invoke`` mode, batch 1, warm-up, then at least 50 runs
and at least 1 s), with 1 thread and with all cores, in 3 rounds interleaved over the variants (runs
pooled, so that load from other processes on a shared machine does not land on one variant). Medians
(p50) are quoted.

The compute floor is the model's multiply-accumulates (counted per layer from the Keras model,
:func:`training.optimize.count_macs`) divided by the core's peak MAC rate. Peak rates are measured here,
not taken from a data sheet:

* float32: a 2048x2048 numpy float32 matmul (BLAS), best of 5, 1 thread and all threads
  (``threadpoolctl``); MAC/s = FLOP/s / 2;
* int8: a large int8 fully-connected layer (512x1024 by 1024x1024) run by TFLite/XNNPACK, best of 20 -
  the best int8 GEMM rate this runtime reaches on this CPU, used as the int8 "peak".

Float variants (fp32, fp16 - computed in float32 - and ONNX) are compared with the float32 peak; integer
variants (int8, QAT, pruned, clustered, dynamic-range - XNNPACK runs those with int8 kernels) with the
int8 peak. A ratio of 1 would mean the model runs at the peak rate; ratios well above 1 are expected for
small, memory-bound depthwise layers.

Targets on this CPU: int8 p50 latency at most 0.5x fp32 TFLite at 1 thread, for the converter's int8 and
for LiteRT's quantizer (``litert_int8.tflite``); the int8 file at least 3.2x smaller than fp32; the
75%-sparse pruned int8 file at least 8x smaller than fp32 after gzip (both gzipped); the TFLite metadata
(labels, normalization, name) adding at most 1% to fp32.tflite's load time (bytes added reported too).

    .venv/bin/python benchmarks/edge_variants.py [--package PATH] [--variants ...] [--output FILE]

Prints a table and writes ``benchmarks/results/edge_variants.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import cpu_name  # noqa: E402 - after the path set-up
from edge.variants import variants_where  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: Variants XNNPACK runs with int8 kernels (compared with the int8 peak), from the variant table.
INT_VARIANTS = set(variants_where(lambda v: v.gate in ("int8", "dynamic")))
#: Every variant an edge runner runs, except those that only add outputs to another (the embedding).
DEFAULT_VARIANTS = variants_where(lambda v: v.file_format.runnable and v.extends is None)


def all_threads() -> int:
    from edge.runners import default_threads

    return default_threads()


def numpy_fp32_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best float32 MAC/s of an n x n x n numpy matmul with ``threads`` BLAS threads."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(limits=threads):
        a @ b  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return n**3 / best


def tflite_gemm_peak(
    threads: int, m: int = 512, k: int = 1024, n: int = 1024, repeats: int = 20
) -> dict[str, float]:
    """Best MAC/s of one big fully-connected layer (m x k by k x n) in TFLite (XNNPACK), float32 and int8."""
    from edge.runners import TFLiteRunner
    from training._tf import keras, tf

    inp = keras.Input((k,), batch_size=m)
    model = keras.Model(inp, keras.layers.Dense(n, use_bias=False)(inp))
    rep = np.random.default_rng(0).uniform(-1, 1, (4, m, k)).astype(np.float32)
    rates = {}
    for kind in ("fp32", "int8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if kind == "int8":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([rep[i]] for i in range(len(rep)))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        runner = TFLiteRunner(bytes(conv.convert()), num_threads=threads)
        runner.set_input(np.zeros((m, k), dtype=runner.input_dtype))
        runner.invoke()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner.invoke()
            best = min(best, time.perf_counter() - t0)
        rates[kind] = m * k * n / best
    return rates


def peak_rates() -> dict[str, dict[str, float]]:
    """MAC/s per thread setting: ``{"1": {"fp32": ..., "int8": ..., "numpy_fp32": ...}, "all": {...}}``.

    The floor uses the faster of the float measurements, so that it stays a lower bound. With all
    cores, the peak is taken as cores x the one-core peak (perfect scaling): on a shared machine the
    measured multi-thread rates are lower (recorded as ``measured_*``), which would flatter the ratios.
    """
    one = tflite_gemm_peak(1)
    np_one = numpy_fp32_peak(1)
    n = all_threads()
    many = tflite_gemm_peak(n) if n > 1 else one
    np_many = numpy_fp32_peak(n) if n > 1 else np_one
    fp32_one, int8_one = max(np_one, one["fp32"]), one["int8"]
    return {
        "1": {
            "threads": 1,
            "numpy_fp32": np_one,
            "tflite_fp32": one["fp32"],
            "tflite_int8": one["int8"],
            "fp32": fp32_one,
            "int8": int8_one,
        },
        "all": {
            "threads": n,
            "measured_numpy_fp32": np_many,
            "measured_tflite_fp32": many["fp32"],
            "measured_tflite_int8": many["int8"],
            "fp32": n * fp32_one,
            "int8": n * int8_one,
        },
    }


def time_variants(
    paths: dict[str, Path], threads: int, runs: int, min_time: float, rounds: int
) -> dict[str, dict]:
    """Latency of several files, interleaved: ``rounds`` rounds, each timing every file once
    (:func:`edge.bench.benchmark`, invoke mode). The runs of all rounds are pooled per file, so that
    load from other processes on a shared machine spreads over every variant instead of hitting one."""
    from edge.bench import benchmark
    from edge.runners import open_runner

    pooled: dict[str, list[float]] = {key: [] for key in paths}
    round_p50: dict[str, list[float]] = {key: [] for key in paths}
    for _ in range(rounds):
        for key, path in paths.items():
            runner = open_runner(path, num_threads=threads)
            try:
                res = benchmark(runner, runs=runs, min_time=min_time, warmup_runs=5, mode="invoke")
            finally:
                runner.close()
            pooled[key].extend(res.times_ms)
            round_p50[key].append(res.p50_ms)
    out = {}
    for key, times in pooled.items():
        arr = np.asarray(times)
        out[key] = {
            "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)),
            "runs": len(times),
            "rounds_p50": round_p50[key],
            "threads": threads,
        }
    return out


def bench_model(
    name: str,
    model: Any,
    *,
    labels: list[str],
    contract: Any,
    data: Any,
    config: Any,
    variants: list[str],
    peaks: dict[str, dict[str, float]],
    runs: int,
    min_time: float,
    rounds: int,
    gates_meaningful: bool = True,
) -> dict[str, Any]:
    """Build the variants of one model, then time and size them."""
    from training.optimize import count_macs, optimize_model

    macs = count_macs(model)
    print(
        f"\n== {name}: {macs['total'] / 1e6:.1f} M MACs per image; building {len(variants)} variants",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp:
        started = time.perf_counter()
        results, reference = optimize_model(
            model,
            labels=labels,
            contract=contract,
            data=data,
            config=config,
            out_dir=Path(tmp),
            variants=variants,
            progress=lambda line: print("  " + line, flush=True),
        )
        build_s = time.perf_counter() - started
        rows = []
        for r in results:
            rows.append(
                {
                    "variant": r.key,
                    "status": r.status,
                    "reason": r.reason,
                    "bytes": r.bytes,
                    "gzip_bytes": r.gzip_bytes,
                    "sparsity": r.sparsity,
                    "accuracy": r.metrics.get("accuracy"),
                    "agreement": r.metrics.get("agreement"),
                    "build_seconds": r.build_seconds,
                    "details": {
                        k: v
                        for k, v in r.details.items()
                        if k in ("pruned_layers_sparsity", "keras_sparsity")
                    },
                }
            )
        paths = {r.key: r.path for r in results if r.path is not None and r.spec.file_format.runnable}
        overhead = metadata_overhead(model, paths.get("fp32.tflite"))
        for label in ("1", "all"):
            threads = int(peaks[label]["threads"])
            print(
                f"  timing {len(paths)} files with {threads} thread(s), {rounds} interleaved rounds ...",
                flush=True,
            )
            timed = time_variants(paths, threads, runs, min_time, rounds)
            for row in rows:
                if row["variant"] not in timed:
                    continue
                kind = "int8" if row["variant"] in INT_VARIANTS else "fp32"
                lat = timed[row["variant"]]
                lat["floor_ms"] = macs["total"] / peaks[label][kind] * 1e3
                lat["p50_over_floor"] = lat["p50"] / lat["floor_ms"]
                row["floor_kind"] = kind
                row[f"latency_{label}"] = lat
    return {
        "model": name,
        "macs": macs,
        "reference_accuracy": reference.accuracy,
        "evaluated_on": reference.evaluated_on,
        "build_seconds": build_s,
        "gates_meaningful": gates_meaningful,
        "variants": rows,
        "metadata_overhead": overhead,
        "targets": {**targets(rows), **overhead_target(overhead)},
    }


def overhead_target(overhead: dict[str, Any] | None) -> dict[str, Any]:
    """The metadata target: at most 1% more load time."""
    if not overhead:
        return {}
    ratio = overhead["load_ratio"]
    return {"metadata_load_time_ratio": {"value": ratio, "limit": "<= 1.01", "met": ratio <= 1.01}}


def load_ms(content: bytes, repeats: int = 20) -> float:
    """Median time (ms) to load a TFLite model from a file and allocate its tensors (one thread)."""
    from ai_edge_litert.interpreter import Interpreter

    with tempfile.NamedTemporaryFile(suffix=".tflite") as fh:
        fh.write(content)
        fh.flush()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            Interpreter(model_path=fh.name, num_threads=1).allocate_tensors()
            times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def metadata_overhead(model: Any, path: Path | None) -> dict[str, Any] | None:
    """Bytes and load time that the TFLite metadata adds to fp32.tflite (the same conversion without it)."""
    from training.optimize import QuantizationConfig, convert_to_tflite

    if path is None or not path.is_file():
        return None
    with_meta = path.read_bytes()
    bare = convert_to_tflite(model, QuantizationConfig.for_float32())
    load_with, load_bare = load_ms(with_meta), load_ms(bare)
    return {
        "variant": path.name,
        "bytes_added": len(with_meta) - len(bare),
        "bytes_ratio": len(with_meta) / len(bare),
        "load_ms_with_metadata": load_with,
        "load_ms_without": load_bare,
        "load_ratio": load_with / load_bare,
    }


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The three targets, each with the measured value, the limit and whether it was met."""
    by = {r["variant"]: r for r in rows if r.get("bytes")}
    out: dict[str, Any] = {}
    fp32, int8, pruned = by.get("fp32.tflite"), by.get("int8.tflite"), by.get("pruned_int8.tflite")
    for key in ("int8.tflite", "litert_int8.tflite"):  # the converter's and LiteRT's quantizer
        quant = by.get(key)
        if fp32 and quant and "latency_1" in fp32 and "latency_1" in quant:
            ratio = quant["latency_1"]["p50"] / fp32["latency_1"]["p50"]
            name = f"{key.removesuffix('.tflite')}_latency_vs_fp32_1thread"
            out[name] = {"value": ratio, "limit": "<= 0.5", "met": ratio <= 0.5}
    if fp32 and int8:
        ratio = fp32["bytes"] / int8["bytes"]
        out["fp32_over_int8_bytes"] = {"value": ratio, "limit": ">= 3.2", "met": ratio >= 3.2}
    if fp32 and pruned:
        ratio = fp32["gzip_bytes"] / pruned["gzip_bytes"]
        out["fp32_gzip_over_pruned_int8_gzip"] = {"value": ratio, "limit": ">= 8", "met": ratio >= 8}
        out["fp32_raw_over_pruned_int8_gzip"] = {
            "value": fp32["bytes"] / pruned["gzip_bytes"],
            "limit": "(info)",
        }
    return out


def mobilenet_v2(args: argparse.Namespace, peaks: dict[str, dict[str, float]]) -> dict[str, Any]:
    from edge.manifest import InputContract
    from training.config import ModelConfig, OptimizeConfig
    from training.models import build_model
    from training.optimize import OptimizeData

    model = build_model(ModelConfig(name="mobilenet-v2", base="mobilenet_v2", weights="none"), 10, (224, 224))
    rng = np.random.default_rng(0)
    n_train, n_test = args.images, 16
    data = OptimizeData(
        train_x=rng.integers(0, 256, (n_train, 224, 224, 3), dtype=np.uint8),
        train_y=rng.integers(0, 10, n_train),
        test_x=rng.integers(0, 256, (n_test, 224, 224, 3), dtype=np.uint8),
        test_y=None,
        notes=["random images and labels: accuracy is not measured"],
    )
    config = OptimizeConfig(
        representative_samples=min(32, n_train),
        qat_epochs=1,
        prune_epochs=2,
        cluster_epochs=1,
        prune_sparsity=args.sparsity,
        fine_tune_batch_size=16,
        fine_tune_learning_rate=1e-4,
        latency=False,
    )
    return bench_model(
        "mobilenet_v2 (alpha 1.0, 224 px, weights=None, 10 classes)",
        model,
        labels=[str(i) for i in range(10)],
        contract=InputContract(height=224, width=224),
        data=data,
        config=config,
        variants=args.variants,
        peaks=peaks,
        runs=args.runs,
        min_time=args.min_time,
        rounds=args.rounds,
        gates_meaningful=False,
    )


def demo_package(args: argparse.Namespace, peaks: dict[str, dict[str, float]]) -> dict[str, Any]:
    from training.optimize import load_optimize_data, optimize_config_for
    from training.package import load_package_model

    model, manifest = load_package_model(args.package)
    config = optimize_config_for(manifest)
    data = load_optimize_data(manifest, config)
    if data.problem:
        print(f"note: {data.problem}", flush=True)
    opt = config.optimize.model_copy(update={"latency": False, "prune_sparsity": args.sparsity})
    return bench_model(
        f"package {manifest.tag} ({manifest.base_model.get('name')}, {manifest.input.height} px)",
        model,
        labels=manifest.labels,
        contract=manifest.input,
        data=data,
        config=opt,
        variants=args.variants,
        peaks=peaks,
        runs=args.runs,
        min_time=args.min_time,
        rounds=args.rounds,
    )


def print_table(result: dict[str, Any]) -> None:
    from training.tables import format_table

    rows = []
    for r in result["variants"]:
        l1, ln = r.get("latency_1") or {}, r.get("latency_all") or {}
        status = r["status"]
        if not result["gates_meaningful"] and status != "failed_export":
            status = "built"  # random weights and data: parity gates say nothing
        rows.append(
            [
                r["variant"],
                status,
                f"{r['bytes']:,}" if r["bytes"] else "",
                f"{r['gzip_bytes']:,}" if r["gzip_bytes"] else "",
                "" if r["sparsity"] is None else f"{100 * r['sparsity']:.1f}%",
                "" if r.get("accuracy") is None else f"{100 * r['accuracy']:.2f}%",
                f"{l1['p50']:.2f}" if l1 else "",
                f"{l1['p50_over_floor']:.1f}x" if l1 else "",
                f"{ln['p50']:.2f}" if ln else "",
                f"{ln['p50_over_floor']:.1f}x" if ln else "",
            ]
        )
    print(f"\n{result['model']}: {result['macs']['total'] / 1e6:.1f} M MACs")
    print(
        format_table(
            [
                "variant",
                "status",
                "bytes",
                "gzip",
                "sparsity",
                "accuracy",
                "p50 1T ms",
                "/floor",
                "p50 all ms",
                "/floor",
            ],
            rows,
        )
    )
    for name, t in result["targets"].items():
        met = "" if "met" not in t else ("  MET" if t["met"] else "  MISSED")
        print(f"  {name}: {t['value']:.2f} (target {t['limit']}){met}")


def main(argv: list[str] | None = None) -> int:
    from training.optimize import resolve_variants

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--package", default=None, help="a trained package (e.g. the demo model) to benchmark too"
    )
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument(
        "--images", type=int, default=64, help="random training images for MobileNetV2 fine-tuning"
    )
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds per file (runs pooled)"
    )
    parser.add_argument("--skip-mobilenet", action="store_true")
    parser.add_argument("--output", default=str(RESULTS / "edge_variants.json"))
    args = parser.parse_args(argv)
    args.variants = resolve_variants(args.variants)

    started = time.perf_counter()
    print("measuring peak MAC rates ...", flush=True)
    peaks = peak_rates()
    one, many = peaks["1"], peaks["all"]
    print(
        f"  1 thread: numpy fp32 {one['numpy_fp32'] / 1e9:.1f} GMAC/s, TFLite fp32 GEMM "
        f"{one['tflite_fp32'] / 1e9:.1f} GMAC/s, TFLite int8 GEMM {one['tflite_int8'] / 1e9:.1f} GMAC/s",
        flush=True,
    )
    if "measured_numpy_fp32" in many:
        print(
            f"  {many['threads']} threads (measured): numpy fp32 {many['measured_numpy_fp32'] / 1e9:.1f}, TFLite fp32 "
            f"{many['measured_tflite_fp32'] / 1e9:.1f}, TFLite int8 {many['measured_tflite_int8'] / 1e9:.1f} GMAC/s; "
            f"the all-core floor assumes {many['threads']}x the one-core peak",
            flush=True,
        )
    models = []
    if not args.skip_mobilenet:
        models.append(mobilenet_v2(args, peaks))
    if args.package:
        models.append(demo_package(args, peaks))
    for result in models:
        print_table(result)
    payload = {
        "benchmark": "edge_variants",
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "cores": all_threads(),
            "load_average_start": os.getloadavg(),
        },
        "peak_macs_per_s": peaks,
        "method": {
            "latency": f"edge.bench.benchmark, invoke mode, batch 1, 5 warm-up runs, >= {args.runs} runs and "
            f">= {args.min_time} s per round, {args.rounds} rounds interleaved over the variants, runs pooled; "
            "p50 quoted",
            "floor": "count_macs(Keras model) / peak MAC rate; fp32 peak = max(numpy 2048^3 sgemm, TFLite fp32 "
            "GEMM); int8 peak = TFLite int8 GEMM 512x1024x1024; all cores = cores x one-core peak",
        },
        "models": models,
        "seconds": time.perf_counter() - started,
    }
    payload["machine"]["load_average_end"] = os.getloadavg()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
