"""Metric children updated in one step (augur/serving/metric_children.py), in C where
augur.serving._tally is built and in Python otherwise, export exactly what prometheus_client's
own inc/dec/set/observe export for the same updates."""

from __future__ import annotations

import math
import sys
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from augur.serving import metric_children
from augur.serving.metric_children import (
    HistogramChild,
    ValueChild,
    histogram_child,
    value_child,
)

# each test runs on both: the C types (where built) and the Python classes they fall back to
KINDS = {"c": (value_child, histogram_child), "python": (ValueChild, HistogramChild)}

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


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    if request.param == "c" and metric_children._tally is None:
        pytest.skip("augur.serving._tally was not built (no C compiler, or AUGUR_NATIVE=0)")
    return KINDS[request.param]


def test_the_c_types_serve_a_one_process_server_where_they_were_built():
    if metric_children._tally is None:
        pytest.skip("augur.serving._tally was not built")
    registry = CollectorRegistry()
    counter = Counter("t_c", "h", registry=registry)
    histogram = Histogram("t_c_seconds", "h", registry=registry)
    assert type(value_child(counter)).__module__ == "augur.serving._tally"
    assert type(histogram_child(histogram)).__module__ == "augur.serving._tally"
    # a most-recent gauge's set stamps a time the C type does not: the library's own
    last = Gauge("t_c_last", "h", registry=registry, multiprocess_mode="mostrecent")
    assert isinstance(value_child(last), ValueChild)


def test_a_histogram_child_puts_every_amount_in_the_bucket_prometheus_client_would(kind):
    child, reference, ours, theirs = _pair(Histogram, "t_seconds", buckets=BUCKETS)
    fast = kind[1](child)
    for amount in AMOUNTS:
        fast.observe(amount)
        reference.observe(amount)

    assert _samples(ours) == _samples(theirs)
    assert _samples(ours)[("t_seconds_count", (("model", "m"),))] == len(AMOUNTS)
    assert math.isclose(_samples(ours)[("t_seconds_sum", (("model", "m"),))], sum(AMOUNTS))


def test_counter_and_gauge_children_count_as_prometheus_client_does(kind):
    child, reference, ours, theirs = _pair(Counter, "t_rows")
    fast = kind[0](child)
    for amount in (1, 5, 0.5):
        fast.inc(amount)
        reference.inc(amount)
    fast.inc()
    reference.inc()
    assert _samples(ours) == _samples(theirs) == {("t_rows_total", (("model", "m"),)): 7.5}

    child, reference, ours, theirs = _pair(Gauge, "t_depth", multiprocess_mode="livesum")
    fast = kind[0](child)
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


def test_a_nan_observation_counts_in_the_sum_and_in_no_bucket_as_the_librarys_does():
    if metric_children._tally is None:
        pytest.skip("augur.serving._tally was not built")
    child, reference, ours, theirs = _pair(Histogram, "t_nan_seconds", buckets=BUCKETS)
    histogram_child(child).observe(float("nan"))
    reference.observe(float("nan"))
    mine, library = _samples(ours), _samples(theirs)
    assert {k: v for k, v in mine.items() if "_sum" not in k[0]} == {
        k: v for k, v in library.items() if "_sum" not in k[0]
    }
    assert mine[("t_nan_seconds_count", (("model", "m"),))] == 0
    assert math.isnan(mine[("t_nan_seconds_sum", (("model", "m"),))])


def test_updates_from_other_threads_through_the_library_are_never_lost(kind):
    """The server's calls update through the child while other threads (the batcher's, a
    shadow's) may update the same value through prometheus_client: every update counts."""
    registry = CollectorRegistry()
    counter = Counter("t_threads", "h", registry=registry)
    fast = kind[0](counter)
    each = 20_000

    def library() -> None:
        for _ in range(each):
            counter.inc()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the GIL changes hands as often as it can
    try:
        threads = [threading.Thread(target=library) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(each):
            fast.inc()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert _samples(registry)[("t_threads_total", ())] == 3 * each
