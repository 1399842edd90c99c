"""A malformed model artifact whose sha256 matches its metadata (cut short, or a broken
tree_sizes header) crashes LightGBM's parser: it is loaded and warmed in a probe process
first, so the crash takes down only that process. The version is marked bad, the server
keeps serving, a restart serves too, and the version is not tried again until its files
change."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from augur.client.client import AdminClient, PredictorClient
from augur.features.redis_server import free_port
from augur.features.repo import build_plans
from augur.modelrepo.repository import ModelRepository, sha256_of
from augur.serving import probe
from augur.serving.lifecycle import ModelManager
from tests.conftest import write_config
from tests.lifecycle_helpers import publish_broken_lightgbm, publish_torch

ENTITIES = {"user_id": [1, 2, 3], "merchant_id": [1, 2, 3]}
AMOUNTS = {"amount": [10.0, 20.0, 30.0]}
CRASHED = re.compile(r"probe process that loaded \S+ was killed by SIG(SEGV|ABRT)")


class Server:
    """`augur serve` as its own process over `models`, watching it; what it logs is kept."""

    def __init__(self, fraud_repo, models: Path, tmp: Path):
        self.port, self.metrics_port = free_port(), free_port()
        self.config = write_config(
            tmp / f"augur-{self.port}.yaml",
            fraud_repo,
            models,
            port=self.port,
            metrics_port=self.metrics_port,
            watch_interval_s=0.2,
            grace_seconds=2.0,
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "augur.cli.main", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.address = f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.process.stdout:
            self.log.append(line.decode(errors="replace"))

    def loads(self, outcome: str, version: str) -> float:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ).read()
        found = re.search(
            rf'^augur_model_loads_total\{{model="fraud_lgbm",outcome="{outcome}",'
            rf'version="{version}"\}} (\S+)$',
            text.decode(),
            re.M,
        )
        return float(found[1]) if found else 0.0

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._reader.join(10)


def _error_of(admin: AdminClient, model: str, server: Server, timeout: float = 90) -> str:
    """The model's status error once it names a version marked bad; fails if the server dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process.poll() is None, "".join(server.log[-20:])
        error = admin.status(model)[0].error
        if "marked bad" in error:
            return error
        time.sleep(0.2)
    raise AssertionError(f"no version of {model} marked bad after {timeout}s")


@pytest.mark.parametrize("how", ["truncated", "tree_sizes"])
def test_a_canary_that_crashes_the_parser_is_marked_bad_and_the_stable_version_serves(
    fraud_repo, model_repo, tmp_path, how
):
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    repo = ModelRepository(models)
    broken = publish_broken_lightgbm(repo, "fraud_lgbm", how, tmp_path).version
    server = Server(fraud_repo, models, tmp_path)
    outcomes: list[str] = []
    calling = threading.Event()
    try:
        with (
            PredictorClient(server.address, timeout=10) as client,
            AdminClient(server.address) as admin,
        ):
            client.wait_serving(["fraud_lgbm", "fraud_mlp"], 120, server.process)

            def call() -> None:  # Predict on stable, back to back, while the canary loads
                while calling.is_set() and len(outcomes) < 50_000:
                    try:
                        outcomes.append(client.predict("fraud_lgbm", ENTITIES, AMOUNTS).version)
                    except grpc.RpcError as e:
                        outcomes.append(e.code().name)
                    time.sleep(0.005)

            calling.set()
            caller = threading.Thread(target=call)
            caller.start()
            try:
                repo.set_canary("fraud_lgbm", broken, 0.5)
                error = _error_of(admin, "fraud_lgbm", server)
                time.sleep(0.5)  # calls after the crash, too
            finally:
                calling.clear()
                caller.join(30)
            assert CRASHED.search(error), error
            assert f"canary: model fraud_lgbm@{broken}" in error
            assert len(outcomes) > 10 and set(outcomes) == {"v1"}, set(outcomes)
            assert server.loads("rejected", broken) == 1

            # The watch loop sees model.yaml change, and does not try the bad version again.
            repo.set_canary("fraud_lgbm", broken, 0.3)
            time.sleep(1.5)
            assert server.process.poll() is None
            assert server.loads("rejected", broken) == 1
            assert client.predict("fraud_lgbm", ENTITIES, AMOUNTS).version == "v1"
        assert server.stop() == 0
        probes = [line for line in server.log if "probe process that loaded" in line]
        assert len(probes) == 1, probes  # logged once, with its signal

        # model.yaml still names the canary: a restart serves stable and every other model.
        again = Server(fraud_repo, models, tmp_path)
        try:
            with (
                PredictorClient(again.address, timeout=10) as client,
                AdminClient(again.address) as admin,
            ):
                client.wait_serving(["fraud_lgbm", "fraud_mlp"], 120, again.process)
                assert CRASHED.search(_error_of(admin, "fraud_lgbm", again))
                for _ in range(5):
                    assert client.predict("fraud_lgbm", ENTITIES, AMOUNTS).version == "v1"
                assert client.predict("fraud_mlp", ENTITIES, AMOUNTS).scores.shape == (3, 1)
            assert again.stop() == 0
        finally:
            again.stop()
    finally:
        server.stop()


def test_a_server_whose_stable_version_crashes_the_parser_serves_its_other_models(
    fraud_repo, model_repo, tmp_path
):
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    repo = ModelRepository(models)
    broken = publish_broken_lightgbm(repo, "fraud_lgbm", "truncated", tmp_path).version
    repo.promote("fraud_lgbm", broken)
    server = Server(fraud_repo, models, tmp_path)
    try:
        with (
            PredictorClient(server.address, timeout=10) as client,
            AdminClient(server.address) as admin,
        ):
            client.wait_serving(["fraud_mlp"], 120, server.process)
            assert CRASHED.search(_error_of(admin, "fraud_lgbm", server))
            assert client.health("fraud_lgbm") == "NOT_SERVING"
            assert client.predict("fraud_mlp", ENTITIES, AMOUNTS).scores.shape == (3, 1)
            with pytest.raises(grpc.RpcError) as refused:
                client.predict("fraud_lgbm", ENTITIES, AMOUNTS)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND

            # Its other good version, once model.yaml names one, takes all the traffic.
            repo.set_canary("fraud_lgbm", "v1", 0.1)
            client.wait_serving(["fraud_lgbm"], 60, server.process)
            answer = client.predict("fraud_lgbm", ENTITIES, AMOUNTS)
            assert answer.version == "v1" and not answer.row_versions
        assert server.stop() == 0
    finally:
        server.stop()


def test_a_bad_version_is_tried_again_once_its_files_change(fraud_repo, model_repo, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    repo = ModelRepository(models)
    broken = publish_broken_lightgbm(repo, "fraud_lgbm", "tree_sizes", tmp_path)
    repo.set_canary("fraud_lgbm", broken.version, 0.5)
    manager = ModelManager(repo, build_plans(fraud_repo.store))
    manager.refresh()
    assert manager.route("fraud_lgbm").canary is None
    assert CRASHED.search(manager.errors["fraud_lgbm"])
    marked = manager.bad[("fraud_lgbm", broken.version)]
    manager.refresh()  # nothing changed: the bad version is not probed again
    assert manager.bad[("fraud_lgbm", broken.version)] is marked

    manager.watch(0.1)
    try:
        # An operator repairs the version in place: v1's bytes, and the sha256 to match.
        good = repo.resolve("fraud_lgbm", "v1").artifact
        repaired = broken.path / ".model.txt.new"
        shutil.copyfile(good, repaired)
        os.replace(repaired, broken.artifact)
        metadata = {**broken.metadata, "sha256": sha256_of(broken.artifact)}
        (broken.path / "metadata.json").write_text(json.dumps(metadata))
        deadline = time.monotonic() + 30
        while manager.route("fraud_lgbm").canary is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        manager.stop()
    assert manager.route("fraud_lgbm").canary.version.version == broken.version
    assert manager.bad == {} and "fraud_lgbm" not in manager.errors


def test_a_version_whose_warm_up_never_returns_is_killed_and_marked_bad(
    fraud_repo, model_repo, tmp_path
):
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    repo = ModelRepository(models)
    hangs = publish_torch(repo, "fraud_mlp", "hangs", tmp_path).version
    repo.set_canary("fraud_mlp", hangs, 0.5)
    # The probes' timeout leaves a version that loads room to do so on this box: three times
    # what the stable version's probe takes here, 8 s at least. A fixed 8 s killed v1 too on
    # a slow CI box (a fresh interpreter importing torch from a cold disk cache).
    timeout = max(8.0, 3 * probe.vet(repo.resolve("fraud_mlp", "v1")))
    manager = ModelManager(repo, build_plans(fraud_repo.store), probe_timeout_s=timeout)
    began = time.monotonic()
    manager.refresh()
    assert time.monotonic() - began < 5 * timeout
    route = manager.route("fraud_mlp")
    assert route.canary is None and route.stable.version.version == "v1"
    assert f"took over {timeout:.0f}s; killed it" in manager.errors["fraud_mlp"]
    assert ("fraud_mlp", hangs) in manager.bad
