"""The node under test in its own process, pinned to one core, steered over stdin.

    python bench/node_proc.py --data-dir /tmp/x --cpu 0 [--no-gc-freeze] [--persist-every-keepalive]

Starts `sensing_node.node.Node` exactly as `sensing-node run` does (same settings parser, uvloop
policy, logging format and level), minus the HTTP API, on 127.0.0.1 with an ephemeral SIP port.
It prints one JSON line with the port and PID, then answers one JSON line per command line:

    info            RSS, devices, online devices, live transactions, counters, garbage
                    collections per generation with their total and longest pause, objects
                    tracked and frozen, the longest `Registry.sweep` and `rows_of`
    trace on        start tracemalloc (slows everything; for the memory pass only)
    expire          release all server transactions now (as Timer J would) and collect garbage
    full-gc         time what `Node._housekeeping` does every `FULL_GC_INTERVAL_S`:
                    `gc.unfreeze()`, a full collection, `gc.freeze()` again
    profile on      start cProfile on the event loop thread
    profile off P   stop it and write the stats (pstats format) to file P
    quit            stop the node (flushes the registry) and exit

`--no-gc-freeze` is an experiment: the node without the garbage collector handling of
`Node._housekeeping` (`gc.freeze()` every tick, `gc.unfreeze()` and a full collection every
`FULL_GC_INTERVAL_S`). `gc.freeze` becomes a no-op in this process before the node starts, and the
periodic full collection is switched off, so the collector runs as CPython schedules it.

`--persist-every-keepalive` is another:
`sensing_node.devices.registry.KEEPALIVE_PERSIST_INTERVAL_S` set to 0, so that every keepalive
marks its device for the next SQLite write. That is what the node does with devices keeping
alive once a minute (each keepalive comes more than the 30 s interval
after the stored one), which the benchmark's compressed timeline, a few seconds between a
device's registration and its keepalives, does not show otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import os
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ALLOW_PREFIX, NODE_ID, PASSWORD, pin, rss_kib  # noqa: E402


class GcWatch:
    """Counts garbage collections per generation and their pauses (gc.callbacks)."""

    def __init__(self) -> None:
        self.created = time.perf_counter()
        self.started = 0.0
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self.full: list[tuple[float, float]] = []  # (seconds since start, pause) of full ones
        gc.callbacks.append(self.callback)

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        gen = info["generation"]
        pause = time.perf_counter() - self.started
        self.count[gen] += 1
        self.total[gen] += pause
        if pause > self.longest[gen]:
            self.longest[gen] = pause
        if gen == 2 and len(self.full) < 100:
            self.full.append((self.started - self.created, pause))

    def report(self) -> dict[str, object]:
        return {
            "collections": list(self.count),
            "total_ms": [round(t * 1000, 2) for t in self.total],
            "longest_ms": [round(t * 1000, 2) for t in self.longest],
            "full_at_s_ms": [(round(at, 2), round(pause * 1000, 2)) for at, pause in self.full],
        }


class FreezeWatch:
    """Notes when the node first calls `gc.freeze()` (installed in its place)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.calls = 0
        self.real = gc.freeze
        gc.freeze = self  # `Node._housekeeping` looks it up on the module at every tick

    def __call__(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.calls += 1
        self.real()


class Timed:
    """Wraps a method of one object and keeps its longest run (housekeeping parts)."""

    def __init__(self, owner: object, name: str) -> None:
        self.inner = getattr(owner, name)
        self.longest = 0.0
        self.calls = 0
        setattr(owner, name, self)

    def __call__(self, *args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - t0
            self.calls += 1
            if elapsed > self.longest:
                self.longest = elapsed

    def report(self) -> dict[str, float]:
        return {"calls": self.calls, "longest_ms": round(self.longest * 1000, 3)}


class Control:
    def __init__(self, node, stop: asyncio.Event,  # type: ignore[no-untyped-def]
                 freezes: FreezeWatch | None) -> None:
        self.node = node
        self.freezes = freezes
        self.stop = stop
        self.buffer = b""
        self.profile: cProfile.Profile | None = None
        self.gc = GcWatch()
        self.sweep = Timed(node.registry, "sweep")
        self.rows = Timed(node.registry, "rows_of")  # a slice of `Registry.flush`

    def readable(self) -> None:
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            self.stop.set()
            return
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            reply = self.command(line.decode().split())
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

    def command(self, words: list[str]) -> dict[str, object]:
        node = self.node
        if not words:
            return {}
        if words[0] == "info":
            queries = node.queries
            return {
                "rss_kib": rss_kib(os.getpid()),
                "traced_bytes": tracemalloc.get_traced_memory()[0]
                if tracemalloc.is_tracing()
                else None,
                "devices": len(node.registry),
                "online": node.registry.online_count(),
                "server_transactions": node.endpoint.tx.server_transaction_count,
                "client_transactions": node.endpoint.tx.client_transaction_count,
                "queued_queries": len(queries._queue) if queries is not None else None,
                "dirty": node.registry.dirty_count,
                "stats": node.stats.as_dict(),
                "gc": self.gc.report(),
                # gc.get_objects() leaves out the permanent generation that gc.freeze() fills
                "gc_tracked_objects": len(gc.get_objects()),
                "gc_frozen_objects": gc.get_freeze_count(),
                "first_freeze_at_s": None
                if self.freezes is None or self.freezes.first is None
                else round(self.freezes.first - self.gc.created, 3),
                "sweep": self.sweep.report(),
                "rows_of": self.rows.report(),
            }
        if words[0] == "trace" and words[1:] == ["on"]:
            tracemalloc.start()
            return {"tracing": True}
        if words[0] == "expire":
            node.endpoint.tx.expire(node.endpoint.loop.time() + 3600.0)
            gc.collect()
            return {"server_transactions": node.endpoint.tx.server_transaction_count}
        if words[0] == "full-gc":
            objects = len(gc.get_objects()) + gc.get_freeze_count()
            t0 = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            return {"objects": objects, "ms": round((time.perf_counter() - t0) * 1000, 2)}
        if words[0] == "profile" and words[1:2] == ["on"]:
            self.profile = cProfile.Profile()
            self.profile.enable()
            return {"profiling": "cProfile"}
        if words[0] == "profile" and words[1:2] == ["off"]:
            if self.profile is not None:
                self.profile.disable()
                self.profile.dump_stats(words[2])
                self.profile = None
            return {"profile": words[2]}
        if words[0] == "quit":
            self.stop.set()
            return {"stopping": True}
        return {"error": f"unknown command {' '.join(words)!r}"}


def no_gc_freeze() -> None:
    """Experiment: the node without its garbage collector handling (see the module doc)."""
    import sensing_node.node

    gc.freeze = lambda: None  # `Node._housekeeping` looks it up on the module at every tick
    sensing_node.node.FULL_GC_INTERVAL_S = float("inf")


def persist_every_keepalive(node) -> None:  # type: ignore[no-untyped-def]
    """Experiment: every keepalive written, whatever the devices' keepalive period."""
    node.registry.keepalive_persist_s = 0.0  # read at every keepalive


def constants(node) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The node's limits the report quotes, as this process has them."""
    import sensing_node.node

    tx = node.endpoint.tx
    return {
        "full_gc_interval_s": sensing_node.node.FULL_GC_INTERVAL_S,
        "keepalive_persist_interval_s": node.registry.keepalive_persist_s,
        "keepalive_timeout_s": node.registry.keepalive_timeout_s,
        "max_server_transactions": tx.max_server_transactions,
        "max_server_bytes": tx.max_server_bytes,
        "timer_j_s": 64 * tx.timers.t1,
    }


async def run(data_dir: Path, pinned: str, freeze: bool, persist_all: bool) -> None:
    from sensing_node.node import Node
    from sensing_node.settings import settings_for_tests

    freezes = FreezeWatch() if freeze else None
    if not freeze:
        no_gc_freeze()

    settings = settings_for_tests(
        data_dir,
        **{
            "node.id": NODE_ID,
            "devices.password": PASSWORD,
            "devices.allow": [ALLOW_PREFIX],
            "devices.keepalive_timeout_s": 180,
        },
    )
    node = Node(settings)
    if persist_all:
        persist_every_keepalive(node)
    await node.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    control = Control(node, stop, freezes)
    loop.add_reader(sys.stdin.fileno(), control.readable)
    ready = {"sip_port": node.sip_address[1], "pid": os.getpid(),
             "loop": type(loop).__module__, "rss_kib": rss_kib(os.getpid()), "pinned": pinned,
             "gc_freeze": freeze, "persist_every_keepalive": persist_all,
             "constants": constants(node)}
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    await stop.wait()
    loop.remove_reader(sys.stdin.fileno())
    await node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="experiment: the node without gc.freeze() and its periodic full "
                        "collection")
    parser.add_argument("--persist-every-keepalive", action="store_true",
                        help="experiment: every keepalive marks its device for the SQLite write")
    args = parser.parse_args()
    pinned = pin(args.cpu)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from sensing_node.__main__ import check_layout, install_event_loop_policy

    problem = check_layout()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 3
    install_event_loop_policy()
    asyncio.run(run(Path(args.data_dir), pinned, not args.no_gc_freeze,
                    args.persist_every_keepalive))
    return 0


if __name__ == "__main__":
    sys.exit(main())
