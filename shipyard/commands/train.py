"""``shipyard train``, ``evaluate`` and ``pipeline``."""

from __future__ import annotations

import argparse
from pathlib import Path

from shipyard.cli import add_config_args, progress_printer
from shipyard.commands.crossval import add_folds_args, check_plain, run_folds


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="runs", help="parent folder of runs (default: runs/)")
    p.add_argument("--data", default=None, help="data folder (overrides data.path)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress")


def register(sub) -> None:
    p = sub.add_parser("train", help="train, evaluate and package a classifier")
    add_config_args(p)
    _common(p)
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run (default: the newest unfinished run of this model)")
    p.set_defaults(handler=_train)

    p = sub.add_parser("evaluate", help="evaluate a package on its test split or another folder (or --folds K CONFIG)")
    p.add_argument("package", help="model package folder (with --folds: the config file)")
    p.add_argument("data", nargs="?", default=None, help="folder of class folders to evaluate on")
    p.add_argument("--compare", default=None, metavar="OTHER", help="another package to compare with")
    add_folds_args(p)
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("pipeline", help="train, evaluate, package, optimize and register in one go")
    add_config_args(p)
    _common(p)
    p.add_argument("--no-optimize", action="store_true", help="skip building the TFLite/ONNX variants")
    p.add_argument(
        "--allow-failed-gates",
        action="store_true",
        help="register the package even when its default serving variant failed its gate (not recommended)",
    )
    p.set_defaults(handler=_pipeline)


def _verbosity(args) -> int:
    """Keras progress: a bar on a terminal, one line per epoch in a log, nothing with --quiet."""
    import sys

    if args.quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _train(args) -> int:
    from shipyard import api

    outcome = api.train(
        args.config, data=args.data, output=args.output, resume=args.resume, verbose=_verbosity(args),
        overrides=args.overrides,
    )
    print(outcome.evaluation_table)
    print(f"\ntrained {outcome.epochs} epochs in {outcome.seconds:.1f}s")
    print(outcome.package)
    return 0


def _evaluate(args) -> int:
    from shipyard import api

    if args.folds is not None:
        return run_folds(args)
    check_plain(args)
    print(api.evaluate(Path(args.package), args.data, compare=args.compare).table)
    return 0


def _pipeline(args) -> int:
    import sys

    from shipyard import api

    progress = progress_printer(args.quiet)

    result = api.pipeline(
        args.config, data=args.data, output=args.output, verbose=_verbosity(args), optimize=not args.no_optimize,
        progress=progress, overrides=args.overrides, allow_failed_gates=args.allow_failed_gates,
    )
    outcome = result.train
    print(outcome.evaluation_table)
    if result.optimize is not None:
        from training.optimize import terminal_table

        print()
        print(terminal_table(result.optimize.results, result.optimize.reference))
    if result.tag is None and result.blocked is None:
        print(f"\ntrained {outcome.epochs} epochs in {outcome.seconds:.1f}s as a worker; the chief registers the package")
    elif result.tag is None:
        print(
            f"\ntrained {outcome.epochs} epochs in {outcome.seconds:.1f}s; NOT registered: {result.blocked}. Fix the "
            "variant (shipyard optimize), or pass --allow-failed-gates to register it anyway",
            file=sys.stderr,
        )
    else:
        print(f"\ntrained {outcome.epochs} epochs in {outcome.seconds:.1f}s; registered as {result.tag}")
    if result.report_page is not None:
        print(f"report page (open it in a browser): {result.report_page}")
    print(result.package)
    return result.exit_code
