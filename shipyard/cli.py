"""``shipyard``: one verb per stage. Each verb lives in a module of ``shipyard.commands`` exposing
``register(subparsers)``; handlers import heavy libraries (TensorFlow) only when they run."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from edge.errors import ShipyardError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb from ``shipyard.commands``."""
    import shipyard.commands as commands

    parser = argparse.ArgumentParser(
        prog="shipyard",
        description="From a folder of images to a classifier, edge models and a prediction service.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"shipyard.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def add_config_args(parser: argparse.ArgumentParser, *, config_required: bool = True) -> None:
    """CONFIG plus ``--set key.sub=value`` (repeatable)."""
    parser.add_argument("config", nargs=None if config_required else "?", help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run the verb's handler, map Shipyard errors to one line and exit code 2."""
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    # A verb that hands its arguments to another program (set_defaults(forward_args=True)) gets everything
    # after its name, unparsed and in order, in ``args.forwarded``; every other verb is parsed as usual.
    args, extra = parser.parse_known_args(raw)
    if getattr(args, "forward_args", False):
        args.forwarded = raw[raw.index(args.command) + 1 :]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = args.handler(args)
    except ShipyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
