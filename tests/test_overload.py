"""Overload over real gRPC on loopback: many callers on the default settings are queued and
answered, never refused at a fixed count; under ten times the load every call is answered
within its deadline; a 10k-row call does not hold a 1-row call behind it. Bounds are
generous: the point is the outcome, not the timing.

The many callers run in a process of their own, as a service's callers do. In the server's
own interpreter they took a third of its GIL (0.27 ms a call against the server's 0.49),
which held its capacity at 320 callers to about their count over the 250 ms deadline: the
queue then sat at the deadline, and whether half the calls made it was a coin toss
(38-73% in runs of the same code).

The overload test's deadline comes from what the box serves, measured first. A fixed 250 ms
left 320 callers within it on a box serving 1,900 calls a second (170 ms of queue) but not
on one serving 1,000-1,250 (this box on a slow day, and CI): there every call queued up to
its deadline in front of the server, in gRPC's core, where admission cannot refuse it, and
half the calls or fewer made it (CI at d580741: 2,057 of 4,800). That regime, more callers
than the server answers within their deadline, is a known limit (docs/reliability.md), not
what this test is about: ten times the callers the server peaks at, queued and served.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.config import ServerConfig
from augur.features.redis_server import free_port
from bench.load import CHANNEL_OPTIONS, request
from tests.conftest import server_config

CONNECTIONS = 16
ROOT = Path(__file__).resolve().parents[1]


def _requests(rows: int, count: int = 32) -> list:
    rng = np.random.default_rng(rows)
    return [
        request(
            "fraud_lgbm",
            {
                "entities": {
                    "user_id": rng.integers(0, 400, rows).tolist(),
                    "merchant_id": rng.integers(0, 80, rows).tolist(),
                },
                "request_features": {"amount": [25.0] * rows},
            },
        )
        for _ in range(count)
    ]


async def _callers(port: int, callers: int, calls: int, deadline_s: float) -> list[tuple]:
    """`callers` closed-loop callers of `calls` calls each: (code, seconds) per call."""
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        for _ in range(CONNECTIONS)
    ]
    pool = _requests(1)
    outcomes: list[tuple[str, float]] = []

    async def caller(i: int) -> None:
        predict = pb_grpc.PredictorStub(channels[i % CONNECTIONS]).Predict
        for k in range(calls):
            began = time.monotonic()
            try:
                await predict(pool[(i + k) % len(pool)], timeout=deadline_s)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            outcomes.append((code, time.monotonic() - began))

    try:
        for channel in channels:  # connected before the load starts
            await channel.channel_ready()
        await asyncio.gather(*(caller(i) for i in range(callers)))
    finally:
        for channel in channels:
            await channel.close()
    return outcomes


def _callers_elsewhere(
    port: int, callers: int, calls: int, deadline_s: float
) -> tuple[list[tuple], float]:
    """`_callers` run in a process of its own: (code, seconds) per call, and the seconds they
    took together."""
    run = (
        "import asyncio, json, sys\n"
        "from tests.test_overload import _callers\n"
        "import time\n"
        "began = time.monotonic()\n"
        "outcomes = asyncio.run(_callers(*json.loads(sys.argv[1])))\n"
        "print(json.dumps([outcomes, time.monotonic() - began]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", run, json.dumps([port, callers, calls, deadline_s])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes, took = json.loads(done.stdout)
    return [tuple(outcome) for outcome in outcomes], took


@pytest.fixture(scope="module")
def defaults_server(fraud_repo, model_repo):
    """A server on the default settings, but for max_rows (10k-row calls)."""
    from augur.serving.server import start

    config = server_config(fraud_repo, model_repo)
    config.server = ServerConfig(port=free_port(), metrics_port=0, grace_seconds=2.0)
    running = start(config)
    yield running
    running.stop()


def test_sixty_four_callers_on_the_defaults_are_all_served(defaults_server):
    outcomes, _ = _callers_elsewhere(defaults_server.port, 64, 30, deadline_s=10.0)
    codes = Counter(code for code, _ in outcomes)
    assert codes == {"OK": 64 * 30}, codes


def test_under_ten_times_overload_every_call_is_answered_within_its_deadline(defaults_server):
    callers, calls = 320, 15  # ten times the callers at which the server peaks (16-32)
    # What this box serves: calls a second from 64 callers with time to spare. The deadline
    # gives the 320 twice the time their calls take at that rate, 250 ms at least.
    served, took = _callers_elsewhere(defaults_server.port, 64, 20, deadline_s=10.0)
    deadline_s, slack_s = max(0.25, 2 * callers * took / len(served)), 0.5
    outcomes, _ = _callers_elsewhere(defaults_server.port, callers, calls, deadline_s)
    assert len(outcomes) == callers * calls, "a call went unanswered"
    codes = Counter(code for code, _ in outcomes)
    # A call let in with little time left may spend its Redis read's budget (80% of what
    # is left) on a saturated box: that ends DEADLINE_EXCEEDED and leaves the breaker
    # closed, so no call is refused UNAVAILABLE by a breaker such calls opened.
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, codes
    assert codes["OK"] >= len(outcomes) // 2, codes  # served, not refused wholesale
    slowest = max(took for _, took in outcomes)
    assert slowest < deadline_s + slack_s


def test_a_ten_thousand_row_call_does_not_hold_a_one_row_call_behind_it(defaults_server):
    large, small = _requests(10_000, 1)[0], _requests(1, 1)[0]

    async def run() -> tuple[float, list[float]]:
        address = f"127.0.0.1:{defaults_server.port}"
        async with (
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as big,
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as one,
        ):
            big_predict = pb_grpc.PredictorStub(big).Predict
            one_predict = pb_grpc.PredictorStub(one).Predict
            await big_predict(large, timeout=30)  # warm: connections, plan, model
            await one_predict(small, timeout=5)
            began = time.monotonic()
            task = asyncio.ensure_future(big_predict(large, timeout=30))
            waits = []
            while not task.done():  # 1-row calls one after another while it runs
                t = time.monotonic()
                await one_predict(small, timeout=5)
                waits.append(time.monotonic() - t)
            await task
            return time.monotonic() - began, waits

    took, waits = asyncio.run(run())
    assert waits, "the 10k-row call ended before a 1-row call was sent"
    # held for the whole of the large call, the longest wait would be about `took`
    assert max(waits) < max(0.1, took / 3), (took, sorted(waits)[-5:])
