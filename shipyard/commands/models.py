"""``shipyard register`` and ``shipyard models list``."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("register", help="put a package into the BentoML model store")
    p.add_argument("package", help="model package folder")
    p.add_argument(
        "--allow-unrunnable",
        action="store_true",
        help="register a package with no TFLite/ONNX variant (nothing can serve it until it is optimized)",
    )
    p.set_defaults(handler=_register)

    p = sub.add_parser("models", help="the model store")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lp = msub.add_parser("list", help="registered packages with their key metrics")
    lp.add_argument("name", nargs="?", default=None, help="only this model name")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(handler=_list)


def _register(args) -> int:
    from shipyard import api

    print(api.register(args.package, require_runnable=not args.allow_unrunnable))
    return 0


def _list(args) -> int:
    from training.registry import list_models
    from training.tables import format_table

    rows = list_models(args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no Shipyard models in the store; 'shipyard register PACKAGE' adds one")
        return 0

    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    print(format_table(
        ["tag", "created", "base", "classes", "accuracy", "macro F1", "variants", "size MB"],
        [[r["tag"], r["created"], r["base"], r["classes"], num(r["accuracy"], ".4f"), num(r["macro_f1"], ".4f"),
          r["variants"], f"{r['size_mb']:.2f}"] for r in rows],
    ))
    return 0
