"""Optimization and export: build every variant of :data:`edge.variants.VARIANTS`, check it, report it.

The variant table lives in ``edge`` (what each variant is: format, quantization, gate, outputs); this
package keeps how to build them (:data:`BUILDERS`, keyed by the same names) and the run around them:

* :mod:`~training.optimize.conversion`: Keras -> TFLite / ONNX bytes, SavedModel folder (pure functions);
* :mod:`~training.optimize.transforms`: tfmot quantization-aware training, pruning, clustering;
* :mod:`~training.optimize.builders`: one builder per variant, and the data they use;
* :mod:`~training.optimize.gates`: the parity gates as data;
* :mod:`~training.optimize.measure`: accuracy, agreement and latency against the Keras reference;
* :mod:`~training.optimize.run`: :func:`optimize_model` and :func:`run_optimize` as lists of steps;
* :mod:`~training.optimize.report`: ``report.md``, ``report.html``, ``report.json``.

TensorFlow is imported inside the functions that need it, so importing this package stays cheap.
"""

from training.optimize.analysis import count_macs, gzip_size, keras_weights, weight_sparsity
from training.optimize.builders import BUILDERS, BuildContext, Built, OptimizeData, resolve_variants
from training.optimize.conversion import (
    QuantizationConfig,
    convert_to_onnx,
    convert_to_tflite,
    export_saved_model,
    onnx_metadata,
    shipyard_version,
)
from training.optimize.data import load_optimize_data, optimize_config_for
from training.optimize.errors import NotApplicableError, OptimizeError
from training.optimize.gates import GATES, GateCheck, gate_checks
from training.optimize.measure import Reference, evaluate_variant, open_variant, reference_outputs
from training.optimize.report import terminal_table, write_report
from training.optimize.results import VariantResult, result_from_manifest
from training.optimize.run import VARIANTS_DIR, OptimizeOutcome, optimize_model, run_optimize
from training.optimize.transforms import (
    cluster_model,
    fine_tune,
    fresh_copy,
    prune_model,
    quantize_aware_model,
)

__all__ = [
    "BUILDERS",
    "GATES",
    "VARIANTS_DIR",
    "BuildContext",
    "Built",
    "GateCheck",
    "NotApplicableError",
    "OptimizeData",
    "OptimizeError",
    "OptimizeOutcome",
    "QuantizationConfig",
    "Reference",
    "VariantResult",
    "cluster_model",
    "convert_to_onnx",
    "convert_to_tflite",
    "count_macs",
    "evaluate_variant",
    "export_saved_model",
    "fine_tune",
    "fresh_copy",
    "gate_checks",
    "gzip_size",
    "keras_weights",
    "load_optimize_data",
    "onnx_metadata",
    "open_variant",
    "optimize_config_for",
    "optimize_model",
    "prune_model",
    "quantize_aware_model",
    "reference_outputs",
    "resolve_variants",
    "result_from_manifest",
    "run_optimize",
    "shipyard_version",
    "terminal_table",
    "weight_sparsity",
    "write_report",
]
