"""Log output: the classic text lines, or one JSON object per line for a log collector.

`sensing-node run --log-format json` writes each record as

    {"time": "2026-12-06T17:48:01.123+00:00", "level": "INFO", "logger": "sensing_node.node",
     "message": "...", "device": "...", "channel": "...", "call_id": "...", "exc": "..."}

`device`, `channel` and `call_id` appear when the record carries them: given as
``log.info(..., extra={"device": ..., "channel": ..., "call_id": ...})``, or else recognised
among the message's arguments, which is cheap because the node logs IDs as arguments: a
20-digit GB/T 28181 code whose type digits (11-13) name a front-end device (111-130, 132
IPC) is the device, one of a peripheral (131 camera, 133-199) the channel; a second IPC code
after a device is the channel (an NVR's channels may be IPC codes). Platform codes (200 and
up) are left alone. The exception of a record, with its traceback, is `exc`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["FIELDS", "LOG_FORMATS", "TEXT_FORMAT", "JsonFormatter", "configure_logging",
           "recognise_ids"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the context fields a record may carry, as `extra=` keys and JSON keys
FIELDS = ("device", "channel", "call_id")
_DIGITS = frozenset("0123456789")


def _type_code(value: object) -> int | None:
    if isinstance(value, str) and len(value) == 20 and _DIGITS.issuperset(value):
        return int(value[10:13])
    return None


def recognise_ids(args: Any) -> dict[str, str]:
    """`device` and `channel` among a record's arguments (see the module's docstring)."""
    found: dict[str, str] = {}
    if not isinstance(args, tuple):  # a mapping of named arguments: not looked into
        return found
    for value in args:
        code = _type_code(value)
        if code is None:
            continue
        if 111 <= code <= 130 or (code == 132 and "device" not in found):
            found.setdefault("device", value)
        elif 131 <= code <= 199:
            found.setdefault("channel", value)
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: keep both, lose nothing
            message = f"{record.msg!s} {record.args!r}"
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        given = {name: getattr(record, name) for name in FIELDS
                 if getattr(record, name, None) is not None}
        missing = "device" not in given or "channel" not in given
        recognised = recognise_ids(record.args) if missing else {}
        for name in FIELDS:
            value = given.get(name, recognised.get(name))
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text", *,
                      stream: TextIO | None = None) -> logging.Handler | None:
    """Send the root logger's records to `stream` (stderr) as text lines or JSON lines, at
    `level` (a name; unknown names mean INFO). Like `logging.basicConfig`, it leaves a root
    logger that has handlers already (a test runner's, an embedding program's) alone, and
    then returns None."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    if root.handlers:
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.getLevelNamesMapping().get(str(level).upper(), logging.INFO))
    return handler
