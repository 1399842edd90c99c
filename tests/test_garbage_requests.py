"""Requests whose bytes are not the method's message: answered INVALID_ARGUMENT after auth,
counted, with no traceback logged and no memory kept (grpcio's own parse kept ~16 KB a call
and logged a traceback each, before any token was checked)."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from augur.client.client import PredictorClient
from augur.features.redis_server import free_port
from tests.conftest import AugurProcess, write_config

TOKEN = "garbage-test-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
GARBAGE = b"\xff" * 40  # a field number no varint can end: no protobuf message parses it
CALLS = 2_000


class GarbageServer:
    def __init__(self, process: AugurProcess, log: Path) -> None:
        self.process, self.log = process, log
        self.address = f"127.0.0.1:{process.port}"

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.process.metrics_port}/metrics") as r:
            text = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
        )


@pytest.fixture(scope="module")
def garbage_server(fraud_repo, model_repo, tmp_path_factory) -> Iterator[GarbageServer]:
    """`augur serve` with token auth on, its log in a file."""
    here = tmp_path_factory.mktemp("garbage")
    port, metrics_port = free_port(), free_port()
    config = write_config(
        here / "augur.yaml", fraud_repo, model_repo, port=port, metrics_port=metrics_port
    )
    env = {**os.environ, "AUGUR_AUTH__TOKENS": f"{{garbage-test: {TOKEN}}}"}
    log = here / "serve.log"
    with log.open("wb") as output:
        process = AugurProcess(
            "serve",
            "--config",
            str(config),
            env=env,
            output=output,
            config=config,
            port=port,
            metrics_port=metrics_port,
        )
    try:
        with PredictorClient(f"127.0.0.1:{port}", timeout=10, token=TOKEN) as client:
            client.wait_serving(["fraud_lgbm"], 90, process)
        yield GarbageServer(process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except Exception:
            process.kill()


def _raw_predict(channel: grpc.Channel):
    """Predict as bytes in, bytes out: what a fuzzer or a client of the wrong proto sends."""
    return channel.unary_unary(
        "/augur.v1.Predictor/Predict", request_serializer=None, response_deserializer=None
    )


def test_garbage_is_invalid_argument_counted_and_keeps_memory_flat(garbage_server):
    with grpc.insecure_channel(garbage_server.address) as channel:
        predict = _raw_predict(channel)

        def garbage() -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as refused:
                predict(GARBAGE, timeout=10, metadata=AUTH)
            return refused.value

        first = garbage()
        assert first.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert first.details().startswith("request is not a valid augur.v1.PredictRequest: ")
        for _ in range(200):  # the server's own allocations settle first
            garbage()
        counted = garbage_server.metric("augur_requests_undecodable_total")
        before = garbage_server.rss_bytes()
        codes = {garbage().code() for _ in range(CALLS)}
        grown = garbage_server.rss_bytes() - before
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    assert grown < 8 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over {CALLS} garbage calls"
    assert garbage_server.metric("augur_requests_undecodable_total") == counted + CALLS
    log = garbage_server.log.read_text()
    assert "Traceback" not in log and "Exception deserializing" not in log, log[-3000:]


def test_garbage_without_a_token_is_unauthenticated_not_parsed(garbage_server):
    counted = garbage_server.metric("augur_requests_undecodable_total")
    with (
        grpc.insecure_channel(garbage_server.address) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _raw_predict(channel)(GARBAGE, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert garbage_server.metric("augur_requests_undecodable_total") == counted


def test_a_good_predict_answers_beside_garbage(garbage_server):
    with PredictorClient(garbage_server.address, timeout=10, token=TOKEN) as client:
        with (
            grpc.insecure_channel(garbage_server.address) as channel,
            pytest.raises(grpc.RpcError),
        ):
            _raw_predict(channel)(GARBAGE, timeout=10, metadata=AUTH)
        scores = client.predict(
            "fraud_lgbm",
            {"user_id": np.arange(3), "merchant_id": np.arange(3)},
            {"amount": np.ones(3)},
        ).scores
    assert scores.shape == (3, 1) and np.isfinite(scores).all()


def test_open_inference_protocol_garbage_is_refused_the_same_way(garbage_server):
    with grpc.insecure_channel(garbage_server.address) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=None,
        )
        counted = garbage_server.metric('augur_requests_undecodable_total{method="ModelInfer"}')
        with pytest.raises(grpc.RpcError) as unauthenticated:
            infer(GARBAGE, timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            infer(GARBAGE, timeout=10, metadata=AUTH)
    assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("request is not a valid inference.ModelInferRequest")
    after = garbage_server.metric('augur_requests_undecodable_total{method="ModelInfer"}')
    assert after == counted + 1
