"""CPU per device row of the registry's SQLite write (`Store.write`), as in a registration storm.

    python bench/store_write.py [--devices 60000] [--batch 3750] [--rounds 3] [--base TREE]

A store under a temporary directory is filled with `--devices` rows, then written `--batches`
times with `--batch` rows of devices picked at random (what `Registry.flush` hands the writer
thread every half second at 7,500 registrations a second). The figure is the writer thread's
CPU time per row (`time.thread_time`), the median of the batches. With `--base TREE` (a git
worktree of another commit) each round measures that tree's `Store` and this one's, in fresh
processes, alternately; the result is one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def row(i: int, t: float) -> tuple[object, ...]:
    device_id = f"3101120000132{i:07d}"
    remote = f"127.0.0.1:{5000 + i % 1000}"
    return (device_id, None, None, None, None, "udp", remote, f"sip:{device_id}@{remote}",
            "loadgen", "2.0", None, f"call-{i}-{t}", t, t, t + 3600.0, 1, None, "")


def measure(devices: int, batch: int, batches: int, seed: int) -> dict[str, float]:
    from sensing_node.devices.store import Store

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "node.db")
        try:
            def run(rows: list[tuple[object, ...]]) -> float:
                def timed() -> float:
                    start = time.thread_time()
                    store.write(rows, [])
                    return time.thread_time() - start
                return store.executor.submit(timed).result()

            run([row(i, 1.0) for i in range(devices)])
            per_row = []
            for k in range(batches):
                rows = [row(rng.randrange(devices), 2.0 + k) for _ in range(batch)]
                per_row.append(run(rows) / batch * 1e6)
        finally:
            store.close()
    return {"us_per_row": statistics.median(per_row), "min": min(per_row), "max": max(per_row)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=3_750)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", help="a source tree to measure against, alternately")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: the tree to measure is first on sys.path
        print(json.dumps(measure(args.devices, args.batch, args.batches, seed=1)))
        return 0
    trees = {"head": HERE.parent}
    if args.base:
        trees = {"base": Path(args.base).resolve(), **trees}
    out: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            child = subprocess.run(
                [sys.executable, "-c",
                 f"import sys; sys.path[:0] = [{str(tree)!r}, {str(HERE)!r}]; "
                 "import store_write; sys.argv[1:] = " + repr([*sys.argv[1:], "--one"])
                 + "; sys.exit(store_write.main())"],
                check=True, capture_output=True, text=True)
            out[name].append(json.loads(child.stdout))
    summary = {
        name: {"us_per_row": statistics.median(r["us_per_row"] for r in runs),
               "rounds": [round(r["us_per_row"], 2) for r in runs]}
        for name, runs in out.items()
    }
    print(json.dumps({"devices": args.devices, "batch": args.batch, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
