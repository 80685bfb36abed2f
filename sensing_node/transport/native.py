"""The compiled build of `rtp.fast`, where there is a fresh one (`tools/build_native.py`).

`FastReceive` is the compiled class when `rtp/_fast_native` exists, was built from the
`rtp/fast.py` that is there now (same SHA-256) and `SENSING_NODE_PURE_PYTHON` is not set;
otherwise it is the pure Python class of `rtp.fast`, which does the same more slowly.
`COMPILED` says which, and `WHY` why not.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Any

import rtp.fast


def _load() -> tuple[Any, str]:
    if os.environ.get("SENSING_NODE_PURE_PYTHON"):
        return None, "SENSING_NODE_PURE_PYTHON is set"
    try:
        native = importlib.import_module("rtp._fast_native")
    except ImportError:
        return None, "not built (make builds it with mypyc)"
    source = Path(rtp.fast.__file__).read_bytes()
    if getattr(native, "SOURCE_SHA256", None) != hashlib.sha256(source).hexdigest():
        return None, "built from another rtp/fast.py (make builds it again)"
    return native, ""


_native, WHY = _load()
COMPILED = _native is not None
FastReceive: type[rtp.fast.FastReceive] = (
    _native.FastReceive if _native is not None else rtp.fast.FastReceive
)
