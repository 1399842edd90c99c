"""Regenerate the Python stubs from proto/augur/v1/*.proto (`make proto`).

Run from the repository root; imports in the stubs are rooted at the `proto` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "proto" / "augur" / "v1").glob("*.proto"))


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Write the stubs under `out_dir` (the repo root by default); return their paths."""
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
    ]
    args += [str(p.relative_to(ROOT)) for p in SOURCES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    stub_dir = out_dir / "proto" / "augur" / "v1"
    return sorted(
        p for p in stub_dir.iterdir() if p.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"))
    )


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
