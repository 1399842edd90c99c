"""Model-call benchmark: LightGBM's predict vs the same model compiled by lleaves.

Times the two runtimes the server would call (`compile: none` and `compile: lleaves`,
`server.model_threads` threads) on 1-row and 256-row float32 batches with missing values,
after checking they agree, and prints p50/p99 and the ratios, plus the compile and cached
load times. The model is a model.txt (`--model models/fraud_lgbm/v1/model.txt`) or, by
default, a stand-in of the fraud model's shape: 38 inputs, 200 trees of up to 31 leaves,
trained with `augur train`'s LightGBM parameters.

    python -m bench.model_call [--model PATH] [--repeats 3000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from augur.modelrepo.repository import sha256_of
from augur.pipelines.train import LIGHTGBM_PARAMS
from augur.serving.runtimes.compiled_runtime import CompiledTreeRuntime
from augur.serving.runtimes.lightgbm_runtime import LightGBMRuntime
from bench.timing import stats, timed

N_INPUTS = 38
MISSING = 0.2  # share of inputs that are NaN, as for entities with no row in a view


def stand_in(path: Path, seed: int = 7) -> Path:
    """A binary LightGBM model shaped like fraud_lgbm, written to `path`."""
    import lightgbm as lgb

    x = inputs(20_000, seed)
    weights = np.random.default_rng(seed).normal(size=N_INPUTS)
    logit = np.nan_to_num(np.sign(x) * np.log1p(np.abs(x))) @ weights / 4
    y = (logit + np.random.default_rng(seed + 1).logistic(size=len(x)) > 2).astype(np.int64)
    # `augur train`'s, at one thread so training does not fight the timings
    params = {**LIGHTGBM_PARAMS, "seed": seed, "num_threads": 1}
    lgb.train(params, lgb.Dataset(x, y), num_boost_round=200).save_model(str(path))
    return path


def run(model: Path, repeats: int, threads: int, sizes=(1, 256)) -> dict:
    plain = LightGBMRuntime(model, threads)
    with tempfile.TemporaryDirectory() as cache:
        began = time.perf_counter()
        compiled = CompiledTreeRuntime(model, sha256_of(model), Path(cache), threads)
        compile_s = time.perf_counter() - began
        began = time.perf_counter()
        cached = CompiledTreeRuntime(model, sha256_of(model), Path(cache), threads)
        cached_load_ms = (time.perf_counter() - began) * 1e3
    assert cached.cache_hit and not compiled.cache_hit
    result = {
        "model": str(model),
        "trees": plain.booster.num_trees(),
        "inputs": plain.n_features,
        "threads": threads,
        "compile_s": round(compile_s, 2),
        "cached_load_ms": round(cached_load_ms, 2),
        "rows": {},
    }
    for rows in sizes:
        batch = inputs(rows, seed=rows, n_inputs=plain.n_features).astype(np.float32)
        gap = float(np.abs(plain.predict(batch) - compiled.predict(batch)).max())
        if gap > 1e-6:
            raise SystemExit(f"{rows} rows: compiled scores differ from LightGBM's by {gap}")
        lgbm = stats(timed(lambda b=batch: plain.predict(b), repeats))
        native = stats(timed(lambda b=batch: compiled.predict(b), repeats))
        result["rows"][rows] = {
            "lightgbm": lgbm,
            "lleaves": native,
            "p50_speedup": round(lgbm["p50_ms"] / native["p50_ms"], 1),
            "p99_speedup": round(lgbm["p99_ms"] / native["p99_ms"], 1),
            "max_abs_diff": gap,
        }
    return result


def inputs(rows: int, seed: int, n_inputs: int = N_INPUTS) -> np.ndarray:
    """Heavy-tailed counts and amounts, some missing, like the fraud features."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(mean=1.0, sigma=1.5, size=(rows, n_inputs))
    x[rng.random(x.shape) < MISSING] = np.nan
    return x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a LightGBM model.txt (default: stand-in)")
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or stand_in(Path(tmp) / "model.txt")
        result = run(model, args.repeats, args.threads)
    print(
        f"{result['trees']} trees, {result['inputs']} inputs, {args.threads} thread(s): "
        f"compile {result['compile_s']:.1f} s, cached load {result['cached_load_ms']:.1f} ms"
    )
    print(f"{'rows':>5} {'runtime':9} {'p50 ms':>9} {'p99 ms':>9}")
    for rows, r in result["rows"].items():
        for name in ("lightgbm", "lleaves"):
            print(f"{rows:>5} {name:9} {r[name]['p50_ms']:>9.4f} {r[name]['p99_ms']:>9.4f}")
        print(f"{'':5} {'speedup':9} {r['p50_speedup']:>8.1f}x {r['p99_speedup']:>8.1f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
