"""``shipyard loadtest`` and ``shipyard loadtest sweep``: Locust against a Shipyard service, with limits.

The options and the run are the load tester's own (:mod:`serving.loadtest.cli`, light to import: no Locust,
no BentoML); this verb registers them and calls it in this process. With ``--serve TAG`` the load tester
starts ``bentoml serve`` itself.
"""

from __future__ import annotations


def register(sub) -> None:
    from serving.loadtest.cli import add_arguments

    p = sub.add_parser(
        "loadtest",
        help="load-test a service with Locust; exit 1 when a limit is missed",
        description=(
            "Runs Locust against a running service (--host) or one it starts (--serve TAG), checks the limits "
            "(p95, failure ratio, throughput) and writes summary.json with Locust's CSV and HTML reports. "
            "'shipyard loadtest sweep TAG' restarts the service over a grid of batching settings."
        ),
    )
    add_arguments(p)
    p.set_defaults(handler=_loadtest)


def _loadtest(args) -> int:
    from serving.loadtest.cli import run_from_args

    return run_from_args(args)
