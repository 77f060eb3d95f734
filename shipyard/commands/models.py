"""``shipyard register`` and ``shipyard models list|promote|rollback``."""

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

    pp = msub.add_parser(
        "promote",
        help="point an alias (production, candidate...) at a version; servers following it switch to it",
    )
    pp.add_argument("tag", help="NAME:VERSION to promote")
    pp.add_argument("--alias", required=True, help="the alias to move, e.g. production")
    pp.add_argument("--force", action="store_true", help="promote even if the default serving variant failed its gate")
    pp.add_argument(
        "--require-shadow-agreement",
        type=float,
        default=None,
        metavar="FRACTION",
        help="refuse unless the running server shadows this version with at least this top-1 agreement (e.g. 0.98)",
    )
    pp.add_argument("--server", default=None, help="the server whose /shadow to check (default http://127.0.0.1:3000)")
    pp.set_defaults(handler=_promote)

    rp = msub.add_parser("rollback", help="point an alias back at the version it pointed at before")
    rp.add_argument("name", help="model name")
    rp.add_argument("--alias", required=True, help="the alias to move back, e.g. production")
    rp.set_defaults(handler=_rollback)


def _register(args) -> int:
    from shipyard import api

    print(api.register(args.package, require_runnable=not args.allow_unrunnable))
    return 0


def _promote(args) -> int:
    from shipyard import api

    entry = api.promote(
        args.tag,
        args.alias,
        force=args.force,
        require_shadow_agreement=args.require_shadow_agreement,
        server=args.server,
    )
    print(f"{args.alias} -> {args.tag.split(':', 1)[0]}:{entry['version']} (moved {entry['moved']})")
    return 0


def _rollback(args) -> int:
    from shipyard import api

    entry = api.rollback(args.name, args.alias)
    print(f"{args.alias} -> {args.name}:{entry['version']} (rolled back {entry['moved']})")
    return 0


def _list(args) -> int:
    from shipyard import api
    from training.registry import list_models
    from training.tables import format_table

    rows = list_models(args.name)
    aliases = api.aliases(args.name)
    for row in rows:  # which aliases point at each version, and since when
        name, version = row["tag"].split(":", 1)
        row["aliases"] = {a: e["moved"] for a, e in aliases.get(name, {}).items() if e["version"] == version}
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
    moves = [
        [name, alias, f"{name}:{e['version']}", e["moved"].replace("T", " ").rstrip("Z"), e["by"],
         " <- ".join(reversed(e["stack"][:-1])) or "-"]
        for name, named in sorted(aliases.items()) for alias, e in sorted(named.items())
    ]
    if moves:
        print()
        print(format_table(["model", "alias", "target", "moved (UTC)", "by", "rollback to"], moves))
    return 0
