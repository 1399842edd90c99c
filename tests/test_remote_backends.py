"""`kind: remote` models: Augur reads and assembles the features, and a real OIP server scores
them: Seldon MLServer serving the fraud LightGBM file, and another Augur. Failover on a killed
backend with no call lost, the breaker's probe bringing traffic back, no retry of a refused
request, hedging past a silent backend, and the local fallback."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client import REGISTRY

from augur.client.client import PredictorClient
from augur.modelrepo.repository import ModelRepository
from augur.modelrepo.spec import RepositoryError, parse_spec
from augur.serving.server import start
from bench.mlserver import MLServer, MLServerUnavailable
from tests.conftest import server_config

USERS = [3, 17, 42, 99999]
MERCHANTS = [1, 5, 7, 11]
AMOUNTS = [12.5, 300.0, 4.25, 80.0]
ENTITIES = {"user_id": USERS, "merchant_id": MERCHANTS}


@pytest.fixture(scope="module")
def mlserver(model_repo: Path, tmp_path_factory):
    version = ModelRepository(model_repo).resolve("fraud_lgbm")
    server = MLServer(tmp_path_factory.mktemp("mlserver"), "fraud_lgbm", version.artifact)
    try:
        server.start()
    except MLServerUnavailable as e:  # no index or no wheels here: say why
        pytest.skip(str(e))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def other_augur(fraud_repo, model_repo):
    """A second Augur, serving fraud_lgbm: a backend that speaks OIP too."""
    running = start(server_config(fraud_repo, model_repo))
    yield f"127.0.0.1:{running.port}"
    running.stop()


@pytest.fixture(scope="module")
def silent_port():
    """A loopback port that accepts connections and never answers: a hung backend."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def remote_models(model_repo: Path, mlserver, other_augur, silent_port, tmp_path_factory):
    """The trained models, and remote models beside them, each with its own backends."""
    models = tmp_path_factory.mktemp("remote_models")
    for name in ("fraud_lgbm",):
        shutil.copytree(model_repo / name, models / name)
    features = list(ModelRepository(models).resolve("fraud_lgbm").features)
    dead = f"127.0.0.1:{_closed_port()}"

    def remote(name: str, backends: list, **options) -> None:
        (models / name).mkdir()
        entry = {
            "kind": "remote",
            "feature_service": "fraud_lgbm",
            "request_features": ["amount"],
            "outputs": ["fraud_probability"],
            "batching": {"max_batch_size": 64},
            "remote": {
                "features": options.pop("features", features),
                "backends": backends,
                **options,
            },
        }
        (models / name / "model.yaml").write_text(yaml.safe_dump(entry))

    lgbm = {"address": other_augur, "model": "fraud_lgbm"}
    seldon = {"address": mlserver.address, "model": "fraud_lgbm"}
    remote("on_mlserver", [seldon])
    remote(
        "failover",
        [seldon, lgbm],
        breaker_failures=2,
        breaker_cooldown_ms=300,
    )
    remote("narrow", [lgbm, seldon], features=features[:5])
    remote("hedged", [f"127.0.0.1:{silent_port}", lgbm], hedge_after_ms=30)
    remote("down_with_fallback", [dead], fallback="fraud_lgbm")
    remote("down", [dead])
    return models


@pytest.fixture(scope="module")
def augur(fraud_repo, remote_models):
    running = start(server_config(fraud_repo, remote_models))
    with PredictorClient(f"127.0.0.1:{running.port}") as client:
        client.wait_ready(30)
        yield client
    running.stop()


@pytest.fixture(scope="module")
def local_scores(augur):
    return augur.predict("fraud_lgbm", ENTITIES, {"amount": AMOUNTS}).scores


def _calls(model: str, backend: str, outcome: str) -> float:
    labels = {"model": model, "backend": backend, "outcome": outcome}
    return REGISTRY.get_sample_value("augur_remote_calls_total", labels) or 0.0


def test_a_remote_model_on_mlserver_scores_as_the_local_model(augur, local_scores, mlserver):
    before = _calls("on_mlserver", mlserver.address, "ok")
    got = augur.predict("on_mlserver", ENTITIES, {"amount": AMOUNTS})
    assert got.version == "remote"
    np.testing.assert_allclose(got.scores, local_scores, rtol=1e-5)
    assert _calls("on_mlserver", mlserver.address, "ok") == before + 1


def test_a_refused_request_is_not_retried_on_the_next_backend(augur, mlserver):
    with pytest.raises(grpc.RpcError) as e:
        augur.predict("narrow", ENTITIES, {"amount": AMOUNTS})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs.input-0" in e.value.details()
    assert _calls("narrow", mlserver.address, "ok") == 0


def test_a_hung_backend_is_hedged_on_the_next(augur, local_scores, other_augur, silent_port):
    began = time.perf_counter()
    got = augur.predict("hedged", ENTITIES, {"amount": AMOUNTS}, timeout=5)
    took = time.perf_counter() - began
    np.testing.assert_allclose(got.scores, local_scores, rtol=1e-6)
    assert took < 0.9  # the silent backend's attempt alone would take 2.5 s (half the deadline)
    assert _calls("hedged", f"127.0.0.1:{silent_port}", "hedged") == 0
    assert _calls("hedged", other_augur, "hedged") >= 1


def test_the_fallback_answers_when_no_backend_can(augur, local_scores):
    before = (
        REGISTRY.get_sample_value("augur_remote_fallbacks_total", {"model": "down_with_fallback"})
        or 0
    )
    got = augur.predict("down_with_fallback", ENTITIES, {"amount": AMOUNTS})
    np.testing.assert_allclose(got.scores, local_scores, rtol=1e-6)
    after = REGISTRY.get_sample_value(
        "augur_remote_fallbacks_total", {"model": "down_with_fallback"}
    )
    assert after == before + 1


def test_with_no_backend_and_no_fallback_the_call_is_unavailable_naming_each(augur):
    with pytest.raises(grpc.RpcError) as e:
        augur.predict("down", ENTITIES, {"amount": AMOUNTS})
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no backend answered" in e.value.details()
    assert "remote.fallback" in e.value.details()


def test_a_remote_model_needs_features_and_backends(tmp_path):
    base = {"kind": "remote", "feature_service": "fraud_lgbm"}
    with pytest.raises(RepositoryError, match=r"needs `remote`"):
        parse_spec("r", base, tmp_path / "model.yaml")
    with pytest.raises(RepositoryError, match=r"remote\.backends must name"):
        parse_spec("r", {**base, "remote": {"features": ["a"]}}, tmp_path / "model.yaml")
    with pytest.raises(RepositoryError, match=r"remote\.hedge_after is not an option"):
        parse_spec(
            "r",
            {**base, "remote": {"features": ["a"], "backends": ["h:1"], "hedge_after": 5}},
            tmp_path / "model.yaml",
        )


class _Load:
    """Closed-loop Predict calls from a few threads until stopped: each call's outcome."""

    def __init__(self, client: PredictorClient, model: str, threads: int = 4) -> None:
        self.client, self.model = client, model
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.predict(self.model, ENTITIES, {"amount": AMOUNTS}, timeout=2)
                with self._lock:
                    self.ok += 1
            except grpc.RpcError as e:
                with self._lock:
                    self.failed.append(f"{e.code().name}: {e.details()}")
            time.sleep(0.002)


def _wait_for(condition, timeout_s: float) -> bool:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_killing_the_first_backend_under_load_loses_no_call_and_restoring_it_brings_traffic_back(
    augur, mlserver, other_augur
):
    first, second = mlserver.address, other_augur
    with _Load(augur, "failover") as load:
        assert _wait_for(lambda: _calls("failover", first, "ok") >= 20, 20)
        assert _calls("failover", second, "ok") == 0  # all on the first while it is up
        mlserver.kill()
        killed_at = load.ok
        assert _wait_for(lambda: load.ok >= killed_at + 100, 30)
        assert _calls("failover", second, "ok") > 0
        on_second = _calls("failover", second, "ok")
        mlserver.start()  # the same ports
        restored_at = time.monotonic()
        served = _calls("failover", first, "ok")
        assert _wait_for(lambda: _calls("failover", first, "ok") > served + 20, 30)
        back_s = time.monotonic() - restored_at
    assert load.failed == []
    assert load.ok > killed_at + 100
    print(  # the kill report (pytest -s shows it)
        f"\nfailover: {load.ok} calls answered, {len(load.failed)} lost; {killed_at} before the "
        f"kill; {on_second:.0f} batches on the second backend while the first was down; "
        f"traffic back on the first {back_s:.2f}s after it answered ready again"
    )


def test_oip_callers_reach_a_remote_model_with_features_or_entity_keys(
    augur, fraud_repo, remote_models, local_scores
):
    from augur.api.oip import open_inference_pb2 as oip
    from augur.api.oip import open_inference_pb2_grpc as oip_grpc

    features = augur.predict("fraud_lgbm", ENTITIES, {"amount": AMOUNTS}, return_features=True)
    batch = np.ascontiguousarray(features.features, np.float32)
    tensor = oip.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP32", shape=list(batch.shape)
    )
    given = oip.ModelInferRequest(
        model_name="on_mlserver", inputs=[tensor], raw_input_contents=[batch.tobytes()]
    )
    keys = oip.ModelInferRequest(model_name="on_mlserver")
    for name, values, datatype in (
        ("user_id", USERS, "INT64"),
        ("merchant_id", MERCHANTS, "INT64"),
        ("amount", AMOUNTS, "FP64"),
    ):
        keys.inputs.add(name=name, datatype=datatype, shape=[len(values)])
        field = "int64_contents" if datatype == "INT64" else "fp64_contents"
        getattr(keys.inputs[-1].contents, field).extend(values)
    stub = oip_grpc.GRPCInferenceServiceStub(augur.channel)
    for request in (given, keys):
        answer = stub.ModelInfer(request, timeout=5)
        assert answer.model_version == "remote"
        raw = answer.raw_output_contents
        scores = (
            np.frombuffer(raw[0], np.float32)
            if raw
            else np.array(answer.outputs[0].contents.fp32_contents, np.float32)
        )
        np.testing.assert_allclose(scores, local_scores[:, 0], rtol=1e-5)
