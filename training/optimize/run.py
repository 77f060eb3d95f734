"""The run: build, write, describe, evaluate and time every requested variant, then record the package.

:func:`optimize_model` does it for a Keras model into a folder; :func:`run_optimize` for a model
package, rewriting its manifest and report. Both read as a list of named steps. A variant that cannot
be built is a row with the reason, never a crash of the whole run.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.files import write_bytes_atomic
from edge.manifest import InputContract, Manifest
from edge.variants import VARIANTS
from training.optimize.analysis import dir_digest, gzip_size, keras_weights, weight_sparsity
from training.optimize.builders import BUILDERS, BuildContext, Built, OptimizeData, resolve_variants
from training.optimize.conversion import onnx_metadata
from training.optimize.measure import (
    Reference,
    evaluate_variant,
    evaluation_data,
    io_info,
    latencies,
    reference_outputs,
    representative,
)
from training.optimize.metadata import FINISHERS
from training.optimize.results import VariantResult, result_from_manifest

VARIANTS_DIR = "variants"
Progress = Callable[[str], None]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400]}" if text else type(exc).__name__


def _remove(target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()


def _write_output(built: Built, target: Path) -> None:
    _remove(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if built.directory is not None:
        shutil.move(str(built.directory), str(target))
        shutil.rmtree(built.directory.parent, ignore_errors=True)
    elif built.content is not None:
        write_bytes_atomic(target, built.content)
    else:
        raise ValueError(f"the builder of {target.name} returned neither bytes nor a folder")


def _describe_file(result: VariantResult, target: Path, built: Built, model: Any) -> None:
    """Hash, size, gzip size, measured sparsity and input/output description of a written variant."""
    from edge.manifest import file_sha256

    fmt = result.spec.file_format
    if fmt.weights is None:  # a folder: sizes over its files, sparsity from the Keras weights it holds
        result.sha256, result.bytes, result.gzip_bytes = dir_digest(target)
        result.sparsity = weight_sparsity(keras_weights(built.parent if built.parent is not None else model))
    else:
        content = target.read_bytes()
        result.sha256, result.bytes, result.gzip_bytes = file_sha256(target), len(content), gzip_size(content)
        result.sparsity = weight_sparsity(fmt.weights(content))
    result.io = io_info(result.spec, target)


def _failed(result: VariantResult, status: str, reason: str) -> VariantResult:
    result.status, result.reason = status, reason  # type: ignore[assignment]
    result.details["traceback"] = traceback.format_exc(limit=6).splitlines()[-8:]
    return result


def _finish(result: VariantResult, built: Built, ctx: BuildContext) -> Built:
    """The format's finishing step (TFLite metadata), so that the file written and hashed is the final one.

    A variant with the embedding output is the server's: the metadata describes one classification output
    (what MediaPipe Tasks reads), so it gets none."""
    finisher = FINISHERS.get(result.spec.format)
    if finisher is None or built.content is None or not ctx.config.tflite_metadata or result.spec.outputs_embedding:
        return built
    built.content, details = finisher(built.content, ctx.labels, ctx.info)
    built.details.update(details)
    return built


def _build_one(ctx: BuildContext, result: VariantResult, target: Path) -> Built | None:
    """Build and write one variant; ``None`` (and a ``failed_export`` row) when it cannot be built."""
    from training._tf import keras

    keras.utils.set_random_seed(ctx.config.seed)
    started = time.perf_counter()
    try:
        built = _finish(result, BUILDERS[result.key](ctx), ctx)
        _write_output(built, target)
    except Exception as exc:  # a failed variant is a row, not a crash
        _failed(result, "failed_export", _first_line(exc))
        _remove(target)
        return None
    finally:
        result.build_seconds = time.perf_counter() - started
    result.path = target
    result.details.update(built.details)
    return built


def _check_one(
    result: VariantResult,
    target: Path,
    built: Built,
    model: Any,
    reference: Reference,
    data: OptimizeData,
    config: Any,
) -> None:
    """Describe, evaluate and time a written variant; a failure makes it a ``failed_gate`` row."""
    try:
        _describe_file(result, target, built, model)
        evaluate_variant(result, target, built.parent, reference, data, config)
        if config.latency:
            result.latency = latencies(result.spec, target, config)
    except Exception as exc:
        _failed(result, "failed_gate", f"exported, but could not be checked: {_first_line(exc)}")


def _context(
    model: Any,
    labels: list[str],
    contract: InputContract,
    data: OptimizeData,
    config: Any,
    metadata: dict[str, str] | None,
    info: dict[str, str] | None,
) -> BuildContext:
    return BuildContext(
        model=model,
        labels=labels,
        contract=contract,
        config=config,
        data=data,
        representative=representative(data, config.representative_samples, config.seed),
        metadata=metadata or onnx_metadata(labels, contract),
        info=info or {},
    )


def optimize_model(
    model: Any,
    *,
    labels: list[str],
    contract: InputContract,
    data: OptimizeData,
    config: Any,
    out_dir: Path,
    variants: list[str] | None = None,
    metadata: dict[str, str] | None = None,
    info: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> tuple[list[VariantResult], Reference]:
    """Build, evaluate and time every requested variant of ``model`` into ``out_dir/<variant name>``.

    A variant that cannot be built (the technique does not apply, a converter error, no training data)
    becomes a ``failed_export`` row with the reason; the others still build. A stale file of a variant
    that failed is removed so it cannot be mistaken for a fresh one.

    Args:
        model: the Keras float reference (not modified).
        labels: class names (for ONNX metadata and the metrics).
        contract: the input contract (size of the uint8 images).
        data: training and test images (see :class:`OptimizeData`); without test images, random ones
            are used for parity (accuracy is then not measured).
        config: an :class:`training.config.OptimizeConfig`.
        out_dir: where the variant files go.
        variants: names of :data:`edge.variants.VARIANTS` (default: ``config.variants`` or all).
        metadata: ONNX metadata_props (default: labels, input contract, shipyard version).
        info: name, version and description for the TFLite metadata.
        progress: called with one line per step (for the CLI).

    Returns:
        (one :class:`VariantResult` per variant in table order, the Keras reference outputs).

    Raises:
        ConfigError: an unknown variant name.
    """
    say = progress or (lambda _msg: None)
    keys = resolve_variants(variants if variants is not None else config.variants)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = evaluation_data(data, contract, config)
    reference = reference_outputs(model, data, len(labels))
    ctx = _context(model, labels, contract, data, config, metadata, info)
    results = []
    for key in keys:
        result = VariantResult(key=key, spec=VARIANTS[key])
        say(f"{key}: building ({result.spec.description})")
        built = _build_one(ctx, result, out_dir / key)
        if built is None:
            say(f"{key}: failed to export: {result.reason}")
        else:
            _check_one(result, out_dir / key, built, model, reference, data, config)
            say(f"{key}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        results.append(result)
        del built
    return results, reference


# ------------------------------------------------------------------------------------------ packages


@dataclass
class OptimizeOutcome:
    """What :func:`run_optimize` did."""

    package: Path
    manifest: Manifest
    results: list[VariantResult]
    reference: Reference
    report_files: list[str]
    notes: list[str]
    seconds: float

    @property
    def failed(self) -> list[VariantResult]:
        """Rows that did not pass (failed a gate, failed to export, or could not be checked)."""
        return [r for r in self.results if not r.passed]

    @property
    def exit_code(self) -> int:
        """0 when every variant passed its gate, else 1."""
        return 1 if self.failed else 0


def _record_variants(
    package: Path, manifest: Manifest, results: list[VariantResult], reference: Reference
) -> None:
    """Replace the manifest's files and entries of the rebuilt variants, and the Keras reference's scores."""
    from edge.manifest import record_file, record_tree

    for result in results:
        rel = f"{VARIANTS_DIR}/{result.key}"
        for old in [p for p in manifest.files if p == rel or p.startswith(rel + "/")]:
            del manifest.files[old]
        if result.path is not None and result.path.is_dir():
            record_tree(package, manifest, rel)
        elif result.path is not None and result.path.is_file():
            record_file(package, manifest, rel)
        manifest.variants[result.key] = result.variant_info(rel)
    if "keras" in manifest.variants:
        manifest.variants["keras"].metrics.update(
            {
                "accuracy": reference.accuracy,
                "macro_f1": reference.macro_f1,
                "evaluated_on": reference.evaluated_on,
            }
        )


def _report_rows(manifest: Manifest, results: list[VariantResult], keys: list[str], notes: list[str]):
    """This run's rows plus the rows of variants built by an earlier run, in table order (notes say so)."""
    earlier = {
        key: result_from_manifest(key, info)
        for key, info in manifest.variants.items()
        if key in VARIANTS and key not in keys
    }
    if earlier:
        notes.append(
            f"{', '.join(earlier)}: not rebuilt in this run; their rows are from an earlier run (marked *)"
        )
    fresh = {r.key: r for r in results}
    return [fresh[k] if k in keys else earlier[k] for k in VARIANTS if k in keys or k in earlier]


def package_info(manifest: Manifest) -> dict[str, str]:
    """Name, version and description of a package, for the TFLite metadata."""
    base = manifest.base_model.get("name") or "a small CNN"
    return {
        "name": manifest.name,
        "version": manifest.version,
        "description": (
            f"Image classifier of {len(manifest.labels)} classes ({', '.join(manifest.labels[:8])}"
            f"{', ...' if len(manifest.labels) > 8 else ''}) on {base}, trained with Shipyard; "
            f"input RGB {manifest.input.height}x{manifest.input.width}, pixels 0..255"
        ),
    }


def _write_report(
    package: Path,
    manifest: Manifest,
    shown: list[VariantResult],
    reference: Any,
    notes: list[str],
    config: Any,
    seconds: float,
) -> list[str]:
    """Write the optimization report, record its files in the manifest and save the manifest."""
    from edge.manifest import record_file, write_manifest
    from training.optimize.report import write_report

    report_files = write_report(
        package, manifest, shown, reference, notes=notes, config=config.optimize, seconds=seconds
    )
    for rel in report_files:
        record_file(package, manifest, rel)
    write_manifest(package, manifest)
    return report_files


def _with_data_path(config: Any, data: str | Path | None) -> Any:
    if data is None:
        return config
    return config.model_copy(update={"data": config.data.model_copy(update={"path": Path(data)})})


def run_optimize(
    package: str | Path,
    config: Any | None = None,
    *,
    variants: list[str] | None = None,
    data: str | Path | None = None,
    register: bool = False,
    progress: Progress | None = None,
) -> OptimizeOutcome:
    """Optimize a model package: build and check the variants, write the report, rewrite the manifest.

    Args:
        package: the package directory.
        config: a :class:`training.config.TrainingConfig` (default: the package's own training config).
        variants: names of :data:`edge.variants.VARIANTS` (default: ``config.optimize.variants`` or all).
        data: the training data folder, when it moved since training (overrides ``data.path``).
        register: also update the package in the BentoML model store.
        progress: called with one line per step.

    Returns:
        An :class:`OptimizeOutcome`; its ``exit_code`` is 1 when any variant did not pass.

    Raises:
        PackageError / IntegrityError: not a package, or the Keras model's hash does not match.
        ConfigError: an unknown variant or bad config.
    """
    from training.optimize.data import load_optimize_data, optimize_config_for
    from training.package import load_package_model

    started = time.perf_counter()
    package = Path(package)
    model, manifest = load_package_model(package)
    config = _with_data_path(config if config is not None else optimize_config_for(manifest), data)
    keys = resolve_variants(variants if variants is not None else config.optimize.variants)
    loaded = load_optimize_data(manifest, config)
    results, reference = optimize_model(
        model,
        labels=manifest.labels,
        contract=manifest.input,
        data=loaded,
        config=config.optimize,
        out_dir=package / VARIANTS_DIR,
        variants=keys,
        info=package_info(manifest),
        progress=progress,
    )
    notes = ([loaded.problem] if loaded.problem else []) + list(reference.notes)
    _record_variants(package, manifest, results, reference)
    shown = _report_rows(manifest, results, keys, notes)
    seconds = time.perf_counter() - started
    report_files = _write_report(package, manifest, shown, reference, notes, config, seconds)
    if register:
        from training.registry import update_registered

        update_registered(package)
    return OptimizeOutcome(package, manifest, results, reference, report_files, notes, seconds)


__all__ = ["VARIANTS_DIR", "OptimizeOutcome", "optimize_model", "run_optimize"]
