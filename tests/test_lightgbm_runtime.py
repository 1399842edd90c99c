"""The LightGBM runtime's one-row path (LightGBM's single-row fast C entry points) gives
LightGBM's own scores: binary and multiclass models, rows with missing values, and calls
from several threads at once (one takes the fast path, the others LightGBM's predictor)."""

from __future__ import annotations

import threading

import lightgbm as lgb
import numpy as np
import pytest

from augur.serving.runtimes.lightgbm_runtime import LightGBMRuntime
from tests.runtime_models import hard_rows, train_rows


@pytest.fixture(scope="module", params=["binary", "multiclass"])
def model(request, tmp_path_factory):
    x, y = train_rows(12, rows=1_500)
    params = {"objective": request.param, "verbose": -1, "num_leaves": 15}
    if request.param == "multiclass":
        params["num_class"] = 3
        y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=40)
    path = tmp_path_factory.mktemp(request.param) / "model.txt"
    booster.save_model(str(path))
    return path, lgb.Booster(model_file=str(path))


def test_one_row_at_a_time_equals_lightgbms_own_predict(model):
    path, booster = model
    runtime = LightGBMRuntime(path)
    rows = hard_rows(12, rows=300)
    expected = np.asarray(booster.predict(rows), np.float32).reshape(len(rows), -1)

    one_by_one = np.concatenate([runtime.predict(rows[i : i + 1]) for i in range(len(rows))])

    assert one_by_one.dtype == np.float32 and one_by_one.shape == expected.shape
    np.testing.assert_array_equal(one_by_one, expected)
    np.testing.assert_array_equal(runtime.predict(rows), expected)  # the batch path


def test_one_row_calls_from_several_threads_all_get_their_own_rows_scores(model):
    path, booster = model
    runtime = LightGBMRuntime(path)
    rows = hard_rows(12, rows=200, seed=3)
    expected = np.asarray(booster.predict(rows), np.float32).reshape(len(rows), -1)
    wrong: list[int] = []

    def caller(offset: int) -> None:
        for _ in range(5):
            for i in range(offset, len(rows), 4):
                if not np.array_equal(runtime.predict(rows[i : i + 1])[0], expected[i]):
                    wrong.append(i)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert not any(t.is_alive() for t in threads)
    assert wrong == []
