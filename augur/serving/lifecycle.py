"""The model manager: keeps the served versions in step with the model repository.

It loads what model.yaml asks for (stable, aliases, canary, shadow) in the background,
warms each version up before it takes traffic, swaps the routing table in one assignment,
and lets go of versions nothing routes to. A version that fails to load never serves: the
model keeps its previous routing, and the error is reported. Each artifact is first loaded
and warmed in a probe process (probe.py); one that crashes or hangs there is marked bad and
not tried again until its files change. Guardrail trips end here too:
the canary is rolled back in model.yaml and traffic returns to stable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from augur.features.plan import ReadPlan
from augur.modelrepo.monitoring import log_spec
from augur.modelrepo.repository import ModelRepository, RepositoryError
from augur.serving import metrics, probe
from augur.serving.experiments import Experiment
from augur.serving.guardrails import CanaryGuard
from augur.serving.models import ArtifactRejected, ModelLoadError, ServingModel, load_model
from augur.serving.routing import Route

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(
        self,
        repo: ModelRepository,
        plans: Mapping[str, ReadPlan],
        threads: int = 1,
        on_health: Callable[[str, bool], None] = lambda name, ok: None,
        compile_cache: Path | None = None,
        probe_timeout_s: float | None = probe.TIMEOUT_S,
    ):
        self.repo = repo
        self.plans = plans
        self.threads = threads
        self.compile_cache = compile_cache
        self.probe_timeout_s = probe_timeout_s  # None: load in this process only
        self.on_health = on_health
        self.errors: dict[str, str] = {}  # model -> why its latest wanted state is not serving
        # models an operator unloaded here (OIP's RepositoryModelUnload): not served by this
        # process until loaded again, whatever the repository holds
        self.unloaded: set[str] = set()
        self._routes: dict[str, Route] = {}
        self._ended_canaries: dict[str, str] = {}  # rolled back here, whatever model.yaml says
        self._cache: dict[tuple[str, str], ServingModel] = {}
        # (model, version) -> the version's files when its probe passed / when it failed, and why
        self._vetted: dict[tuple[str, str], tuple] = {}
        self.bad: dict[tuple[str, str], tuple[tuple, str]] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def route(self, name: str) -> Route | None:
        return self._routes.get(name)

    @property
    def routes(self) -> dict[str, Route]:
        return self._routes

    def refresh(self) -> None:
        """Bring every model's routing in line with the repository."""
        with self._refresh_lock:
            routes = {}
            names = [n for n in self.repo.names() if n not in self.unloaded]
            self._vet_all(names)
            for name in names:
                route = self._build(name, self._routes.get(name))
                if route is not None:
                    routes[name] = route
            changed = [n for n in routes if routes[n] is not self._routes.get(n)]
            gone = set(self._routes) - set(routes)
            self._routes = routes  # the swap: requests pick up the new table from here on
            in_use = {(r.name, v) for r in routes.values() for v in r.versions}
            for key in set(self._cache) - in_use:
                del self._cache[key]  # unloaded: its memory goes with the last reference
            for name in changed:
                metrics.SWAPS.labels(name).inc()
                self.on_health(name, True)
            for name in gone:
                self.on_health(name, False)
            metrics.MODELS_SERVING.set(len(routes))

    def load(self, name: str) -> None:
        """Serve `name` again after `unload` (and pick up its repository state now)."""
        self.unloaded.discard(name)
        self.refresh()

    def unload(self, name: str) -> None:
        """Stop serving `name` in this process until `load`; its memory goes with it."""
        self.unloaded.add(name)
        self.refresh()

    def prepare(self, name: str, version: str) -> None:
        """Load and warm `version` before model.yaml routes to it, so a change this server
        would refuse is refused before it is written (ModelLoadError says why)."""
        self._load(name, version)

    def rollback(self, name: str, reason: str) -> None:
        """End `name`'s canary (guardrail trip or operator), record why, re-route. The
        canary stops serving here even if the record cannot be written (a read-only
        repository): until model.yaml names another canary, this one stays off."""
        route = self._routes.get(name)
        if route is not None and route.canary is not None:
            self._ended_canaries[name] = route.canary.version.version
        try:
            self.repo.rollback(name, reason)
        except (RepositoryError, OSError) as e:
            log.error(
                "rollback of %s applied in this server but not recorded in the repository: %s",
                name,
                e,
            )
        self.refresh()

    def trip(self, route: Route, guardrail: str, reason: str) -> None:
        """A guardrail tripped on a request thread: roll back off that thread."""
        version = route.canary.version.version if route.canary else ""
        metrics.ROLLBACKS.labels(route.name, version, guardrail).inc()
        log.warning("rolling back canary %s@%s: %s", route.name, version, reason)
        threading.Thread(
            target=self.rollback,
            args=(route.name, f"guardrail: {reason}"),
            name="augur-rollback",
            daemon=True,
        ).start()

    def watch(self, interval_s: float) -> None:
        """Poll the repository and refresh on any change, until `stop()`."""
        if interval_s <= 0 or self._watcher is not None:
            return
        # The baseline is taken here, not when the thread first runs: a change made right
        # after this returns (a repaired version) must differ from it, however late the
        # thread is scheduled.
        seen = self._fingerprint()
        self._watcher = threading.Thread(
            target=self._watch, args=(interval_s, seen), name="augur-repo-watch", daemon=True
        )
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)

    def _watch(self, interval_s: float, seen: tuple) -> None:
        while not self._stop.wait(interval_s):
            now = self._fingerprint()
            if now != seen:
                seen = now
                try:
                    self.refresh()
                except Exception:
                    log.exception("model refresh failed; serving continues unchanged")

    def _fingerprint(self) -> tuple:
        parts = []
        for name in self.repo.names():
            spec_file = self.repo.root / name / "model.yaml"
            try:
                stat = spec_file.stat()
                parts.append(
                    (name, stat.st_mtime_ns, stat.st_size, tuple(self.repo.versions(name)))
                )
            except OSError:
                continue
        # a bad version is tried again once its files change (the watch loop sees that here)
        parts.extend((key, _files(self.repo.root / key[0] / key[1])) for key in sorted(self.bad))
        return tuple(parts)

    def _build(self, name: str, previous: Route | None) -> Route | None:
        try:
            spec = self.repo.spec(name)
            stable_id = self.repo.default_version(spec)
        except RepositoryError as e:
            return self._keep(name, previous, str(e))
        problems = []
        try:
            stable = self._load(name, stable_id)
        except ModelLoadError as e:
            # Nothing served yet (a start): a good canary takes all traffic rather than none.
            stand_in = spec.canary.version if spec.canary and previous is None else ""
            if not isinstance(e, ArtifactRejected) or not stand_in or stand_in == stable_id:
                return self._keep(name, previous, str(e))
            try:
                stable, stable_id = self._load(name, stand_in), stand_in
            except ModelLoadError:
                return self._keep(name, previous, str(e))
            problems.append(f"stable: {e}; canary {stand_in} takes all traffic")
        versions = {stable_id: stable}
        for alias, target in spec.aliases.items():
            try:
                versions[target] = self._load(name, target)
            except ModelLoadError as e:
                problems.append(f"alias {alias}: {e}")
        canary = guard = None
        weight, sticky = 0.0, ""
        if spec.canary is None or spec.canary.version != self._ended_canaries.get(name):
            self._ended_canaries.pop(name, None)  # a new canary (or none): the record is moot
        ended = self._ended_canaries.get(name)
        if spec.canary and spec.canary.version != stable_id and spec.canary.version != ended:
            try:
                canary = self._load(name, spec.canary.version)
                versions[spec.canary.version] = canary
                weight = spec.canary.weight
                sticky = spec.canary.sticky_key or stable.plan.views[0].join_keys[0]
                if sticky not in stable.plan.entity_types:
                    raise ModelLoadError(
                        f"canary sticky_key {sticky!r} is not an entity of {spec.feature_service}"
                    )
                keep = (
                    previous
                    and previous.guard
                    and previous.canary is not None
                    and previous.canary.version.version == spec.canary.version
                    and previous.guard.limits == spec.canary.guardrails
                )
                guard = (
                    previous.guard
                    if keep
                    else CanaryGuard(
                        spec.canary.version,
                        spec.canary.guardrails,
                        canary.version.features,
                        canary.version.metadata.get("training_distribution"),
                    )
                )
            except ModelLoadError as e:
                problems.append(f"canary: {e}")
                canary, weight = None, 0.0
        experiment = None
        if spec.experiment is not None:
            try:
                experiment = Experiment.build(name, spec, stable, versions, self._load)
            except ModelLoadError as e:
                problems.append(f"experiment {spec.experiment.name}: {e}; stable answers")
        shadow = None
        threshold = 0.5
        if spec.shadow:
            try:
                shadow = self._load(name, spec.shadow.version)
                versions[spec.shadow.version] = shadow
                threshold = spec.shadow.threshold
            except ModelLoadError as e:
                problems.append(f"shadow: {e}")
        if problems:
            error = "; ".join(problems)
            if self.errors.get(name) != error:  # once, not on every refresh
                log.error("model %s: %s", name, error)
            self.errors[name] = error
        else:
            self.errors.pop(name, None)
        route = Route(
            name,
            stable,
            versions,
            dict(spec.aliases),
            canary,
            weight,
            sticky,
            guard,
            shadow,
            threshold,
            spec.batching,
            spec.on_feature_store_error,
            experiment,
            log_spec(spec.logging, stable.version.metadata),
            slo=spec.slo,
        )
        if previous is not None and previous.routes_like(route):
            return previous
        return route

    def _keep(self, name: str, previous: Route | None, error: str) -> Route | None:
        if self.errors.get(name) == error:  # said already
            return previous
        self.errors[name] = error
        log.error(
            "model %s: %s%s",
            name,
            error,
            "; still serving the previous version" if previous else "",
        )
        return previous

    def _vet_all(self, names: list[str]) -> None:
        """Probe every version model.yaml asks for that is neither loaded nor vetted, all at
        once: each probe is mostly a child's interpreter start and framework import, so a
        server with several models starts in about one probe's time, not one per version."""
        if self.probe_timeout_s is None:
            return
        wanted: dict[tuple[str, str], tuple] = {}
        for name in names:
            try:
                spec = self.repo.spec(name)
                ids = {self.repo.default_version(spec), *spec.aliases.values()}
            except RepositoryError:
                continue  # _build reports it
            if spec.remote is not None:
                continue  # no artifact to probe (its fallback is probed as it loads)
            ids |= {x.version for x in (spec.canary, spec.shadow) if x is not None}
            ids |= set(spec.experiment.arms) if spec.experiment else set()
            for version in ids:
                key = (name, version)
                files = _files(self.repo.root / name / version)
                if key in self._cache or self._vetted.get(key) == files:
                    continue
                if key not in self.bad or self.bad[key][0] != files:
                    wanted[key] = files
        if len(wanted) < 2:
            return  # one probe runs inside _load as usual
        with ThreadPoolExecutor(min(len(wanted), os.cpu_count() or 1)) as pool:
            done = {key: pool.submit(self._vet, key) for key in wanted}
        for (name, version), future in done.items():
            failure = future.result()
            if failure is None:
                self._vetted[name, version] = wanted[name, version]
            elif isinstance(failure, probe.ProbeFailed):  # _load raises it, logged there once
                why = f"model {name}@{version}: {failure}; marked bad until its files change"
                self.bad[name, version] = (wanted[name, version], why)
                metrics.MODEL_LOADS.labels(name, version, "rejected").inc()

    def _vet(self, key: tuple[str, str]) -> Exception | None:
        """Probe one version ahead of _load: None when it passed, else what went wrong (a
        repository error is left for _load to find and report as it always does)."""
        try:
            probe.vet_once(self.repo.resolve(*key), self.compile_cache, self.probe_timeout_s)
        except (probe.ProbeFailed, RepositoryError, OSError) as e:
            return e
        return None

    def _load(self, name: str, version: str) -> ServingModel:
        key = (name, version)
        model = self._cache.get(key)
        if model is not None and model.off_thread and model.version.spec != self._spec(name):
            model = None  # a remote model is its model.yaml: an edit (backends...) reloads it
        if model is None:
            files = _files(self.repo.root / name / version)
            if key in self.bad and self.bad[key][0] == files:
                raise ArtifactRejected(self.bad[key][1])  # not again: it would fail the same way
            self.bad.pop(key, None)
            # a version whose probe passed is not probed again (promote, roll back, promote)
            vetted = self._vetted.get(key) == files or self.probe_timeout_s is None
            began = time.perf_counter()
            try:
                model = load_model(
                    self.repo,
                    name,
                    self.plans,
                    self.threads,
                    version,
                    self.compile_cache,
                    None if vetted else self.probe_timeout_s,
                )
            except ArtifactRejected as e:
                # logged by the caller, once, with the model's other problems
                self.bad[key] = (files, f"{e}; marked bad until its files change")
                metrics.MODEL_LOADS.labels(name, version, "rejected").inc()
                raise ArtifactRejected(self.bad[key][1]) from e
            except ModelLoadError:
                metrics.MODEL_LOADS.labels(name, version, "failed").inc()
                raise
            self._vetted[key] = files
            metrics.MODEL_LOADS.labels(name, version, "loaded").inc()
            log.info("loaded %s@%s in %.2fs", name, version, time.perf_counter() - began)
            self._cache[key] = model
        return model

    def _spec(self, name: str):
        try:
            return self.repo.spec(name)
        except RepositoryError:
            return None


def _files(version_dir: Path) -> tuple:
    """What a version's files are now: a rewritten file has a new inode, size or mtime."""
    try:
        entries = sorted(version_dir.iterdir())
        return tuple((p.name, *_stat(p)) for p in entries)
    except OSError:
        return ()


def _stat(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
