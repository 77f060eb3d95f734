"""``shipyard data inspect`` and ``shipyard demo-data``."""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.cli import add_overrides


def register(sub) -> None:
    p = sub.add_parser("data", help="look at a dataset")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    ip = dsub.add_parser("inspect", help="counts, sizes, unreadable files, and the loading plan")
    ip.add_argument("dir", help="image folder")
    ip.add_argument("config", nargs="?", default=None, help="optional config (for image size, budget, batch)")
    add_overrides(ip, "data.memory_budget_mb=512")
    ip.add_argument("--json", action="store_true")
    ip.set_defaults(handler=_inspect)

    p = sub.add_parser("demo-data", help="write the built-in digits demo dataset (from scikit-learn)")
    p.add_argument("out", help="output folder")
    p.add_argument("--size", type=int, default=32, help="image size in pixels (default 32)")
    p.set_defaults(handler=_demo)


def _inspect(args) -> int:
    from shipyard.config import load_pipeline_config
    from training.data import inspect_dataset
    from training.models import image_size_for

    config = load_pipeline_config(args.config, args.overrides, data=args.dir)  # a whole pipeline file works
    size = image_size_for(config.model, config.data.image_size)
    report = inspect_dataset(Path(args.dir), config.data, size, training=config)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.to_table())
    return 0


def _demo(args) -> int:
    from shipyard import api
    from training.tables import format_table

    counts = api.demo_data(args.out, size=args.size)
    print(format_table(["class", "images"], [[k, v] for k, v in counts.items()] + [["total", sum(counts.values())]]))
    print(Path(args.out))
    return 0
