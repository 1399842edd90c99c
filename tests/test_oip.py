"""The Open Inference Protocol on Augur's port, driven by Triton's own client (tritonclient from
PyPI): liveness, readiness, metadata, ModelInfer with features given (typed and raw contents)
and with entity keys (feature-aware), the status codes of errors, statistics and the
repository extension."""

from __future__ import annotations

import numpy as np
import pytest

grpcclient = pytest.importorskip(
    "tritonclient.grpc", reason="tritonclient is in the `oip` extra: pip install -e '.[oip]'"
)
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.conftest import server_config  # noqa: E402

MODEL = "fraud_lgbm"
USERS = [3, 17, 42, 99999]  # the last is no user: its features are the defaults
MERCHANTS = [1, 5, 7, 11]
AMOUNTS = [12.5, 300.0, 4.25, 80.0]


@pytest.fixture(scope="module")
def triton(server):
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}") as c:
        yield c


@pytest.fixture(scope="module")
def predicted(client):
    """What augur.v1 Predict answers for the rows, with the features it assembled."""
    return client.predict(
        MODEL,
        {"user_id": USERS, "merchant_id": MERCHANTS},
        {"amount": AMOUNTS},
        return_features=True,
    )


@pytest.fixture(scope="module")
def triton_stub(server):
    """tritonclient's own generated stub: its InferInput always sends raw contents, and
    typed contents are the protocol's other encoding."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}


def _input(name: str, values: np.ndarray, datatype: str):
    tensor = grpcclient.InferInput(name, list(values.shape), datatype)
    tensor.set_data_from_numpy(values)  # raw_input_contents
    return tensor


def _infer(triton, stub, raw: bool, inputs: list, **kwargs) -> tuple[np.ndarray, str]:
    """ModelInfer with raw contents (tritonclient's InferInput) or typed contents (its
    generated messages): the scores (answered in the encoding asked in) and the version."""
    if raw:
        result = triton.infer(MODEL, inputs, **kwargs)
        answer = result.get_response()
        assert len(answer.raw_output_contents) == 1
        return result.as_numpy("fraud_probability"), answer.model_version
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(
        model_name=MODEL, model_version=kwargs.get("model_version", "")
    )
    for tensor in inputs:
        values = tensor._get_content()
        wire = tensor._get_tensor()
        typed = request.inputs.add(name=wire.name, datatype=wire.datatype, shape=wire.shape)
        dtype = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8"}[wire.datatype]
        getattr(typed.contents, _CONTENTS[wire.datatype]).extend(
            np.frombuffer(values, dtype).tolist()
        )
    answer = stub.ModelInfer(request)
    assert not answer.raw_output_contents  # tritonclient's InferResult reads raw ones only
    (output,) = answer.outputs
    assert (output.name, output.datatype) == ("fraud_probability", "FP32")
    scores = np.array(output.contents.fp32_contents, np.float32).reshape(list(output.shape))
    return scores, answer.model_version


def _code(excinfo) -> str:
    return excinfo.value.status()


def test_server_and_model_answer_live_and_ready(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready(MODEL)
    assert triton.is_model_ready(MODEL, "v1")
    assert triton.is_model_ready(MODEL, "stable")
    assert not triton.is_model_ready("no_such_model")
    assert not triton.is_model_ready(MODEL, "v99")


def test_server_metadata_names_augur_and_its_extensions(triton):
    meta = triton.get_server_metadata()
    assert meta.name == "augur"
    assert {"model_repository", "statistics"} <= set(meta.extensions)


def test_model_metadata_lists_the_inputs_in_feature_order_and_the_outputs(triton, predicted):
    meta = triton.get_model_metadata(MODEL)
    assert meta.name == MODEL
    assert "v1" in meta.versions
    assert [t.name for t in meta.inputs] == list(predicted.feature_names)
    assert all(list(t.shape) == [-1] for t in meta.inputs)
    assert {t.datatype for t in meta.inputs} <= {"FP32", "FP64", "INT64", "BOOL"}
    assert [(t.name, t.datatype) for t in meta.outputs] == [("fraud_probability", "FP32")]


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_infer_with_the_features_given_scores_as_predict_does(triton, triton_stub, predicted, raw):
    batch = predicted.features.astype(np.float32)
    scores, version = _infer(triton, triton_stub, raw, [_input("features", batch, "FP32")])
    assert scores.shape == (len(USERS),)
    np.testing.assert_allclose(scores, predicted.scores[:, 0], rtol=1e-6)
    assert version == "v1"


def test_infer_takes_a_tensor_per_feature_in_fp64(triton, triton_stub, predicted):
    inputs = [
        _input(name, predicted.features[:, i].astype(np.float64), "FP64")
        for i, name in enumerate(predicted.feature_names)
    ]
    scores, _ = _infer(triton, triton_stub, False, inputs)
    np.testing.assert_allclose(scores, predicted.scores[:, 0], rtol=1e-6)


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_infer_with_entity_keys_reads_the_features_and_scores(triton, triton_stub, predicted, raw):
    inputs = [
        _input("user_id", np.array(USERS, np.int64), "INT64"),
        _input("merchant_id", np.array(MERCHANTS, np.int64), "INT64"),
        _input("amount", np.array(AMOUNTS, np.float32), "FP32"),
    ]
    scores, version = _infer(triton, triton_stub, raw, inputs, model_version="stable")
    np.testing.assert_allclose(scores, predicted.scores[:, 0], rtol=1e-6)
    assert version == "v1"


def test_an_unknown_model_is_not_found(triton):
    with pytest.raises(InferenceServerException) as e:
        triton.infer("no_such_model", [_input("x", np.zeros((1, 1), np.float32), "FP32")])
    assert _code(e) == "StatusCode.NOT_FOUND"
    assert "fraud_lgbm" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        triton.get_model_metadata("no_such_model")
    assert _code(e) == "StatusCode.NOT_FOUND"


def test_an_unknown_version_is_not_found(triton, predicted):
    batch = predicted.features.astype(np.float32)
    with pytest.raises(InferenceServerException) as e:
        triton.infer(MODEL, [_input("features", batch, "FP32")], model_version="v99")
    assert _code(e) == "StatusCode.NOT_FOUND"
    assert "v99" in e.value.message()


def test_a_missing_request_feature_is_invalid_and_named(triton):
    inputs = [
        _input("user_id", np.array(USERS, np.int64), "INT64"),
        _input("merchant_id", np.array(MERCHANTS, np.int64), "INT64"),
    ]
    with pytest.raises(InferenceServerException) as e:
        triton.infer(MODEL, inputs)
    assert _code(e) == "StatusCode.INVALID_ARGUMENT"
    assert "inputs.amount: missing" in e.value.message()


def test_a_wrongly_typed_or_shaped_input_is_invalid_and_named(triton, predicted):
    inputs = [
        _input("user_id", np.array([b"3"], np.object_), "BYTES"),
        _input("merchant_id", np.array([1], np.int64), "INT64"),
        _input("amount", np.array([1.0], np.float32), "FP32"),
    ]
    with pytest.raises(InferenceServerException) as e:
        triton.infer(MODEL, inputs)
    assert _code(e) == "StatusCode.INVALID_ARGUMENT"
    assert "inputs.user_id" in e.value.message()
    narrow = predicted.features[:, :3].astype(np.float32)
    with pytest.raises(InferenceServerException) as e:
        triton.infer(MODEL, [_input("features", narrow, "FP32")])
    assert _code(e) == "StatusCode.INVALID_ARGUMENT"
    assert "inputs.features" in e.value.message()


def test_asking_for_an_output_the_model_lacks_is_invalid(triton, predicted):
    batch = predicted.features.astype(np.float32)
    with pytest.raises(InferenceServerException) as e:
        triton.infer(
            MODEL,
            [_input("features", batch, "FP32")],
            outputs=[grpcclient.InferRequestedOutput("logits")],
        )
    assert _code(e) == "StatusCode.INVALID_ARGUMENT"
    assert "outputs.logits" in e.value.message()


def test_statistics_count_the_model_calls(triton, predicted):
    before = triton.get_inference_statistics(MODEL).model_stats[0]
    triton.infer(MODEL, [_input("features", predicted.features.astype(np.float32), "FP32")])
    after = triton.get_inference_statistics(MODEL).model_stats[0]
    assert after.name == MODEL and after.version == "v1"
    assert after.inference_count - before.inference_count == len(USERS)
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.compute_infer.ns > 0


def test_the_repository_extension_unloads_and_loads_a_model(servers, fraud_repo, model_repo):
    running = servers.start(server_config(fraud_repo, model_repo))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{running.port}") as c:
        index = {m.name: m for m in c.get_model_repository_index().models}
        assert index[MODEL].state == "READY"
        c.unload_model(MODEL)
        assert not c.is_model_ready(MODEL)
        index = {m.name: m for m in c.get_model_repository_index().models}
        assert (index[MODEL].state, index[MODEL].reason) == ("UNAVAILABLE", "unloaded")
        c.load_model(MODEL)
        assert c.is_model_ready(MODEL)
        with pytest.raises(InferenceServerException) as e:
            c.load_model("no_such_model")
        assert _code(e) == "StatusCode.NOT_FOUND"
