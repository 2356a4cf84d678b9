"""Side-by-side speed benchmark: fixed-shape baseline vs multigrid (same as `mgvsr bench`).

    python benchmarks/speedup.py [--seeds 2] [--config configs/bench.yaml] [--variant NAME:k=v,...] [overrides]

See docs/benchmarks.md for the data preparation command and the measured results.
"""

import sys

from mgvsr.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
