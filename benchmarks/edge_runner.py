"""The edge runner's overhead over the bare LiteRT interpreter, and preprocessing against inference.

Model: MobileNetV2 (``tf_keras.applications.MobileNetV2(weights=None, alpha=1.0)``, 224 px, 1000 classes)
wrapped so its input is float32 0..255 pixels with ``Rescaling(1/127.5, offset=-1)`` in the graph, as a
Shipyard model is. Converted to fp32 TFLite and to full-integer int8 TFLite (``uint8`` input and output,
calibrated on a few random samples).

The models are built in this process (TensorFlow), then every measurement runs in a fresh child
process that imports no TensorFlow, as on a device. Per variant (fp32, int8) and thread count (1 and
all cores), on the *same* interpreter, interleaved in rounds so that drift and the neighbours' load hit
every method alike:

* ``direct``: ``interpreter.invoke()`` on an input tensor already set (what ``benchmark_model`` times);
* ``bench``: :func:`edge.bench.benchmark` in its default ``invoke`` mode (``shipyard-edge bench``);
* ``predict``: :func:`edge.bench.benchmark` in ``predict`` mode: the runner's full ``predict`` of a
  ``uint8`` image (quantize/cast, copy in, invoke, read and dequantize the output).

Overhead: each round gives median(method) / median(direct) - 1 over its few runs; the headline is the
median of those over the rounds (the ratio of the overall medians is kept too). Short rounds pair the
methods in time, which matters on a machine whose cores are shared. Preprocessing: the median
time of ``edge.preprocess.decode`` on the bytes of a 224 px JPEG (decode, RGB, no resize needed), as
a fraction of the int8 model's median inference at 1 thread.

Targets: overhead <= 5 % (bench and predict), preprocessing <= 20 % of int8 inference at 1 thread.
Prints a table and writes ``benchmarks/results/edge_runner.json``.

    .venv/bin/python benchmarks/edge_runner.py            # 50 rounds of 4 runs per method
    .venv/bin/python benchmarks/edge_runner.py --quick    # 10 rounds of 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import cpu_name, make_jpeg  # noqa: E402 - after the path set-up

RESULTS = ROOT / "benchmarks" / "results"
SIZE = 224
OVERHEAD_TARGET = 0.05
PREPROCESS_TARGET = 0.20


def build_models(folder: Path, calibration_samples: int = 8) -> dict[str, Path]:
    """Build the wrapped MobileNetV2 and write ``fp32.tflite`` and ``int8.tflite`` into ``folder``.

    Args:
        folder: output folder.
        calibration_samples: random 0..255 images for the int8 representative dataset.

    Returns:
        ``{"fp32": path, "int8": path}``.
    """
    from training._tf import keras, tf

    inp = keras.Input((SIZE, SIZE, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=1.0, weights=None)
    model = keras.Model(inp, base(x), name="mobilenet_v2_224")

    rng = np.random.default_rng(0)
    samples = rng.uniform(0, 255, size=(calibration_samples, SIZE, SIZE, 3)).astype(np.float32)

    def representative():
        for sample in samples:
            yield [sample[None]]

    out = {}
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    out["fp32"] = folder / "fp32.tflite"
    out["fp32"].write_bytes(converter.convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    out["int8"] = folder / "int8.tflite"
    out["int8"].write_bytes(converter.convert())
    return out


def _direct_times(interp, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        interp.invoke()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def _runner_extra_us(runner, pixels: np.ndarray, number: int = 500) -> dict[str, float]:
    """The runner's own work per ``predict`` besides ``invoke``, in microseconds (timeit, best of 5, caches warm)."""
    import timeit

    prepared = runner.prepare(pixels)
    runner.set_input(prepared)
    runner.invoke()
    out = {}
    for name, fn in (
        ("prepare_us", lambda: runner.prepare(pixels)),
        ("set_input_us", lambda: runner.set_input(prepared)),
        ("get_outputs_us", runner.get_outputs),
    ):
        out[name] = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6
    out["predict_extra_us"] = out["prepare_us"] + out["set_input_us"] + out["get_outputs_us"]
    return out


def measure(models: dict[str, str], rounds: int, runs: int, warmup: int) -> dict:
    """Run in a TensorFlow-free process: the overhead rows and the preprocessing row."""
    from edge.bench import benchmark
    from edge.manifest import InputContract
    from edge.preprocess import decode
    from edge.runners import TFLiteRunner, default_threads

    all_cores = default_threads()
    thread_counts = [1] if all_cores == 1 else [1, all_cores]
    rows = []
    int8_1thread_ms = None
    for variant, path in models.items():
        for threads in thread_counts:
            runner = TFLiteRunner(path, num_threads=threads)
            interp = runner.interpreter
            pixels = np.random.default_rng(1).integers(0, 256, size=(1, SIZE, SIZE, 3), dtype=np.uint8)
            runner.predict(pixels)  # allocate, prepare kernels
            for _ in range(warmup):
                runner.predict(pixels)
            times: dict[str, list[float]] = {"direct": [], "bench": [], "predict": []}
            paired: dict[str, list[float]] = {"bench": [], "predict": []}
            for r in range(rounds):
                order = ["direct", "bench", "predict"]
                order = order[r % 3 :] + order[: r % 3]  # rotate who goes first
                block: dict[str, list[float]] = {}
                for method in order:
                    if method == "direct":
                        runner.set_input(runner.prepare(pixels))
                        block[method] = _direct_times(interp, runs)
                    else:
                        mode = "invoke" if method == "bench" else "predict"
                        block[method] = benchmark(
                            runner, mode=mode, runs=runs, min_time=0, warmup_runs=0
                        ).times_ms
                    times[method] += block[method]
                for method in paired:
                    paired[method].append(float(np.median(block[method]) / np.median(block["direct"]) - 1))
            med = {m: float(np.median(t)) for m, t in times.items()}
            row = {
                "variant": variant,
                "threads": threads,
                "runs_per_method": len(times["direct"]),
                "direct_p50_ms": med["direct"],
                "bench_p50_ms": med["bench"],
                "predict_p50_ms": med["predict"],
                # headline: the median over rounds of each round's median ratio (robust to the neighbours' load)
                "bench_overhead": float(np.median(paired["bench"])),
                "predict_overhead": float(np.median(paired["predict"])),
                # the ratio of the overall medians, for comparison
                "bench_overhead_of_medians": med["bench"] / med["direct"] - 1,
                "predict_overhead_of_medians": med["predict"] / med["direct"] - 1,
                "direct_p90_ms": float(np.percentile(times["direct"], 90)),
                "predict_p90_ms": float(np.percentile(times["predict"], 90)),
            }
            row.update(_runner_extra_us(runner, pixels))
            row["predict_extra_fraction"] = row["predict_extra_us"] / 1000 / med["direct"]
            rows.append(row)
            if variant == "int8" and threads == 1:
                int8_1thread_ms = med["direct"]
            runner.close()

    jpeg = make_jpeg()
    contract = InputContract(height=SIZE, width=SIZE)
    for _ in range(20):
        decode(jpeg, contract)
    decode_times = []
    for _ in range(300):
        start = time.perf_counter_ns()
        decode(jpeg, contract)
        decode_times.append((time.perf_counter_ns() - start) / 1e6)
    decode_ms = float(np.median(decode_times))
    preprocess = {
        "jpeg_bytes": len(jpeg),
        "decode_p50_ms": decode_ms,
        "decode_p90_ms": float(np.percentile(decode_times, 90)),
        "int8_inference_1thread_p50_ms": int8_1thread_ms,
        "fraction_of_int8_inference": decode_ms / int8_1thread_ms if int8_1thread_ms else None,
    }
    import ai_edge_litert

    return {
        "rows": rows,
        "preprocess": preprocess,
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": cpu_name(),
            "cores_usable": all_cores,
            "ai_edge_litert": getattr(ai_edge_litert, "__version__", "unknown"),
            "numpy": np.__version__,
            "tensorflow_loaded_while_measuring": "tensorflow" in sys.modules,
            "load_average_1_5_15_min_after": [round(x, 2) for x in os.getloadavg()],
        },
    }


def print_table(report: dict) -> None:
    """Print the overhead rows and the preprocessing row."""
    head = (
        f"{'variant':<8}{'threads':>8}{'runs':>6}{'direct p50':>12}{'bench p50':>12}{'predict p50':>13}"
        f"{'bench ovh':>11}{'predict ovh':>13}{'(of medians)':>18}"
    )
    print(head)
    print("-" * len(head))
    for r in report["rows"]:
        print(
            f"{r['variant']:<8}{r['threads']:>8}{r['runs_per_method']:>6}{r['direct_p50_ms']:>10.2f}ms"
            f"{r['bench_p50_ms']:>10.2f}ms{r['predict_p50_ms']:>11.2f}ms"
            f"{100 * r['bench_overhead']:>10.2f}%{100 * r['predict_overhead']:>12.2f}%"
            f"{100 * r['bench_overhead_of_medians']:>9.2f}%/{100 * r['predict_overhead_of_medians']:.2f}%"
        )
    print("\nthe runner's own work per predict besides invoke (timeit, caches warm):")
    for r in report["rows"]:
        print(
            f"  {r['variant']} {r['threads']} thread(s): prepare {r['prepare_us']:.1f} us + set_input "
            f"{r['set_input_us']:.1f} us + get_outputs {r['get_outputs_us']:.1f} us = {r['predict_extra_us']:.1f} us "
            f"= {100 * r['predict_extra_fraction']:.2f}% of direct invoke"
        )
    p = report["preprocess"]
    print(
        f"\npreprocess (edge.preprocess.decode of a {p['jpeg_bytes']:,}-byte 224 px JPEG): p50 {p['decode_p50_ms']:.3f} ms "
        f"= {100 * p['fraction_of_int8_inference']:.1f}% of int8 inference at 1 thread ({p['int8_inference_1thread_p50_ms']:.2f} ms)"
    )
    env = report["environment"]
    print(
        f"{env['cores_usable']} usable core(s); load average after measuring: {env['load_average_1_5_15_min_after']}"
    )
    for name, ok in report["targets_met"].items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    """Build the models, measure in a child process, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 rounds of 2 runs per method")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--runs", type=int, default=4, help="timed runs per method per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models", type=Path, help="reuse fp32.tflite/int8.tflite from this folder")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child mode: a JSON of arguments
    args = parser.parse_args(argv)
    if args.measure:
        spec = json.loads(args.measure.read_text())
        report = measure(spec["models"], spec["rounds"], spec["runs"], spec["warmup"])
        args.measure.with_suffix(".out.json").write_text(json.dumps(report))
        return 0
    if args.quick:
        args.rounds, args.runs = 10, 2

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.models or Path(tmp)
        start = time.perf_counter()
        if args.models and (folder / "fp32.tflite").is_file() and (folder / "int8.tflite").is_file():
            models = {"fp32": folder / "fp32.tflite", "int8": folder / "int8.tflite"}
        else:
            folder.mkdir(parents=True, exist_ok=True)
            models = build_models(folder)
        build_s = time.perf_counter() - start
        spec = Path(tmp) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "models": {k: str(v) for k, v in models.items()},
                    "rounds": args.rounds,
                    "runs": args.runs,
                    "warmup": args.warmup,
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        subprocess.run([sys.executable, __file__, "--measure", str(spec)], check=True, env=env, cwd=ROOT)
        report = json.loads(spec.with_suffix(".out.json").read_text())
        report["models"] = {k: {"file": v.name, "bytes": v.stat().st_size} for k, v in models.items()}
    report["model"] = (
        "tf_keras MobileNetV2(weights=None, alpha=1.0), 224 px, 1000 classes, float32 0..255 input with "
        "Rescaling(1/127.5, offset=-1); int8: full-integer, uint8 input/output, 8 random calibration samples"
    )
    report["build_seconds"] = round(build_s, 1)
    report["settings"] = {"rounds": args.rounds, "runs_per_round": args.runs, "warmup": args.warmup}
    report["targets"] = {"overhead_max": OVERHEAD_TARGET, "preprocess_fraction_max": PREPROCESS_TARGET}
    report["targets_met"] = {
        "bench overhead <= 5%": all(r["bench_overhead"] <= OVERHEAD_TARGET for r in report["rows"]),
        "predict overhead <= 5%": all(r["predict_overhead"] <= OVERHEAD_TARGET for r in report["rows"]),
        "preprocess <= 20% of int8 at 1 thread": report["preprocess"]["fraction_of_int8_inference"]
        <= PREPROCESS_TARGET,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "edge_runner.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwrote {RESULTS / 'edge_runner.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
