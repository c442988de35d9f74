"""A plugin with a streaming method and configured instances, for the
package's examples."""

from fidius import method

# fidius.InterfaceHash("ticks:u32->u32!stream")
__interface_hash__ = 0xB29C538250DA204F


@method
def ticks(n, step=1):
    for i in range(n):
        yield i * step


class Ticker:
    def __init__(self, config):
        self.step = config["step"]

    def ticks(self, n):
        return ticks(n, self.step)


def __fidius_configure__(config):
    return Ticker(config)
