"""Every overlay an operator may pick (infra/ itself and infra/overlays/*) builds with
`kubectl kustomize`, every object it makes is valid against the Kubernetes schemas (offline,
kubernetes-validate; the two custom resources, KEDA's ScaledObject and KubeRay's RayCluster,
by the fields their controllers need), and what it deploys agrees with the server: ports and
probes with the config, autoscaling with the metric the server exports, the Redis address with
the Redis the overlay chooses, the CronJob's arguments with `augur materialize`."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from augur.cli.main import _parser
from tests.infra.manifests import INFRA, augur_config, defined_metrics, metrics_in, pod_spec

OVERLAYS = [INFRA, *sorted(p for p in (INFRA / "overlays").iterdir() if p.is_dir())]
KUBERNETES = "1.32.0"  # the API version the objects are checked against (kubectl's here)
CUSTOM = {("keda.sh/v1alpha1", "ScaledObject"), ("ray.io/v1", "RayCluster")}
SIGNAL = "augur_model_calls_in_flight"  # the autoscaling signal (augur/serving/metrics.py)
ADAPTER = INFRA / "prometheus-adapter" / "values.yaml"


def _name(path: Path) -> str:
    return "default" if path == INFRA else path.name


@functools.cache
def build(path: Path) -> dict[tuple[str, str], dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    run = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, f"{path}: {run.stderr}"
    objects = {}
    for doc in yaml.safe_load_all(run.stdout):
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in objects, f"{_name(path)} makes {key} twice"
        objects[key] = doc
    return objects


def augur_containers(objects: dict) -> list[tuple[dict, dict]]:
    kinds = {"Deployment", "StatefulSet", "CronJob"}
    return [
        (obj, c)
        for (kind, _), obj in objects.items()
        if kind in kinds
        for c in pod_spec(obj)["containers"]
        if c["image"].split(":")[0] == "augur"
        and any(v["name"] == "AUGUR_REDIS__ADDRESS" for v in c.get("env", []))
    ]


@pytest.mark.parametrize("path", OVERLAYS, ids=_name)
def test_every_object_of_every_overlay_is_valid_kubernetes(path):
    import kubernetes_validate

    for (kind, name), obj in build(path).items():
        if kind != "Namespace":
            assert obj["metadata"].get("namespace") == "augur", f"{kind} {name}"
        if (obj["apiVersion"], kind) in CUSTOM:
            continue  # no schema in kubernetes-validate: checked by the tests below
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{_name(path)}: {kind} {name}: {e.message} at {list(e.path)}")


@pytest.mark.parametrize("path", OVERLAYS, ids=_name)
def test_serving_ports_and_probes_agree_with_the_config(path, tmp_path):
    cfg = augur_config(tmp_path)
    objects = build(path)
    (container,) = pod_spec(objects[("Deployment", "augur")])["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": cfg.server.port,
        "admin": cfg.server.admin_port,
        "metrics": cfg.server.metrics_port,
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        if "grpc" in spec:
            assert spec["grpc"]["port"] == cfg.server.port, probe
        else:  # TLS on: the exec probe of infra/secure dials the gRPC port itself
            command = spec["exec"]["command"]
            assert command[command.index("--port") + 1] == str(cfg.server.port), probe
    annotations = objects[("Deployment", "augur")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(cfg.server.metrics_port)
    service = {p["name"]: p["port"] for p in objects[("Service", "augur")]["spec"]["ports"]}
    assert service["grpc"] == cfg.server.port and service["metrics"] == cfg.server.metrics_port


@pytest.mark.parametrize("path", OVERLAYS, ids=_name)
def test_one_autoscaler_scales_the_deployment_on_calls_in_flight(path):
    objects = build(path)
    kinds = ("HorizontalPodAutoscaler", "ScaledObject")
    scalers = [obj for (kind, _), obj in objects.items() if kind in kinds]
    assert len(scalers) == 1, "two autoscalers on one Deployment fight; none scales nothing"
    (scaler,) = scalers
    assert scaler["spec"]["scaleTargetRef"]["name"] == "augur"
    assert scaler["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert SIGNAL in defined_metrics()
    if scaler["kind"] == "ScaledObject":
        assert scaler["spec"]["minReplicaCount"] >= 2
        (trigger,) = scaler["spec"]["triggers"]
        assert trigger["type"] == "prometheus" and trigger.get("metricType") == "AverageValue"
        assert metrics_in(trigger["metadata"]["query"]) == {SIGNAL}
        assert 'namespace="augur"' in trigger["metadata"]["query"]
        assert float(trigger["metadata"]["threshold"]) == 16
    else:
        assert scaler["spec"]["minReplicas"] >= 2
        (metric,) = scaler["spec"]["metrics"]
        assert metric["type"] == "Pods", "CPU is not what fills a one-process pod"
        (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
        assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
        assert re.fullmatch(rule["name"]["matches"], SIGNAL)
        assert metrics_in(rule["seriesQuery"]) == {SIGNAL}
        assert float(metric["pods"]["target"]["averageValue"]) == 16


@pytest.mark.parametrize("path", OVERLAYS, ids=_name)
def test_every_augur_container_reads_the_redis_the_overlay_deploys(path):
    objects = build(path)
    cluster = ("StatefulSet", "augur-redis") not in objects
    # the cluster's seeds are its pods (the slot map names them), the first leading
    host = "redis-cluster-0.redis-cluster" if cluster else "augur-redis"
    if cluster:  # the single Redis is gone, all but the password Secret both use
        # (the cluster's nodes read the same generated redis.conf: its ConfigMap stays)
        shared = {"Secret", "ConfigMap"}
        left = [k for k in objects if k[1].startswith("augur-redis") and k[0] not in shared]
        volumes = objects[("StatefulSet", "redis-cluster")]["spec"]["template"]["spec"]["volumes"]
        config = next(k for k in objects if k[1].startswith("augur-redis-config"))
        assert config[1] in {v.get("configMap", {}).get("name") for v in volumes}
        assert not left, f"{_name(path)} deploys Redis Cluster beside the single Redis: {left}"
    else:
        service = objects[("Service", "augur-redis")]
        assert service["spec"]["ports"][0]["port"] == 6379
    containers = augur_containers(objects)
    assert len(containers) >= 3  # serving, toolbox, materialize
    for workload, container in containers:
        env = {v["name"]: v.get("value") for v in container.get("env", [])}
        address = env["AUGUR_REDIS__ADDRESS"]
        assert address.startswith(f"{host}:6379,"), (workload["metadata"]["name"], address)
        assert env.get("AUGUR_REDIS__CLUSTER") == ("true" if cluster else None), address


@pytest.mark.parametrize("path", OVERLAYS, ids=_name)
def test_the_materialize_cronjob_runs_an_engine_augur_has(path):
    objects = build(path)
    cronjob = objects[("CronJob", "augur-materialize")]
    (container,) = pod_spec(cronjob)["containers"]
    args = _parser().parse_args(container["args"])
    assert args.command == "materialize"
    env = {v["name"]: v.get("value") for v in container.get("env", [])}
    if args.engine != "ray":
        assert "RAY_ADDRESS" not in env and ("RayCluster", "augur-ray") not in objects
        return
    ray = objects[("RayCluster", "augur-ray")]
    (head,) = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    client = {p["name"]: p["containerPort"] for p in head["ports"]}["client"]
    assert env["RAY_ADDRESS"] == f"ray://{ray['metadata']['name']}-head-svc:{client}"
    for group in [ray["spec"]["headGroupSpec"], *ray["spec"]["workerGroupSpecs"]]:
        (node,) = group["template"]["spec"]["containers"]
        assert node["image"] == container["image"], "driver and workers run one Augur and Ray"
        mounts = {m["mountPath"] for m in node["volumeMounts"]}
        assert "/srv/augur" in mounts, "workers read the parquet sources on augur-repos"
    # TLS and tokens do not touch the job: it talks to Redis and Ray only.
    assert all("tls" not in v["name"] for v in pod_spec(cronjob).get("volumes", []))
