"""Every container and README command under infra/ is one `augur` accepts, run with a config
that loads: the Redis address its environment builds, and repositories on the shared volume."""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath

import pytest

from augur import config
from augur.cli import main as cli
from augur.features.connection import parse_address
from tests.infra.manifests import (
    INFRA,
    REDIS_SECRET,
    augur_config,
    augur_containers,
    expand,
    manifest,
    manifests,
    mount_source,
    pod_spec,
    projected_source,
    secure_object,
    yaml_documents,
)


def test_every_augur_container_runs_a_command_augur_accepts():
    parser = cli._parser()
    seen = set()
    for workload, container in augur_containers():
        if container.get("command") != ["augur"]:
            continue
        try:
            args = parser.parse_args(container["args"])
        except SystemExit:
            pytest.fail(f"{workload['metadata']['name']}: augur rejects {container['args']}")
        seen.add(args.command)
        assert args.config == Path("/etc/augur/augur.yaml")
        mount, volume = mount_source(workload, container, PurePosixPath(args.config))
        assert volume["configMap"]["name"] == "augur-config"
        key = str(PurePosixPath(args.config).relative_to(mount["mountPath"]))
        assert key in manifest("ConfigMap", "augur-config")["data"]
        if args.command == "materialize":
            assert args.start is None, "the scheduled run must be incremental (no --start)"
    assert {"serve", "materialize"} <= seen


def test_augur_commands_in_the_readme_parse():
    """Every `-- augur ...` command of infra/README.md parses; --server names a Service and a
    port it has, --tls-ca the toolbox's CA file under infra/secure/."""
    parser = cli._parser()
    commands = re.findall(r"-- (augur [^\n]*)", (INFRA / "README.md").read_text())
    assert commands
    services = {name: obj for (kind, name), obj in manifests().items() if kind == "Service"}
    toolbox = secure_object("Deployment", "augur-toolbox")
    (toolbox_container,) = pod_spec(toolbox)["containers"]
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
            source = projected_source(toolbox, toolbox_container, args.tls_ca)
            assert source == ("Secret", "augur-tls", "ca.crt"), command
    assert servers, "the README shows no Admin call"


def test_env_overrides_are_config_options_and_reach_the_redis_service(tmp_path):
    path = tmp_path / "augur.yaml"
    path.write_text(manifest("ConfigMap", "augur-config")["data"]["augur.yaml"])
    secret = yaml_documents(REDIS_SECRET)[0]
    redis_service = manifest("Service", "augur-redis")
    password = "0123456789abcdef"
    for workload, container in augur_containers():
        env = {}
        for var in container["env"]:
            if "valueFrom" in var:
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in secret["stringData"]
                env[var["name"]] = password
            else:
                env[var["name"]] = expand(var["value"], env)
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
    cfg = augur_config(tmp_path)
    claim = manifest("PersistentVolumeClaim", "augur-repos")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for workload, container in augur_containers():
        for repo in (cfg.feature_repo, cfg.model_repo):
            mount, volume = mount_source(workload, container, PurePosixPath(repo))
            assert volume["persistentVolumeClaim"]["claimName"] == "augur-repos"
            assert not volume["persistentVolumeClaim"].get("readOnly", False)
            assert not mount.get("readOnly", False), workload["metadata"]["name"]
