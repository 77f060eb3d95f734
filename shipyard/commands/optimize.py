"""``shipyard optimize PACKAGE``: build, check and report the edge variants of a model package."""

from __future__ import annotations

import sys

from shipyard.cli import add_overrides, progress_printer


def register(sub) -> None:
    from edge.variants import VARIANTS

    p = sub.add_parser(
        "optimize",
        help="quantize, prune, cluster and export a package (TFLite, ONNX, SavedModel) and check every variant",
        description=(
            "Builds the variants into PACKAGE/variants/, checks each against the Keras model on the test split "
            "(parity gates), measures size and latency, writes report.md/.html/.json and rewrites the manifest. "
            "Exits 1 when a variant failed to export or failed its gate."
        ),
    )
    p.add_argument("package", help="model package folder (from 'shipyard train')")
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="optional YAML whose optimize: section replaces the package's (the data section is the package's)",
    )
    add_overrides(p, "optimize.qat_epochs=1", "a config value")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=None,
        metavar="VARIANT",
        help=f"variants to build (default: optimize.variants or all): {', '.join(VARIANTS)}",
    )
    p.add_argument("--data", default=None, help="the training data folder, if it moved since training")
    p.add_argument("--register", action="store_true", help="update the package in the BentoML model store")
    p.add_argument("--quiet", action="store_true", help="no per-variant progress")
    p.set_defaults(handler=_optimize)


def _optimize(args) -> int:
    from shipyard import api
    from training.optimize import terminal_table

    progress = progress_printer(args.quiet)

    outcome = api.optimize(
        args.package,
        args.config,
        overrides=args.overrides,
        variants=args.variants,
        data=args.data,
        register=args.register,
        progress=progress,
    )
    print(terminal_table(outcome.results, outcome.reference))
    for note in outcome.notes:
        print(f"note: {note}")
    print(f"\nreport: {outcome.package / 'report.html'}")
    if outcome.failed:
        names = ", ".join(f"{r.key} ({r.status})" for r in outcome.failed)
        print(
            f"{len(outcome.failed)} of {len(outcome.results)} variants did not pass: {names}", file=sys.stderr
        )
    return outcome.exit_code
