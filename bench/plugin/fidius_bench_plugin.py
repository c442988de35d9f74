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
