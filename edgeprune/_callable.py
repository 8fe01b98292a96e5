"""Let a package be called as its verb (``edgeprune.profile(...)``, ``edgeprune.prune(...)``)
while staying importable as a package (``from edgeprune.prune import PruneConfig``)."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


def make_callable(module_name: str, verb: Callable[[], Callable[..., Any]], doc: str) -> None:
    """Make module ``module_name`` callable; ``verb()`` returns the function to call (it is
    looked up at call time, so the verb may live in a module that imports this package)."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return verb()(*args, **kwargs)

    _CallableModule.__call__.__doc__ = doc
    sys.modules[module_name].__class__ = _CallableModule
