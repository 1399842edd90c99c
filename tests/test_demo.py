"""`augur demo` end to end at small scale, as a user runs it: output, and nothing left behind."""

import os
import subprocess
import sys
from pathlib import Path


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(cmdline)
    return found


def _demo(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "augur.cli.main",
            "demo",
            "--workdir",
            str(workdir),
            "--users",
            "300",
            "--merchants",
            "60",
            "--transactions",
            "6000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_runs_end_to_end_cleans_up_and_reruns(tmp_path):
    workdir = tmp_path / "demo"
    result = _demo(workdir)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for step in (
        "Starting the embedded Redis",
        "feast apply",
        "Materializing",
        "Training both models",
        "Starting the predictor",
        "Predict over gRPC",
    ):
        assert step in out
    assert "fraud_lgbm@v1: holdout AUC" in out and "fraud_mlp@v1: holdout AUC" in out
    table = [
        line for line in out.splitlines() if line.strip().startswith(("fraud", "legit", "unknown"))
    ]
    assert table and table[-1].split()[1] == "987654"
    assert table[-1].split()[-1] == "12/25/0"  # the unknown user: merchant features only
    assert "Latency (client-measured" in out
    assert not _processes_mentioning(str(workdir)), "the demo left processes running"

    again = _demo(workdir)  # same folder: starts clean, publishes v1 again
    assert again.returncode == 0, again.stdout + again.stderr
    assert "fraud_lgbm@v1: holdout AUC" in again.stdout
    assert not _processes_mentioning(str(workdir))


def test_help_explains_every_command():
    help_text = subprocess.run(
        [sys.executable, "-m", "augur.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for command in ("demo", "serve", "materialize", "train", "push", "models", "redis"):
        assert command in help_text
    sub = subprocess.run(
        [sys.executable, "-m", "augur.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "--config" in sub and "AUGUR_" in sub
