"""Metric children updated in one step (augur/serving/metric_children.py) export exactly what
prometheus_client's own inc/dec/set/observe export for the same updates."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from augur.serving import metric_children
from augur.serving.metric_children import HistogramChild, ValueChild

BUCKETS = (0.001, 0.005, 0.01, 0.1, 1.0, 10.0)
AMOUNTS = [0.0, 0.0005, 0.001, 0.0010001, 0.005, 0.0499, 0.1, 0.7, 1.0, 9.99, 10.0, 11.0, 1e9]


def _samples(registry: CollectorRegistry) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def _pair(kind, name: str, **kwargs):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    return (
        kind(name, "h", ["model"], registry=ours, **kwargs).labels("m"),
        kind(name, "h", ["model"], registry=theirs, **kwargs).labels("m"),
        ours,
        theirs,
    )


def test_the_layout_check_holds_for_the_pinned_prometheus_client():
    assert metric_children._LAYOUT


def test_a_histogram_child_puts_every_amount_in_the_bucket_prometheus_client_would():
    child, reference, ours, theirs = _pair(Histogram, "t_seconds", buckets=BUCKETS)
    fast = HistogramChild(child)
    for amount in AMOUNTS:
        fast.observe(amount)
        reference.observe(amount)

    assert _samples(ours) == _samples(theirs)
    assert _samples(ours)[("t_seconds_count", (("model", "m"),))] == len(AMOUNTS)
    assert math.isclose(_samples(ours)[("t_seconds_sum", (("model", "m"),))], sum(AMOUNTS))


def test_counter_and_gauge_children_count_as_prometheus_client_does():
    child, reference, ours, theirs = _pair(Counter, "t_rows")
    fast = ValueChild(child)
    for amount in (1, 5, 0.5):
        fast.inc(amount)
        reference.inc(amount)
    fast.inc()
    reference.inc()
    assert _samples(ours) == _samples(theirs) == {("t_rows_total", (("model", "m"),)): 7.5}

    child, reference, ours, theirs = _pair(Gauge, "t_depth", multiprocess_mode="livesum")
    fast = ValueChild(child)
    fast.inc(3)
    reference.inc(3)
    fast.dec(1)
    reference.dec(1)
    assert _samples(ours) == _samples(theirs) == {("t_depth", (("model", "m"),)): 2.0}
    fast.set(True)
    reference.set(True)
    assert _samples(ours) == _samples(theirs) == {("t_depth", (("model", "m"),)): 1.0}


def test_a_most_recent_gauge_keeps_prometheus_clients_own_set():
    registry = CollectorRegistry()
    gauge = Gauge("t_last", "h", registry=registry, multiprocess_mode="mostrecent")
    fast = ValueChild(gauge)
    fast.set(4)
    assert _samples(registry) == {("t_last", ()): 4.0}
