# The Go host's private helpers. This file runs once, in a module that is
# not in sys.modules, when the interpreter starts. It keeps its own
# references to what it needs, so a plugin that edits sys.modules or
# sys.path cannot break error reporting for the others.

import collections.abc
import dataclasses
import importlib
import importlib._bootstrap
import importlib.util
import os
import sys
import traceback
import weakref

try:
    import faulthandler
except ImportError:  # an isolated interpreter cannot load it, nor can its plugins
    faulthandler = None

_extract_tb = traceback.extract_tb
_from_list = traceback.StackSummary.from_list
_format_only = traceback.format_exception_only
_fields = dataclasses.fields
_spec_from_loader = importlib.util.spec_from_loader
_module_lock = importlib._bootstrap._ModuleLockManager
_ref = weakref.ref
# Keyed by weak references: a class defined inside a method, or in a module
# a reload replaced, must die with its last instance, not live on in the
# cache (it would keep its module alive through its methods' globals). A
# plain dict rather than a WeakKeyDictionary, whose Python-level lookup
# costs more than the field listing it saves.
_field_cache = {}


def _text(value):
    return value.encode("utf-8", "backslashreplace")


def _safe_str(obj):
    try:
        return str(obj)
    except BaseException:
        return f"<unprintable {type(obj).__name__} object>"


def _is_fidius_error(exc):
    # Recognised by what it is, not by identity: a plugin may raise the
    # class from its own vendored copy of the SDK.
    for cls in type(exc).__mro__:
        if cls.__name__ == "PluginError" and "fidius" in str(getattr(cls, "__module__", "")).split("."):
            return hasattr(exc, "code") and hasattr(exc, "message")
    return False


def _traceback(exc, summary):
    # The import system's own frames say nothing about the plugin.
    frames = [f for f in _extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen importlib")]
    text = "".join(_from_list(frames).format())
    if summary:
        # The exception's own lines: for a SyntaxError, the file, line and caret.
        text += "".join(_format_only(type(exc), exc))
    return text


def describe(exc, structured):
    """Return (code, message, details) for an exception; strings as UTF-8 bytes.

    structured: a call's error, where a fidius.PluginError keeps its own
    fields and the traceback is the formatted frames (as fidius sends it).
    Otherwise an import-time error: class name, message, and the frames
    followed by Python's own summary of the exception.
    """
    if structured and _is_fidius_error(exc):
        return (_text(_safe_str(exc.code)), _text(_safe_str(exc.message)), getattr(exc, "details", None))
    try:
        tb = _traceback(exc, not structured)
    except BaseException:
        tb = ""
    return (_text(type(exc).__name__), _text(_safe_str(exc)), {"traceback": tb})


def field_names(obj):
    """Return the field names of a dataclass instance, cached per class."""
    cls = type(obj)
    # A weak reference without a callback is the class's shared one, and
    # equals any other live reference to the same class.
    names = _field_cache.get(_ref(cls))
    if names is None:
        names = tuple(f.name for f in _fields(obj))
        _field_cache[_ref(cls, _forget_fields)] = names
    return names


def _forget_fields(ref):
    _field_cache.pop(ref, None)


Mapping = collections.abc.Mapping  # what the encoder turns into an object


class HostStreamError(Exception):
    """Raised at next() of a host-fed input stream when the host's
    iterator failed; its message is the host's error."""


class CallCancelled(BaseException):
    """Raised into a call whose Go context was cancelled.

    A BaseException, like KeyboardInterrupt, so that ``except Exception``
    in a plugin does not swallow it; ``finally`` blocks still run.
    """


def foreign_location(mod, directory):
    """Where mod comes from, if that is not under directory; else None.

    All plugins share sys.modules, so an entry module may turn out to be
    another package's module of the same name, or a module from elsewhere
    on sys.path.
    """
    prefix = os.path.join(directory, "")
    path = getattr(mod, "__file__", None)
    if isinstance(path, str):
        path = os.path.abspath(path)
        return None if path.startswith(prefix) else path
    locations = [os.path.abspath(p) for p in (getattr(mod, "__path__", None) or []) if isinstance(p, str)]
    if any(p.startswith(prefix) for p in locations):
        return None  # a namespace package with a part in the package
    return locations[0] if locations else "a built-in module"


def registered_methods(entry):
    """Names registered with fidius.method by the entry module or its
    submodules, sorted."""
    fidius = importlib.import_module("fidius")
    names = set()
    for name in list(sys.modules):
        if name == entry or name.startswith(entry + "."):
            names.update(fidius.list_methods(name))
    return sorted(names)


def use_virtual_env(site_packages, executable):
    """Add a virtual environment's site-packages (and its .pth files) after
    everything on sys.path, and make its python sys.executable."""
    import site

    site.addsitedir(site_packages)
    if executable:
        sys.executable = executable


def modules_under(directory):
    """The modules in sys.modules whose file lies under directory, by name."""
    prefix = os.path.join(directory, "")
    found = {}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if isinstance(path, str) and os.path.abspath(path).startswith(prefix):
            found[name] = mod
    return found


def drop_modules(directory):
    """Remove every module whose file lies under directory from sys.modules.

    Returns them, so that a failed reload can put them back. Their cached
    bytecode is removed too: an edit within the same second that keeps the
    file's size would otherwise pass the cache's check.

    A module another thread is importing (a call importing a helper
    lazily) is removed only once that import is over: the import machinery
    takes the module back out of sys.modules when it finishes, and fails
    if it is gone. Taking the module's import lock waits for that.
    """
    dropped = {}
    for name, mod in modules_under(directory).items():
        with _module_lock(name):
            if sys.modules.get(name) is not mod:
                continue  # replaced or removed while we waited
            del sys.modules[name]
        dropped[name] = mod
        _forget_cached(mod)
    importlib.invalidate_caches()
    return dropped


def _forget_cached(mod):
    cached = getattr(mod, "__cached__", None)
    if isinstance(cached, str):
        try:
            os.remove(cached)
        except OSError:
            pass


def restore_modules(directory, dropped):
    """Undo a failed load or reload: drop what it imported, put back the
    modules it found (a reload's dropped ones, a load's modules_under)."""
    drop_modules(directory)
    for name, mod in dropped.items():
        with _module_lock(name):  # after any import of it in progress, as above
            sys.modules[name] = mod


class _EmbeddedSDK:
    """Serves the embedded ``fidius`` SDK to plugins that do not vendor it.

    It sits at the end of sys.meta_path, so a ``fidius`` found on sys.path
    (a plugin's vendor/ directory) always wins.
    """

    def __init__(self, sources):
        self._sources = sources  # module name -> (is_package, source)

    def find_spec(self, fullname, path=None, target=None):
        entry = self._sources.get(fullname)
        if entry is None:
            return None
        return _spec_from_loader(
            fullname, self, origin="<fidius-go>/" + fullname.replace(".", "/") + ".py", is_package=entry[0]
        )

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source = self._sources[module.__name__][1]
        exec(compile(source, module.__spec__.origin, "exec"), module.__dict__)

    def get_source(self, fullname):
        return self._sources[fullname][1]


_sdk = None


def _executable():
    """The Python program of the installation whose libpython runs here.

    Embedded, Python takes sys.executable from a search of PATH for
    "python3", which may find an unrelated one (a pyenv shim, say); code
    that starts a Python subprocess (multiprocessing) would run that.
    """
    major, minor = sys.version_info[:2]
    for name in (f"python{major}.{minor}", f"python{major}"):
        candidate = os.path.join(sys.base_prefix, "bin", name)
        if os.access(candidate, os.X_OK):
            return candidate
    return ""


def install_sdk(sources, pycache):
    """Install the embedded SDK's finder, and keep bytecode caches out of
    package directories (unless PYTHONPYCACHEPREFIX chose a place): a
    package's files, and so its signed digest, stay as they were shipped.
    Also say where this Python is (sys.executable)."""
    global _sdk
    sys.executable = sys._base_executable = _executable()
    if sys.pycache_prefix is None and pycache:
        sys.pycache_prefix = pycache
    _sdk = _EmbeddedSDK(dict(sources))
    ensure_sdk()


def _refuse_register(*args, **kwargs):
    raise RuntimeError("fidius: signal handlers belong to the Go host; faulthandler.register is disabled")


def _no_fatal_handlers(*args, **kwargs):
    """faulthandler.enable in the embedded interpreter: does nothing.

    Its handlers would replace Go's for SIGSEGV, SIGBUS, SIGFPE, SIGILL and
    SIGABRT, and turn a Go panic that the host recovers from into the end of
    the process.
    """


def _refuse_sigmask(*args, **kwargs):
    raise RuntimeError(
        "fidius: signal handlers belong to the Go host; signal.pthread_sigmask is disabled "
        "(a signal left blocked would stay blocked on a thread Go reuses)"
    )


def keep_go_signals():
    """Undo PYTHONFAULTHANDLER, and keep plugins from installing signal
    handlers through faulthandler or blocking signals on the thread that
    runs them (signal.signal is refused anyway: no plugin code runs on
    Python's main thread)."""
    fh = sys.modules.get("faulthandler", faulthandler)
    if fh is None:
        pass
    elif fh.is_enabled():
        fh.disable()  # puts back the handlers it saved: Go's
    if fh is not None and fh.enable is not _no_fatal_handlers:
        fh.enable = _no_fatal_handlers
        fh.register = _refuse_register
    for name in ("signal", "_signal"):
        mod = sys.modules.get(name)
        if mod is None:
            mod = importlib.import_module(name)
        if getattr(mod, "pthread_sigmask", _refuse_sigmask) is not _refuse_sigmask:
            mod.pthread_sigmask = _refuse_sigmask


class _NotIsolatable:
    """A finder, first on sys.meta_path of an isolated interpreter, that
    refuses the extension modules named before CPython runs their init
    function: on CPython 3.12 the init of a module it refuses runs first,
    and what _decimal or _datetime leave behind crashes the process later;
    on 3.13 _datetime loads, but a second interpreter that imported it
    crashes the process when it ends. The standard library falls back to
    its pure-Python versions (decimal, datetime) on this ImportError."""

    def __init__(self, names):
        self._names = frozenset(names)

    def find_spec(self, name, path=None, target=None):
        if name in self._names:
            raise ImportError(
                f"module {name} does not support loading in subinterpreters "
                "(refused by fidius before its init function runs: see Isolated plugins in its README)",
                name=name,
            )
        return None


_guard = None


def isolate(names):
    """Set up an isolated interpreter: refuse the extension modules names
    before CPython tries them (ensure_sdk keeps the finder first)."""
    global _guard
    if names:
        _guard = _NotIsolatable(names)
        sys.meta_path.insert(0, _guard)


def ensure_sdk():
    """Put the embedded SDK's finder back at the end of sys.meta_path if a
    plugin removed it (or replaced sys.meta_path), an isolated
    interpreter's guard back first, and Go's signal handlers in place."""
    keep_go_signals()
    if not isinstance(sys.meta_path, list):
        sys.meta_path = list(sys.meta_path) if sys.meta_path else []
    if _sdk not in sys.meta_path:
        sys.meta_path.append(_sdk)
    if _guard is not None and sys.meta_path[0] is not _guard:
        if _guard in sys.meta_path:
            sys.meta_path.remove(_guard)
        sys.meta_path.insert(0, _guard)
