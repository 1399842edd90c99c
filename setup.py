"""Builds augur.features._native, the read path's loops in C, where a C compiler is present.

Optional: without a compiler the install goes on, and the reader uses its numpy and hiredis
paths instead (augur.features.native). Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "augur.features._native",
            ["augur/features/_native.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
