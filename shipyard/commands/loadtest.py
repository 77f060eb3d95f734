"""``shipyard loadtest``: runs ``python -m serving.loadtest`` with the same arguments.

The load tester belongs to the serving side, which training may not import (DESIGN.md), so this verb
only launches it, as ``shipyard serve`` launches ``bentoml serve``. ``shipyard loadtest --help`` shows
its options.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "loadtest",
        add_help=False,
        help="load-test a service with Locust; exit 1 when a limit is missed (see 'shipyard loadtest --help')",
    )
    p.set_defaults(handler=_forward, forward_args=True)


def _forward(args) -> int:
    import subprocess
    import sys

    return subprocess.call([sys.executable, "-m", "serving.loadtest", *args.forwarded])
