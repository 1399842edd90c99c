"""A Redis Cluster on loopback from the embedded server binary: N masters and N replicas,
formed with plain commands (CLUSTER MEET, ADDSLOTSRANGE, REPLICATE). For tests, `augur redis
--cluster N` and the demo; not a way to run a production cluster (infra/ has that).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

from augur.features.redis_server import EmbeddedRedis, free_port

SLOTS = 16384


class LocalCluster:
    """`with LocalCluster(3) as c: c.address` - 3 masters, 3 replicas, cluster_state:ok."""

    def __init__(
        self,
        masters: int = 3,
        replicas: bool = True,
        node_timeout_ms: int = 1000,
        data_dir: Path | None = None,
        persist: bool = False,
    ):
        if masters < 1:
            raise ValueError(f"--cluster {masters}: a cluster needs at least one master")
        self.masters_count = masters
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="augur-cluster-")).resolve()
        count = masters * (2 if replicas else 1)
        # A node's cluster bus listens on port + 10000: both must be free.
        ports = _free_ports(count)
        self.nodes = [
            EmbeddedRedis(
                port,
                self.data_dir / str(port),
                persist=persist,
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    # a replica may take over however long it was cut off (tests kill masters)
                    "--cluster-replica-validity-factor",
                    "0",
                    # keep serving the slots that still have an owner while one has none
                    "--cluster-require-full-coverage",
                    "no",
                ),
            )
            for port in ports
        ]

    @property
    def address(self) -> str:
        """The seed list, Feast's form: "h1:p1,h2:p2,..." (every master)."""
        return ",".join(n.address for n in self.nodes[: self.masters_count])

    @property
    def masters(self) -> list[EmbeddedRedis]:
        return self.nodes[: self.masters_count]

    @property
    def replicas(self) -> list[EmbeddedRedis]:
        return self.nodes[self.masters_count :]

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        try:
            # started side by side: each start waits for its server's first answer
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda node: node.start(), self.nodes))
            self._form(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, timeout_s: float) -> None:
        clients = [_client(n) for n in self.nodes]
        first = self.nodes[0]
        for c in clients[1:]:
            c.execute_command("CLUSTER", "MEET", first.host, first.port)
        m = self.masters_count
        for i, c in enumerate(clients[:m]):  # even ranges of slots, one per master
            lo, hi = i * SLOTS // m, (i + 1) * SLOTS // m - 1
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
        ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
        deadline = time.monotonic() + timeout_s
        # A replica can follow its master only once it knows the master (the gossip of MEET).
        for replica, master_id in zip(clients[m:], ids[:m], strict=False):
            while True:
                try:
                    replica.execute_command("CLUSTER", "REPLICATE", master_id)
                    break
                except redis.ResponseError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        self.wait_ok(deadline - time.monotonic())
        for c in clients:
            c.close()

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every running node says cluster_state:ok and knows every node, and every
        master that has a replica running sees it connected."""
        deadline = time.monotonic() + timeout_s
        running = [n for n in self.nodes if n.process and n.process.poll() is None]
        replicas = sum(1 for n in self.replicas if n in running)
        while True:
            if all(_ok(n, len(self.nodes), replicas) for n in running):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster on {self.address} did not reach cluster_state:ok")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _client(node: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(node.host, node.port, socket_timeout=5)


def _ok(node: EmbeddedRedis, nodes: int, replicas: int) -> bool:
    c = _client(node)
    try:
        info = c.execute_command("CLUSTER", "INFO").decode()
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        if fields.get("cluster_state") != "ok" or int(fields["cluster_known_nodes"]) < nodes:
            return False
        rows = [r.split() for r in c.execute_command("CLUSTER", "NODES").decode().splitlines()]
        # id, address, flags, master, ping, pong, epoch, link state, slots...
        following = [r for r in rows if "slave" in r[2] and "fail" not in r[2]]
        return len(following) >= replicas and all(r[7] == "connected" for r in rows)
    except redis.RedisError:
        return False
    finally:
        c.close()


def _free_ports(count: int) -> list[int]:
    """Ports free with their cluster bus ports (port + 10000)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 < 65536 and port not in ports and _bindable(port + 10000):
            ports.append(port)
    return ports


def _bindable(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
