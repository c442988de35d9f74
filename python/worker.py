# The worker process of fidius for Go: one plugin, served to a Go host over
# the socket on fd 3 (docs/workers.md describes the frames). Run by the Go
# library as `python -I -c <this source>`; it needs only the standard
# library. Its stdout and stderr are the host's logger, never the protocol.

import binascii
import errno
import json
import mmap
import os
import re
import select
import signal
import socket
import struct
import sys
import time

HEADER = struct.Struct("<IBBH")  # payload length, kind, flags, method

# Host to worker.
LOAD, CALL, RAW, STREAM, NEXT, STOP, FEED, FEED_END, FEED_ERR, HOST_OK, HOST_ERR, CLIENT = range(1, 13)
# Worker to host.
OK, PLUGIN_ERR, LOAD_ERR, OUTPUT_ERR, INPUT_ERR, ITEM, END, PULL, HOSTCALL, CANCELLED, READY, DONE = range(20, 32)

SPIN_NS = 50_000  # how long the first read polls before it blocks: wake-ups cost more
MAX_SPIN_NS = 200_000
MAX_DEPTH = 1000


class Lost(Exception):
    """The host closed the socket: the worker exits."""


# The protocol's descriptors (the socket, the cancel pipe and the shared
# file) are not passed on to programs the plugin runs (os.system,
# os.exec*): one that held the socket would keep it open past the worker.
for _fd in (3, 4, 5):
    os.set_inheritable(_fd, False)
sock = socket.socket(fileno=3)
sock.setblocking(False)
_recv_into = sock.recv_into
_perf = time.perf_counter_ns
_select = select.select
buf = bytearray(1 << 16)
view = memoryview(buf)
have = 0  # bytes read ahead into buf


spin = SPIN_NS
_yield = os.sched_yield


def _fill(v, first=False):
    """Read what the socket has into v; when nothing is there yet, poll for
    a while first, as the host does (worker.go's fill explains why; first
    is the wait for a new frame, the only one it learns from)."""
    global spin
    try:
        n = _recv_into(v)
    except BlockingIOError:
        start = _perf()
        end = start + (spin if first else SPIN_NS)
        while True:
            try:
                n = _recv_into(v)
                break
            except BlockingIOError:
                if _perf() > end:
                    _select([sock], [], [])
                else:
                    _yield()
        if first:
            waited = _perf() - start
            spin = 0 if waited > MAX_SPIN_NS else min(MAX_SPIN_NS, waited * 3 // 2 + 10_000)
    if n == 0:
        raise Lost
    return n


big = bytearray(0)  # kept for large payloads: fresh memory costs page faults


def recv():
    """Read one frame: (kind, flags, method, payload). A large payload is a
    memoryview that the next recv() overwrites: callers decode or copy it
    at once."""
    global buf, view, have, big
    while have < HEADER.size:
        have += _fill(view[have:], have == 0)
    n, kind, flags, method = HEADER.unpack_from(buf)
    if flags & SHM:
        have -= HEADER.size
        if have:
            buf[:have] = bytes(view[HEADER.size : HEADER.size + have])
        return kind, flags & ~SHM, method, _shared(n)[:n]
    need = HEADER.size + n
    if need > len(buf):
        if n >= 1 << 16:
            # Read straight into the kept buffer, not copied twice.
            if len(big) < n:
                big = bytearray(n)
            pv = memoryview(big)[:n]
            got = have - HEADER.size
            pv[:got] = view[HEADER.size:have]
            while got < n:
                got += _fill(pv[got:])
            have = 0
            return kind, flags, method, pv
        grown = bytearray(need)
        grown[:have] = view[:have]
        buf, view = grown, memoryview(grown)
    while have < need:
        have += _fill(view[have:])
    payload = bytes(view[HEADER.size:need])
    rest = have - need
    if rest:
        buf[:rest] = bytes(view[need:have])
    have = rest
    return kind, flags, method, payload


MAX_FRAME = (1 << 32) - 1  # a frame's length is a u32


def send_result(kind, payload):
    """Send a result, or say that it is too large for a frame."""
    n = memoryview(payload).nbytes
    if n > MAX_FRAME:
        return send(OUTPUT_ERR, f"the result is {n} bytes: a worker returns at most {MAX_FRAME}".encode())
    send(kind, payload)


def send(kind, payload=b"", method=0):
    n = len(payload)
    if n < 4096:
        _sendall(HEADER.pack(n, kind, 0, method) + payload)
    elif n < SHM_MIN:
        _sendall(HEADER.pack(n, kind, 0, method))
        _sendall(payload)
    else:
        _shared(n)[:n] = payload
        _sendall(HEADER.pack(n, kind, SHM, method))


# Payloads of SHM_MIN bytes or more travel through a file both sides map
# (fd 5, on tmpfs), which either side enlarges as it needs: one copy each
# way instead of a trip through the socket's small buffer.
SHM = 0x80
SHM_MIN = 64 << 10
SHM_FD = 5
shm = None


def _shared(n):
    """The shared region, mapped to at least n bytes."""
    global shm
    if shm is not None and len(shm) >= n:
        return memoryview(shm)
    size = os.fstat(SHM_FD).st_size
    if size < n:
        size = 1 << (n - 1).bit_length()
        os.ftruncate(SHM_FD, size)
    # The old mapping is dropped, not closed: views of it may be alive.
    shm = mmap.mmap(SHM_FD, size)
    return memoryview(shm)


def _sendall(data):
    v = memoryview(data)
    while v:
        try:
            v = v[sock.send(v):]
        except BlockingIOError:
            _select([], [sock], [])


# Cancellation: the host writes the number of the call to cancel to fd 4,
# then sends SIGUSR1. The handler raises only inside plugin code, and only
# into the call it names; a cancel that arrives once that call is over is
# dropped; one that arrives before its call (still in the socket) stops
# it as it begins. Calls are numbered in the order their first frame
# arrives, as the host numbers them.
calls = 0  # calls started
stack = []  # the numbers of the calls running, innermost last
cancelled = set()  # numbers of running calls and open streams the host cancelled
in_plugin = False
CANCEL_FD = 4
os.set_blocking(CANCEL_FD, False)


class CallCancelled(BaseException):
    """Raised into a call whose Go context ended (a BaseException, so that
    ``except Exception`` in a plugin does not swallow it)."""


def _on_cancel(signum, frame):
    try:
        data = os.read(CANCEL_FD, 4096)
    except OSError:  # nothing there, or the plugin closed fd 4: the host's grace period applies
        return
    for (n,) in struct.iter_unpack("<Q", data[: len(data) // 8 * 8]):
        # n > calls: a call whose frame is on its way (the host numbers a
        # call before it sends it, and cancels it only once it has): it
        # is cancelled as it begins.
        if n in stack or n in streams or n > calls:
            cancelled.add(n)
    if in_plugin and stack and stack[-1] in cancelled:
        raise CallCancelled("the call's context ended")


signal.signal(signal.SIGUSR1, _on_cancel)


class plugin_code:
    """Marks plugin code of the innermost call, where a cancellation may
    raise."""

    def __enter__(self):
        global in_plugin
        if stack and stack[-1] in cancelled:
            raise CallCancelled("the call's context ended")
        in_plugin = True

    def __exit__(self, *exc):
        global in_plugin
        in_plugin = False


class protocol:
    """Marks the worker's own I/O inside plugin code (a host function, a
    fed item): a cancellation waits until it is done."""

    def __enter__(self):
        global in_plugin
        self.was = in_plugin
        in_plugin = False

    def __exit__(self, *exc):
        global in_plugin
        in_plugin = self.was
        if self.was and stack and stack[-1] in cancelled and exc[0] is None:
            raise CallCancelled("the call's context ended")


def answer(*kinds):
    """Wait for the host's answer to a question of the call running (a host
    function's result, a fed item). Meanwhile the host may run other calls
    here, a call the host function makes back into this plugin, say: they
    run to their end, nested, before the answer comes."""
    while True:
        kind, flags, m, payload = recv()
        if kind in kinds:
            return kind, payload
        dispatch(kind, flags, m, payload)


# Values: the library's value table (its package documentation), in the
# order the in-process encoder tries the rows.
strict = False
host = None  # the host helpers (the library's host.py), set by LOAD


class Unencodable(Exception):
    pass


def _key(k):
    return str.__str__(k) if isinstance(k, str) else str(k)


def _plain(o, path):
    t = type(o)
    if o is None or o is True or o is False or t is str or t is int:
        return o
    if isinstance(o, str):
        return str.__str__(o)
    if isinstance(o, int):
        return int(o) if not isinstance(o, bool) else bool(o)
    if isinstance(o, float):
        if o != o or o in (float("inf"), float("-inf")):
            raise ValueError(f"float {o!r} cannot be represented in JSON")
        return float(o)
    if isinstance(o, (list, tuple)):
        _enter(o, path)
        out = [_plain(x, path) for x in list(o)]
        path.pop()
        return out
    if isinstance(o, dict):
        _enter(o, path)
        out = {}
        seen = None
        for k, v in list(o.items()):
            if isinstance(k, str) and seen is None:
                out[str.__str__(k)] = _plain(v, path)
                continue
            if seen is None:
                seen = {kk: kk for kk in out}
            text = _key(k)
            prev = seen.setdefault(text, k)
            if prev is not k:
                raise ValueError(f"keys {prev!r} and {k!r} of a dict are both the JSON key {text!r}")
            out[text] = _plain(v, path)
        path.pop()
        return out
    if isinstance(o, (bytes, bytearray)):
        return list(o)
    if not isinstance(o, type) and hasattr(type(o), "__dataclass_fields__"):
        _enter(o, path)
        out = {}
        for name in host.field_names(o):
            if not isinstance(name, str):
                raise TypeError(f"dataclass {t.__name__} has a field whose name is not a str: {name!r}")
            out[name] = _plain(getattr(o, name), path)
        path.pop()
        return out
    return _other(o, path)


def _enter(o, path):
    if len(path) >= MAX_DEPTH:
        if any(p is o for p in path):
            raise ValueError(f"the {type(o).__name__} contains itself, which JSON cannot represent")
        raise ValueError(f"value nests deeper than {MAX_DEPTH} levels")
    path.append(o)


def _other(o, path):
    t = type(o)
    if hasattr(t, "__next__") or isinstance(o, host.Generator):
        raise TypeError(
            f"{t.__name__} is an iterator: a method that yields results streams them; "
            "declare it Streaming and call it with CallStream"
        )
    if hasattr(o, "__await__") or isinstance(o, host.AsyncGenerator):
        raise TypeError(f"{t.__name__} is awaitable: async methods are not supported")
    v = _as_json_value(o)
    if v is not NotImplemented:
        _enter(o, path)
        out = _plain(v, path)
        path.pop()
        return out
    if strict:
        raise TypeError(f"{t.__name__} has no JSON form (strict values are on, so it is not sent as its str())")
    return str.__str__(str(o))


def _as_json_value(o):
    t = type(o)
    try:
        tolist = o.tolist
    except AttributeError:
        pass
    else:
        try:
            v = tolist() if callable(tolist) else None
        except TypeError:
            v = None
        if v is not o and isinstance(v, (list, int, float, str)):
            return v
    if hasattr(t, "__index__"):
        try:
            return t.__index__(o)
        except TypeError:
            pass
    if hasattr(t, "__float__"):
        try:
            return float(o)
        except TypeError:
            pass
    if isinstance(o, (set, frozenset)):
        return list(o)
    if isinstance(o, host.Mapping):
        return dict(o)
    return NotImplemented


def encode(o):
    if o is None:
        return b"null"
    v = _plain(o, [])
    s = _dumps(v)
    try:
        return s.encode()
    except UnicodeEncodeError:
        # A lone surrogate: escaped, and nothing else, as the in-process
        # encoder does (ensure_ascii would escape every non-ASCII
        # character). Surrogates occur only inside strings.
        return _surrogate.sub(_escape, s).encode()


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False).encode
_surrogate = re.compile("[\ud800-\udfff]")


def _escape(m):
    return "\\u%04x" % ord(m.group())


def _why(prefix, exc):
    text = f"{prefix}: {type(exc).__name__}"
    try:
        s = str(exc)
    except BaseException:
        s = ""
    return (text + ": " + s if s else text).encode("utf-8", "backslashreplace")


def _loads(payload):
    return json.loads(bytes(payload) if type(payload) is memoryview else payload)


_INF = float("inf")


def _finite(text):
    v = float(text)
    if v == _INF or v == -_INF:
        raise ValueError(f"value too large to convert to float: {text!r}")
    return v


def _loads_finite(payload):
    """_loads for JSON the host did not check (fed items, host functions'
    answers): a number too large for a float is refused, as the
    in-process decoder does, not made an infinity. (Call arguments are
    checked in Go.)"""
    return json.loads(bytes(payload) if type(payload) is memoryview else payload, parse_float=_finite)


def decode_args(payload):
    if not payload:
        return ()
    a = _loads(payload)
    if type(a) is list:
        return a
    if a is None:
        return ()
    return (a,)


def describe(exc):
    code, message, details = host.describe(exc, True)
    try:
        d = encode(details)
    except BaseException:
        d = b"null"
    return b"".join([struct.pack("<II", len(code), len(message)), code, message, d])


import threading  # noqa: E402

_get_ident = threading.get_ident
_main_thread = _get_ident()

# Host functions and fed input streams talk to the host in the middle of a
# call, through the same socket.
class _HostModule:
    @staticmethod
    def call(name, function, args):
        if _get_ident() != _main_thread or not in_plugin:
            return False, (
                "HOST_UNBOUND",
                "no host interface is bound here: host functions work while a method of a plugin "
                "loaded with host interfaces runs, on the thread running it",
                None,
            )
        with protocol():
            send(HOSTCALL, encode([name, function, list(args)]))
            kind, payload = answer(HOST_OK, HOST_ERR)
        if kind == HOST_OK:
            try:
                return True, _loads_finite(payload)
            except ValueError as exc:
                raise RuntimeError(f"the host's answer is not JSON: {exc}") from None
        err = _loads(payload)
        return False, (err.get("code"), err.get("message"), err.get("details"))


class HostStream:
    """The host-fed input stream of a client or bidirectional stream."""

    def __init__(self, number):
        self.number = number  # the call it belongs to
        self.done = False
        self.busy = False
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.done:
            raise StopIteration
        if self.busy or _get_ident() != _main_thread or not stack or stack[-1] != self.number:
            # Only the call reads its input: a plugin thread, or a call
            # nested in it, would interleave its frames with the call's.
            raise RuntimeError("the host's input stream can only be read by the thread running the call")
        self.busy = True
        try:
            return self._next()
        finally:
            self.busy = False

    def _next(self):
        with protocol():
            send(PULL)
            kind, payload = answer(FEED, FEED_END, FEED_ERR)
        if kind == FEED:
            self.count += 1
            try:
                return _loads_finite(payload)
            except ValueError as exc:
                raise host.HostStreamError(
                    f"item {self.count} of the host's input stream is not valid JSON: {exc}"
                ) from None
        self.done = True
        if kind == FEED_END:
            raise StopIteration
        raise host.HostStreamError(bytes(payload).decode("utf-8", "replace"))


owner = None  # the module, or the configured instance
methods = []


def _forget_bytecode(directory):
    """Remove the package's cached bytecode before a reload imports it: an
    edit within the same second that keeps a file's size would otherwise
    pass the cache's check."""
    import importlib.util

    for root, _, files in os.walk(directory):
        for name in files:
            if name.endswith(".py"):
                try:
                    os.remove(importlib.util.cache_from_source(os.path.join(root, name)))
                except (OSError, ValueError, NotImplementedError):
                    pass


def load(payload):
    global owner, methods, strict, host
    spec = _loads(payload)
    strict = spec["strict"]
    ns = {"__name__": "_fidius_host_helpers"}
    exec(compile(spec["helpers"], "<fidius-go>/host.py", "exec"), ns)
    host = type(sys)("_fidius_host_helpers")
    host.__dict__.update(ns)
    import collections.abc
    import types

    host.Generator, host.AsyncGenerator = types.GeneratorType, types.AsyncGeneratorType
    sys.meta_path.append(host._EmbeddedSDK({k: tuple(v) for k, v in spec["sdk"].items()}))
    sys.modules["_fidius_host"] = _HostModule
    directory = os.fsdecode(binascii.a2b_base64(spec["dir"]))
    sys.dont_write_bytecode = spec["no_bytecode"]
    if sys.pycache_prefix is None and spec["pycache"]:
        sys.pycache_prefix = spec["pycache"]
    if spec["reload"]:
        _forget_bytecode(directory)
    for p in (directory, os.path.join(directory, "vendor")):
        if p not in sys.path:
            sys.path.insert(0, p)
    entry = spec["entry"]
    import importlib

    def fail(**what):
        send(LOAD_ERR, json.dumps(what).encode())

    def fail_exc(exc, func=""):
        code, message, details = host.describe(exc, False)
        fail(
            e="import",
            func=func,
            type=code.decode("utf-8", "replace"),
            message=message.decode("utf-8", "replace"),
            traceback=details["traceback"],
        )

    try:
        with plugin_code():
            mod = importlib.import_module(entry)
    except BaseException as exc:
        return fail_exc(exc)
    if not hasattr(mod, "__interface_hash__"):
        return fail(e="no_hash")
    h = mod.__interface_hash__
    if not isinstance(h, int):
        return fail(e="bad_hash", what="it is a " + type(h).__name__)
    if not 0 <= h < 1 << 64:
        return fail(e="bad_hash", what=repr(h))
    if h != spec["hash"]:
        return fail(e="hash", got=h)
    imports = None
    if hasattr(mod, "__fidius_host_imports__"):
        try:
            imports = encode(mod.__fidius_host_imports__).decode()
        except BaseException as exc:
            return fail(e="host_imports", why=f"{type(exc).__name__}: {exc}")
    owner = mod
    if spec["config"] is not None:
        fn = getattr(mod, "__fidius_configure__", None)
        if fn is None:
            return fail(e="no_configure")
        try:
            with plugin_code():
                owner = fn(json.loads(spec["config"]))
        except BaseException as exc:
            return fail_exc(exc, "__fidius_configure__")
    methods = []
    present = []
    for name, optional in spec["methods"] or ():
        fn = getattr(owner, name, None)
        if fn is None and not hasattr(owner, name) and optional:
            methods.append(None)
            present.append(False)
            continue
        if fn is None and not hasattr(owner, name):
            return fail(e="not_defined", method=name)
        if not callable(fn):
            return fail(e="not_callable", method=name, type=type(fn).__name__)
        methods.append(fn)
        present.append(True)
    send(READY, json.dumps({"present": present, "imports": imports, "pid": os.getpid()}).encode())


memory_limited = False
EXIT_MEMORY = 75
ENOMEM = errno.ENOMEM
OUT_OF_MEMORY = b"fidius worker: out of memory under its limit, in the worker's own code\n"


def out_of_memory(exc):
    """Under the host's memory limit, a MemoryError ends the worker: its
    state is whatever the failed allocation left, and the host replaces it."""
    if memory_limited and isinstance(exc, MemoryError):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_MEMORY)


def begin():
    """Number a new call and make it the innermost."""
    global calls
    calls += 1
    stack.append(calls)
    return calls


def end(n):
    stack.pop()
    if n not in streams:
        cancelled.discard(n)


def dispatch(kind, flags, m, payload):
    global in_plugin
    was = in_plugin
    in_plugin = False
    try:
        if kind in (CALL, RAW, CLIENT):
            n = begin()
            try:
                call(n, kind, m, payload)
            finally:
                end(n)
        elif kind == STREAM:
            n = begin()
            try:
                open_stream(n, m, flags, payload)
            finally:
                end(n)
        elif kind == NEXT:
            (n,) = struct.unpack("<Q", payload)
            stack.append(n)
            try:
                next_item(n)
            finally:
                end(n)
        elif kind == STOP:
            (n,) = struct.unpack("<Q", payload)
            stop_stream(n)
            send(DONE)
        else:
            raise SystemExit(f"fidius worker: unexpected frame kind {kind}")
    finally:
        in_plugin = was


def call(n, kind, m, payload):
    """Run one unary call and send its answer."""
    fn = methods[m]
    feed = None
    try:
        if kind == RAW:
            arg = bytes(payload)
        else:
            args = decode_args(payload)
            if kind == CLIENT:
                feed = HostStream(n)
                args = (feed, *args)
    except (ValueError, RecursionError) as exc:
        return send(INPUT_ERR, _why("input is not valid JSON", exc))
    try:
        with plugin_code():
            res = fn(arg) if kind == RAW else fn(*args)
    except CallCancelled:
        return send(CANCELLED)
    except BaseException as exc:
        out_of_memory(exc)
        return send(PLUGIN_ERR, describe(exc))
    finally:
        if feed is not None:
            feed.done = True
    if kind == RAW:
        if isinstance(res, bytes):
            return send_result(OK, res)
        try:
            out = memoryview(res)
            try:
                out = out.cast("B") if out.c_contiguous else out.tobytes()
            except TypeError:
                out = out.tobytes()
        except TypeError:
            return send(
                OUTPUT_ERR,
                (
                    "raw method must return bytes or another object with the buffer protocol "
                    f"(bytearray, memoryview, a numpy array), not {type(res).__name__}"
                ).encode(),
            )
        return send_result(OK, out)
    try:
        out = encode(res)
    except BaseException as exc:
        return send(OUTPUT_ERR, _why("return value cannot be encoded as JSON", exc))
    send_result(OK, out)


streams = {}  # call number -> [iterator, its HostStream or None]


def open_stream(n, m, flags, payload):
    """Start a streaming call: it stays open, between the host's NEXT
    frames, until its end, an error or STOP."""
    fn = methods[m]
    feed = HostStream(n) if flags else None
    try:
        args = decode_args(payload)
    except (ValueError, RecursionError) as exc:
        return send(INPUT_ERR, _why("input is not valid JSON", exc))
    if feed is not None:
        args = (feed, *args)
    try:
        with plugin_code():
            res = fn(*args)
            try:
                it = iter(res)
            except TypeError:
                if getattr(type(res), "__iter__", None) is None:
                    return send(
                        OUTPUT_ERR,
                        f"streaming method must return an iterable, not {type(res).__name__}".encode(),
                    )
                raise
    except CallCancelled:
        return send(CANCELLED)
    except BaseException as exc:
        out_of_memory(exc)
        return send(PLUGIN_ERR, describe(exc))
    streams[n] = [it, feed]
    send(OK)


def next_item(n):
    entry = streams.get(n)
    if entry is None:
        return send(END)
    it = entry[0]
    try:
        with plugin_code():
            item = next(it)
    except StopIteration:
        del streams[n]
        return send(END)
    except CallCancelled:
        stop_stream(n)
        return send(CANCELLED)
    except BaseException as exc:
        out_of_memory(exc)
        del streams[n]
        return send(PLUGIN_ERR, describe(exc))
    try:
        out = encode(item)
    except BaseException as exc:
        stop_stream(n)
        return send(OUTPUT_ERR, _why("return value cannot be encoded as JSON", exc))
    if len(out) > MAX_FRAME:
        stop_stream(n)  # the item's OUTPUT_ERR ends the stream
    send_result(ITEM, out)


def stop_stream(n):
    """Close an open stream: its generator's finally blocks run."""
    global in_plugin
    entry = streams.pop(n, None)
    cancelled.discard(n)
    if entry is None:
        return
    it, feed = entry
    close = getattr(it, "close", None)
    if close is not None:
        stack.append(n)
        was = in_plugin
        in_plugin = True  # a second cancel may still stop a finally that hangs
        try:
            close()
        except BaseException:
            pass
        finally:
            in_plugin = was
            stack.pop()
    if feed is not None:
        feed.done = True


def main():
    global memory_limited
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * MAX_DEPTH))
    limit = int(os.environ.pop("FIDIUS_WORKER_MEMORY", "0") or 0)
    if limit > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        memory_limited = True
    kind, _, _, payload = recv()
    if kind != LOAD:
        return
    load(payload)
    while True:
        dispatch(*recv())


try:
    main()
except Lost:
    pass
except BaseException as exc:
    # Out of memory under the limit in the worker's own code (the shared
    # mapping, the copy of a large argument or result): the same end as
    # a MemoryError in the plugin, said on stderr. Nothing here may
    # allocate: there may be no memory left at all.
    if memory_limited and (isinstance(exc, MemoryError) or isinstance(exc, OSError) and exc.errno == ENOMEM):
        try:
            os.write(2, OUT_OF_MEMORY)
        except BaseException:
            pass
        os._exit(EXIT_MEMORY)
    raise
finally:
    sys.stdout.flush()
    sys.stderr.flush()
os._exit(0)
