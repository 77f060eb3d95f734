"""Reading the metadata a TFLite file carries (what MediaPipe Tasks reads), with no MediaPipe.

A TFLite file with metadata holds a ``TFLITE_METADATA`` buffer (the ``ModelMetadata`` flatbuffer:
name, description, version...) and its associated files (the label file) in a zip archive appended to
the flatbuffer. Shipyard's optimizer writes both (``training.optimize.metadata``); this module reads
them back so that ``shipyard-edge predict`` on a bare ``.tflite`` names its classes.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

#: The label file's name inside a TFLite file (MediaPipe's default).
LABEL_FILE = "labels.txt"
#: The input normalization written for every variant: pixels 0..255 go in, scaling is in the graph.
NORM_MEAN = (0.0,)
NORM_STD = (1.0,)
METADATA_BUFFER = b"TFLITE_METADATA"


@dataclass
class TFLiteMetadata:
    """What a TFLite file's metadata says (``None`` fields: absent)."""

    name: str | None = None
    description: str | None = None
    version: str | None = None
    files: list[str] = field(default_factory=list)
    labels: list[str] | None = None


def _strings(buffer: bytes) -> dict[str, str | None]:
    """name, description and version of a ``ModelMetadata`` flatbuffer (its first three fields)."""
    import flatbuffers

    root = flatbuffers.encode.Get(flatbuffers.packer.uoffset, buffer, 0)
    table = flatbuffers.table.Table(bytearray(buffer), root)
    out: dict[str, str | None] = {}
    for slot, key in enumerate(("name", "description", "version")):
        offset = table.Offset(4 + 2 * slot)
        out[key] = table.String(offset + table.Pos).decode("utf-8", "replace") if offset else None
    return out


def _associated_files(content: bytes) -> tuple[list[str], list[str] | None]:
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            names = archive.namelist()
            text = [n for n in names if n.lower().endswith(".txt")]
            pick = LABEL_FILE if LABEL_FILE in names else (text[0] if len(text) == 1 else None)
            if pick is None:
                return names, None
            lines = archive.read(pick).decode("utf-8", "replace").splitlines()
    except zipfile.BadZipFile:
        return [], None
    labels = [line.strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    return names, labels or None


def read_tflite_metadata(content: bytes) -> TFLiteMetadata | None:
    """The metadata of a TFLite flatbuffer, or ``None`` when it has none (or cannot be parsed)."""
    try:
        from ai_edge_litert import schema_py_generated as schema

        model = schema.Model.GetRootAs(content, 0)
        found = None
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_BUFFER:
                found = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
        if found is None:
            return None
        files, labels = _associated_files(content)
        return TFLiteMetadata(**_strings(found), files=files, labels=labels)
    except Exception:
        return None


__all__ = ["LABEL_FILE", "NORM_MEAN", "NORM_STD", "TFLiteMetadata", "read_tflite_metadata"]
