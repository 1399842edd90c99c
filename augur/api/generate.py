"""Regenerate the Python stubs from augur/api/v1/*.proto (`make proto`).

The .proto files sit beside their stubs, so the stubs import each other as `augur.api.v1`;
the wire names stay `augur.v1.*` (the proto package).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "augur" / "api" / "v1").glob("*.proto"))


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
    stub_dir = out_dir / "augur" / "api" / "v1"
    return sorted(
        p for p in stub_dir.iterdir() if p.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"))
    )


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
