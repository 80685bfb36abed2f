"""Live ingest through the whole node: `bench/node_bench.py` with recording off, one worker.

    .venv/bin/python bench/ingest.py [any option of bench/node_bench.py]
    make bench-ingest

Runs the whole-node benchmark with `--recording off --workers 1 --streams 100,200,300,400`
(UDP and TCP, 3 runs); options given here take the place of those. Its figures go to the "Whole
node" section of docs/benchmarks.md. This script used to measure the node's receive path alone,
in a process of its own; the section "Live ingest" of docs/benchmarks.md keeps its last figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import node_bench  # noqa: E402

PRESET = ["--recording", "off", "--workers", "1", "--streams", "100,200,300,400"]

if __name__ == "__main__":
    sys.exit(node_bench.main(PRESET + sys.argv[1:]))
