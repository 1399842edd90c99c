"""Kubernetes exec probe for a TLS gRPC port: grpc.health.v1.Health/Check against this pod.

The kubelet's native gRPC probe dials plaintext, so a port that speaks TLS only needs this.
It verifies the server certificate against --ca under --server-name, can present a client
certificate for mutual TLS, sends no token (the health service needs none), and exits 0 only
on SERVING; otherwise 1, with the reason on stderr for the pod's events. It uses only what
the Augur image already has (grpcio, grpcio-health-checking).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Below every probe's timeoutSeconds, so that a slow server reads as a failed check, not as a
# probe the kubelet had to kill.
CALL_TIMEOUT_S = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the gRPC port (server.port)")
    parser.add_argument("--ca", required=True, help="CA that signed the server certificate (PEM)")
    parser.add_argument(
        "--server-name", required=True, help="a DNS name the server certificate holds"
    )
    parser.add_argument("--cert", help="client certificate, for mutual TLS (PEM)")
    parser.add_argument("--key", help="its private key (PEM)")
    parser.add_argument("--service", default="", help='health service name ("": the server)')
    parser.add_argument(
        "--timeout", type=float, default=CALL_TIMEOUT_S, help="seconds for the call"
    )
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(args.ca).read_bytes(),
            private_key=Path(args.key).read_bytes() if args.key else None,
            certificate_chain=Path(args.cert).read_bytes() if args.cert else None,
        )
    except OSError as e:
        print(f"cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    options = [("grpc.ssl_target_name_override", args.server_name)]
    with grpc.secure_channel(f"127.0.0.1:{args.port}", credentials, options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            print(f"health check failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"health of {args.service or 'the server'!r} is {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
