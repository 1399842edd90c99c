"""SLO-adaptive batching: from a model's latency objective (model.yaml `slo: {p99_ms: N}`),
the measured cost of its batches and the rate its calls arrive, pick the batch window and cap
that serve the most calls a second while the predicted p99 stays within the objective.

The batcher reports each batch it ran (`ran`: rows, seconds, each call's latency) and each
call it queued (`arrived`); every TICK_S the controller refits and decides, and the batcher
reads `window_s` and `max_rows` from it. Not the batcher (batcher.py), not admission.

The model of a batch policy (window w, cap B) at an arrival rate of r rows a second, with
c(n) the p99 cost of running n rows (read, assemble, model call) fitted from recent batches:
a batch takes what arrives while the one before it runs plus up to w more, n = r * (c(n) + w)
rows, within [1, B]; its first call waits out the window or until the batch is full, and a
call then waits for the batch running when it came and for its own: p99 = wait + 2 c(n), and
past B queueing grows as r nears B / c(B), the policy's capacity.

The choice, throughput first as the objective allows. On the green pool the serving thread
that runs a batch is the one that receives the next calls, so without a window a batch runs
with the few calls the thread has taken so far and the next ones queue behind it; a window
(which closes early once no call is on its way, so a lone caller never waits it out) lets
the thread take what is arriving and run it as one batch. Each row of a batch of n costs
c(n) / n; among the policies whose p99 fits the objective (windows at most half of it, the
rest left to the batch runs), those within 5% of the least cost a row, and of those the
least p99. Under light load (one-row batches would keep the model busy under a quarter of
the time) there is nothing to gain: no window. When nothing fits, the least cost a row.
Observed p99 above the predicted (what the model leaves out: decode, the GIL) scales the
predicted batch costs up, so the choice corrects itself.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

TICK_S = 0.05  # how often the controller decides
WINDOWS_US = (0, 100, 250, 500, 1000, 2000, 4000, 8000)  # windows it chooses among
WINDOW_SHARE = 0.5  # a window takes at most this share of the objective: the rest is runs
LIGHT_BUSY = 0.25  # one-row batches keep the model busy under this share: nothing to batch
SAME_COST = 1.05  # costs a row within this factor of the least are as good: least p99 then
_DECAY = 0.95  # weight of past batches in the cost fit, per batch: a new version shows fast
_RATE_DECAY = 0.5  # weight of the past rate per tick: a load step shows within a few ticks
_LATENCIES = 512  # recent calls' latencies the observed p99 is taken over
_Z99 = 2.33  # p99 of a normal: the fitted cost's mean plus this many deviations
_MOST_CORRECTION = 4.0  # the model is off by at most this much, or the data is noise
_PRIOR_SLOPE = 0.02  # per extra row, a share of one row's cost: before batches of sizes vary


@dataclass(frozen=True)
class Policy:
    """A batch window and cap, with what the controller predicts of it."""

    window_s: float
    max_rows: int
    p99_s: float  # predicted p99 of a call's queue wait and batch run
    capacity: float  # rows a second the model serves at this cap
    busy: float  # share of the time the model runs at the current arrival rate
    # p99 with no queueing beyond the running batch: what a call admitted under overload
    # sees (the excess waits in admission, or is refused there)
    floor_s: float
    rows: float  # the rows a batch takes at this rate


class BatchCost:
    """The cost of a batch of n rows, fitted online: a line a + b*n by exponentially weighted
    least squares, and the spread of batches around it."""

    def __init__(self) -> None:
        self._w = self._n = self._c = self._nn = self._nc = self._cc = 0.0

    @property
    def seen(self) -> bool:
        return self._w > 0.0

    def add(self, rows: int, seconds: float) -> None:
        d = _DECAY
        self._w = self._w * d + 1.0
        self._n = self._n * d + rows
        self._c = self._c * d + seconds
        self._nn = self._nn * d + rows * rows
        self._nc = self._nc * d + rows * seconds
        self._cc = self._cc * d + seconds * seconds

    def line(self) -> tuple[float, float]:
        """(a, b): seconds fixed per batch, seconds per row."""
        w = self._w
        mn, mc = self._n / w, self._c / w
        var = self._nn / w - mn * mn
        if var > 0.25:  # batches of different sizes: their slope
            slope = max((self._nc / w - mn * mc) / var, 0.0)
        else:  # one size only: a small slope, as most models show, until sizes vary
            slope = _PRIOR_SLOPE * mc / max(mn, 1.0)
        return max(mc - slope * mn, 0.0), slope

    def p99_line(self) -> tuple[float, float]:
        """(A, B): the p99 of a batch of n rows is A + B*n seconds. The spread around the
        fitted line (what the rows do not explain) is measured at the usual size and taken
        in proportion at another, so the p99 is the line scaled."""
        a, b = self.line()
        w = self._w
        mn, mc = self._n / w, self._c / w
        cov = self._nc / w - mn * mc
        spread = math.sqrt(max(self._cc / w - mc * mc - b * cov, 0.0))
        usual = a + b * mn
        scale = 1.0 + (_Z99 * spread / usual if usual > 0 else 0.0)
        return a * scale, b * scale

    def p99(self, rows: float) -> float:
        """Seconds a batch of `rows` takes at its 99th percentile."""
        a, b = self.p99_line()
        return a + b * rows


def predict(
    cost: BatchCost | tuple[float, float], rate_rows: float, window_s: float, max_rows: int
) -> Policy:
    """What a window and cap give at `rate_rows` arrivals a second (the module's model);
    `cost`: the fitted cost, or its p99 line (A, B)."""
    a, b = cost.p99_line() if isinstance(cost, BatchCost) else cost
    return Policy(window_s, max_rows, *_model(a, b, rate_rows, window_s, max_rows))


def _model(a: float, b: float, rate: float, window_s: float, cap: int) -> tuple:
    """(p99, capacity, busy, floor, rows) of a policy, batch cost A + B*n: plain floats, as
    a decision weighs some sixty policies on the serving thread."""
    full = a + b * cap
    capacity = cap / full
    # n = r * (c(n) + w), c linear: n = r (A + w) / (1 - r B), within [1, cap]
    grows = 1.0 - rate * b
    n = rate * (a + window_s) / grows if grows > 0 else math.inf
    n = min(max(n, 1.0), float(cap))
    wait = min(window_s, (cap - 1) / rate) if rate > 0 else window_s  # a full batch closes
    c = a + b * n
    floor = wait + 2.0 * c
    busy = rate * c / n
    if n < cap:  # batches take what came while the last ran: the running one, then its own
        return floor, capacity, busy, floor, n
    busy = rate / capacity  # full batches: queueing grows as they stop keeping up
    p99 = math.inf if busy >= 1.0 else wait + full * (2.0 + busy / (1.0 - busy))
    return p99, capacity, busy, floor, n


def choose(
    cost: BatchCost | tuple[float, float],
    rate_rows: float,
    objective_s: float,
    most_rows: int,
    windows_us: tuple[int, ...] = WINDOWS_US,
) -> Policy:
    """The policy for an arrival rate: among those within the objective, the least cost a row
    (the most calls a second), then the least p99; if none is within it, the least cost a
    row. `cost`: the fitted cost, or its p99 line (A, B)."""
    caps = [1]
    while caps[-1] * 2 < most_rows:
        caps.append(caps[-1] * 2)
    if most_rows > 1:
        caps.append(most_rows)
    a, b = cost.p99_line() if isinstance(cost, BatchCost) else cost  # fitted once for all
    if rate_rows * (a + b) <= LIGHT_BUSY:  # calls mostly alone: a window only adds
        return predict((a, b), rate_rows, 0.0, caps[-1])
    fits, every = [], []
    for w_us in windows_us:
        w = w_us / 1e6
        if w > WINDOW_SHARE * objective_s and w > 0:
            break
        for cap in caps:
            p99, _, _, _, n = _model(a, b, rate_rows, w, cap)
            # a row's cost, p99, then the shorter window and the larger cap
            key = ((a + b * n) / n, p99, w, -cap)
            every.append(key)
            if p99 <= objective_s:
                fits.append(key)
    pool = fits or every
    least = min(k[0] for k in pool)
    _, _, w, cap = min((k for k in pool if k[0] <= SAME_COST * least), key=lambda k: k[1:])
    return predict((a, b), rate_rows, w, -cap)


class SloController:
    """One model's batch window and cap, tuned to its p99 objective. The batcher calls
    `arrived` per call and `ran` per batch, and reads `window_s` and `max_rows`."""

    def __init__(self, objective_s: float, most_rows: int, gauges=None) -> None:
        self.objective_s = objective_s
        self.most_rows = most_rows  # the cap never exceeds this (model.yaml batching)
        self.window_s = 0.0  # until batches are measured: no wait, cap at the most
        self.max_rows = most_rows
        self.predicted_p99_s = 0.0
        self.observed_p99_s = 0.0
        self._cost = BatchCost()
        self._arrived = 0  # rows since the last tick
        self._rate = 0.0  # rows a second, smoothed over ticks
        self._latencies: deque[float] = deque(maxlen=_LATENCIES)
        self._correction = 1.0  # observed over modelled p99, smoothed, at least 1
        self._modelled_p99_s = 0.0  # the chosen policy's p99 at the uncorrected costs
        self._tick_at: float | None = None  # the clock of the last decision (the batcher's)
        self._gauges = gauges  # metrics.SloGauges, or None

    def arrived(self, rows: int) -> None:
        self._arrived += rows

    def batch_cost_s(self, rows: int) -> float:
        """Seconds a batch of `rows` is predicted to take (p99), 0 before any was measured."""
        return self._cost.p99(rows) * self._correction if self._cost.seen else 0.0

    def ran(self, rows: int, seconds: float, latencies: list[float], now: float) -> None:
        """A batch of `rows` ran in `seconds`; `latencies`: its calls' queue wait plus run."""
        self._cost.add(rows, seconds)
        self._latencies.extend(latencies)
        if self._tick_at is None:
            self._tick_at = now - seconds
        if now - self._tick_at >= TICK_S:
            self._tick(now, now - self._tick_at)

    def _tick(self, now: float, elapsed: float) -> None:
        self._tick_at = now
        rate = self._arrived / elapsed
        self._arrived = 0
        self._rate = (
            rate if self._rate == 0.0 else self._rate * _RATE_DECAY + rate * (1 - _RATE_DECAY)
        )
        if len(self._latencies) >= 20:
            ordered = sorted(self._latencies)
            self.observed_p99_s = ordered[min(int(len(ordered) * 0.99), len(ordered) - 1)]
        if self._modelled_p99_s > 0 and self.observed_p99_s > 0:
            # what the model leaves out, measured: observed over modelled, at least 1
            ratio = min(max(self.observed_p99_s / self._modelled_p99_s, 1.0), _MOST_CORRECTION)
            self._correction = self._correction * 0.8 + ratio * 0.2
        a, b = self._cost.p99_line()
        k = self._correction  # batches cost what they measured, scaled by what it leaves out
        policy = choose((a * k, b * k), self._rate, self.objective_s, self.most_rows)
        self.window_s, self.max_rows = policy.window_s, policy.max_rows
        plain = predict((a, b), self._rate, policy.window_s, policy.max_rows)
        # overloaded (the excess waits in admission): what an admitted call sees
        self._modelled_p99_s = plain.p99_s if plain.p99_s < math.inf else plain.floor_s
        self.predicted_p99_s = policy.p99_s if policy.p99_s < math.inf else policy.floor_s
        if self._gauges is not None:
            self._gauges.show(self)
