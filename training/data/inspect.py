"""``shipyard data inspect``: what training would see in a data folder and how it would load it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import DataError
from training.config import DataConfig, TrainingConfig
from training.data.plan import StepMemory, choose_batch, choose_scheme, image_size_hw, mb
from training.data.scan import SPLITS, DatasetScan, scan_dataset
from training.tables import format_table


@dataclass
class InspectReport:
    """What ``shipyard data inspect`` prints: counts, bytes, sizes, modes, skipped files and the plan.

    ``image_sizes`` lists ``(width, height, count)``, most common first. ``batch_size`` is ``None``
    when the configured batch size cannot work (``problems`` says why).
    """

    root: str
    layout: str
    labels: list[str]
    split_counts: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    total_images: int
    total_bytes: int
    image_sizes: list[tuple[int, int, int]]
    image_modes: dict[str, int]
    formats: dict[str, int]
    skipped: list[tuple[str, str]]
    image_size: tuple[int, int]
    scheme: str
    scheme_reason: str
    decoded_bytes: int
    batch_size: int | None
    batch_reason: str
    fingerprint: str
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    step_memory: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        return {
            "root": self.root,
            "layout": self.layout,
            "labels": list(self.labels),
            "split_counts": dict(self.split_counts),
            "class_counts": {k: dict(v) for k, v in self.class_counts.items()},
            "total_images": self.total_images,
            "total_bytes": self.total_bytes,
            "image_sizes": [{"width": w, "height": h, "count": c} for w, h, c in self.image_sizes],
            "image_modes": dict(self.image_modes),
            "formats": dict(self.formats),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "image_size": list(self.image_size),
            "loading": {
                "scheme": self.scheme,
                "reason": self.scheme_reason,
                "decoded_bytes": self.decoded_bytes,
                "batch_size": self.batch_size,
                "batch_reason": self.batch_reason,
                "step_memory": self.step_memory,
            },
            "fingerprint": self.fingerprint,
            "warnings": list(self.warnings),
            "problems": list(self.problems),
        }

    def to_table(self) -> str:
        """Return the report as plain-text tables for the terminal."""
        out = [
            f"dataset {self.root} ({self.layout}, {len(self.labels)} classes, {self.total_images:,} images, "
            f"{mb(self.total_bytes)} on disk)",
            f"fingerprint {self.fingerprint[:16]}",
            "",
        ]
        splits = [s for s in SPLITS if self.split_counts.get(s)]
        rows: list[list[object]] = [
            [
                label,
                *(self.class_counts[s][label] for s in splits),
                sum(self.class_counts[s][label] for s in splits),
            ]
            for label in self.labels
        ]
        rows.append(["total", *(self.split_counts[s] for s in splits), self.total_images])
        out += [format_table(["class", *splits, "total"], rows), ""]
        sizes = [[f"{w}x{h}", c] for w, h, c in self.image_sizes[:8]]
        if len(self.image_sizes) > 8:
            sizes.append(
                [f"({len(self.image_sizes) - 8} more sizes)", sum(c for *_, c in self.image_sizes[8:])]
            )
        out += [format_table(["image size (WxH)", "images"], sizes), ""]
        out += [format_table(["mode", "images"], [[k, v] for k, v in self.image_modes.items()]), ""]
        out += [format_table(["format", "images"], [[k, v] for k, v in self.formats.items()]), ""]
        out.append(f"loading: {self.scheme} - {self.scheme_reason}")
        out.append(
            f"batch size: {self.batch_size if self.batch_size is not None else '-'} ({self.batch_reason})"
        )
        if self.skipped:
            out += ["", f"skipped {len(self.skipped)} file(s):"]
            out += [f"  {p}: {r}" for p, r in self.skipped]
        for title, items in (("warnings", self.warnings), ("problems", self.problems)):
            if items:
                out += ["", f"{title}:"] + [f"  - {w}" for w in items]
        return "\n".join(out)


def inspect_dataset(
    root: str | Path,
    config: DataConfig,
    image_size: int | tuple[int, int],
    *,
    training: TrainingConfig | None = None,
) -> InspectReport:
    """Scan a data folder and report what training would see and how it would load it.

    Args:
        root: the data folder (``config.path`` is ignored).
        config: the data options (split fractions, seed, memory budget, loading, batch size).
        image_size: the model input ``(height, width)`` (or one int for a square input).
        training: the whole training config: the batch size then comes from the configured model's
            measured step memory, as in ``shipyard train`` (see ``training.step_memory``); without it,
            from the input batch only.

    Returns:
        An :class:`InspectReport`. A configured batch size larger than the training split is listed
        in ``problems`` rather than raised.

    Raises:
        DataError: the folder cannot be scanned (see :func:`scan_dataset`).
    """
    scan = scan_dataset(root, config)
    hw = image_size_hw(image_size)
    scheme, scheme_reason, decoded = choose_scheme(scan, config, hw)
    memory = _step_memory(training, scan, hw)
    batch, batch_reason, problems = _batch_or_problem(scan, config, hw, memory)
    return InspectReport(
        **_scan_fields(scan),
        image_size=hw,
        scheme=scheme,
        scheme_reason=scheme_reason,
        decoded_bytes=decoded,
        batch_size=batch,
        batch_reason=batch_reason,
        warnings=_warnings(scan, config, hw),
        problems=problems,
        step_memory=memory.to_dict(batch) if memory is not None and batch is not None else None,
    )


def _scan_fields(scan: DatasetScan) -> dict[str, Any]:
    """The :class:`InspectReport` fields that describe the folder as scanned."""
    return {
        "root": str(scan.root),
        "layout": scan.layout,
        "labels": list(scan.labels),
        "split_counts": scan.split_counts(),
        "class_counts": scan.class_counts(),
        "total_images": scan.num_images,
        "total_bytes": scan.total_bytes,
        "image_sizes": [(w, h, c) for (w, h), c in scan.image_sizes.most_common()],
        "image_modes": dict(scan.image_modes.most_common()),
        "formats": dict(scan.formats.most_common()),
        "skipped": [(str(p), r) for p, r in scan.skipped],
        "fingerprint": scan.fingerprint(),
    }


def _step_memory(training: TrainingConfig | None, scan: DatasetScan, hw: tuple[int, int]) -> StepMemory | None:
    """The configured model's measured step memory, as ``shipyard train`` sizes the batch; ``None`` without it."""
    if training is None:
        return None
    from training.step_memory import measure_step_memory

    return measure_step_memory(training, len(scan.labels), hw)


def _batch_or_problem(
    scan: DatasetScan, config: DataConfig, hw: tuple[int, int], memory: StepMemory | None
) -> tuple[int | None, str, list[str]]:
    """``(batch size, why, problems)``: a batch size that cannot work is a problem, not an error."""
    try:
        batch, reason = choose_batch(scan, config, hw, memory)
    except DataError as exc:
        return None, str(exc), [str(exc)]
    return batch, reason, []


def _warnings(scan: DatasetScan, config: DataConfig, hw: tuple[int, int]) -> list[str]:
    """Imbalanced classes (without class weights), classes too small to split, images to be upscaled."""
    warnings = []
    totals = Counter(s.label for samples in scan.splits.values() for s in samples)
    counts = [totals.get(i, 0) for i in range(len(scan.labels))]
    if min(counts) and max(counts) / min(counts) >= 3 and not config.class_weights:
        big, small = scan.labels[counts.index(max(counts))], scan.labels[counts.index(min(counts))]
        warnings.append(
            f"classes are imbalanced ({big}: {max(counts)} images, {small}: {min(counts)}); "
            "consider data.class_weights=true"
        )
    few = [name for name, c in zip(scan.labels, counts, strict=True) if c < 3]
    if few:
        warnings.append(
            f"class(es) {', '.join(few)} have fewer than 3 images and appear in the training split only"
        )
    upscaled = sum(c for (w, h), c in scan.image_sizes.items() if w < hw[1] or h < hw[0])
    if upscaled:
        warnings.append(
            f"{upscaled} image(s) are smaller than the {hw[0]}x{hw[1]} input and will be upscaled"
        )
    return warnings
