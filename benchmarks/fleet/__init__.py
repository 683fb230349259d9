"""The fleet benchmark (``python -m benchmarks fleet``): see :mod:`benchmarks.fleet.run`."""

from benchmarks.fleet.run import main

__all__ = ["main"]
