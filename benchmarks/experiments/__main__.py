"""``python -m benchmarks.experiments [--full] ...``: see :mod:`benchmarks.experiments.cli`."""

from __future__ import annotations

import sys

from benchmarks.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
