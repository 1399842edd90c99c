"""The Augur configuration file: one YAML document, typed, with environment overrides.

Every option has a default that works locally. An environment variable
AUGUR_<SECTION>__<OPTION> overrides one option, e.g. AUGUR_SERVER__PORT=7000.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ENV_PREFIX = "AUGUR_"


@dataclass
class RedisConfig:
    # "host:port[,password=...,ssl=true]" or a redis:// URL; `augur redis` runs one locally
    address: str = "127.0.0.1:6379"
    # A Redis Cluster: set, or list several seeds in address ("h1:p1,h2:p2"), as Feast's
    # redis_type: redis_cluster (docs/cluster.md); `augur redis --cluster 3` runs one locally
    cluster: bool = False
    # Cluster reads from a replica of each slot's master (READONLY): spreads read load, and
    # may answer up to the replication lag stale (docs/cluster.md, "Replica reads")
    read_from_replicas: bool = False
    connect_timeout_ms: int = 250
    read_timeout_ms: int = 500  # upper bound; a call's remaining deadline lowers it
    breaker_failures: int = 5  # consecutive failures that open the circuit to Redis
    breaker_cooldown_ms: int = 1000  # open this long, then one probe call tests Redis
    row_cache_entries: int = 0  # process-level cache of hot entities' rows; 0 turns it off
    row_cache_ttl_ms: int = 50  # a cached row is served at most this long after its read


HANDLERS = ("green", "threads")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # 0 turns the metrics endpoint off
    # How gRPC calls run. "green": as greenlets on gRPC's polling thread (augur/serving/green.py):
    # a call waiting for its request, its batch or Redis holds no thread, and the thread
    # runs other calls meanwhile. "threads": each call on a thread of a pool, start to end
    # (docs/serving.md says what each costs).
    handlers: str = "green"
    # gRPC handler threads; 0: none of its own on the green pool (gRPC's polling thread
    # runs the calls); 2 on threads (one computing while one waits on Redis), or there, with
    # batching on, one per call a batch may hold (up to max_in_flight). Set on the green
    # pool, hubs on threads of their own, fed by the polling thread; their calls' Redis
    # reads block their hub. Python work shares one GIL: more threads only contend; scale
    # with `processes` instead.
    workers: int = 0
    max_rows: int = 10_000  # entity rows per request; more is INVALID_ARGUMENT
    max_message_bytes: int = 16 * 1024 * 1024
    grace_seconds: float = 10.0  # in-flight requests get this long after SIGTERM
    model_threads: int = 1  # LightGBM / torch threads per call; gRPC threads give parallelism
    # Native code of `compile: lleaves` models. Empty: <model_repo>/.compiled, beside the
    # versions it was built from and shared by every replica and process that mounts the
    # repository, so a model compiles once rather than at each pod start. Entries are keyed
    # by artifact sha256, lleaves version and host CPU, so sharing across nodes is safe.
    compile_cache: str = ""
    watch_interval_s: float = 2.0  # poll the model repository for changes; 0 turns it off
    admin: bool = True  # serve the Admin service (routing, promote, rollback)
    admin_host: str = "127.0.0.1"  # with admin_port: Admin listens here only
    admin_port: int = 0  # 0: Admin shares the gRPC port; else its own listener (same TLS/auth)
    processes: int = 1  # server processes sharing the port (SO_REUSEPORT); ~ one per core
    batch_max_rows: int = 0  # dynamic batching: merge concurrent calls up to this many rows
    batch_max_delay_us: int = 500  # ...or the first call waited this long; none coming: at once
    reuse_port: bool = False  # set for the children by `processes`; rarely by hand
    # gRPC's own cap on calls in progress (computing or queued for admission); more get
    # RESOURCE_EXHAUSTED from gRPC itself, before Augur sees them: a memory bound, not a
    # load policy, so well above model_queue
    max_in_flight: int = 1024
    # Admission per model (augur/serving/admission.py): calls compute at most
    # admission_limit at once (0: a limit tuned from their latency, between the min and max
    # limits); the rest queue, and a call that cannot be served within its deadline given
    # the queue ahead of it is refused at once (RESOURCE_EXHAUSTED) instead of computed for
    # nobody. model_queue bounds a model's calls computing and queued together; more get
    # RESOURCE_EXHAUSTED at once.
    model_queue: int = 512
    admission_limit: int = 0
    admission_min_limit: int = 16
    admission_max_limit: int = 64
    # TLS on the gRPC port (Admin shares it): PEM paths, absolute or from the working dir
    tls_cert: str = ""  # certificate chain; with tls_key set, the port speaks TLS only
    tls_key: str = ""
    tls_client_ca: str = ""  # set: clients must show a certificate this CA signed (mTLS)

    @property
    def handler_threads(self) -> int:
        return self.threads_for(self.batch_max_rows)

    def __post_init__(self) -> None:
        if self.handlers not in HANDLERS:
            raise ConfigError(
                f"server.handlers: expected one of {', '.join(HANDLERS)}, got {self.handlers!r}"
            )

    @property
    def green(self) -> bool:
        """Whether the server runs its calls on the green pool."""
        return self.handlers == "green"

    def threads_for(self, batch_max_rows: int) -> int:
        """gRPC handler threads for a server whose largest batch is `batch_max_rows` rows."""
        if self.workers > 0:
            return self.workers
        if self.green:
            return 0  # the polling thread's
        if batch_max_rows > 0:  # a call waiting for its batch holds a thread, not the GIL
            return max(2, min(batch_max_rows, self.max_in_flight))
        return 2


@dataclass
class LoggingConfig:
    level: str = "INFO"
    json: bool = False


@dataclass
class AuthConfig:
    # Bearer tokens by caller name (`caller: token`, or a list to rotate); none: no auth.
    tokens_file: str = ""  # YAML file of callers and tokens (keeps secrets out of here)
    tokens: dict = field(default_factory=dict)  # the same inline, e.g. from AUGUR_AUTH__TOKENS
    admin_callers: list = field(default_factory=list)  # may call Admin; empty: any caller


@dataclass
class WriteConfig:
    # Rows (push, materialize) whose event time is further than this into the future are
    # refused: a row stamped in 2100 would shadow every later row of its entity (a row no
    # newer than the stored one is skipped). Allows for clock skew between hosts.
    max_future_skew_s: float = 300.0


@dataclass
class TracingConfig:
    # OpenTelemetry spans of each Predict's stages (augur/serving/tracing.py, docs/slo.md),
    # continuing the caller's W3C `traceparent`; off: no cost. Needs the `otel` extra.
    enabled: bool = False
    sample_ratio: float = 1.0  # share of traces kept (by trace id) when the caller sent none
    endpoint: str = "127.0.0.1:4317"  # an OTLP/gRPC collector
    insecure: bool = True  # plaintext to the collector (set False for TLS)
    service_name: str = "augur"

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ConfigError(
                f"tracing.sample_ratio: expected a share within [0, 1], got {self.sample_ratio!r}"
            )


@dataclass
class Config:
    feature_repo: Path = Path("examples/fraud/feature_repo")
    model_repo: Path = Path("models")
    redis: RedisConfig = field(default_factory=RedisConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    # Tenants by name: {share: of each model's admission, priority: higher shed last,
    # callers: auth caller names}; empty: one first-come queue (augur/serving/tenants.py)
    tenants: dict = field(default_factory=dict)


class ConfigError(ValueError):
    pass


def load(path: Path | str | None = None, environ: typing.Mapping[str, str] = os.environ) -> Config:
    """Read `path` (or only defaults), then apply AUGUR_* environment overrides."""
    raw: dict = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        base = path.resolve().parent
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            section, option = key[len(ENV_PREFIX) :].lower().split("__", 1)
            raw.setdefault(section, {})[option] = yaml.safe_load(value)
    config = _build(Config, raw, "")
    # Relative paths in a config file are relative to the file, not to the caller's cwd.
    config.feature_repo = (base / config.feature_repo).resolve()
    config.model_repo = (base / config.model_repo).resolve()
    for section, option in (
        ("server", "tls_cert"),
        ("server", "tls_key"),
        ("server", "tls_client_ca"),
        ("server", "compile_cache"),
        ("auth", "tokens_file"),
    ):
        value = getattr(getattr(config, section), option)
        if value:
            setattr(getattr(config, section), option, str((base / value).resolve()))
    return config


def _build(cls: type, raw: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(where + u for u in unknown))}; "
            f"known: {', '.join(sorted(where + n for n in names))}"
        )
    kwargs = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name}: expected a mapping")
            kwargs[name] = _build(kind, value, f"{where}{name}.")
        elif kind is Path:
            kwargs[name] = Path(value)
        else:
            try:
                kwargs[name] = kind(value)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{where}{name}: expected {kind.__name__}, got {value!r}"
                ) from None
    return cls(**kwargs)
