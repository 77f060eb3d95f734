"""Latency, throughput and memory of a model on this device, modelled on TFLite's ``benchmark_model``.

The sequence is the same as ``benchmark_model``'s: load the model (timed), one first inference (timed on
its own: it pays for lazy allocation and kernel preparation), warm-up runs, then at least ``runs``
timed runs *and* at least ``min_time`` seconds (capped by ``max_time``). Inputs are random data of each
input's dtype and shape, set once, so every input and output of any model is supported.

Two modes:

* ``"invoke"`` (the default, what ``benchmark_model`` measures): inputs are set once and each timed run
  is one ``invoke`` of the runtime;
* ``"predict"``: each timed run is the runner's full ``predict`` on a ``uint8`` image batch: quantize or
  cast the pixels, copy them in, invoke, read and dequantize the outputs (image classifiers only).

The optimization report and ``benchmarks/`` reuse :func:`benchmark`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.errors import ModelFileError
from edge.runners import Runner, TensorSpec, open_runner

Mode = Literal["invoke", "predict"]


@dataclass
class BenchResult:
    """What :func:`benchmark` measured. Times in milliseconds, memory in MiB."""

    model: str
    format: str
    variant: str | None
    mode: str
    threads: int
    batch_size: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    load_ms: float | None
    first_ms: float
    warmup_runs: int
    warmup_mean_ms: float
    runs: int
    total_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_ips: float
    inferences_per_s: float
    peak_rss_mib: float
    rss_delta_mib: float | None
    times_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, include_times: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; the per-run times only when ``include_times``."""
        data = asdict(self)
        if not include_times:
            data.pop("times_ms")
        return data


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``getrusage`` ``ru_maxrss``), in bytes (0 on Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    """The process's resident set size now, in bytes (``/proc/self/statm``; the peak where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):  # pragma: no cover - not Linux
        return peak_rss_bytes()


def random_inputs(specs: list[TensorSpec], batch_size: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Random arrays for every input, of its dtype and shape (open dimensions set to 1, the batch to ``batch_size``).

    Integers of 8 bits cover their whole range; wider integers take 0..99 (like ``benchmark_model``, so
    that index inputs stay in range); floats of image-shaped inputs take 0..255, other floats -0.5..0.5.

    Raises:
        ModelFileError: an input of a type that cannot be made up (strings, for example).
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = spec.concrete_shape(batch_size)
        dtype = np.dtype(spec.dtype)
        if dtype == np.bool_:
            arr = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            low, high = (int(info.min), int(info.max) + 1) if dtype.itemsize == 1 else (0, 100)
            arr = rng.integers(low, high, size=shape, dtype=np.int64).astype(dtype)
        elif dtype.kind == "f":
            image_like = len(shape) == 4 and shape[-1] in (1, 3)
            arr = (
                rng.uniform(0, 255, size=shape) if image_like else rng.uniform(-0.5, 0.5, size=shape)
            ).astype(dtype)
        else:
            raise ModelFileError(
                f"input {spec.name!r} is of type {dtype}; the benchmark can only make up numeric or boolean "
                "inputs: benchmark this model with a tool that takes input files"
            )
        arrays.append(arr)
    return arrays


def _spec_dict(spec: TensorSpec, batch_size: int | None) -> dict[str, Any]:
    return {
        "name": spec.name,
        "shape": list(spec.concrete_shape(batch_size)),
        "dtype": np.dtype(spec.dtype).name,
        "quantization": list(spec.quant) if spec.quant else None,
    }


def _timed(fn) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1e6


def benchmark(
    runner: Runner,
    *,
    batch_size: int = 1,
    runs: int = 50,
    min_time: float = 1.0,
    max_time: float = 150.0,
    warmup_runs: int = 5,
    mode: Mode = "invoke",
    seed: int = 0,
    load_ms: float | None = None,
    rss_before: int | None = None,
    model: str | None = None,
    variant: str | None = None,
) -> BenchResult:
    """Measure a loaded runner: first inference, warm-up, then the timed runs.

    Args:
        runner: any :class:`~edge.runners.Runner` (TFLite or ONNX, any number of inputs and outputs).
        batch_size: the batch dimension of every input.
        runs: at least this many timed runs.
        min_time: and at least this many seconds of timed runs.
        max_time: stop after this many seconds even if ``runs`` is not reached (as ``benchmark_model``).
        warmup_runs: untimed runs after the first inference.
        mode: ``"invoke"`` (inputs set once, time ``invoke``) or ``"predict"`` (time the full ``predict``).
        seed: seed of the random inputs.
        load_ms: the model's load time, if the caller measured it (see :func:`bench_model`).
        rss_before: the resident memory before the model was loaded, for the RSS delta.
        model: a display name for the model (default: the runner's path).
        variant: the package variant, if any.

    Returns:
        A :class:`BenchResult`.

    Raises:
        ValueError: an argument out of range.
        ModelFileError: the runtime fails to run the model (a custom op, a shape it refuses...).
    """
    _check_bench_args(batch_size, runs, min_time, max_time, warmup_runs, mode)
    step = _bench_step(runner, mode, batch_size, seed)
    first_ms = _first_inference(runner, step)
    warm = [_timed(step) for _ in range(warmup_runs)]
    times = _timed_runs(step, runs, min_time, max_time)
    return BenchResult(
        model=model or str(runner.path or "(bytes)"),
        variant=variant,
        mode=mode,
        **_runner_fields(runner, batch_size),
        load_ms=load_ms,
        first_ms=first_ms,
        warmup_runs=warmup_runs,
        warmup_mean_ms=float(np.mean(warm)) if warm else 0.0,
        **_run_statistics(times, batch_size),
        **_memory_fields(rss_before),
        times_ms=[float(t) for t in times],
    )


def _check_bench_args(
    batch_size: int, runs: int, min_time: float, max_time: float, warmup_runs: int, mode: str
) -> None:
    if batch_size < 1 or runs < 1 or min_time < 0 or max_time <= 0 or warmup_runs < 0:
        raise ValueError(
            f"batch_size={batch_size}, runs={runs}, min_time={min_time}, max_time={max_time}, "
            f"warmup_runs={warmup_runs}: batch_size and runs must be >= 1, times >= 0, max_time > 0"
        )
    if mode not in ("invoke", "predict"):
        raise ValueError(f"mode={mode!r} is not a benchmark mode; use 'invoke' or 'predict'")


def _bench_step(runner: Runner, mode: str, batch_size: int, seed: int) -> Callable[[], Any]:
    """The callable one timed run calls: ``predict`` on random pixels, or ``invoke`` on inputs set once."""
    if mode == "predict":
        runner.check_image_input()
        rng = np.random.default_rng(seed)
        shape = (batch_size, runner.height or 1, runner.width or 1, 3)
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        return lambda: runner.predict(pixels)
    runner.set_inputs(random_inputs(runner.input_specs, batch_size, seed))
    return runner.invoke


def _first_inference(runner: Runner, step: Callable[[], Any]) -> float:
    """Time the first run; a runtime failure becomes a :class:`ModelFileError` naming the model."""
    try:
        return _timed(step)
    except (RuntimeError, ValueError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(
            f"{runner.path or 'the model'} failed on its first inference: {str(exc).splitlines()[0]}"
        ) from exc


def _timed_runs(step: Callable[[], Any], runs: int, min_time: float, max_time: float) -> list[float]:
    """At least ``runs`` runs and ``min_time`` seconds, stopping at ``max_time``: each run's milliseconds."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        times.append(_timed(step))
        elapsed = time.perf_counter() - start
        if (len(times) >= runs and elapsed >= min_time) or elapsed >= max_time:
            return times


def _runner_fields(runner: Runner, batch_size: int) -> dict[str, Any]:
    """The :class:`BenchResult` fields that describe the runner and its tensors."""
    return {
        "format": runner.format,
        "threads": int(getattr(runner, "num_threads", 0) or 0),
        "batch_size": batch_size,
        "inputs": [_spec_dict(s, batch_size) for s in runner.input_specs],
        "outputs": [_spec_dict(s, batch_size) for s in runner.output_specs],
    }


def _memory_fields(rss_before: int | None) -> dict[str, Any]:
    """The peak resident memory, and its growth since ``rss_before`` when given, in MiB."""
    delta = (current_rss_bytes() - rss_before) / 2**20 if rss_before is not None else None
    return {"peak_rss_mib": peak_rss_bytes() / 2**20, "rss_delta_mib": delta}


def _run_statistics(times: list[float], batch_size: int) -> dict[str, Any]:
    """The :class:`BenchResult` fields computed from the timed runs."""
    arr = np.asarray(times, dtype=np.float64)
    total_s = float(arr.sum()) / 1e3
    return {
        "runs": len(times),
        "total_s": total_s,
        "p50_ms": float(np.percentile(arr, 50)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "std_ms": float(arr.std()),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "throughput_ips": batch_size * len(times) / total_s if total_s > 0 else float("inf"),
        "inferences_per_s": len(times) / total_s if total_s > 0 else float("inf"),
    }


def bench_model(
    model: str | Path,
    *,
    variant: str | None = None,
    threads: int | None = None,
    **kwargs: Any,
) -> BenchResult:
    """Load a model package or a bare ``.tflite``/``.onnx`` file (timed) and :func:`benchmark` it.

    Args:
        model: a package directory or a model file.
        variant: the package variant (packages only; default as in :func:`edge.package.choose_variant`).
        threads: inference threads (default: all cores).
        **kwargs: passed to :func:`benchmark` (``batch_size``, ``runs``, ``min_time``, ``mode``, ...).

    Returns:
        A :class:`BenchResult` with the load time and the RSS delta since before loading.

    Raises:
        PackageError, IntegrityError, ModelFileError: as :func:`edge.package.open_variant_runner` and
            :func:`edge.runners.open_runner`.
    """
    from edge.package import open_variant_runner

    path = Path(model)
    rss_before = current_rss_bytes()
    start = time.perf_counter_ns()
    if path.is_dir():
        runner, _, key = open_variant_runner(path, variant, num_threads=threads)
    else:
        if variant is not None:
            raise ModelFileError(
                f"--variant {variant!r} needs a model package; {path} is a single model file"
            )
        runner, key = open_runner(path, num_threads=threads), None
    load_ms = (time.perf_counter_ns() - start) / 1e6
    try:
        return benchmark(
            runner, load_ms=load_ms, rss_before=rss_before, model=str(path), variant=key, **kwargs
        )
    finally:
        runner.close()
