"""The Kubernetes manifests of deploy/kubernetes are valid, and agree with the worker: every
resource validates against the Kubernetes schemas, the probes ask the paths and the port
the worker serves, and the configuration they mount is a bindings file indexsync reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from indexsync.bindings import load_bindings
from indexsync.httpserver import PATHS
from indexsync.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests promise to work on (policy/v1, batch/v1 ttl...).
VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
# Not Kubernetes' own: the Prometheus Operator's resource, checked by hand below.
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kustomization() -> dict[str, Any]:
    (doc,) = documents(KUBE / "kustomization.yaml")
    return doc


def resources() -> dict[str, dict[str, Any]]:
    found = {}
    for name in [*kustomization()["resources"], "secret.example.yaml"]:
        for doc in documents(KUBE / name):
            found[doc["kind"]] = doc
    return found


def worker_pod() -> dict[str, Any]:
    spec: dict[str, Any] = resources()["Deployment"]["spec"]["template"]["spec"]
    return spec


def test_every_file_in_the_folder_is_used_or_an_example() -> None:
    used = {*kustomization()["resources"], "kustomization.yaml", "secret.example.yaml"}
    for generator in kustomization()["configMapGenerator"]:
        used.update(generator["files"])
    present = {str(p.relative_to(KUBE)) for p in KUBE.rglob("*") if p.is_file()}
    assert present == used


@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_validates_against_the_kubernetes_schemas(version: str) -> None:
    for kind, doc in resources().items():
        if (doc["apiVersion"], kind) in CUSTOM:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_broken_manifest_is_caught() -> None:
    # The check above can fail: a typo in a field is refused.
    broken = json.loads(json.dumps(resources()["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_probes_ask_the_worker_its_own_paths_on_its_own_port() -> None:
    (container,) = worker_pod()["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    settings = Settings(
        metrics_port=int(env[env_name("metrics_port")]),
        metrics_host=env[env_name("metrics_host")],
    )
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == settings.metrics_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"/healthz", "/readyz", "/metrics"} <= set(PATHS)
    # Reachable from the kubelet: the worker must listen beyond the loopback.
    assert settings.metrics_host == "0.0.0.0"


def test_the_service_monitor_scrapes_the_workers_metrics() -> None:
    found = resources()
    monitor, service = found["ServiceMonitor"], found["Service"]
    pod_labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= {
            **service["metadata"].get("labels", {}),
            **kustomization()["labels"][0]["pairs"],
        }.items()
    )
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= (
        pod_labels.items()
    )


def test_the_job_and_the_workers_read_the_same_secret_and_configuration() -> None:
    found = resources()
    job = found["Job"]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["install"]
    assert worker_pod()["containers"][0]["args"] == ["run"]
    for pod in (job, worker_pod()):
        (container,) = pod["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "indexsync-credentials"}}]
        assert {v["configMap"]["name"] for v in pod["volumes"]} == {
            g["name"] for g in kustomization()["configMapGenerator"]
        }
    known = {env_name(name) for name in Settings.model_fields}
    assert set(found["Secret"]["stringData"]) <= known


def test_the_mounted_configuration_is_one_indexsync_reads() -> None:
    spec = load_bindings(KUBE / "config" / "indexsync.toml")
    for alias in spec.indexes:
        body = json.loads((KUBE / "config" / "mappings" / f"{alias}.json").read_text())
        assert "mappings" in body
