"""Faults over real processes: Redis paused, stopped and restarted; overload; a bad model.

Every call gets an answer or a clear status within its deadline, the breaker stops
hammering a dead Redis, and the server recovers by itself when Redis returns.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import yaml

from augur.api.v1 import predictor_pb2 as pb
from augur.client import encode_entities
from augur.client.client import PredictorClient
from augur.features.redis_server import EmbeddedRedis
from augur.modelrepo.repository import ModelRepository
from augur.pipelines.materialize import materialize
from augur.serving import metrics
from tests.conftest import server_config

ENTITIES = {"user_id": [1, 2, 3], "merchant_id": [4, 5, 6]}
AMOUNTS = {"amount": [10.0, 20.0, 30.0]}


@pytest.fixture
def own_redis(fraud_repo, tmp_path):
    """A private, materialized Redis this test may pause, stop and restart."""
    server = EmbeddedRedis(data_dir=tmp_path / "redis", persist=True).start()
    materialize(
        fraud_repo.path,
        server.address,
        start=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        progress=False,
    )
    yield server
    if server.process and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def _serve(
    servers, fraud_repo, model_repo, address, read_timeout_ms: int | None = None, **server_options
):
    config = server_config(fraud_repo, model_repo, address=address)
    if read_timeout_ms is not None:
        config.redis.read_timeout_ms = read_timeout_ms
    config.redis.breaker_failures = 3
    config.redis.breaker_cooldown_ms = 300
    for key, value in server_options.items():
        setattr(config.server, key, value)
    running = servers.start(config)
    return running, PredictorClient(f"127.0.0.1:{running.port}", timeout=5)


def _outcome(call) -> tuple[str, float]:
    began = time.monotonic()
    try:
        call()
        return "OK", time.monotonic() - began
    except grpc.RpcError as e:
        return e.code().name, time.monotonic() - began


def test_paused_redis_answers_within_the_deadline_then_recovers(
    fraud_repo, model_repo, own_redis, servers
):
    running, client = _serve(servers, fraud_repo, model_repo, own_redis.address)
    try:
        assert _outcome(lambda: client.predict("fraud_lgbm", ENTITIES, AMOUNTS))[0] == "OK"
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        for _ in range(5):
            code, took = _outcome(
                lambda: client.predict("fraud_lgbm", ENTITIES, AMOUNTS, timeout=0.3)
            )
            assert code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
            assert took < 0.45  # never a hang: bounded by the caller's deadline
        os.kill(own_redis.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while _outcome(lambda: client.predict("fraud_lgbm", ENTITIES, AMOUNTS))[0] != "OK":
            assert time.monotonic() < deadline, "did not recover within 5 s of SIGCONT"
            time.sleep(0.05)
    finally:
        running.stop()
        client.close()


def test_reads_cut_short_by_their_callers_deadlines_leave_the_breaker_closed(
    fraud_repo, model_repo, servers
):
    """A read that times out within the little time its caller's deadline left says the
    caller ran out of time, not that Redis is down: those calls end DEADLINE_EXCEEDED, and
    calls with room to wait are served (not refused by a breaker they opened)."""
    from augur.features.connection import connect

    config = server_config(fraud_repo, model_repo)  # breaker: 5 failures open it for 1 s
    config.redis.read_timeout_ms = 2_000  # a call with time to spare outwaits the pause
    running = servers.start(config)
    with PredictorClient(f"127.0.0.1:{running.port}", timeout=5) as client:
        assert _outcome(lambda: client.predict("fraud_lgbm", ENTITIES, AMOUNTS))[0] == "OK"
        # Valkey answers nobody for 1.5 s (and then again by itself)
        connect(fraud_repo.address).execute_command("CLIENT", "PAUSE", 1_500, "ALL")
        short = [
            _outcome(lambda: client.predict("fraud_lgbm", ENTITIES, AMOUNTS, timeout=0.1))
            for _ in range(6)
        ]
        breaker = running.servicer.breaker.state
        served = _outcome(lambda: client.predict("fraud_lgbm", ENTITIES, AMOUNTS, timeout=5))
    assert {code for code, _ in short} == {"DEADLINE_EXCEEDED"}, short
    assert breaker == "closed"
    assert served[0] == "OK", served


def test_breaker_fails_fast_while_redis_is_down_and_probes_it_back(
    fraud_repo, model_repo, own_redis, servers
):
    running, client = _serve(servers, fraud_repo, model_repo, own_redis.address)
    try:
        own_redis.process.send_signal(signal.SIGTERM)  # saves its data, like a real restart
        own_redis.process.wait(10)
        codes = [
            _outcome(lambda: client.predict("fraud_lgbm", ENTITIES, AMOUNTS)) for _ in range(6)
        ]
        assert {c for c, _ in codes} == {"UNAVAILABLE"}
        with pytest.raises(grpc.RpcError) as fast:
            client.predict("fraud_lgbm", ENTITIES, AMOUNTS)
        assert "circuit open" in fast.value.details()
        assert running.servicer.breaker.state == "open"

        own_redis.start()  # same port and folder: the saved data comes back
        began = time.monotonic()
        while _outcome(lambda: client.predict("fraud_lgbm", ENTITIES, AMOUNTS))[0] != "OK":
            assert time.monotonic() - began < 5, "no recovery within 5 s of Redis returning"
            time.sleep(0.05)
        assert running.servicer.breaker.state == "closed"
        answer = client.predict("fraud_lgbm", ENTITIES, AMOUNTS)
        assert (answer.missing < 37).all()  # real features again, not defaults
    finally:
        running.stop()
        client.close()


def test_serve_defaults_policy_answers_degraded(
    fraud_repo, model_repo, own_redis, tmp_path, servers
):
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    spec_path = models / "fraud_lgbm" / "model.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["on_feature_store_error"] = "serve_defaults"
    spec_path.write_text(yaml.safe_dump(spec))
    running, client = _serve(servers, fraud_repo, models, own_redis.address)
    try:
        healthy = client.predict("fraud_lgbm", ENTITIES, AMOUNTS, return_features=True)
        own_redis.process.send_signal(signal.SIGTERM)
        own_redis.process.wait(10)
        before = metrics.DEGRADED.labels("fraud_lgbm")._value.get()
        request = pb.PredictRequest(
            model="fraud_lgbm",
            entities=encode_entities(ENTITIES),
            request_features={"amount": pb.DoubleList(values=AMOUNTS["amount"])},
            options=pb.PredictOptions(return_features=True, return_feature_status=True),
        )
        degraded = client.stub.Predict(request, timeout=5)
        assert degraded.degraded and (healthy.missing < 37).all()
        assert [s.missing for s in degraded.feature_status] == [37, 37, 37]
        served = np.asarray(degraded.features.values, np.float32).reshape(3, -1)
        names = list(degraded.features.names)
        assert served[0, names.index("user_merchant_stats__txn_count_total")] == 0.0  # default
        assert np.isnan(served[0, names.index("user_stats__txn_count_7d")])  # no default
        assert metrics.DEGRADED.labels("fraud_lgbm")._value.get() == before + 1
        with pytest.raises(grpc.RpcError) as strict:  # the other model keeps the default policy
            client.predict("fraud_mlp", ENTITIES, AMOUNTS)
        assert strict.value.code() == grpc.StatusCode.UNAVAILABLE
        # an operator switching the policy mid-outage: it applies at the next refresh,
        # though the loaded version is not loaded again
        mlp_path = models / "fraud_mlp" / "model.yaml"
        mlp = yaml.safe_load(mlp_path.read_text())
        mlp_path.write_text(yaml.safe_dump({**mlp, "on_feature_store_error": "serve_defaults"}))
        running.manager.refresh()
        request.model = "fraud_mlp"
        assert client.stub.Predict(request, timeout=5).degraded
    finally:
        running.stop()
        client.close()


def test_full_model_queue_refuses_at_once(fraud_repo, model_repo, servers):
    running, client = _serve(
        servers,
        fraud_repo,
        model_repo,
        fraud_repo.address,
        model_queue=2,
        workers=8,
        max_in_flight=64,
    )
    n = 1_000
    rng = np.random.default_rng(0)
    entities = {"user_id": rng.integers(0, 400, n), "merchant_id": rng.integers(0, 80, n)}
    outcomes: list[tuple[str, float]] = []

    def hammer() -> None:
        with PredictorClient(f"127.0.0.1:{running.port}", timeout=10) as own:
            for _ in range(6):
                outcomes.append(
                    _outcome(
                        lambda own=own: own.predict("fraud_mlp", entities, {"amount": np.ones(n)})
                    )
                )

    try:
        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        running.stop()
        client.close()
    codes = {c for c, _ in outcomes}
    assert codes == {"OK", "RESOURCE_EXHAUSTED"}, codes
    refused = [took for c, took in outcomes if c == "RESOURCE_EXHAUSTED"]
    served = [took for c, took in outcomes if c == "OK"]
    assert np.median(refused) < np.median(served)  # refused at once, not after waiting
    assert len(outcomes) == 48


def test_bad_model_never_takes_traffic_and_the_rest_serve(
    fraud_repo, model_repo, tmp_path, caplog, servers
):
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    artifact = ModelRepository(models).resolve("fraud_mlp", "v1").artifact
    artifact.write_bytes(artifact.read_bytes()[:-10] + b"corrupted!")
    with caplog.at_level("ERROR"):
        running, client = _serve(servers, fraud_repo, models, fraud_repo.address)
    try:
        assert client.health("fraud_mlp") == "NOT_SERVING"
        assert client.health("fraud_lgbm") == "SERVING"
        assert client.predict("fraud_lgbm", ENTITIES, AMOUNTS).scores.shape == (3, 1)
        with pytest.raises(grpc.RpcError) as refused:
            client.predict("fraud_mlp", ENTITIES, AMOUNTS)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert any(
            "fraud_mlp" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records
        )
    finally:
        running.stop()
        client.close()


@pytest.mark.parametrize("batch_rows", [0, 64], ids=["alone", "batched"])
def test_calls_waiting_for_a_paused_redis_leave_the_server_to_others_and_get_their_own_rows(
    fraud_repo, model_repo, own_redis, batch_rows, servers
):
    """On the green pool (the default) a call, or a batch, waiting for Redis parks, and
    gRPC's polling thread serves other calls meanwhile; reads waiting together are made on
    connections of their own, so each call gets its own rows back once Redis answers."""
    running, client = _serve(  # the reads outwait the pause
        servers,
        fraud_repo,
        model_repo,
        own_redis.address,
        read_timeout_ms=8_000,
        batch_max_rows=batch_rows,
    )
    calls = [({"user_id": [u], "merchant_id": [u + 7]}, {"amount": [u * 3.0]}) for u in (1, 2, 3)]
    try:
        alone = [client.predict("fraud_lgbm", e, a).scores for e, a in calls]
        assert len({s.tobytes() for s in alone}) == 3  # rows that tell the calls apart
        pool = ThreadPoolExecutor(len(calls))
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            waiting = [pool.submit(client.predict, "fraud_lgbm", e, a) for e, a in calls]
            time.sleep(0.3)  # their reads sent, their replies not coming
            assert {m.name for m in client.list_models(timeout=2)} == {"fraud_lgbm", "fraud_mlp"}
            assert client.health(timeout=2) == "SERVING"
            assert not any(f.done() for f in waiting)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        together = [f.result(timeout=10).scores for f in waiting]
        pool.shutdown()
        for own, got in zip(alone, together, strict=True):
            np.testing.assert_array_equal(got, own)
    finally:
        running.stop()
        client.close()


def test_calls_on_threads_wait_for_a_paused_redis_holding_their_threads(
    fraud_repo, model_repo, own_redis, servers
):
    """The contrast that shows what the green pool buys: on two handler threads, two calls
    waiting for Redis leave none for a third."""
    running, client = _serve(
        servers,
        fraud_repo,
        model_repo,
        own_redis.address,
        read_timeout_ms=8_000,
        handlers="threads",
    )
    try:
        pool = ThreadPoolExecutor(2)
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            waiting = [pool.submit(client.predict, "fraud_lgbm", ENTITIES, AMOUNTS) for _ in "ab"]
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as blocked:
                client.list_models(timeout=0.5)
            assert blocked.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        assert all(len(f.result(timeout=10).scores) == 3 for f in waiting)
        pool.shutdown()
    finally:
        running.stop()
        client.close()
