"""AutoSculpt host side: graph encoding, search, export and device clients."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autosculpt")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
