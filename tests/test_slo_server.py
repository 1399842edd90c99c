"""A model with an `slo` in model.yaml batches on a real server: its calls share batches and
get the answers they would alone, the controller's choice and its predicted and observed p99
are metrics, and a lone call is answered at once."""

import shutil
import threading
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from augur.client.client import PredictorClient
from augur.modelrepo.repository import RepositoryError
from augur.modelrepo.spec import parse_spec
from tests.conftest import server_config


def _sample(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.fixture(scope="module")
def slo_server(fraud_repo, model_repo, tmp_path_factory):
    from augur.serving.server import start

    models = tmp_path_factory.mktemp("slo") / "models"
    shutil.copytree(model_repo, models)
    spec = models / "fraud_lgbm" / "model.yaml"
    spec.write_text(spec.read_text() + "slo: {p99_ms: 5}\n")
    config = server_config(fraud_repo, models)
    assert config.server.batch_max_rows == 0  # the objective alone turns batching on
    running = start(config)
    yield running
    running.stop()


def test_calls_of_a_model_with_an_objective_share_batches_and_get_their_own_answers(
    slo_server, client
):
    requests = [
        ({"user_id": [i], "merchant_id": [i % 80]}, {"amount": [float(i)]}) for i in range(160)
    ]
    answers: dict[int, np.ndarray] = {}
    failures: list[str] = []
    batches_before = _sample("augur_batch_calls_count", model="fraud_lgbm") or 0.0

    def caller(worker: int) -> None:
        with PredictorClient(f"127.0.0.1:{slo_server.port}", timeout=10) as own:
            for k in range(worker, len(requests), 16):
                try:
                    answers[k] = own.predict("fraud_lgbm", *requests[k]).scores
                except Exception as e:
                    failures.append(repr(e))

    threads = [threading.Thread(target=caller, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == [] and len(answers) == len(requests)
    for k, (entities, amounts) in enumerate(requests):  # the unbatched server's answers
        alone = client.predict("fraud_lgbm", entities, amounts).scores
        np.testing.assert_allclose(answers[k], alone, rtol=1e-6, atol=1e-7)
    batches = (_sample("augur_batch_calls_count", model="fraud_lgbm") or 0.0) - batches_before
    assert 0 < batches <= len(requests)
    # the controller's decision and its figures are exported
    assert _sample("augur_slo_p99_seconds", model="fraud_lgbm", kind="objective") == 0.005
    predicted = _sample("augur_slo_p99_seconds", model="fraud_lgbm", kind="predicted")
    observed = _sample("augur_slo_p99_seconds", model="fraud_lgbm", kind="observed")
    assert predicted is not None and predicted > 0
    assert observed is not None and observed > 0
    window = _sample("augur_slo_batch_window_seconds", model="fraud_lgbm")
    assert window is not None and 0 <= window < 0.005
    assert 1 <= (_sample("augur_slo_batch_max_rows", model="fraud_lgbm") or 0) <= 64
    # every call answered: the pending-work gauge autoscaling reads is back to none
    assert _sample("augur_model_calls_in_flight", model="fraud_lgbm") == 0


def test_a_lone_call_of_a_model_with_an_objective_is_answered_at_once(slo_server):
    with PredictorClient(f"127.0.0.1:{slo_server.port}", timeout=5) as own:
        own.predict("fraud_lgbm", {"user_id": [3], "merchant_id": [4]}, {"amount": [1.0]})
        started = time.perf_counter()
        for _ in range(20):
            own.predict("fraud_lgbm", {"user_id": [3], "merchant_id": [4]}, {"amount": [1.0]})
        each = (time.perf_counter() - started) / 20
    assert each < 0.005  # no call waits out a window for others that are not coming


def test_a_malformed_objective_names_the_field(tmp_path):
    raw = {"kind": "lightgbm", "feature_service": "fraud", "slo": {"p99": 5}}
    with pytest.raises(RepositoryError, match=r"slo must be a mapping with p99_ms"):
        parse_spec("m", raw, tmp_path / "model.yaml")
    raw["slo"] = {"p99_ms": -1}
    with pytest.raises(RepositoryError, match=r"slo\.p99_ms must be a number"):
        parse_spec("m", raw, tmp_path / "model.yaml")
    raw["slo"] = {"p99_ms": 2.5}
    assert parse_spec("m", raw, tmp_path / "model.yaml").slo.p99_ms == 2.5
