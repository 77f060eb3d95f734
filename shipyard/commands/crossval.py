"""``shipyard evaluate --folds K CONFIG [DATA]``: K-fold cross-validation (the options and the handler; the
``evaluate`` verb itself is registered in :mod:`shipyard.commands.train`)."""

from __future__ import annotations

import argparse

from edge.config import ConfigError
from shipyard.cli import add_overrides, progress_printer


def add_folds_args(p: argparse.ArgumentParser) -> None:
    """``--folds K`` and what cross-validation also takes: ``--set``, ``--output``, ``--quiet``."""
    p.add_argument(
        "--folds", type=int, default=None, metavar="K",
        help="cross-validate instead: PACKAGE is then a config file (DATA its data folder); trains K models on "
        "stratified folds and reports each metric's mean and standard deviation",
    )
    add_overrides(p, "train.epochs=3", "a config value (with --folds)")
    p.add_argument("--output", default="runs", help="with --folds: parent folder of runs (default: runs/)")
    p.add_argument("--quiet", action="store_true", help="with --folds: no progress lines")


def check_plain(args) -> None:
    """Refuse the cross-validation options on a plain evaluation."""
    if args.overrides or args.output != "runs":
        raise ConfigError("--set and --output go with --folds K CONFIG; a package is evaluated as it is")


def run_folds(args) -> int:
    """Cross-validate ``args.package`` (a config) with ``args.folds`` folds; print the table and the folder."""
    from shipyard import api

    progress = progress_printer(args.quiet)

    outcome = api.cross_validate(
        args.package, folds=args.folds, data=args.data, output=args.output, overrides=args.overrides,
        progress=progress,
    )
    print(outcome.table)
    print(f"\n{outcome.k}-fold cross-validation: mean and standard deviation over the folds")
    print(outcome.folder)
    return 0
