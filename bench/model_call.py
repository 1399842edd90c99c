"""Model-call benchmark: every kind's Augur runtime against its framework's own predict.

Times the runtimes the server would call (`server.model_threads` threads) on 1-row and
256-row float32 batches with missing values, after checking each agrees with its framework
to 1e-6, and prints p50/p99, rows/s and the ratios: LightGBM (`compile: none` and
`compile: lleaves`, with compile and cached load times), XGBoost, CatBoost, ONNX Runtime
and torch.export. Then LightGBM's 1-row p99 alone, with every Augur runtime loaded and
called in the same process, and with the frameworks' own defaults called too (each in a
process of its own): thread pools of several libraries in one process can crowd it.
The LightGBM model is a model.txt (`--model models/fraud_lgbm/v1/model.txt`) or, by
default, a stand-in of the fraud model's shape: 38 inputs, 200 trees of up to 31 leaves,
trained with `augur train`'s LightGBM parameters; the others are bench/model_kinds.py's.

    python -m bench.model_call [--model PATH] [--repeats 3000] [--threads 1] [--kinds ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from augur.modelrepo.repository import sha256_of
from augur.pipelines.train import LIGHTGBM_PARAMS
from augur.serving.runtimes.compiled_runtime import CompiledTreeRuntime
from augur.serving.runtimes.lightgbm_runtime import LightGBMRuntime
from bench.model_kinds import BUILDERS, training_rows
from bench.timing import stats, timed, timed_together

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


def augur_runtime(kind: str, path: Path, threads: int, n_inputs: int):
    """The runtime the server builds for a `kind` model (augur/serving/runtimes)."""
    if kind == "xgboost":
        from augur.serving.runtimes.xgboost_runtime import XGBoostRuntime

        return XGBoostRuntime(path, threads)
    if kind == "catboost":
        from augur.serving.runtimes.catboost_runtime import CatBoostRuntime

        return CatBoostRuntime(path, threads)
    if kind == "onnx":
        from augur.serving.runtimes.onnx_runtime import OnnxRuntime

        return OnnxRuntime(path, "cpu", threads, tuple(f"f{i}" for i in range(n_inputs)))
    from augur.serving.runtimes.torch_runtime import TorchRuntime

    return TorchRuntime(path, "cpu", threads, n_inputs)


def build_kinds(tmp: Path, kinds, threads: int) -> dict:
    """kind -> (Augur's runtime, the framework's own predict) for stand-ins of each kind."""
    x, y = training_rows(N_INPUTS)
    built = {}
    for kind in kinds:
        folder = tmp / kind
        folder.mkdir()
        path, own = BUILDERS[kind](folder, x, y)
        built[kind] = (augur_runtime(kind, path, threads, N_INPUTS), own)
    return built


def run_kinds(built: dict, repeats: int, sizes=(1, 256)) -> dict:
    """Per kind and batch size: Augur's runtime and the framework's predict, timed in
    alternating turns (bench/timing.py), after checking they agree to 1e-6."""
    result = {}
    for kind, (runtime, own) in built.items():
        result[kind] = {}
        for rows in sizes:
            batch = inputs(rows, seed=rows).astype(np.float32)
            gap = float(np.abs(runtime.predict(batch).ravel() - np.ravel(own(batch))).max())
            if gap > 1e-6:
                raise SystemExit(
                    f"{kind}, {rows} rows: scores differ from its framework's by {gap}"
                )
            calls = {
                "augur": lambda b=batch, f=runtime.predict: f(b),
                "framework": lambda b=batch, f=own: f(b),
            }
            ms = timed_together(calls, repeats)
            r = {
                name: {**stats(t), "rows_per_s": round(rows * 1e3 / float(np.median(t)))}
                for name, t in ms.items()
            }
            r["p50_speedup"] = round(r["framework"]["p50_ms"] / r["augur"]["p50_ms"], 2)
            r["max_abs_diff"] = gap
            result[kind][rows] = r
    return result


def interference(mode: str, repeats: int, threads: int) -> dict:
    """LightGBM's 1-row p50/p99 alone, then again after every other kind was loaded and
    called in this process: through Augur's runtimes (`augur`), or also through the
    frameworks' own defaults (`defaults`: all cores, spinning pools)."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = LightGBMRuntime(stand_in(Path(tmp) / "model.txt"), threads)
        one = inputs(1, seed=1).astype(np.float32)
        alone = stats(timed(lambda: plain.predict(one), repeats))
        built = build_kinds(Path(tmp), list(BUILDERS), threads)
        for runtime, own in built.values():
            for rows in (1, 256):
                batch = inputs(rows, seed=rows).astype(np.float32)
                for _ in range(50):
                    runtime.predict(batch)
                    if mode == "defaults":
                        own(batch)
        loaded = stats(timed(lambda: plain.predict(one), repeats))
    return {
        "mode": mode,
        "alone": alone,
        "all_loaded": loaded,
        "p99_ratio": round(loaded["p99_ms"] / alone["p99_ms"], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a LightGBM model.txt (default: stand-in)")
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kinds", nargs="*", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument("--interference", choices=("augur", "defaults"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.interference:  # the child process of one interference measurement
        print(json.dumps(interference(args.interference, args.repeats, args.threads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or stand_in(Path(tmp) / "model.txt")
        result = run(model, args.repeats, args.threads)
        kinds = run_kinds(build_kinds(Path(tmp), args.kinds, args.threads), args.repeats)
    print(
        f"{result['trees']} trees, {result['inputs']} inputs, {args.threads} thread(s): "
        f"compile {result['compile_s']:.1f} s, cached load {result['cached_load_ms']:.1f} ms"
    )
    print(f"{'rows':>5} {'runtime':9} {'p50 ms':>9} {'p99 ms':>9}")
    for rows, r in result["rows"].items():
        for name in ("lightgbm", "lleaves"):
            print(f"{rows:>5} {name:9} {r[name]['p50_ms']:>9.4f} {r[name]['p99_ms']:>9.4f}")
        print(f"{'':5} {'speedup':9} {r['p50_speedup']:>8.1f}x {r['p99_speedup']:>8.1f}x")
    print(f"\n{'kind':9} {'rows':>5} {'called by':10} {'p50 ms':>9} {'p99 ms':>9} {'rows/s':>10}")
    for kind, by_rows in kinds.items():
        for rows, r in by_rows.items():
            for name in ("augur", "framework"):
                t = r[name]
                print(
                    f"{kind:9} {rows:>5} {name:10} {t['p50_ms']:>9.4f} {t['p99_ms']:>9.4f} "
                    f"{t['rows_per_s']:>10,}"
                )
            print(f"{'':9} {'':5} {'p50 ratio':10} {r['p50_speedup']:>8.2f}x")
    result["kinds"] = kinds
    result["interference"] = []
    for mode in ("augur", "defaults"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.model_call",
                "--interference",
                mode,
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        got = json.loads(done.stdout.strip().splitlines()[-1])
        result["interference"].append(got)
        print(
            f"LightGBM 1-row p99, {mode:8}: alone {got['alone']['p99_ms']:.4f} ms, "
            f"all kinds loaded {got['all_loaded']['p99_ms']:.4f} ms ({got['p99_ratio']}x)"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
