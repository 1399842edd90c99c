"""Who may talk to Augur and to Redis: TLS and mutual TLS on the gRPC port, bearer tokens per
caller, Redis ACL logins and TLS to Redis. Real gRPC on loopback, real Redis processes,
certificates made with the `openssl` CLI for each run."""

from __future__ import annotations

import select
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from augur.client.channel import client_channel
from augur.client.client import AdminClient, PredictorClient
from augur.config import AuthConfig, ConfigError, ServerConfig
from augur.features.connection import connect, parse_address
from augur.features.redis_server import EmbeddedRedis
from augur.serving import security
from tests.conftest import server_config

ENTITIES = {"user_id": [1, 2], "merchant_id": [3, 3]}
AMOUNTS = {"amount": [12.5, 980.0]}
API_TOKEN = "api-token-0123456789abcdef"
API_TOKEN_NEXT = "api-token-rotated-fedcba9876543210"
OPS_TOKEN = "ops-token-0123456789abcdef"
REDIS_USER, REDIS_PASSWORD = "augur", "augur-acl-password-42"

# -- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Certs:
    ca: Path  # signs the server and the trusted client
    other_ca: Path  # signs a client nobody trusts
    server: Pair  # CN=localhost, SAN DNS:localhost, IP:127.0.0.1
    client: Pair
    stranger: Pair


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _key_and_request(name: str, cn: str) -> list[str]:
    return [
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-subj", f"/CN={cn}",
    ]  # fmt: skip


def _ca(directory: Path, name: str) -> Path:
    _openssl(
        directory, "req", "-x509", *_key_and_request(name, name), "-days", "2",
        "-out", f"{name}.pem", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return directory / f"{name}.pem"


def _leaf(directory: Path, ca: str, name: str, usage: str, serial: int) -> Pair:
    _openssl(directory, "req", "-new", *_key_and_request(name, "localhost"),
             "-out", f"{name}.csr")  # fmt: skip
    (directory / f"{name}.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        f"extendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature\n"
    )
    _openssl(
        directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem",
        "-CAkey", f"{ca}.key", "-set_serial", str(serial), "-days", "2",
        "-out", f"{name}.pem", "-extfile", f"{name}.ext",
    )  # fmt: skip
    return Pair(directory / f"{name}.pem", directory / f"{name}.key")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI makes the test certificates")
    d = tmp_path_factory.mktemp("certs")
    return Certs(
        ca=_ca(d, "ca"),
        other_ca=_ca(d, "other-ca"),
        server=_leaf(d, "ca", "server", "serverAuth", 1),
        client=_leaf(d, "ca", "client", "clientAuth", 2),
        stranger=_leaf(d, "other-ca", "stranger", "clientAuth", 3),
    )


# -- servers ----------------------------------------------------------------------------------


@contextmanager
def _serving(fraud_repo, model_repo, auth: AuthConfig | None = None, **server) -> Iterator[str]:
    """A real Augur server with some server.* options and an auth section; yields its address."""
    from augur.serving.server import start

    config = server_config(fraud_repo, model_repo)
    config.server.watch_interval_s = 0
    for name, value in server.items():
        setattr(config.server, name, value)
    config.auth = auth or AuthConfig()
    running = start(config)
    try:
        yield f"localhost:{running.port}"
    finally:
        running.stop()


@pytest.fixture(scope="module")
def tls_server(fraud_repo, model_repo, certs) -> Iterator[str]:
    with _serving(
        fraud_repo, model_repo, tls_cert=str(certs.server.cert), tls_key=str(certs.server.key)
    ) as address:
        yield address


@pytest.fixture(scope="module")
def mtls_server(fraud_repo, model_repo, certs) -> Iterator[str]:
    with _serving(
        fraud_repo,
        model_repo,
        tls_cert=str(certs.server.cert),
        tls_key=str(certs.server.key),
        tls_client_ca=str(certs.ca),
    ) as address:
        yield address


@pytest.fixture(scope="module")
def token_server(fraud_repo, model_repo, certs, tmp_path_factory) -> Iterator[str]:
    """TLS plus tokens from a file, as deployed: fraud-api rotates between two tokens; only
    ops may call Admin."""
    tokens = tmp_path_factory.mktemp("auth") / "tokens.yaml"
    tokens.write_text(f"fraud-api: [{API_TOKEN}, {API_TOKEN_NEXT}]\nops: {OPS_TOKEN}\n")
    auth = AuthConfig(tokens_file=str(tokens), admin_callers=["ops"])
    with _serving(
        fraud_repo,
        model_repo,
        auth,
        tls_cert=str(certs.server.cert),
        tls_key=str(certs.server.key),
    ) as address:
        yield address


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def _predicts(client: PredictorClient) -> None:
    answer = client.predict("fraud_lgbm", ENTITIES, AMOUNTS)
    assert answer.scores.shape == (2, 1)


# -- TLS --------------------------------------------------------------------------------------


def test_tls_client_is_served(tls_server, certs):
    with PredictorClient(tls_server, timeout=5, tls_ca=certs.ca) as client:
        _predicts(client)
        assert client.health() == "SERVING"


def test_plaintext_client_cannot_talk_to_a_tls_port(tls_server):
    with PredictorClient(tls_server, timeout=2) as client:
        code, _ = _code(lambda: client.health())
    assert code == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_certificate_it_does_not_trust(tls_server, certs):
    with PredictorClient(tls_server, timeout=2, tls_ca=certs.other_ca) as client:
        code, _ = _code(lambda: client.health())
    assert code == grpc.StatusCode.UNAVAILABLE


# -- mutual TLS -------------------------------------------------------------------------------


def test_mtls_serves_a_client_certificate_signed_by_the_client_ca(mtls_server, certs):
    with PredictorClient(
        mtls_server,
        timeout=5,
        tls_ca=certs.ca,
        tls_cert=certs.client.cert,
        tls_key=certs.client.key,
    ) as client:
        _predicts(client)
    with AdminClient(
        mtls_server,
        timeout=5,
        tls_ca=certs.ca,
        tls_cert=certs.client.cert,
        tls_key=certs.client.key,
    ) as admin:  # Admin shares the port, and so its TLS
        assert {m.name for m in admin.status()} >= {"fraud_lgbm"}


def test_mtls_refuses_a_client_without_a_certificate(mtls_server, certs):
    with PredictorClient(mtls_server, timeout=2, tls_ca=certs.ca) as client:
        code, _ = _code(lambda: client.health())
    assert code == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(mtls_server, certs):
    with PredictorClient(
        mtls_server,
        timeout=2,
        tls_ca=certs.ca,
        tls_cert=certs.stranger.cert,
        tls_key=certs.stranger.key,
    ) as client:
        code, _ = _code(lambda: client.health())
    assert code == grpc.StatusCode.UNAVAILABLE


# -- tokens -----------------------------------------------------------------------------------


def _calls(caller: str, method: str) -> float:
    labels = {"caller": caller, "method": method}
    return REGISTRY.get_sample_value("augur_caller_requests_total", labels) or 0.0


def test_call_without_a_token_is_unauthenticated(token_server, certs):
    with PredictorClient(token_server, timeout=5, tls_ca=certs.ca) as client:
        code, details = _code(lambda: client.predict("fraud_lgbm", ENTITIES, AMOUNTS))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details == (
        "/augur.v1.Predictor/Predict needs a token: send metadata 'authorization: Bearer <token>'"
    )


def test_wrong_token_is_unauthenticated_and_reveals_no_token(token_server, certs):
    before = _calls("unauthenticated", "Predict")
    for token in ("not-a-token-0123456789", API_TOKEN[:-1]):
        with PredictorClient(token_server, timeout=5, tls_ca=certs.ca, token=token) as client:
            code, details = _code(lambda c=client: c.predict("fraud_lgbm", ENTITIES, AMOUNTS))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert details.startswith("invalid token")
        assert not any(t in details for t in (API_TOKEN, API_TOKEN_NEXT, OPS_TOKEN))
    assert _calls("unauthenticated", "Predict") == before + 2


def test_right_token_is_served_and_counted_under_its_caller(token_server, certs):
    before = _calls("fraud-api", "Predict")
    for token in (API_TOKEN, API_TOKEN_NEXT):  # both while the token rotates
        with PredictorClient(token_server, timeout=5, tls_ca=certs.ca, token=token) as client:
            _predicts(client)
    assert _calls("fraud-api", "Predict") == before + 2


def test_health_and_reflection_need_no_token(token_server, certs):
    with PredictorClient(token_server, timeout=5, tls_ca=certs.ca) as client:
        assert client.health() == "SERVING"
        assert client.health("fraud_lgbm") == "SERVING"
        stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=5)
    names = {s.name for s in reply.list_services_response.service}
    assert {"augur.v1.Predictor", "grpc.health.v1.Health"} <= names


def test_an_open_health_watch_without_a_token_leaves_the_server_answering(fraud_repo, model_repo):
    """Watch streams on gRPC's callback path; through the auth wrapper it must not fall
    back to a watcher that blocks the thread the green pool runs every call on."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    auth = AuthConfig(tokens={"fraud-api": API_TOKEN})
    with (
        _serving(fraud_repo, model_repo, auth) as address,
        PredictorClient(address, timeout=5) as anonymous,
        PredictorClient(address, timeout=5, token=API_TOKEN) as client,
    ):
        watch = health_pb2_grpc.HealthStub(anonymous.channel).Watch(
            health_pb2.HealthCheckRequest(service="fraud_lgbm"), timeout=30
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        assert anonymous.health("fraud_lgbm") == "SERVING"
        _predicts(client)
        with pytest.raises(grpc.RpcError):  # without a token Predict is still refused
            anonymous.predict("fraud_lgbm", ENTITIES, AMOUNTS)
        watch.cancel()


def test_admin_needs_a_caller_named_in_admin_callers(token_server, certs):
    with AdminClient(token_server, timeout=5, tls_ca=certs.ca, token=API_TOKEN) as admin:
        code, details = _code(admin.status)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == "caller 'fraud-api' may not call the Admin service (auth.admin_callers)"
    with AdminClient(token_server, timeout=5, tls_ca=certs.ca) as admin:
        assert _code(admin.status)[0] == grpc.StatusCode.UNAUTHENTICATED
    with AdminClient(token_server, timeout=5, tls_ca=certs.ca, token=OPS_TOKEN) as admin:
        assert {m.name for m in admin.status()} >= {"fraud_lgbm"}


def test_a_handler_sees_the_authenticated_caller():
    """current_caller() holds in the worker thread that runs the handler, for that call."""
    seen = grpc.unary_unary_rpc_method_handler(
        lambda request, context: security.current_caller().encode()
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(2),
        interceptors=[security.TokenAuth({"fraud-api": [API_TOKEN], "ops": [OPS_TOKEN]})],
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Who", {"Am": seen})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        for token, caller in ((API_TOKEN, b"fraud-api"), (OPS_TOKEN, b"ops")):
            with client_channel(f"127.0.0.1:{port}", token=token) as channel:
                assert channel.unary_unary("/t.Who/Am")(b"", timeout=5) == caller
    finally:
        server.stop(0)
    assert security.current_caller() == ""


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (
            AuthConfig(tokens={"api": "short"}),
            "token of caller 'api' must be a string of at least 16",
        ),
        (AuthConfig(tokens={"a": API_TOKEN, "b": API_TOKEN}), "callers 'a' and 'b' share a token"),
        (AuthConfig(tokens={"api": []}), "caller 'api' has an empty list of tokens"),
        (AuthConfig(tokens={"unauthenticated": API_TOKEN}), "caller name 'unauthenticated'"),
        (AuthConfig(tokens={"x y": API_TOKEN}), "caller name 'x y' must be letters"),
        (AuthConfig(tokens={"api": API_TOKEN}, admin_callers=["ops"]), "admin_callers names 'ops'"),
        (AuthConfig(tokens_file="/nonexistent/tokens.yaml"), "auth.tokens_file: cannot read"),
    ],
)
def test_bad_auth_config_is_refused_by_name(auth, message):
    with pytest.raises(ConfigError, match=message) as info:
        security.interceptors(auth)
    assert API_TOKEN not in str(info.value)


def test_bad_tls_config_is_refused_by_name(certs):
    def refused(**fields) -> str:
        with pytest.raises(ConfigError) as info:
            security.server_credentials(ServerConfig(**fields))
        return str(info.value)

    assert "server.tls_key is not set" in refused(tls_cert=str(certs.server.cert))
    assert "only checked over TLS" in refused(tls_client_ca=str(certs.ca))
    assert "not a PEM certificate and its private key" in refused(
        tls_cert=str(certs.server.cert), tls_key=str(certs.client.key)
    )
    assert "does not exist" in refused(tls_cert="/nonexistent.pem", tls_key="/nonexistent.key")
    assert security.server_credentials(ServerConfig()) is None


# -- Redis: ACL logins and TLS ----------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[EmbeddedRedis]:
    """A private Redis with an ACL user and a password on the default user. Set after start:
    EmbeddedRedis's readiness ping carries no password, so `--requirepass` never gets ready."""
    with EmbeddedRedis() as server:
        admin = redis.Redis(host=server.host, port=server.port)
        admin.execute_command(
            "ACL", "SETUSER", REDIS_USER, "on", f">{REDIS_PASSWORD}", "~*", "+@all"
        )
        admin.config_set("requirepass", "s3cret-default-password")
        admin.close()
        yield server


def test_redis_acl_user_reads_and_writes(locked_redis):
    client = connect(f"{locked_redis.address},username={REDIS_USER},password={REDIS_PASSWORD}")
    client.hset("augur:test", "f", b"1")
    assert client.hget("augur:test", "f") == b"1"
    assert client.acl_whoami() == REDIS_USER
    default = connect(f"{locked_redis.address},password=s3cret-default-password")
    assert default.hget("augur:test", "f") == b"1"


@pytest.mark.parametrize(
    ("options", "user", "reason"),
    [
        (f",username={REDIS_USER},password=wrong-password", REDIS_USER, "invalid username"),
        (",password=wrong-password", "default", "invalid username"),
        ("", "default", "Authentication required"),
    ],
)
def test_redis_refused_login_names_address_and_user(locked_redis, options, user, reason):
    with pytest.raises(redis.AuthenticationError) as info:
        connect(locked_redis.address + options).get("augur:test")
    message = str(info.value)
    assert message.startswith(f"Redis at {locked_redis.address} refused user {user!r}: {reason}")
    assert "wrong-password" not in message and REDIS_PASSWORD not in message


def test_server_reads_redis_with_its_acl_login_and_names_a_refused_one(
    fraud_repo, model_repo, locked_redis
):
    def features(address: str) -> tuple[str, ...]:
        config = server_config(fraud_repo, model_repo, address=address)
        config.server.watch_interval_s = 0
        from augur.serving.server import start

        running = start(config)
        try:
            with PredictorClient(f"127.0.0.1:{running.port}", timeout=5) as client:
                return client.online_features("fraud_lgbm", ENTITIES)[0]
        finally:
            running.stop()

    login = f"{locked_redis.address},username={REDIS_USER}"
    assert features(f"{login},password={REDIS_PASSWORD}")  # this Redis has no rows: all missing
    with pytest.raises(grpc.RpcError) as info:
        features(f"{login},password=wrong-password")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"refused user '{REDIS_USER}'" in info.value.details()


class TlsFront:
    """A TLS endpoint in front of a plaintext Redis, standing in for Redis's own tls-port:
    the bundled Valkey is built without TLS ("Failed finding TLS support")."""

    def __init__(self, target: EmbeddedRedis, server: Pair, client_ca: Path | None = None):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(server.cert, server.key)
        if client_ca:
            self.context.load_verify_locations(client_ca)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.target = (target.host, target.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(raw,), daemon=True).start()

    def _relay(self, raw: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with tls, socket.create_connection(self.target) as upstream:
            try:
                while True:  # one thread per connection: an SSL socket is not for two threads
                    ready = [tls] if tls.pending() else select.select([tls, upstream], [], [])[0]
                    source, sink = (tls, upstream) if tls in ready else (upstream, tls)
                    data = source.recv(65536)
                    if not data:
                        return
                    sink.sendall(data)
            except (OSError, ssl.SSLError):
                return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def tls_redis(locked_redis, certs) -> Iterator[TlsFront]:
    front = TlsFront(locked_redis, certs.server, client_ca=certs.ca)
    yield front
    front.close()


def test_redis_over_tls_with_acl_login_and_client_certificate(tls_redis, certs):
    login = f"username={REDIS_USER},password={REDIS_PASSWORD}"
    address = (
        f"localhost:{tls_redis.port},{login},ssl=true,ssl_ca_certs={certs.ca},"
        f"ssl_certfile={certs.client.cert},ssl_keyfile={certs.client.key}"
    )
    client = connect(address)
    client.set("augur:tls", "over tls")
    assert client.get("augur:tls") == b"over tls"
    url = (
        f"rediss://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{tls_redis.port}/0"
        f"?ssl_ca_certs={certs.ca}&ssl_certfile={certs.client.cert}"
        f"&ssl_keyfile={certs.client.key}&ssl_cert_reqs=required"
    )
    assert connect(url).get("augur:tls") == b"over tls"


def test_redis_tls_refuses_a_server_certificate_it_does_not_trust(tls_redis, certs):
    address = (
        f"localhost:{tls_redis.port},username={REDIS_USER},password={REDIS_PASSWORD},"
        f"ssl=true,ssl_ca_certs={certs.other_ca},"
        f"ssl_certfile={certs.client.cert},ssl_keyfile={certs.client.key}"
    )
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(address).ping()


def test_redis_address_options_mean_the_same_to_augur_and_feast(certs):
    from feast.infra.online_stores.redis import RedisOnlineStore

    address = (
        f"redis.internal:6380,username=augur,password=p4ss=word,db=2,ssl=true,"
        f"ssl_ca_certs={certs.ca},ssl_certfile={certs.client.cert},"
        f"ssl_keyfile={certs.client.key},ssl_cert_reqs=required,ssl_check_hostname=false"
    )
    ours = parse_address(address)
    nodes, feasts = RedisOnlineStore._parse_connection_string(address)
    assert nodes == [{"host": "redis.internal", "port": "6380"}]
    assert ours == {"host": "redis.internal", "port": 6380, **feasts}
    assert ours["password"] == "p4ss=word" and ours["ssl"] is True
    assert ours["ssl_check_hostname"] is False


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("h:6379,pasword=x", "unknown Redis address option 'pasword'"),
        ("h:6379,ssl_ca_certs=/ca.pem", "ssl_ca_certs need ssl=true"),
        ("h:6379,ssl=yes", "ssl='yes': expected true or false"),
        ("h:6379,ssl=true,ssl_cert_reqs=maybe", "expected one of required, optional, none"),
        ("h:6379,db=two", "db='two': expected an integer"),
    ],
)
def test_bad_redis_address_options_are_refused_by_name(address, message):
    with pytest.raises(ValueError, match=message):
        parse_address(address)


# -- operator access ----------------------------------------------------------------------


def test_operator_cli_reaches_a_secured_server(token_server, certs):
    import os
    import sys

    def cli(token: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "AUGUR_TOKEN"}
        if token:
            env["AUGUR_TOKEN"] = token  # from the environment: never on the command line
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "augur.cli.main",
                "models",
                "status",
                "--server",
                token_server,
                "--tls-ca",
                str(certs.ca),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    served = cli(OPS_TOKEN)
    assert served.returncode == 0, served.stdout + served.stderr
    assert "fraud_lgbm" in served.stdout
    refused = cli(None)
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stdout


def test_admin_can_listen_on_its_own_address(fraud_repo, model_repo):
    from augur.features.redis_server import free_port
    from augur.serving.server import start

    config = server_config(fraud_repo, model_repo)
    config.server.admin_port = free_port()
    running = start(config)
    try:
        assert running.admin_port == config.server.admin_port
        with AdminClient(f"127.0.0.1:{running.admin_port}", timeout=5) as admin:
            assert {m.name for m in admin.status()} >= {"fraud_lgbm"}
        with AdminClient(f"127.0.0.1:{running.port}", timeout=5) as admin:
            assert _code(admin.status)[0] == grpc.StatusCode.UNIMPLEMENTED  # not on the API port
        with PredictorClient(f"127.0.0.1:{running.port}", timeout=5) as client:
            _predicts(client)
    finally:
        running.stop()


def test_embedded_redis_with_a_password_starts_and_requires_it():
    with EmbeddedRedis(extra_args=("--requirepass", "embedded-secret-42")) as server:
        assert connect(f"{server.address},password=embedded-secret-42").ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=server.host, port=server.port).ping()
