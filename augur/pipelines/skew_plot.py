"""The skew report as a PNG (`augur skew --plot`): per feature, the share of served values
that differ from offline and the PSI against training, each beside its threshold. Not the
report itself (augur/pipelines/skew.py). Needs matplotlib: the `skew` extra."""

from __future__ import annotations

import math
from pathlib import Path

from augur.pipelines.skew import SkewReport

EXTRA = "pip install 'augur[skew]'"


def plot(report: SkewReport, path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(f"--plot needs matplotlib: {EXTRA}") from None
    features = [f.feature for f in report.features]
    limits = report.thresholds
    height = max(3.0, 0.22 * len(features) + 1.5)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, height), sharey=True)
    rows = range(len(features))
    mismatch = [0.0 if math.isnan(f.mismatch) else f.mismatch for f in report.features]
    psi = [0.0 if math.isnan(f.psi) else f.psi for f in report.features]
    left.barh(rows, mismatch, color=[_color(v > limits.max_mismatch) for v in mismatch])
    left.axvline(limits.max_mismatch, color="black", linestyle="--", linewidth=1)
    left.set_xlabel(f"share served != offline (max_mismatch {limits.max_mismatch:.1%})")
    left.set_yticks(list(rows), features, fontsize=7)
    left.invert_yaxis()
    right.barh(rows, psi, color=[_color(v > limits.max_psi) for v in psi])
    right.axvline(limits.max_psi, color="black", linestyle="--", linewidth=1)
    right.set_xlabel(f"PSI served vs training of {report.version} (max_psi {limits.max_psi:g})")
    fig.suptitle(
        f"{report.model}: training/serving skew, {report.rows:,} served rows "
        f"({report.first:%Y-%m-%d %H:%M} .. {report.last:%Y-%m-%d %H:%M} UTC)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _color(beyond: bool) -> str:
    return "tab:red" if beyond else "tab:blue"
