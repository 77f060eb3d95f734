"""Shipyard's device side: the model-package contract, preprocessing, the variant table and runners. No TensorFlow."""

from edge.bench import BenchResult, bench_model, benchmark
from edge.errors import (
    DataError,
    ImageError,
    ImageTooLargeError,
    InputError,
    IntegrityError,
    ModelFileError,
    PackageError,
    ShipyardError,
    UnsupportedFormatError,
)
from edge.evaluate import EvalResult, evaluate_package
from edge.manifest import InputContract, Manifest, VariantInfo, read_manifest, verify_file
from edge.package import choose_variant, open_package, open_variant_runner
from edge.preprocess import decode, decode_file
from edge.runners import OnnxRunner, Runner, TensorSpec, TFLiteRunner, open_runner
from edge.variants import FORMATS, VARIANTS, Format, Variant

__all__ = [
    "FORMATS",
    "VARIANTS",
    "BenchResult",
    "DataError",
    "EvalResult",
    "Format",
    "ImageError",
    "ImageTooLargeError",
    "InputContract",
    "InputError",
    "IntegrityError",
    "Manifest",
    "ModelFileError",
    "OnnxRunner",
    "PackageError",
    "Runner",
    "ShipyardError",
    "TFLiteRunner",
    "TensorSpec",
    "UnsupportedFormatError",
    "Variant",
    "VariantInfo",
    "bench_model",
    "benchmark",
    "choose_variant",
    "decode",
    "decode_file",
    "evaluate_package",
    "open_package",
    "open_runner",
    "open_variant_runner",
    "read_manifest",
    "verify_file",
]
