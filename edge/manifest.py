"""The model package contract: ``manifest.json`` and the files it lists.

One directory per trained model version (see ``DESIGN.md``)::

    <package>/manifest.json, keras/model.keras, variants/*, reference/*, eval/*, logs/*

Every file in the package is listed in ``Manifest.files`` with its sha256 and size; readers verify a
file before they load it (:func:`verify_file`).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.errors import IntegrityError, PackageError
from edge.files import read_versioned_json

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
_VERSION_RE = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class InputContract(_Model):
    """What every runtime receives: ``uint8`` RGB pixels of this size, made by :mod:`edge.preprocess`."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[3] = 3
    dtype: Literal["uint8"] = "uint8"
    color: Literal["RGB"] = "RGB"
    resize: Literal["bilinear"] = "bilinear"
    layout: Literal["NHWC"] = "NHWC"


class QuantParams(_Model):
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int


class FileEntry(_Model):
    """One file of the package, relative to the package directory."""

    sha256: str
    bytes: int


class VariantInfo(_Model):
    """One deployable form of the model (a TFLite file, an ONNX file, a SavedModel...)."""

    file: str
    format: Literal["keras", "tflite", "onnx", "saved_model"]
    status: Literal["passed", "failed_gate", "failed_export", "not_checked"] = "not_checked"
    reason: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    quantization: str = "none"
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    input_quantization: QuantParams | None = None
    output_quantization: QuantParams | None = None
    outputs: list[str] = Field(default_factory=lambda: ["probabilities"])
    metrics: dict[str, Any] = Field(default_factory=dict)


class DatasetInfo(_Model):
    """Where the training data came from and how it was loaded."""

    path: str
    fingerprint: str
    split_counts: dict[str, int]
    class_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    skipped_files: int = 0
    loading: str = "memory"
    loading_reason: str = ""
    batch_size: int = 0
    batch_size_reason: str = ""


class HeldOutSplit(_Model):
    """The images the model never trained on, on which it was evaluated (``shipyard-edge eval`` scores these)."""

    split: str = "test"
    files: list[str] = Field(default_factory=list, description="paths relative to the data folder, posix")


class Manifest(_Model):
    """``manifest.json`` of a model package."""

    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    labels: list[str]
    input: InputContract
    base_model: dict[str, Any] = Field(default_factory=dict)
    training_config: dict[str, Any] = Field(default_factory=dict)
    dataset: DatasetInfo | None = None
    held_out: HeldOutSplit | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    variants: dict[str, VariantInfo] = Field(default_factory=dict)

    @property
    def tag(self) -> str:
        """The BentoML-style tag ``name:version``."""
        return f"{self.name}:{self.version}"

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def check_version_string(value: str, what: str = "version") -> str:
    """Return ``value`` if it is a valid model name/version (lowercase, digits, ``-._``), else raise."""
    if not _VERSION_RE.match(value) or len(value) > 63:
        raise PackageError(
            f"invalid {what} {value!r}: use 1-63 lowercase letters, digits, '-', '.' or '_', "
            "starting and ending with a letter or digit"
        )
    return value


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(package: str | Path) -> Manifest:
    """Read and validate ``<package>/manifest.json``.

    Raises:
        PackageError: the directory or manifest is missing, not JSON, of another schema version,
            or does not match the schema.
    """
    package = Path(package)
    path = package / MANIFEST_NAME
    if not package.is_dir():
        raise PackageError(f"model package {str(package)!r} is not a directory; pass the folder that holds manifest.json")
    if not path.is_file():
        raise PackageError(
            f"{str(package)!r} is not a model package: it has no {MANIFEST_NAME}. "
            "Pass the folder printed by 'shipyard train' (runs/<name>/<version>)"
        )
    return read_versioned_json(path, Manifest, (SCHEMA_VERSION,))


def write_manifest(package: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` (pretty, stable key order) and return its path."""
    path = Path(package) / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def record_file(package: str | Path, manifest: Manifest, relpath: str) -> FileEntry:
    """Hash ``<package>/<relpath>`` and record it in ``manifest.files`` (mutates ``manifest``)."""
    full = Path(package) / relpath
    entry = FileEntry(sha256=file_sha256(full), bytes=full.stat().st_size)
    manifest.files[relpath] = entry
    return entry


def record_tree(package: str | Path, manifest: Manifest, relroot: str) -> None:
    """Record every file below ``<package>/<relroot>`` (a directory) in ``manifest.files``."""
    root = Path(package) / relroot
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        record_file(package, manifest, path.relative_to(package).as_posix())


def verify_file(package: str | Path, manifest: Manifest, relpath: str) -> Path:
    """Return the path of ``relpath`` after checking that its sha256 matches the manifest.

    Raises:
        IntegrityError: the file is not listed, is missing, or its hash differs.
    """
    full = Path(package) / relpath
    entry = manifest.files.get(relpath)
    if entry is None:
        raise IntegrityError(f"{relpath!r} is not listed in {Path(package) / MANIFEST_NAME}; refusing to load it")
    if not full.is_file():
        raise IntegrityError(f"{full} is listed in the manifest but missing; the package is incomplete")
    actual = file_sha256(full)
    if actual != entry.sha256:
        raise IntegrityError(
            f"{full} has sha256 {actual[:12]}..., the manifest says {entry.sha256[:12]}...: the file was changed "
            "or truncated after packaging. Re-create or re-download the package"
        )
    return full


def verify_tree(package: str | Path, manifest: Manifest, relroot: str) -> Path:
    """Verify every manifest entry below ``relroot`` (a directory, such as a SavedModel)."""
    prefix = relroot.rstrip("/") + "/"
    entries = [p for p in manifest.files if p.startswith(prefix)]
    if not entries:
        raise IntegrityError(f"no files under {relroot!r} are listed in the manifest; refusing to load it")
    for rel in entries:
        verify_file(package, manifest, rel)
    return Path(package) / relroot


def verify_package(package: str | Path, manifest: Manifest | None = None) -> Manifest:
    """Verify every file the manifest lists; return the manifest."""
    manifest = manifest or read_manifest(package)
    for rel in manifest.files:
        verify_file(package, manifest, rel)
    return manifest
