"""deploy/kubernetes: every manifest valid against the Kubernetes schemas, offline (kubernetes-validate), and each
overlay, as `kubectl kustomize` renders it, wired consistently: the settings are ones aesq reads and accepts,
every scoring pool has GPU workers, services reach their pods, probes ask what they should."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from aesq.core.config import Settings
from aesq.web.security import host_allowed
from tests.helpers import KUBERNETES

# The oldest Kubernetes release still commonly run, and the newest the schemas know.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
MANIFESTS = sorted(path for path in KUBERNETES.rglob("*.yaml") if path.name != "kustomization.yaml")
OVERLAYS = sorted(path.parent for path in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
NAMESPACED = {"ConfigMap", "Deployment", "Job", "PersistentVolumeClaim", "Service"}


def validate(document: dict) -> None:
    """Strict validation against each of VERSIONS: an unknown or misspelt field is an error too."""
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            name = f"{document.get('kind')} {document.get('metadata', {}).get('name')}"
            raise AssertionError(f"{name} (Kubernetes {version}): {error.message} at {list(error.path)}") from None


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: str(path.relative_to(KUBERNETES)))
def test_every_manifest_file_is_valid_kubernetes(manifest: Path) -> None:
    documents = [document for document in yaml.safe_load_all(manifest.read_text()) if document]
    assert documents
    for document in documents:
        validate(document)


def test_every_kustomization_lists_only_what_exists() -> None:
    """Each file or folder a kustomization names is there, and each manifest is used by one."""
    used = set()
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            target = (kustomization.parent / resource).resolve()
            assert target.is_file() or (target / "kustomization.yaml").is_file(), (kustomization, resource)
            used.add(target)
    assert set(MANIFESTS) <= used


def test_the_secrets_example_names_settings_only() -> None:
    lines = (KUBERNETES / "secrets.env.example").read_text().splitlines()
    names = [line.partition("=")[0] for line in lines if line and not line.startswith("#")]
    assert names and all(name.removeprefix("AESQ_").lower() in Settings.model_fields for name in names), names


def render(overlay: Path) -> list[dict]:
    """The overlay's resources as `kubectl kustomize` (the documented command) renders them."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlays are rendered with `kubectl kustomize`")
    rendered = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


@pytest.fixture(params=OVERLAYS, ids=lambda path: path.name)
def rendered(request: pytest.FixtureRequest) -> list[dict]:
    return render(request.param)


def containers(documents: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(workload, container) of every Deployment and Job."""
    for document in documents:
        if document["kind"] in ("Deployment", "Job"):
            for container in document["spec"]["template"]["spec"]["containers"]:
                yield document, container


def one(documents: list[dict], kind: str, name: str) -> dict:
    (found,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def overlay_settings(documents: list[dict], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings an aesq container reads: the ConfigMap, and the Secret as the example fills it."""
    for name, value in one(documents, "ConfigMap", "aesq-config")["data"].items():
        assert not name.startswith("AESQ_") or name.removeprefix("AESQ_").lower() in Settings.model_fields, name
        monkeypatch.setenv(name, value)
    for line in (KUBERNETES / "secrets.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            monkeypatch.setenv(*line.split("=", 1))
    monkeypatch.setenv("AESQ_CONFIG", "/nonexistent/aesq.toml")
    return Settings()


def test_overlays_render_to_valid_resources_in_one_namespace(rendered: list[dict]) -> None:
    for document in rendered:
        validate(document)
        if document["kind"] in NAMESPACED:
            assert document["metadata"]["namespace"] == "aesq", document["metadata"]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered)
    assert ("Job", "aesq-migrate") in kinds and ("PersistentVolumeClaim", "aesq-weights") in kinds, kinds
    assert one(rendered, "Job", "aesq-migrate")["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "db",
        "upgrade",
    ]


def test_every_aesq_container_reads_the_shared_settings_and_they_are_valid(rendered, monkeypatch) -> None:
    """Same ConfigMap and Secret everywhere; the values parse; pools on other nodes share a result storage."""
    for workload, container in containers(rendered):
        sources = [next(iter(source.values()))["name"] for source in container["envFrom"]]
        assert sources == ["aesq-config", "aesq-secrets"], workload["metadata"]["name"]
        for variable in container.get("env", []):
            name = variable["name"]
            assert not name.startswith("AESQ_") or name.removeprefix("AESQ_").lower() in Settings.model_fields, name
        assert container["image"].startswith("registry.example.com/aesq"), container["image"]
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    settings = overlay_settings(rendered, monkeypatch)
    assert settings.pools and settings.result_storage is not None and settings.result_storage.startswith("s3://")
    assert settings.database_url is not None and settings.api_token is not None and settings.bridge_token is not None


def gpu_workers(documents: list[dict]) -> list[tuple[dict, dict]]:
    """(Deployment, container) of each scoring-pool Deployment."""
    return [(w, c) for w, c in containers(documents) if "--pool" in c["args"]]


def test_every_pool_has_gpu_workers_one_gpu_each_on_its_own_nodes(rendered, monkeypatch) -> None:
    """A pool without workers would hold every batch for AESQ_POOL_WAIT_SECONDS: each has its Deployment, whose
    pods take one GPU each, name themselves after the pod (one scoring slot per GPU), read the weights, and
    are told apart from the other pools' by their selectors and nodes."""
    settings = overlay_settings(rendered, monkeypatch)
    served, selectors, nodes = [], [], []
    for deployment, container in gpu_workers(rendered):
        environment = {variable["name"]: variable for variable in container["env"]}
        args = container["args"]
        assert args[:5] == ["worker", "--pool", "$(POOL)", "--name", "$(POD_NAME)"], args
        served.append(environment["POOL"]["value"])
        assert environment["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert container["image"].rpartition(":")[0].endswith("-cuda"), container["image"]
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        assert mounts[environment["AESQ_WEIGHTS_DIR"]["value"]]["readOnly"] is True
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert args[args.index("--health-port") + 1] == str(ports["health"])
        assert container["startupProbe"]["tcpSocket"]["port"] == container["livenessProbe"]["tcpSocket"]["port"]
        assert container["startupProbe"]["tcpSocket"]["port"] in ports
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["port"] in ports
        template = deployment["spec"]["template"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items()
        selectors.append(json.dumps(selector, sort_keys=True))
        nodes.append(json.dumps(template["spec"].get("nodeSelector"), sort_keys=True))
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert sorted(served) == sorted(settings.pools), (served, settings.pools)
    assert len(set(selectors)) == len(selectors) and len(set(nodes)) == len(nodes)


def test_services_reach_their_pods_and_probes_ask_the_health_of_what_serves(rendered, monkeypatch) -> None:
    """The dashboard is ready while the database answers (/healthz, with a Host it allows), the bridge while the
    database and the Prefect API do; the flows worker's probe asks Prefect's runner, which it enables."""
    settings = overlay_settings(rendered, monkeypatch)
    workloads = {w["metadata"]["name"]: (w, c) for w, c in containers(rendered)}
    for service in (d for d in rendered if d["kind"] == "Service"):
        targets = [
            container
            for workload, container in workloads.values()
            if workload["kind"] == "Deployment"
            and service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, service["metadata"]["name"]
        container = targets[0]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert all(port["targetPort"] in ports for port in service["spec"]["ports"])
        readiness = container["readinessProbe"]["httpGet"]
        assert readiness["path"] == "/healthz" and readiness["port"] in ports
        assert "tcpSocket" in container["livenessProbe"]
        headers = {header["name"]: header["value"] for header in readiness.get("httpHeaders", [])}
        if container["args"][0] == "serve":
            assert host_allowed(headers["Host"], settings.allowed_hosts)
            assert container["args"][container["args"].index("--port") + 1] == str(ports["http"])
        else:
            assert container["args"][:2] == ["bridge", "--listen"]
            assert container["args"][2] == f"0.0.0.0:{ports['http']}"
    assert {"aesq-dashboard", "aesq-bridge"} <= {d["metadata"]["name"] for d in rendered if d["kind"] == "Service"}

    _, worker = workloads["aesq-worker"]
    assert worker["args"] == ["worker"]
    environment = {variable["name"]: variable["value"] for variable in worker["env"]}
    assert environment["PREFECT_RUNNER_SERVER_ENABLE"] == "true"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = " ".join(worker[probe]["exec"]["command"])
        assert f"127.0.0.1:{environment['PREFECT_RUNNER_SERVER_PORT']}/health" in command, probe
