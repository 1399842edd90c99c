"""OpenTelemetry tracing of Predict on a real server, spans caught by the SDK's in-memory
exporter: one call's span tree continues the caller's W3C trace and holds a span per stage;
a failed call's span says so; the sample ratio holds back traces the caller left undecided."""

import shutil

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.client.entities import encode_entities
from augur.config import ConfigError, TracingConfig
from augur.serving.tracing import from_config
from tests.conftest import server_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def _request(model: str = "fraud_lgbm") -> pb.PredictRequest:
    return pb.PredictRequest(
        model=model,
        entities=encode_entities({"user_id": [3], "merchant_id": [4]}),
        request_features={"amount": pb.DoubleList(values=[12.5])},
    )


@pytest.fixture(scope="module")
def traced(fraud_repo, model_repo, tmp_path_factory):
    """A server tracing every call, fraud_lgbm batching (so a call has a queue stage)."""
    from augur.serving.server import start

    models = tmp_path_factory.mktemp("traced") / "models"
    shutil.copytree(model_repo, models)
    spec = models / "fraud_lgbm" / "model.yaml"
    spec.write_text(spec.read_text() + "batching: {max_batch_size: 8, max_queue_delay_us: 500}\n")
    config = server_config(fraud_repo, models)
    config.tracing = TracingConfig(enabled=True, sample_ratio=0.0)  # only callers' decisions
    exporter = InMemorySpanExporter()
    running = start(config, span_exporter=exporter)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield pb_grpc.PredictorStub(channel), exporter
    channel.close()
    running.stop()


def test_one_predict_makes_a_span_per_stage_under_the_callers_trace(traced):
    stub, exporter = traced
    exporter.clear()
    stub.Predict(_request(), timeout=10, metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT}-01")])
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.name == "augur.Predict")
    assert root.kind == SpanKind.SERVER
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT  # the caller's span is its parent
    assert root.attributes["augur.model"] == "fraud_lgbm"
    assert root.attributes["augur.rows"] == 1
    children = {s.name: s for s in spans if s.parent is not None and s is not root}
    assert set(children) == {"admission", "queue", "feature_read", "assemble", "model_call"}
    for child in children.values():
        assert child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    order = ["admission", "queue", "feature_read", "assemble", "model_call"]
    starts = [children[name].start_time for name in order]
    assert starts == sorted(starts)  # the stages follow one another
    assert children["model_call"].attributes["augur.batch_rows"] >= 1


def test_a_failed_predict_has_an_error_span(traced):
    stub, exporter = traced
    exporter.clear()
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(
            _request("no_such_model"),
            timeout=10,
            metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT}-01")],
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    (root,) = exporter.get_finished_spans()
    assert root.status.status_code == StatusCode.ERROR
    assert "NOT_FOUND" in root.status.description


def test_calls_the_caller_did_not_sample_leave_no_spans(traced):
    stub, exporter = traced
    exporter.clear()
    stub.Predict(_request(), timeout=10)  # no trace context: sample_ratio 0 keeps none
    stub.Predict(_request(), timeout=10, metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT}-00")])
    assert exporter.get_finished_spans() == ()


def test_tracing_is_off_unless_enabled_and_checks_its_ratio():
    assert from_config(TracingConfig()) is None
    with pytest.raises(ConfigError, match=r"tracing\.sample_ratio"):
        TracingConfig(enabled=True, sample_ratio=1.5)
