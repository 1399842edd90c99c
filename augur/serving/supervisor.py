"""Several server processes on one port: SO_REUSEPORT spreads connections over them.

Python serves one request at a time per process (the GIL), so one process per core is
how a replica uses its cores. This supervisor starts `server.processes` children sharing
the gRPC port, serves their metrics aggregated (Prometheus multiprocess mode) on the
metrics port, forwards SIGTERM so each child drains, and exits when they have. A child that
dies once the replica serves is started again, after a growing pause, while its siblings
serve; only children that keep dying end the replica.

The children listen together: each loads its models, says so, and binds the port only
once every sibling has. The kernel hashes a new connection to one of the sockets
listening at that moment, and gRPC clients keep their connections, so a process that
listened first would keep every connection a client opened as soon as the replica
answered: on a 16-core machine, 2 processes served 64 callers on 16 connections no faster
than 1 (bench/README.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from augur.config import Config

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Both names prometheus_client reads; importing Feast sets both (feast.metrics, for its own
# feature server's workers), and every process started from that one inherits them.
_MULTIPROC_VARS = (MULTIPROC_ENV, "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir")
# Set for the children of serve_many, and only for them: the supervisor's pid.
CHILD_ENV = "AUGUR_SUPERVISED"
# Set for the children of serve_many: "<ready fd>,<go fd>", the two ends of the start gate
START_GATE_ENV = "AUGUR_START_GATE"
TERMINATED = 143  # `augur`'s exit on SIGTERM before `serve` installs its drain handler
# What Feast names the directory its import makes up when none is set (feast.metrics): a
# temporary folder it removes at exit, not one an operator chose.
_FEAST_DIR_PREFIX = "feast_metrics_"
# A dead child starts again after RESTART_FIRST_S, doubling per death to RESTART_MAX_S; a
# child that lived RESTART_RESET_S had recovered, and the next death waits RESTART_FIRST_S.
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 10.0
RESTART_RESET_S = 60.0
# More deaths than this within DEATHS_WINDOW_S: the processes cannot stay up (a bad host, a
# leak that kills each in turn), and restarting them here would hide it from the orchestrator.
MAX_DEATHS = 5
DEATHS_WINDOW_S = 120.0


def metrics_in_memory() -> None:
    """Keep this server process's metrics in memory unless serve_many started it. Call before
    prometheus_client is imported.

    An inherited PROMETHEUS_MULTIPROC_DIR (typically Feast's, from a parent that imported
    Feast) would make prometheus_client write every update to a file in someone else's
    directory: a lock, a pid check and an mmap write per update, 15-20% of a busy server's
    throughput (measured with 64 callers), for an aggregation nobody reads, since a lone
    process serves its own metrics."""
    if supervisor_pid() is not None:
        return
    for name in _MULTIPROC_VARS:
        inherited = os.environ.pop(name, None)
        if inherited is not None:
            log.info(
                "ignoring %s=%s: a lone server process keeps metrics in memory", name, inherited
            )


def await_siblings() -> None:
    """In a child of serve_many: say this process is ready to listen, and return once every
    sibling is too (at once in a process that runs alone)."""
    gate = os.environ.pop(START_GATE_ENV, None)  # not for anything this process starts
    if not gate:
        return
    ready, go = (int(fd) for fd in gate.split(","))
    os.write(ready, b"r")
    os.close(ready)
    opened = os.read(go, 1)
    os.close(go)
    if not opened:  # closed unopened: a sibling died starting, and the replica is stopping
        raise RuntimeError("a sibling server process failed to start; not listening")


def _open_gate(ready: int, go: int, processes: int, port: int, listening: threading.Event) -> None:
    """Let the children listen once all have said they are ready. A child that dies first
    closes its end unwritten: the gate then closes unopened, and the supervisor's loop
    stops the replica."""
    said = 0
    while said < processes:
        chunk = os.read(ready, processes - said)
        if not chunk:  # every copy of the write end closed
            break
        said += len(chunk)
    else:
        os.write(go, b"g" * processes)  # a pipe's buffer holds these few bytes
        listening.set()
        log.info("all %d server processes loaded; listening on port %d", processes, port)
    os.close(ready)
    os.close(go)


def supervisor_pid() -> int | None:
    """The pid of the serve_many that started this process; None when it runs alone."""
    value = os.environ.get(CHILD_ENV, "")
    return int(value) if value.isdigit() else None


def serve_many(config: Config, config_path: Path | None) -> int:
    chosen = _operators_dir()
    own_dir = chosen is None
    metrics_dir = chosen or Path(tempfile.mkdtemp(prefix="augur-metrics-"))
    for stale in metrics_dir.glob("*.db"):  # counters of an earlier run must not add up
        stale.unlink()
    env = {
        **os.environ,
        MULTIPROC_ENV: str(metrics_dir),
        CHILD_ENV: str(os.getpid()),
        "AUGUR_SERVER__PROCESSES": "1",
        "AUGUR_SERVER__REUSE_PORT": "true",
        "AUGUR_SERVER__METRICS_PORT": "0",
    }
    os.environ[MULTIPROC_ENV] = str(metrics_dir)  # before prometheus_client is imported here
    _serve_metrics(config)

    command = [sys.executable, "-m", "augur.cli.main", "serve"]
    if config_path is not None:
        command += ["--config", str(config_path)]
    stopping = threading.Event()
    children: list[subprocess.Popen] = []

    def stop(*_: object) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    # Before the first child starts: a SIGTERM while they start must reach them, not end
    # this process by the CLI's handler (143) and leave them to notice on their own.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    env[START_GATE_ENV] = f"{ready_w},{go_r}"
    for _ in range(config.server.processes):
        children.append(subprocess.Popen(command, env=env, pass_fds=(ready_w, go_r)))
        if stopping.is_set():  # stopped while this one started: it is told now
            stop()
    os.close(ready_w)  # the children's copies are the ones the gate counts
    os.close(go_r)
    listening = threading.Event()  # the replica has served: from here a dead child restarts
    threading.Thread(
        target=_open_gate,
        args=(ready_r, go_w, len(children), config.server.port, listening),
        name="augur-start-gate",
        daemon=True,
    ).start()
    log.info(
        "started %d server processes on port %d: pids %s",
        len(children),
        config.server.port,
        ", ".join(str(c.pid) for c in children),
    )

    restart_env = {k: v for k, v in env.items() if k != START_GATE_ENV}  # siblings listen
    try:
        code = _watch(
            children, stopping, listening, stop, lambda: subprocess.Popen(command, env=restart_env)
        )
    finally:
        from prometheus_client import multiprocess

        for child in children:
            multiprocess.mark_process_dead(child.pid)
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return code or max(_exit_code(c.returncode, stopping.is_set()) for c in children)


def _watch(
    children: list[subprocess.Popen],
    stopping: threading.Event,
    listening: threading.Event,
    stop: Callable[[], None],
    start_child: Callable[[], subprocess.Popen],
) -> int:
    """Until every child has exited: start a child that died again (in its slot of
    `children`), after a pause that grows while children keep dying; 1 if they died too
    often and the replica was stopped, else 0."""
    started = [time.monotonic()] * len(children)
    pause = [RESTART_FIRST_S] * len(children)
    restart_at: list[float | None] = [None] * len(children)
    deaths: deque[float] = deque()
    code = 0
    while any(c.poll() is None for c in children) or (
        not stopping.is_set() and any(t is not None for t in restart_at)
    ):
        now = time.monotonic()
        for slot, child in enumerate(children):
            if stopping.is_set() or child.poll() is None:
                continue
            if restart_at[slot] is None:
                if not listening.is_set():
                    # Before the replica first listened: a start that failed (a bad config,
                    # no Redis) fails again; end it all as the start gate does.
                    log.error(
                        "server process %d exited with %d while starting; stopping the others",
                        child.pid,
                        child.returncode,
                    )
                    code = 1 if child.returncode else code
                    stop()
                    break
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(child.pid)  # its live gauges go with it
                deaths.append(now)
                while deaths and deaths[0] < now - DEATHS_WINDOW_S:
                    deaths.popleft()
                if len(deaths) > MAX_DEATHS:
                    log.error(
                        "server process %d %s: %d server processes died within %.0fs (more "
                        "than %d); the replica cannot keep them up, so it stops for its "
                        "orchestrator to replace it",
                        child.pid,
                        _how(child.returncode),
                        len(deaths),
                        DEATHS_WINDOW_S,
                        MAX_DEATHS,
                    )
                    code = 1
                    stop()
                    break
                if now - started[slot] >= RESTART_RESET_S:
                    pause[slot] = RESTART_FIRST_S  # it had recovered: a fresh start
                restart_at[slot] = now + pause[slot]
                log.error(
                    "server process %d %s after %.1fs; starting another in %.1fs while the "
                    "others serve",
                    child.pid,
                    _how(child.returncode),
                    now - started[slot],
                    pause[slot],
                )
                pause[slot] = min(pause[slot] * 2, RESTART_MAX_S)
            elif now >= restart_at[slot]:
                children[slot] = start_child()
                started[slot], restart_at[slot] = now, None
                if stopping.is_set():  # stopped while it started: it is told now
                    stop()
                log.info("started server process %d in place of %d", children[slot].pid, child.pid)
        time.sleep(0.2)
    return code


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with {returncode}"


def _exit_code(returncode: int | None, stopped: bool) -> int:
    """A child's exit as the replica's. After a requested stop, a child the SIGTERM caught
    still starting (it exits as the CLI does on SIGTERM, 143, or by the signal itself) had
    no calls to drain: that is a clean stop too, not a failure to report."""
    if stopped and returncode in (TERMINATED, -signal.SIGTERM):
        return 0
    return returncode or 0


def _operators_dir() -> Path | None:
    """The multiprocess directory the operator set, if any. Feast's (inherited from a parent
    that imported Feast) is not one: Feast removes it when that parent exits, and files of
    its own may be in it, which serve_many would delete as stale."""
    value = os.environ.get(MULTIPROC_ENV)
    if not value:
        return None
    if Path(value).name.startswith(_FEAST_DIR_PREFIX):
        log.info(
            "ignoring %s=%s, made up by Feast's import; using a directory of our own",
            MULTIPROC_ENV,
            value,
        )
        return None
    return Path(value)


def _serve_metrics(config: Config) -> None:
    if not config.server.metrics_port:
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(
        config.server.metrics_port, addr=config.server.metrics_host, registry=registry
    )
