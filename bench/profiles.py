"""What the harness measures, per scenario: the load steps, their bounds, and the paired
comparisons with the Augur server variants each compares (the `--quick` profile too)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.compare import (
    AUGUR,
    CEILING,
    ECHO_FLOORS,
    ECHO_REDIS_FLOORS,
    FLOORS,
    MLSERVER,
    THREADS,
)


@dataclass(frozen=True)
class Profile:
    """How hard and how long to measure, per request size (entity rows per Predict)."""

    concurrency: dict[int, tuple[int, ...]]  # closed loop callers
    rates: dict[int, tuple[float, ...]]  # open loop requests/s
    step_seconds: float  # each load step stops after this long...
    step_requests: int  # ...or this many requests
    pool: int  # distinct requests per size, sent round-robin
    inprocess_repeats: dict[int, int]  # in-process timings per size (Feast: a quarter)
    # Paired comparisons: name -> (servers, ((rows, callers), ...)). At each point the
    # servers take `rounds` turns each, in alternating order (bench/load.py), each turn
    # bounded by a step's bounds over `rounds`: each server gets a main step's worth of load.
    paired: dict = field(default_factory=dict)
    rounds: int = 2
    # Callers at which Augur must serve at least twice MLServer alone's predictions/s
    # (the MLServer comparison's target; bench/goals.py)
    mlserver_goal_callers: tuple[int, ...] = (16, 64)

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(self.concurrency)

    def steps(self) -> list[dict]:
        bounds = {"max_requests": self.step_requests, "max_seconds": self.step_seconds}
        closed = [
            {"rows": n, "mode": "closed", "concurrency": c, **bounds}
            for n, callers in self.concurrency.items()
            for c in callers
        ]
        opened = [
            {"rows": n, "mode": "open", "rate": rate, **bounds}
            for n, rates in self.rates.items()
            for rate in rates
        ]
        return closed + opened

    def paired_steps(self) -> list[dict]:
        turn = {
            "max_requests": max(self.step_requests // self.rounds, 1),
            "max_seconds": self.step_seconds / self.rounds,
        }
        return [
            {
                "comparison": name,
                "rows": n,
                "mode": "closed",
                "concurrency": c,
                "targets": list(servers),
                "rounds": self.rounds,
                **turn,
            }
            for name, (servers, points) in self.paired.items()
            for n, c in points
        ]


# Augur server variants, by name: the server options each adds to the run's. Dynamic
# batching at up to 64 rows a batch, waiting at most 1 ms for a batch to fill; two server
# processes on one port; and batching off with each call handed from gRPC's polling thread
# to a handler thread (server.handlers: threads) instead of run there.
VARIANTS = {
    "batching": {"batch_max_rows": 64, "batch_max_delay_us": 1000},
    "processes_2": {"processes": 2},
    "threads": {"handlers": "threads"},
}
# The variants' options for the quick run: a batch as large as its callers
QUICK_VARIANTS = {**VARIANTS, "batching": {"batch_max_rows": 8, "batch_max_delay_us": 1000}}
# Batching against off, and against the ceiling server (bench/ceiling_server.py): batching
# off with each call's read, assembly and model call answered from memory, what no batch
# can beat, the floor of batching's ratio
BATCHING = (AUGUR, "batching", CEILING)
PROCESSES = (AUGUR, "processes_2")


def _model_server(rows: int, callers: tuple[int, ...]) -> tuple:
    """Augur's Predict against MLServer alone serving the same model with the features in
    the request (bench/model_server.py), at every closed-loop point of `rows`."""
    return (AUGUR, MLSERVER), tuple((rows, c) for c in callers)


def _floors(rows: tuple[int, ...], threads: bool = True) -> tuple:
    """One caller's Predict, as the run serves it (and with `threads` on a thread pool,
    too), against every candidate echo floor, at each request size."""
    servers = (AUGUR, THREADS, *ECHO_FLOORS, *ECHO_REDIS_FLOORS)
    return tuple(s for s in servers if threads or s != THREADS), tuple((n, 1) for n in rows)


FRAUD = Profile(
    concurrency={1: (1, 4, 16, 64), 100: (1, 4, 16, 64)},
    # Feast's server serves about 25 calls of 100 rows a second here, so at 30/s its queue
    # already grows; at a higher rate the step would only time that queue draining (11 s at
    # 100/s), which the 10-minute budget cannot spare
    rates={1: (100, 300, 1000), 100: (10, 30)},
    step_seconds=2.5,
    step_requests=20_000,
    pool=256,
    inprocess_repeats={1: 1000, 100: 200, 1000: 30},
    paired={
        FLOORS: _floors((1, 100)),
        "batching": (BATCHING, ((1, 4), (1, 16), (1, 64))),
        "processes_2": (PROCESSES, ((1, 64), (100, 16), (100, 64))),
        MLSERVER: _model_server(100, (1, 4, 16, 64)),
    },
)
# 250 features per row: a 100-row request costs Feast a few hundred ms, so 64 callers would
# queue past the calls' deadline; 16 already shows the curve.
WIDE = Profile(
    concurrency={1: (1, 4, 16, 64), 100: (1, 4, 16)},
    rates={1: (100, 300, 1000), 100: (2, 5)},  # Feast: about 3 calls/s of 100 rows
    step_seconds=2.5,
    step_requests=20_000,
    pool=256,
    inprocess_repeats={1: 1000, 100: 100, 1000: 10},
    # the one-caller targets are fraud's: wide leaves out the thread pool
    paired={
        FLOORS: _floors((1, 100), threads=False),
        "batching": (BATCHING, ((1, 16), (1, 64))),
        MLSERVER: _model_server(100, (1, 4, 16)),
    },
)
QUICK = Profile(
    concurrency={1: (1, 4), 10: (1, 4)},
    rates={1: (100,), 10: (50,)},
    step_seconds=1.0,
    step_requests=60,
    pool=16,
    inprocess_repeats={1: 40, 10: 20},
    paired={
        FLOORS: _floors((1, 10)),
        "batching": (BATCHING, ((1, 4),)),
        "processes_2": (PROCESSES, ((1, 4),)),
        MLSERVER: _model_server(10, (1, 4)),
    },
    mlserver_goal_callers=(4,),
)
PROFILES = {"fraud": FRAUD, "wide": WIDE}
