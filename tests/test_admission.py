"""Admission on its own: real threads and real time, no server (tests/test_overload.py has
the server under load)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from augur.config import ServerConfig
from augur.serving.admission import Admission, AdmissionPolicy
from augur.serving.errors import RequestError


def test_calls_within_the_limit_are_admitted_at_once():
    admission = Admission("m", AdmissionPolicy(limit=3))
    tickets = [admission.enter(None) for _ in range(3)]
    assert admission.running == 3 and admission.queued == 0
    for ticket in tickets:
        ticket.leave()
    assert admission.running == 0


def test_a_call_beyond_the_limit_waits_for_one_to_leave():
    admission = Admission("m", AdmissionPolicy(limit=1))
    first = admission.enter(None)
    admitted = threading.Event()

    def second() -> None:
        with admission.enter(time.monotonic() + 5):
            admitted.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not admitted.wait(0.2), "admitted while the limit was taken"
    assert admission.queued == 1
    first.leave(0.001)
    assert admitted.wait(5)
    thread.join(5)
    assert admission.running == 0 and admission.queued == 0


def test_a_full_model_refuses_at_once_naming_model_queue():
    admission = Admission("m", AdmissionPolicy(limit=1, max_calls=1))
    admission.enter(None)
    began = time.monotonic()
    with pytest.raises(RequestError) as refused:
        admission.enter(None)
    assert time.monotonic() - began < 0.05
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "server.model_queue" in refused.value.message


def test_a_call_that_cannot_be_served_in_time_is_refused_at_once_saying_why():
    admission = Admission("m", AdmissionPolicy(limit=1))
    admission.enter(None).leave(0.1)  # calls take 100 ms here
    admission.enter(None)  # and one is computing
    began = time.monotonic()
    with pytest.raises(RequestError) as refused:
        admission.enter(time.monotonic() + 0.05)  # 50 ms: not enough behind it
    assert time.monotonic() - began < 0.05, "refused after waiting"
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "deadline leaves" in refused.value.message
    assert admission.queued == 0


def test_a_call_arriving_with_less_time_left_than_calls_take_is_refused_not_computed():
    admission = Admission("m", AdmissionPolicy(limit=4))
    for _ in range(3):
        admission.enter(None).leave(0.02)  # calls take 20 ms here, and none is computing
    with pytest.raises(RequestError) as refused:
        admission.enter(time.monotonic() + 0.005)  # 5 ms left: it would answer nobody
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "left of its deadline" in refused.value.message
    assert admission.running == 0
    with admission.enter(time.monotonic() + 0.05):  # with time for it, let in at once
        assert admission.running == 1


def test_a_large_call_just_answered_does_not_refuse_the_small_calls_after_it():
    admission = Admission("m", AdmissionPolicy(limit=4))
    for _ in range(5):
        admission.enter(None).leave(0.001)  # small calls: 1 ms
    admission.enter(None).leave(2.0)  # one large call: 2 s, and the smoothed latency jumps
    # nothing computing: a small call with 20 ms left is served, as it would be in 1 ms
    with admission.enter(time.monotonic() + 0.02):
        assert admission.running == 1


def test_a_queued_call_whose_deadline_passes_is_answered_deadline_exceeded():
    admission = Admission("m", AdmissionPolicy(limit=1))
    admission.enter(None)  # taken, and never left while the other waits
    began = time.monotonic()
    with pytest.raises(RequestError) as late:
        admission.enter(time.monotonic() + 0.2)
    took = time.monotonic() - began
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.15 < took < 1.0
    assert admission.queued == 0


def test_queued_calls_are_let_in_first_come_first_served():
    admission = Admission("m", AdmissionPolicy(limit=1))
    held = admission.enter(None)
    order: list[int] = []

    def call(i: int) -> None:
        with admission.enter(time.monotonic() + 10):
            order.append(i)

    threads = []
    for i in range(4):
        thread = threading.Thread(target=call, args=(i,))
        thread.start()
        threads.append(thread)
        while admission.queued < i + 1:  # each queued before the next arrives
            time.sleep(0.001)
    held.leave(0.001)
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3]


def test_a_failed_call_frees_its_place_without_tuning_the_limit():
    admission = Admission("m", AdmissionPolicy(limit=1))
    with pytest.raises(ValueError), admission.enter(None):
        raise ValueError("bad request")
    assert admission.running == 0
    assert admission.enter(time.monotonic() + 0.001) is not None  # no latency learnt


def test_the_adaptive_limit_shrinks_when_latency_grows_and_stays_within_bounds():
    policy = AdmissionPolicy(min_limit=2, max_limit=32, initial_limit=16)
    admission = Admission("m", policy)
    for _ in range(50):  # at no load: 1 ms
        tickets = [admission.enter(None) for _ in range(int(admission.limit))]
        for ticket in tickets:
            ticket.leave(0.001)
    grown = admission.limit
    assert grown > 16, "a used limit at no-load latency grows"
    for _ in range(200):  # the same calls now take ten times as long: they queue inside
        tickets = [admission.enter(None) for _ in range(int(admission.limit))]
        for ticket in tickets:
            ticket.leave(0.01)
    assert admission.limit < grown
    assert policy.min_limit <= admission.limit <= policy.max_limit


def test_the_policy_follows_the_server_options():
    policy = AdmissionPolicy.of(
        ServerConfig(model_queue=8, admission_limit=0, admission_max_limit=64)
    )
    assert policy.max_calls == 8 and policy.max_limit == 8 and policy.limit == 0
    fixed = AdmissionPolicy.of(ServerConfig(admission_limit=3))
    assert fixed.limit == 3
    defaults = AdmissionPolicy.of(ServerConfig())
    assert defaults.max_calls >= 64 * 4, "the defaults queue 64 callers and more"
    assert ServerConfig().max_in_flight >= defaults.max_calls
