"""The servers under test, each started as its own process on loopback: Augur, the Feast
baseline, the gRPC echo floor. Measures ready time (process start to health SERVING) and
the resident memory of every process of the server; stops what it started."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.scenarios import Scenario

ROOT = Path(__file__).resolve().parent.parent  # `python -m bench...` needs it as the cwd
# Augur as a user runs it, but for the metrics endpoint (what the floors do not pay either);
# the admission limits are the defaults, which serve 64 closed-loop callers unshed.
AUGUR_SERVER = {"metrics_port": 0}


@dataclass
class ServerProcess:
    name: str
    process: subprocess.Popen
    address: str
    log: Path
    ready_s: float = 0.0
    rss_ready_mb: dict = field(default_factory=dict)
    load: dict = field(default_factory=dict)  # more for the load generator: protocol, pools

    def rss_mb(self, peak: bool = False) -> dict[str, float]:
        """Resident memory of the server and each of its child processes, by pid, in MiB;
        with `peak`, the most each has held so far (Linux VmHWM)."""
        out = {}
        root = psutil.Process(self.process.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, OSError):
                out[str(p.pid)] = round((_peak(p.pid) if peak else p.memory_info().rss) / 2**20, 1)
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no VmHWM for process {pid}")


def augur_command(scenario: Scenario, config: Path, port: int, overrides: dict) -> list[str]:
    """`augur serve` on a config file written to `config` for the scenario (overrides:
    server options)."""
    config.write_text(
        yaml.safe_dump(
            {
                "feature_repo": str(scenario.feature_repo),
                "model_repo": str(scenario.model_repo),
                "redis": {"address": scenario.redis_address},
                "server": {**AUGUR_SERVER, **overrides, "port": port},
            }
        )
    )
    return [sys.executable, "-m", "augur.cli.main", "serve", "--config", str(config)]


def ceiling_command(scenario: Scenario, config: Path, port: int, overrides: dict) -> list[str]:
    """`augur_command`'s server with each call's read, assembly and model call answered from
    memory (bench/ceiling_server.py): what dynamic batching can approach."""
    augur = augur_command(scenario, config, port, overrides)
    return [sys.executable, "-m", "bench.ceiling_server", "--config", augur[-1]]


def baseline_command(scenario: Scenario, port: int, warm: dict) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.baseline_server",
        "--feature-repo",
        str(scenario.feature_repo),
        "--model-repo",
        str(scenario.model_repo),
        "--model",
        scenario.model,
        "--redis",
        scenario.redis_address,
        "--port",
        str(port),
        "--warm-entity",
        ",".join(f"{k}={v[0]}" for k, v in warm.items()),
    ]


def echo_command(
    scenario: Scenario, port: int, plan: Path | None = None, kind: str = "sync", workers: int = 8
) -> list[str]:
    """A gRPC echo floor on the `kind` of server (bench/echo_server.py); given the read
    `plan`, the echo + Redis round trip floor."""
    port_args = ["--port", str(port), "--model", scenario.model]
    port_args += ["--server", kind, "--workers", str(workers)]
    if plan is not None:
        port_args += ["--redis", scenario.redis_address, "--plan", str(plan)]
    return [sys.executable, "-m", "bench.echo_server", *port_args]


def start(
    name: str, command: list[str], port: int, model: str, work: Path, cwd: Path = ROOT
) -> ServerProcess:
    """Start `command` in `cwd` (first on a `python -m` server's sys.path: another checkout
    serves its own augur there) and wait until health says `model` is SERVING."""
    log = work / f"{name}.log"
    began = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    server = ServerProcess(name, process, f"127.0.0.1:{port}", log)
    try:
        wait_serving(server, model, timeout_s=240)
    except BaseException:
        server.stop()
        raise
    server.ready_s = time.perf_counter() - began
    server.rss_ready_mb = server.rss_mb()
    return server


def load_plan(
    servers: dict[str, ServerProcess],
    model: str,
    pools: dict[str, list],
    steps: list[dict],
    warmup_requests: int = 200,
    warmup_seconds: float = 2.0,
    redis_pid: int | None = None,
) -> dict:
    """What bench/load.py runs against `servers` (name -> server; a step names its server,
    else the first): warm-up, then `steps` from `pools` (row count -> requests), reading
    each server's CPU time (and Redis's, given its pid) as it goes."""
    return {
        "targets": {
            name: {"address": server.address, "server_pid": server.process.pid, **server.load}
            for name, server in servers.items()
        },
        "model": model,
        "redis_pid": redis_pid,
        "timeout_s": 10.0,
        "warmup_requests": warmup_requests,
        "warmup_seconds": warmup_seconds,
        "pools": pools,
        "steps": steps,
    }


def wait_serving(server: ServerProcess, model: str, timeout_s: float) -> None:
    """Poll health every 20 ms. Not PredictorClient.wait_serving: its channel backs off
    reconnecting (1 s and growing) while the port is still closed, which would add up to
    seconds to a measured ready time; this channel retries every 20-50 ms."""
    options = [
        ("grpc.initial_reconnect_backoff_ms", 20),
        ("grpc.min_reconnect_backoff_ms", 20),
        ("grpc.max_reconnect_backoff_ms", 50),
    ]
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(server.address, options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if server.process.poll() is not None:
                tail = server.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"{server.name} exited with code {server.process.returncode}:\n{tail}"
                )
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=model), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet, or the model is still loading
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server.name}: {model} not SERVING after {timeout_s:.0f}s")
            time.sleep(0.02)
