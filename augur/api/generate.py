"""Regenerate the Python stubs from augur/api/v1/*.proto and augur/api/oip/*.proto
(`make proto`).

The .proto files sit beside their stubs, so the stubs import each other as `augur.api.v1`;
the wire names stay `augur.v1.*` and `inference.*` (the proto packages).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("v1", "oip")
# The Open Inference Protocol's messages are `inference.*`, as in every OIP client
# (tritonclient, MLServer's): in the default descriptor pool two such files collide
# ("duplicate symbol") in any process that holds both, e.g. a test or an application that
# imports tritonclient beside Augur. The OIP stubs build their descriptors in a pool of
# their own instead; the wire is the same.
_DEFAULT_POOL = b"_descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = b"_descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Write the stubs under `out_dir` (the repo root by default); return their paths."""
    from grpc_tools import protoc

    paths = []
    for package in PACKAGES:
        sources = sorted((ROOT / "augur" / "api" / package).glob("*.proto"))
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--pyi_out={out_dir}",
        ]
        args += [str(p.relative_to(ROOT)) for p in sources]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        stub_dir = out_dir / "augur" / "api" / package
        stubs = sorted(
            p
            for p in stub_dir.iterdir()
            if p.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"))
        )
        if package == "oip":
            for stub in stubs:
                if stub.name.endswith("_pb2.py"):
                    stub.write_bytes(stub.read_bytes().replace(_DEFAULT_POOL, _OWN_POOL))
        paths += stubs
    return paths


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
