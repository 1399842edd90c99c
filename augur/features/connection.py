"""Redis clients for the read path: explicit timeouts, credentials, TLS, no silent retry loops.

Addresses take Feast's form ("host:port,username=...,password=...,ssl=true,ssl_ca_certs=...")
or a redis:// / rediss:// URL. The option names are redis-py's, which is what Feast passes
the same string to, so one address serves Augur, `feast apply` and materialization alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from augur.features.cluster import ClusterStore

# What makes the store unavailable to a caller: Redis down or slow, or the circuit open.
# A refused login is a redis.AuthenticationError, a kind of redis.ConnectionError: included.
UNAVAILABLE_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError)

CERT_REQS = ("required", "optional", "none")


@dataclass(frozen=True)
class RedisTimeouts:
    connect_s: float = 0.25
    read_s: float = 0.5


def _flag(name: str, value: str) -> bool:
    # Feast reads values as JSON: only "true" and "false" mean the same to both readers.
    if value not in ("true", "false"):
        raise ValueError(f"Redis address option {name}={value!r}: expected true or false")
    return value == "true"


def _cert_reqs(name: str, value: str) -> str:
    if value not in CERT_REQS:
        raise ValueError(
            f"Redis address option {name}={value!r}: expected one of {', '.join(CERT_REQS)}"
        )
    return value


def _db(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Redis address option {name}={value!r}: expected an integer") from None


def _text(name: str, value: str) -> str:
    return value


_OPTIONS: dict[str, Callable[[str, str], object]] = {
    "username": _text,  # an ACL user; without it, password authenticates the default user
    "password": _text,
    "db": _db,
    "ssl": _flag,
    "ssl_ca_certs": _text,  # PEM bundle of the CA(s) to trust instead of the system's
    "ssl_certfile": _text,  # client certificate, when Redis asks for one (tls-auth-clients)
    "ssl_keyfile": _text,
    "ssl_cert_reqs": _cert_reqs,  # "required" (the default) checks the server certificate
    "ssl_check_hostname": _flag,
}


def parse_address(address: str) -> dict:
    """Connection keyword arguments from a Feast-style address or a redis:// URL. Several
    host:port items (Feast's cluster connection_string, "h1:p1,h2:p2,...") add "seeds"."""
    if address.startswith(("redis://", "rediss://", "unix://")):
        return {"url": address}
    host_port, *options = address.split(",")
    host, _, port = host_port.rpartition(":")
    kwargs: dict = {"host": host or "127.0.0.1", "port": int(port or 6379)}
    seeds = [(kwargs["host"], kwargs["port"])]
    for option in options:
        if "=" not in option and option.strip():  # another node of a cluster
            seed_host, _, seed_port = option.strip().rpartition(":")
            if not seed_port.isdigit():
                raise ValueError(f"Redis address item {option!r}: expected host:port or name=value")
            seeds.append((seed_host or "127.0.0.1", int(seed_port)))
            continue
        name, _, value = option.partition("=")
        name = name.strip()
        parse = _OPTIONS.get(name)
        if parse is None:
            raise ValueError(f"unknown Redis address option {name!r}; known: {', '.join(_OPTIONS)}")
        kwargs[name] = parse(name, value)
    if len(seeds) > 1:
        kwargs["seeds"] = seeds
    tls_options = sorted(n for n in kwargs if n.startswith("ssl_"))
    if tls_options and not kwargs.get("ssl"):
        raise ValueError(
            f"Redis address options {', '.join(tls_options)} need ssl=true (TLS is off without it)"
        )
    return kwargs


def connect(
    address: str,
    timeouts: RedisTimeouts = RedisTimeouts(),
    cluster: bool = False,
    breaker: tuple[int, float] = (5, 1.0),
    read_from_replicas: bool = False,
) -> redis.Redis | ClusterStore:
    """A client of the Redis at `address`, or of the Redis Cluster it names (several seeds,
    or `cluster`): then a ClusterStore, whose nodes each get `breaker` (failures, cooldown),
    reading from replicas if asked."""
    kwargs = parse_address(address)
    # One retry (no backoff) replaces a pooled connection that died with a Redis restart;
    # more would spend the caller's deadline on a server that is down.
    common = {
        "socket_connect_timeout": timeouts.connect_s,
        "socket_timeout": timeouts.read_s,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [redis.ConnectionError],
        "health_check_interval": 0,
        "redis_connect_func": _log_in,
    }
    if read_from_replicas and not (cluster or "seeds" in kwargs):
        raise ValueError(
            "redis.read_from_replicas needs a Redis Cluster: set redis.cluster: true or list "
            "the cluster's nodes in redis.address, or drop redis.read_from_replicas"
        )
    if "url" in kwargs:
        if cluster:
            raise ValueError(
                "redis.cluster: true needs redis.address as host:port seeds, not a URL"
            )
        return redis.Redis.from_url(kwargs["url"], **common)
    seeds = kwargs.pop("seeds", None)
    if seeds or cluster:
        from augur.features.cluster import ClusterStore

        seeds = seeds or [(kwargs["host"], kwargs["port"])]
        if kwargs.pop("db", 0):
            raise ValueError("Redis address option db: a Redis Cluster has only db 0")
        del kwargs["host"], kwargs["port"]
        return ClusterStore(seeds, {**kwargs, **common}, *breaker, read_from_replicas)
    return redis.Redis(**kwargs, **common)


def _log_in(connection: redis.connection.AbstractConnection) -> None:
    """redis-py's own handshake (AUTH, HELLO, SELECT), with a refusal that says where and who."""
    try:
        connection.on_connect()
    except redis.AuthenticationError as e:
        user = getattr(connection, "username", None) or "default"
        where = f"{getattr(connection, 'host', '?')}:{getattr(connection, 'port', '?')}"
        raise redis.AuthenticationError(
            f"Redis at {where} refused user {user!r}: {e} "
            "(check username= and password= in redis.address)"
        ) from None


def unreachable(address: str, timeout_s: float = 2.0, cluster: bool = False) -> str:
    """Why Redis at `address` cannot be used now ("" when it answers PING): for commands to
    say so in one line at start, rather than at the first read or as a traceback."""
    try:
        client = connect(address, RedisTimeouts(timeout_s, timeout_s), cluster)
    except ValueError as e:
        return f"redis.address {address!r}: {e}"
    try:
        client.ping()
        return ""
    except redis.RedisError as e:
        return f"Redis at {address} does not answer: {e}"
    finally:
        client.close()


def check_topology(
    address: str, cluster: bool, feature_store_yaml: Path, read_from_replicas: bool = False
) -> None:
    """Refuse, naming the option, an Augur setting and a Feast repo that disagree on whether
    the store is a Redis Cluster (each would write where the other never reads), replica
    reads without a cluster, and Sentinel, which Augur does not speak."""
    kind = "redis"
    if feature_store_yaml.is_file():
        online = (yaml.safe_load(feature_store_yaml.read_text()) or {}).get("online_store")
        if isinstance(online, dict):
            kind = str(online.get("redis_type") or "redis")
    if kind == "redis_sentinel":
        raise ValueError(
            f"{feature_store_yaml}: online_store.redis_type: redis_sentinel is not supported "
            "by Augur; use redis (one node) or redis_cluster"
        )
    seeds = not address.startswith(("redis://", "rediss://", "unix://")) and "seeds" in (
        parse_address(address)
    )
    if kind == "redis_cluster" and not (cluster or seeds):
        raise ValueError(
            f"{feature_store_yaml} says redis_type: redis_cluster but redis.address "
            f"{address!r} names one node: set redis.cluster: true or list the cluster's nodes"
        )
    if read_from_replicas and kind != "redis_cluster":
        raise ValueError(
            f"redis.read_from_replicas needs a Redis Cluster, and {feature_store_yaml} has "
            f"redis_type: {kind}: drop redis.read_from_replicas"
        )
    if kind != "redis_cluster" and (cluster or seeds):
        option = "redis.cluster" if cluster else f"redis.address {address!r} (several nodes)"
        raise ValueError(
            f"{option} says Redis Cluster but {feature_store_yaml} has redis_type: {kind}: "
            "set online_store.redis_type: redis_cluster there, or give one node"
        )
