"""Does the load tester find the service's real limit? Its saturation point against a measured maximum.

The service of ``benchmarks/serving.py`` (MobileNetV2 at 224 px, fp32 TFLite, the default ``ServeConfig``, its
package built and registered the same way, by that script's functions) is started once on 127.0.0.1. Then,
in interleaved rounds (``--rounds``):

1. **measured max**: the lean asyncio client of ``benchmarks/serving.py`` (keep-alive connections, one
   request in flight each, no think time, nothing checked) at each of ``--clients``; the highest throughput
   over the client counts is the round's maximum;
2. **load tester**: ``serving.loadtest.run_loadtest`` in a stepped mode (``--mode``, default ``ramp``: users
   added every ``--step-s`` seconds without think time, up to ``--users``, only ``/classify``, every
   response checked) against the same server; its saturation throughput (the best step within the limits;
   with no p95 limit, the run ends when throughput stops growing) is the round's figure.

The target of issue 17: the load tester's saturation point within 10% of the measured maximum (medians over
the rounds). Locust runs on the same cores as the server and spends more CPU per request than the lean
client, which lowers what the server gets: that is part of what is measured, and the CPU seconds per request
of the load generators are reported. Prints a table and writes ``benchmarks/results/loadtest_limit.json``.

    .venv/bin/python benchmarks/loadtest_limit.py                      # 2 rounds
    .venv/bin/python benchmarks/loadtest_limit.py --rounds 1 --step-s 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import bench_workdir, cpu_name, make_jpeg  # noqa: E402 - after the path set-up
from edge.files import write_json_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = 0.10


def measured_max(server: Any, images: list[bytes], clients: list[int], seconds: float) -> dict[str, Any]:
    """The lean client at each client count; the best throughput and where."""
    from benchmarks.serving import Sample, run_round

    rows = []
    for n in clients:
        sample = Sample()
        run_round(server, images, n, seconds, 1.0, sample)
        row = sample.summary(n)
        rows.append(row)
        print(
            f"  lean client, {n} clients: {row['throughput_rps']:.1f} req/s, p95 {row['p95_ms']:.0f} ms",
            flush=True,
        )
    best = max(rows, key=lambda r: r["throughput_rps"])
    return {"rps": best["throughput_rps"], "clients": best["clients"], "rows": rows}


def load_tester(url: str, folder: Path, output: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One stepped run of the load tester; its saturation point and the CPU its processes used."""
    import resource

    from serving.loadtest import LoadTestConfig, run_loadtest

    config = LoadTestConfig(
        host=url,
        images=str(folder),
        mode=args.mode,
        users=args.users,
        step_users=args.step_users,
        step_rps=args.step_rps,
        max_rps=args.max_rps,
        user_rps=args.user_rps,
        step_s=args.step_s,
        duration_s=args.step_s * 40,
        batch_share=0.0,
        max_p95_ms=args.max_p95_ms,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = run_loadtest(config, output).summary
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sat = summary["saturation"]
    print(
        f"  load tester ({args.mode}): saturation {sat['rps']} req/s at {sat['users']} users, "
        f"peak {sat['peak_rps']} req/s; {sat['stop_reason']}",
        flush=True,
    )
    return {
        "saturation": sat,
        "steps": summary["steps"],
        "locust_cpu_s_per_request": cpu / summary["requests"] if summary["requests"] else None,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8, 16, 32], help="lean client counts")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per client count")
    parser.add_argument("--mode", choices=["ramp", "rate"], default="ramp")
    parser.add_argument("--users", type=int, default=48, help="ramp: the most users")
    parser.add_argument("--step-users", type=int, default=4)
    parser.add_argument("--step-rps", type=float, default=10.0)
    parser.add_argument("--max-rps", type=float, default=400.0)
    parser.add_argument("--user-rps", type=float, default=2.0)
    parser.add_argument("--step-s", type=float, default=8.0, help="seconds per step")
    parser.add_argument("--max-p95-ms", type=float, default=None, help="the load test's p95 limit (none)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the package and logs here")
    parser.add_argument("--out", type=Path, default=RESULTS / "loadtest_limit.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the comparison and write the JSON results."""
    args = _parser().parse_args(argv)

    workdir = bench_workdir(args.workdir, "shipyard-loadtest-bench-")
    home = workdir / "bentoml"
    from benchmarks.serving import build_package, register_package, start_service

    images = [make_jpeg(seed) for seed in range(16)]
    folder = workdir / "images"
    folder.mkdir(exist_ok=True)
    for i, data in enumerate(images):
        (folder / f"img_{i:02d}.jpg").write_bytes(data)
    pkg = build_package(workdir, images)
    tag = register_package(pkg)

    server, config = start_service(home, tag, workdir, "service")
    rounds: list[dict[str, Any]] = []
    try:
        server.wait_ready(path="/readyz")
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} (load {os.getloadavg()[0]:.1f})", flush=True)
            lean = measured_max(server, images, args.clients, args.seconds)
            tester = load_tester(server.url, folder, workdir / f"loadtest_{r + 1}", args)
            rounds.append({"measured_max": lean, "load_tester": tester, "load_1m": os.getloadavg()[0]})
    finally:
        server.stop()

    best = statistics.median(x["measured_max"]["rps"] for x in rounds)
    found = statistics.median((x["load_tester"]["saturation"]["rps"] or 0.0) for x in rounds)
    ratio = found / best if best else None
    report = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "load_1m_per_round": [x["load_1m"] for x in rounds],
        },
        "service": config,
        "settings": vars(args) | {"workdir": str(workdir), "out": str(args.out)},
        "rounds": rounds,
        "measured_max_rps": best,
        "saturation_rps": found,
        "ratio": ratio,
        "target": f"within {TARGET:.0%}",
        "met": ratio is not None and abs(1 - ratio) <= TARGET,
    }
    print(
        f"\nmeasured max (lean client, median of rounds): {best:.1f} req/s; load tester's saturation "
        f"({args.mode}): {found:.1f} req/s = {ratio:.2f}x -> {'within' if report['met'] else 'NOT within'} "
        f"{TARGET:.0%}; loads {report['machine']['load_1m_per_round']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, report, default=str)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
