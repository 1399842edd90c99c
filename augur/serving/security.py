"""Who may talk to the gRPC port: TLS (and mutual TLS) credentials, bearer-token auth, and
the caller each call is counted under. Not Redis credentials (augur/features/connection.py).

Tokens are checked by a server interceptor; the health service and reflection stay open so
probes need no token. A handler can read the authenticated caller with `current_caller()`.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import grpc
import yaml
from prometheus_client import Counter

from augur.config import AuthConfig, Config, ConfigError, ServerConfig

log = logging.getLogger(__name__)

# Calls to these services need no token: Kubernetes probes and grpcurl's discovery send none.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
ADMIN_SERVICE = "/augur.v1.Admin/"
UNAUTHENTICATED = "unauthenticated"  # the caller label of calls without a valid token
MIN_TOKEN_CHARS = 16
_CALLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

CALLER_REQUESTS = Counter(
    "augur_caller_requests_total",
    "Calls by caller (a configured caller name, or 'unauthenticated') and RPC",
    ["caller", "method"],
)
AUTH_REFUSED = Counter(
    "augur_auth_refused_total",
    "Calls refused by token auth: missing or invalid token, or a caller not allowed Admin",
    ["reason"],
)

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("augur_caller", default="")


def current_caller() -> str:
    """The caller name of the call this thread is handling; "" when token auth is off."""
    return _caller.get()


# -- TLS ------------------------------------------------------------------------------------


def server_credentials(server: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the port from server.tls_*, or None for plaintext."""
    cert, key, client_ca = server.tls_cert, server.tls_key, server.tls_client_ca
    if not cert and not key:
        if client_ca:
            raise ConfigError(
                "server.tls_client_ca is set but server.tls_cert and server.tls_key are not: "
                "client certificates are only checked over TLS"
            )
        return None
    if not (cert and key):
        missing = "server.tls_key" if cert else "server.tls_cert"
        raise ConfigError(f"{missing} is not set: server.tls_cert and server.tls_key go together")
    _check_pair(cert, key)
    ca_pem = None
    if client_ca:
        try:
            ssl.create_default_context(cafile=client_ca)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"server.tls_client_ca: cannot load {client_ca}: {e}") from None
        ca_pem = _read(client_ca, "server.tls_client_ca")
    return grpc.ssl_server_credentials(
        [(_read(key, "server.tls_key"), _read(cert, "server.tls_cert"))],
        root_certificates=ca_pem,
        require_client_auth=ca_pem is not None,
    )


def bind(server: grpc.Server, config: Config, address: str = "") -> int:
    """Listen on `address` (default server.host:server.port), with TLS where configured;
    the bound port (0: failed)."""
    address = address or f"{config.server.host}:{config.server.port}"
    credentials = server_credentials(config.server)
    if credentials is None:
        if config.auth.tokens or config.auth.tokens_file:
            log.warning(
                "token auth is on but the port is plaintext: tokens cross the network in "
                "clear text; set server.tls_cert and server.tls_key"
            )
        return server.add_insecure_port(address)
    log.info(
        "gRPC port speaks TLS%s",
        " and requires client certificates" if config.server.tls_client_ca else "",
    )
    return server.add_secure_port(address, credentials)


def _check_pair(cert: str, key: str) -> None:
    """Load the pair with the stdlib first: its errors say which file is wrong; gRPC's do not."""
    for path, option in ((cert, "server.tls_cert"), (key, "server.tls_key")):
        if not Path(path).is_file():
            raise ConfigError(f"{option}: {path} does not exist or is not a file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ConfigError(
            f"server.tls_cert {cert} and server.tls_key {key} are not a PEM certificate and "
            f"its private key ({e.reason or e})"
        ) from None


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None


# -- tokens ---------------------------------------------------------------------------------


def load_tokens(auth: AuthConfig) -> dict[str, tuple[str, ...]]:
    """Tokens by caller from auth.tokens_file and auth.tokens; several per caller rotate."""
    sources: list[tuple[str, object]] = []
    if auth.tokens_file:
        path = Path(auth.tokens_file)
        try:
            sources.append((f"auth.tokens_file {path}", yaml.safe_load(path.read_text()) or {}))
        except OSError as e:
            raise ConfigError(f"auth.tokens_file: cannot read {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"auth.tokens_file {path}: not YAML: {e}") from None
    if auth.tokens:
        sources.append(("auth.tokens", auth.tokens))
    tokens: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for where, mapping in sources:
        if not isinstance(mapping, dict):
            raise ConfigError(f"{where}: expected a mapping of caller name to token")
        for caller, value in mapping.items():
            caller = str(caller)
            if not _CALLER_NAME.fullmatch(caller) or caller == UNAUTHENTICATED:
                raise ConfigError(
                    f"{where}: caller name {caller!r} must be letters, digits, '_', '.', '-' "
                    f"(at most 64) and not {UNAUTHENTICATED!r}"
                )
            if caller in tokens:
                raise ConfigError(f"{where}: caller {caller!r} is configured twice")
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ConfigError(f"{where}: caller {caller!r} has an empty list of tokens")
            for token in values:
                # The message names the caller, never the token.
                if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
                    raise ConfigError(
                        f"{where}: the token of caller {caller!r} must be a string of at least "
                        f"{MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`)"
                    )
                if token in owner:
                    raise ConfigError(
                        f"{where}: callers {owner[token]!r} and {caller!r} share a token; "
                        "each caller needs its own"
                    )
                owner[token] = caller
            tokens[caller] = tuple(values)
    if (auth.tokens_file or auth.tokens) and not tokens:
        raise ConfigError("auth: token auth is configured but no caller has a token")
    return tokens


def interceptors(auth: AuthConfig) -> list[grpc.ServerInterceptor]:
    """The server interceptors the auth config asks for (none without tokens)."""
    tokens = load_tokens(auth)
    if not tokens:
        return []
    admins = [str(c) for c in auth.admin_callers]
    unknown = sorted(set(admins) - set(tokens))
    if unknown:
        raise ConfigError(
            f"auth.admin_callers names {', '.join(map(repr, unknown))} with no token; "
            f"configured callers: {', '.join(sorted(tokens))}"
        )
    log.info("token auth on for %d caller(s): %s", len(tokens), ", ".join(sorted(tokens)))
    return [TokenAuth(tokens, admins)]


class TokenAuth(grpc.ServerInterceptor):
    """Bearer tokens in the `authorization` metadata; UNAUTHENTICATED without a valid one."""

    def __init__(self, tokens: Mapping[str, Iterable[str]], admin_callers: Iterable[str] = ()):
        # Compare digests: equal lengths, so the comparison time says nothing about a token.
        self._digests = [(_digest(t), caller) for caller, ts in tokens.items() for t in ts]
        self._admins = frozenset(admin_callers)
        self._handlers: dict[tuple[str, str], grpc.RpcMethodHandler] = {}

    def caller(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """The caller a call's metadata proves, "" for an invalid token, None for none."""
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is None:
            return None
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return ""
        given = _digest(token.strip())
        found = ""
        for digest, caller in self._digests:  # all of them: the time is the same for any token
            if hmac.compare_digest(given, digest):
                found = caller
        return found

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        method = details.method or ""
        caller = self.caller(details.invocation_metadata)
        # Unknown methods get one label, so a scan of made-up names cannot grow the series.
        rpc = method.rsplit("/", 1)[-1] if handler is not None else "unknown"
        CALLER_REQUESTS.labels(caller or UNAUTHENTICATED, rpc).inc()
        if handler is None:
            return None  # gRPC answers UNIMPLEMENTED
        if method.startswith(OPEN_SERVICES):
            return self._as(handler, method, caller or "")
        if caller is None:
            AUTH_REFUSED.labels("missing").inc()
            return _refuse(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs a token: send metadata 'authorization: Bearer <token>'",
            )
        if not caller:
            AUTH_REFUSED.labels("invalid").inc()
            return _refuse(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid token: 'authorization' must be 'Bearer <token>' with a token the "
                "server knows",
            )
        if method.startswith(ADMIN_SERVICE) and self._admins and caller not in self._admins:
            AUTH_REFUSED.labels("forbidden").inc()
            return _refuse(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"caller {caller!r} may not call the Admin service (auth.admin_callers)",
            )
        return self._as(handler, method, caller)

    def _as(self, handler: grpc.RpcMethodHandler, method: str, caller: str):
        """The handler, run with `current_caller()` set; built once per method and caller."""
        key = (method, caller)
        bound = self._handlers.get(key)
        if bound is None:
            bound = self._handlers[key] = _with_caller(handler, caller)
        return bound


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _rebuild(handler: grpc.RpcMethodHandler, behavior: Callable) -> grpc.RpcMethodHandler:
    _, make = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _with_caller(handler: grpc.RpcMethodHandler, caller: str) -> grpc.RpcMethodHandler:
    attribute, _ = _KINDS[(handler.request_streaming, handler.response_streaming)]
    behavior = getattr(handler, attribute)
    # gRPC hands a behaviour marked non-blocking a callback to send its responses with (the
    # health service's Watch) instead of iterating it; without the mark and the callback
    # Watch falls back to a watcher that blocks its thread for good, on the green pool
    # the thread every call runs on. Everything gRPC passes is passed on.
    non_blocking = bool(getattr(behavior, "experimental_non_blocking", False))

    # The interceptor runs on gRPC's polling thread, the handler on a worker thread: the
    # caller is set here, in the worker, for the length of the call.
    if handler.response_streaming and not non_blocking:

        def run_streaming(request, context, *args, **kwargs):
            token = _caller.set(caller)
            try:
                yield from behavior(request, context, *args, **kwargs)
            finally:
                _caller.reset(token)

        return _rebuild(handler, run_streaming)

    def run(request, context, *args, **kwargs):
        token = _caller.set(caller)
        try:
            return behavior(request, context, *args, **kwargs)
        finally:
            _caller.reset(token)

    run.experimental_non_blocking = non_blocking  # type: ignore[attr-defined]
    return _rebuild(handler, run)


def _refuse(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    def refuse(request, context, *args, **kwargs):  # a callback, if any, is never used
        context.abort(code, message)

    return _rebuild(handler, refuse)
