"""Read plans cached beside the Feast registry, so a serving process never imports Feast.

The cache is keyed by the registry file's sha256: any `feast apply` (or materialization,
which records its intervals in the registry) makes it stale, and the next process that
has Feast loaded anyway (materialize, train, or a server finding it stale) rewrites it.
Remote registries (SQL, S3, ...) are not cached: plans are compiled from Feast each start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import yaml

from augur.features.plan import PlanSet, ReadPlan

log = logging.getLogger(__name__)
CACHE_NAME = "augur-plans.json"
FORMAT = 3  # 2: views carry their packed-vector layout; 3: on-demand views, refusals


def registry_file(repo_path: Path | str) -> Path | None:
    """The local registry file named by feature_store.yaml; None for a remote registry."""
    config = Path(repo_path) / "feature_store.yaml"
    raw = yaml.safe_load(os.path.expandvars(config.read_text())) or {}
    registry = raw.get("registry", "data/registry.db")
    if isinstance(registry, dict):
        if registry.get("registry_type", "file") != "file":
            return None
        registry = registry.get("path", "")
    if not registry or "://" in str(registry):
        return None
    path = Path(registry)
    return path if path.is_absolute() else Path(repo_path) / path


def load_plans(repo_path: Path | str, redis_address: str) -> PlanSet:
    """Plans from the cache when it matches the registry, else compiled with Feast (and
    the cache rewritten where the folder is writable)."""
    cached = read_cache(repo_path)
    if cached is not None:
        for service, reason in cached.refused.items():
            log.warning("feature service %s is not served: %s", service, reason)
        return cached
    from augur.features.repo import build_plans, open_store

    log.info("compiling read plans from the Feast registry (no current plan cache)")
    plans = build_plans(open_store(repo_path, redis_address))
    write_cache(repo_path, plans)
    return plans


def read_cache(repo_path: Path | str) -> PlanSet | None:
    registry = registry_file(repo_path)
    if registry is None or not registry.is_file():
        return None
    cache = registry.with_name(CACHE_NAME)
    try:
        raw = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if raw.get("format") != FORMAT or raw.get("registry_sha256") != _sha256(registry):
        return None
    plans = {name: ReadPlan.from_json(text) for name, text in raw["plans"].items()}
    return PlanSet(plans, raw.get("refused", {}))


def write_cache(repo_path: Path | str, plans: dict[str, ReadPlan]) -> bool:
    """Best effort: a read-only repository (a mounted volume) just goes uncached."""
    registry = registry_file(repo_path)
    if registry is None or not registry.is_file():
        return False
    cache = registry.with_name(CACHE_NAME)
    body = {
        "format": FORMAT,
        "registry_sha256": _sha256(registry),
        "plans": {name: plan.to_json() for name, plan in plans.items()},
        "refused": getattr(plans, "refused", {}),
    }
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(body))
        os.replace(tmp, cache)
        return True
    except OSError as e:
        log.info("read plans not cached (%s); servers will compile them at start", e)
        tmp.unlink(missing_ok=True)
        return False


def refresh_cache(store) -> None:
    """Rewrite the cache from an open FeatureStore (after apply, materialize or train)."""
    from augur.features.repo import build_plans

    write_cache(store.repo_path, build_plans(store))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
