"""OpenTelemetry tracing of Predict: a server span per call, continuing the caller's W3C trace
context (`traceparent` metadata), with a child span per stage - admission, queue (waiting
for its batch), feature read, assemble, model call - exported over OTLP. Not metrics. (No
remote-backend span: this server has no remote model kind yet.)

Off by default (tracing.enabled), and then free: the servicer holds None and checks it once
per call; nothing else runs, nothing is allocated. On, the stages are not wrapped as they run:
each stage already takes perf_counter marks for its metrics, and the spans are built from
those marks once the call is answered, so a traced call runs the same code as any other.
Spans are sampled by trace id (tracing.sample_ratio), following the caller's decision where
it sent one. The OpenTelemetry packages are the `otel` extra, imported only when on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from augur.config import ConfigError, TracingConfig

_NS = 1_000_000_000


class StageMarks:
    """What one traced call's stages record (perf_counter seconds), for its spans."""

    __slots__ = ("admitted", "queued", "scored", "tenant")

    def __init__(self) -> None:
        self.admitted = 0.0  # left admission
        self.queued = 0.0  # joined its batch's queue (0: scored alone)
        self.scored: Any = None  # augur.serving.scoring.Scored: its read/assemble/model marks
        self.tenant = ""


class Tracing:
    """Builds the spans of traced calls; `predict` runs one call under its span."""

    def __init__(self, provider: Any, sample_ratio: float) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.sample_ratio = sample_ratio
        self._tracer = provider.get_tracer("augur.serving")
        self._propagator = TraceContextTextMapPropagator()
        self._server, self._error, self._status = SpanKind.SERVER, StatusCode.ERROR, Status

    def predict(
        self,
        handle: Callable[[Any, Any, StageMarks], Any],
        request: Any,
        context: Any,
    ) -> Any:
        """Run `handle(request, context, marks)` and record its spans."""
        started = time.perf_counter()
        marks = StageMarks()
        failure: BaseException | None = None
        try:
            return handle(request, context, marks)
        except BaseException as e:
            failure = e
            raise
        finally:
            self._record(request, context, started, time.perf_counter(), marks, failure)

    def _record(self, request, context, started, ended, marks: StageMarks, failure) -> None:
        carrier = _carrier(context.invocation_metadata())
        parent = self._propagator.extract(carrier)
        offset = time.time_ns() - int(time.perf_counter() * _NS)  # perf_counter -> epoch ns

        def ns(t: float) -> int:
            return int(t * _NS) + offset

        span = self._tracer.start_span(
            "augur.Predict",
            context=parent,
            kind=self._server,
            start_time=ns(started),
            attributes={"augur.model": request.model, "rpc.system": "grpc"},
        )
        if not span.is_recording():  # not sampled
            return
        from opentelemetry.trace import set_span_in_context

        inside = set_span_in_context(span)
        scored = marks.scored
        stages = []
        if marks.admitted:
            stages.append(("admission", started, marks.admitted))
        if scored is not None:
            if marks.queued:
                stages.append(("queue", marks.queued, scored.began))
            stages += [
                ("feature_read", scored.began, scored.read),
                ("assemble", scored.read, scored.assembled),
                ("model_call", scored.assembled, scored.done),
            ]
            span.set_attribute("augur.version", ",".join(scored.versions))
            span.set_attribute("augur.rows", len(scored.scores))
        if marks.tenant:
            span.set_attribute("augur.tenant", marks.tenant)
        for name, began, done in stages:
            child = self._tracer.start_span(name, context=inside, start_time=ns(began))
            if scored is not None and name != "admission" and name != "queue":
                child.set_attribute("augur.batch_rows", scored.batch_rows)
            child.end(end_time=ns(done))
        if failure is not None:
            span.set_status(self._status(self._error, _describe(failure, context)))
        span.end(end_time=ns(ended))

    def shutdown(self) -> None:
        """Export what is buffered, then stop."""
        self.provider.shutdown()


def _carrier(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    return {
        k: v for k, v in (metadata or ()) if k in ("traceparent", "tracestate") and type(v) is str
    }


def _describe(failure: BaseException, context: Any) -> str:
    code = getattr(context, "code", lambda: None)()
    return f"{code.name if code is not None else type(failure).__name__}: {failure}"


def from_config(config: TracingConfig, exporter: Any = None) -> Tracing | None:
    """The server's tracing, or None when tracing.enabled is off; `exporter`: where spans go
    (default: OTLP over gRPC to tracing.endpoint), each span handed over as it ends when
    given (a test's in-memory exporter), else batched on a thread of the SDK's."""
    if not config.enabled:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ConfigError(
            "tracing.enabled needs the OpenTelemetry SDK: pip install 'augur[otel]'"
        ) from None
    sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
    provider = TracerProvider(
        sampler=sampler, resource=Resource.create({"service.name": config.service_name})
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=config.endpoint, insecure=config.insecure)
        provider.add_span_processor(BatchSpanProcessor(otlp))
    return Tracing(provider, config.sample_ratio)
