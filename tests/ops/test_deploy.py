"""The deployment files agree with the image and the server: the Kubernetes manifests validate against the
Kubernetes schemas offline (kubernetes-validate, installed by scripts/system-deps.sh) and probe, mount and
expose what the Dockerfile sets up; the Grafana dashboard is well formed and covers every drift signal."""

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
                   "bentoml_service_request_total", "shipyard_live_accuracy"):  # fmt: skip
        assert metric in joined, metric
