"""The OIP statistics extension's numbers, read from Augur's Prometheus metrics (this
process's): calls by outcome, time queued, reading and assembling features, inferring. Not
a second set of counters: metrics.py is the one record."""

from __future__ import annotations

from augur.api.oip import open_inference_pb2 as oip
from augur.serving import metrics

_METHODS = ("Predict", "ModelInfer")


def model_statistics(name: str, version: str) -> oip.ModelStatistics:
    """One model's statistics; calls are those answered by `version` alone."""
    success, fail = _calls(name, version)
    queue = _stage(name, ("queue",))
    compute_input = _stage(name, ("features", "assemble"))
    compute_infer = _stage(name, ("inference",))
    rows = sum(
        s.value
        for s in _samples(metrics.ROWS, "augur_rows_total")
        if s.labels["model"] == name and s.labels["method"] in _METHODS
    )
    return oip.ModelStatistics(
        name=name,
        version=version,
        inference_count=int(rows),
        execution_count=compute_infer.count,
        inference_stats=oip.InferStatistics(
            success=success,
            fail=fail,
            queue=queue,
            compute_input=compute_input,
            compute_infer=compute_infer,
        ),
    )


def _calls(name: str, version: str) -> tuple[oip.StatisticDuration, oip.StatisticDuration]:
    counts = {True: [0.0, 0.0], False: [0.0, 0.0]}
    for s in _samples(metrics.LATENCY, "augur_request_latency_seconds_count", "_sum"):
        labels = s.labels
        if labels["model"] != name or labels["method"] not in _METHODS:
            continue
        if labels["version"] not in (version, ""):
            continue
        ok = labels["code"] == "OK"
        counts[ok][0 if s.name.endswith("_count") else 1] += s.value
    return _duration(*counts[True]), _duration(*counts[False])


def _stage(name: str, stages: tuple[str, ...]) -> oip.StatisticDuration:
    count = seconds = 0.0
    first = stages[0]
    for s in _samples(metrics.STAGE, "augur_stage_latency_seconds_count", "_sum"):
        if s.labels["model"] != name or s.labels["stage"] not in stages:
            continue
        if s.name.endswith("_sum"):
            seconds += s.value
        elif s.labels["stage"] == first:  # the stages of one call: counted once
            count += s.value
    return _duration(count, seconds)


def _duration(count: float, seconds: float) -> oip.StatisticDuration:
    return oip.StatisticDuration(count=int(count), ns=int(seconds * 1e9))


def _samples(metric, *names: str):
    wanted = {names[0], *(names[0].rsplit("_", 1)[0] + n for n in names[1:])}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name in wanted:
                yield sample
