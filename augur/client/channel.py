"""Client side of who may talk to an Augur server: a gRPC channel with TLS (or mutual TLS)
and a bearer token on every call. The server side (checking them) is augur/serving/security.py.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from pathlib import Path

import grpc


def client_channel(
    address: str,
    *,
    tls: bool = False,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    token: str | None = None,
    options: Iterable[tuple[str, object]] = (),
) -> grpc.Channel:
    """A channel to an Augur server: TLS when `tls` or any tls_* is given (tls_ca: the CA to
    trust instead of the system's; tls_cert + tls_key: a client certificate for mutual TLS),
    and `authorization: Bearer <token>` on every call when a token is given."""
    options = list(options)
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("tls_cert and tls_key go together: a client certificate needs its key")
    if tls or tls_ca or tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(tls_ca, "tls_ca") if tls_ca else None,
            private_key=_read(tls_key, "tls_key") if tls_key else None,
            certificate_chain=_read(tls_cert, "tls_cert") if tls_cert else None,
        )
        channel = grpc.secure_channel(address, credentials, options)
    else:
        channel = grpc.insecure_channel(address, options)
    if token:
        channel = grpc.intercept_channel(channel, BearerToken(token))
    return channel


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{what}: cannot read {path}: {e.strerror}") from None


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to each call (on plaintext and TLS channels)."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)
