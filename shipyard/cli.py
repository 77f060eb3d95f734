"""``shipyard``: the one command line, a verb per stage, each a thin wrapper over the Python API
(:mod:`shipyard.api`) function of the same name.

Each verb lives in a module of ``shipyard.commands`` exposing ``register(subparsers)``; handlers import their
stage (TensorFlow, BentoML) only when they run, so ``shipyard --help`` stays quick. Every Shipyard error is
mapped here, in one place, to one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from edge.errors import run_mapped


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
    add_overrides(parser)


def add_overrides(
    parser: argparse.ArgumentParser, example: str = "train.epochs=3", what: str = "a config value"
) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``; ``example`` and ``what`` go into its help."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override {what}, e.g. --set {example} (repeatable)",
    )


def progress_printer(quiet: bool):
    """A ``progress`` callback for the API: each line to stderr as it comes, or nothing with ``--quiet``."""

    def progress(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    return progress


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run the verb's handler, map Shipyard errors to one line and exit code 2."""
    args = build_parser().parse_args(argv)
    return run_mapped(lambda: args.handler(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
