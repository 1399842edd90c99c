"""The deployment files under infra/ agree with the code they deploy.

Every config parses; the Augur config in the ConfigMap loads and matches the manifests' ports,
probes and grace period; every container command is one `augur` accepts; every metric that
the alerts and the dashboard query is defined in predictor.metrics, with the labels used.
No cluster, Prometheus or Grafana is involved: these are static checks.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import grpc
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from augur import cli, config
from featurestore.connection import parse_address
from predictor import metrics
from proto.augur.v1 import predictor_pb2

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
SECRET_TEMPLATE = K8S / "redis-secret.template.yaml"
ALERTS = INFRA / "prometheus" / "alerts.yml"
PROMETHEUS = INFRA / "prometheus" / "prometheus.yml"
DASHBOARD = INFRA / "grafana" / "augur-dashboard.json"
REDIS_CONF = INFRA / "redis" / "redis.conf"

# Labels the scrape job of prometheus.yml puts on every series it collects.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "node"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SELECTOR = re.compile(r"\b(augur_[a-z0-9_]+)(?:\s*\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\(\s*(\w+)\s*(?:\{[^}]*\})?\s*,\s*(\w+)\s*\)")


# ---- reading the files -------------------------------------------------------------------


def _documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def _manifests() -> dict[tuple[str, str], dict]:
    """(kind, name) -> object, for every Kubernetes object under infra/k8s/."""
    objects: dict[tuple[str, str], dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} is defined twice under infra/k8s"
            objects[key] = doc
    return objects


def _manifest(kind: str, name: str) -> dict:
    objects = _manifests()
    assert (kind, name) in objects, f"no {kind} {name!r} under infra/k8s"
    return objects[(kind, name)]


def _pod_spec(workload: dict) -> dict:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def _pod_labels(workload: dict) -> dict:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return workload["spec"]["template"]["metadata"]["labels"]


def _workloads() -> list[dict]:
    kinds = {"Deployment", "StatefulSet", "CronJob"}
    return [obj for (kind, _), obj in _manifests().items() if kind in kinds]


def _augur_containers() -> list[tuple[dict, dict]]:
    """(workload, container) for every container that runs the `augur` command."""
    found = []
    for workload in _workloads():
        for container in _pod_spec(workload)["containers"]:
            if container["image"].split(":")[0] == "augur":
                found.append((workload, container))
    return found


def _serve() -> tuple[dict, dict]:
    deployment = _manifest("Deployment", "augur")
    (container,) = _pod_spec(deployment)["containers"]
    return deployment, container


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _mount_source(workload: dict, container: dict, path: PurePosixPath) -> tuple[dict, dict]:
    """The volumeMount holding `path`, and the pod volume behind it (None for a volume of a
    StatefulSet's volumeClaimTemplates)."""
    volumes = {v["name"]: v for v in _pod_spec(workload).get("volumes", [])}
    for mount in container["volumeMounts"]:
        if path.is_relative_to(mount["mountPath"]):
            return mount, volumes.get(mount["name"])
    raise AssertionError(f"{path} is on no volume of container {container['name']}")


def _alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert expression and dashboard query."""
    queries = [(f"alert {r['alert']}", r["expr"]) for r in _alert_rules()]
    dashboard = _dashboard()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queries.append((f"panel {panel['title']!r}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            if isinstance(query, dict):
                query = query["query"]
            queries.append((f"variable {variable['name']}", query))
    return queries


@functools.cache
def _defined_metrics() -> dict[str, set[str]]:
    """Exposed name -> label names, for every metric predictor.metrics defines."""
    defined = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            # prometheus_client keeps a counter's name without "_total"; it exposes it with.
            name = value._name + "_total" if value._type == "counter" else value._name
            defined[name] = set(value._labelnames)
    return defined


def _base_metric(reference: str) -> tuple[str, str]:
    """(metric name, histogram suffix or "") of a name used in a query."""
    for suffix in HISTOGRAM_SUFFIXES:
        if reference.endswith(suffix):
            return reference[: -len(suffix)], suffix
    return reference, ""


def _augur_config(tmp_path: Path) -> config.Config:
    path = tmp_path / "augur.yaml"
    path.write_text(_manifest("ConfigMap", "augur-config")["data"]["augur.yaml"])
    return config.load(path, environ={})


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of an env value from the variables defined before it."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)


def _k8s_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)", quantity).groups()
    return int(number) * units[unit]


def _redis_bytes(size: str) -> int:
    units = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "k": 10**3, "m": 10**6, "g": 10**9}
    number, unit = re.fullmatch(r"(\d+)([a-z]*)", size.lower()).groups()
    return int(number) * (units[unit] if unit else 1)


def _redis_directives() -> dict[str, str]:
    directives = {}
    for line in REDIS_CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            assert name not in directives, f"redis.conf sets {name} twice"
            directives[name] = value.strip()
    return directives


# ---- every file parses -------------------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_parses(path):
    documents = _documents(path)
    assert documents, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in documents)


def test_every_kubernetes_object_names_kind_version_and_namespace():
    for (kind, name), obj in _manifests().items():
        assert obj["apiVersion"], f"{kind} {name} has no apiVersion"
        if kind != "Namespace":
            assert obj["metadata"].get("namespace") == "augur", f"{kind} {name}"


def test_dashboard_is_a_grafana_dashboard_whose_panels_do_not_overlap():
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_dashboard_data_source_is_a_prometheus_variable():
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        for item in (panel, *panel["targets"]):
            expected = {"type": "prometheus", "uid": "${datasource}"}
            assert item["datasource"] == expected, panel["title"]


def test_alert_rules_are_named_once_with_a_severity_and_a_summary():
    rules = _alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


# ---- queries use metrics and labels the service exports -------------------------------


def test_predictor_metrics_defines_the_metrics_infra_relies_on():
    defined = _defined_metrics()
    assert {"augur_requests_total", "augur_request_latency_seconds", "augur_models_serving"} <= set(
        defined
    )


def test_every_queried_metric_is_defined_in_predictor_metrics():
    defined = _defined_metrics()
    queried = set()
    for where, query in _queries():
        for reference, _ in SELECTOR.findall(query):
            name, _ = _base_metric(reference)
            assert name in defined, f"{where} queries {reference}, not in predictor/metrics.py"
            queried.add(name)
    assert queried, "no augur_* metric is queried at all"


def test_every_label_a_query_uses_is_one_the_metric_has():
    defined = _defined_metrics()
    for where, query in _queries():
        used_metrics = set()
        for reference, matchers in SELECTOR.findall(query):
            name, suffix = _base_metric(reference)
            labels = defined[name] | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
            used_metrics.add(name)
            for label, _, _ in MATCHER.findall(matchers):
                assert label in labels, f"{where}: {name} has no label {label!r}"
        known = set().union(*(defined[m] for m in used_metrics)) | TARGET_LABELS | {"le"}
        for group in GROUPING.findall(query):
            for label in filter(None, (s.strip() for s in group.split(","))):
                assert label in known, f"{where}: groups by {label!r}, which no metric has"
        for metric, label in LABEL_VALUES.findall(query):
            assert label in defined[metric], f"{where}: {metric} has no label {label!r}"


def test_label_values_in_queries_are_values_the_service_produces():
    methods = set(predictor_pb2.DESCRIPTOR.services_by_name["Predictor"].methods_by_name)
    codes = {c.name for c in grpc.StatusCode}
    source = "\n".join(p.read_text() for p in (ROOT / "predictor").rglob("*.py"))
    views = (ROOT / "examples" / "fraud" / "feature_repo" / "features.py").read_text()
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    for where, query in _queries():
        for _, matchers in SELECTOR.findall(query):
            for label, op, value in MATCHER.findall(matchers):
                values = value.split("|") if op in ("=~", "!~") else [value]
                if any(re.search(r"[$.*+?()\[\]]", v) for v in values):
                    continue  # a Grafana variable or a pattern, not literal values
                for v in values:
                    if label == "code":
                        assert v in codes, f"{where}: {v!r} is not a gRPC status code"
                    elif label == "method":
                        assert v in methods, f"{where}: Predictor has no method {v!r}"
                    elif label in ("stage", "outcome"):
                        assert f'"{v}"' in source, f"{where}: predictor never sets {label}={v!r}"
                    elif label == "feature_view":
                        assert f'name="{v}"' in views, f"{where}: no feature view {v!r}"
                    elif label == "job":
                        assert v in jobs, f"{where}: prometheus.yml has no job {v!r}"


# ---- the ConfigMap's config and the serving Deployment agree ---------------------------


def test_configmap_holds_an_augur_config_that_loads_for_a_pod(tmp_path):
    cfg = _augur_config(tmp_path)
    assert cfg.redis.address != "embedded", "an embedded Redis in a pod starts empty"
    # The kubelet's probes and Prometheus connect to the pod IP, not to loopback.
    assert cfg.server.host in ("0.0.0.0", "::", "[::]")
    assert cfg.server.metrics_host in ("0.0.0.0", "::", "[::]")
    assert cfg.server.metrics_port > 0
    assert cfg.feature_repo.is_absolute() and cfg.model_repo.is_absolute()


def test_deployment_ports_and_probes_match_the_config(tmp_path):
    cfg = _augur_config(tmp_path)
    deployment, container = _serve()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": cfg.server.port, "metrics": cfg.server.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # service omitted or "": the server's overall health, which SIGTERM turns NOT_SERVING
        assert container[probe]["grpc"]["port"] == cfg.server.port, probe
        assert container[probe]["grpc"].get("service", "") == "", probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(cfg.server.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_exposes_the_grpc_and_metrics_ports_of_the_serving_pods(tmp_path):
    cfg = _augur_config(tmp_path)
    deployment, container = _serve()
    service = _manifest("Service", "augur")
    assert _selects(service["spec"]["selector"], _pod_labels(deployment))
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == cfg.server.port
    assert ports["metrics"]["port"] == cfg.server.metrics_port
    for port in ports.values():
        target = port["targetPort"]
        assert named.get(target, target) == port["port"], port["name"]


def test_pods_get_longer_to_stop_than_the_server_drains(tmp_path):
    cfg = _augur_config(tmp_path)
    deployment, _ = _serve()
    grace = _pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > cfg.server.grace_seconds


def test_hpa_pdb_and_service_select_the_serving_pods_only():
    deployment, _ = _serve()
    labels = _pod_labels(deployment)
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    hpa = _manifest("HorizontalPodAutoscaler", "augur")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "augur",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _manifest("PodDisruptionBudget", "augur")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    selector = _manifest("Service", "augur")["spec"]["selector"]
    others = [w for w in _workloads() if w is not deployment]
    assert others
    for workload in others:
        assert not _selects(selector, _pod_labels(workload)), workload["metadata"]["name"]


# ---- containers run real commands with real config ---------------------------------------


def test_every_augur_container_runs_a_command_augur_accepts():
    parser = cli._parser()
    seen = set()
    for workload, container in _augur_containers():
        if container.get("command") != ["augur"]:
            continue
        try:
            args = parser.parse_args(container["args"])
        except SystemExit:
            pytest.fail(f"{workload['metadata']['name']}: augur rejects {container['args']}")
        seen.add(args.command)
        assert args.config == Path("/etc/augur/augur.yaml")
        mount, volume = _mount_source(workload, container, PurePosixPath(args.config))
        assert volume["configMap"]["name"] == "augur-config"
        key = str(PurePosixPath(args.config).relative_to(mount["mountPath"]))
        assert key in _manifest("ConfigMap", "augur-config")["data"]
        if args.command == "materialize":
            assert args.start is None, "the scheduled run must be incremental (no --start)"
    assert {"serve", "materialize"} <= seen


def test_augur_commands_in_the_readme_parse():
    parser = cli._parser()
    commands = re.findall(r"-- (augur [^\n]*)", (INFRA / "README.md").read_text())
    assert commands
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"infra/README.md: augur rejects {command!r}")


def test_env_overrides_are_config_options_and_reach_the_redis_service(tmp_path):
    path = tmp_path / "augur.yaml"
    path.write_text(_manifest("ConfigMap", "augur-config")["data"]["augur.yaml"])
    secret = _documents(SECRET_TEMPLATE)[0]
    redis_service = _manifest("Service", "augur-redis")
    password = "0123456789abcdef"
    for workload, container in _augur_containers():
        env = {}
        for var in container["env"]:
            if "valueFrom" in var:
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in secret["stringData"]
                env[var["name"]] = password
            else:
                env[var["name"]] = _expand(var["value"], env)
        overrides = {k: v for k, v in env.items() if k.startswith(config.ENV_PREFIX)}
        cfg = config.load(path, environ=overrides)
        where = f"{workload['metadata']['name']}/{container['name']}"
        assert cfg.redis.address == env["AUGUR_REDIS__ADDRESS"], where
        target = parse_address(cfg.redis.address)
        assert target["host"] == redis_service["metadata"]["name"], where
        assert target["port"] == redis_service["spec"]["ports"][0]["port"], where
        assert target["password"] == password, where
        if "AUGUR_REDIS" in env:  # what feature_store.yaml reads, for the feast CLI
            assert env["AUGUR_REDIS"] == env["AUGUR_REDIS__ADDRESS"], where


def test_repositories_are_on_the_shared_volume_read_only_where_served(tmp_path):
    cfg = _augur_config(tmp_path)
    claim = _manifest("PersistentVolumeClaim", "augur-repos")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for workload, container in _augur_containers():
        for repo in (cfg.feature_repo, cfg.model_repo):
            mount, volume = _mount_source(workload, container, PurePosixPath(repo))
            assert volume["persistentVolumeClaim"]["claimName"] == "augur-repos"
            serving = container.get("args", [None])[0] == "serve"
            # Materialization writes Feast's registry; serving only reads.
            assert mount.get("readOnly", False) == serving, workload["metadata"]["name"]


# ---- Redis ---------------------------------------------------------------------------------


def test_redis_conf_persists_never_evicts_and_holds_no_password():
    directives = _redis_directives()
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["maxmemory-policy"] == "noeviction"
    assert directives["protected-mode"] == "yes"
    assert "requirepass" not in directives
    assert directives["bind"]


def test_redis_statefulset_uses_redis_conf_and_fits_its_memory_limit():
    directives = _redis_directives()
    statefulset = _manifest("StatefulSet", "augur-redis")
    service = _manifest("Service", "augur-redis")
    assert statefulset["spec"]["replicas"] == 1, "Augur reads one Redis endpoint"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert _selects(service["spec"]["selector"], _pod_labels(statefulset))
    (container,) = _pod_spec(statefulset)["containers"]
    assert "/etc/redis/redis.conf" in " ".join(container["args"])
    _, volume = _mount_source(statefulset, container, PurePosixPath("/etc/redis/redis.conf"))
    generators = yaml.safe_load((INFRA / "kustomization.yaml").read_text())["configMapGenerator"]
    (generator,) = [g for g in generators if g["name"] == volume["configMap"]["name"]]
    assert any(f.split("=", 1) == ["redis.conf", "redis/redis.conf"] for f in generator["files"])
    data, volume = _mount_source(statefulset, container, PurePosixPath(directives["dir"]))
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert volume is None and data["name"] in claims, "Redis data must be on its own claim"
    assert int(directives["port"]) == container["ports"][0]["containerPort"]
    assert service["spec"]["ports"][0]["port"] == int(directives["port"])
    limit = _k8s_bytes(container["resources"]["limits"]["memory"])
    assert _redis_bytes(directives["maxmemory"]) <= 0.8 * limit


# ---- packaging ---------------------------------------------------------------------------


def test_kustomization_applies_every_manifest_but_the_secret_template():
    kustomization = yaml.safe_load((INFRA / "kustomization.yaml").read_text())
    listed = {INFRA / r for r in kustomization["resources"]}
    assert all(p.exists() for p in listed), sorted(str(p) for p in listed if not p.exists())
    assert set(K8S.glob("*.yaml")) - listed == {SECRET_TEMPLATE}
    for generator in kustomization["configMapGenerator"]:
        for entry in generator["files"]:
            assert (INFRA / entry.split("=", 1)[-1]).is_file(), entry
    images = {i["name"] for i in kustomization["images"]}
    assert {c["image"].split(":")[0] for _, c in _augur_containers()} <= images


def test_dockerfile_installs_the_pinned_torch_and_the_augur_command():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch_pin,) = [d for d in project["dependencies"] if d.startswith("torch==")]
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert f"--index-url https://download.pytorch.org/whl/cpu {torch_pin}" in dockerfile
    assert "augur" in project["scripts"]
    assert 'ENTRYPOINT ["augur"]' in dockerfile
