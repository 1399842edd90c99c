"""`compile: auto`, the default: a LightGBM model serves on LightGBM at once, compiles its
forest in a child process once busy, and from then on scores through the compiled code,
the same scores; where compiling cannot finish it stays on LightGBM and keeps serving."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from augur.client.client import PredictorClient
from augur.modelrepo.repository import ModelRepository, ModelSpec
from augur.serving.runtimes import load_runtime
from augur.serving.runtimes.compiled_runtime import CompiledTreeRuntime
from augur.serving.runtimes.lightgbm_runtime import LightGBMRuntime
from augur.serving.runtimes.tiered_runtime import COMPILE_AFTER_ROWS, TieredTreeRuntime
from augur.serving.server import start
from tests.test_compiled_trees import N_FEATURES, _rows, _train, fraud_calls, serve_variants


def _publish(repo: ModelRepository, tmp_path, compiler: str | None = None):
    booster = _train("binary", True)
    path = tmp_path / "trees.txt"
    booster.save_model(str(path))
    spec = ModelSpec("trees", "lightgbm", "trees_service")
    if compiler is not None:
        spec = dataclasses.replace(spec, compile=compiler)
    features = {"features": [f"f{i}" for i in range(N_FEATURES)]}
    return booster, repo.publish(spec, path, features)


def _until(done, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_auto_is_the_default_and_writes_nothing_into_model_yaml(tmp_path):
    repo = ModelRepository(tmp_path / "models")
    _, version = _publish(repo, tmp_path)
    assert version.spec.compile == "auto"
    assert "compile" not in (repo.root / "trees" / "model.yaml").read_text()


def test_a_busy_model_moves_to_compiled_code_with_the_same_scores(tmp_path):
    repo = ModelRepository(tmp_path / "models")
    booster, version = _publish(repo, tmp_path)
    cache = tmp_path / "cache"
    runtime = load_runtime(version, compile_cache=cache)
    assert isinstance(runtime, TieredTreeRuntime)
    rows = _rows(1_000)
    expected = booster.predict(rows).reshape(-1, 1).astype(np.float32)

    scored = 0
    while scored < COMPILE_AFTER_ROWS - len(rows):  # short of the threshold: no compile
        np.testing.assert_array_equal(runtime.predict(rows), expected)
        scored += len(rows)
    time.sleep(0.5)
    assert not runtime.compiled and not list(cache.glob("*/*.o"))

    np.testing.assert_array_equal(runtime.predict(rows), expected)  # crosses it
    _until(lambda: runtime.compiled)
    assert runtime.predict.__self__.__class__ is CompiledTreeRuntime  # calls skip LightGBM
    np.testing.assert_array_equal(runtime.predict(rows), expected)
    one = _rows(1, seed=3)
    expected_one = booster.predict(one).reshape(1, 1).astype(np.float32)
    np.testing.assert_array_equal(runtime.predict(one), expected_one)

    again = load_runtime(version, compile_cache=cache)  # a restart: compiled from the start
    assert again.compiled
    np.testing.assert_array_equal(again.predict(rows), expected)


def test_compile_none_stays_on_lightgbm(tmp_path):
    repo = ModelRepository(tmp_path / "models")
    _, version = _publish(repo, tmp_path, "none")
    assert isinstance(load_runtime(version, compile_cache=tmp_path / "cache"), LightGBMRuntime)
    assert "compile: none" in (repo.root / "trees" / "model.yaml").read_text()


def test_where_compiling_fails_the_model_stays_on_lightgbm_and_says_why(tmp_path, caplog):
    repo = ModelRepository(tmp_path / "models")
    booster, version = _publish(repo, tmp_path)
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")  # even root cannot mkdir
    runtime = load_runtime(version, compile_cache=blocked)
    rows = _rows(COMPILE_AFTER_ROWS)
    expected = booster.predict(rows).reshape(-1, 1).astype(np.float32)

    with caplog.at_level("WARNING", logger="augur.serving.runtimes.tiered_runtime"):
        np.testing.assert_array_equal(runtime.predict(rows), expected)
        _until(lambda: "stays on LightGBM" in caplog.text)
    assert "not writable" in caplog.text and not runtime.compiled
    np.testing.assert_array_equal(runtime.predict(rows), expected)


def _compiled_gauge(model: str, version: str) -> float | None:
    """The server runs in this process: its metrics are this registry's."""
    return REGISTRY.get_sample_value("augur_model_compiled", {"model": model, "version": version})


def test_a_served_model_compiles_under_traffic_and_answers_the_same(
    fraud_repo, model_repo, tmp_path
):
    config, small, versions = serve_variants(
        fraud_repo, model_repo, tmp_path, {"auto_trees": "auto"}
    )
    version = versions["auto_trees"]
    entities, amounts = fraud_calls(500)
    users = entities["user_id"]

    running = start(config)
    try:
        with PredictorClient(f"127.0.0.1:{running.port}", timeout=10) as client:
            client.wait_ready(10)
            before = client.predict("auto_trees", entities, amounts).scores
            assert _compiled_gauge("auto_trees", version) == 0.0
            for _ in range(COMPILE_AFTER_ROWS // len(users) + 1):
                client.predict("auto_trees", entities, amounts)
            _until(lambda: _compiled_gauge("auto_trees", version) == 1.0)
            after = client.predict("auto_trees", entities, amounts).scores
    finally:
        running.stop()

    np.testing.assert_array_equal(after, before)
    assert list((tmp_path / "compiled" / small.metadata["sha256"]).glob("*.o"))


@pytest.mark.parametrize("kind", ["torch", "xgboost"])
def test_auto_means_none_for_other_kinds(tmp_path, kind):
    from augur.modelrepo.spec import parse_spec

    spec = parse_spec("m", {"kind": kind, "feature_service": "fs"}, tmp_path / "model.yaml")
    assert spec.compile == "auto"  # accepted; load_runtime compiles LightGBM only


def test_an_entry_of_another_build_is_not_loaded_and_the_model_compiles_once_busy(tmp_path):
    repo = ModelRepository(tmp_path / "models")
    booster, version = _publish(repo, tmp_path)
    cache = tmp_path / "cache"
    stale = cache / version.metadata["sha256"] / "lleaves0.9-0123456789abcdef-00.o"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"code of an older lleaves, or another CPU")
    runtime = load_runtime(version, compile_cache=cache)
    assert not runtime.compiled

    rows = _rows(COMPILE_AFTER_ROWS)
    runtime.predict(rows)
    _until(lambda: runtime.compiled)
    expected = booster.predict(rows).reshape(-1, 1).astype(np.float32)
    np.testing.assert_array_equal(runtime.predict(rows), expected)
    assert stale.exists() and len(list(stale.parent.glob("*.o"))) == 2  # its own entry beside


def test_augur_models_compile_fills_the_cache_a_server_then_starts_on(tmp_path, capsys):
    from augur.cli.main import main

    repo = ModelRepository(tmp_path / "models")
    booster, version = _publish(repo, tmp_path)
    config = tmp_path / "augur.yaml"
    config.write_text(f"model_repo: {repo.root}\nserver: {{compile_cache: {tmp_path / 'c'}}}\n")

    assert main(["models", "compile", "trees", "--config", str(config)]) == 0
    assert f"trees@{version.version}: compiled in" in capsys.readouterr().out
    assert main(["models", "compile", "trees", version.version, "--config", str(config)]) == 0
    assert "already compiled" in capsys.readouterr().out
    runtime = load_runtime(version, compile_cache=tmp_path / "c")
    assert runtime.compiled  # from its first call
    rows = _rows(100)
    expected = booster.predict(rows).reshape(-1, 1).astype(np.float32)
    np.testing.assert_array_equal(runtime.predict(rows), expected)

    path = repo.root / "trees" / "model.yaml"
    path.write_text(path.read_text().replace("kind: lightgbm", "kind: xgboost"))
    assert main(["models", "compile", "trees", "--config", str(config)]) == 1
    assert "trees is xgboost; only LightGBM compiles" in capsys.readouterr().out


def test_a_process_that_exits_while_compiling_leaves_no_compile_behind(tmp_path):
    repo = ModelRepository(tmp_path / "models")
    _publish(repo, tmp_path)
    cache = tmp_path / "cache"
    script = f"""
import numpy as np
from augur.modelrepo.repository import ModelRepository
from augur.serving.runtimes import load_runtime
runtime = load_runtime(ModelRepository({str(repo.root)!r}).resolve("trees"),
                       compile_cache=__import__("pathlib").Path({str(cache)!r}))
runtime.predict(np.zeros(({COMPILE_AFTER_ROWS}, {N_FEATURES}), np.float32))
"""  # and exits at once: the compile's child is still starting, before its PR_SET_PDEATHSIG
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parents[1], timeout=120, check=False
    )
    assert done.returncode == 0
    left = [
        pid
        for pid in filter(str.isdigit, os.listdir("/proc"))
        if str(cache).encode() in _cmdline(pid)
    ]
    assert not left, "a compile outlived the process that started it"


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""
