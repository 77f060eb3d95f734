"""The BentoML model store as Shipyard's registry: register packages, list versions, resolve tags."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from edge.errors import PackageError
from edge.manifest import MANIFEST_NAME, Manifest, read_manifest, verify_package


def runnable_problem(manifest: Manifest) -> str | None:
    """Why no server or device could run the package (no TFLite/ONNX variant that exported), or ``None``."""
    from edge.package import runnable_variants
    from edge.variants import runnable_labels

    if runnable_variants(manifest):
        return None
    listing = ", ".join(f"{k} ({v.status})" for k, v in manifest.variants.items()) or "none"
    return (
        f"package {manifest.tag} has no {runnable_labels()} variant to run (variants: {listing}); run "
        "'shipyard optimize PACKAGE' on it first"
    )


def gate_problem(manifest: Manifest) -> str | None:
    """Why the variant the server serves by default may not be deployed (missing, failed its gate or its
    export), or ``None`` when it passed."""
    from edge.variants import served_by_default

    name = served_by_default()
    key = next((k for k, v in manifest.variants.items() if PurePosixPath(v.file).name == name or k == name), None)
    if key is None:
        return f"package {manifest.tag} has no {name}, the variant the server serves by default"
    info = manifest.variants[key]
    if info.status == "passed":
        return None
    return f"{name}, the variant the server serves by default, is {info.status}: {info.reason or 'no reason recorded'}"


def promotable(tag: str, *, force: bool = False) -> Manifest:
    """The manifest of the registered ``tag`` when it may be promoted to an alias: every file's sha256 matches,
    something in it can run, and (unless ``force``) the variant the server serves by default passed its gate.

    Raises:
        PackageError: not in the store, nothing runnable, or a failed gate (the message says ``--force``).
        IntegrityError: a file of the store's copy was changed after registration.
    """
    manifest = verify_package(package_path(tag))
    if (problem := runnable_problem(manifest)) is not None:
        raise PackageError(f"not promoted: {problem}")
    if not force and (problem := gate_problem(manifest)) is not None:
        raise PackageError(f"not promoted: {problem}; pass --force (force=True) to promote {tag} anyway")
    return manifest


def register(package: str | Path, *, require_runnable: bool = False) -> str:
    """Put a verified package into the BentoML model store as ``name:version``; return the tag.

    Only the files listed in the manifest (plus the manifest) are copied: checkpoints and backup state
    stay in the run directory. Registering the same package twice returns the existing tag.

    Args:
        package: the package folder.
        require_runnable: refuse a package without a runnable variant (``shipyard register`` does).

    Raises:
        PackageError / IntegrityError: not a package, a file's hash does not match, or (``require_runnable``)
            nothing in it can be served.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    package = Path(package)
    manifest = verify_package(package)
    if require_runnable and (problem := runnable_problem(manifest)) is not None:
        raise PackageError(f"not registered: {problem}")
    tag = manifest.tag
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        theirs = read_manifest(existing.path)
        if theirs.files == manifest.files:
            return str(existing.tag)
        raise PackageError(
            f"the model store already holds {tag} with different files; set train.version to a new version "
            f"or delete it with 'bentoml models delete {tag}'"
        )
    metrics = {k: v for k, v in manifest.metrics.items() if isinstance(v, int | float | str)}
    with bentoml.models.create(
        tag,
        labels={"framework": "shipyard", "base": str(manifest.base_model.get("name", ""))[:63]},
        metadata={"labels": manifest.labels, "metrics": metrics, "input": manifest.input.model_dump(),
                  "variants": sorted(manifest.variants)},
    ) as model:
        dest = Path(model.path)
        for rel in [*manifest.files, MANIFEST_NAME]:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(package / rel, target)
    return str(model.tag)


def update_registered(package: str | Path) -> str:
    """Replace the store's copy of a package (after a later stage, such as optimize, added files)."""
    import bentoml
    from bentoml.exceptions import NotFound

    manifest = read_manifest(package)
    with contextlib.suppress(NotFound):
        bentoml.models.delete(manifest.tag)
    return register(package)


def package_path(tag: str) -> Path:
    """The directory of a registered package (``name:version`` or ``name:latest``)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound:
        raise PackageError(f"model {tag!r} is not in the model store; 'shipyard models list' shows what is") from None
    except Exception as exc:
        raise PackageError(f"bad model tag {tag!r}: {exc}; use name:version or name:latest") from None
    path = Path(model.path)
    if not (path / MANIFEST_NAME).is_file():
        raise PackageError(f"{tag} in the model store is not a Shipyard package (no {MANIFEST_NAME})")
    return path


def list_models(name: str | None = None) -> list[dict[str, Any]]:
    """Every Shipyard package in the store (newest first), with its key metrics."""
    import bentoml

    rows = []
    for model in bentoml.models.list(name) if name else bentoml.models.list():
        path = Path(model.path)
        if not (path / MANIFEST_NAME).is_file():
            continue
        try:
            manifest = json.loads((path / MANIFEST_NAME).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        m = manifest.get("metrics", {})
        rows.append(
            {
                "tag": str(model.tag),
                "created": manifest.get("created", "")[:19].replace("T", " "),
                "base": manifest.get("base_model", {}).get("name", ""),
                "classes": len(manifest.get("labels", [])),
                "accuracy": m.get("accuracy"),
                "macro_f1": m.get("macro_f1"),
                "variants": len(manifest.get("variants", {})),
                "size_mb": sum(f["bytes"] for f in manifest.get("files", {}).values()) / 1e6,
            }
        )
    rows.sort(key=lambda r: r["created"], reverse=True)
    return rows
