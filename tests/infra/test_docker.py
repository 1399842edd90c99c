"""The Dockerfile builds the image the manifests run: the pinned CPU torch, the C read loops,
and the `augur` entry point."""

from __future__ import annotations

import re
import tomllib

from tests.infra.manifests import (
    INFRA,
    ROOT,
)


def test_dockerfile_installs_the_pinned_torch_and_the_augur_command():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch_pin,) = [d for d in project["dependencies"] if d.startswith("torch==")]
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert f"--index-url https://download.pytorch.org/whl/cpu {torch_pin}" in dockerfile
    assert "augur" in project["scripts"]
    assert 'ENTRYPOINT ["augur"]' in dockerfile
    # the wheel is built beside a compiler, so the image has the read path's C loops
    assert re.search(r"^FROM python:3\.11-slim AS build$", dockerfile, re.M)
    assert "COPY --from=build" in dockerfile and "augur.features.native" in dockerfile
