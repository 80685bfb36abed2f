"""The compiled build of the RTP fast path, where there is a fresh one (`tools/build_native.py`).

`FastReceive`, `FrameAssembly` and `ReorderBuffer` are the compiled classes when
`rtp/_fast_native` and `rtp/_reorder_native` exist, were built from the `rtp/fast.py` and
`rtp/reorder.py` that are there now (the same SHA-256) and `SENSING_NODE_PURE_PYTHON` is not
set; otherwise they are the pure Python classes of `rtp.fast` and `rtp.reorder`, which do the
same more slowly. They are taken together: the compiled fast path takes only the compiled
reorder buffer. `COMPILED` says
which, and `WHY` why not.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Any

import rtp.fast
import rtp.reorder

#: the sources, in the order the build hashes them
SOURCES = (rtp.reorder, rtp.fast)


def source_digest() -> str:
    h = hashlib.sha256()
    for module in SOURCES:
        h.update(Path(module.__file__ or "").read_bytes())
    return h.hexdigest()


def _load() -> tuple[Any, Any, str]:
    if os.environ.get("SENSING_NODE_PURE_PYTHON"):
        return None, None, "SENSING_NODE_PURE_PYTHON is set"
    try:
        fast = importlib.import_module("rtp._fast_native")
        reorder = importlib.import_module("rtp._reorder_native")
    except ImportError:
        return None, None, "not built (make builds it with mypyc)"
    wanted = source_digest()
    if fast.SOURCE_SHA256 != wanted or reorder.SOURCE_SHA256 != wanted:
        return None, None, "built from other sources (make builds it again)"
    return fast, reorder, ""


_fast, _reorder, WHY = _load()
COMPILED = _fast is not None
FastReceive: type[rtp.fast.FastReceive] = (
    _fast.FastReceive if _fast is not None else rtp.fast.FastReceive
)
ReorderBuffer: type[rtp.reorder.ReorderBuffer[Any]] = (
    _reorder.ReorderBuffer if _reorder is not None else rtp.reorder.ReorderBuffer
)
FrameAssembly: type[rtp.fast.FrameAssembly] = (
    _fast.FrameAssembly if _fast is not None else rtp.fast.FrameAssembly
)
