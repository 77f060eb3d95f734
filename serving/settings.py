"""What the service process serves: the :class:`~edge.config.ServeConfig` from the environment and the
model package it names in the BentoML model store.

Read once when ``serving.service`` is imported, because BentoML fixes batching and traffic limits when
the service classes are declared. ``name:latest`` is resolved to one version here and written back to
``SHIPYARD_MODEL``, so that every process ``bentoml serve`` starts afterwards (API workers and the model
worker) serves the same version even if another one is registered meanwhile.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edge.errors import PackageError, ShipyardError
from edge.manifest import MANIFEST_NAME
from serving.config import ServeConfig

MODEL_ENV = "SHIPYARD_MODEL"


@dataclass(frozen=True)
class Settings:
    """The service's configuration plus the concrete model tag (``None`` when no model was named)."""

    config: ServeConfig
    tag: str | None

    def require_tag(self) -> str:
        """The model tag, or a :class:`PackageError` that says how to name one."""
        if self.tag is None:
            raise PackageError(
                "no model to serve: set SHIPYARD_MODEL=name:version (or name:latest), serve.model in the file "
                "named by SHIPYARD_SERVE_CONFIG, or run 'shipyard serve TAG'"
            )
        return self.tag


def resolve_tag(tag: str) -> str:
    """The concrete ``name:version`` of ``tag`` (``name`` and ``name:latest`` allowed) in the model store.

    Raises:
        PackageError: the tag is malformed, or the store has no such model.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound:
        raise PackageError(
            f"model {tag!r} is not in the BentoML model store at {store_home()}; 'shipyard models list' "
            "shows what is there, 'shipyard register PACKAGE' adds one"
        ) from None
    except Exception as exc:
        raise PackageError(f"bad model tag {tag!r}: {exc}; use name:version or name:latest") from None
    return str(model.tag)


def alias_tag(model: str, alias: str) -> str:
    """The ``name:version`` that ``alias`` of ``model``'s name points at, checked against the model store.

    Raises:
        PackageError: no such alias, or it points at a version the store no longer has.
    """
    from serving.aliases import AliasStore, check_alias

    name = model.split(":", 1)[0]
    version = AliasStore().target(name, check_alias(alias))
    try:
        return resolve_tag(f"{name}:{version}")
    except PackageError:
        raise PackageError(
            f"alias {alias!r} of {name!r} points at {name}:{version}, which is not in the model store (deleted?); "
            f"promote another version ('shipyard models promote {name}:VERSION --alias {alias}') or roll back"
        ) from None


def package_dir(tag: str) -> Path:
    """The directory of a registered package (it holds ``manifest.json`` and the files it lists).

    Raises:
        PackageError: not in the store, or not a Shipyard package.
    """
    import bentoml

    path = Path(bentoml.models.get(resolve_tag(tag)).path)
    if not (path / MANIFEST_NAME).is_file():
        raise PackageError(f"{tag} in the model store is not a Shipyard package (it has no {MANIFEST_NAME})")
    return path


def store_home() -> str:
    """Where the BentoML home (and its model store) is: ``$BENTOML_HOME`` or ``~/bentoml``."""
    return os.environ.get("BENTOML_HOME") or str(Path.home() / "bentoml")


def load_settings(environ: MutableMapping[str, str] | None = None, *, pin: bool = True) -> Settings:
    """Read :class:`ServeConfig` from the environment and resolve its model tag.

    Args:
        environ: the environment (default ``os.environ``).
        pin: write the resolved ``name:version`` back to ``SHIPYARD_MODEL`` in ``environ``.

    Raises:
        ConfigError: a bad setting. PackageError: the model is not in the store.
    """
    env = os.environ if environ is None else environ
    config = ServeConfig.from_env(env)
    tag = model_tag(config)
    if tag is not None and pin and config.alias is None:  # a followed alias is read by every process itself
        env[MODEL_ENV] = tag
    return Settings(config=config, tag=tag)


def model_tag(config: ServeConfig) -> str | None:
    """The concrete tag ``config`` serves now: its alias's target, else its (resolved) model tag.

    Raises:
        PackageError: unknown tag or alias, or an alias pointing at a deleted version.
    """
    if not config.model:
        if config.alias or config.shadow:
            raise PackageError("serve.alias and serve.shadow need serve.model, the model's name (shipyard serve NAME)")
        return None
    if config.shadow:
        alias_tag(config.model, config.shadow)
    return alias_tag(config.model, config.alias) if config.alias else resolve_tag(config.model)


def preflight(settings: Settings) -> str:
    """Check, before any worker loads it, that the configured model can be served: the tag is in the store,
    the variant is runnable, passed its gate (unless ``serve.allow_failed_gate``) and its file's sha256
    matches. Returns the file name of the variant that will be served (``fp32_embedding.tflite`` when the
    embedding variant replaces ``fp32.tflite``).

    Raises:
        PackageError / IntegrityError: what is wrong, and how to fix it.
    """
    from edge.manifest import read_manifest, verify_file
    from serving.inference import served_variant

    config = settings.config
    folder = package_dir(settings.require_tag())
    manifest = read_manifest(folder)
    key = served_variant(manifest, config.variant, config.embeddings, config.allow_failed_gate)
    verify_file(folder, manifest, manifest.variants[key].file)
    return PurePosixPath(manifest.variants[key].file).name


def under_bentoml_serve(argv: list[str] | None = None) -> bool:
    """Whether this process is ``bentoml serve`` (or one of the workers it starts), where a model that cannot
    be served must stop the server with one line instead of a traceback in a restarting worker."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return False
    first = Path(argv[0])
    serving = first.name == "bentoml" or (first.name == "__main__.py" and first.parent.name == "bentoml")
    return (serving and "serve" in argv[1:2]) or "_bentoml_impl" in first.parts


def startup(environ: MutableMapping[str, str] | None = None) -> tuple[Settings, str | None]:
    """:func:`load_settings` and, when a model is named or this is ``bentoml serve``, :func:`preflight`.

    Under ``bentoml serve`` a problem ends the process with exit status 1 and one line on stderr
    (``shipyard: cannot serve ...``); elsewhere (an import in a test or a build) it raises.

    Returns:
        The settings, and the served variant's file name (``None`` without a model).
    """
    serving = under_bentoml_serve()
    try:
        settings = load_settings(environ)
        variant = preflight(settings) if settings.tag is not None or serving else None
    except ShipyardError as exc:
        if serving:
            raise SystemExit(f"shipyard: cannot serve: {exc}") from None
        raise
    if serving:
        print(f"shipyard: serving {settings.tag}, variant {variant}", file=sys.stderr, flush=True)
    return settings, variant


def served_variant_file(config: ServeConfig) -> str:
    """The file name of the variant a server for ``config`` serves.

    Raises:
        PackageError / IntegrityError: as :func:`preflight`.
    """
    return preflight(Settings(config=config, tag=model_tag(config)))
