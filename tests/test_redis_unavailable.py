"""Redis down: Predict answers UNAVAILABLE within the deadline, and recovers by itself."""

import time

import grpc
import pytest

from augur.client.client import PredictorClient
from augur.features.redis_server import EmbeddedRedis
from augur.serving.server import start
from tests.conftest import server_config


def test_unavailable_then_recovers(fraud_repo, model_repo, tmp_path):
    redis_server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    running = start(server_config(fraud_repo, model_repo, address=redis_server.address))
    entities = {"user_id": [1, 2], "merchant_id": [3, 4]}
    try:
        with PredictorClient(f"127.0.0.1:{running.port}") as client:
            client.wait_ready(10)
            assert client.predict("fraud_lgbm", entities, {"amount": [1, 2]}).scores.shape == (2, 1)

            redis_server.stop()
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                client.predict("fraud_lgbm", entities, {"amount": [1, 2]}, timeout=2.0)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "online store unreachable" in caught.value.details()
            assert time.monotonic() - began < 2.0
            assert client.health("") == "SERVING"  # the server itself stays up

            redis_server.start()  # same port, same folder
            answer = client.predict("fraud_lgbm", entities, {"amount": [1, 2]})
            assert answer.scores.shape == (2, 1)
            assert (answer.missing == 37).all()  # the restarted store is empty, not broken
    finally:
        running.stop()
        redis_server.stop()
