"""Host functions: calling back into the host while a method runs."""

from ._errors import PluginError


def host(name):
    """Return the host interface ``name``, whose functions are attributes.

    ``fidius.host("SlotHost").free_slots()`` calls the host's function
    ``free_slots`` with the arguments given (JSON values) and returns its
    result. The module must declare what it imports::

        __fidius_host_imports__ = {"SlotHost": {"version": 1, "hash": 0x8F3C...}}

    and the host must offer that interface, with that version and hash, or
    the plugin does not load. An error the host function returns is raised
    here as a :class:`PluginError`. Calls work while one of the plugin's
    methods runs, on the thread running it.
    """
    return _HostInterface(name)


class _HostInterface:
    __slots__ = ("_name",)

    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return "<fidius host interface %r>" % (self._name,)

    def __getattr__(self, function):
        if function.startswith("_"):
            raise AttributeError(function)
        name = self._name

        def call(*args):
            try:
                import _fidius_host
            except ImportError:
                raise PluginError("HOST_UNBOUND", "this host offers no host functions") from None
            ok, value = _fidius_host.call(name, function, args)
            if ok:
                return value
            code, message, details = value
            raise PluginError(code, message, details)

        call.__name__ = function
        call.__qualname__ = "%s.%s" % (name, function)
        return call
