"""The loading plan: decode into memory or stream from the files, and the batch size, each with a reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from edge.errors import DataError
from edge.manifest import InputContract
from training.config import DataConfig
from training.data.scan import DatasetScan

#: A training batch (as float32, the model's input) may use at most this share of the memory budget.
BATCH_BUDGET_SHARE = 16
DEFAULT_BATCH_CAP = 32
_MB = 1024 * 1024


@dataclass(frozen=True)
class StepMemory:
    """What one training step holds in memory, in bytes: per image of the batch, and fixed.

    Measured from the built model by :func:`training.step_memory.measure_step_memory`.

    Attributes:
        input_per_image: one input image as the model sees it (float32 pixels).
        activations_per_image: the layer outputs of one image that backpropagation keeps, times what it keeps
            (see ``training.step_memory``), plus the largest transient output of the frozen layers before them.
        weights: every weight of the model.
        gradients: one gradient per trainable weight (the phase with the most trainable weights).
        optimizer_slots: the optimizer's slots (Adam: 2, SGD with momentum: 1 per trainable weight).
        detail: how the activations were measured, in words.
    """

    input_per_image: int
    activations_per_image: int
    weights: int
    gradients: int
    optimizer_slots: int
    detail: str = ""

    @property
    def per_image(self) -> int:
        return self.input_per_image + self.activations_per_image

    @property
    def fixed(self) -> int:
        return self.weights + self.gradients + self.optimizer_slots

    def total(self, batch: int) -> int:
        """Bytes of a step with ``batch`` images per replica."""
        return self.fixed + batch * self.per_image

    def arithmetic(self, batch: int) -> str:
        """The sum in words: ``batch x (input + activations) + weights + gradients + optimizer slots = total``."""
        return (
            f"{batch} x ({size_text(self.input_per_image)} input + {size_text(self.activations_per_image)} "
            f"activations) + {size_text(self.weights)} weights + {size_text(self.gradients)} gradients + "
            f"{size_text(self.optimizer_slots)} optimizer slots = {size_text(self.total(batch))}"
        )

    def to_dict(self, batch: int) -> dict[str, Any]:
        """A JSON-ready record of the arithmetic for ``batch`` (what the manifest keeps)."""
        return {**asdict(self), "batch_per_replica": batch, "total_bytes": self.total(batch)}


@dataclass
class LoadingPlan:
    """How :func:`build_datasets` loads the images, and the batch size, each with a reason.

    ``batch_size`` is the global batch (``per replica x replicas``); ``memory`` the step's arithmetic
    (``None`` when no model was measured).
    """

    scheme: Literal["memory", "stream"]
    reason: str
    batch_size: int
    batch_reason: str
    decoded_bytes: int
    replicas: int = 1
    memory: StepMemory | None = None

    @property
    def batch_per_replica(self) -> int:
        return self.batch_size // max(1, self.replicas)


def mb(n_bytes: float) -> str:
    """``n_bytes`` as ``"1,234.5 MB"``."""
    return f"{n_bytes / _MB:,.1f} MB"


def size_text(n_bytes: float) -> str:
    """``n_bytes`` in MB, or in KB below a megabyte."""
    return mb(n_bytes) if n_bytes >= _MB else f"{n_bytes / 1024:,.1f} KB"


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


def choose_batch(
    scan: DatasetScan,
    config: DataConfig,
    hw: tuple[int, int],
    memory: StepMemory | None = None,
    replicas: int = 1,
) -> tuple[int, str]:
    """``(global batch size, why)``; raises DataError when the training split is empty or smaller than the batch.

    With ``memory`` (the model's measured :class:`StepMemory`) the per-replica batch is the largest power of
    two up to 32 whose step fits ``data.step_memory_mb`` (default: ``data.memory_budget_mb``); without, a
    float32 input batch must fit 1/16 of the memory budget. The global batch is ``per replica x replicas``.
    """
    n_train = len(scan.splits.get("train", []))
    if n_train == 0:
        raise DataError(f"the training split of {scan.root} is empty; add images to the class folders")
    replicas = max(1, replicas)
    if config.batch_size is not None:
        total = config.batch_size * replicas
        if total > n_train:
            raise DataError(
                f"batch_size {total} is larger than the training split ({n_train} images); "
                f"set data.batch_size to {n_train // replicas} or less, or add images"
            )
        return total, "set by data.batch_size" + _replicas_note(config.batch_size, replicas)
    start = 1 << (max(1, min(DEFAULT_BATCH_CAP, n_train // replicas)).bit_length() - 1)
    why = (
        f"the default of {DEFAULT_BATCH_CAP}"
        if start == DEFAULT_BATCH_CAP
        else f"the largest power of two within the training split of {n_train} images"
    )
    batch, why = (_fit_step(start, why, config, memory) if memory is not None else _fit_input(start, why, config, hw))
    return batch * replicas, f"{why} ({n_train:,} training images){_replicas_note(batch, replicas)}"


def _replicas_note(batch: int, replicas: int) -> str:
    return f"; global batch {batch * replicas} = {batch} per replica x {replicas} replicas" if replicas > 1 else ""


def _fit_step(batch: int, why: str, config: DataConfig, memory: StepMemory) -> tuple[int, str]:
    """Halve ``batch`` until a whole training step fits the step budget; the reason quotes the sum."""
    budget_mb = config.step_memory_mb or config.memory_budget_mb
    budget = budget_mb * _MB
    shrunk = False
    while batch > 1 and memory.total(batch) > budget:
        batch //= 2
        shrunk = True
    if shrunk:
        why = f"halved until a training step fits the {budget_mb:,} MB step budget"
    over = " (over the budget even so: raise data.step_memory_mb or use a smaller model)" if memory.total(batch) > budget else ""
    return batch, f"{why}: step memory {memory.arithmetic(batch)}{over}; {memory.detail}"


def _fit_input(batch: int, why: str, config: DataConfig, hw: tuple[int, int]) -> tuple[int, str]:
    """Without a measured model: halve ``batch`` until a float32 input batch fits 1/16 of the budget."""
    height, width = hw
    per_image = height * width * 3 * 4  # float32, as the model and the augmentation see it
    limit = config.memory_budget_mb * _MB / BATCH_BUDGET_SHARE
    shrunk = False
    while batch > 1 and batch * per_image > limit:
        batch //= 2
        shrunk = True
    if shrunk:
        why = f"halved until a float32 batch fits 1/{BATCH_BUDGET_SHARE} of the {config.memory_budget_mb:,} MB budget"
    return batch, f"{why}; a float32 batch of {batch} images at {height}x{width} is {mb(batch * per_image)}"


def plan_loading(
    scan: DatasetScan,
    config: DataConfig,
    image_size: tuple[int, int],
    *,
    memory: StepMemory | None = None,
    replicas: int = 1,
) -> LoadingPlan:
    """Choose the loading scheme and the batch size for a scanned dataset.

    Decoded size is ``images x height x width x 3`` bytes over all splits. With ``data.loading``
    ``auto`` it is decoded into memory when it fits ``data.memory_budget_mb``, else streamed;
    ``memory``/``stream`` force a scheme. The batch size per replica is ``data.batch_size`` or the
    largest power of two up to 32 within the training split, halved while a training step (``memory``:
    input, activations, weights, gradients, optimizer slots) exceeds the step budget, or without
    ``memory`` while a float32 input batch exceeds 1/16 of the budget; the global batch is that times
    ``replicas``.

    Args:
        scan: the result of :func:`scan_dataset`.
        config: the data options.
        image_size: the model input ``(height, width)``.
        memory: the model's measured step memory (see ``training.step_memory``).
        replicas: the ``tf.distribute`` replicas in sync.

    Returns:
        A :class:`LoadingPlan` whose reasons quote the numbers.

    Raises:
        DataError: ``data.batch_size`` is larger than the training split, or the split is empty.
    """
    hw = image_size_hw(image_size)
    scheme, reason, decoded = choose_scheme(scan, config, hw)
    batch, batch_reason = choose_batch(scan, config, hw, memory, replicas)
    return LoadingPlan(scheme, reason, batch, batch_reason, decoded, replicas, memory)  # type: ignore[arg-type]
