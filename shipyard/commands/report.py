"""``shipyard report PACKAGE`` (the self-contained HTML page) and ``shipyard plot PACKAGE KIND...``."""

from __future__ import annotations

import sys
from pathlib import Path

from edge.config import ConfigError
from shipyard.cli import add_overrides


def _kinds() -> list[str]:
    from training.visualize import PLOTS

    return list(PLOTS)


def _common(p) -> None:
    p.add_argument("--data", default=None, help="the training data folder, if it moved since training")
    add_overrides(p, "report.embedding_method=pca", "the package's config")


def register(sub) -> None:
    kinds = _kinds()
    p = sub.add_parser(
        "report",
        help="write the package's report page (model card, metrics, pictures, optimization) as one HTML file",
        description=(
            "Writes PACKAGE/index.html: one self-contained page (images embedded, no network needed) with the "
            "model card, the metrics, every picture of the data, the network and the training, and the "
            "optimization report when 'shipyard optimize' wrote one (report.json). Pictures made at the end of "
            "training are reused; missing ones are made now."
        ),
    )
    p.add_argument("package", help="model package folder")
    p.add_argument(
        "--only",
        nargs="+",
        choices=kinds,
        default=None,
        metavar="KIND",
        help=f"show only these pictures: {', '.join(kinds)}",
    )
    p.add_argument("--refresh", action="store_true", help="remake the pictures shown")
    p.add_argument("--out", default=None, help="write the page here instead of PACKAGE/index.html")
    _common(p)
    p.set_defaults(handler=_report)

    p = sub.add_parser(
        "plot",
        help="make pictures of a package (into PACKAGE/plots/, or --out FILE for one)",
        description="Makes the named pictures: " + ", ".join(kinds) + ". 'all' makes every one.",
    )
    p.add_argument("package", help="model package folder")
    p.add_argument(
        "kinds", nargs="+", choices=[*kinds, "all"], metavar="KIND", help="picture(s) to make, or all"
    )
    p.add_argument(
        "--out", default=None, help="write the one picture to this PNG file (the package is left alone)"
    )
    _common(p)
    p.set_defaults(handler=_plot)


def _line(result) -> str:
    where = result.file if result.ok else f"{result.status}: {result.reason}"
    return f"{result.kind:<18} {where} ({result.seconds:.1f}s)"


def _report(args) -> int:
    from shipyard import api

    def progress(result) -> None:
        print(_line(result), file=sys.stderr, flush=True)

    outcome = api.report(
        args.package,
        only=args.only,
        refresh=args.refresh,
        data=args.data,
        overrides=args.overrides,
        out=args.out,
        progress=progress,
    )
    missing = [r for r in outcome.rows if r.get("status") != "ok"]
    for r in missing:
        print(f"not shown: {r['kind']} ({r.get('status')}: {r.get('reason')})", file=sys.stderr)
    extra = ", with the optimization report" if outcome.optimization else ""
    print(f"{outcome.embedded} pictures{extra}")
    print(outcome.path)
    return 0


def _plot(args) -> int:
    from edge.manifest import read_manifest
    from training.report import config_for
    from training.visualize import PlotContext, make_plot, write_plots

    kinds = _kinds() if "all" in args.kinds else list(dict.fromkeys(args.kinds))
    manifest = read_manifest(args.package)
    config = config_for(manifest, args.overrides)
    if args.out is not None:
        if len(kinds) != 1:
            raise ConfigError(
                f"--out takes one picture, got {len(kinds)} ({', '.join(kinds)}); drop --out to write "
                "them into PACKAGE/plots/"
            )
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        results = [make_plot(PlotContext(args.package, manifest, config, data=args.data), kinds[0], out)]
    else:
        results = write_plots(args.package, manifest, config, kinds=kinds, data=args.data)
        for r in results:
            if r.ok:
                r.file = str(Path(args.package) / r.file)
    for r in results:
        print(_line(r), file=sys.stdout if r.ok else sys.stderr)
    return 0 if all(r.ok for r in results) else 1
