"""Label children of prometheus_client metrics, bound once and updated in one step: what a
Predict counts and times on its way (a dozen updates a call). prometheus_client's own `inc`
and `observe` check the child's observability and the amount's sign on every call, and a
histogram walks its buckets in a Python loop: three to five Python calls for one update,
about a fifth of a 1-row Predict's Python calls. These take the child's value objects once
and update them directly (a histogram's bucket found by bisection), so the samples, the
exposition and the multiprocess mode stay prometheus_client's. Not a metrics library: the
metrics are declared and exported by prometheus_client (augur/serving/metrics.py).

Where augur.serving._tally was built and a child keeps its values in the library's
MutexValue (one process), `value_child` and `histogram_child` give its C types: one C call an
update, where the Python below makes two with a lock (about 1 us an update in a loop here,
where the C call takes a tenth of it). Otherwise (no compiler, `AUGUR_NATIVE=0`, the
multiprocess mode's values) the Python classes below.

The value objects are private to prometheus_client (pinned); `_LAYOUT` checks their shape
once at import, and without it each child is the library's own, unchanged.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

from augur.features.native import extension

_tally = extension("augur.serving._tally")


def _layout_holds() -> bool:
    """Whether prometheus_client keeps a child's value where this module takes it from."""
    try:
        counter = Counter("augur_layout_probe", "", registry=None)
        gauge = Gauge("augur_layout_probe_gauge", "", registry=None)
        histogram = Histogram("augur_layout_probe_seconds", "", buckets=(1.0,), registry=None)
        counter._value.inc(1)
        gauge._value.inc(1)
        histogram._sum.inc(1)
        histogram._buckets[bisect_left(histogram._upper_bounds, 0.5)].inc(1)
        return (
            counter._value.get() == 1.0
            and histogram._buckets[0].get() == 1.0
            and len(histogram._buckets) == len(histogram._upper_bounds)
            and isinstance(getattr(gauge, "_is_most_recent", False), bool)
        )
    except (AttributeError, TypeError, IndexError):
        return False


_LAYOUT = _layout_holds()


def _in_process(*values: Any) -> bool:
    """Whether the C types may update these values: the library's one-process MutexValue."""
    return _tally is not None and _LAYOUT and all(type(v) is MutexValue for v in values)


def value_child(child: Any) -> Any:
    """A counter's or gauge's child with `inc`, `dec` and `set` in one step each."""
    value = getattr(child, "_value", None)
    if not getattr(child, "_is_most_recent", False) and _in_process(value):
        return _tally.Value(value)
    return ValueChild(child)


def histogram_child(child: Any) -> Any:
    """A histogram's child with `observe` in one step."""
    if _LAYOUT and _in_process(child._sum, *child._buckets):
        return _tally.Buckets(child._sum, child._buckets, child._upper_bounds)
    return HistogramChild(child)


class ValueChild:
    """A counter's (or a gauge's) child: `inc`, and for a gauge `dec` and `set`."""

    __slots__ = ("_child", "_inc", "_set")

    def __init__(self, child: Any) -> None:
        self._child = child
        value = child._value if _LAYOUT and not getattr(child, "_is_most_recent", False) else None
        self._inc = value.inc if value is not None else None
        self._set = value.set if value is not None else None

    def inc(self, amount: float = 1) -> None:
        if self._inc is None:
            self._child.inc(amount)
        else:
            self._inc(amount)

    def dec(self, amount: float = 1) -> None:
        if self._inc is None:
            self._child.dec(amount)
        else:
            self._inc(-amount)

    def set(self, value: float) -> None:
        if self._set is None:
            self._child.set(value)
        else:
            self._set(float(value))


class HistogramChild:
    """A histogram's child: `observe`. Values are never NaN here (latencies, row counts)."""

    __slots__ = ("_buckets", "_child", "_sum", "_upper")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._sum = child._sum.inc if _LAYOUT else None
        self._buckets = [bucket.inc for bucket in child._buckets] if _LAYOUT else []
        self._upper = list(child._upper_bounds) if _LAYOUT else []

    def observe(self, amount: float) -> None:
        if self._sum is None:
            self._child.observe(amount)
            return
        self._sum(amount)
        # the first bucket whose upper bound is >= amount, as prometheus_client's loop finds
        self._buckets[bisect_left(self._upper, amount)](1)
