"""The Kubernetes objects under infra/k8s/ agree with the config they deploy: every file parses,
every object names its namespace, the ConfigMap's Augur config matches the Deployment's ports,
probes and grace period, Services and autoscaling select the serving pods, kustomize applies
every manifest but the Secret templates (and, where kubectl is installed, builds what the tests
read)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.infra.manifests import (
    INFRA,
    K8S,
    SECRET_TEMPLATES,
    augur_config,
    augur_containers,
    config_of,
    manifest,
    manifests,
    pod_labels,
    pod_spec,
    secure_manifests,
    secure_object,
    selects,
    serving,
    workloads,
    yaml_documents,
    yaml_files,
)


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_parses(path):
    documents = yaml_documents(path)
    assert documents, f"{path} holds no YAML document"
    if path.name.endswith(".patch.yaml"):  # a JSON patch: one list of operations
        (operations,) = documents
        assert operations and all(
            op["op"] in ("test", "add", "replace", "remove") and op["path"].startswith("/")
            for op in operations
        )
    else:
        assert all(isinstance(doc, dict) for doc in documents)


def test_every_kubernetes_object_names_kind_version_and_namespace():
    for (kind, name), obj in manifests().items():
        assert obj["apiVersion"], f"{kind} {name} has no apiVersion"
        if kind != "Namespace":
            assert obj["metadata"].get("namespace") == "augur", f"{kind} {name}"


def test_configmap_holds_an_augur_config_that_loads_for_a_pod(tmp_path):
    cfg = augur_config(tmp_path)
    assert cfg.redis.address != "embedded", "an embedded Redis in a pod starts empty"
    # The kubelet's probes and Prometheus connect to the pod IP, not to loopback.
    assert cfg.server.host in ("0.0.0.0", "::", "[::]")
    assert cfg.server.metrics_host in ("0.0.0.0", "::", "[::]")
    assert cfg.server.metrics_port > 0
    assert cfg.feature_repo.is_absolute() and cfg.model_repo.is_absolute()


def test_configmap_sets_the_lifecycle_reliability_and_admin_options(tmp_path):
    """Set in the file itself (not left to defaults), and sensible together."""
    raw = yaml.safe_load(manifest("ConfigMap", "augur-config")["data"]["augur.yaml"])
    for option in (
        "watch_interval_s",
        "admin",
        "admin_host",
        "admin_port",
        "max_in_flight",
        "model_queue",
    ):
        assert option in raw["server"], f"server.{option} is not set in the ConfigMap"
    for option in ("read_timeout_ms", "breaker_failures", "breaker_cooldown_ms"):
        assert option in raw["redis"], f"redis.{option} is not set in the ConfigMap"
    cfg = augur_config(tmp_path)
    server, redis = cfg.server, cfg.redis
    assert server.watch_interval_s > 0, "pods must watch the model repository"
    assert server.admin and server.admin_host in ("0.0.0.0", "::", "[::]")
    assert server.admin_port not in (0, server.port, server.metrics_port)
    assert server.handler_threads <= server.max_in_flight
    assert 0 < server.model_queue <= server.max_in_flight
    assert 0 < redis.read_timeout_ms <= 1000, "a real-time read never waits a second"
    assert redis.breaker_failures >= 1 and redis.breaker_cooldown_ms > 0


def test_default_deployment_needs_no_tls_or_token_secrets(tmp_path):
    """TLS and tokens are the opt-in component infra/secure/: the base config and pods
    reference neither its settings nor its Secrets."""
    cfg = config_of(serving()[1], tmp_path)
    assert not (cfg.server.tls_cert or cfg.server.tls_key or cfg.server.tls_client_ca)
    assert not (cfg.auth.tokens_file or cfg.auth.tokens)
    kustomization = yaml.safe_load((INFRA / "kustomization.yaml").read_text())
    assert "components" not in kustomization
    secrets = {"augur-tls", "augur-auth"}
    for workload in workloads():
        text = json.dumps(workload)
        assert not any(f'"{name}"' in text for name in secrets), workload["metadata"]["name"]


def test_deployment_ports_and_probes_match_the_config(tmp_path):
    cfg = augur_config(tmp_path)
    deployment, container = serving()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": cfg.server.port,
        "admin": cfg.server.admin_port,
        "metrics": cfg.server.metrics_port,
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # service omitted or "": the server's overall health, which SIGTERM turns NOT_SERVING
        assert container[probe]["grpc"]["port"] == cfg.server.port, probe
        assert container[probe]["grpc"].get("service", "") == "", probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(cfg.server.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_exposes_the_grpc_and_metrics_ports_of_the_serving_pods(tmp_path):
    cfg = augur_config(tmp_path)
    deployment, container = serving()
    service = manifest("Service", "augur")
    assert selects(service["spec"]["selector"], pod_labels(deployment))
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == cfg.server.port
    assert ports["metrics"]["port"] == cfg.server.metrics_port
    for port in ports.values():
        target = port["targetPort"]
        assert named.get(target, target) == port["port"], port["name"]
    # Clients discover pods through this Service: Admin is not on it.
    assert cfg.server.admin_port not in {named.get(p["targetPort"]) for p in ports.values()}


def test_admin_port_is_exposed_only_by_the_internal_admin_service(tmp_path):
    cfg = augur_config(tmp_path)
    deployment, container = serving()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    admin = manifest("Service", "augur-admin")
    assert selects(admin["spec"]["selector"], pod_labels(deployment))
    # ClusterIP, not headless: any one pod applies an Admin change for all of them.
    assert admin["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert admin["spec"].get("clusterIP") != "None"
    (port,) = admin["spec"]["ports"]
    assert named[port["targetPort"]] == cfg.server.admin_port == port["port"]
    for (kind, name), service in manifests().items():
        if kind == "Service" and name != "augur-admin":
            exposed = {
                named.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]
            }
            assert cfg.server.admin_port not in exposed, f"Service {name} exposes Admin"


def test_pods_get_longer_to_stop_than_the_server_drains(tmp_path):
    cfg = augur_config(tmp_path)
    deployment, _ = serving()
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > cfg.server.grace_seconds


def test_hpa_pdb_and_service_select_the_serving_pods_only():
    deployment, _ = serving()
    labels = pod_labels(deployment)
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    hpa = manifest("HorizontalPodAutoscaler", "augur")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "augur",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = manifest("PodDisruptionBudget", "augur")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    selector = manifest("Service", "augur")["spec"]["selector"]
    others = [w for w in workloads() if w is not deployment]
    assert others
    for workload in others:
        assert not selects(selector, pod_labels(workload)), workload["metadata"]["name"]


@pytest.mark.parametrize("variant", ["base", "secure"])
def test_every_mount_names_one_volume_of_its_pod(variant):
    objects = manifests() if variant == "base" else secure_manifests()
    kinds = {"Deployment", "StatefulSet", "CronJob"}
    for (kind, name), workload in objects.items():
        if kind not in kinds:
            continue
        spec = pod_spec(workload)
        volumes = [v["name"] for v in spec.get("volumes", [])]
        assert len(volumes) == len(set(volumes)), f"{name}: volume names repeat: {volumes}"
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for container in spec["containers"]:
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
            assert len(mounts) == len(set(mounts)), f"{name}: mount paths repeat"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in set(volumes) | claims, f"{name}: no volume {mount['name']}"
            for volume in volumes:
                used = any(m["name"] == volume for m in container.get("volumeMounts", []))
                assert used or len(spec["containers"]) > 1, f"{name}: volume {volume} unused"


def test_kubectl_builds_the_base_and_the_secure_component_as_the_tests_read_them(tmp_path):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")

    def build(directory: Path) -> dict[tuple[str, str], dict]:
        run = subprocess.run(
            ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(run.stdout)}

    base = build(INFRA)
    assert ("ConfigMap", "augur-probe") not in base
    assert base[("Deployment", "augur")] == manifest("Deployment", "augur")
    # An overlay outside infra/ (kustomize refuses one inside its base).
    (tmp_path / "infra").symlink_to(INFRA, target_is_directory=True)
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "kustomization.yaml").write_text(
        "resources: [../infra]\ncomponents: [../infra/secure]\n"
    )
    secure = build(tmp_path / "overlay")
    for key in (
        ("Deployment", "augur"),
        ("Deployment", "augur-toolbox"),
        ("Service", "augur"),
        ("Service", "augur-admin"),
    ):
        assert secure[key] == secure_object(*key), f"{key}: kustomize builds something else"
    probe = secure[("ConfigMap", "augur-probe")]
    assert probe["metadata"]["namespace"] == "augur"
    assert probe["data"] == secure_object("ConfigMap", "augur-probe")["data"]


def test_kustomization_applies_every_manifest_but_the_secret_templates():
    default = yaml.safe_load((INFRA / "kustomization.yaml").read_text())
    assert default["resources"] == ["k8s"], "`kubectl apply -k infra/` applies the base"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {(K8S / r).resolve() for r in kustomization["resources"]}
    assert all(p.exists() for p in listed), sorted(str(p) for p in listed if not p.exists())
    manifests_listed = set(K8S.glob("*.yaml")) - {K8S / "kustomization.yaml"}
    assert manifests_listed - listed == SECRET_TEMPLATES
    assert {p.name for p in SECRET_TEMPLATES} == {
        "redis-secret.template.yaml",
        "tls-secret.template.yaml",
        "auth-secret.template.yaml",
    }
    for template in SECRET_TEMPLATES:
        for secret in yaml_documents(template):
            assert secret["kind"] == "Secret"
            assert all(v == "" or "\n" in v for v in secret["stringData"].values()), (
                f"{template.name} holds a value: templates hold placeholders only"
            )
    for generator in yaml.safe_load((INFRA / "redis" / "kustomization.yaml").read_text())[
        "configMapGenerator"
    ]:
        for entry in generator["files"]:
            assert (INFRA / "redis" / entry.split("=", 1)[-1]).is_file(), entry
    images = {i["name"] for i in kustomization["images"]}
    assert {c["image"].split(":")[0] for _, c in augur_containers()} <= images
