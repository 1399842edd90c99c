"""A working copy of the fraud feature repo: definitions copied, data generated, `feast apply`.

Used by `augur demo`, the test fixtures and the benchmark, the way a user sets a repo up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from augur.features.repo import REDIS_ENV
from examples.fraud.generate import Scale, generate

TEMPLATE = Path(__file__).parent / "feature_repo"
DEFINITIONS = ("feature_store.yaml", "features.py", "models.yaml")


def scaffold(dest: Path, redis_address: str, scale: Scale | None = None) -> dict[str, int]:
    """Create the repo at `dest` and apply it; return the generated row counts."""
    copy_definitions(dest)
    counts = generate(dest / "data", scale or Scale())
    feast_apply(dest, redis_address)
    return counts


def copy_definitions(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in DEFINITIONS:
        shutil.copy(TEMPLATE / name, dest / name)


def feast_apply(repo: Path, redis_address: str) -> None:
    """`feast apply` as a user runs it, in its own process."""
    feast = Path(sys.executable).with_name("feast")
    result = subprocess.run(
        [str(feast), "apply"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, REDIS_ENV: redis_address},
    )
    if result.returncode:
        raise RuntimeError(f"feast apply failed in {repo}:\n{result.stdout}{result.stderr}")
