"""The registry behind ``@method``.

Entries are keyed by (module, name): many plugins share one interpreter,
and two of them may both define ``process``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

_REGISTRY: Dict[Tuple[str, str], Callable] = {}


def method(func: Callable) -> Callable:
    """Register ``func`` as a plugin method and return it unchanged.

    Raises ``ValueError`` when the same module registers a name twice.
    """
    module = getattr(func, "__module__", None) or "<unknown>"
    key = (module, func.__name__)
    if key in _REGISTRY:
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
