"""A version whose probe passed is not probed again where the same files load on the same
software: the next start, another process or a replica over the same repository loads it at
once. A failure is never recorded, and a change to anything the load depends on probes the
version again."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import yaml

from augur.features.repo import build_plans
from augur.modelrepo.repository import ModelRepository
from augur.serving.lifecycle import ModelManager
from tests.lifecycle_helpers import publish_broken_lightgbm

# No child process starts, let alone imports a framework, this fast: a manager given it
# serves only versions it has a verdict for, and marks bad every version it probes.
UNPROBEABLE_S = 0.001


def _copy(model_repo: Path, tmp_path: Path) -> ModelRepository:
    models = tmp_path / "models"
    shutil.copytree(model_repo, models, ignore=shutil.ignore_patterns(".compiled"))
    return ModelRepository(models)


def _verdicts(repo: ModelRepository) -> set[tuple[str, str]]:
    found = (repo.root / ".compiled" / "vetted").glob("*.json")
    return {(v["model"], v["version"]) for v in (json.loads(p.read_text()) for p in found)}


def test_a_version_that_passed_its_probe_loads_at_the_next_start_without_one(
    fraud_repo, model_repo, tmp_path, caplog
):
    repo = _copy(model_repo, tmp_path)
    broken = publish_broken_lightgbm(repo, "fraud_lgbm", "tree_sizes", tmp_path)
    repo.set_canary("fraud_lgbm", broken.version, 0.5)
    plans = build_plans(fraud_repo.store)
    first = ModelManager(repo, plans)
    first.refresh()
    assert ("fraud_lgbm", broken.version) in first.bad
    assert _verdicts(repo) == {("fraud_lgbm", "v1"), ("fraud_mlp", "v1")}

    caplog.set_level(logging.INFO, "augur.serving.probe")
    second = ModelManager(repo, plans, probe_timeout_s=UNPROBEABLE_S)
    second.refresh()
    for name in ("fraud_lgbm", "fraud_mlp"):
        assert second.route(name).stable.version.version == "v1"
        assert f"{name}@v1 passed a probe before, same files and software" in caplog.text
    # the version that failed is probed again, wherever it is loaded
    assert ("fraud_lgbm", broken.version) in second.bad
    assert "killed it" in second.errors["fraud_lgbm"]


def _edit_metadata(repo: ModelRepository) -> None:
    path = repo.root / "fraud_lgbm" / "v1" / "metadata.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"note": "another file"}))


def _edit_how_it_loads(repo: ModelRepository) -> None:
    path = repo.root / "fraud_lgbm" / "model.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | {"compile": "none"}))


def test_a_change_to_the_files_or_to_how_they_load_is_probed_again(
    fraud_repo, model_repo, tmp_path
):
    plans = build_plans(fraud_repo.store)
    for edit in (_edit_metadata, _edit_how_it_loads):
        repo = _copy(model_repo, tmp_path / edit.__name__)
        ModelManager(repo, plans).refresh()
        assert _verdicts(repo) == {("fraud_lgbm", "v1"), ("fraud_mlp", "v1")}
        edit(repo)
        again = ModelManager(repo, plans, probe_timeout_s=UNPROBEABLE_S)
        again.refresh()
        assert ("fraud_lgbm", "v1") in again.bad, edit.__name__
        assert again.route("fraud_mlp").stable.version.version == "v1"  # unchanged


def test_a_cache_that_cannot_be_written_costs_the_next_start_a_probe_and_nothing_else(
    fraud_repo, model_repo, tmp_path, caplog
):
    repo = _copy(model_repo, tmp_path)
    plans = build_plans(fraud_repo.store)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    caplog.set_level(logging.INFO, "augur.serving.probe")
    cache = blocked / "cache"
    first = ModelManager(repo, plans, compile_cache=cache)
    first.refresh()
    assert first.route("fraud_mlp").stable.version.version == "v1"
    assert "fraud_mlp@v1 passed its probe; not recorded" in caplog.text
    again = ModelManager(repo, plans, compile_cache=cache, probe_timeout_s=UNPROBEABLE_S)
    again.refresh()
    assert ("fraud_mlp", "v1") in again.bad
