"""A call's deadline as the server keeps it: monotonic time, read once from gRPC's context,
and a call whose caller has already given up dropped before the stage it would waste."""

from __future__ import annotations

import time

import grpc

from augur.serving import metrics
from augur.serving.errors import deadline_exceeded


def deadline_of(context: grpc.ServicerContext, model: str, stage: str) -> float | None:
    """When the caller gives up (time.monotonic), None without a deadline; DEADLINE_EXCEEDED
    (counted against `model` and `stage`) where that has passed already."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        metrics.DEADLINE_DROPPED.labels(model, stage).inc()
        raise deadline_exceeded(f"deadline passed before the {stage} stage")
    return time.monotonic() + remaining
