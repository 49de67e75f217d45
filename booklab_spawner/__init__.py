"""Booklab's spawning side: the JupyterHub spawner, the Redis job protocol, the runner."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("booklab")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
