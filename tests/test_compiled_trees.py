"""`compile: lleaves`: LightGBM models run as native code that scores exactly like LightGBM,
compiled once per artifact and then loaded from a cache that cannot serve stale code."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys

import lightgbm as lgb
import numpy as np
import pytest
import yaml

from augur.client.client import PredictorClient
from augur.features.repo import build_plans
from augur.modelrepo.repository import ModelRepository, ModelSpec, RepositoryError
from augur.serving.models import ModelLoadError, load_model
from augur.serving.runtimes import load_runtime
from augur.serving.server import start
from tests.conftest import server_config
from tests.lifecycle_helpers import publish_lightgbm_variant

N_FEATURES = 12


def _train(objective: str, missing_in_training: bool, seed: int = 0) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2_000, N_FEATURES))
    if missing_in_training:
        x[rng.random(x.shape) < 0.2] = np.nan
    signal = np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2])
    params = {
        "objective": objective,
        "num_leaves": 15,
        "verbose": -1,
        "seed": seed,
        "num_threads": 1,
    }
    if objective == "multiclass":
        params["num_class"] = 3
        y = np.digitize(signal, [-0.5, 0.5])
    else:
        y = (signal + rng.normal(scale=0.5, size=len(x)) > 0).astype(float)
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=15)


def _publish(repo: ModelRepository, booster: lgb.Booster, tmp_path, name: str = "trees"):
    path = tmp_path / f"{name}-{len(repo.versions(name)) + 1}.txt"
    booster.save_model(str(path))
    spec = ModelSpec(name, "lightgbm", "trees_service", compile="lleaves")
    return repo.publish(spec, path, {"features": [f"f{i}" for i in range(N_FEATURES)]})


def _rows(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=2.0, size=(n, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = np.nan  # missing features are NaN in normal traffic
    x[:5] = np.nan  # rows with nothing known
    x[5:10] = 0.0  # where LightGBM's zero and missing handling meet
    return x


@pytest.fixture
def repo(tmp_path) -> ModelRepository:
    return ModelRepository(tmp_path / "models")


@pytest.mark.parametrize(
    ("objective", "missing_in_training"),
    [("binary", True), ("binary", False), ("multiclass", True)],
)
def test_compiled_scores_equal_lightgbm(repo, tmp_path, objective, missing_in_training):
    booster = _train(objective, missing_in_training)
    runtime = load_runtime(_publish(repo, booster, tmp_path), compile_cache=tmp_path / "cache")

    for rows in (_rows(1_000), _rows(1, seed=2)):
        expected = booster.predict(rows).reshape(len(rows), -1)  # sigmoid / softmax applied
        scores = runtime.predict(rows)
        assert scores.dtype == np.float32 and scores.shape == expected.shape
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


def test_second_load_comes_from_the_cache_without_compiling(repo, tmp_path, monkeypatch):
    version = _publish(repo, _train("binary", True), tmp_path)
    first = load_runtime(version, compile_cache=tmp_path / "cache")
    (entry,) = (tmp_path / "cache" / version.metadata["sha256"]).glob("*.o")
    written = entry.stat()

    def no_compiling(*args, **kwargs):
        raise AssertionError("a cached model was compiled again")

    monkeypatch.setattr("lleaves.compiler.compile_to_module", no_compiling)
    second = load_runtime(version, compile_cache=tmp_path / "cache")

    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert (entry.stat().st_ino, entry.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    np.testing.assert_array_equal(second.predict(_rows(300)), first.predict(_rows(300)))


def test_a_changed_model_gets_its_own_cache_entry(repo, tmp_path):
    cache = tmp_path / "cache"
    v1, v2 = (_publish(repo, _train("binary", True, seed), tmp_path) for seed in (0, 1))
    first, second = load_runtime(v1, compile_cache=cache), load_runtime(v2, compile_cache=cache)

    assert not second.cache_hit
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        (v1.metadata["sha256"], v2.metadata["sha256"])
    )
    rows = _rows(500)
    expected = lgb.Booster(model_file=str(v2.artifact)).predict(rows)
    np.testing.assert_allclose(second.predict(rows)[:, 0], expected, rtol=0, atol=1e-6)
    assert not np.allclose(first.predict(rows), second.predict(rows))


def test_a_damaged_cache_entry_is_compiled_again_not_loaded(repo, tmp_path):
    version = _publish(repo, _train("binary", True), tmp_path)
    cache = tmp_path / "cache"
    load_runtime(version, compile_cache=cache)
    (entry,) = (cache / version.metadata["sha256"]).glob("*.o")
    damaged = bytearray(entry.read_bytes())
    damaged[len(damaged) // 2 :] = bytes(len(damaged) - len(damaged) // 2)  # same size
    entry.write_bytes(damaged)

    runtime = load_runtime(version, compile_cache=cache)

    assert not runtime.cache_hit
    (rewritten,) = (cache / version.metadata["sha256"]).glob("*.o")
    assert rewritten.read_bytes() != bytes(damaged)
    rows = _rows(200)
    expected = lgb.Booster(model_file=str(version.artifact)).predict(rows)
    np.testing.assert_allclose(runtime.predict(rows)[:, 0], expected, rtol=0, atol=1e-6)


def test_a_truncated_entry_named_by_its_own_checksum_is_not_loaded(repo, tmp_path):
    """A full disk cut the object file short before it was named: its checksum matches,
    the object does not; it is compiled again, never handed to the loader."""
    version = _publish(repo, _train("binary", True), tmp_path)
    cache = tmp_path / "cache"
    load_runtime(version, compile_cache=cache)
    (entry,) = (cache / version.metadata["sha256"]).glob("*.o")
    short = entry.read_bytes()[: entry.stat().st_size * 2 // 3]
    build = entry.name.rsplit("-", 1)[0]
    entry.unlink()
    truncated = entry.with_name(f"{build}-{hashlib.sha256(short).hexdigest()}.o")
    truncated.write_bytes(short)

    runtime = load_runtime(version, compile_cache=cache)

    assert not runtime.cache_hit
    assert not truncated.exists()
    (rewritten,) = (cache / version.metadata["sha256"]).glob("*.o")
    assert rewritten.stat().st_size > len(short)
    rows = _rows(200)
    expected = lgb.Booster(model_file=str(version.artifact)).predict(rows)
    np.testing.assert_allclose(runtime.predict(rows)[:, 0], expected, rtol=0, atol=1e-6)


def test_cache_defaults_to_a_folder_of_the_model_repository(repo, tmp_path):
    version = _publish(repo, _train("binary", True), tmp_path)
    load_runtime(version)
    assert list((repo.root / ".compiled" / version.metadata["sha256"]).glob("*.o"))
    assert repo.names() == ["trees"]  # the cache is not taken for a model


@pytest.mark.parametrize(
    ("model_yaml", "message"),
    [
        ({"compile": "llvm"}, "compile must be one of auto, none, lleaves, got 'llvm'"),
        ({"compile": False}, "compile must be one of auto, none, lleaves, got False"),
        ({"kind": "torch", "compile": "lleaves"}, "applies to kind lightgbm only, not torch"),
        ({"device": "gpu"}, "device must be cpu, cuda or cuda:<index>, got 'gpu'"),
    ],
)
def test_invalid_runtime_options_are_refused_by_name(repo, tmp_path, model_yaml, message):
    _publish(repo, _train("binary", True), tmp_path)
    path = repo.root / "trees" / "model.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **model_yaml}))
    with pytest.raises(RepositoryError, match=message) as refused:
        repo.spec("trees")
    assert str(path) in str(refused.value)


def test_compile_option_survives_every_model_yaml_rewrite(repo, tmp_path):
    _publish(repo, _train("binary", True, 0), tmp_path)
    _publish(repo, _train("binary", True, 1), tmp_path)
    retrained = dataclasses.replace(repo.spec("trees"), compile="none")  # as `augur train` does

    repo.set_canary("trees", "v2", 0.2)
    repo.rollback("trees", "guardrail")
    repo.set_shadow("trees", "v2")
    repo.promote("trees", "v2")
    repo.publish(retrained, repo.resolve("trees").artifact, {"features": ["f0"]})

    assert repo.spec("trees").compile == "lleaves"
    assert yaml.safe_load((repo.root / "trees" / "model.yaml").read_text())["compile"] == "lleaves"


def test_without_lleaves_the_load_fails_saying_what_to_install(
    model_repo, fraud_repo, tmp_path, monkeypatch
):
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    path = models / "fraud_lgbm" / "model.yaml"
    path.write_text(path.read_text() + "compile: lleaves\n")
    monkeypatch.setitem(sys.modules, "lleaves", None)  # what `import lleaves` sees uninstalled

    with pytest.raises(ModelLoadError, match=r"pip install lleaves==1\.3\.0 llvmlite==0\.44\.0"):
        load_model(ModelRepository(models), "fraud_lgbm", build_plans(fraud_repo.store))


def serve_variants(fraud_repo, model_repo, tmp_path, compilers: dict[str, str]):
    """A copy of the model repository with the fraud model's 20-tree variant published under
    each name of `compilers` with its `compile`, and a server config for it whose compile
    cache is tmp_path/compiled: (config, the variant, name -> version)."""
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    repo = ModelRepository(models)
    small = publish_lightgbm_variant(repo, "fraud_lgbm", seed=5, tmp=tmp_path)  # 20 trees
    versions = {}
    for name, compiler in compilers.items():
        spec = dataclasses.replace(small.spec, name=name, compile=compiler, aliases={})
        versions[name] = repo.publish(spec, small.artifact, small.metadata).version
    config = server_config(fraud_repo, models)
    config.server.compile_cache = str(tmp_path / "compiled")
    return config, small, versions


def fraud_calls(n_users: int) -> tuple[dict, dict]:
    """Entities and request features of n known users and one unknown (features missing)."""
    users = [*range(n_users), 987_654]
    return (
        {"user_id": users, "merchant_id": [u % 80 for u in users]},
        {"amount": [float(5 + u % 90) for u in users]},
    )


def test_served_compiled_model_answers_like_lightgbm(fraud_repo, model_repo, tmp_path):
    compilers = {"plain": "none", "compiled": "lleaves"}
    config, small, _ = serve_variants(fraud_repo, model_repo, tmp_path, compilers)
    entities, amounts = fraud_calls(300)
    users = entities["user_id"]

    running = start(config)
    try:
        with PredictorClient(f"127.0.0.1:{running.port}", timeout=10) as client:
            client.wait_ready(10)
            plain = client.predict("plain", entities, amounts)
            compiled = client.predict("compiled", entities, amounts)
    finally:
        running.stop()

    assert compiled.model == "compiled" and compiled.scores.shape == (len(users), 1)
    np.testing.assert_allclose(compiled.scores, plain.scores, rtol=0, atol=1e-6)
    assert list((tmp_path / "compiled" / small.metadata["sha256"]).glob("*.o"))
