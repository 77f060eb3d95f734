"""The batched ``tf.data`` pipelines of a dataset: :func:`build_datasets` and what it returns."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge.config import ConfigError
from edge.errors import DataError
from edge.manifest import DatasetInfo, InputContract
from training._tf import keras, tf
from training.config import DataConfig
from training.data.augment import augment_fn, make_augmenter
from training.data.memory import decode_into, memory_pipeline
from training.data.plan import LoadingPlan, StepMemory, plan_loading
from training.data.scan import SPLITS, DatasetScan, scan_dataset
from training.data.stream import stream_pipeline

log = logging.getLogger("shipyard.data")


@dataclass
class Datasets:
    """The ``tf.data`` pipelines of one dataset and how they were made.

    Every pipeline is batched and yields ``(images, labels)``: ``uint8`` ``(batch, H, W, 3)`` pixels
    0..255 (also after augmentation) and ``int32`` labels. ``train`` is reshuffled every epoch with
    ``data.seed`` and augmented; ``val``/``test`` keep the order of ``scan.splits`` and are ``None``
    when their split is empty. ``decode_failures`` fills up while a streamed pipeline meets files that
    passed the scan but do not decode (they are dropped from the batch). ``fingerprint`` is the
    scan's, taken before any decode failure was removed, so that a later :func:`scan_dataset` of the
    same folder reproduces it.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset | None
    test: tf.data.Dataset | None
    scan: DatasetScan
    plan: LoadingPlan
    contract: InputContract
    class_weights: dict[int, float] | None
    augmenter: keras.Sequential | None = None
    decode_failures: dict[Path, str] = field(default_factory=dict)
    fingerprint: str = ""

    def dataset_info(self) -> DatasetInfo:
        """Return the manifest's record of this dataset (path, fingerprint, counts, loading, batch)."""
        return DatasetInfo(
            path=str(self.scan.root),
            fingerprint=self.fingerprint or self.scan.fingerprint(),
            split_counts=self.scan.split_counts(),
            class_counts=self.scan.class_counts(),
            skipped_files=len(self.scan.skipped) + len(self.decode_failures),
            loading=self.plan.scheme,
            loading_reason=self.plan.reason,
            batch_size=self.plan.batch_size,
            batch_size_reason=self.plan.batch_reason,
        )


def balanced_class_weights(labels: Iterable[int], num_classes: int) -> dict[int, float]:
    """Return sklearn's "balanced" weights ``n_samples / (n_classes * count)`` for classes present.

    Args:
        labels: the training labels.
        num_classes: number of classes; classes without samples get weight 1.0.

    Returns:
        ``{class index: weight}`` for every class.
    """
    counts = Counter(int(label) for label in labels)
    total = sum(counts.values())
    present = len(counts)
    return {c: (total / (present * counts[c]) if counts.get(c) else 1.0) for c in range(num_classes)}


def build_datasets(
    config: DataConfig,
    contract: InputContract,
    *,
    augment: bool = True,
    memory: Callable[[int], StepMemory] | None = None,
    replicas: int = 1,
) -> Datasets:
    """Scan ``config.path``, plan the loading and build batched train/val/test pipelines.

    Memory scheme: all splits are decoded once with a thread pool (files that fail are moved to
    ``scan.skipped``). Stream scheme: batches of file paths are decoded in a thread pool, several
    batches in flight (``num_parallel_calls=AUTOTUNE``); files that fail are dropped and recorded in
    ``decode_failures``. Training batches are shuffled with ``config.seed``
    (reshuffled every epoch) and, when ``augment`` and ``config.augment`` enable it, augmented in a
    parallel map. Every pipeline is prefetched.

    Args:
        config: the data options; ``config.path`` must be set.
        contract: the model input contract (height and width of the decoded images).
        augment: ``False`` turns augmentation off whatever ``config.augment`` says.
        memory: ``memory(num_classes)`` measures the model's step memory for the batch size (see
            :func:`plan_loading`); ``None`` counts the input batch only.
        replicas: ``tf.distribute`` replicas in sync; the batch is per replica times this.

    Returns:
        :class:`Datasets` yielding ``(uint8 images NHWC, int32 labels)`` batches.

    Raises:
        ConfigError: ``config.path`` is not set.
        DataError: the folder cannot be used (see :func:`scan_dataset`), ``batch_size`` is larger
            than the training split, or no training image could be decoded.
    """
    if config.path is None:
        raise ConfigError("data.path is not set; set it in the config or pass --data DIR")
    scan = scan_dataset(config.path, config)
    step = memory(len(scan.labels)) if memory is not None else None
    plan = plan_loading(scan, config, (contract.height, contract.width), memory=step, replicas=replicas)
    fingerprint = scan.fingerprint()  # of what a later scan of the folder sees, before decode failures
    failures: dict[Path, str] = {}
    pipelines = _split_pipelines(scan, contract, config, plan, failures)
    augmenter = make_augmenter(config.augment, seed=config.seed) if augment else None
    return Datasets(
        train=_training_pipeline(pipelines["train"], augmenter, scan),
        val=_prefetched(pipelines["val"]),
        test=_prefetched(pipelines["test"]),
        scan=scan,
        plan=plan,
        contract=contract,
        class_weights=_class_weights(scan, config),
        augmenter=augmenter,
        decode_failures=failures,
        fingerprint=fingerprint,
    )


def _split_pipelines(
    scan: DatasetScan, contract: InputContract, config: DataConfig, plan: LoadingPlan, failures: dict[Path, str]
) -> dict[str, tf.data.Dataset | None]:
    """One batched pipeline per split (``None`` for an empty one), by the plan's loading scheme."""
    if plan.scheme == "memory":
        return _memory_pipelines(scan, contract, config, plan.batch_size)
    return _stream_pipelines(scan, contract, config, plan.batch_size, failures)


def _training_pipeline(
    train: tf.data.Dataset | None, augmenter: keras.Sequential | None, scan: DatasetScan
) -> tf.data.Dataset:
    """The training batches, augmented in a parallel map when there is an augmenter, prefetched."""
    if train is None:  # the plan refuses an empty training split; kept for type checkers
        raise DataError(f"the training split of {scan.root} is empty; add images to the class folders")
    if augmenter is not None:
        train = train.map(augment_fn(augmenter), num_parallel_calls=tf.data.AUTOTUNE)
    return train.prefetch(tf.data.AUTOTUNE)


def _prefetched(pipeline: tf.data.Dataset | None) -> tf.data.Dataset | None:
    return pipeline.prefetch(tf.data.AUTOTUNE) if pipeline is not None else None


def _class_weights(scan: DatasetScan, config: DataConfig) -> dict[int, float] | None:
    """Balanced weights of the training split when ``data.class_weights`` asks for them."""
    if not config.class_weights:
        return None
    return balanced_class_weights((s.label for s in scan.splits["train"]), len(scan.labels))


def _memory_pipelines(
    scan: DatasetScan, contract: InputContract, config: DataConfig, batch_size: int
) -> dict[str, tf.data.Dataset | None]:
    """Decode every split once (files that fail move to ``scan.skipped``), then gather batches from memory."""
    arrays = {}
    for split in SPLITS:
        images, labels, failed = decode_into(scan.splits[split], contract, config.max_pixels)
        if failed:
            bad = {p for p, _ in failed}
            scan.splits[split] = [s for s in scan.splits[split] if s.path not in bad]
            scan.skipped.extend(failed)
            for path, reason in failed:
                log.warning("skipping %s: %s", path, reason)
        arrays[split] = (images, labels)
    if not scan.splits["train"]:
        raise DataError(f"no training image in {scan.root} could be decoded; see the skipped files")
    pipelines: dict[str, tf.data.Dataset | None] = {}
    for split in SPLITS:
        images, labels = arrays[split]
        seed = config.seed if split == "train" else None
        pipelines[split] = memory_pipeline(images, labels, batch_size, seed) if len(labels) else None
    return pipelines


def _stream_pipelines(
    scan: DatasetScan, contract: InputContract, config: DataConfig, batch_size: int, failures: dict[Path, str]
) -> dict[str, tf.data.Dataset | None]:
    """One streamed pipeline per non-empty split; files that fail to decode are recorded in ``failures``."""
    pipelines: dict[str, tf.data.Dataset | None] = {}
    for split in SPLITS:
        samples = scan.splits[split]
        seed = config.seed if split == "train" else None
        pipelines[split] = (
            stream_pipeline(samples, contract, batch_size, seed, config.max_pixels, failures)
            if samples
            else None
        )
    return pipelines
