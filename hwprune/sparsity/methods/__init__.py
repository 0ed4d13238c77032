"""Sparsification methods behind one interface (a registry, not if-chains).

``get_method(name)`` returns a ``SparseMethod``; ``list_methods()`` the registered names with a
one-line summary each. Built-ins: ``wgsef`` (default), ``group-lasso``, ``magnitude``, ``random``,
``ssr-l21``, ``ssr-l20``.
"""

from __future__ import annotations

from hwprune.sparsity.methods.base import (
    MethodConfig,
    MethodOptions,
    SparseMethod,
    SparsePhase,
    get_method,
    list_methods,
    register_method,
)

# Importing the built-in method modules registers them.
from hwprune.sparsity.methods import wgsef_method as _wgsef_method  # noqa: E402,F401  isort: skip
from hwprune.sparsity.methods import group_lasso as _group_lasso  # noqa: E402,F401  isort: skip
from hwprune.sparsity.methods import magnitude as _magnitude  # noqa: E402,F401  isort: skip
from hwprune.sparsity.methods import random_select as _random_select  # noqa: E402,F401  isort: skip
from hwprune.sparsity.methods import ssr_method as _ssr_method  # noqa: E402,F401  isort: skip

__all__ = ["MethodConfig", "MethodOptions", "SparseMethod", "SparsePhase", "get_method", "list_methods",
           "register_method"]
