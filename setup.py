"""Builds augur.features._native, the read path's loops in C, augur.serving._wire, a
Predict call's bytes read and written in C, and augur.serving._tally, metric updates in one
C call each, where a C compiler is present.

Optional: without a compiler the install goes on, and the reader uses its numpy and hiredis
paths instead (augur.features.native), the servicer protobuf's messages (augur.serving.wire).
Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(name, [source], extra_compile_args=FLAGS, optional=True)
        for name, source in (
            ("augur.features._native", "augur/features/_native.c"),
            ("augur.serving._wire", "augur/serving/_wire.c"),
            ("augur.serving._tally", "augur/serving/_tally.c"),
        )
    ]
)
