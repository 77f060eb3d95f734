"""``shipyard serve [TAG]``: start the prediction service (``bentoml serve serving.service:Shipyard``).

It builds one :class:`~serving.config.ServeConfig` (an optional YAML's ``serve:`` section, ``--set
serve.key=value`` overrides, then the flags), checks that the model is in the BentoML model store, and
runs the server in a child process that gets the whole config as one ``SHIPYARD_SERVE_CONFIG`` JSON
(:mod:`serving.process`). The child imports neither TensorFlow nor ``training``.
"""

from __future__ import annotations

from typing import Any

from shipyard.cli import add_overrides


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a registered model over HTTP (BentoML): /classify, /classify_batch, /metadata, /feedback, /drift",
        description=(
            "Starts 'bentoml serve serving.service:Shipyard' with the model TAG (name:version or name:latest) from "
            "the BentoML model store. Listens on 127.0.0.1:3000 unless told otherwise. Ctrl+C stops it."
        ),
    )
    p.add_argument(
        "tag", nargs="?", default=None, help="model tag, e.g. digits:latest (default: serve.model)"
    )
    p.add_argument("--config", default=None, help="YAML with a serve: section (a pipeline config works)")
    add_overrides(p, "serve.max_batch_size=8", "a serve setting")
    p.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 3000)")
    p.add_argument(
        "--variant", default=None, help="variant to serve, e.g. fp32.tflite (default), model.onnx or int8.tflite"
    )
    p.add_argument("--workers", type=int, default=None, help="API worker processes (default 1)")
    p.add_argument(
        "--model-service",
        action="store_true",
        default=None,
        help="run the model in its own process shared by the API workers (bentoml.depends)",
    )
    p.add_argument(
        "--alias",
        default=None,
        help="follow this alias of the model NAME (e.g. production): switch versions without a restart when it moves",
    )
    p.add_argument(
        "--shadow",
        default=None,
        help="also run the version this alias (e.g. candidate) points at on mirrored traffic; report at /shadow",
    )
    p.add_argument("--shadow-share", type=float, default=None, help="share of requests mirrored to the shadow (0-1)")
    p.add_argument("--dry-run", action="store_true", help="print the command and settings, start nothing")
    p.set_defaults(handler=_serve)


def serve_config(args: Any) -> Any:
    """The :class:`ServeConfig` from ``--config``, ``--set`` and the flags (in that order of precedence).

    Raises:
        ConfigError: a bad file, key or value. PackageError: no tag, or one the model store lacks.
    """
    from shipyard.api import serve_config_for

    flags = {
        "host": args.host,
        "port": args.port,
        "variant": args.variant,
        "workers": args.workers,
        "model_service": args.model_service,
        "alias": args.alias,
        "shadow": args.shadow,
        "shadow_share": args.shadow_share,
    }
    return serve_config_for(args.tag, args.config, args.overrides, flags)


def _serve(args) -> int:
    from serving.process import run_foreground, serve_command
    from serving.settings import model_tag, served_variant_file

    config = serve_config(args)
    if args.dry_run:
        print(" ".join(serve_command(config)))
        for key, value in sorted(config.to_env().items()):
            print(f"{key}={value}")
        return 0
    following = f" (alias {config.alias}: {model_tag(config)})" if config.alias else ""
    print(
        f"serving {config.model}{following} (variant {served_variant_file(config)}) on "
        f"http://{config.host}:{config.port}; Ctrl+C stops",
        flush=True,
    )
    return run_foreground(config)
