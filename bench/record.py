"""Recording on top of live ingest, the whole node: `bench/node_bench.py`, recording off and on.

    .venv/bin/python bench/record.py [any option of bench/node_bench.py]
    make bench-record

Runs the whole-node benchmark with `--recording off,on --workers 1 --transport udp --streams
300,100` (3 runs): per stream count a bare pass, the node ingesting, and the node ingesting and
recording every channel (`recording.channels: all`), so that what recording adds is the
difference of two passes of the same run. Options given here take the place of those; `--segment`
sets `recording.segment_s`. Its figures go to the "Whole node" section of docs/benchmarks.md.
This script used to drive the receive path and `recorder.service.Recorder` in a process of its
own; the section "Recording" of docs/benchmarks.md keeps its last figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import node_bench  # noqa: E402

PRESET = ["--recording", "off,on", "--workers", "1", "--transport", "udp",
          "--streams", "300,100"]

if __name__ == "__main__":
    sys.exit(node_bench.main(PRESET + sys.argv[1:]))
