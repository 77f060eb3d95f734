"""What moving models inside a running server costs: a hot swap under load, and a shadow candidate.

Model: the serving benchmark's MobileNetV2 package (224 px, 10 classes, served as fp32 TFLite with the
embedding output; see ``benchmarks/serving.py``), registered twice (``v1``, ``v2``: the same files) in a
throw-away model store.
Load: 32 keep-alive clients posting 224 px JPEGs to ``/classify`` back to back (the serving benchmark's lean
client), on 127.0.0.1.

1. **swap**: ``bentoml serve`` following alias ``production``. Per round: ``--seconds`` of steady state, then
   ``--seconds`` during which the alias moves (``promote`` to the other version, 3 s in): the switch (load,
   warm-up, drain, release) happens inside the measured window. Target: p99 in the swap window <= 2x steady
   state, 0 errors.
2. **shadow**: three servers side by side, no shadow, shadow at 100% and at 10% mirror share (candidate: alias
   ``candidate``), measured in interleaved rounds. Target: primary throughput with the shadow >= 0.9x without.
   Also recorded: how many images each shadow predicted and how many requests it shed (``/shadow``): the
   candidate runs at idle priority, so what it covers is what the primary left of the CPU.

The machine's cores are shared with the load generator and whatever else runs: the 1-minute load average is
recorded with each figure. Prints a table and writes ``benchmarks/results/lifecycle.json``.

    .venv/bin/python benchmarks/lifecycle.py                        # 10 s windows, 3 rounds
    .venv/bin/python benchmarks/lifecycle.py --seconds 5 --rounds 1 # quicker
    .venv/bin/python benchmarks/lifecycle.py --skip-swap            # the shadow part only
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import bench_workdir, cpu_name, make_jpeg  # noqa: E402 - after the path set-up
from edge.files import write_json_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CLIENTS = 32


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per window")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--skip-shadow", action="store_true")
    p.add_argument("--skip-swap", action="store_true")
    return p


def _second_version(pkg: Path, workdir: Path, version: str) -> str:
    from edge.manifest import read_manifest, write_manifest
    from training.registry import register

    dst = workdir / f"package-{version}"
    if not dst.exists():
        shutil.copytree(pkg, dst)
    manifest = read_manifest(dst)
    manifest.version = version
    write_manifest(dst, manifest)
    return register(dst)


def _measure(server: Any, images: list[bytes], seconds: float, during: Any = None) -> Any:
    """One window of ``seconds`` at 32 clients; ``during`` runs 3 s into it (in a thread)."""
    from benchmarks.serving import Sample, run_round

    sample = Sample()
    timer = threading.Timer(min(3.0, seconds / 3), during) if during else None
    if timer:
        timer.start()
    run_round(server, images, CLIENTS, seconds, 1.0 if during is None else 0.0, sample)
    if timer:
        timer.join()
    return sample


def bench_swap(home: Path, name: str, tags: list[str], images: list[bytes], args: Any, workdir: Path) -> dict:
    """Steady state against the window around a promote, in ``args.rounds`` rounds."""
    import shipyard
    from benchmarks.serving import Sample, start_service

    shipyard.promote(tags[0], "production")
    server, _ = start_service(home, name, workdir, "swap", alias="production", alias_poll_s=0.5)
    steady, swap, moves = Sample(), Sample(), []
    try:
        server.wait_ready(path="/readyz")
        for r in range(args.rounds):
            target = tags[(r + 1) % 2]
            print(f"swap round {r + 1}/{args.rounds}: steady, then promote {target} (load {os.getloadavg()[0]:.1f})")
            for part, into in ((_measure(server, images, args.seconds), steady),
                               (_measure(server, images, args.seconds,
                                         lambda t=target: moves.append(shipyard.promote(t, "production"))), swap)):
                into.lat += part.lat
                into.wall += part.wall
                into.cpu += part.cpu
                for k, v in part.errors.items():
                    into.errors[k] = into.errors.get(k, 0) + v
            time.sleep(2.0)
    finally:
        server.stop()
    s, w = steady.summary(CLIENTS), swap.summary(CLIENTS)
    return {
        "steady": s,
        "swap": w,
        "moves": len(moves),
        "p99_ratio": (w["p99_ms"] / s["p99_ms"]) if s["p99_ms"] else None,
        "throughput_ratio": (w["throughput_rps"] / s["throughput_rps"]) if s["throughput_rps"] else None,
        "load_1m": os.getloadavg()[0],
    }


def bench_shadow(home: Path, name: str, tags: list[str], images: list[bytes], args: Any, workdir: Path) -> dict:
    """The primary's throughput without a shadow and with one at 100% and 10%, interleaved."""
    import shipyard
    from benchmarks.serving import Sample, start_service

    shipyard.promote(tags[0], "production")
    shipyard.promote(tags[1], "candidate")
    setups = {"none": {}, "shadow_100": {"shadow": "candidate", "shadow_share": 1.0},
              "shadow_10": {"shadow": "candidate", "shadow_share": 0.1}}
    servers = {k: start_service(home, name, workdir, k, alias="production", **v)[0] for k, v in setups.items()}
    samples = {k: Sample() for k in setups}
    try:
        for s in servers.values():
            s.wait_ready(path="/readyz")
        for r in range(args.rounds):
            order = list(setups)[r % 3:] + list(setups)[: r % 3]
            print(f"shadow round {r + 1}/{args.rounds} (load {os.getloadavg()[0]:.1f})")
            for key in order:
                part = _measure(servers[key], images, args.seconds)
                samples[key].lat += part.lat
                samples[key].wall += part.wall
                samples[key].errors.update(part.errors)
        coverage = {k: _shadow_coverage(servers[k].url) for k in setups if k != "none"}
    finally:
        for s in servers.values():
            s.stop()
    rows = {k: v.summary(CLIENTS) for k, v in samples.items()}
    base = rows["none"]["throughput_rps"] or 1.0
    return {**rows, "coverage": coverage, "ratio_100": rows["shadow_100"]["throughput_rps"] / base,
            "ratio_10": rows["shadow_10"]["throughput_rps"] / base, "load_1m": os.getloadavg()[0]}


def _shadow_coverage(url: str) -> dict[str, Any]:
    """What the shadow of the server at ``url`` saw: images mirrored, requests shed, still queued."""
    import json
    import urllib.request

    with urllib.request.urlopen(url + "/shadow", timeout=10) as resp:
        report = json.loads(resp.read())
    return {"mirrored_images": report["cumulative"]["images"], "shed_requests": report["shed"],
            "pending": report["pending"]}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workdir = bench_workdir(args.workdir, "shipyard-lifecycle-bench-")
    home = workdir / "bentoml"
    from benchmarks.serving import NAME, build_package, register_package

    images = [make_jpeg(seed) for seed in range(16)]
    pkg = build_package(workdir, images)
    tags = [register_package(pkg), _second_version(pkg, workdir, "v2")]
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "settings": {"clients": CLIENTS, "seconds": args.seconds, "rounds": args.rounds},
    }
    if not args.skip_swap:
        report["swap"] = bench_swap(home, NAME, tags, images, args, workdir)
    if not args.skip_shadow:
        report["shadow"] = bench_shadow(home, NAME, tags, images, args, workdir)
    swap = report.get("swap")
    report["targets"] = {
        **({"swap_p99_within_2x": swap["p99_ratio"] is not None and swap["p99_ratio"] <= 2.0,
            "swap_no_errors": not swap["swap"]["errors"] and not swap["steady"]["errors"]} if swap else {}),
        **({"shadow_100_throughput_0.9x": report["shadow"]["ratio_100"] >= 0.9,
            "shadow_10_throughput_0.9x": report["shadow"]["ratio_10"] >= 0.9} if "shadow" in report else {}),
    }
    _print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "lifecycle.json", report)
    return 0 if all(report["targets"].values()) else 1


def _print(report: dict[str, Any]) -> None:
    def row(label: str, r: dict[str, Any]) -> str:
        return (f"{label:<22} {r['requests']:>7} {r['throughput_rps']:>8.1f} {r['p50_ms'] or 0:>8.1f} "
                f"{r['p99_ms'] or 0:>8.1f}  {r['errors'] or '-'}")

    print(f"{'':<22} {'requests':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  errors")
    if "swap" in report:
        print(row("steady", report["swap"]["steady"]))
        print(row("around a swap", report["swap"]["swap"]))
    for key in ("none", "shadow_100", "shadow_10"):
        if "shadow" in report:
            print(row(f"primary, {key}", report["shadow"][key]))
    for key, seen in (report.get("shadow") or {}).get("coverage", {}).items():
        print(f"{key}: the shadow predicted {seen['mirrored_images']} images, shed {seen['shed_requests']} requests")
    print("targets:", report["targets"])


if __name__ == "__main__":
    raise SystemExit(main())
