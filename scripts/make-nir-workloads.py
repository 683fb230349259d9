#!/usr/bin/env python3
"""Regenerate sim_hw/nir/workloads.json: the reference SNNs as NIR graphs, run on generated events through
`snnrm job plan`'s interpreter and planner (see snnrm/job/workloads.py for shapes, sources and scaling).

    .venv/bin/python scripts/make-nir-workloads.py              # rewrite the data file
    .venv/bin/python scripts/make-nir-workloads.py --check      # exit 1 if a fresh run gives other numbers
    .venv/bin/python scripts/make-nir-workloads.py --graphs DIR # also write the .nir graphs and sample events
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snnrm.job.workloads import main

if __name__ == "__main__":
    sys.exit(main())
