"""infra/redis/redis.conf persists, never evicts, encodes hashes as the embedded Redis does, and
fits the memory limit of the StatefulSet that runs it."""

from __future__ import annotations

from pathlib import PurePosixPath

import yaml

from tests.infra.manifests import (
    INFRA,
    k8s_bytes,
    manifest,
    mount_source,
    pod_labels,
    pod_spec,
    redis_bytes,
    redis_directives,
    selects,
)


def test_redis_conf_persists_never_evicts_and_holds_no_password():
    directives = redis_directives()
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["maxmemory-policy"] == "noeviction"
    assert directives["protected-mode"] == "yes"
    assert "requirepass" not in directives
    assert directives["bind"]


def test_redis_conf_encodes_hashes_as_the_embedded_redis_does():
    from augur.features.redis_server import HASH_ENCODING

    directives = redis_directives()
    for alias, value in HASH_ENCODING.items():
        assert directives[alias.replace("ziplist", "listpack")] == value


def test_redis_statefulset_uses_redis_conf_and_fits_its_memory_limit():
    directives = redis_directives()
    statefulset = manifest("StatefulSet", "augur-redis")
    service = manifest("Service", "augur-redis")
    assert statefulset["spec"]["replicas"] == 1, "Augur reads one Redis endpoint"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert selects(service["spec"]["selector"], pod_labels(statefulset))
    (container,) = pod_spec(statefulset)["containers"]
    assert "/etc/redis/redis.conf" in " ".join(container["args"])
    _, volume = mount_source(statefulset, container, PurePosixPath("/etc/redis/redis.conf"))
    redis = yaml.safe_load((INFRA / "redis" / "kustomization.yaml").read_text())
    (generator,) = [
        g for g in redis["configMapGenerator"] if g["name"] == volume["configMap"]["name"]
    ]
    assert any(f.split("=", 1) == ["redis.conf", "redis.conf"] for f in generator["files"])
    base = yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text())
    assert "../redis" in base["resources"], "the base does not generate Redis's ConfigMap"
    data, volume = mount_source(statefulset, container, PurePosixPath(directives["dir"]))
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert volume is None and data["name"] in claims, "Redis data must be on its own claim"
    assert int(directives["port"]) == container["ports"][0]["containerPort"]
    assert service["spec"]["ports"][0]["port"] == int(directives["port"])
    limit = k8s_bytes(container["resources"]["limits"]["memory"])
    assert redis_bytes(directives["maxmemory"]) <= 0.8 * limit
