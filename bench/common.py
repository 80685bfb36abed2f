"""Shared constants and /proc helpers for the benchmark processes.

Every benchmark process (node, echo server, load generator) is a separate Python process pinned
to its own core; the helpers here read another process's CPU time and resident memory from
/proc so that no process has to measure itself while it is under load.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NODE_ID = "31011200002000000001"
REALM = "3101120000"
PASSWORD = "12345678"
REQUEST_URI = f"sip:{NODE_ID}@{REALM}"
ALLOW_PREFIX = "31011200"

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def device_id(serial: int) -> str:
    """A valid 20-digit IPC code (type 132) in the node's area; `serial` below 10**7."""
    return f"{REALM}132{serial:07d}"


PRIORITY = -10  # nice value asked for by every benchmark process


def raise_priority() -> int:
    """Ask for nice PRIORITY, so that other work on a shared machine disturbs the measurement
    less; allowed for root (or with CAP_SYS_NICE) only. Returns the nice value in effect.

    With autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`) a nice value only
    ranks a process within its session, so a process that leads its own session (run_all
    starts every server and client that way) also sets its session group's nice.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, PRIORITY)
    except (OSError, AttributeError):
        pass
    if os.getsid(0) == os.getpid():
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(PRIORITY))
        except OSError:
            pass
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):
        return 0


def pin(cpu: int | None) -> str:
    """Pin the calling process (and the threads it creates later) to one CPU, and raise its
    priority where permitted; returns what was done."""
    nice = raise_priority()
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return f"not pinned, nice {nice}"
    available = os.sched_getaffinity(0)
    if cpu not in available:
        return f"not pinned (cpu {cpu} not in {sorted(available)}), nice {nice}"
    os.sched_setaffinity(0, {cpu})
    return f"cpu {cpu}, nice {nice}"


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of every thread of `pid`, in seconds.

    Uses the nanosecond counters of /proc/PID/task/*/schedstat when the kernel has them, else the
    clock-tick counters of /proc/PID/stat (10 ms resolution).
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for tid in tasks:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_pids(pid: int) -> list[int]:
    """`pid` and every process descended from it (zombies not yet reaped included), parents
    before their children; empty when `pid` is gone. Read from the parent PIDs of /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(name))
    if not os.path.exists(f"/proc/{pid}"):
        return []
    out = [pid]
    for p in out:  # grows while it is walked: breadth first
        out.extend(sorted(children.get(p, ())))
    return out


def tree_cpu_seconds(pid: int) -> tuple[float, int]:
    """CPU time (user + system) of `pid` and all its descendants, in seconds, and how many
    processes that is.

    Each process counts its own time and that of the children it has reaped (cutime and
    cstime of /proc/PID/stat), so a worker process that ended and was waited for still counts;
    children are read before their parents, so one reaped between the two reads is counted
    once or twice, never missed. Clock-tick resolution (10 ms): meant for windows of seconds.
    """
    pids = tree_pids(pid)
    total = 0
    for p in reversed(pids):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK, len(pids)


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread of `pid`, keyed by thread name (same names are summed)."""
    out: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if tid == str(pid):
            name = "main"
        else:
            name = "other threads"
        out[name] = out.get(name, 0.0) + ns / 1e9
    return out


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of an already sorted list, nearest rank."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values), max(1, math.ceil(q * len(sorted_values))))
    return sorted_values[k - 1]


DOC = ROOT / "docs" / "benchmarks.md"


def write_section(begin: str, end: str, text: str, doc: Path = DOC) -> None:
    """Put `text` between the markers `begin` and `end` of docs/benchmarks.md, in place of what
    was there (appended at the end when the markers are missing)."""
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in old and end in old:
        head, _, rest = old.partition(begin)
        _, _, tail = rest.partition(end)
        new = head + block + tail.lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    doc.write_text(new)
