"""The Kubernetes manifests (deploy/kubernetes), checked offline for real: tools/k8scheck renders
each overlay with kustomize and decodes every document strictly into the upstream Go types
(k8s.io/api, Dapr's and KEDA's API packages); here `go test` runs it, a misspelt field is shown to
fail it, and the rendered documents are checked for consistency across files: ports, body size,
topic, consumer group and component names, grace periods, sizes, and the image's Dockerfile.

The first `go test` compiles Kubernetes', Dapr's and kustomize's packages: ~7 minutes on 2 cores
with the modules already in the module cache (Go's build cache keeps them: seconds afterwards)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from service.config import ServeSettings
from service.wasm.call import GuestLimits

K8SCHECK = ROOT / "tools" / "k8scheck"
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "prod")
GO_TIMEOUT_S = 1800  # a cold build cache (see above); CI's first run pays it once

# docs/performance.md, cold start: RSS after the first response.
RSS_ONE_WORKER_MIB = 123
RSS_PER_EXTRA_WORKER_MIB = 16


def go(*args: str, cwd: Path = K8SCHECK) -> subprocess.CompletedProcess[str]:
    go_binary = shutil.which("go")
    assert go_binary, "Go is needed for tools/k8scheck (it also builds daprd: python -m tools.dapr install)"
    return subprocess.run([go_binary, *args], cwd=cwd, capture_output=True, text=True, timeout=GO_TIMEOUT_S)


def test_go_check_decodes_every_manifest_strictly() -> None:
    result = go("test", "./...")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok "), result.stdout


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Each overlay's documents, rendered by kustomize (the Go check's own rendering)."""
    documents = {}
    for overlay in OVERLAYS:
        result = go("run", ".", "render", str(KUBERNETES / "overlays" / overlay))
        assert result.returncode == 0, result.stderr
        documents[overlay] = json.loads(result.stdout)
    return documents


def one(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, f"{quantity}: expected a binary quantity"
    return int(match[1]) * units[match[2]]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match[1])


def cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def container(deployment: dict[str, Any], name: str = "classifier") -> dict[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def environment(deployment: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(deployment)["env"]}


def component_metadata(component: dict[str, Any]) -> dict[str, Any]:
    return {
        item["name"]: item.get("value", item.get("secretKeyRef")) for item in component["spec"]["metadata"]
    }


def local_yaml_values(path: Path) -> dict[str, str]:
    """`- name: X` / `value: Y` pairs of a components/*.yaml (no YAML library in the project)."""
    return dict(re.findall(r"- name: (\S+)\n\s+value: \"?([^\"\n]*)\"?", path.read_text()))


def dockerfile_env() -> dict[str, str]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    env_line = next(line for line in text.splitlines() if line.startswith("ENV "))
    return dict(re.findall(r"(\w+)=(\S+)", env_line))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_id_ports_body_size_and_names_agree(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    documents = rendered[overlay]
    deployment = one(documents, "Deployment", "image-classifier")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    env = environment(deployment)
    serve = ServeSettings.from_env(env)
    app = container(deployment)
    ports = {port["name"]: port["containerPort"] for port in app["ports"]}

    assert annotations["dapr.io/enabled"] == "true"
    assert annotations["dapr.io/app-id"] == "image-classifier"
    assert annotations["dapr.io/app-protocol"] == "grpc"
    assert int(annotations["dapr.io/app-port"]) == serve.port == ports["grpc"] == ServeSettings().port
    # The kubelet probes the app's grpc.health.v1 (tests/test_readiness.py) on the pod IP; it says
    # SERVING only after daprd's app health probe passed, so that probe must be on.
    assert app["readinessProbe"]["grpc"]["port"] == serve.port and serve.listen_address == "0.0.0.0"
    assert annotations["dapr.io/enable-app-health-check"] == "true"
    assert (
        ports["metrics"]
        == int(env["CLASSIFIER_METRICS_PORT"])
        == int(dockerfile_env()["CLASSIFIER_METRICS_PORT"])
    )
    assert env["CLASSIFIER_CACHE_DIR"] == dockerfile_env()["CLASSIFIER_CACHE_DIR"]
    assert {m["mountPath"] for m in app["volumeMounts"]} >= {env["CLASSIFIER_CACHE_DIR"]}
    # daprd's body limit is the app's message limit, as in dapr.yaml.
    body_mib = mebibytes(annotations["dapr.io/max-body-size"])
    assert body_mib * (1 << 20) == serve.max_message_bytes
    assert f"maxBodySize: {annotations['dapr.io/max-body-size']}" in (ROOT / "dapr.yaml").read_text()
    # The components the app uses by name exist under those names (no name prefix may rename them).
    components = {c["metadata"]["name"]: c for c in documents if c["kind"] == "Component"}
    assert set(components) == {serve.state_store, serve.pubsub, serve.updates_pubsub}
    assert components[serve.state_store]["spec"]["type"].startswith("state.")
    assert components[serve.pubsub]["spec"]["type"] == components[serve.updates_pubsub]["spec"]["type"]
    resiliency = one(documents, "Resiliency")
    assert set(resiliency["spec"]["targets"]["components"]) == {serve.pubsub}
    assert annotations["dapr.io/config"] == one(documents, "Configuration")["metadata"]["name"]
    # One image for the app and the init container that seeds its cache volume.
    assert container(deployment, "seed-cache")["image"] == app["image"]
    user = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert f"USER {user}:" in (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_and_redis_are_referenced_alike(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    documents = rendered[overlay]
    components = [c for c in documents if c["kind"] == "Component"]
    hosts = {component_metadata(c)["redisHost"] for c in components}
    secrets = {json.dumps(component_metadata(c)["redisPassword"], sort_keys=True) for c in components}
    assert len(hosts) == 1
    assert secrets == {json.dumps({"key": "redis-password", "name": "redis"}, sort_keys=True)}
    assert all(c["auth"]["secretStore"] == "kubernetes" for c in components)
    for scaled in (d for d in documents if d["kind"] == "ScaledObject"):
        redis = next(t for t in scaled["spec"]["triggers"] if t["type"] == "redis-streams")
        assert {redis["metadata"]["address"]} == hosts
        auth = one(documents, "TriggerAuthentication", redis["authenticationRef"]["name"])
        assert auth["spec"]["secretTargetRef"] == [
            {"parameter": "password", "name": "redis", "key": "redis-password"}
        ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_targets_the_topic_and_group_daprd_uses(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    documents = rendered[overlay]
    deployment = one(documents, "Deployment", "image-classifier")
    app_id = deployment["spec"]["template"]["metadata"]["annotations"]["dapr.io/app-id"]
    serve = ServeSettings.from_env(environment(deployment))
    hpas = [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]
    scaled = [d for d in documents if d["kind"] == "ScaledObject"]
    # One autoscaler per Deployment: KEDA makes its own HPA, and two would fight.
    assert len(hpas) + len(scaled) == 1
    assert "replicas" not in deployment["spec"]  # the autoscaler's to set, not every apply's
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "image-classifier",
        }
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    for scaled_object in scaled:
        assert scaled_object["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        triggers = {t["type"]: t for t in scaled_object["spec"]["triggers"]}
        assert set(triggers) == {"redis-streams", "cpu"}
        stream = triggers["redis-streams"]["metadata"]
        assert stream["stream"] == serve.images_topic == ServeSettings().images_topic
        # daprd reads `images` with the pubsub component's consumerID, the app id when unset.
        pubsub = component_metadata(one(documents, "Component", serve.pubsub))
        assert stream["consumerGroup"] == pubsub.get("consumerID", app_id) == app_id
        assert int(stream["pendingEntriesCount"]) <= int(pubsub["queueDepth"]) + int(pubsub["concurrency"])
        assert scaled_object["spec"]["minReplicaCount"] >= 2  # the PDB's maxUnavailable 1 keeps one serving
    # updates must reach every replica: a group per daprd, never the shared app-id group.
    updates = component_metadata(one(documents, "Component", serve.updates_pubsub))
    assert "{uuid}" in updates["consumerID"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_is_in_step_with_the_app_grace(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    deployment = one(rendered[overlay], "Deployment", "image-classifier")
    pod = deployment["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    grace = ServeSettings.from_env(environment(deployment)).shutdown_grace_s
    pre_stop = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    block = seconds(annotations["dapr.io/block-shutdown-duration"])
    daprd_stop = int(annotations["dapr.io/graceful-shutdown-seconds"])
    termination = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > 0
    # daprd keeps its APIs up while the app finishes (it publishes results through them) ...
    assert block >= pre_stop + grace
    # ... and Kubernetes kills neither before both are done.
    assert termination >= pre_stop + grace
    assert termination >= block + daprd_stop
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_follow_the_measured_memory(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    deployment = one(rendered[overlay], "Deployment", "image-classifier")
    env = environment(deployment)
    resources = container(deployment)["resources"]
    workers = int(env["CLASSIFIER_WORKERS"])
    serve = ServeSettings.from_env(env)
    limits = GuestLimits()
    assert workers == cores(resources["requests"]["cpu"])  # one worker per core is best (docs/performance.md)
    rss = RSS_ONE_WORKER_MIB + RSS_PER_EXTRA_WORKER_MIB * (workers - 1)
    assert mebibytes(resources["requests"]["memory"]) >= rss
    # Worst case of one request in flight: twice the message, the guest's memory, 4 bytes a pixel.
    worst_request = (2 * serve.max_message_bytes + limits.memory_bytes + 4 * limits.max_image_pixels) / (
        1 << 20
    )
    assert mebibytes(resources["limits"]["memory"]) >= rss + workers * worst_request


def test_pubsub_and_resiliency_match_the_local_components(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The delivery settings sized together (retry budget vs processingTimeout) are the ones
    the real-daprd tests run with (components/)."""
    local = local_yaml_values(ROOT / "components" / "pubsub.yaml")
    local_resiliency = (ROOT / "components" / "resiliency.yaml").read_text()
    for overlay in OVERLAYS:
        pubsub = component_metadata(one(rendered[overlay], "Component", "pubsub"))
        for name in ("concurrency", "maxLenApprox", "processingTimeout", "redeliverInterval"):
            assert pubsub[name] == local[name], (overlay, name)
        retries = one(rendered[overlay], "Resiliency")["spec"]["policies"]["retries"]
        for policy in retries.values():
            for field, value in policy.items():
                assert re.search(rf"\b{field}: {value}\b", local_resiliency), (overlay, field)


def test_trigger_and_component_metadata_names_are_the_upstream_ones(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Metadata maps are free-form to the API types: their keys are checked against the KEDA
    scaler's and the components-contrib component's own field lists."""
    modules = Path(go("env", "GOMODCACHE").stdout.strip())
    keda_version = re.search(r"github.com/kedacore/keda/v2 (\S+)", (K8SCHECK / "go.mod").read_text())
    contrib_version = re.search(
        r"github.com/dapr/components-contrib (\S+)", (ROOT / "tools" / "daprd" / "go.mod").read_text()
    )
    assert keda_version and contrib_version
    scalers = modules / f"github.com/kedacore/keda/v2@{keda_version[1]}/pkg/scalers"
    keda_names = {
        name
        for source in ("redis_streams_scaler.go", "redis_scaler.go")
        for names in re.findall(r'keda:"name=([^,"]+)', (scalers / source).read_text())
        for name in names.split(";")
    }
    contrib = modules / f"github.com/dapr/components-contrib@{contrib_version[1]}"
    runtime_level = {"keyPrefix", "consumerID"}  # read by daprd itself (docs/dapr.md)
    for overlay in OVERLAYS:
        for scaled in (d for d in rendered[overlay] if d["kind"] == "ScaledObject"):
            redis = next(t for t in scaled["spec"]["triggers"] if t["type"] == "redis-streams")
            assert set(redis["metadata"]) <= keda_names, set(redis["metadata"]) - keda_names
        for component in (d for d in rendered[overlay] if d["kind"] == "Component"):
            kind, name = component["spec"]["type"].split(".")
            known = set(re.findall(r"- name: (\w+)", (contrib / kind / name / "metadata.yaml").read_text()))
            names = set(component_metadata(component))
            assert names <= known | runtime_level, names - known - runtime_level


@pytest.mark.parametrize(
    ("file", "field", "misspelt"),
    [
        ("base/pdb.yaml", "maxUnavailable: 1", "maxUnavailble: 1"),
        ("base/dapr/statestore.yaml", "secretKeyRef:", "secretKeyref:"),
        ("overlays/prod/scaledobject.yaml", "pollingInterval: 15", "pollingIntervall: 15"),
        ("base/deployment.yaml", "dapr.io/app-protocol: grpc", "dapr.io/app-protocl: grpc"),
    ],
)
def test_a_misspelt_field_fails_the_check(tmp_path: Path, file: str, field: str, misspelt: str) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    text = (copy / file).read_text()
    assert text.count(field) == 1
    (copy / file).write_text(text.replace(field, misspelt))
    result = go("run", ".", "check", str(copy / "overlays" / "dev"), str(copy / "overlays" / "prod"))
    assert result.returncode == 1
    wrong = misspelt.split(":")[0]
    assert wrong in result.stderr, result.stderr
    # The intact copy passes: the failure is the misspelling's.
    (copy / file).write_text(text)
    assert go("run", ".", "check", str(copy / "overlays" / "prod")).returncode == 0
