"""``shipyard ensemble PKG1 PKG2 ... --output DIR``: one model averaging the members' probabilities."""

from __future__ import annotations

from shipyard.cli import progress_printer


def register(sub) -> None:
    p = sub.add_parser(
        "ensemble",
        help="build one model that averages several packages' probabilities, as a new package",
        description=(
            "Copies the members into one Keras graph whose output is the mean of their probabilities, "
            "evaluates it beside each member on their common test split and writes it as a normal package "
            "(optimize, register, serve and shipyard-edge work on it unchanged). The members need the same "
            "labels, input size and test split (train them on the same data with the same data.seed)."
        ),
    )
    p.add_argument("packages", nargs="+", metavar="PACKAGE", help="two or more model package folders")
    p.add_argument("--output", required=True, metavar="DIR", help="the new package folder (its name is the version)")
    p.add_argument("--name", default=None, help="the model name (default: the first member's name + '-ensemble')")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=_ensemble)


def _ensemble(args) -> int:
    from shipyard import api

    progress = progress_printer(args.quiet)

    outcome = api.ensemble(args.packages, args.output, name=args.name, progress=progress)
    print(outcome.table)
    print(outcome.package)
    return 0
