"""``shipyard loadtest`` and ``shipyard loadtest sweep``: Locust against a Shipyard service, with limits.

The front door registers these options with :func:`add_arguments` and runs them in process with
:func:`run_from_args`; ``python -m serving.loadtest ...`` does the same through :func:`main`. Importing this
module loads neither Locust, TensorFlow, ``training`` nor BentoML: Locust and the server run as subprocesses
(see :mod:`serving.loadtest`), and the modules that start them are imported when a run starts.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.config import ConfigError, load_section, validate_config
from serving.loadtest.config import LoadTestConfig

DEFAULT_IMAGES = "demo_data"


def _scenarios() -> list[str]:
    return list(typing.get_args(LoadTestConfig.model_fields["scenario"].annotation))


def _modes() -> list[str]:
    return list(typing.get_args(LoadTestConfig.model_fields["mode"].annotation))


#: Load options whose flag sets one ``loadtest.*`` key as it is (``dest`` -> key).
_FLAG_KEYS = {
    "remote_workers": "remote_workers",
    "master_bind": "master_bind_host",
    "master_port": "master_port",
    "mode": "mode",
    "step_duration": "step_s",
    "step_users": "step_users",
    "step_rps": "step_rps",
    "max_rps": "max_rps",
    "user_rps": "user_rps",
}


def _load_args(p: argparse.ArgumentParser) -> None:
    """Options shared by a single run and a sweep; each overrides its ``loadtest.*`` config key.

    They may come before ``sweep`` or after it: the sweep's parser is made with ``argument_default=SUPPRESS``
    so that an option it was not given leaves the value given before ``sweep`` in place.
    """
    _config_args(p)
    _traffic_args(p)
    _locust_args(p)
    _mode_args(p)
    _limit_and_output_args(p)


def _config_args(p: argparse.ArgumentParser) -> None:
    """The config file and ``--set`` overrides."""
    p.add_argument("--config", metavar="FILE", help="YAML config; its loadtest: section is used")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set loadtest.think_max_s=0 (repeatable)",
    )


def _traffic_args(p: argparse.ArgumentParser) -> None:
    """Who sends what: users, their start rate, the run time, the images, the scenario, think time."""
    p.add_argument("--users", type=int, help="simulated users (loadtest.users, default 8)")
    p.add_argument("--spawn-rate", type=float, help="users started per second (default 8)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="run time (default 20)")
    p.add_argument(
        "--images",
        metavar="DIR",
        help=f"folder of images to upload (default: loadtest.images, else ./{DEFAULT_IMAGES})",
    )
    p.add_argument(
        "--scenario",
        choices=_scenarios(),
        help="traffic: good images; bad-inputs: bad requests mixed into good traffic",
    )
    p.add_argument("--batch-share", type=float, help="share of requests to /classify_batch (0.2)")
    p.add_argument("--think", metavar="MIN,MAX", help="think time in seconds (default 0.1,0.5)")


def _locust_args(p: argparse.ArgumentParser) -> None:
    """Where the simulated users run: local and remote Locust workers, the master's address."""
    p.add_argument(
        "--workers",
        type=int,
        help="Locust worker processes under one master on this machine (default 0: a single process)",
    )
    p.add_argument(
        "--remote-workers",
        type=int,
        help="also wait for this many Locust workers started on other hosts (they get the command to run)",
    )
    p.add_argument(
        "--master-bind",
        metavar="HOST",
        help="address the Locust master listens on, e.g. 0.0.0.0 for remote workers (default 127.0.0.1)",
    )
    p.add_argument("--master-port", type=int, help="port the Locust master listens on (default: a free one)")


def _mode_args(p: argparse.ArgumentParser) -> None:
    """How the load grows: fixed users, a stepped user ramp, or a stepped arrival rate."""
    p.add_argument(
        "--mode",
        choices=_modes(),
        help="users: fixed users with think time (default); ramp: users stepped up without think time; "
        "rate: an open workload, a target arrival rate stepped up. Stepped modes stop when p95 or errors "
        "break the limits and report the saturation throughput",
    )
    p.add_argument("--step-duration", type=float, metavar="SECONDS", help="seconds per step (default 10)")
    p.add_argument("--step-users", type=int, help="ramp: users added per step, up to --users (default 2)")
    p.add_argument("--step-rps", type=float, help="rate: requests/s added per step (default 5)")
    p.add_argument("--max-rps", type=float, help="rate: the highest arrival rate tried (default 200)")
    p.add_argument("--user-rps", type=float, help="rate: requests/s per simulated user (default 1)")


def _limit_and_output_args(p: argparse.ArgumentParser) -> None:
    """The variant served, the limits that fail the run, and where the report goes."""
    p.add_argument("--variant", help="variant the started service serves (default: the server's)")
    p.add_argument("--max-p95-ms", type=float, help="fail when p95 latency exceeds this")
    p.add_argument("--max-fail-ratio", type=float, help="fail above this failure ratio (0.01)")
    p.add_argument("--min-rps", type=float, help="fail below this throughput")
    p.add_argument("--output", metavar="DIR", help="report folder (default runs/loadtest/<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


HELP = "load-test a service with Locust; exit 1 when a limit is missed"
DESCRIPTION = (
    "Runs Locust headless against --host, or against a service it starts itself for a model tag "
    "(--serve TAG, on 127.0.0.1), and writes Locust's CSV and HTML reports and summary.json into "
    "--output. Exits 1 when a limit (--max-p95-ms, --max-fail-ratio, --min-rps) is missed, 2 when "
    "the test could not run. 'shipyard loadtest sweep TAG' compares batching settings."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``shipyard loadtest`` (and of its ``sweep`` subcommand) on ``parser``;
    :func:`run_from_args` runs what was parsed. Sets no ``handler`` default: the caller owns dispatch."""
    _load_args(parser)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--host", default=None, help="URL of a running service (default loadtest.host)")
    target.add_argument(
        "--serve",
        default=None,
        metavar="TAG",
        help="start 'bentoml serve' for the model TAG on a free port of 127.0.0.1 and test it",
    )
    parser.add_argument("--serve-workers", type=int, default=None, help="workers of the started service")
    lsub = parser.add_subparsers(dest="loadtest_command", metavar="[sweep]")
    sp = lsub.add_parser(
        "sweep",
        argument_default=argparse.SUPPRESS,
        help="restart the service over max_batch_size x max_latency_ms (x workers) and pick the best",
        description=(
            "For each point of the grid, starts 'bentoml serve' for TAG with those batching settings, runs "
            "the same load, and writes sweep.csv, sweep.md, sweep.png (throughput against p95) and sweep.json. "
            "Recommends the highest throughput among the points meeting the limits; exits 1 when none does."
        ),
    )
    sp.add_argument("tag", help="model tag, name:version or name:latest")
    _load_args(sp)
    sp.add_argument(
        "--batch-sizes", dest="sweep_batch_sizes", type=int, nargs="+", help="max_batch_size values (1 8 32)"
    )
    sp.add_argument(
        "--latencies-ms",
        dest="sweep_latencies_ms",
        type=int,
        nargs="+",
        help="max_latency_ms values (50 1000)",
    )
    sp.add_argument(
        "--serve-workers", dest="sweep_workers", type=int, nargs="+", help="service worker counts (1)"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run what :func:`add_arguments`' options parsed into ``args``: one load test, or a sweep.

    Returns:
        0 when the limits were met, 1 when one was missed, 2 when the test could not run.

    Raises:
        ConfigError: a bad config file, override or flag value (the caller prints it as one line).
    """
    if getattr(args, "loadtest_command", None) == "sweep":
        return _sweep(args)
    return _run(args)


def _config(args) -> LoadTestConfig:
    """``loadtest:`` from the config file and ``--set``, then the flags; validated together."""
    base = load_section(args.config, "loadtest", args.overrides, command="shipyard loadtest")
    flags: dict[str, Any] = {
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "duration_s": args.duration,
        "images": args.images,
        "scenario": args.scenario,
        "batch_share": args.batch_share,
        "workers": args.workers,
        "variant": args.variant,
        "max_p95_ms": args.max_p95_ms,
        "max_fail_ratio": args.max_fail_ratio,
        "min_rps": args.min_rps,
        "host": getattr(args, "host", None),
    }
    if args.think is not None:
        try:
            flags["think_min_s"], flags["think_max_s"] = (float(v) for v in args.think.split(","))
        except ValueError:
            raise ConfigError(
                f"--think {args.think!r} is not MIN,MAX seconds, e.g. --think 0.1,0.5"
            ) from None
    for key in ("serve_workers", "sweep_batch_sizes", "sweep_latencies_ms", "sweep_workers"):
        flags[key] = getattr(args, key, None)
    for dest, key in _FLAG_KEYS.items():
        flags[key] = getattr(args, dest, None)
    return validate_config(
        LoadTestConfig, {**base, **{k: v for k, v in flags.items() if v is not None}}, "loadtest"
    )


def _with_images(config: LoadTestConfig) -> LoadTestConfig:
    """``config`` with its image folder resolved: the Locust processes get the config as it is.

    Raises:
        ConfigError: the folder does not exist.
    """
    return config.model_copy(update={"images": str(_images(config))})


def _images(config: LoadTestConfig) -> Path:
    folder = Path(config.images or DEFAULT_IMAGES)
    if not folder.is_dir():
        hint = (
            f"write the demo data with 'shipyard demo-data {DEFAULT_IMAGES}'"
            if not config.images
            else "pass --images DIR with a folder of images"
        )
        raise ConfigError(f"image folder '{folder}' does not exist; {hint}")
    return folder.resolve()


def _output(args, kind: str) -> Path:
    return Path(args.output) if args.output else _default_output(kind)


def _default_output(kind: str) -> Path:
    return Path("runs") / "loadtest" / f"{kind}{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _progress(args):
    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    return say


def run_config(
    config: LoadTestConfig,
    *,
    serve: str | None = None,
    output: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """Run one load test of ``config`` (against ``config.host``, or a server started for the model tag
    ``serve``) and write its reports into ``output`` (default ``runs/loadtest/<time>``).

    Returns:
        :class:`~serving.loadtest.runner.LoadTestOutcome`.

    Raises:
        ConfigError: the image folder does not exist. LoadTestError: the test could not run.
    """
    from serving.loadtest.runner import run_loadtest, serve_config_for

    config = _with_images(config)
    server = serve_config_for(serve, config) if serve else None
    folder = Path(output) if output is not None else _default_output("")
    return run_loadtest(config, folder, serve=server, progress=progress)


def _run(args: argparse.Namespace) -> int:
    from serving.loadtest.errors import LoadTestError

    try:
        outcome = run_config(_config(args), serve=args.serve, output=args.output, progress=_progress(args))
    except LoadTestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(outcome.summary, outcome.output)
    return outcome.exit_code


def _print_summary(summary: dict[str, Any], output: Path) -> None:
    from serving.loadtest.limits import missed_limits
    from serving.loadtest.report import endpoint_table, limits_table, saturation_line, steps_table

    if summary.get("steps"):
        print(steps_table(summary))
        print(f"\n{saturation_line(summary)}\n")
    print(endpoint_table(summary))
    if summary["locust_workers"]:
        print(
            f"\nLocust workers: {summary['workers_reporting']} of {summary['locust_workers']} sent requests"
        )
    if summary["server_metrics"]["note"]:
        print(f"note: {summary['server_metrics']['note']}")
    print()
    print(limits_table(summary))
    print(f"\nreports: {output}/summary.json, report.html, locust_stats.csv")
    if not summary["passed"]:
        print(f"limits missed: {missed_limits(summary)}", file=sys.stderr)


def _sweep(args: argparse.Namespace) -> int:
    from serving.loadtest.report import format_value
    from serving.loadtest.runner import serve_config_for
    from serving.loadtest.sweep import run_sweep, sweep_grid, sweep_table

    config = _with_images(_config(args))
    if "mode" not in config.model_fields_set:  # a sweep looks for each point's limit unless told otherwise
        config = config.model_copy(update={"mode": "ramp"})
    points = sweep_grid(
        serve_config_for(args.tag, config),
        config.sweep_batch_sizes,
        config.sweep_latencies_ms,
        config.sweep_workers,
    )
    outcome = run_sweep(points, config, _output(args, "sweep-"), progress=_progress(args))
    print(sweep_table(outcome.rows, outcome.recommended))
    for note in outcome.notes:
        print(f"note: {note}")
    best = outcome.recommended
    if best is None:
        print("no configuration met the limits", file=sys.stderr)
    else:
        print(
            f"\nrecommended: max_batch_size={best['max_batch_size']} max_latency_ms={best['max_latency_ms']} "
            f"workers={best['workers']} ({best['rps']:.1f} req/s, p95 {best['p95_ms']:.0f} ms)"
        )
    confirmation = outcome.confirmation
    if confirmation is not None:
        print(
            f"re-measured: {confirmation['rps']:.1f} req/s at p95 {format_value(confirmation['p95_ms'], '.0f')} ms "
            f"({format_value(confirmation['ratio_to_sweep'], '.2f')}x), "
            f"{'meets' if confirmation['meets_limits'] else 'misses'} the limits"
        )
    print(f"reports: {outcome.output}/sweep.md, sweep.csv, sweep.png")
    return outcome.exit_code


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.loadtest ARGS`` = ``shipyard loadtest ARGS``; Shipyard errors are one line, exit 2."""
    from edge.errors import run_mapped

    parser = argparse.ArgumentParser(prog="shipyard loadtest", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_mapped(lambda: run_from_args(args))
