"""The compiled build of the RTP fast path, where there is a fresh one (`tools/build_native.py`).

`FastReceive`, `FrameAssembly`, `ReorderBuffer`, `PsFrameDemuxer` and `opens_keyframe` are
the compiled ones when `rtp/_fast_native`, `rtp/_reorder_native` and `rtp/_psframe_native`
exist, were built from the `rtp/fast.py`, `rtp/reorder.py` and `rtp/psframe.py` that are there
now (the same SHA-256, over the C sources `rtp/_startcode.c` and `_drain.c` too) and
`SENSING_NODE_PURE_PYTHON` is not set; otherwise they are the pure Python ones of `rtp.fast`,
`rtp.reorder` and `rtp.psframe`, which do the same more slowly. They are taken together: the
compiled fast path takes only the compiled reorder buffer, and the compiled demuxer imports
the C start code search `rtp._startcode` built with it (the pure `rtp.psframe` never does:
with the pure Python, no compiled code runs). `drain`, the C reader of a UDP stream's
connected socket built with them (`_drain.c`), is None unless they are used. `COMPILED` says
which, and `WHY` why not.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rtp.fast
import rtp.psframe
import rtp.reorder

#: the sources, in the order the build hashes them: the compiled modules', then the C ones
SOURCES = (rtp.reorder, rtp.fast, rtp.psframe)
C_SOURCES = (Path(rtp.psframe.__file__ or "").with_name("_startcode.c"),
             Path(__file__).with_name("_drain.c"))


def source_digest() -> str:
    h = hashlib.sha256()
    for path in [Path(module.__file__ or "") for module in SOURCES] + list(C_SOURCES):
        h.update(path.read_bytes())
    return h.hexdigest()


def _load() -> tuple[dict[str, Any], str]:
    """The compiled modules by the name of their source module, or none and why."""
    if os.environ.get("SENSING_NODE_PURE_PYTHON"):
        return {}, "SENSING_NODE_PURE_PYTHON is set"
    modules = {}
    try:
        for source in SOURCES:
            name = source.__name__.rsplit(".", 1)[1]
            modules[name] = importlib.import_module(f"rtp._{name}_native")
        drain = importlib.import_module("sensing_node.transport._drain")
    except ImportError:
        return {}, "not built (make builds it with mypyc)"
    try:
        wanted = source_digest()
    except OSError:  # a C source not installed beside a build
        return {}, "its sources are missing (make builds it in a source tree)"
    if any(module.SOURCE_SHA256 != wanted for module in modules.values()):
        return {}, "built from other sources (make builds it again)"
    modules["drain"] = drain  # built with them, covered by their digest (C_SOURCES)
    return modules, ""


_compiled, WHY = _load()
COMPILED = bool(_compiled)
_fast = _compiled.get("fast", rtp.fast)
FastReceive: type[rtp.fast.FastReceive] = _fast.FastReceive
FrameAssembly: type[rtp.fast.FrameAssembly] = _fast.FrameAssembly
ReorderBuffer: type[rtp.reorder.ReorderBuffer[Any]] = (
    _compiled.get("reorder", rtp.reorder).ReorderBuffer
)
_psframe = _compiled.get("psframe", rtp.psframe)
PsFrameDemuxer: type[rtp.psframe.PsFrameDemuxer] = _psframe.PsFrameDemuxer
opens_keyframe = _psframe.opens_keyframe
#: reads the datagrams of a UDP socket connected to its source, many per system call
#: into one bytes object (`_drain.c`: `drain(fd, receive, limit) -> count`, `receive(batch,
#: start, end)` per datagram); None where nothing is compiled
drain: Callable[[int, Callable[[bytes, int, int], object], int], int] | None = (
    _compiled["drain"].drain if COMPILED else None
)
