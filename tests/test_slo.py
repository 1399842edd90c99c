"""The SLO controller's decisions on recorded batch costs: no window under light load, under
load a window that fills batches within the objective, the most capacity when nothing keeps
up, and a new choice when the model or the load changes. The costs are what a LightGBM model
measured on this project's bench (about 150 us a batch plus 4 us a row) and a slower version
of it."""

import pytest

from augur.serving.slo import BatchCost, SloController, choose, predict

FAST = (150e-6, 4e-6)  # seconds a batch, seconds a row
SLOW = (600e-6, 20e-6)  # a new version four to five times slower


def _recorded(a: float, b: float, sizes=(1, 2, 4, 8, 16, 32, 64), rounds: int = 20) -> BatchCost:
    cost = BatchCost()
    for r in range(rounds):
        for n in sizes:
            jitter = 1.0 + 0.05 * ((r * 7 + n) % 5 - 2) / 2  # +-5%, as a quiet machine shows
            cost.add(n, (a + b * n) * jitter)
    return cost


def test_the_fitted_cost_follows_the_recorded_batches():
    cost = _recorded(*FAST)
    a, b = cost.line()
    assert a == pytest.approx(FAST[0], rel=0.1)
    assert b == pytest.approx(FAST[1], rel=0.15)
    # a p99 above the mean, not far above it on a quiet machine
    assert FAST[0] + 32 * FAST[1] < cost.p99(32) < 1.3 * (FAST[0] + 32 * FAST[1])


def test_light_load_gets_no_window():
    # a call each ms: one-row batches keep the model busy 15% of the time, nothing to batch
    policy = choose(_recorded(*FAST), rate_rows=1_000, objective_s=0.005, most_rows=64)
    assert policy.window_s == 0.0
    assert policy.p99_s <= 0.005


def test_load_beyond_one_row_batches_gets_batches_that_keep_up_within_the_objective():
    cost = _recorded(*FAST)
    alone = predict(cost, 20_000, 0.0, 1)
    assert alone.busy >= 1.0  # 20k rows/s is more than one-row batches can serve
    policy = choose(cost, rate_rows=20_000, objective_s=0.005, most_rows=64)
    assert policy.max_rows > 1
    assert 0.85 * policy.capacity >= 20_000  # its batches keep up, with room
    assert policy.p99_s <= 0.005


def test_an_overload_gets_the_most_capacity_the_objective_allows():
    cost = _recorded(*FAST)
    policy = choose(cost, rate_rows=10_000_000, objective_s=0.005, most_rows=64)
    assert policy.max_rows == 64  # the largest batch serves the most rows a second
    assert policy.capacity == max(
        predict(cost, 10_000_000, 0.0, cap).capacity for cap in (1, 2, 4, 8, 16, 32, 64)
    )


def test_when_nothing_keeps_up_within_the_objective_throughput_comes_first():
    # 64 rows of the slow version take ~1.9 ms: no policy keeps up within 3 ms at this rate,
    # and a smaller batch would only serve fewer calls and queue the rest longer
    cost = _recorded(*SLOW)
    policy = choose(cost, rate_rows=10_000_000, objective_s=0.003, most_rows=64)
    assert (policy.window_s, policy.max_rows) == (0.0, 64)


def test_under_load_a_window_fills_batches_within_the_objective():
    cost = _recorded(*FAST)
    policy = choose(cost, rate_rows=60_000, objective_s=0.005, most_rows=64)
    # without a window a batch runs with what the serving thread has taken so far; a window
    # lets it take what is arriving, and fuller batches cost less a row
    greedy = predict(cost, 60_000, 0.0, 64)
    assert 0.0 < policy.window_s <= 0.0025  # at most half the objective
    assert policy.rows > greedy.rows
    a, b = cost.p99_line()
    assert (a + b * policy.rows) / policy.rows < (a + b * greedy.rows) / greedy.rows
    assert policy.p99_s <= 0.005 and 0.85 * policy.capacity >= 60_000
    # a tighter objective leaves less room for the window
    tight = choose(cost, rate_rows=60_000, objective_s=0.0015, most_rows=64)
    assert tight.window_s <= 0.00075 and tight.p99_s <= 0.0015


def test_the_cap_never_exceeds_the_models_batch_size():
    policy = choose(_recorded(*FAST), rate_rows=10_000_000, objective_s=0.05, most_rows=16)
    assert policy.max_rows == 16


def _feed(controller: SloController, a: float, b: float, rate_rows: float, seconds: float, t0):
    """Batches as the batcher reports them at `rate_rows`, each as large as what arrived
    while the one before ran (capped), for `seconds` of simulated time from t0."""
    t = t0
    while t < t0 + seconds:
        n = max(1, min(controller.max_rows, round(rate_rows * (a + b * controller.max_rows))))
        run = a + b * n
        controller.arrived(n)
        t += max(run, n / rate_rows)
        controller.ran(n, run, [run + controller.window_s] * n, t)
    return t


def test_the_controller_adapts_when_the_load_steps_up_and_when_the_model_slows():
    controller = SloController(0.005, 64)
    t = _feed(controller, *FAST, rate_rows=1_000, seconds=1.0, t0=0.0)
    assert controller.window_s == 0.0  # light load: no call waits for others
    light = controller.predicted_p99_s
    t = _feed(controller, *FAST, rate_rows=40_000, seconds=1.0, t0=t)
    # batches of several rows now, a window filling them: a longer p99, within the objective
    assert 0.0 < controller.window_s <= 0.0025
    assert light < controller.predicted_p99_s <= 0.005
    t = _feed(controller, *SLOW, rate_rows=40_000, seconds=2.0, t0=t)
    # the slower version cannot keep up at all: the largest batches at once, and a p99
    # prediction that says so
    assert (controller.window_s, controller.max_rows) == (0.0, 64)
    assert controller.batch_cost_s(64) > 3 * (FAST[0] + 64 * FAST[1])


def test_observed_latency_above_the_prediction_tightens_the_choice():
    honest = SloController(0.004, 64)
    late = SloController(0.004, 64)
    t = 0.0
    for _ in range(400):  # 20 s of batches of 32 at 50k rows/s, run costs as recorded
        t += 0.05 / 10
        for c, extra in ((honest, 1.0), (late, 3.0)):
            run = FAST[0] + FAST[1] * 32
            c.arrived(250)
            c.ran(32, run, [run * 2 * extra] * 32, t)
    assert late.observed_p99_s > honest.observed_p99_s
    assert late.predicted_p99_s > honest.predicted_p99_s  # the prediction follows the facts
    assert late.max_rows <= honest.max_rows
