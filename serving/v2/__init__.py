"""The Open Inference Protocol (V2) over REST, beside the service's own API: :mod:`serving.v2.codec` parses
requests and encodes responses (JSON and the binary tensor data extension); :mod:`serving.v2.routes` is the
Starlette app the service mounts."""

from serving.v2.codec import V2Error, encode_response, parse_request
from serving.v2.routes import INFER_PATTERN, model_metadata, v2_app

__all__ = ["INFER_PATTERN", "V2Error", "encode_response", "model_metadata", "parse_request", "v2_app"]
