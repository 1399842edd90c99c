"""Scoring an assembled batch on remote Open Inference Protocol servers: an ordered list of
backends, each behind its own circuit breaker, tried in turn within the caller's deadline; a
retry on the next backend for UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED (never for
a refusal of the request itself), optional hedging, and a local fallback last. Not the runtime
interface (runtimes/remote.py) nor the tensors (oip_tensors.py).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable

import grpc
import numpy as np

from augur.api.oip import open_inference_pb2 as oip
from augur.features.breaker import CircuitBreaker, CircuitOpenError
from augur.modelrepo.remote_spec import BackendSpec, RemoteSpec
from augur.serving import metrics
from augur.serving.errors import RequestError
from augur.serving.oip_tensors import fp32_input, read_tensor

log = logging.getLogger(__name__)
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
_METHOD = "/inference.GRPCInferenceService/ModelInfer"
# A restarted backend is found again within a second: gRPC's default reconnect backoff grows
# to two minutes, and the breaker's probe would meet a channel still waiting it out.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]
# gRPC reports a call without a deadline as one centuries away (beyond what a timed wait
# takes): such a deadline is treated as none, each attempt within remote.attempt_timeout_ms
_NO_DEADLINE_S = 86_400.0
_HEDGE_SAMPLES = 512  # recent answers a percentile hedge delay is taken over
_HEDGE_MIN_SAMPLES = 20


class Backend:
    """One OIP server: its channel, its breaker, and its metrics."""

    def __init__(self, spec: BackendSpec, model: str, breaker: CircuitBreaker) -> None:
        self.address = spec.address
        self.model = spec.model or model
        self.version = spec.version
        self.breaker = breaker
        self.channel = grpc.insecure_channel(spec.address, options=_CHANNEL_OPTIONS)
        self.infer = self.channel.unary_unary(
            _METHOD,
            request_serializer=oip.ModelInferRequest.SerializeToString,
            response_deserializer=oip.ModelInferResponse.FromString,
        )
        self._outcomes: dict[str, object] = {}
        self._model = model
        self.latency = metrics.REMOTE_LATENCY.labels(model, spec.address)

    def counted(self, outcome: str) -> None:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = metrics.REMOTE_CALLS.labels(
                self._model, self.address, outcome
            )
        child.inc()


class BackendChain:
    """A remote model's backends in order, and its fallback (`fallback`: a batch in the
    remote feature order -> scores, or None)."""

    def __init__(
        self,
        model: str,
        remote: RemoteSpec,
        outputs: int,
        fallback: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.remote = remote
        self.outputs = outputs
        self.fallback = fallback
        cooldown_s = remote.breaker_cooldown_ms / 1000
        self.backends = [
            Backend(b, model, CircuitBreaker(remote.breaker_failures, cooldown_s))
            for b in remote.backends
        ]
        self._recent: deque[float] = deque(maxlen=_HEDGE_SAMPLES)
        self._fallbacks = metrics.REMOTE_FALLBACKS.labels(model)

    def close(self) -> None:
        for backend in self.backends:
            backend.channel.close()

    def infer(self, batch: np.ndarray, deadline: float | None) -> np.ndarray:
        """Scores (rows, outputs) of `batch` from the first backend that answers, else the
        fallback's; UNAVAILABLE or DEADLINE_EXCEEDED (naming each backend's failure) when
        neither can, the backend's own refusal when it refuses the request."""
        if deadline is not None and deadline - time.monotonic() > _NO_DEADLINE_S:
            deadline = None
        tensor, raw = fp32_input(self.remote.input, batch)
        attempt = _Attempts(self, tensor, raw, deadline)
        answer = attempt.run()
        if answer is not None:
            return answer
        if self.fallback is not None and (deadline is None or time.monotonic() < deadline):
            self._fallbacks.inc()
            return self.fallback(batch)
        late = deadline is not None and time.monotonic() >= deadline
        code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.UNAVAILABLE
        raise RequestError(
            f"model {self.model}: no backend answered ({'; '.join(attempt.failures)}); "
            f"remote.fallback names a local model that answers when none can",
            code,
        )

    def hedge_delay_s(self) -> float | None:
        """How long an attempt waits before the next backend is asked too; None: no hedging."""
        remote = self.remote
        if remote.hedge_percentile is not None and len(self._recent) >= _HEDGE_MIN_SAMPLES:
            return float(np.percentile(np.fromiter(self._recent, float), remote.hedge_percentile))
        if remote.hedge_after_ms is not None:
            return remote.hedge_after_ms / 1000
        return None

    def answered(self, response: oip.ModelInferResponse, rows: int, backend: Backend) -> np.ndarray:
        """The scores in a backend's answer: its output named remote.output, else its first."""
        outputs = list(response.outputs)
        wanted = self.remote.output
        index = next((i for i, o in enumerate(outputs) if o.name == wanted), 0 if outputs else -1)
        if index < 0 or (wanted and outputs[index].name != wanted):
            raise RuntimeError(
                f"backend {backend.address} answered no output {wanted or '(any)'}: "
                f"{[o.name for o in outputs]}"
            )
        raw = response.raw_output_contents
        try:
            values = read_tensor(outputs[index], raw[index] if raw else None, "output")
        except RequestError as e:
            raise RuntimeError(f"backend {backend.address}: {e.message}") from None
        scores = np.asarray(values, np.float32).reshape(rows, -1)
        if scores.shape[1] != self.outputs:
            raise RuntimeError(
                f"backend {backend.address} answered {scores.shape[1]} scores a row; "
                f"model {self.model} declares {self.outputs} outputs"
            )
        return scores


class _Attempts:
    """One batch's attempts: the backends in order, a hedge, until one answers."""

    def __init__(self, chain: BackendChain, tensor, raw: bytes, deadline: float | None):
        self.chain = chain
        self.tensor, self.raw = tensor, raw
        self.rows = int(tensor.shape[0])
        self.deadline = deadline
        self.untried = list(chain.backends)
        self.pending: dict[grpc.Future, tuple[Backend, float]] = {}
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.failures: list[str] = []

    def run(self) -> np.ndarray | None:
        chain = self.chain
        self._launch()
        hedge = chain.hedge_delay_s()
        while self.pending:
            wait = self._left()
            if hedge is not None and self.untried:
                wait = hedge if wait is None else min(hedge, wait)
            try:
                future = self.done.get(timeout=wait)
            except queue.Empty:
                if self._left() == 0.0:
                    self.failures.append("the caller's deadline passed")
                    break
                if hedge is not None and self.untried:
                    hedge = None  # one hedge a batch
                    if self._launch():
                        next(reversed(self.pending.values()))[0].counted("hedged")
                continue
            backend, started = self.pending.pop(future)
            error = future.exception()
            if error is None:
                took = time.perf_counter() - started
                backend.breaker.succeeded()
                backend.counted("ok")
                backend.latency.observe(took)
                chain._recent.append(took)
                self._cancel_rest()
                return chain.answered(future.result(), self.rows, backend)
            code = error.code()
            backend.counted(code.name.lower())
            if code not in RETRYABLE:
                backend.breaker.succeeded()  # it answered: the request is what it refused
                self._cancel_rest()
                raise RequestError(f"backend {backend.address}: {error.details()}", code)
            backend.breaker.failed()
            self.failures.append(f"{backend.address}: {code.name} {error.details()}")
            if not self.pending:
                self._launch()
        self._cancel_rest()
        return None

    def _left(self) -> float | None:
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.0)

    def _launch(self) -> bool:
        """Start an attempt on the next backend whose circuit lets it through."""
        while self.untried:
            backend = self.untried.pop(0)
            try:
                backend.breaker.before_call()
            except CircuitOpenError:
                backend.counted("circuit_open")
                self.failures.append(f"{backend.address}: circuit open")
                continue
            left = self._left()
            if left == 0.0:
                backend.breaker.abandoned()
                return False
            if left is None:
                timeout = self.chain.remote.attempt_timeout_ms / 1000
            else:  # what is left, shared with the backends still to try after this one
                timeout = left / (1 + len(self.untried))
            request = oip.ModelInferRequest(
                model_name=backend.model,
                model_version=backend.version,
                inputs=[self.tensor],
                raw_input_contents=[self.raw],
            )
            future = backend.infer.future(request, timeout=timeout)
            self.pending[future] = (backend, time.perf_counter())
            future.add_done_callback(self.done.put)
            return True
        return False

    def _cancel_rest(self) -> None:
        """Cancel the attempts still out; one that has finished meanwhile still gives its
        breaker a verdict (it may be the probe a half-open circuit waits on)."""
        for future, (backend, _) in self.pending.items():
            if future.cancel():
                backend.breaker.abandoned()
                backend.counted("cancelled")
                continue
            error = future.exception()
            if error is not None and error.code() in RETRYABLE:
                backend.breaker.failed()
            else:
                backend.breaker.succeeded()
        self.pending.clear()
