"""The prediction server: load plans and models, serve gRPC, drain on SIGTERM.

Health (grpc.health.v1) reports the server as "" and each model by name; reflection lets
grpcurl discover the API; the Admin service changes routing. Metrics have their own port.
The model manager keeps the served versions in step with the model repository.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from augur.api.v1 import admin_pb2, admin_pb2_grpc
from augur.api.v1 import predictor_pb2 as pb
from augur.config import Config
from augur.features.breaker import CircuitBreaker
from augur.features.connection import RedisTimeouts, check_topology, connect
from augur.features.native import native
from augur.features.plan_cache import load_plans
from augur.features.reader import OnlineReader
from augur.features.row_cache import RowCache
from augur.features.waiting import BLOCKING, Waiting
from augur.modelrepo.repository import ModelRepository
from augur.serving import metrics, oip, security, tenants, tracing
from augur.serving.admin import AdminServicer
from augur.serving.admission import AdmissionPolicy
from augur.serving.batcher import THREADS
from augur.serving.discovery import HEALTH, Health, enable_reflection
from augur.serving.green import GreenPool
from augur.serving.lifecycle import ModelManager
from augur.serving.servicer import PredictorServicer
from augur.serving.servicer import add_to_server as add_predictor
from augur.serving.supervisor import await_siblings, supervisor_pid
from augur.serving.tracing import Tracing
from augur.serving.wire import wire

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class RunningServer:
    server: grpc.Server
    health: Health
    servicer: PredictorServicer
    manager: ModelManager
    port: int
    grace_seconds: float
    admin_server: grpc.Server | None = None  # when Admin has a listener of its own
    admin_port: int = 0
    pool: futures.Executor | None = None  # the gRPC handlers' (the server does not stop it)
    tracing: Tracing | None = None  # OpenTelemetry spans, when tracing.enabled

    def stop(self) -> None:
        """Refuse new calls, let in-flight ones finish within the grace period, then stop."""
        due = time.monotonic() + self.grace_seconds
        self.health.enter_graceful_shutdown()
        if isinstance(self.pool, GreenPool):  # calls gRPC holds for it are taken, not cancelled
            self.pool.stop_taking_calls(self.grace_seconds)
        self.manager.stop()
        if self.admin_server is not None:
            self.admin_server.stop(1.0)
        self.server.stop(max(due - time.monotonic(), 0.0)).wait()
        self.servicer.feature_log.close()  # the samples of the last calls, written
        if self.pool is not None:
            self.pool.shutdown()
        if self.tracing is not None:
            self.tracing.shutdown()


def _admin_listener(config: Config, manager: ModelManager) -> tuple[grpc.Server, int]:
    """Admin on its own address (e.g. an internal interface), with the same TLS and tokens."""
    admin = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="augur-admin"),
        interceptors=security.interceptors(config.auth),
    )
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(manager), admin)
    enable_reflection([admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name], admin)
    address = f"{config.server.admin_host}:{config.server.admin_port}"
    port = security.bind(admin, config, address)
    if not port:
        raise RuntimeError(f"cannot listen on {address} (server.admin_host/admin_port)")
    admin.start()
    return admin, port


def start(config: Config, span_exporter: Any = None) -> RunningServer:
    """Serve `config`; `span_exporter`: where traced calls' spans go instead of OTLP (an
    OpenTelemetry SpanExporter, e.g. a test's in-memory one; tracing.enabled still decides)."""
    check_topology(  # one node or a cluster: Augur and the Feast repo must agree
        config.redis.address,
        config.redis.cluster,
        Path(config.feature_repo) / "feature_store.yaml",
        config.redis.read_from_replicas,
    )
    plans = load_plans(config.feature_repo, config.redis.address)  # no Feast import if cached
    repo = ModelRepository(config.model_repo)
    health_servicer = Health()

    def on_health(name: str, serving: bool) -> None:
        health_servicer.set(name, SERVING if serving else NOT_SERVING)

    compile_cache = Path(config.server.compile_cache) if config.server.compile_cache else None
    manager = ModelManager(repo, plans, config.server.model_threads, on_health, compile_cache)
    manager.refresh()
    for name in repo.names():
        if manager.route(name) is None:
            on_health(name, False)
    if not manager.routes:
        log.warning(
            "no model is serving; publish one with `augur train` (model repository %s)",
            config.model_repo,
        )

    largest = _largest_batch(config, manager)
    threads = config.server.threads_for(largest)
    green = config.server.green
    # How calls wait (for their batch, for slow work, for Redis): the pool's, handed to each
    # part that waits. A thread pool's calls simply block their threads; so do the Redis
    # reads of a green pool's own hub threads (only the polling thread watches sockets).
    pool: futures.Executor
    reads: Waiting = BLOCKING
    table = tenants.table_of(config.tenants)
    if green:  # with tenants, calls take their turns by their tenant's priority
        pool = GreenPool(threads, "augur-grpc", ranked=table is not None)
        waiting, turns = pool.waiting, pool.waiting
        if pool.on_polling_thread:
            reads = waiting
    else:
        pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="augur-grpc")
        waiting, turns = BLOCKING, THREADS

    timeouts = RedisTimeouts(
        config.redis.connect_timeout_ms / 1000, config.redis.read_timeout_ms / 1000
    )
    cache = None
    if config.redis.row_cache_entries > 0:
        cache = RowCache(config.redis.row_cache_entries, config.redis.row_cache_ttl_ms)
    store = connect(
        config.redis.address,
        timeouts,
        config.redis.cluster,
        (config.redis.breaker_failures, config.redis.breaker_cooldown_ms / 1000),
        config.redis.read_from_replicas,
    )
    reader = OnlineReader(store, cache=cache, waiting=reads)
    breaker = CircuitBreaker(config.redis.breaker_failures, config.redis.breaker_cooldown_ms / 1000)
    traced = tracing.from_config(config.tracing, span_exporter)
    servicer = PredictorServicer(
        manager,
        plans,
        reader,
        config.server.max_rows,
        breaker=breaker,
        admission=AdmissionPolicy.of(config.server),
        batch_max_rows=config.server.batch_max_rows,
        batch_max_delay_us=config.server.batch_max_delay_us,
        # on the green pool a waiting call holds no thread: no batch outgrows them
        handler_threads=0 if config.server.workers or green else threads,
        turns=turns,
        waiting=waiting,
        tracing=traced,
        tenants=table,
    )

    limit = config.server.max_message_bytes
    server = grpc.server(
        pool,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Off unless this is one of several processes meant to share the port: then
            # a second server started by mistake on a used port fails instead of splitting it.
            ("grpc.so_reuseport", int(config.server.reuse_port)),
        ],
        # Beyond this many calls in progress gRPC answers RESOURCE_EXHAUSTED at once, so an
        # overload cannot grow an unbounded queue (and memory) inside the server. Well above
        # the calls admission queues (server.model_queue): a refusal here is a call the
        # closed-loop caller sends again at once, and says nothing of deadlines.
        maximum_concurrent_rpcs=config.server.max_in_flight,
        # Bearer-token auth when auth.* names callers (health and reflection stay open).
        interceptors=security.interceptors(config.auth),
    )
    add_predictor(servicer, server)  # request bytes parsed after auth (servicer.py)
    oip.add_to_server(servicer, server, waiting)  # the Open Inference Protocol, same lanes
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", SERVING)
    services = [
        pb.DESCRIPTOR.services_by_name["Predictor"].full_name,
        HEALTH,
    ]
    admin_server, admin_port = None, 0
    if config.server.admin and not config.server.admin_port:
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(manager, waiting), server)
        services.append(admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name)
    elif config.server.admin:
        admin_server, admin_port = _admin_listener(config, manager)
    enable_reflection(services, server)
    await_siblings()  # one of several processes listens when all are loaded (supervisor.py)
    port = security.bind(server, config)  # TLS / mutual TLS when server.tls_* are set
    if not port:
        raise RuntimeError(f"cannot listen on {config.server.host}:{config.server.port}")
    # Everything alive now (Feast, torch, models, plans) lives as long as the process: move
    # it out of the collector's reach, or each full collection walks it mid-request.
    gc.collect()
    gc.freeze()
    server.start()
    manager.watch(config.server.watch_interval_s)
    if native is None:  # the same answers, more CPU per read of many entities
        log.info(
            "reads run in numpy: augur.features._native is not built here (a C compiler at "
            "install time builds it) or AUGUR_NATIVE=0"
        )
    if wire is None:  # the same answers, some 30 us more a Predict
        log.info(
            "Predict's requests and answers go through protobuf's messages: "
            "augur.serving._wire is not built here or AUGUR_NATIVE=0"
        )
    if isinstance(pool, GreenPool) and pool.on_polling_thread:
        handlers = "green pool on gRPC's polling thread"
    else:
        kind = "green pool" if green else "thread pool"
        handlers = f"{kind}, {max(threads, 1)} handler thread(s)"
    log.info(
        "serving %d model(s) on %s:%d (%s): %s",
        len(manager.routes),
        config.server.host,
        port,
        handlers,
        ", ".join(f"{n}@{r.stable.version.version}" for n, r in sorted(manager.routes.items()))
        or "none",
    )
    return RunningServer(
        server,
        health_servicer,
        servicer,
        manager,
        port,
        config.server.grace_seconds,
        admin_server,
        admin_port,
        pool,
        traced,
    )


def _largest_batch(config: Config, manager: ModelManager) -> int:
    """The most rows a batch may hold, over the server's setting and the models serving now
    (a model that turns batching on later gets the threads set here, or server.workers)."""
    own = [r.batching.max_batch_size for r in manager.routes.values() if r.batching is not None]
    return max([config.server.batch_max_rows, *own])


def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    metrics.start(config.server.metrics_host, config.server.metrics_port)
    running = start(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # A child of serve_many whose supervisor died (SIGKILL, the OOM killer) would go on
    # holding the port, its metrics served by nobody: it stops too, as if told to.
    supervisor = supervisor_pid()
    while not stop.wait(1.0):
        if supervisor is not None and os.getppid() != supervisor:
            log.error("the supervisor (pid %d) is gone; stopping", supervisor)
            break
    log.info("stopping: draining in-flight calls for up to %.1fs", running.grace_seconds)
    running.stop()
    log.info("stopped")
