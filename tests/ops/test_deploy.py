"""The deployment files agree with the image and the server: the Kubernetes manifests validate against the
Kubernetes schemas offline (kubernetes-validate, installed by scripts/system-deps.sh) and probe, mount and
expose what the Dockerfile sets up; so does the KServe InferenceService (its pod part against the Kubernetes
schemas, the whole against KServe's CRD where a copy is at hand, its probes against the V2 routes); the
Grafana dashboard is well formed and covers every drift signal, the model lifecycle and the shadow."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ops_support import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "shipyard.json"
KUBERNETES_VALIDATE = "kubernetes-validate-1.37.0"  # the version scripts/system-deps.sh installs
INFERENCE_SERVICE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
#: Fields of a KServe predictor that are KServe's own; the rest of it is a Kubernetes PodSpec.
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget",
                           "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
                           "labels", "annotations", "deploymentStrategy", "autoScaling"}  # fmt: skip


def manifests() -> dict[str, dict]:
    """``{kind: resource}`` of every resource under deploy/kubernetes."""
    docs = [d for p in sorted(KUBERNETES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    return {d["kind"]: d for d in docs}


def dockerfile(instruction: str) -> str:
    """The arguments of the last ``instruction`` line of the Dockerfile."""
    lines = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.startswith(instruction + " ")]
    return lines[-1].split(" ", 1)[1]


def validator() -> str:
    cache = Path(os.environ.get("SHIPYARD_CACHE", "/var/cache/shipyard"))
    tool = cache / "venvs" / KUBERNETES_VALIDATE / "bin" / "kubernetes-validate"
    if tool.is_file():
        return str(tool)
    found = shutil.which("kubernetes-validate")
    if found is None:
        pytest.skip(f"kubernetes-validate is not installed ({tool}); bash scripts/system-deps.sh installs it")
    return found


def test_manifests_validate_against_the_kubernetes_schemas():
    files = sorted(str(p) for p in KUBERNETES.glob("*.yaml"))
    proc = subprocess.run([validator(), "--strict", *files], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed for resource") == 3, proc.stdout


def test_manifests_match_the_image():
    resources = manifests()
    deployment, service = resources["Deployment"], resources["Service"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    port = int(dockerfile("EXPOSE"))
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
    # the model store: a read-only volume where the image's VOLUME is
    mount = container["volumeMounts"][0]
    assert mount["mountPath"] == json.loads(dockerfile("VOLUME"))[0] and mount["readOnly"] is True
    claim = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == resources["PersistentVolumeClaim"]["metadata"]["name"]
    # the image's non-root user
    uid = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1)
    assert pod["spec"]["securityContext"]["runAsUser"] == int(uid)
    # the Service reaches these pods on the container's named port
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def inference_service() -> dict:
    return yaml.safe_load(INFERENCE_SERVICE.read_text())


def cache() -> Path:
    return Path(os.environ.get("SHIPYARD_CACHE", "/var/cache/shipyard"))


def test_inference_service_pod_validates_against_the_kubernetes_schemas(tmp_path):
    """A CRD has no schema in kubernetes-validate: its predictor's pod part is validated as the Pod it becomes."""
    tool = validator()
    isvc = inference_service()
    pod_spec = {k: v for k, v in isvc["spec"]["predictor"].items() if k not in KSERVE_PREDICTOR_FIELDS}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": isvc["metadata"]["name"]},
        "spec": pod_spec,
    }
    path = tmp_path / "predictor-pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    proc = subprocess.run([tool, "--strict", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "passed for resource" in proc.stdout, proc.stdout + proc.stderr
    # the CRD itself: kubernetes-validate can only warn that it has no schema for it
    proc = subprocess.run(
        [tool, "--strict", str(INFERENCE_SERVICE)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "Couldn't find schema for kind InferenceService" in proc.stdout, (
        proc.stdout
    )


def unknown_fields(value: object, schema: dict, where: str = "") -> list[str]:
    """Fields of ``value`` that ``schema`` (a CRD's OpenAPI v3 schema) does not declare: the API server would
    prune them silently, so a misspelt field would be lost without an error."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, list) and "items" in schema:
        return [
            f for i, item in enumerate(value) for f in unknown_fields(item, schema["items"], f"{where}[{i}]")
        ]
    if not isinstance(value, dict) or where == ".metadata":
        return []
    properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
    found = []
    for key, item in value.items():
        if key in properties:
            found += unknown_fields(item, properties[key], f"{where}.{key}")
        elif isinstance(extra, dict):
            found += unknown_fields(item, extra, f"{where}.{key}")
        elif not extra:
            found.append(f"{where}.{key}")
    return found


def test_inference_service_validates_against_the_kserve_crd():
    """Against the v1beta1 schema of KServe's CRD (config/crd/full/serving.kserve.io_inferenceservices.yaml of a
    KServe release, 2 MB, not vendored) when a copy is in the cache: types, enums and no unknown field."""
    import jsonschema

    crd_path = Path(
        os.environ.get("SHIPYARD_KSERVE_CRD", cache() / "kserve" / "serving.kserve.io_inferenceservices.yaml")
    )
    if not crd_path.is_file():
        pytest.skip(
            f"no copy of KServe's InferenceService CRD at {crd_path} (SHIPYARD_KSERVE_CRD): download "
            "config/crd/full/serving.kserve.io_inferenceservices.yaml of a KServe release there"
        )
    crd = yaml.safe_load(crd_path.read_text())
    isvc = inference_service()
    group, version = isvc["apiVersion"].split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == isvc["kind"]
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    jsonschema.validate(isvc, schema)
    assert unknown_fields(isvc, schema) == []


def test_inference_service_matches_the_image_and_the_v2_routes():
    from serving.http import BYPASS_PATHS
    from serving.v2.routes import v2_app

    isvc = inference_service()
    predictor = isvc["spec"]["predictor"]
    container = predictor["containers"][0]
    # KServe's custom predictor: the first container, named kserve-container, says its protocol in PROTOCOL
    assert container["name"] == "kserve-container"
    assert {e["name"]: e["value"] for e in container["env"]}["PROTOCOL"] == "v2"
    port = int(dockerfile("EXPOSE"))
    assert container["ports"] == [{"name": "http1", "containerPort": port, "protocol": "TCP"}]
    # probes on the V2 health routes the server has, which skip the concurrency limit and the timeout
    v2_paths = {route.path for route in v2_app().routes}
    probes = {
        name: container[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/v2/health/live"
    for probe in probes.values():
        assert probe["path"] in v2_paths and probe["path"] in BYPASS_PATHS and probe["port"] == port, probe
    annotations = isvc["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
    # the image's user, and the model store read-only where the image's VOLUME is, from the same claim
    uid = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1)
    assert predictor["securityContext"]["runAsUser"] == int(uid)
    mount = container["volumeMounts"][0]
    assert mount["mountPath"] == json.loads(dockerfile("VOLUME"))[0] and mount["readOnly"] is True
    volume = next(v for v in predictor["volumes"] if v["name"] == mount["name"])
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == manifests()["PersistentVolumeClaim"]["metadata"]["name"]
    )


def test_dashboard_is_well_formed_and_covers_every_drift_signal():
    from serving.monitoring import SIGNALS

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "shipyard-serving"
    graphs = [p for p in panels if p["type"] != "row"]
    for panel in graphs:
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in graphs}
    for signal in SIGNALS:
        expr = exprs[f"Drift: {signal}"]
        assert f'signal="{signal}"' in expr and "shipyard_drift_threshold" in expr, expr
    joined = " ".join(exprs.values())
    for metric in ("shipyard_latency_seconds_bucket", "shipyard_predictions_total", "shipyard_errors_total",
                   "bentoml_service_request_total", "shipyard_live_accuracy", "shipyard_estimated_accuracy",
                   "shipyard_model_swaps_total", "shipyard_model_load_failures_total", "shipyard_shadow_agreement",
                   "shipyard_shadow_latency_seconds_bucket", "shipyard_shadow_mirrored_total"):  # fmt: skip
        assert metric in joined, metric
