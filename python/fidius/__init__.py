"""fidius: the Python SDK for writing fidius plugins.

A plugin is a module that declares ``__interface_hash__`` (the hash of the
interface it implements) and defines one function per interface method::

    from fidius import method, PluginError

    __interface_hash__ = 0xDF233D1A5936EB5C

    @method
    def name() -> str:
        return "py-byte-pipe"

The host looks each method up as an attribute of the module. ``@method``
only records the function, so plugins stay plain Python that can be
imported and tested without a host.

Raise :class:`PluginError` to send a structured error (code, message,
details) to the host; any other exception arrives with its class name as
the code and the traceback in the details.

:func:`host` reaches functions the host offers (a Go host of fidius for
Go), for plugins that declare them in ``__fidius_host_imports__``.
"""

from ._errors import PluginError
from ._host import host
from ._registry import get_method, list_methods, method, reset_registry

__all__ = ["PluginError", "get_method", "host", "list_methods", "method", "reset_registry"]
