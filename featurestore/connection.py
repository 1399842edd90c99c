"""Redis clients for the read path: explicit timeouts and no silent retry loops.

Addresses take Feast's form ("host:port,password=...,ssl=true") or a redis:// URL.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# What makes the store unavailable to a caller: Redis down or slow, or the circuit open.
UNAVAILABLE_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError)


@dataclass(frozen=True)
class RedisTimeouts:
    connect_s: float = 0.25
    read_s: float = 0.5


def parse_address(address: str) -> dict:
    """Connection keyword arguments from a Feast-style address or a redis:// URL."""
    if address.startswith(("redis://", "rediss://", "unix://")):
        return {"url": address}
    host_port, *options = address.split(",")
    host, _, port = host_port.rpartition(":")
    kwargs: dict = {"host": host or "127.0.0.1", "port": int(port or 6379)}
    for option in options:
        name, _, value = option.partition("=")
        name = name.strip()
        if name == "password":
            kwargs["password"] = value
        elif name == "username":
            kwargs["username"] = value
        elif name == "db":
            kwargs["db"] = int(value)
        elif name == "ssl":
            kwargs["ssl"] = value.lower() == "true"
    return kwargs


def connect(address: str, timeouts: RedisTimeouts = RedisTimeouts()) -> redis.Redis:
    kwargs = parse_address(address)
    # One retry (no backoff) replaces a pooled connection that died with a Redis restart;
    # more would spend the caller's deadline on a server that is down.
    common = {
        "socket_connect_timeout": timeouts.connect_s,
        "socket_timeout": timeouts.read_s,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [redis.ConnectionError],
        "health_check_interval": 0,
    }
    if "url" in kwargs:
        return redis.Redis.from_url(kwargs["url"], **common)
    return redis.Redis(**kwargs, **common)
