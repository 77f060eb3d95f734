"""Run in the V2 clients' venv: call the server with tritonclient.http (binary on and off, pixels, the
classification extension, an error) and kserve's InferenceRESTClient (protocol v2, JSON and binary); print one
JSON line ``RESULT=...`` for the test to compare with /classify."""

import asyncio
import base64
import json
import sys
from pathlib import Path

import numpy as np


def text(x) -> str:
    """A BYTES element as the client returns it: bytes from binary data, str from JSON."""
    return x.decode() if isinstance(x, bytes) else str(x)


def triton(url: str, model: str, blobs: list[bytes], pixels: np.ndarray) -> dict:
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    out: dict = {}
    client = th.InferenceServerClient(url.removeprefix("http://"))
    out["health"] = [client.is_server_live(), client.is_server_ready(), client.is_model_ready(model)]
    out["inputs"] = [i["name"] for i in client.get_model_metadata(model)["inputs"]]
    for binary in (True, False):
        data = np.array(blobs if binary else [base64.b64encode(b) for b in blobs], dtype=np.object_)
        image = th.InferInput("image", [len(blobs)], "BYTES")
        image.set_data_from_numpy(data, binary_data=binary)
        wanted = [th.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "labels")]
        result = client.infer(model, [image], outputs=wanted, parameters={"top_k": 2})
        out[f"binary_{binary}"] = {
            "probabilities": result.as_numpy("probabilities").tolist(),
            "labels": [[text(x) for x in row] for row in result.as_numpy("labels")],
        }
    image = th.InferInput("image", [len(blobs)], "BYTES")
    image.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    default = client.infer(model, [image])  # no outputs named: every output, binary
    out["default_outputs"] = sorted(o["name"] for o in default.get_response()["outputs"])
    out["request_ids"] = [text(x) for x in default.as_numpy("request_id")]
    classes = client.infer(model, [image], outputs=[th.InferRequestedOutput("probabilities", class_count=1)])
    out["classification"] = [text(row[0]) for row in classes.as_numpy("probabilities")]
    raw = th.InferInput("pixels", list(pixels.shape), "UINT8")
    raw.set_data_from_numpy(pixels)
    out["pixels"] = client.infer(model, [raw]).as_numpy("probabilities").tolist()
    try:
        client.infer("no-such-model", [image])
    except InferenceServerException as exc:
        out["error"] = [exc.status(), exc.message()]
    return out


async def kserve(url: str, model: str, blobs: list[bytes]) -> dict:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    out: dict = {
        "health": [
            await client.is_server_live(url),
            await client.is_server_ready(url),
            await client.is_model_ready(url, model),
        ]
    }
    for binary in (False, True):
        data = np.array(blobs if binary else [base64.b64encode(b) for b in blobs], dtype=np.object_)
        image = InferInput("image", [len(blobs)], "BYTES")
        image.set_data_from_numpy(data, binary_data=binary)
        request = InferRequest(model_name=model, infer_inputs=[image], parameters={"top_k": 2})
        response = await client.infer(url, request, model_name=model)
        got = {o.name: o for o in response.outputs}
        out[f"binary_{binary}"] = {
            "probabilities": np.asarray(got["probabilities"].as_numpy(), np.float32).reshape(len(blobs), -1).tolist(),
            "labels": [
                [text(x) for x in row]
                for row in np.asarray(got["labels"].as_numpy(), dtype=object).reshape(len(blobs), -1)
            ],
        }
    await client.close()
    return out


def main() -> None:
    url, model, pixels_file, *files = sys.argv[1:]
    blobs = [Path(f).read_bytes() for f in files]
    pixels = np.load(pixels_file)
    result = {"triton": triton(url, model, blobs, pixels), "kserve": asyncio.run(kserve(url, model, blobs))}
    print("RESULT=" + json.dumps(result))


if __name__ == "__main__":
    main()
