"""Read plans cached beside the registry: a server starts without importing Feast."""

import json
import shutil
import subprocess
import sys

from augur.features.plan_cache import CACHE_NAME, load_plans, read_cache, registry_file
from augur.features.redis_server import free_port
from augur.features.repo import build_plans
from tests.conftest import write_config


def test_materialize_leaves_a_cache_equal_to_feasts_plans(fraud_repo):
    cached = read_cache(fraud_repo.path)
    assert cached is not None
    compiled = build_plans(fraud_repo.store)
    assert {n: p.to_json() for n, p in cached.items()} == {
        n: p.to_json() for n, p in compiled.items()
    }


def test_stale_cache_is_ignored_and_rewritten(fraud_repo):
    cache = registry_file(fraud_repo.path).with_name(CACHE_NAME)
    body = json.loads(cache.read_text())
    body["registry_sha256"] = "0" * 64  # as after a `feast apply` that changed the registry
    cache.write_text(json.dumps(body))
    assert read_cache(fraud_repo.path) is None
    plans = load_plans(fraud_repo.path, fraud_repo.address)
    assert set(plans) == {"fraud_lgbm", "fraud_mlp", "fraud_amount_context"}
    assert read_cache(fraud_repo.path) is not None


def test_server_with_a_warm_cache_never_imports_feast(fraud_repo, model_repo, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(model_repo / "fraud_lgbm", models / "fraud_lgbm")
    config = write_config(
        tmp_path / "augur.yaml", fraud_repo, models, port=free_port(), metrics_port=0
    )
    load_plans(fraud_repo.path, fraud_repo.address)  # warm
    script = (
        "import sys, time\n"
        "began = time.perf_counter()\n"
        "from augur.config import load\n"
        "from augur.serving.server import start\n"
        f"running = start(load({str(config)!r}))\n"
        "ready = time.perf_counter() - began\n"
        "print('feast' in sys.modules, running.manager.route('fraud_lgbm') is not None, ready)\n"
        "running.stop()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    feast_loaded, serving, ready = out.stdout.split()
    assert (feast_loaded, serving) == ("False", "True")
    print(f"ready in {float(ready):.2f}s from process start (LightGBM model, warm plan cache)")
