"""The TLS-and-tokens component infra/secure/: it patches what infra/ defines, mounts the files
its config names, keeps token templates unusable, and its exec probe passes a real TLS health
server only while that server is SERVING."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from concurrent import futures
from pathlib import PurePosixPath

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from augur import config
from augur.serving import security
from tests.infra.manifests import (
    PROBES,
    SECURE,
    certificate,
    config_of,
    manifest,
    manifests,
    mount_source,
    object_keys,
    pod_spec,
    probe_args,
    projected_source,
    secret_template,
    secure_component,
    secure_object,
    secure_serving,
    serving,
)


def test_secure_component_patches_what_infra_defines():
    component = secure_component()
    assert component["kind"] == "Component"
    for patch in component["patches"]:
        assert (SECURE / patch["path"]).is_file(), patch["path"]
        assert (patch["target"]["kind"], patch["target"]["name"]) in manifests()
    for generator in component["configMapGenerator"]:
        assert generator["namespace"] == "augur"  # also when used from an overlay outside infra/
        for entry in generator["files"]:
            assert (SECURE / entry.rpartition("=")[2]).is_file(), entry
    listed = {p.name for p in SECURE.iterdir()} - {"kustomization.yaml", "__pycache__"}
    used = {p["path"] for p in component["patches"]} | {
        entry.rpartition("=")[2] for g in component["configMapGenerator"] for entry in g["files"]
    }
    assert listed == used, f"files in infra/secure/ the component does not use: {listed - used}"


def test_secure_config_loads_the_tls_and_token_files_the_pod_mounts(tmp_path):
    deployment = secure_object("Deployment", "augur")
    container = secure_serving()
    cfg = config_of(container, tmp_path)
    expected = {
        cfg.server.tls_cert: ("Secret", "augur-tls", "tls.crt"),
        cfg.server.tls_key: ("Secret", "augur-tls", "tls.key"),
        cfg.auth.tokens_file: ("Secret", "augur-auth", "tokens.yaml"),
    }
    for path, source in expected.items():
        assert path, f"the secure config leaves {source[2]} unset"
        assert projected_source(deployment, container, path) == source, path
    # augur.yaml is still where --config reads it, next to the Secrets' files.
    assert projected_source(deployment, container, "/etc/augur/augur.yaml") == (
        "ConfigMap",
        "augur-config",
        "augur.yaml",
    )
    assert cfg.auth.admin_callers, "the secure config limits Admin to named callers"
    assert not cfg.server.tls_client_ca, "mutual TLS is documented, not part of infra/secure/"
    for name in ("augur-tls", "augur-auth"):
        assert secret_template(name)["metadata"]["namespace"] == "augur"
    assert secret_template("augur-tls")["type"] == "kubernetes.io/tls"


def test_secure_token_template_has_every_admin_caller_and_no_usable_token(tmp_path):
    cfg = config_of(secure_serving(), tmp_path)
    template = secret_template("augur-auth")["stringData"]
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
    deployment = secure_object("Deployment", "augur")
    container = secure_serving()
    _, plain = serving()
    cfg = config_of(container, tmp_path)
    service = manifest("Service", "augur")
    dns_name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    for probe in PROBES:
        secure_probe, plain_probe = container[probe], plain[probe]
        assert "grpc" not in secure_probe, f"{probe}: the kubelet's gRPC probe dials plaintext"
        command = secure_probe["exec"]["command"]
        assert command[0] == "python"
        assert projected_source(deployment, container, command[1]) == (
            "ConfigMap",
            "augur-probe",
            "grpc_health_probe.py",
        )
        args = probe_args(command)
        assert int(args["--port"]) == cfg.server.port, probe
        assert projected_source(deployment, container, args["--ca"]) == (
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
    toolbox = secure_object("Deployment", "augur-toolbox")
    (container,) = pod_spec(toolbox)["containers"]
    (token,) = [v for v in container["env"] if v["name"] == "AUGUR_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "augur-auth" and ref["key"] in object_keys("Secret", "augur-auth")
    assert ref["key"] != "tokens.yaml", "the toolbox gets one token, not every caller's"
    _, volume = mount_source(toolbox, container, PurePosixPath("/etc/augur/augur.yaml"))
    projected = set()
    for source in volume["projected"]["sources"]:
        ((field, ref),) = source.items()
        kind = {"configMap": "ConfigMap", "secret": "Secret"}[field]
        keys = (
            [item["key"] for item in ref["items"]]
            if "items" in ref
            else object_keys(kind, ref["name"])
        )
        projected.update((ref["name"], key) for key in keys)
    assert projected == {("augur-config", "augur.yaml"), ("augur-tls", "ca.crt")}


def test_secure_services_no_longer_claim_cleartext_http2():
    for name in ("augur", "augur-admin"):
        plain = manifest("Service", name)["spec"]["ports"]
        secure = secure_object("Service", name)["spec"]["ports"]
        assert any(p.get("appProtocol") == "kubernetes.io/h2c" for p in plain), name
        assert not any(p.get("appProtocol") == "kubernetes.io/h2c" for p in secure), name


def test_secure_probe_passes_a_tls_server_only_while_it_is_serving(tmp_path):
    """The readiness probe's own command, run against a real TLS port with the server's
    health service: 0 while SERVING, 1 when NOT_SERVING, for another name, or (mutual TLS)
    without a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI makes the test certificates")
    deployment = secure_object("Deployment", "augur")
    container = secure_serving()
    command = container["readinessProbe"]["exec"]["command"]
    args = probe_args(command)
    ca = certificate(tmp_path, "ca", None, "")
    leaf = "keyUsage=critical,digitalSignature\nextendedKeyUsage={}\nsubjectAltName=DNS:{}\n"
    server_cert = certificate(
        tmp_path, "server", "ca", leaf.format("serverAuth", args["--server-name"])
    )
    client_cert = certificate(tmp_path, "client", "ca", leaf.format("clientAuth", "probe"))
    files = {
        ("ConfigMap", "augur-probe", "grpc_health_probe.py"): SECURE / "grpc_health_probe.py",
        ("Secret", "augur-tls", "ca.crt"): ca,
    }

    def probe(port: int, *extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable]
        for arg in command[1:]:
            if arg.startswith("/"):  # a file the pod projects: its local stand-in
                arg = str(files[projected_source(deployment, container, arg)])
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
