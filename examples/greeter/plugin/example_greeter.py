"""An example plugin implementing the Greeter interface.

The interface's methods, as fidius writes their signatures:

    greet:String->String
    reverse:Vec < u8 >->Vec < u8 >!raw
    fail:->String
"""

from fidius import PluginError, method

__interface_hash__ = 0xE59581C4AB5583DD


@method
def greet(name: str) -> str:
    return f"Hello, {name}!"


@method
def reverse(data: bytes) -> bytes:
    return data[::-1]


@method
def fail() -> str:
    raise PluginError("BAD_INPUT", "deliberate failure", details={"got": 42})
