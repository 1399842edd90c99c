"""The read path's C loops (augur.features._native), when they were built.

setup.py builds them where a C compiler is present; the install goes on without one. The
reader reads through them when they are here (augur.features.native_read: a read's replies
decoded and assembled in one call), and through augur.features.python_read's
numpy, hiredis and Python-scalar paths otherwise: the same results
(tests/test_differential.py checks both against Feast; tests/test_native.py checks the C
functions one by one). `AUGUR_NATIVE=0` turns them off for a process, and with them
augur.serving._wire, which `extension` loads the same way.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def extension(name: str) -> ModuleType | None:
    """The optional C extension module `name` (augur.features._native, augur.serving._wire),
    or None where it was not built or `AUGUR_NATIVE=0` turns the C off."""
    if os.environ.get("AUGUR_NATIVE", "1") == "0":
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


native: ModuleType | None = extension("augur.features._native")
