"""The loading plan: decode into memory or stream from the files, and the batch size, each with a reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edge.errors import DataError
from edge.manifest import InputContract
from training.config import DataConfig
from training.data.scan import DatasetScan

#: A training batch (as float32, the model's input) may use at most this share of the memory budget.
BATCH_BUDGET_SHARE = 16
DEFAULT_BATCH_CAP = 32
_MB = 1024 * 1024


@dataclass
class LoadingPlan:
    """How :func:`build_datasets` loads the images, and the batch size, each with a reason."""

    scheme: Literal["memory", "stream"]
    reason: str
    batch_size: int
    batch_reason: str
    decoded_bytes: int


def mb(n_bytes: float) -> str:
    """``n_bytes`` as ``"1,234.5 MB"``."""
    return f"{n_bytes / _MB:,.1f} MB"


def image_size_hw(image_size: int | tuple[int, int] | InputContract) -> tuple[int, int]:
    """``(height, width)`` of an int (square), a pair or an input contract."""
    if isinstance(image_size, InputContract):
        return image_size.height, image_size.width
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def choose_scheme(scan: DatasetScan, config: DataConfig, hw: tuple[int, int]) -> tuple[str, str, int]:
    """``(scheme, why, decoded bytes)``: memory when the decoded images fit the budget, else stream."""
    height, width = hw
    n = scan.num_images
    decoded = n * height * width * 3
    budget = config.memory_budget_mb * _MB
    what = f"decoded size {mb(decoded)} ({n:,} images of {height}x{width}x3 uint8)"
    if config.loading != "auto":
        return (
            config.loading,
            f"{what}, memory budget {config.memory_budget_mb:,} MB: data.loading forces '{config.loading}'",
            decoded,
        )
    if decoded <= budget:
        return (
            "memory",
            f"{what} fits the {config.memory_budget_mb:,} MB memory budget: decoding once and caching in memory",
            decoded,
        )
    return (
        "stream",
        f"{what} exceeds the {config.memory_budget_mb:,} MB memory budget: streaming from the files with "
        "parallel decoding (raise data.memory_budget_mb to cache in memory)",
        decoded,
    )


def choose_batch(scan: DatasetScan, config: DataConfig, hw: tuple[int, int]) -> tuple[int, str]:
    """``(batch size, why)``; raises DataError when the training split is empty or smaller than the batch."""
    n_train = len(scan.splits.get("train", []))
    if n_train == 0:
        raise DataError(f"the training split of {scan.root} is empty; add images to the class folders")
    if config.batch_size is not None:
        if config.batch_size > n_train:
            raise DataError(
                f"batch_size {config.batch_size} is larger than the training split ({n_train} images); "
                f"set data.batch_size to {n_train} or less, or add images"
            )
        return config.batch_size, "set by data.batch_size"
    height, width = hw
    per_image = height * width * 3 * 4  # float32, as the model and the augmentation see it
    limit = config.memory_budget_mb * _MB / BATCH_BUDGET_SHARE
    batch = 1 << (min(DEFAULT_BATCH_CAP, n_train).bit_length() - 1)
    why = (
        f"the default of {DEFAULT_BATCH_CAP}"
        if batch == DEFAULT_BATCH_CAP
        else f"the largest power of two within the training split of {n_train} images"
    )
    shrunk = False
    while batch > 1 and batch * per_image > limit:
        batch //= 2
        shrunk = True
    if shrunk:
        why = f"halved until a float32 batch fits 1/{BATCH_BUDGET_SHARE} of the {config.memory_budget_mb:,} MB budget"
    return batch, (
        f"{why} ({n_train:,} training images; a float32 batch of {batch} images at {height}x{width} "
        f"is {mb(batch * per_image)})"
    )


def plan_loading(scan: DatasetScan, config: DataConfig, image_size: tuple[int, int]) -> LoadingPlan:
    """Choose the loading scheme and the batch size for a scanned dataset.

    Decoded size is ``images x height x width x 3`` bytes over all splits. With ``data.loading``
    ``auto`` it is decoded into memory when it fits ``data.memory_budget_mb``, else streamed;
    ``memory``/``stream`` force a scheme. The batch size is ``data.batch_size`` or the largest power
    of two up to 32 within the training split, halved while a float32 batch exceeds 1/16 of the budget.

    Args:
        scan: the result of :func:`scan_dataset`.
        config: the data options.
        image_size: the model input ``(height, width)``.

    Returns:
        A :class:`LoadingPlan` whose reasons quote the numbers.

    Raises:
        DataError: ``data.batch_size`` is larger than the training split, or the split is empty.
    """
    hw = image_size_hw(image_size)
    scheme, reason, decoded = choose_scheme(scan, config, hw)
    batch, batch_reason = choose_batch(scan, config, hw)
    return LoadingPlan(scheme, reason, batch, batch_reason, decoded)  # type: ignore[arg-type]
