"""The functions every row of the benchmark calls, in each harness alike."""

import gc
import sys

__interface_hash__ = 0xB0B0


def noop():
    return None


def greet(name):
    return f"Hello, {name}!"


def echo(data):
    return data


def crunch(n):
    """CPU-bound: n iterations of a Python loop."""
    x = 0
    for i in range(n):
        x += i * i
    return x


def allocated_blocks():
    gc.collect()
    return sys.getallocatedblocks()


def count(n):
    """Server stream: n small items."""
    for i in range(n):
        yield i


def total(rows):
    """Client stream: reads every item the host sends."""
    t = 0
    for r in rows:
        t += r
    return t


def double(rows):
    """Bidirectional: one output per input."""
    for r in rows:
        yield r * 2
