"""AutoSculpt host side: graph encoding, search, export and device clients."""

from device_agent import __version__

__all__ = ["__version__"]
