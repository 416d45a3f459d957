"""Former entry point of the benchmark runner; now the same as ``python -m benchmarks.compare``.

    python benchmarks/run.py [--rounds N] [--scale F] [--modes ...] [workloads...]
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.compare import main

    sys.exit(main())
