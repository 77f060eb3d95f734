"""edge.bench and ``shipyard-edge bench``: the benchmark_model-like sequence on real models."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edge.bench import BenchResult, bench_model, benchmark, random_inputs
from edge.cli import main
from edge.runners import TensorSpec, open_runner


def test_benchmark_honours_runs_and_min_time(edge_assets):
    runner = open_runner(edge_assets.fp32, num_threads=1)
    start = time.perf_counter()
    result = benchmark(runner, runs=20, min_time=0.2, warmup_runs=2)
    assert time.perf_counter() - start >= 0.2
    assert isinstance(result, BenchResult)
    assert result.runs >= 20
    assert len(result.times_ms) == result.runs
    assert result.total_s == pytest.approx(sum(result.times_ms) / 1000)
    assert result.min_ms <= result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert result.mean_ms == pytest.approx(float(np.mean(result.times_ms)))
    assert result.std_ms == pytest.approx(float(np.std(result.times_ms)))
    assert result.throughput_ips == pytest.approx(result.runs / result.total_s)
    assert result.threads == 1
    assert result.peak_rss_mib > 10


def test_benchmark_keeps_running_until_min_time(edge_assets):
    runner = open_runner(edge_assets.fp32, num_threads=1)
    start = time.perf_counter()
    result = benchmark(runner, runs=1, min_time=0.3, warmup_runs=0)
    assert time.perf_counter() - start >= 0.3
    assert result.runs > 1  # one run of a 32 px model takes far less than 0.3 s


def test_benchmark_max_time_caps_the_runs(edge_assets):
    runner = open_runner(edge_assets.fp32, num_threads=1)
    max_time = 0.2
    start = time.perf_counter()
    result = benchmark(runner, runs=10**9, min_time=0, max_time=max_time, warmup_runs=0)
    wall = time.perf_counter() - start
    # the loop stopped at the cap, not at the requested count: runs x time per run fills about max_time
    # (the rest is the loop's own bookkeeping), and the whole call took little more than the cap
    run_s = result.runs * result.mean_ms / 1000
    assert max_time * 0.5 <= run_s <= max_time + 0.1
    assert max_time <= wall < max_time + 1.0
    # the requested count at the measured speed would have taken thousands of times longer
    assert 10**9 * result.mean_ms / 1000 > 1000 * max_time
    assert result.runs < 10**9 / 1000


def test_benchmark_throughput_counts_the_batch(edge_assets):
    runner = open_runner(edge_assets.onnx, num_threads=1)
    result = benchmark(runner, batch_size=4, runs=10, min_time=0)
    assert result.inputs[0]["shape"] == [4, 32, 32, 3]
    assert result.throughput_ips == pytest.approx(4 * result.inferences_per_s)


def test_benchmark_predict_mode_runs_the_whole_path(edge_assets):
    runner = open_runner(edge_assets.int8, num_threads=1)
    result = benchmark(runner, mode="predict", batch_size=2, runs=5, min_time=0)
    assert result.mode == "predict"
    assert result.runs >= 5


def test_bench_model_measures_loading_and_memory(edge_assets):
    result = bench_model(edge_assets.package, variant="fp32", threads=1, runs=5, min_time=0)
    assert result.variant == "fp32"
    assert result.load_ms is not None and result.load_ms > 0
    assert result.rss_delta_mib is not None


def test_random_inputs_follow_dtype_and_shape():
    specs = [
        TensorSpec("a", (None, 4, 4, 3), np.dtype(np.uint8)),
        TensorSpec("b", (None, 7), np.dtype(np.int32)),
        TensorSpec("c", (2, None), np.dtype(np.float32)),
        TensorSpec("d", (None,), np.dtype(np.bool_)),
    ]
    a, b, c, d = random_inputs(specs, batch_size=3)
    assert a.shape == (3, 4, 4, 3) and a.dtype == np.uint8 and a.max() > 200
    assert b.shape == (3, 7) and b.dtype == np.int32 and b.min() >= 0 and b.max() < 100
    assert c.shape == (3, 1) and c.dtype == np.float32 and np.abs(c).max() <= 0.5
    assert d.shape == (3,) and d.dtype == np.bool_


def test_cli_bench_json_on_several_inputs_and_outputs(special_models, capsys):
    code = main(
        [
            "bench",
            str(special_models["multi_io"]),
            "--runs",
            "7",
            "--min-time",
            "0",
            "--batch-size",
            "3",
            "--json",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"] >= 7
    assert [i["shape"] for i in data["inputs"]] == [[3, 8, 8, 3], [3, 4]]
    assert [i["dtype"] for i in data["inputs"]] == ["float32", "int32"]
    assert len(data["outputs"]) == 2
    for key in ("load_ms", "first_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_ips"):
        assert data[key] is not None and data[key] >= 0
    assert data["peak_rss_mib"] > 0
    assert "times_ms" not in data


def test_cli_bench_table_on_a_package(edge_assets, capsys):
    code = main(["bench", str(edge_assets.package), "--runs", "5", "--min-time", "0", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "variant int8" in out and "1 thread(s)" in out
    for metric in (
        "model load",
        "first inference",
        "p50",
        "p90",
        "p99",
        "mean +- std",
        "throughput",
        "peak RSS",
    ):
        assert metric in out


def test_cli_bench_custom_op_names_the_operator(special_models, capsys):
    code = main(["bench", str(special_models["custom_op"])])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "custom operator 'Erfinv'" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--runs", "0"], "argument --runs: 0 must be >= 1"),
        (["--runs", "x"], "'x' is not an integer"),
        (["--max-time", "0"], "0.0 must be > 0"),
        (["--min-time", "nan"], "nan must be >= 0"),
    ],
)
def test_cli_bench_refuses_a_bad_argument(edge_assets, capsys, args, words):
    with pytest.raises(SystemExit) as info:
        main(["bench", str(edge_assets.fp32), *args])
    assert info.value.code == 2
    assert words in capsys.readouterr().err
