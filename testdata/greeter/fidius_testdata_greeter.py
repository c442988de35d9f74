"""The plugin most tests call: one method per behaviour under test."""

import dataclasses
import sys

from fidius import PluginError, method

__interface_hash__ = 0x6669646975732D67

calls = 0


@method
def greet(name):
    return f"Hello, {name}!"


@method
def move(point, dx, dy):
    return {"x": point["x"] + dx, "y": point["y"] + dy, "label": point["label"].upper()}


@method
def reverse(data):
    return bytes(reversed(data))


@method
def fail():
    raise PluginError("BAD_INPUT", "deliberate failure", details={"got": 42})


@method
def key_error():
    return {}["missing"]


@method
def exit():
    sys.exit(3)


@method
def echo(*args):
    return list(args)


@method
def types(*args):
    return [[type(a).__name__, repr(a)] for a in args]


@method
def count():
    global calls
    calls += 1
    return calls


@method
def raw_str(data):
    return "not bytes"


@method
def raw_bytearray(data):
    return bytearray(data) + bytearray(b"!")


@method
def raw_memoryview(data):
    return memoryview(data)[1:]


@method
def noop():
    return None


@method
def sink(*args):
    return len(args)


@dataclasses.dataclass
class Point:
    x: int
    y: str
    tags: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Line:
    start: Point
    end: Point


class Custom:
    def __str__(self):
        return "custom!"


VALUES = {
    "none": None,
    "true": True,
    "false": False,
    "int": 42,
    "negative": -7,
    "bigint": 123456789012345678901234567890,
    "negbigint": -123456789012345678901234567890,
    "float": 0.1,
    "bigfloat": 1e16,
    "wholefloat": 2.0,
    "str": 'a"b\\c\n\x01\u00e9\U0001F600',
    "list": [1, "two", [3.5]],
    "tuple": (1, (2, 3)),
    "dict": {"a": 1, "b": {"c": []}},
    "keys": {1: "a", None: "b", (1, 2): "c", 2.5: "d"},
    "bytes": b"\x00\x01\xff",
    "bytearray": bytearray(b"\x02\xfe"),
    "dataclass": Point(1, "a", ["t"]),
    "nested_dataclass": Line(Point(0, "s"), Point(5, "e")),
    "other": Custom(),
    "nan": float("nan"),
    "inf": float("inf"),
    "neginf": float("-inf"),
}


@method
def value(kind):
    return VALUES[kind]


@method
def sys_path():
    return [p for p in sys.path if isinstance(p, str)]


@method
def echo_raw(data):
    return data


@method
def allocated_blocks():
    import gc

    gc.collect()
    return sys.getallocatedblocks()
