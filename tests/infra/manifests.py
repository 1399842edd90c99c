"""Reading infra/ as kubectl, kustomize, Prometheus and Grafana would: the helpers the tests in
tests/infra/ share; no test lives here.

Kubernetes objects by (kind, name), with or without the TLS-and-tokens component infra/secure/
applied; the queries of the alerts and the dashboard and the metrics the service defines;
redis.conf's directives; promtool and openssl where they are installed.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from augur import config
from augur.serving import metrics, security

ROOT = Path(__file__).resolve().parents[2]
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


def yaml_documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def manifests() -> dict[tuple[str, str], dict]:
    """(kind, name) -> object, for every Kubernetes object under infra/k8s/."""
    objects: dict[tuple[str, str], dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} is defined twice under infra/k8s"
            objects[key] = doc
    return objects


def manifest(kind: str, name: str) -> dict:
    objects = manifests()
    assert (kind, name) in objects, f"no {kind} {name!r} under infra/k8s"
    return objects[(kind, name)]


def secure_component() -> dict:
    return yaml.safe_load((SECURE / "kustomization.yaml").read_text())


def json_patch(document: dict, operations: list[dict]) -> dict:
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
def secure_manifests() -> dict[tuple[str, str], dict]:
    """The objects of infra/k8s with the component infra/secure/ applied: its JSON patches
    on their targets, and the ConfigMaps its generator makes."""
    objects = copy.deepcopy(manifests())
    component = secure_component()
    for patch in component["patches"]:
        key = (patch["target"]["kind"], patch["target"]["name"])
        assert key in objects, f"infra/secure patches {key}, which infra/k8s does not define"
        operations = yaml.safe_load((SECURE / patch["path"]).read_text())
        objects[key] = json_patch(objects[key], operations)
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


def secure_object(kind: str, name: str) -> dict:
    return secure_manifests()[(kind, name)]


def secure_serving() -> dict:
    (container,) = pod_spec(secure_object("Deployment", "augur"))["containers"]
    return container


def secret_template(name: str) -> dict:
    for path in SECRET_TEMPLATES:
        for doc in yaml_documents(path):
            if doc["kind"] == "Secret" and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no template of Secret {name!r} in infra/k8s/*.template.yaml")


def object_keys(kind: str, name: str) -> set[str]:
    """The keys of a ConfigMap (of infra/k8s or generated by infra/secure) or of a Secret (from
    its template)."""
    if kind == "Secret":
        return set(secret_template(name)["stringData"])
    return set(secure_object("ConfigMap", name)["data"])


def projected_source(workload: dict, container: dict, path: str) -> tuple[str, str, str]:
    """(kind, name, key) of the ConfigMap or Secret entry that a projected volume puts at
    `path` in the container; fails if none does, or if that object has no such key."""
    mount, volume = mount_source(workload, container, PurePosixPath(path))
    relative = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    for source in volume["projected"]["sources"]:
        ((field, ref),) = source.items()
        kind = {"configMap": "ConfigMap", "secret": "Secret"}[field]
        keys = object_keys(kind, ref["name"])
        if "items" in ref:
            entries = {item["path"]: item["key"] for item in ref["items"]}
        else:
            entries = {key: key for key in keys}
        if relative in entries:
            key = entries[relative]
            assert key in keys, f"{path}: {kind} {ref['name']} has no key {key!r}"
            return kind, ref["name"], key
    raise AssertionError(f"{path}: no projected source of {container['name']} puts a file there")


def container_env(container: dict, secret_value: str = "0123456789abcdef") -> dict[str, str]:
    """A container's environment as Kubernetes builds it, secrets replaced by `secret_value`."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            env[var["name"]] = secret_value
        else:
            env[var["name"]] = expand(var["value"], env)
    return env


def config_of(container: dict, tmp_path: Path) -> config.Config:
    """The config a container's augur process loads: the ConfigMap's file and its overrides."""
    path = tmp_path / "augur.yaml"
    path.write_text(manifest("ConfigMap", "augur-config")["data"]["augur.yaml"])
    overrides = {
        k: v for k, v in container_env(container).items() if k.startswith(config.ENV_PREFIX)
    }
    return config.load(path, environ=overrides)


def pod_spec(workload: dict) -> dict:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return workload["spec"]["template"]["metadata"]["labels"]


def workloads() -> list[dict]:
    kinds = {"Deployment", "StatefulSet", "CronJob"}
    return [obj for (kind, _), obj in manifests().items() if kind in kinds]


def augur_containers() -> list[tuple[dict, dict]]:
    """(workload, container) for every container that runs the `augur` command."""
    found = []
    for workload in workloads():
        for container in pod_spec(workload)["containers"]:
            if container["image"].split(":")[0] == "augur":
                found.append((workload, container))
    return found


def serving() -> tuple[dict, dict]:
    deployment = manifest("Deployment", "augur")
    (container,) = pod_spec(deployment)["containers"]
    return deployment, container


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def mount_source(workload: dict, container: dict, path: PurePosixPath) -> tuple[dict, dict]:
    """The volumeMount holding `path`, and the pod volume behind it (None for a volume of a
    StatefulSet's volumeClaimTemplates)."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for mount in container["volumeMounts"]:
        if path.is_relative_to(mount["mountPath"]):
            return mount, volumes.get(mount["name"])
    raise AssertionError(f"{path} is on no volume of container {container['name']}")


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def grafana_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    """The dashboard's panels that show data (rows only group them)."""
    return [p for p in grafana_dashboard()["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[tuple[str, str]]:
    return [(f"panel {p['title']!r}", t["expr"]) for p in dashboard_panels() for t in p["targets"]]


def all_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert expression and dashboard query."""
    queries = [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    queries += dashboard_queries()
    dashboard = grafana_dashboard()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            if isinstance(query, dict):
                query = query["query"]
            queries.append((f"variable {variable['name']}", query))
    return queries


@functools.cache
def defined_metrics() -> dict[str, set[str]]:
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


def metrics_in(query: str) -> set[str]:
    return {base_metric(reference)[0] for reference, _ in SELECTOR.findall(query)}


def base_metric(reference: str) -> tuple[str, str]:
    """(metric name, histogram suffix or "") of a name used in a query."""
    for suffix in HISTOGRAM_SUFFIXES:
        if reference.endswith(suffix):
            return reference[: -len(suffix)], suffix
    return reference, ""


def augur_config(tmp_path: Path) -> config.Config:
    path = tmp_path / "augur.yaml"
    path.write_text(manifest("ConfigMap", "augur-config")["data"]["augur.yaml"])
    return config.load(path, environ={})


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of an env value from the variables defined before it."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)


def k8s_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)", quantity).groups()
    return int(number) * units[unit]


def redis_bytes(size: str) -> int:
    units = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "k": 10**3, "m": 10**6, "g": 10**9}
    number, unit = re.fullmatch(r"(\d+)([a-z]*)", size.lower()).groups()
    return int(number) * (units[unit] if unit else 1)


def redis_directives() -> dict[str, str]:
    directives = {}
    for line in REDIS_CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            assert name not in directives, f"redis.conf sets {name} twice"
            directives[name] = value.strip()
    return directives


# ---- tools the tests run where they are installed -----------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def series(metric: str, values: str, **labels: str) -> dict:
    selector = ", ".join(f'{k}="{v}"' for k, v in {"job": "augur", **labels}.items())
    return {"series": f"{metric}{{{selector}}}", "values": values}


def firing(alert: str, at: str, *label_sets: dict) -> dict:
    severity = {r["alert"]: r["labels"]["severity"] for r in alert_rules()}[alert]
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {"severity": severity, **ls}} for ls in label_sets],
    }


# ---- TLS and tokens: the component infra/secure/ -------------------------------------------

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def probe_args(command: list[str]) -> dict[str, str]:
    """--option value pairs of a probe command, after `python SCRIPT`."""
    options = command[2:]
    assert len(options) % 2 == 0 and all(o.startswith("--") for o in options[::2]), command
    return dict(zip(options[::2], options[1::2], strict=True))


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def certificate(directory: Path, name: str, ca: str | None, extensions: str) -> Path:
    """A P-256 certificate `name`.pem (key `name`.key), signed by `ca` or self-signed."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / f"{name}.ext").write_text(extensions)
    if ca is None:
        openssl(directory, "req", "-x509", *key, "-keyout", f"{name}.key", "-subj",
                f"/CN={name}", "-days", "2", "-out", f"{name}.pem",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    else:
        openssl(directory, "req", "-new", *key, "-keyout", f"{name}.key", "-subj",
                f"/CN={name}", "-out", f"{name}.csr")  # fmt: skip
        openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem",
                "-CAkey", f"{ca}.key", "-CAcreateserial", "-days", "2",
                "-out", f"{name}.pem", "-extfile", f"{name}.ext")  # fmt: skip
    return directory / f"{name}.pem"
