"""Torch model-call benchmark: the TorchScript MLP on CPU and on CUDA, alone and behind the
dynamic batcher.

Two parts, both in this one process, no Redis and no gRPC:

1. The model call alone (`TorchRuntime.predict`, as the server calls it) at several batch
   sizes on CPU, on CUDA running the forward, and on CUDA replaying the model's CUDA
   graphs (as the server loads it), after checking the CUDA scores equal the CPU's (1e-5).
2. Closed-loop caller threads, each scoring 1 row at a time for `--seconds`: once straight
   through the runtime (batching off: the calls queue on the model's lock) and once through
   `augur.serving.batcher.Batcher` with `make bench`'s settings (64 rows, 1 ms), which merges
   the waiting calls into one model call. Each batched answer is checked against the
   unbatched score of the same row.

The model is the family `augur train` builds (`augur.pipelines.mlp.TabularMLP`, imputation and
scaling inside) with the fraud model's 38 inputs and random weights; `--hidden` sets its
layers. CUDA parts are skipped, saying so, where torch sees no GPU.

    python -m bench.torch_call [--hidden 64,64] [--callers 64] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from augur.pipelines.mlp import TabularMLP
from augur.serving.batcher import Batcher, Call
from augur.serving.runtimes.torch_runtime import TorchRuntime
from bench.model_call import N_INPUTS, inputs
from bench.timing import stats, timed

SIZES = (1, 64, 256, 1024, 4096)
BATCH_ROWS, BATCH_DELAY_S = 64, 1e-3  # bench.batching.BATCHING


def scripted_mlp(path: Path, hidden: tuple[int, ...], seed: int = 0) -> Path:
    """A TorchScript TabularMLP with random weights, saved to `path`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    fill, center = (torch.from_numpy(rng.normal(size=N_INPUTS).astype(np.float32)) for _ in "ab")
    net = TabularMLP(fill, center, torch.ones(N_INPUTS), hidden).eval()
    torch.jit.script(net).save(str(path))
    return path


def _rows(n: int, seed: int) -> np.ndarray:
    return inputs(n, seed).astype(np.float32)


def model_call(runtimes: dict[str, TorchRuntime], repeats: int) -> dict:
    """p50/p99 of one predict per device and batch size; CUDA checked against CPU first."""
    out: dict = {}
    for rows in SIZES:
        batch = _rows(rows, seed=rows)
        cpu = runtimes["cpu"].predict(batch)
        for device in set(runtimes) - {"cpu"}:
            gap = float(np.abs(runtimes[device].predict(batch) - cpu).max())
            if gap > 1e-5:
                raise SystemExit(f"{rows} rows: {device} scores differ from CPU's by {gap}")
        n = max(20, repeats // max(1, rows // 64))  # fewer repeats of the slow CPU batches
        out[rows] = {
            device: stats(timed(lambda r=rt, b=batch: r.predict(b), n))
            for device, rt in runtimes.items()
        }
    return out


def callers(runtime: TorchRuntime, batched: bool, threads: int, seconds: float) -> dict:
    """`threads` closed-loop callers of 1 row each; calls/s, p50/p99 and calls per model call."""
    pool = _rows(1024, seed=99)
    expected = runtime.predict(pool)
    model_calls = [0]

    def run(calls: list[Call]) -> None:
        scores = runtime.predict(np.concatenate([c.extra["x"] for c in calls]))
        model_calls[0] += 1
        for i, call in enumerate(calls):
            call.result = scores[i : i + 1]

    batcher = Batcher(run, BATCH_ROWS, BATCH_DELAY_S)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    wrong = [0]
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def caller(i: int) -> None:
        rng = np.random.default_rng(i)
        mine = latencies[i]
        start.wait()
        while time.perf_counter() < stop_at[0]:
            k = int(rng.integers(len(pool)))
            row = pool[k : k + 1]
            began = time.perf_counter()
            if batched:
                with batcher.arrival() as arrival:
                    score = arrival.submit(Call({}, {"x": row}, 1, None, None))
            else:
                score = runtime.predict(row)
                model_calls[0] += 1  # racy by a few under the GIL; only a ratio is reported
            mine.append(time.perf_counter() - began)
            if not np.allclose(score, expected[k : k + 1], rtol=0, atol=1e-5):
                wrong[0] += 1

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    stop_at[0] = time.perf_counter() + seconds
    start.wait()
    for w in workers:
        w.join()
    ms = np.concatenate([np.asarray(x) for x in latencies]) * 1e3
    if wrong[0]:
        raise SystemExit(f"{wrong[0]} of {len(ms)} scores differ from the row's own score")
    return {
        "calls_per_s": round(len(ms) / seconds),
        **stats(ms),
        "calls_per_model_call": round(len(ms) / max(1, model_calls[0]), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="64,64", help="hidden layer widths (augur train's)")
    parser.add_argument("--callers", type=int, default=64, help="caller threads (64)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per caller run (3 s)")
    parser.add_argument("--repeats", type=int, default=2000, help="model calls per size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    args = parser.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = scripted_mlp(Path(tmp) / "model.pt", hidden)
        runtimes = {"cpu": TorchRuntime(path, "cpu", args.threads)}
        load_s = None
        if torch.cuda.is_available():
            runtimes["cuda"] = TorchRuntime(path, "cuda", args.threads)
            began = time.perf_counter()
            runtimes["cuda-graphs"] = TorchRuntime(path, "cuda", args.threads, N_INPUTS)
            load_s = round(time.perf_counter() - began, 2)
            if not runtimes["cuda-graphs"]._cuda.graphs:
                raise SystemExit("the model's CUDA graphs were not captured (see the log)")
        else:
            print("no CUDA device: CPU only")
    result: dict = {
        "hidden": hidden,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if "cuda" in runtimes else None,
        "graphs_load_s": load_s,
        "model_call": model_call(runtimes, args.repeats),
        "callers": {},
    }
    print(f"MLP {N_INPUTS}->{'->'.join(map(str, hidden))}->1, torch {torch.__version__}")
    if load_s is not None:
        print(f"{result['gpu']}: loading with its CUDA graphs took {load_s} s")
    print(f"{'rows':>5} {'device':11} {'p50 ms':>9} {'p99 ms':>9}")
    for rows, by_device in result["model_call"].items():
        for device, s in by_device.items():
            print(f"{rows:>5} {device:11} {s['p50_ms']:>9.4f} {s['p99_ms']:>9.4f}")
    print(f"\n{args.callers} callers of 1 row, {args.seconds:g} s each")
    print(f"{'device':11} {'batching':8} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} per model call")
    for device, runtime in runtimes.items():
        for batched in (False, True):
            r = callers(runtime, batched, args.callers, args.seconds)
            result["callers"][f"{device}-{'on' if batched else 'off'}"] = r
            print(
                f"{device:11} {'on' if batched else 'off':8} {r['calls_per_s']:>9} "
                f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['calls_per_model_call']:>14}"
            )
        on, off = (result["callers"][f"{device}-{s}"]["calls_per_s"] for s in ("on", "off"))
        print(f"{device:11} batching on / off: {on / off:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
