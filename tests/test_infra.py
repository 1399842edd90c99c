"""The deployment files under infra/ agree with the code they deploy.

Every config parses; the Augur config in the ConfigMap loads and matches the manifests' ports,
probes and grace period; every container command is one `augur` accepts; the TLS-and-tokens
component (infra/secure/) mounts the files its config names, and its exec probe passes a
real TLS health server only when it is SERVING; every metric that the alerts and the
dashboard query is defined in augur.serving.metrics or augur.serving.security, with the labels used.
No cluster, Prometheus or Grafana is involved. Where `kubectl` or `promtool` is installed,
the kustomize build and the alert rules are also checked with them (skipped otherwise).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from concurrent import futures
from pathlib import Path, PurePosixPath

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.metrics import MetricWrapperBase

from augur import config
from augur.api.v1 import admin_pb2, predictor_pb2
from augur.cli import main as cli
from augur.features.connection import parse_address
from augur.serving import metrics, security

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
SECURE = INFRA / "secure"
SECRET_TEMPLATES = frozenset(K8S.glob("*.template.yaml"))
REDIS_SECRET = K8S / "redis-secret.template.yaml"
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
# Modules whose prometheus_client metrics the service exports.
METRIC_MODULES = (metrics, security)


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


def _component() -> dict:
    return yaml.safe_load((SECURE / "kustomization.yaml").read_text())


def _json_patch(document: dict, operations: list[dict]) -> dict:
    """RFC 6902 test/add/replace/remove, as kustomize applies a JSON patch; a path that does
    not exist (or a failing test) raises, as it makes `kubectl kustomize` fail."""
    document = copy.deepcopy(document)
    for op in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        *parents, last = parts
        target = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            key = len(target) if last == "-" and op["op"] == "add" else int(last)
            assert 0 <= key <= len(target) - (op["op"] != "add"), f"{op['path']} is out of range"
        else:
            key = last
            assert op["op"] == "add" or key in target, f"{op['path']} does not exist"
        if op["op"] == "test":
            assert target[key] == op["value"], f"test of {op['path']} failed: {target[key]!r}"
        elif op["op"] == "add" and isinstance(target, list):
            target.insert(key, op["value"])
        elif op["op"] in ("add", "replace"):
            target[key] = op["value"]
        elif op["op"] == "remove":
            del target[key]
        else:
            raise AssertionError(f"unsupported JSON patch op {op['op']!r}")
    return document


@functools.cache
def _secure_manifests() -> dict[tuple[str, str], dict]:
    """The objects of infra/k8s with the component infra/secure/ applied: its JSON patches
    on their targets, and the ConfigMaps its generator makes."""
    objects = copy.deepcopy(_manifests())
    component = _component()
    for patch in component["patches"]:
        key = (patch["target"]["kind"], patch["target"]["name"])
        assert key in objects, f"infra/secure patches {key}, which infra/k8s does not define"
        operations = yaml.safe_load((SECURE / patch["path"]).read_text())
        objects[key] = _json_patch(objects[key], operations)
    for generator in component.get("configMapGenerator", []):
        data = {}
        for entry in generator["files"]:
            name, _, path = entry.rpartition("=")
            data[name or PurePosixPath(path).name] = (SECURE / path).read_text()
        metadata = {"name": generator["name"], "namespace": generator["namespace"]}
        objects[("ConfigMap", generator["name"])] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": data,
        }
    return objects


def _secure(kind: str, name: str) -> dict:
    return _secure_manifests()[(kind, name)]


def _secure_serve() -> dict:
    (container,) = _pod_spec(_secure("Deployment", "augur"))["containers"]
    return container


def _secret_template(name: str) -> dict:
    for path in SECRET_TEMPLATES:
        for doc in _documents(path):
            if doc["kind"] == "Secret" and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no template of Secret {name!r} in infra/k8s/*.template.yaml")


def _keys(kind: str, name: str) -> set[str]:
    """The keys of a ConfigMap (of infra/k8s or generated by infra/secure) or of a Secret (from
    its template)."""
    if kind == "Secret":
        return set(_secret_template(name)["stringData"])
    return set(_secure("ConfigMap", name)["data"])


def _projected_source(workload: dict, container: dict, path: str) -> tuple[str, str, str]:
    """(kind, name, key) of the ConfigMap or Secret entry that a projected volume puts at
    `path` in the container; fails if none does, or if that object has no such key."""
    mount, volume = _mount_source(workload, container, PurePosixPath(path))
    relative = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    for source in volume["projected"]["sources"]:
        ((field, ref),) = source.items()
        kind = {"configMap": "ConfigMap", "secret": "Secret"}[field]
        keys = _keys(kind, ref["name"])
        if "items" in ref:
            entries = {item["path"]: item["key"] for item in ref["items"]}
        else:
            entries = {key: key for key in keys}
        if relative in entries:
            key = entries[relative]
            assert key in keys, f"{path}: {kind} {ref['name']} has no key {key!r}"
            return kind, ref["name"], key
    raise AssertionError(f"{path}: no projected source of {container['name']} puts a file there")


def _env(container: dict, secret_value: str = "0123456789abcdef") -> dict[str, str]:
    """A container's environment as Kubernetes builds it, secrets replaced by `secret_value`."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            env[var["name"]] = secret_value
        else:
            env[var["name"]] = _expand(var["value"], env)
    return env


def _config_of(container: dict, tmp_path: Path) -> config.Config:
    """The config a container's augur process loads: the ConfigMap's file and its overrides."""
    path = tmp_path / "augur.yaml"
    path.write_text(_manifest("ConfigMap", "augur-config")["data"]["augur.yaml"])
    overrides = {k: v for k, v in _env(container).items() if k.startswith(config.ENV_PREFIX)}
    return config.load(path, environ=overrides)


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


def _panels() -> list[dict]:
    """The dashboard's panels that show data (rows only group them)."""
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _dashboard_queries() -> list[tuple[str, str]]:
    return [(f"panel {p['title']!r}", t["expr"]) for p in _panels() for t in p["targets"]]


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert expression and dashboard query."""
    queries = [(f"alert {r['alert']}", r["expr"]) for r in _alert_rules()]
    queries += _dashboard_queries()
    dashboard = _dashboard()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            if isinstance(query, dict):
                query = query["query"]
            queries.append((f"variable {variable['name']}", query))
    return queries


@functools.cache
def _defined_metrics() -> dict[str, set[str]]:
    """Exposed name -> label names, for every metric augur.serving.metrics and
    augur.serving.security define."""
    defined = {}
    for module in METRIC_MODULES:
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                # prometheus_client keeps a counter's name without "_total"; it exposes it with.
                name = value._name + "_total" if value._type == "counter" else value._name
                assert name not in defined, f"{name} is defined twice"
                defined[name] = set(value._labelnames)
    return defined


def _metrics_in(query: str) -> set[str]:
    return {_base_metric(reference)[0] for reference, _ in SELECTOR.findall(query)}


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
    if path.name.endswith(".patch.yaml"):  # a JSON patch: one list of operations
        (operations,) = documents
        assert operations and all(
            op["op"] in ("test", "add", "replace", "remove") and op["path"].startswith("/")
            for op in operations
        )
    else:
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
        if panel["type"] == "row":
            assert grid == {"x": 0, "y": grid["y"], "w": 24, "h": 1}, panel["title"]
            assert not panel["collapsed"] and panel["panels"] == [], panel["title"]
            continue
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_dashboard_data_source_is_a_prometheus_variable():
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels():
        for item in (panel, *panel["targets"]):
            expected = {"type": "prometheus", "uid": "${datasource}"}
            assert item["datasource"] == expected, panel["title"]


def test_dashboard_rows_group_rollouts_reliability_and_callers():
    """Each row holds the panels below it, up to the next row; each new row shows the metrics
    of its concern."""
    panels = sorted(_dashboard()["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    rows: dict[str, set[str]] = {}
    current = None
    for panel in panels:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], set())
        elif current is not None:
            current.update(m for t in panel["targets"] for m in _metrics_in(t["expr"]))
    expected = {
        "Rollouts": {
            "augur_model_swaps_total",
            "augur_requests_total",  # canary share, by its version label
            "augur_canary_fallbacks_total",
            "augur_rollbacks_total",
            "augur_shadow_rows_total",
            "augur_shadow_score_diff",
        },
        "Reliability": {
            "augur_shed_total",
            "augur_deadline_dropped_total",
            "augur_degraded_total",
            "augur_feature_store_errors_total",
            "augur_feature_store_circuit_open",
        },
        "Callers": {"augur_caller_requests_total", "augur_auth_refused_total"},
    }
    for title, wanted in expected.items():
        assert title in rows, f"the dashboard has no {title!r} row"
        assert wanted <= rows[title], f"row {title!r} lacks {sorted(wanted - rows[title])}"


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


def test_metrics_are_found_in_predictor_metrics_and_predictor_security():
    defined = _defined_metrics()
    assert {"augur_model_swaps_total", "augur_feature_store_circuit_open"} <= set(defined)
    assert defined["augur_caller_requests_total"] == {"caller", "method"}
    assert defined["augur_auth_refused_total"] == {"reason"}


def test_every_queried_metric_is_defined_in_predictor_metrics():
    defined = _defined_metrics()
    queried = set()
    for where, query in _queries():
        for reference, _ in SELECTOR.findall(query):
            name, _ = _base_metric(reference)
            assert name in defined, (
                f"{where} queries {reference}, in neither augur/serving/metrics.py nor "
                "augur/serving/security.py"
            )
            queried.add(name)
    assert queried, "no augur_* metric is queried at all"


def test_new_failure_modes_have_alerts():
    alerted = set().union(*(_metrics_in(r["expr"]) for r in _alert_rules()))
    for metric in (
        "augur_rollbacks_total",  # a canary rolled back
        "augur_shadow_rows_total",  # shadow disagreement
        "augur_feature_store_circuit_open",
        "augur_shed_total",
        "augur_degraded_total",
        "augur_auth_refused_total",
        "augur_model_loads_total",
    ):
        assert metric in alerted, f"no alert watches {metric}"
    circuit = [r for r in _alert_rules() if "augur_feature_store_circuit_open" in r["expr"]]
    assert all(r.get("for") == "1m" for r in circuit), "the circuit alert waits one minute"


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
    predictor_methods = set(predictor_pb2.DESCRIPTOR.services_by_name["Predictor"].methods_by_name)
    # augur_caller_requests_total counts every RPC of the port: Admin's and health's too.
    any_method = (
        predictor_methods
        | set(admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods_by_name)
        | set(health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name)
    )
    codes = {c.name for c in grpc.StatusCode}
    source = "\n".join(p.read_text() for p in (ROOT / "augur" / "serving").rglob("*.py"))
    views = (ROOT / "examples" / "fraud" / "feature_repo" / "features.py").read_text()
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    for where, query in _queries():
        for reference, matchers in SELECTOR.findall(query):
            callers = _base_metric(reference)[0] == "augur_caller_requests_total"
            methods = any_method if callers else predictor_methods
            for label, op, value in MATCHER.findall(matchers):
                values = value.split("|") if op in ("=~", "!~") else [value]
                if any(re.search(r"[$.*+?()\[\]]", v) for v in values):
                    continue  # a Grafana variable or a pattern, not literal values
                for v in values:
                    if label == "code":
                        assert v in codes, f"{where}: {v!r} is not a gRPC status code"
                    elif label == "method":
                        assert v in methods, f"{where}: the server has no method {v!r}"
                    elif label in ("stage", "outcome", "guardrail", "reason"):
                        assert f'"{v}"' in source, f"{where}: the server never sets {label}={v!r}"
                    elif label == "feature_view":
                        assert f'name="{v}"' in views, f"{where}: no feature view {v!r}"
                    elif label == "job":
                        assert v in jobs, f"{where}: prometheus.yml has no job {v!r}"


# ---- with promtool: the rules fire on the events they describe ----------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_alert_rules_and_every_dashboard_query(tmp_path):
    assert _promtool("check", "rules", str(ALERTS)).returncode == 0
    # Grafana's variables replaced by values a Prometheus query can hold.
    rules = [
        {
            "record": f"augur_dashboard:query_{i}",
            "expr": query.replace("$__rate_interval", "5m").replace("$model", ".*"),
        }
        for i, (_, query) in enumerate(_dashboard_queries())
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = _promtool("check", "rules", str(path))
    assert run.returncode == 0, run.stdout + run.stderr


def _series(metric: str, values: str, **labels: str) -> dict:
    selector = ", ".join(f'{k}="{v}"' for k, v in {"job": "augur", **labels}.items())
    return {"series": f"{metric}{{{selector}}}", "values": values}


def _firing(alert: str, at: str, *label_sets: dict) -> dict:
    severity = {r["alert"]: r["labels"]["severity"] for r in _alert_rules()}[alert]
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {"severity": severity, **ls}} for ls in label_sets],
    }


def test_alert_rules_fire_on_the_events_they_describe(tmp_path):
    """promtool's rule unit tests over the alerts (annotations left out: they are prose).
    Series values: `_` is no sample, `a+bxn` counts up by b for n minutes."""
    m, v2, pod = {"model": "fraud_lgbm"}, {"version": "v2"}, {"pod": "augur-0"}
    input_series = [
        # A rollback on pod-0 at minute 30 (a new series), and one on pod-1 at minute 70 (an
        # existing series that counts up).
        _series("augur_rollbacks_total", "_x30 1x60", **m, **v2, guardrail="error_rate", **pod),
        _series(
            "augur_rollbacks_total",
            "1x70 2x30",
            **m,
            version="v3",
            guardrail="drift",
            pod="augur-1",
        ),
        _series("augur_model_loads_total", "_x10 1x100", **m, **v2, outcome="failed", **pod),
        _series("augur_model_loads_total", "1x100", **m, **v2, outcome="loaded", **pod),
        _series("augur_feature_store_circuit_open", "0x5 1x5 0x10", **pod),
        _series("augur_feature_store_circuit_open", "0x20", pod="augur-1"),
        # 6% of 1 call/s refused as invalid, 1% as missing.
        _series("augur_caller_requests_total", "0+60x40", caller="fraud-api", method="Predict"),
        _series("augur_auth_refused_total", "0+4x40", reason="invalid"),
        _series("augur_auth_refused_total", "0+1x40", reason="missing"),
        # 2% of fraud_lgbm's Predict calls shed.
        _series("augur_requests_total", "0+300x40", method="Predict", **m, version="v1", code="OK"),
        _series("augur_shed_total", "0+6x40", **m),
        _series("augur_degraded_total", "0+1x20", **m),
        # The shadow disagrees on 10% of rows.
        _series("augur_shadow_rows_total", "0+90x40", **m, **v2, outcome="agree"),
        _series("augur_shadow_rows_total", "0+10x40", **m, **v2, outcome="disagree"),
    ]
    rollback = {**m, "guardrail": "error_rate", **v2}
    later_rollback = {**m, "guardrail": "drift", "version": "v3"}
    checks = [
        _firing("AugurCanaryRolledBack", "25m"),  # pod-1's series is old and unchanged
        _firing("AugurCanaryRolledBack", "40m", rollback),  # pod-0's series is new
        _firing("AugurCanaryRolledBack", "55m"),
        _firing("AugurCanaryRolledBack", "75m", later_rollback),  # pod-1 counted another
        _firing("AugurModelLoadFailed", "20m", {**m, **v2}),
        _firing("AugurModelLoadFailed", "60m"),  # 50 minutes ago: over
        _firing("AugurFeatureStoreCircuitOpen", "6m"),  # open, not yet for a minute
        _firing("AugurFeatureStoreCircuitOpen", "9m", pod),
        _firing("AugurFeatureStoreCircuitOpen", "15m"),
        _firing("AugurAuthRefusals", "25m", {"reason": "invalid"}),
        _firing("AugurShedding", "25m", m),
        _firing("AugurDegradedAnswers", "15m", m),
        _firing("AugurShadowDisagreement", "30m", {**m, **v2}),
    ]
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump({"groups": groups}))
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": checks}],
    }
    (tmp_path / "alerts.test.yml").write_text(yaml.safe_dump(tests))
    run = _promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert run.returncode == 0, run.stdout + run.stderr


# ---- the ConfigMap's config and the serving Deployment agree ---------------------------


def test_configmap_holds_an_augur_config_that_loads_for_a_pod(tmp_path):
    cfg = _augur_config(tmp_path)
    assert cfg.redis.address != "embedded", "an embedded Redis in a pod starts empty"
    # The kubelet's probes and Prometheus connect to the pod IP, not to loopback.
    assert cfg.server.host in ("0.0.0.0", "::", "[::]")
    assert cfg.server.metrics_host in ("0.0.0.0", "::", "[::]")
    assert cfg.server.metrics_port > 0
    assert cfg.feature_repo.is_absolute() and cfg.model_repo.is_absolute()


def test_configmap_sets_the_lifecycle_reliability_and_admin_options(tmp_path):
    """Set in the file itself (not left to defaults), and sensible together."""
    raw = yaml.safe_load(_manifest("ConfigMap", "augur-config")["data"]["augur.yaml"])
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
    cfg = _augur_config(tmp_path)
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
    cfg = _config_of(_serve()[1], tmp_path)
    assert not (cfg.server.tls_cert or cfg.server.tls_key or cfg.server.tls_client_ca)
    assert not (cfg.auth.tokens_file or cfg.auth.tokens)
    kustomization = yaml.safe_load((INFRA / "kustomization.yaml").read_text())
    assert "components" not in kustomization
    secrets = {"augur-tls", "augur-auth"}
    for workload in _workloads():
        text = json.dumps(workload)
        assert not any(f'"{name}"' in text for name in secrets), workload["metadata"]["name"]


def test_deployment_ports_and_probes_match_the_config(tmp_path):
    cfg = _augur_config(tmp_path)
    deployment, container = _serve()
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
    # Clients discover pods through this Service: Admin is not on it.
    assert cfg.server.admin_port not in {named.get(p["targetPort"]) for p in ports.values()}


def test_admin_port_is_exposed_only_by_the_internal_admin_service(tmp_path):
    cfg = _augur_config(tmp_path)
    deployment, container = _serve()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    admin = _manifest("Service", "augur-admin")
    assert _selects(admin["spec"]["selector"], _pod_labels(deployment))
    # ClusterIP, not headless: any one pod applies an Admin change for all of them.
    assert admin["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert admin["spec"].get("clusterIP") != "None"
    (port,) = admin["spec"]["ports"]
    assert named[port["targetPort"]] == cfg.server.admin_port == port["port"]
    for (kind, name), service in _manifests().items():
        if kind == "Service" and name != "augur-admin":
            exposed = {
                named.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]
            }
            assert cfg.server.admin_port not in exposed, f"Service {name} exposes Admin"


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
    """Every `-- augur ...` command of infra/README.md parses; --server names a Service and a
    port it has, --tls-ca the toolbox's CA file under infra/secure/."""
    parser = cli._parser()
    commands = re.findall(r"-- (augur [^\n]*)", (INFRA / "README.md").read_text())
    assert commands
    services = {name: obj for (kind, name), obj in _manifests().items() if kind == "Service"}
    toolbox = _secure("Deployment", "augur-toolbox")
    (toolbox_container,) = _pod_spec(toolbox)["containers"]
    servers = 0
    for command in commands:
        try:
            args = parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"infra/README.md: augur rejects {command!r}")
        if getattr(args, "server", None):
            servers += 1
            host, _, port = args.server.rpartition(":")
            assert host in services, f"{command!r}: no Service {host!r}"
            assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, command
        if getattr(args, "tls_ca", None):
            source = _projected_source(toolbox, toolbox_container, args.tls_ca)
            assert source == ("Secret", "augur-tls", "ca.crt"), command
    assert servers, "the README shows no Admin call"


def test_env_overrides_are_config_options_and_reach_the_redis_service(tmp_path):
    path = tmp_path / "augur.yaml"
    path.write_text(_manifest("ConfigMap", "augur-config")["data"]["augur.yaml"])
    secret = _documents(REDIS_SECRET)[0]
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


def test_repositories_are_on_the_shared_volume_writable_by_every_augur_container(tmp_path):
    """Materialization writes Feast's registry, `augur train` model versions, and the serving
    pods model.yaml (Admin calls, guardrail rollbacks): on a read-only mount a guardrail's
    rollback could not be recorded and the canary would keep serving."""
    cfg = _augur_config(tmp_path)
    claim = _manifest("PersistentVolumeClaim", "augur-repos")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for workload, container in _augur_containers():
        for repo in (cfg.feature_repo, cfg.model_repo):
            mount, volume = _mount_source(workload, container, PurePosixPath(repo))
            assert volume["persistentVolumeClaim"]["claimName"] == "augur-repos"
            assert not volume["persistentVolumeClaim"].get("readOnly", False)
            assert not mount.get("readOnly", False), workload["metadata"]["name"]


# ---- TLS and tokens: the component infra/secure/ -------------------------------------------

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _probe_args(command: list[str]) -> dict[str, str]:
    """--option value pairs of a probe command, after `python SCRIPT`."""
    options = command[2:]
    assert len(options) % 2 == 0 and all(o.startswith("--") for o in options[::2]), command
    return dict(zip(options[::2], options[1::2], strict=True))


def test_secure_component_patches_what_infra_defines():
    component = _component()
    assert component["kind"] == "Component"
    for patch in component["patches"]:
        assert (SECURE / patch["path"]).is_file(), patch["path"]
        assert (patch["target"]["kind"], patch["target"]["name"]) in _manifests()
    for generator in component["configMapGenerator"]:
        assert generator["namespace"] == "augur"  # also when used from an overlay outside infra/
        for entry in generator["files"]:
            assert (SECURE / entry.rpartition("=")[2]).is_file(), entry
    listed = {p.name for p in SECURE.iterdir()} - {"kustomization.yaml", "__pycache__"}
    used = {p["path"] for p in component["patches"]} | {
        entry.rpartition("=")[2] for g in component["configMapGenerator"] for entry in g["files"]
    }
    assert listed == used, f"files in infra/secure/ the component does not use: {listed - used}"


@pytest.mark.parametrize("variant", ["base", "secure"])
def test_every_mount_names_one_volume_of_its_pod(variant):
    objects = _manifests() if variant == "base" else _secure_manifests()
    kinds = {"Deployment", "StatefulSet", "CronJob"}
    for (kind, name), workload in objects.items():
        if kind not in kinds:
            continue
        spec = _pod_spec(workload)
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


def test_secure_config_loads_the_tls_and_token_files_the_pod_mounts(tmp_path):
    deployment = _secure("Deployment", "augur")
    container = _secure_serve()
    cfg = _config_of(container, tmp_path)
    expected = {
        cfg.server.tls_cert: ("Secret", "augur-tls", "tls.crt"),
        cfg.server.tls_key: ("Secret", "augur-tls", "tls.key"),
        cfg.auth.tokens_file: ("Secret", "augur-auth", "tokens.yaml"),
    }
    for path, source in expected.items():
        assert path, f"the secure config leaves {source[2]} unset"
        assert _projected_source(deployment, container, path) == source, path
    # augur.yaml is still where --config reads it, next to the Secrets' files.
    assert _projected_source(deployment, container, "/etc/augur/augur.yaml") == (
        "ConfigMap",
        "augur-config",
        "augur.yaml",
    )
    assert cfg.auth.admin_callers, "the secure config limits Admin to named callers"
    assert not cfg.server.tls_client_ca, "mutual TLS is documented, not part of infra/secure/"
    for name in ("augur-tls", "augur-auth"):
        assert _secret_template(name)["metadata"]["namespace"] == "augur"
    assert _secret_template("augur-tls")["type"] == "kubernetes.io/tls"


def test_secure_token_template_has_every_admin_caller_and_no_usable_token(tmp_path):
    cfg = _config_of(_secure_serve(), tmp_path)
    template = _secret_template("augur-auth")["stringData"]
    tokens = yaml.safe_load(template["tokens.yaml"])
    assert set(cfg.auth.admin_callers) <= set(tokens)
    placeholder = tmp_path / "placeholder.yaml"
    placeholder.write_text(template["tokens.yaml"])
    with pytest.raises(config.ConfigError):  # an unfilled template stops the server at start
        security.interceptors(config.AuthConfig(tokens_file=str(placeholder)))
    filled = tmp_path / "tokens.yaml"
    filled.write_text(yaml.safe_dump({c: f"{c}-{'0' * 16}" for c in tokens}))
    auth = config.AuthConfig(tokens_file=str(filled), admin_callers=cfg.auth.admin_callers)
    assert len(security.interceptors(auth)) == 1


def test_secure_probes_check_the_grpc_port_over_tls_with_the_same_timing(tmp_path):
    spec = importlib.util.spec_from_file_location("probe", SECURE / "grpc_health_probe.py")
    probe_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe_script)
    deployment = _secure("Deployment", "augur")
    container = _secure_serve()
    _, plain = _serve()
    cfg = _config_of(container, tmp_path)
    service = _manifest("Service", "augur")
    dns_name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    for probe in PROBES:
        secure_probe, plain_probe = container[probe], plain[probe]
        assert "grpc" not in secure_probe, f"{probe}: the kubelet's gRPC probe dials plaintext"
        command = secure_probe["exec"]["command"]
        assert command[0] == "python"
        assert _projected_source(deployment, container, command[1]) == (
            "ConfigMap",
            "augur-probe",
            "grpc_health_probe.py",
        )
        args = _probe_args(command)
        assert int(args["--port"]) == cfg.server.port, probe
        assert _projected_source(deployment, container, args["--ca"]) == (
            "Secret",
            "augur-tls",
            "ca.crt",
        )
        assert args["--server-name"] == dns_name, probe
        assert args.get("--service", "") == "", probe  # the server's health, as before
        for field in ("periodSeconds", "failureThreshold"):
            assert secure_probe.get(field) == plain_probe.get(field), f"{probe}.{field}"
        # The kubelet kills an exec probe at timeoutSeconds (default 1): the script's own call
        # timeout must end first, so that a slow server reads as a failed check.
        timeout = secure_probe.get("timeoutSeconds", 1)
        assert timeout >= plain_probe.get("timeoutSeconds", 1), probe
        assert float(args.get("--timeout", probe_script.CALL_TIMEOUT_S)) < timeout, probe


def test_secure_toolbox_gets_the_ca_and_an_admin_token_only():
    toolbox = _secure("Deployment", "augur-toolbox")
    (container,) = _pod_spec(toolbox)["containers"]
    (token,) = [v for v in container["env"] if v["name"] == "AUGUR_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "augur-auth" and ref["key"] in _keys("Secret", "augur-auth")
    assert ref["key"] != "tokens.yaml", "the toolbox gets one token, not every caller's"
    _, volume = _mount_source(toolbox, container, PurePosixPath("/etc/augur/augur.yaml"))
    projected = set()
    for source in volume["projected"]["sources"]:
        ((field, ref),) = source.items()
        kind = {"configMap": "ConfigMap", "secret": "Secret"}[field]
        keys = (
            [item["key"] for item in ref["items"]] if "items" in ref else _keys(kind, ref["name"])
        )
        projected.update((ref["name"], key) for key in keys)
    assert projected == {("augur-config", "augur.yaml"), ("augur-tls", "ca.crt")}


def test_secure_services_no_longer_claim_cleartext_http2():
    for name in ("augur", "augur-admin"):
        plain = _manifest("Service", name)["spec"]["ports"]
        secure = _secure("Service", name)["spec"]["ports"]
        assert any(p.get("appProtocol") == "kubernetes.io/h2c" for p in plain), name
        assert not any(p.get("appProtocol") == "kubernetes.io/h2c" for p in secure), name


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
    assert base[("Deployment", "augur")] == _manifest("Deployment", "augur")
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
        assert secure[key] == _secure(*key), f"{key}: kustomize builds something else"
    probe = secure[("ConfigMap", "augur-probe")]
    assert probe["metadata"]["namespace"] == "augur"
    assert probe["data"] == _secure("ConfigMap", "augur-probe")["data"]


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _certificate(directory: Path, name: str, ca: str | None, extensions: str) -> Path:
    """A P-256 certificate `name`.pem (key `name`.key), signed by `ca` or self-signed."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / f"{name}.ext").write_text(extensions)
    if ca is None:
        _openssl(directory, "req", "-x509", *key, "-keyout", f"{name}.key", "-subj",
                 f"/CN={name}", "-days", "2", "-out", f"{name}.pem",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    else:
        _openssl(directory, "req", "-new", *key, "-keyout", f"{name}.key", "-subj",
                 f"/CN={name}", "-out", f"{name}.csr")  # fmt: skip
        _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem",
                 "-CAkey", f"{ca}.key", "-CAcreateserial", "-days", "2",
                 "-out", f"{name}.pem", "-extfile", f"{name}.ext")  # fmt: skip
    return directory / f"{name}.pem"


def test_secure_probe_passes_a_tls_server_only_while_it_is_serving(tmp_path):
    """The readiness probe's own command, run against a real TLS port with the server's
    health service: 0 while SERVING, 1 when NOT_SERVING, for another name, or (mutual TLS)
    without a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI makes the test certificates")
    deployment = _secure("Deployment", "augur")
    container = _secure_serve()
    command = container["readinessProbe"]["exec"]["command"]
    args = _probe_args(command)
    ca = _certificate(tmp_path, "ca", None, "")
    leaf = "keyUsage=critical,digitalSignature\nextendedKeyUsage={}\nsubjectAltName=DNS:{}\n"
    server_cert = _certificate(
        tmp_path, "server", "ca", leaf.format("serverAuth", args["--server-name"])
    )
    client_cert = _certificate(tmp_path, "client", "ca", leaf.format("clientAuth", "probe"))
    files = {
        ("ConfigMap", "augur-probe", "grpc_health_probe.py"): SECURE / "grpc_health_probe.py",
        ("Secret", "augur-tls", "ca.crt"): ca,
    }

    def probe(port: int, *extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable]
        for arg in command[1:]:
            if arg.startswith("/"):  # a file the pod projects: its local stand-in
                arg = str(files[_projected_source(deployment, container, arg)])
            argv.append(arg)
        argv[argv.index("--port") + 1] = str(port)
        return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=30)

    def serve(**tls: str) -> tuple[grpc.Server, health.HealthServicer, int]:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        cfg = config.Config(server=config.ServerConfig(**tls))
        port = security.bind(server, cfg, "127.0.0.1:0")
        server.start()
        return server, servicer, port

    key = str(tmp_path / "server.key")
    server, servicer, port = serve(tls_cert=str(server_cert), tls_key=key)
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert probe(port).returncode == 0, probe(port).stderr
        wrong_name = probe(port, "--server-name", "elsewhere.example")
        assert wrong_name.returncode == 1 and "UNAVAILABLE" in wrong_name.stderr
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        not_serving = probe(port)
        assert not_serving.returncode == 1 and "NOT_SERVING" in not_serving.stderr
    finally:
        server.stop(None)
    server, servicer, port = serve(tls_cert=str(server_cert), tls_key=key, tls_client_ca=str(ca))
    try:
        assert probe(port).returncode == 1, "mutual TLS without a client certificate"
        with_cert = probe(port, "--cert", str(client_cert), "--key", str(tmp_path / "client.key"))
        assert with_cert.returncode == 0, with_cert.stderr
    finally:
        server.stop(None)


# ---- Redis ---------------------------------------------------------------------------------


def test_redis_conf_persists_never_evicts_and_holds_no_password():
    directives = _redis_directives()
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["maxmemory-policy"] == "noeviction"
    assert directives["protected-mode"] == "yes"
    assert "requirepass" not in directives
    assert directives["bind"]


def test_redis_conf_encodes_hashes_as_the_embedded_redis_does():
    from augur.features.redis_server import HASH_ENCODING

    directives = _redis_directives()
    for alias, value in HASH_ENCODING.items():
        assert directives[alias.replace("ziplist", "listpack")] == value


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


def test_kustomization_applies_every_manifest_but_the_secret_templates():
    kustomization = yaml.safe_load((INFRA / "kustomization.yaml").read_text())
    listed = {INFRA / r for r in kustomization["resources"]}
    assert all(p.exists() for p in listed), sorted(str(p) for p in listed if not p.exists())
    assert set(K8S.glob("*.yaml")) - listed == SECRET_TEMPLATES
    assert {p.name for p in SECRET_TEMPLATES} == {
        "redis-secret.template.yaml",
        "tls-secret.template.yaml",
        "auth-secret.template.yaml",
    }
    for template in SECRET_TEMPLATES:
        for secret in _documents(template):
            assert secret["kind"] == "Secret"
            assert all(v == "" or "\n" in v for v in secret["stringData"].values()), (
                f"{template.name} holds a value: templates hold placeholders only"
            )
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
    # the wheel is built beside a compiler, so the image has the read path's C loops
    assert re.search(r"^FROM python:3\.11-slim AS build$", dockerfile, re.M)
    assert "COPY --from=build" in dockerfile and "augur.features.native" in dockerfile
