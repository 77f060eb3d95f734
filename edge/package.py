"""Open a model package on a device: read the manifest, pick a variant, verify it, and load a runner.

The edge CLI and the server both call :func:`open_variant_runner`, so a package is opened (and its
file checked against the manifest's sha256) the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from edge.errors import PackageError
from edge.manifest import Manifest, VariantInfo, read_manifest, verify_file
from edge.runners import Runner, open_runner
from edge.variants import FORMATS, default_order, runnable_labels


def open_package(path: str | Path) -> Manifest:
    """Read and validate the manifest of the model package at ``path``.

    Args:
        path: the package directory (the one holding ``manifest.json``).

    Returns:
        The validated :class:`~edge.manifest.Manifest`.

    Raises:
        PackageError: not a directory, no manifest, or a manifest that does not validate.
    """
    return read_manifest(path)


def _file_name(info: VariantInfo) -> str:
    return PurePosixPath(info.file).name


def _lookup(manifest: Manifest, name: str) -> str | None:
    """The variant key for ``name``: a key of ``manifest.variants`` or a variant's file name."""
    if name in manifest.variants:
        return name
    matches = [
        key for key, info in manifest.variants.items() if _file_name(info) == name or info.file == name
    ]
    if len(matches) == 1:
        return matches[0]
    stem = [key for key, info in manifest.variants.items() if PurePosixPath(info.file).stem == name]
    return stem[0] if len(stem) == 1 else None


def runnable_variants(manifest: Manifest) -> list[str]:
    """Keys of the variants a device can run (TFLite or ONNX files that exported), in manifest order."""
    return [
        key
        for key, info in manifest.variants.items()
        if _runnable_format(info.format) and info.status != "failed_export"
    ]


def _runnable_format(name: str) -> bool:
    fmt = FORMATS.get(name)
    return fmt is not None and fmt.runnable


def choose_variant(manifest: Manifest, name: str | None = None) -> str:
    """Pick the variant to run.

    With ``name``, it is looked up as a variant key (``int8``) or a variant file name (``int8.tflite``).
    Without it, the first variant of :func:`edge.variants.default_order` that fits: ``int8.tflite`` if its
    status is ``passed``, else ``fp32.tflite``, else ``model.onnx`` (each when present and exported).

    Args:
        manifest: the package's manifest.
        name: the variant asked for, or ``None`` for the default.

    Returns:
        The key of the variant in ``manifest.variants``.

    Raises:
        PackageError: the name is unknown, the variant is not TFLite/ONNX or failed to export, or the
            package has no runnable variant.
    """
    runnable = runnable_variants(manifest)
    listing = ", ".join(_file_name(manifest.variants[k]) for k in runnable) or "none"
    if name is not None:
        key = _lookup(manifest, name)
        if key is None:
            raise PackageError(
                f"variant {name!r} is not in package {manifest.tag}; its runnable variants are: {listing}"
            )
        info = manifest.variants[key]
        if not _runnable_format(info.format):
            raise PackageError(
                f"variant {name!r} is a {info.format} model; the edge runner runs {runnable_labels()} variants: "
                f"{listing}"
            )
        if info.status == "failed_export":
            raise PackageError(
                f"variant {name!r} failed to export ({info.reason or 'no reason recorded'}); choose another: {listing}"
            )
        return key
    for preferred in default_order():
        key = _lookup(manifest, preferred.name)
        if key is None or key not in runnable:
            continue
        if preferred.default_needs_pass and manifest.variants[key].status != "passed":
            continue
        return key
    if runnable:
        passed = [k for k in runnable if manifest.variants[k].status == "passed"]
        return (passed or runnable)[0]
    raise PackageError(
        f"package {manifest.tag} has no {runnable_labels()} variant to run (variants: "
        f"{', '.join(manifest.variants) or 'none'}); run 'shipyard optimize' on it first"
    )


def open_variant_runner(
    package: str | Path, variant: str | None = None, num_threads: int | None = None, *, spin: bool = True
) -> tuple[Runner, Manifest, str]:
    """Open one variant of a package with its runner, after checking the file's sha256.

    Args:
        package: the package directory.
        variant: a variant key or file name (see :func:`choose_variant`); ``None`` for the default.
        num_threads: inference threads (default: all cores).
        spin: let ONNX Runtime's threads busy-wait between runs (see :class:`edge.runners.OnnxRunner`).

    Returns:
        ``(runner, manifest, variant_key)``.

    Raises:
        PackageError: no manifest, an unknown or non-runnable variant, or a model whose input size or
            number of outputs does not match the manifest.
        IntegrityError: the file is missing, unlisted, or its sha256 differs from the manifest's.
        ModelFileError: the runtime refuses the file.
    """
    manifest = open_package(package)
    key = choose_variant(manifest, variant)
    info = manifest.variants[key]
    path = verify_file(package, manifest, info.file)
    if info.sha256 and manifest.files[info.file].sha256 != info.sha256:
        raise PackageError(
            f"variant {key!r} records sha256 {info.sha256[:12]}... but files[{info.file!r}] records "
            f"{manifest.files[info.file].sha256[:12]}...; the manifest is inconsistent, re-create the package"
        )
    runner = open_runner(path, num_threads=num_threads, spin=spin)
    try:
        _check_against_manifest(runner, manifest, path)
    except Exception:
        runner.close()
        raise
    return runner, manifest, key


def _check_against_manifest(runner: Runner, manifest: Manifest, path: Path) -> None:
    runner.check_image_input()
    contract = manifest.input
    if runner.height is not None and (runner.height, runner.width) != (contract.height, contract.width):
        raise PackageError(
            f"{path} takes {runner.height}x{runner.width} images but the manifest's input is "
            f"{contract.height}x{contract.width}; the package is inconsistent, re-export the variant"
        )
    out = next((s for s in runner.output_specs if s.name == "probabilities"), runner.output_specs[0])
    classes = out.shape[-1] if out.shape else None
    if classes is not None and classes != manifest.num_classes:
        raise PackageError(
            f"{path} outputs {classes} classes but the manifest lists {manifest.num_classes} labels; "
            "the package is inconsistent, re-export the variant"
        )
