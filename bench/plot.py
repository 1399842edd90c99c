"""The harness run's latency-vs-throughput plot: one panel per request size, every server of
the main series."""

from __future__ import annotations

from pathlib import Path

from bench.compare import LABELS, TARGETS


def plot(result: dict, path: Path) -> bool:
    """Latency against throughput, one panel per request size; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted({s["rows"] for steps in result["series"].values() for s in steps})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), squeeze=False)
    colors = {"augur": "tab:blue", "baseline": "tab:red", "echo": "tab:gray"}
    for ax, rows in zip(axes[0], sizes, strict=True):
        for target in TARGETS:
            steps = [s for s in result["series"].get(target, []) if s["rows"] == rows]
            closed = [s for s in steps if s["mode"] == "closed" and "p50_ms" in s]
            opened = [s for s in steps if s["mode"] == "open" and "p99_ms" in s]
            c = colors[target]
            x = [s["throughput_rps"] for s in closed]
            name = LABELS[target]
            ax.plot(x, [s["p50_ms"] for s in closed], "o-", color=c, label=f"{name} p50")
            p99 = [s["p99_ms"] for s in closed]
            ax.plot(x, p99, "o--", color=c, alpha=0.6, label=f"{name} p99")
            for s in closed:
                ax.annotate(f"c={s['concurrency']}", (s["throughput_rps"], s["p50_ms"]), size=7)
            ax.plot(
                [s["throughput_rps"] for s in opened],
                [s["p99_ms"] for s in opened],
                "^",
                color=c,
                label=f"{name} p99, open loop",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("answered requests/s")
        ax.set_ylabel("latency, ms")
        ax.set_title(
            f"{result['scenario']}: Predict, {rows} entity row(s) per request\n"
            "closed loop (c = callers): p50 solid, p99 dashed; open loop: triangles"
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
