"""Structured logs: the JSON formatter on real log records, and `sensing-node run
--log-format json` as a log collector reads it (every line one JSON object)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensing_node.runtime.logs import JsonFormatter, recognise_ids

ROOT = Path(__file__).resolve().parents[2]
IPC = "31011200001320000001"  # type 132: a device (an IPC registers itself)
NVR = "31011200001180000001"  # type 118
CAMERA_CHANNEL = "31011200001310000101"  # type 131
PLATFORM = "31011200002000000100"  # type 200


def emit(msg: str, *args: Any, extra: dict[str, Any] | None = None, exc: bool = False,
         level: int = logging.INFO) -> dict[str, Any]:
    """Log through a real logger into a JSON handler; the one line it wrote, parsed."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.Logger("sensing_node.test_logs")  # outside the tree: no other handler
    logger.addHandler(handler)
    if exc:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            logger.exception(msg, *args, extra=extra)
    else:
        logger.log(level, msg, *args, extra=extra)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1, text
    return json.loads(text)


def test_a_record_has_time_level_logger_and_message():
    line = emit("stream %s playing: %s", "x", "udp", level=logging.WARNING)
    assert line["level"] == "WARNING" and line["logger"] == "sensing_node.test_logs"
    assert line["message"] == "stream x playing: udp"
    stamp = datetime.fromisoformat(line["time"])
    assert stamp.tzinfo is not None and abs(stamp.timestamp() - time.time()) < 3600
    assert not {"device", "channel", "call_id", "exc"} & set(line)


def test_fields_given_as_extra():
    line = emit("INVITE refused", extra={"device": IPC, "channel": CAMERA_CHANNEL,
                                         "call_id": "a84b4c76e66710@pc33"})
    assert (line["device"], line["channel"], line["call_id"]) == (
        IPC, CAMERA_CHANNEL, "a84b4c76e66710@pc33")


def test_ids_recognised_among_the_arguments_by_type_code():
    line = emit("%s: INVITE for %s answered", IPC, CAMERA_CHANNEL)
    assert (line["device"], line["channel"]) == (IPC, CAMERA_CHANNEL)
    # An NVR's channel may carry an IPC code: after a device it is the channel.
    line = emit("device %s channel %s", NVR, IPC)
    assert (line["device"], line["channel"]) == (NVR, IPC)
    # A platform's code is neither; nor is a 20-character string that is not all digits.
    line = emit("upstream %s INVITE for %s refused", PLATFORM, CAMERA_CHANNEL)
    assert "device" not in line and line["channel"] == CAMERA_CHANNEL
    assert recognise_ids(("3101120000132000000x", 31011200001320000001)) == {}
    assert recognise_ids({"id": IPC}) == {}  # named arguments are not looked into


def test_extra_wins_over_what_the_arguments_suggest():
    line = emit("moved %s", CAMERA_CHANNEL, extra={"channel": "31011200001310000999"})
    assert line["channel"] == "31011200001310000999"


def test_an_exception_goes_into_exc_with_its_traceback():
    line = emit("task %s failed", "recording", exc=True)
    assert line["level"] == "ERROR" and line["message"] == "task recording failed"
    assert line["exc"].startswith("Traceback") and "ZeroDivisionError" in line["exc"]


def test_arguments_that_do_not_fit_the_format_are_kept():
    line = emit("%d frames", "many")
    assert line["message"] == "%d frames ('many',)"


@given(st.text(), st.lists(st.one_of(st.text(), st.integers(), st.none()), max_size=4))
def test_any_message_is_one_line_of_json(msg: str, args: list[Any]) -> None:
    record = logging.LogRecord("sensing_node", logging.INFO, __file__, 1, msg, tuple(args), None)
    text = JsonFormatter().format(record)
    assert "\n" not in text and "\r" not in text
    parsed = json.loads(text)
    assert parsed["logger"] == "sensing_node" and isinstance(parsed["message"], str)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_node(tmp_path: Path, *options: str, until: str, timeout: float = 30.0) -> list[str]:
    """Run the node with one built-in camera (recorded, so its stream plays) until a line
    after "HTTP API on" (the signal handlers are set right after it) contains `until`, stop it
    with SIGTERM; every line it logged."""
    config = tmp_path / "node.yaml"
    config.write_text(
        "node:\n"
        f"  sip_listen: \"127.0.0.1:{free_port()}\"\n"
        f"  http_listen: \"127.0.0.1:{free_port()}\"\n"
        "  api_token: \"secret\"\n"
        f"  data_dir: \"{tmp_path / 'data'}\"\n"
        "devices:\n  password: \"12345678\"\n"
        "simulator:\n  cameras: 1\n  channels_per_camera: 1\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sensing_node", "run", "-c", str(config), *options],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        serving = False
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if serving and until in line:
                break
            serving = serving or "HTTP API on" in line
        assert serving and until in lines[-1], "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=20)
        lines += rest.splitlines(keepends=True)
        assert proc.returncode == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return lines


def test_run_with_log_format_json_writes_one_object_per_line(tmp_path):
    lines = run_node(tmp_path, "--log-format", "json", until='"channel"')
    records = [json.loads(line) for line in lines]  # every line: nothing else is written
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    device = "34020000001320000001"  # the built-in camera: the node's ID prefix, type 132
    channel = "34020000001310000101"
    assert any(r.get("device") == device and "registered" in r["message"] for r in records)
    assert any(r.get("channel") == channel and r["logger"] == "sensing_node.media.stream"
               for r in records)
    assert records[-1]["message"] == "stopped" and records[-1]["logger"] == "sensing_node"


def test_text_stays_the_default(tmp_path):
    lines = run_node(tmp_path, until="playing:")
    assert lines[-1].rstrip().endswith("INFO sensing_node: stopped")
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_an_unknown_log_format_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "sensing_node", "run", "-c", "x.yaml", "--log-format", "xml"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2 and "invalid choice: 'xml'" in result.stderr
