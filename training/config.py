"""Options objects for the training side, nested in one :class:`TrainingConfig` (the build sections of a
pipeline config: data, model, train, optimize, tune, report).

The front door (``shipyard.config.PipelineConfig``) adds the serving sections and loads a whole pipeline
file; :func:`load_training_config` loads the files that training itself writes (a run's ``config.yaml``,
a search's ``best.yaml``). Stages never mutate the config they are given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge.config import ConfigError, StrictModel, load_config, validate_config


class AugmentConfig(StrictModel):
    """Random augmentation of training batches only. Strengths are Keras' factors (0 disables)."""

    horizontal_flip: bool = False
    vertical_flip: bool = False
    rotation: float = Field(0.0, ge=0, le=1, description="fraction of a full turn, e.g. 0.05 = +-18 degrees")
    zoom: float = Field(0.0, ge=0, lt=1)
    translation: float = Field(0.0, ge=0, lt=1)
    contrast: float = Field(0.0, ge=0, lt=1)
    brightness: float = Field(0.0, ge=0, lt=1)

    @property
    def enabled(self) -> bool:
        return any(
            (self.horizontal_flip, self.vertical_flip, self.rotation, self.zoom, self.translation, self.contrast, self.brightness)
        )


class DataConfig(StrictModel):
    """Where the images are and how to load them."""

    path: Path | None = Field(None, description="folder with one subfolder per class, or train/ val/ test/")
    image_size: int | tuple[int, int] | None = Field(None, description="pixels (or [height, width]); default: the base's")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = 42
    batch_size: int | None = Field(
        None, gt=0, description="per replica; default: chosen from the model's step memory and the dataset size"
    )
    memory_budget_mb: int = Field(2048, gt=0, description="decoded data up to this size is cached in memory")
    step_memory_mb: int | None = Field(
        None,
        gt=0,
        description="memory one training step may use (batch, activations, weights, gradients, optimizer slots); "
        "the automatic batch size is the largest that fits; default: memory_budget_mb",
    )
    loading: Literal["auto", "memory", "stream"] = "auto"
    class_weights: bool = False
    max_pixels: int = Field(50_000_000, gt=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("image_size")
    @classmethod
    def _positive(cls, value):
        sizes = (value,) if isinstance(value, int) else (value or ())
        if any(s < 8 for s in sizes):
            raise ValueError(f"image_size must be at least 8 pixels, got {value}")
        return value

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.2f} leaves almost no "
                "training data; keep their sum below 0.9"
            )
        return self


class HeadConfig(StrictModel):
    """The classifier head on top of the (cut) base."""

    pooling: Literal["avg", "max"] = "avg"
    dense: list[int] = Field(default_factory=list, description="widths of optional dense layers")
    activation: str = "relu"
    dropout: float = Field(0.2, ge=0, lt=1)
    l2: float = Field(0.0, ge=0)
    batch_norm: bool = Field(False, description="BatchNormalization after the pooling and after each dense layer")

    @field_validator("dense")
    @classmethod
    def _widths(cls, value):
        if any(w <= 0 for w in value):
            raise ValueError(f"dense widths must be positive, got {value}")
        return value


class LayerRange(StrictModel):
    """``{until: LAYER}`` (the base layers before LAYER) or ``{from: LAYER}`` (LAYER and the layers after it)."""

    until: str | None = None
    from_: str | None = Field(None, alias="from")

    model_config = {**StrictModel.model_config, "populate_by_name": True, "serialize_by_alias": True}

    @model_validator(mode="after")
    def _one(self):
        if (self.until is None) == (self.from_ is None):
            raise ValueError("give exactly one of until: LAYER or from: LAYER")
        return self


#: Which base layers a freeze or unfreeze rule selects: all, none, a count, a list of names, glob or
#: ``re:`` patterns or layer types (``BatchNormalization``), or a range (see training.freeze).
LayerSelection = Literal["all", "none"] | int | list[str] | LayerRange


class SpatialTransformerConfig(StrictModel):
    """A spatial transformer in front of the base: a small localization net predicts an affine transform
    (identity at the start) and a bilinear sampler warps the image with it (see training.stn)."""

    enabled: bool = False
    filters: list[int] = Field(default_factory=lambda: [8, 16], description="conv widths of the localization net")
    dense: int = Field(32, ge=1, description="width of the localization net's dense layer")
    downsample: int = Field(2, ge=1, description="the localization net sees the image pooled by this factor")


class ModelConfig(StrictModel):
    """The network: a registered base (or any saved Keras model), cut, frozen, with a head."""

    name: str = Field("classifier", description="package and model-store name")
    base: str = Field("mobilenet_v2", description="a key of training.models.BACKBONES")
    base_model: Path | None = Field(None, description="use this saved Keras model (.keras/.h5) as the base")
    weights: str = Field("imagenet", description="imagenet | none | path to a .h5/.keras weights file")
    alpha: float | None = Field(None, gt=0, description="width multiplier (MobileNets)")
    cut_at: str | None = Field(None, description="cut the base at this layer's output")
    freeze: LayerSelection = Field(
        "all",
        description="'all' freezes the base, an integer N leaves the last N base layers trainable; or a list of "
        "layer names, glob patterns, 're:' regexes or layer types to freeze, or {until: LAYER}",
    )
    head: HeadConfig = Field(default_factory=HeadConfig)
    spatial_transformer: SpatialTransformerConfig = Field(default_factory=SpatialTransformerConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, value):
        from edge.manifest import check_version_string

        try:
            return check_version_string(value, "model.name")
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("freeze")
    @classmethod
    def _freeze(cls, value):
        if isinstance(value, int) and value < 0:
            raise ValueError("freeze must be 'all', 'none' or a number of trainable last layers >= 0")
        return value


class FineTuneConfig(StrictModel):
    """Phase 2: unfreeze the top of the base and train on with a lower learning rate."""

    enabled: bool = False
    epochs: int = Field(5, ge=1)
    unfreeze_layers: int = Field(20, ge=1)
    unfreeze: LayerSelection | None = Field(
        None,
        description="base layers to unfreeze, like model.freeze (names, patterns, types, {from: LAYER}); "
        "default: the last unfreeze_layers layers",
    )
    learning_rate: float = Field(1e-5, gt=0)
    l2: float = Field(0.0, ge=0, description="L2 penalty on the kernels of the layers unfrozen for fine-tuning")


class TrainConfig(StrictModel):
    """Loss, optimizer, callbacks and the run itself."""

    epochs: int = Field(10, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    loss: Literal["crossentropy", "focal"] = "crossentropy"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    focal_gamma: float = Field(2.0, ge=0)
    top_k: int = Field(3, ge=2)
    fine_tune: FineTuneConfig = Field(default_factory=FineTuneConfig)
    early_stopping_patience: int = Field(5, ge=0, description="0 disables early stopping")
    monitor: str = Field(
        "val_loss",
        description="the log that the best checkpoint, early stopping and learning-rate reduction watch: val_loss, "
        "val_accuracy, val_macro_f1 (costs one more validation pass per epoch) or any other Keras log",
    )
    lr_schedule: Literal["constant", "cosine", "step", "exponential"] = Field(
        "constant", description="learning rate over the epochs of each phase, from that phase's rate"
    )
    warmup_epochs: int = Field(0, ge=0, description="ramp the rate up linearly over this many first epochs of a phase")
    lr_step_epochs: int = Field(3, ge=1, description="step: multiply the rate by lr_decay every this many epochs")
    lr_decay: float = Field(0.5, gt=0, le=1, description="step: factor per step; exponential: factor per epoch")
    lr_min_fraction: float = Field(0.0, ge=0, le=1, description="cosine: the rate ends at this fraction of the start")
    reduce_lr_patience: int = Field(
        3, ge=0, description="0 disables learning-rate reduction; a reduction scales the schedule from then on"
    )
    reduce_lr_factor: float = Field(0.2, gt=0, lt=1)
    min_learning_rate: float = Field(1e-7, ge=0)
    checkpoint_every: int = Field(1, ge=1, description="save a checkpoint every N epochs")
    seed: int = 42
    deterministic: bool = False
    distribution: Literal["none", "mirrored", "multi_worker"] = "none"
    mixed_precision: bool = False
    version: str | None = Field(None, description="package version; default: a timestamp")

    @model_validator(mode="after")
    def _multi_worker_version(self):
        if self.distribution == "multi_worker" and self.version is None:
            raise ValueError(
                "distribution: multi_worker needs train.version (the same on every worker), so that all workers "
                "agree on the run directory; e.g. --set train.version=run1"
            )
        return self


class GateConfig(StrictModel):
    """Pass/fail limits for exported variants against the Keras float reference (on the test split).

    Each variant of ``edge.variants.VARIANTS`` names its gate kind:

    * ``float`` (fp32 TFLite, ONNX, SavedModel): the same top-1 class on every test image and class
      probabilities within ``float_max_prob_diff``; a second ``embedding`` output within
      ``embedding_max_rel_diff`` of the largest reference embedding value.
    * ``fp16`` (float16 weights, computed in float32 on CPUs): weights lose about 3 decimal digits, so
      probabilities may move by about 1e-3; the gate allows 1e-2 and 99% top-1 agreement.
    * ``dynamic`` (int8 weights, activations quantized on the fly): behaves like int8, with int8's limits.
    * ``int8`` (full integer): top-1 agreement and the accuracy lost, against the original Keras model.
      Variants that were fine-tuned (QAT, pruning, clustering) are gated against the original too; with
      ``int8_agreement_with: parent`` they must also agree with the fine-tuned float model the file was
      converted from (the conversion must be faithful); ``reference`` drops that second check.
    """

    float_min_agreement: float = Field(1.0, ge=0, le=1)
    float_max_prob_diff: float = Field(1e-4, ge=0)
    embedding_max_rel_diff: float = Field(1e-4, ge=0, description="largest embedding difference / largest |embedding|")
    fp16_min_agreement: float = Field(0.99, ge=0, le=1)
    fp16_max_prob_diff: float = Field(1e-2, ge=0)
    dynamic_min_agreement: float = Field(0.98, ge=0, le=1)
    dynamic_max_accuracy_drop: float = Field(0.01, ge=0, le=1)
    int8_min_agreement: float = Field(0.98, ge=0, le=1)
    int8_max_accuracy_drop: float = Field(0.01, ge=0, le=1)
    int8_agreement_with: Literal["parent", "reference"] = Field(
        "parent",
        description="fine-tuned variants: also agree with the float model they were converted from (parent), "
        "or only with the original (reference)",
    )


class OptimizeConfig(StrictModel):
    """Quantization, pruning, clustering and export (the variants of edge.variants.VARIANTS)."""

    variants: list[str] | None = Field(None, description="default: every registered variant")
    representative_samples: int = Field(100, ge=1, description="training images used to calibrate int8 ranges")
    qat_epochs: int = Field(2, ge=1)
    prune_sparsity: float = Field(0.75, gt=0, lt=1)
    prune_epochs: int = Field(2, ge=1)
    prune_min_weights: int = Field(
        1024, ge=0, description="only Conv2D/Dense kernels with at least this many weights are pruned or clustered"
    )
    clusters: int = Field(16, ge=2)
    cluster_epochs: int = Field(2, ge=1)
    fine_tune_learning_rate: float = Field(1e-4, gt=0)
    fine_tune_batch_size: int = Field(32, ge=1)
    fine_tune_samples: int | None = Field(
        None, ge=1, description="at most this many training images for QAT/pruning/clustering (default: all)"
    )
    eval_samples: int | None = Field(None, ge=1, description="at most this many test images for the gates (default: all)")
    tflite_metadata: bool = Field(
        True, description="write MediaPipe/TFLite metadata (labels, normalization, name) into every TFLite variant"
    )
    seed: int = 0
    onnx_opset: int = Field(17, ge=13, le=18, description="tf2onnx 1.17 writes opsets 13..18")
    latency: bool = Field(True, description="measure latency (off: faster, the report shows no latency)")
    latency_runs: int = Field(50, ge=1)
    latency_min_time_s: float = Field(1.0, ge=0)
    latency_warmup_runs: int = Field(5, ge=0)
    gates: GateConfig = Field(default_factory=GateConfig)


class SearchParamConfig(StrictModel):
    """One entry of ``tune.space``: how to search one config key.

    * ``{type: float, min: 1e-4, max: 1e-2, log: true}``: a real number; ``step`` makes it discrete
      (with ``log: true`` the step is a factor > 1).
    * ``{type: int, min: 0, max: 40, step: 10}``: a whole number (both ends included).
    * ``{type: choice, values: [adam, sgd]}``: one of the values; a value may be a list or a mapping,
      e.g. ``[[], [64], [128, 64]]`` for ``model.head.dense``.
    * ``{type: bool}``: true or false.
    """

    type: Literal["float", "int", "choice", "bool"]
    min: float | None = None
    max: float | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False
    values: list | None = None

    @model_validator(mode="after")
    def _consistent(self):
        numeric = self.type in ("float", "int")
        if numeric:
            if self.min is None or self.max is None:
                raise ValueError(f"type {self.type} needs min and max, e.g. {{type: {self.type}, min: 1, max: 10}}")
            if self.values is not None:
                raise ValueError(f"values belongs to type choice; type {self.type} takes min, max, step and log")
            if self.min >= self.max:
                raise ValueError(f"min {self.min:g} must be below max {self.max:g}")
            if self.log and self.min <= 0:
                raise ValueError(f"log: true needs min > 0, got min {self.min:g}")
            if self.log and self.step is not None and self.step <= 1:
                raise ValueError(f"with log: true, step is a factor and must be above 1, got {self.step:g}")
            if self.type == "int" and any(
                v is not None and not float(v).is_integer() for v in (self.min, self.max, self.step)
            ):
                raise ValueError("type int needs whole-number min, max and step; use type float for fractions")
            return self
        extra = [k for k in ("min", "max", "step") if getattr(self, k) is not None] + (["log"] if self.log else [])
        if extra:
            raise ValueError(f"{', '.join(extra)} belong(s) to types float and int, not to type {self.type}")
        if self.type == "choice":
            if not self.values:
                raise ValueError("type choice needs a non-empty values list, e.g. {type: choice, values: [adam, sgd]}")
            seen: list = []
            for v in self.values:
                if v in seen:
                    raise ValueError(f"values lists {v!r} twice; list each choice once")
                seen.append(v)
        elif self.values is not None:
            raise ValueError("type bool takes no values (it searches false and true)")
        return self


class TuneConfig(StrictModel):
    """Hyperparameter search (``shipyard tune``) with KerasTuner over any config key.

    Each trial is the whole config with the trial's values merged in (like ``--set``) and trains with
    ``shipyard train``'s code; its score is measured on the validation split (or the mean over
    ``folds`` cross-validation folds). See ``training.tune``.
    """

    space: dict[str, SearchParamConfig] = Field(
        default_factory=dict, description="config key (e.g. train.learning_rate) -> how to search it"
    )
    tuner: Literal["random", "hyperband", "bayesian"] = "random"
    objective: Literal["val_accuracy", "val_macro_f1", "val_loss"] = "val_accuracy"
    max_trials: int = Field(10, ge=1, description="trials in the whole search (a resumed search counts earlier ones)")
    max_time_s: float | None = Field(None, gt=0, description="no trial starts after this many seconds of this run")
    early_stopping_patience: int | None = Field(
        None, ge=0, description="per-trial early stopping on the objective; default: train.early_stopping_patience"
    )
    folds: int = Field(1, ge=1, le=20, description="k >= 2: k-fold cross-validation on train+val, score = mean")
    seed: int = Field(42, ge=1, description="seed of the tuner's sampling")
    hyperband_factor: int = Field(3, ge=2, description="Hyperband: keep 1/factor of the trials per round")
    hyperband_iterations: int = Field(1, ge=1)
    bayesian_initial_points: int | None = Field(None, ge=1, description="random trials before the Gaussian process")
    max_failed_trials: int = Field(3, ge=1, description="stop the search after this many failed trials in a row")


class ReportConfig(StrictModel):
    """Pictures of the data, the network and the training, and the report page (see training.visualize)."""

    plots: bool = Field(True, description="make the pictures in plots/ at the end of training")
    kinds: list[str] | None = Field(None, description="pictures made at the end of training (default: all)")
    record: bool = Field(True, description="record histograms and validation predictions while training")
    record_every: int = Field(2, ge=1, description="record weight/activation/gradient histograms every N epochs")
    record_layers: list[str] | None = Field(
        None, description="layers to record; default: the first and last base layer with a kernel, and the output"
    )
    record_batch: int = Field(16, ge=1, description="validation images in the fixed batch for activations/gradients")
    tensorboard_histograms: bool = Field(True, description="also write the histograms to logs/tensorboard/histograms")
    val_prediction_images: int = Field(512, ge=1, description="validation images predicted after each epoch")
    embedding_points: int = Field(300, ge=5, description="test images on the embedding map at most")
    embedding_method: Literal["auto", "tsne", "umap", "pca"] = Field("auto", description="auto: UMAP if installed")
    samples_per_class: int = Field(6, ge=1, le=32)
    max_classes: int = Field(20, ge=1, description="sample grids and class maximization show at most this many classes")
    misclassified: int = Field(24, ge=0, description="misclassified test images shown at most")
    maximize_layer: str | None = Field(None, description="layer whose channels to maximize; default: the class logits")
    maximize_units: list[int] | None = Field(None, description="classes or channels to maximize; default: the classes")
    maximize_steps: int = Field(40, ge=1)
    seed: int = 0


class TrainingConfig(StrictModel):
    """The build side of a pipeline, one section per stage; loads from YAML."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    def training_dump(self) -> dict:
        """The training sections as plain JSON values: what a package or run directory records (a
        subclass's extra sections, such as the front door's ``serve:``, are left out)."""
        return self.model_dump(mode="json", include=set(TrainingConfig.model_fields))


#: Sections that packages written before the front door existed recorded with their training config.
_LEGACY_SECTIONS = ("serve", "loadtest")


def saved_training_config(raw: dict | None) -> TrainingConfig:
    """The :class:`TrainingConfig` a package's manifest (``training_config``) records.

    Raises:
        ConfigError: the record is not a valid training config.
    """
    return validate_config(TrainingConfig, saved_sections(raw), "package config")


def saved_sections(raw: dict | None) -> dict:
    """A deep copy of a manifest's ``training_config`` without sections that are not training's."""
    import json

    return {k: v for k, v in json.loads(json.dumps(raw or {})).items() if k not in _LEGACY_SECTIONS}


def load_training_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, data: str | Path | None = None
) -> TrainingConfig:
    """Load a :class:`TrainingConfig` from YAML plus ``--set`` overrides; ``data`` overrides ``data.path``.

    Raises:
        ConfigError: a bad file, key or value (one line each).
    """
    values = {"data": {"path": str(data)}} if data is not None else None
    return load_config(TrainingConfig, path, overrides, values=values)


def require_data_dir(config: TrainingConfig) -> Path:
    """Return the configured data folder, or raise a one-line error saying how to give one."""
    path = config.data.path
    if path is None:
        raise ConfigError("data.path is not set; set it in the config or pass --data DIR")
    if not Path(path).is_dir():
        raise ConfigError(
            f"data.path = '{path}' is not a folder; pass a folder with one subfolder per class "
            "(or train/ val/ test/), e.g. 'shipyard demo-data demo_data' makes one"
        )
    return Path(path)
