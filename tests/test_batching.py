"""Dynamic batching: concurrent calls merge into shared reads and model calls, and every
caller gets exactly the answer it would have got alone; a batch waits only for calls on
their way; each call's wait in the queue, and the queue's depth, are metrics."""

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from augur.client.client import PredictorClient
from augur.serving.green import GreenPool
from augur.serving.server import _largest_batch
from tests.conftest import server_config


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_concurrent_calls_share_batches_and_get_their_own_answers(
    fraud_repo, model_repo, client, servers
):
    config = server_config(fraud_repo, model_repo)
    config.server.batch_max_rows = 64
    config.server.batch_max_delay_us = 3_000
    running = servers.start(config)
    calls_before = _sample("augur_batch_calls_sum", model="fraud_mlp")
    batches_before = _sample("augur_batch_calls_count", model="fraud_mlp")
    waits_before = _sample("augur_stage_latency_seconds_count", model="fraud_mlp", stage="queue")
    requests = [
        (
            {"user_id": [i, i + 1], "merchant_id": [i % 80, (i + 7) % 80]},
            {"amount": [float(i), 3.5]},
        )
        for i in range(0, 240, 2)
    ]
    answers: dict[int, np.ndarray] = {}
    failures: list[str] = []

    def caller(worker: int) -> None:
        with PredictorClient(f"127.0.0.1:{running.port}", timeout=10) as own:
            for k in range(worker, len(requests), 8):
                try:
                    answers[k] = own.predict("fraud_mlp", *requests[k]).scores
                except Exception as e:
                    failures.append(repr(e))

    try:
        threads = [threading.Thread(target=caller, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        running.stop()

    assert failures == [] and len(answers) == len(requests)
    for k, (entities, amounts) in enumerate(requests):  # the unbatched server's answers
        alone = client.predict("fraud_mlp", entities, amounts).scores
        np.testing.assert_allclose(answers[k], alone, rtol=1e-6, atol=1e-7)
    calls = _sample("augur_batch_calls_sum", model="fraud_mlp") - calls_before
    batches = _sample("augur_batch_calls_count", model="fraud_mlp") - batches_before
    assert calls == len(requests)
    assert batches < calls  # some calls shared a batch
    # each call's wait for its batch is timed, and the queue it left behind is reported
    waits = _sample("augur_stage_latency_seconds_count", model="fraud_mlp", stage="queue")
    assert waits - waits_before == len(requests)
    assert REGISTRY.get_sample_value("augur_batch_queue_depth", {"model": "fraud_mlp"}) >= 0


def test_a_lone_call_is_not_held_for_the_batch_delay(fraud_repo, model_repo, client, servers):
    """A batch waits only for calls on their way: with a 30 s queue delay, a lone call (and
    one after a call that failed validation, whose announcement is withdrawn) is answered
    within its 5 s deadline."""
    config = server_config(fraud_repo, model_repo)
    config.server.batch_max_rows = 64
    config.server.batch_max_delay_us = 30_000_000
    running = servers.start(config)
    entities, amounts = {"user_id": [3], "merchant_id": [5]}, {"amount": [12.5]}
    try:
        with PredictorClient(f"127.0.0.1:{running.port}", timeout=5) as own:
            first = own.predict("fraud_mlp", entities, amounts).scores
            with pytest.raises(grpc.RpcError) as refused:
                own.predict("fraud_mlp", {"user_id": [3]}, amounts)  # merchant_id missing
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            again = own.predict("fraud_mlp", entities, amounts).scores
    finally:
        running.stop()
    alone = client.predict("fraud_mlp", entities, amounts).scores
    np.testing.assert_allclose(first, alone, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(again, alone, rtol=1e-6, atol=1e-7)


def test_a_model_yaml_turns_batching_on_for_its_model_only(
    fraud_repo, model_repo, tmp_path, servers
):
    """model.yaml's `batching` overrides the server's settings for that model: fraud_mlp
    batches on a server whose batching is off, fraud_lgbm beside it scores each call alone."""
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    spec = models / "fraud_mlp" / "model.yaml"
    spec.write_text(spec.read_text() + "batching: {max_batch_size: 64, max_queue_delay_us: 3000}\n")
    config = server_config(fraud_repo, models)
    assert config.server.batch_max_rows == 0
    running = servers.start(config)
    # a model batching at start puts the server's calls on the green pool
    assert _largest_batch(config, running.manager) == 64
    assert isinstance(running.pool, GreenPool)
    before = {m: _sample("augur_batch_calls_sum", model=m) for m in ("fraud_mlp", "fraud_lgbm")}
    batches_before = _sample("augur_batch_calls_count", model="fraud_mlp")
    entities, amounts = {"user_id": [4, 5], "merchant_id": [6, 7]}, {"amount": [1.0, 2.0]}
    failures: list[str] = []

    def caller() -> None:
        with PredictorClient(f"127.0.0.1:{running.port}", timeout=10) as own:
            for _ in range(10):
                for model in ("fraud_mlp", "fraud_lgbm"):
                    try:
                        own.predict(model, entities, amounts)
                    except Exception as e:
                        failures.append(repr(e))

    try:
        threads = [threading.Thread(target=caller) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # an edit of model.yaml applies on the next refresh, with no new version
        spec.write_text(spec.read_text().replace("max_batch_size: 64", "max_batch_size: 0"))
        running.manager.refresh()
        route = running.manager.route("fraud_mlp")
        assert route.batching.max_batch_size == 0
        assert running.servicer.lanes.of(route).batcher(route) is None
    finally:
        running.stop()
    assert failures == []
    assert _sample("augur_batch_calls_sum", model="fraud_mlp") - before["fraud_mlp"] == 80
    assert _sample("augur_batch_calls_count", model="fraud_mlp") - batches_before < 80
    assert _sample("augur_batch_calls_sum", model="fraud_lgbm") == before["fraud_lgbm"]


def test_a_batch_turned_on_after_start_warns_of_the_threads_it_lacks(
    fraud_repo, model_repo, tmp_path, caplog, servers
):
    """A server on a thread pool (server.handlers: threads) with no batching at start has
    two handler threads; a model.yaml that turns batching on later gets a warning naming
    the fix, and its calls are still answered."""
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    config = server_config(fraud_repo, models)
    config.server.handlers = "threads"
    running = servers.start(config)  # no batching anywhere: 2 threads
    assert isinstance(running.pool, ThreadPoolExecutor)
    try:
        spec = models / "fraud_mlp" / "model.yaml"
        spec.write_text(spec.read_text() + "batching: {max_batch_size: 16}\n")
        running.manager.refresh()
        entities, amounts = {"user_id": [1], "merchant_id": [2]}, {"amount": [3.0]}
        with PredictorClient(f"127.0.0.1:{running.port}", timeout=10) as own:
            scores = own.predict("fraud_mlp", entities, amounts)
    finally:
        running.stop()
    assert scores.scores.shape == (1, 1)
    warned = [r.getMessage() for r in caplog.records if "thread pool" in r.getMessage()]
    assert len(warned) == 1 and "fraud_mlp" in warned[0] and "server.handlers" in warned[0]
