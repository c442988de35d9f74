"""The registry behind ``@method``.

Entries are keyed by (module, name): many plugins share one interpreter,
and two of them may both define ``process``.

A module can be executed more than once: a host reloads a plugin by
importing it again as a new module object under the same name, and
``importlib.reload`` runs it again in place. Each execution registers its
methods afresh, so the registry remembers which execution of a module made
its entries; the first registration by a new execution replaces all of
them. Within one execution, registering a name twice is still an error.
"""

from __future__ import annotations

import sys
import weakref
from typing import Callable, Dict, List, Optional, Tuple

_REGISTRY: Dict[Tuple[str, str], Callable] = {}


class _Execution:
    """One execution of a module: the module object and its spec.

    A fresh import makes a new module object; ``importlib.reload`` keeps
    the object but finds a new spec. The module is held weakly so that the
    registry does not keep a replaced module alive.
    """

    __slots__ = ("_module", "_spec")

    def __init__(self, module) -> None:
        self._module = None if module is None else weakref.ref(module)
        self._spec = getattr(module, "__spec__", None)

    def matches(self, module) -> bool:
        if module is None or self._module is None:
            return module is None and self._module is None
        return self._module() is module and getattr(module, "__spec__", None) is self._spec


# Module name -> the execution that made that module's entries.
_EXECUTIONS: Dict[str, _Execution] = {}


def _current_module(name: str):
    module = sys.modules.get(name)
    try:
        weakref.ref(module)
    except TypeError:
        return None  # not a module object (or None): no execution to tell apart
    return module


def method(func: Callable) -> Callable:
    """Register ``func`` as a plugin method and return it unchanged.

    Raises ``ValueError`` when the same module registers a name twice. A
    module executed again (reloaded) replaces what its previous execution
    registered.
    """
    module = getattr(func, "__module__", None) or "<unknown>"
    key = (module, func.__name__)
    current = _current_module(module)
    known = _EXECUTIONS.get(module)
    if known is None or not known.matches(current):
        for old in [k for k in _REGISTRY if k[0] == module]:
            del _REGISTRY[old]
        _EXECUTIONS[module] = _Execution(current)
    elif key in _REGISTRY:
        raise ValueError(
            f"fidius: method '{func.__name__}' is already registered in module '{module}'"
        )
    _REGISTRY[key] = func
    return func


def get_method(name: str, module: Optional[str] = None) -> Callable:
    """Return the method registered as ``name``.

    With ``module``, only that module's entry is considered. Without it the
    name must be registered by exactly one module. Raises ``KeyError``.
    """
    if module is not None:
        return _REGISTRY[(module, name)]
    found = [f for (_, n), f in _REGISTRY.items() if n == name]
    if not found:
        raise KeyError(name)
    if len(found) > 1:
        raise KeyError(f"fidius: method '{name}' is registered by several modules; pass module=")
    return found[0]


def list_methods(module: Optional[str] = None) -> List[str]:
    """Return the registered method names, sorted, for one module or all."""
    if module is not None:
        return sorted(n for (m, n) in _REGISTRY if m == module)
    return sorted({n for (_, n) in _REGISTRY})


def reset_registry() -> None:
    """Forget every registered method (meant for tests)."""
    _REGISTRY.clear()
    _EXECUTIONS.clear()
