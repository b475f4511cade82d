"""tierwatch agent: CLI, configuration, scheduler, sample store and HTTP server."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tierwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
