"""The Open Inference Protocol (V2) beside the service's own API, called by the real clients people run:
``tritonclient.http`` (binary tensor data on and off, pixels, the classification extension) and KServe's
``InferenceRESTClient`` (protocol v2), from their own venv; every answer equals ``/classify`` on the same images.
Plus the protocol's edges in process: health and metadata, every client mistake a V2 4xx ``{"error"}``."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import numpy as np
import pytest
from serving_support import assert_error, client_venv, decode_all, run_in


def _classify(url: str, blobs: list[bytes]) -> list[dict]:
    with httpx.Client(base_url=url, timeout=60) as h:
        return [h.post("/classify", files={"image": ("x.png", b, "image/png")}).json() for b in blobs]


def _by_index(result: dict) -> list[float]:
    return [p["probability"] for p in sorted(result["predictions"], key=lambda p: p["index"])]


@pytest.mark.timeout(1200)
def test_tritonclient_and_kserve_get_what_classify_gets(server, served, images, tmp_path):
    python = client_venv("requirements-v2.txt")
    blobs = [*images.png[:4], images.jpeg]
    files = []
    for i, blob in enumerate(blobs):
        files.append(tmp_path / f"{i}.img")
        files[-1].write_bytes(blob)
    pixels = decode_all(served.package, blobs)
    np.save(tmp_path / "pixels.npy", pixels)
    name = served.tag.split(":")[0]
    got = run_in(python, "v2_clients.py", server.url, name, str(tmp_path / "pixels.npy"), *map(str, files))
    expected = _classify(server.url, blobs)
    probabilities = np.array([_by_index(r) for r in expected])
    top2 = [[p["label"] for p in r["predictions"][:2]] for r in expected]

    triton, kserve = got["triton"], got["kserve"]
    assert triton["health"] == [True, True, True] and kserve["health"] == [True, True, True]
    assert triton["inputs"] == ["image", "pixels"]
    for client in (triton, kserve):
        for mode in ("binary_True", "binary_False"):
            np.testing.assert_allclose(client[mode]["probabilities"], probabilities, atol=1e-6, err_msg=mode)
            assert client[mode]["labels"] == top2, mode
    np.testing.assert_allclose(triton["pixels"], probabilities, atol=1e-6)  # preprocessed pixels: same answer
    assert triton["default_outputs"] == ["labels", "probabilities", "request_id"]
    assert [c.split(":")[2] for c in triton["classification"]] == [t[0] for t in top2]
    status, message = triton["error"]
    assert status == "404" and "no-such-model" in message

    # the request ids of V2 answers are the monitor's: /feedback takes them
    with httpx.Client(base_url=server.url, timeout=30) as h:
        fb = h.post("/feedback", json={"request_id": triton["request_ids"][0], "label": top2[0][0]})
    assert fb.status_code == 200, fb.text


def test_v2_health_metadata_and_versions(client, served):
    name, version = served.tag.split(":")
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    server = client.get("/v2").json()
    assert server["name"] == "shipyard" and "binary_tensor_data" in server["extensions"]
    meta = client.get(f"/v2/models/{name}").json()
    assert meta["name"] == name and meta["versions"] == [version]
    assert {o["name"]: o["shape"] for o in meta["outputs"]}["probabilities"] == [-1, len(served.labels)]
    assert client.get(f"/v2/models/{name}/versions/{version}").json() == meta
    assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert client.get(f"/v2/models/{name}/versions/{version}/ready").status_code == 200
    assert_error(client.get("/v2/models/other"), 404, "not served")
    assert_error(client.get(f"/v2/models/{name}/versions/v999/ready"), 404, "v999")


def test_v2_json_infer_with_versions_top_k_and_pixels(client, served, images):
    name, version = served.tag.split(":")
    blobs = images.png[:3]
    body = {
        "id": "my-request",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "data": [base64.b64encode(b).decode() for b in blobs]}],
        "outputs": [{"name": "labels", "parameters": {"top_k": 1}}, {"name": "probabilities"}],
    }
    resp = client.post(f"/v2/models/{name}/versions/{version}/infer", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["id"] == "my-request" and out["model_name"] == name and out["model_version"] == version
    labels, probs = out["outputs"]
    assert labels["shape"] == [3, 1] and probs["shape"] == [3, len(served.labels)]
    expected = [client.post("/classify", files={"image": ("a.png", b, "image/png")}).json() for b in blobs]
    assert labels["data"] == [r["predictions"][0]["label"] for r in expected]
    np.testing.assert_allclose(np.reshape(probs["data"], (3, -1)), [_by_index(r) for r in expected], atol=1e-6)

    pixels = decode_all(served.package, blobs)
    raw = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.reshape(-1).tolist()}]}
    by_pixels = client.post(f"/v2/models/{name}/infer", json=raw).json()
    np.testing.assert_allclose(by_pixels["outputs"][0]["data"], probs["data"], atol=1e-6)


def _binary(header: dict, payload: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + payload, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def test_v2_client_mistakes_are_4xx_v2_errors(client, served, images):
    name = served.tag.split(":")[0]
    url = f"/v2/models/{name}/infer"
    one = [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(images.png[0]).decode()]}]
    cases = [
        (b"", {"Content-Type": "application/json"}, 400, "empty"),
        (b"{nope", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        (b"[1]", {"Content-Type": "application/json"}, 400, "object"),
        (json.dumps({"inputs": []}).encode(), {"Content-Type": "application/json"}, 400, "non-empty"),
        (json.dumps({"inputs": [{**one[0], "data": ["%%%"]}]}).encode(), {}, 400, "base64"),
        (json.dumps({"inputs": [{**one[0], "datatype": "FP128"}]}).encode(), {}, 400, "datatype"),
        (json.dumps({"inputs": [{**one[0], "name": "text"}]}).encode(), {}, 400, "unknown input"),
        (json.dumps({"inputs": one, "outputs": [{"name": "logits"}]}).encode(), {}, 400, "unknown output"),
        (json.dumps({"inputs": one, "parameters": {"top_k": 0}}).encode(), {}, 400, "top_k"),
        (json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [0] * 12}]}).encode(),
         {}, 400, "shape"),
        (json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [300]}]}).encode(), {}, 400, "range"),
        (json.dumps({"inputs": [{**one[0], "data": [base64.b64encode(b"not an image").decode()]}]}).encode(), {}, 400, "image"),
        (b"x", {"Content-Type": "text/plain"}, 415, "application/json"),
        (*_binary({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 99}}]},
                  b"abc"), 400, "binary_data_size"),
        (*_binary({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]},
                  struct.pack("<I", 60) + b"ab"), 400, "claims"),
    ]
    for body, headers, status, word in cases:
        assert_error(client.post(url, content=body, headers=headers), status, word)
    assert_error(client.post("/v2/models/other/infer", json={"inputs": one}), 404, "not served")
    assert_error(client.get(url), 405)
    many = [{**one[0], "shape": [40], "data": one[0]["data"] * 40}]
    assert_error(client.post(url, json={"inputs": many}), 413, "max_batch_images")
