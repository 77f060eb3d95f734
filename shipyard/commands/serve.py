"""``shipyard serve [TAG]``: start the prediction service (``bentoml serve serving.service:Shipyard``).

The service runs in a child process that imports neither TensorFlow nor ``training``; this command never
imports ``serving`` either. It builds a :class:`~edge.config.ServeConfig` (an optional YAML's ``serve:``
section, ``--set serve.key=value`` overrides, then the flags), checks that the model is in the BentoML
model store, and hands every setting down as ``SHIPYARD_*`` environment variables.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

SERVICE = "serving.service:Shipyard"


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
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a serve setting, e.g. --set serve.max_batch_size=8 (repeatable)",
    )
    p.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 3000)")
    p.add_argument(
        "--variant", default=None, help="variant to serve, e.g. model.onnx (default) or int8.tflite"
    )
    p.add_argument("--workers", type=int, default=None, help="API worker processes (default 1)")
    p.add_argument(
        "--model-service",
        action="store_true",
        default=None,
        help="run the model in its own process shared by the API workers (bentoml.depends)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command and settings, start nothing")
    p.set_defaults(handler=_serve)


def serve_config(args: Any) -> Any:
    """The :class:`ServeConfig` from ``--config``, ``--set`` and the flags (in that order of precedence).

    Raises:
        ConfigError: a bad file, key or value.
    """
    from edge.config import load_section, validate_config
    from serving.config import ServeConfig

    raw = load_section(args.config, "serve", args.overrides, command="shipyard serve")
    source = str(args.config) if args.config is not None else "serve settings"
    flags = {
        "model": args.tag,
        "host": args.host,
        "port": args.port,
        "variant": args.variant,
        "workers": args.workers,
        "model_service": args.model_service,
    }
    raw.update({k: v for k, v in flags.items() if v is not None})
    return validate_config(ServeConfig, raw, source)


def service_root() -> Path:
    """The directory that holds the ``serving`` package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("serving")
    if spec is None or not spec.submodule_search_locations:
        from edge.errors import ShipyardError

        raise ShipyardError("the serving package is not installed; pip install -e '.[serve]'")
    return Path(next(iter(spec.submodule_search_locations))).parent


def command(config: Any) -> list[str]:
    """The ``bentoml serve`` command line for ``config``."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE,
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--working-dir",
        str(service_root()),
    ]


def _serve(args) -> int:
    from edge.errors import PackageError
    from training.registry import package_path

    config = serve_config(args)
    if config.model is None:
        raise PackageError(
            "no model to serve: pass a tag (shipyard serve NAME:VERSION, or NAME:latest); "
            "'shipyard models list' shows the registered ones"
        )
    package_path(config.model)  # fails early, with the store's listing hint, when the tag is unknown
    env = {k: v for k, v in os.environ.items() if k != "SHIPYARD_SERVE_CONFIG"}
    env.update(config.to_env())
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    cmd = command(config)
    if args.dry_run:
        print(" ".join(cmd))
        for key, value in sorted(config.to_env().items()):
            print(f"{key}={value}")
        return 0
    print(
        f"serving {config.model} (variant {config.variant}) on http://{config.host}:{config.port}; Ctrl+C stops",
        flush=True,
    )
    return run_until_stopped(cmd, env)


def run_until_stopped(cmd: list[str], env: dict[str, str]) -> int:
    """Run the server; pass SIGTERM/SIGHUP on to it, wait on Ctrl+C, never leave it running behind."""
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # the terminal sent SIGINT to the server too; wait for it to stop
                forward(signal.SIGINT, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
