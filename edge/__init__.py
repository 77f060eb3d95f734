"""Shipyard's device side: the model-package contract, preprocessing and runners. No TensorFlow."""

from edge.errors import (
    ImageError,
    ImageTooLargeError,
    InputError,
    IntegrityError,
    ModelFileError,
    PackageError,
    ShipyardError,
    UnsupportedFormatError,
)
from edge.manifest import InputContract, Manifest, VariantInfo, read_manifest, verify_file
from edge.preprocess import decode, decode_file
from edge.runners import OnnxRunner, Runner, TFLiteRunner, open_runner

__all__ = [
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
    "UnsupportedFormatError",
    "VariantInfo",
    "decode",
    "decode_file",
    "open_runner",
    "read_manifest",
    "verify_file",
]
