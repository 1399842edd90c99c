"""Prometheus metrics of the prediction service, served on their own port.

Labels stay bounded: model names come from the served set ("unknown" otherwise), versions
from the repository, codes from gRPC's fixed set.
"""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from augur.serving.metric_children import histogram_child, value_child

# fmt: off
_LATENCY = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
# fmt: on

REQUESTS = Counter(
    "augur_requests_total",
    "Predict calls by model, version and status code",
    ["method", "model", "version", "code"],
)
LATENCY = Histogram(
    "augur_request_latency_seconds",
    "Server-side latency of a call",
    ["method", "model", "version", "code"],
    buckets=_LATENCY,
)
STAGE = Histogram(
    "augur_stage_latency_seconds",
    "Latency of one stage of a call: queue (waiting for its dynamic batch), features, "
    "assemble, inference",
    ["model", "stage"],
    buckets=_LATENCY,
)
EXPERIMENT_ROWS = Counter(
    "augur_experiment_rows_total",
    "Rows scored by each arm of a model's A/B experiment",
    ["model", "experiment", "arm"],
)
EXPERIMENT_LATENCY = Histogram(
    "augur_experiment_model_latency_seconds",
    "Model-call latency of each arm of an A/B experiment",
    ["model", "experiment", "arm"],
    buckets=_LATENCY,
)
EXPERIMENT_SCORE = Histogram(
    "augur_experiment_score",
    "First output of each arm of an A/B experiment (up to 8 rows of each call's share)",
    ["model", "experiment", "arm"],
    buckets=tuple(i / 20 for i in range(1, 20)),
)
ROWS = Counter("augur_rows_total", "Entity rows scored or read", ["method", "model"])
REQUESTS_UNDECODABLE = Counter(
    "augur_requests_undecodable_total",
    "augur.v1 calls whose request bytes are not the method's message (INVALID_ARGUMENT)",
    ["method"],
)
FEATURES_MISSING = Counter(
    "augur_features_missing_total",
    "Feature values absent from the online store (default or NaN served)",
    ["model"],
)
FEATURES_STALE = Counter(
    "augur_features_stale_total",
    "Feature values older than their view's TTL (treated as missing)",
    ["model"],
)
AGE_SAMPLES_PER_S = 100  # calls a second whose feature ages are observed, per service
FEATURE_AGE = Histogram(
    "augur_feature_age_seconds",
    "Now minus the event time of the feature view row that was served (sampled: at most "
    f"{AGE_SAMPLES_PER_S} calls a second per feature service)",
    ["feature_view"],
    buckets=(
        1,
        10,
        60,
        300,
        900,
        3600,
        4 * 3600,
        12 * 3600,
        86400,
        2 * 86400,
        7 * 86400,
        30 * 86400,
    ),
)
MODEL_LOADS = Counter(
    "augur_model_loads_total", "Model load attempts by outcome", ["model", "version", "outcome"]
)
MODELS_SERVING = Gauge(
    "augur_models_serving", "Models loaded and taking traffic", multiprocess_mode="max"
)
MODEL_COMPILED = Gauge(
    "augur_model_compiled",
    "1 where a compile: auto LightGBM version scores with lleaves' compiled forest in every "
    "process, 0 while on LightGBM's own predictor (it compiles once the model is busy)",
    ["model", "version"],
    multiprocess_mode="livemin",
)


class ModelMetrics:
    """One model's label children, bound once, so that scoring a call looks up no labels."""

    def __init__(self, model: str):
        histogram, count = histogram_child, value_child  # updated in one step each
        self.queue = histogram(STAGE.labels(model, "queue"))  # batching on only
        self.features = histogram(STAGE.labels(model, "features"))
        self.assemble = histogram(STAGE.labels(model, "assemble"))
        self.inference = histogram(STAGE.labels(model, "inference"))
        self.rows = count(ROWS.labels("Predict", model))
        self.missing = count(FEATURES_MISSING.labels(model))
        self.stale = count(FEATURES_STALE.labels(model))
        self.late = count(DEADLINE_DROPPED.labels(model, "inference"))
        self.shed = count(SHED.labels(model))
        self.degraded = count(DEGRADED.labels(model))
        self.batch_rows = histogram(BATCH_ROWS.labels(model))
        self.batch_calls = histogram(BATCH_CALLS.labels(model))
        self.batch_queue = count(BATCH_QUEUE.labels(model))
        self.in_flight = count(IN_FLIGHT.labels(model))
        self.rows_in_flight = count(ROWS_IN_FLIGHT.labels(model))

    def scored(
        self,
        began: float,
        read: float,
        assembled: float,
        done: float,
        rows,
        plan,
        ages: FeatureAges,
    ) -> None:
        """A scored set of rows (augur.features.reader.FeatureRows, read by `plan`): its stage
        latencies from perf_counter marks, the rows and the feature values among them missing
        or stale, and (sampled) the age of the oldest row served per view."""
        self.features.observe(read - began)
        self.assemble.observe(assembled - read)
        self.inference.observe(done - assembled)
        self.rows.inc(len(rows.values))
        # the C assembly's totals where it kept them: in the server a numpy reduction's
        # code is cold on every call, some 10-20 us where a loop measures 1
        missing, stale = rows.missing_and_stale()
        if missing:
            self.missing.inc(missing)
        if stale:
            self.stale.inc(stale)
        ages.sample(plan.service, plan.views, rows.event_ts)


class FeatureAges:
    """Samples the age of the oldest row served per feature view: one observation per view
    and call keeps this off the per-row path, and the oldest value is what freshness alerts
    care about. Observed for at most AGE_SAMPLES_PER_S calls a second per feature service: an
    observation costs about 1.5 us and a wide service has dozens of views, while a freshness
    quantile needs samples, not every call."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}  # feature service -> when its next call is observed
        # feature service -> (its views, their children in order): bound once per plan
        self._views: dict[str, tuple[object, list]] = {}

    def sample(self, service: str, views, event_ts: np.ndarray) -> None:
        """`views`: the plan's, in the order of `event_ts`'s columns (rows x views event
        times, NaN: no row)."""
        now = time.time()
        if now < self._due.get(service, 0.0):
            return
        self._due[service] = now + 1 / AGE_SAMPLES_PER_S
        bound = self._views.get(service)
        if bound is None or bound[0] is not views:
            bound = self._views[service] = (views, [feature_age(view.name) for view in views])
        children = bound[1]
        # fmin skips NaN (no row) unless the whole column is NaN
        oldest = np.fmin.reduce(event_ts, axis=0).tolist()
        for child, event_time in zip(children, oldest, strict=True):
            if event_time == event_time:  # not NaN
                child.observe(now - event_time)


_models: dict[str, ModelMetrics] = {}
_calls: dict[tuple[str, str, str, str], tuple] = {}
_views: dict[str, object] = {}


def for_model(model: str) -> ModelMetrics:
    bound = _models.get(model)
    if bound is None:
        bound = _models.setdefault(model, ModelMetrics(model))
    return bound


def call_outcome(method: str, model: str, version: str, code: str) -> tuple:
    """(requests counter, latency histogram) children for one call's labels."""
    key = (method, model, version, code)
    bound = _calls.get(key)
    if bound is None:
        bound = _calls.setdefault(
            key, (value_child(REQUESTS.labels(*key)), histogram_child(LATENCY.labels(*key)))
        )
    return bound


def feature_age(view: str):
    bound = _views.get(view)
    if bound is None:
        bound = _views.setdefault(view, histogram_child(FEATURE_AGE.labels(view)))
    return bound


def start(host: str, port: int) -> None:
    if port:
        start_http_server(port, addr=host)


SHADOW_DIFF = Histogram(
    "augur_shadow_score_diff",
    "Absolute difference between a shadow version's score and the served score, per row",
    ["model", "version"],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
SHADOW_ROWS = Counter(
    "augur_shadow_rows_total",
    "Rows scored by a shadow version, by agreement with the served score at its threshold",
    ["model", "version", "outcome"],
)
SHADOW_ERRORS = Counter(
    "augur_shadow_errors_total",
    "Shadow scoring failures (never seen by callers)",
    ["model", "version"],
)
SHADOW_DROPPED = Counter(
    "augur_shadow_dropped_total",
    "Traffic copies dropped because the shadow queue was full",
    ["model"],
)
FEATURE_LOG_ROWS = Counter(
    "augur_feature_log_rows_total",
    "Served rows sampled for the feature log (model.yaml `logging`), by outcome: written, "
    "or dropped (the writer's queue full, or the write failed)",
    ["model", "outcome"],
)
CANARY_FALLBACKS = Counter(
    "augur_canary_fallbacks_total",
    "Canary calls that failed and were answered by the stable version instead",
    ["model", "version"],
)
ROLLBACKS = Counter(
    "augur_rollbacks_total",
    "Automatic canary rollbacks by guardrail",
    ["model", "version", "guardrail"],
)
SWAPS = Counter(
    "augur_model_swaps_total",
    "Routing changes applied (new stable, canary or shadow)",
    ["model"],
)
DEADLINE_DROPPED = Counter(
    "augur_deadline_dropped_total",
    "Calls whose deadline passed before a stage, dropped instead of computed for nobody",
    ["model", "stage"],
)
SHED = Counter(
    "augur_shed_total", "Calls refused at once because a model's queue was full", ["model"]
)
DEGRADED = Counter(
    "augur_degraded_total",
    "Calls answered on default feature values because the online store failed",
    ["model"],
)
STORE_ERRORS = Counter(
    "augur_feature_store_errors_total", "Failed online store reads, by kind", ["kind"]
)
BREAKER_OPEN = Gauge(
    "augur_feature_store_circuit_open",
    "1 while the circuit to Redis is open",
    multiprocess_mode="max",
)
ROW_CACHE = Counter(
    "augur_row_cache_lookups_total",
    "Entity rows looked up in the process-level row cache (when on), by outcome",
    ["outcome"],
)
BATCH_ROWS = Histogram(
    "augur_batch_rows",
    "Rows per dynamic batch (one feature read and one model call)",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
BATCH_QUEUE = Gauge(
    "augur_batch_queue_depth",
    "Calls of a model left waiting for a dynamic batch when its latest batch closed",
    ["model"],
    multiprocess_mode="livesum",
)
BATCH_CALLS = Histogram(
    "augur_batch_calls",
    "Calls merged into one dynamic batch",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
SLO_WINDOW = Gauge(
    "augur_slo_batch_window_seconds",
    "The batch window an SLO-tuned model's batcher chose (model.yaml slo)",
    ["model"],
    multiprocess_mode="max",
)
SLO_BATCH_ROWS = Gauge(
    "augur_slo_batch_max_rows",
    "The batch cap an SLO-tuned model's batcher chose (model.yaml slo)",
    ["model"],
    multiprocess_mode="max",
)
SLO_P99 = Gauge(
    "augur_slo_p99_seconds",
    "An SLO-tuned model's p99 of queue wait plus batch run: as its controller predicts it "
    "for the chosen window and cap (kind=predicted), as measured over its recent calls "
    "(kind=observed), and its objective (kind=objective)",
    ["model", "kind"],
    multiprocess_mode="max",
)
# The autoscaling signal (docs/fleet.md, infra/k8s/hpa.yaml, infra/components/keda): a call
# counts from the moment its model's lane takes it (queued for admission or for a batch, or
# computing) until it is answered. Summed over a pod's processes (livesum).
IN_FLIGHT = Gauge(
    "augur_model_calls_in_flight",
    "Calls of a model in this server, queued or computing, not yet answered",
    ["model"],
    multiprocess_mode="livesum",
)
ROWS_IN_FLIGHT = Gauge(
    "augur_model_rows_in_flight",
    "Entity rows of a model's decoded calls in this server, queued or computing",
    ["model"],
    multiprocess_mode="livesum",
)

REMOTE_CALLS = Counter(
    "augur_remote_calls_total",
    "Attempts to score a remote model on a backend, by outcome (ok, a gRPC code's name, "
    "circuit_open: skipped, hedged: a second attempt started, cancelled: lost to another)",
    ["model", "backend", "outcome"],
)
REMOTE_LATENCY = Histogram(
    "augur_remote_latency_seconds",
    "Latency of a remote backend's answers",
    ["model", "backend"],
    buckets=_LATENCY,
)
REMOTE_FALLBACKS = Counter(
    "augur_remote_fallbacks_total",
    "Remote calls answered by the model's local fallback because no backend could",
    ["model"],
)


class SloGauges:
    """One SLO-tuned model's gauges, bound once."""

    def __init__(self, model: str) -> None:
        self.window = SLO_WINDOW.labels(model)
        self.rows = SLO_BATCH_ROWS.labels(model)
        self.predicted = SLO_P99.labels(model, "predicted")
        self.observed = SLO_P99.labels(model, "observed")
        self.objective = SLO_P99.labels(model, "objective")

    def show(self, controller) -> None:
        """The decision of an augur.serving.slo.SloController."""
        self.window.set(controller.window_s)
        self.rows.set(controller.max_rows)
        self.predicted.set(controller.predicted_p99_s)
        self.observed.set(controller.observed_p99_s)
        self.objective.set(controller.objective_s)


def slo_gauges(model: str) -> SloGauges:
    return SloGauges(model)


TENANT_SHED = Counter(
    "augur_tenant_shed_total",
    "Calls of a tenant refused by a model's admission (over its share, past its deadline, or "
    "shed for higher priority); tenants are augur.yaml's, so the labels stay bounded",
    ["model", "tenant"],
)
