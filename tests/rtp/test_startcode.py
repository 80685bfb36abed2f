"""The NAL start code search of rtp.psframe: the C one (rtp/_startcode.c, built by make with the
compiled modules) and the pure Python one (a compiled regex, `rtp.psframe._search_start`) give
what `bytes.find` gives; the demuxer's scan of a frame is the same with either; the compiled
demuxer uses the C one, and the pure Python never does."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rtp.psframe
from rtp.ps import PsDemuxer
from sensing_node.transport import native
from tests.conftest import load

ROOT = Path(__file__).resolve().parents[2]
START = b"\x00\x00\x01"
MEDIA = ["gb_h264_zlm.ps", "gb_h265_zlm.ps", "gb_h264_alaw_zlm.ps",
         "h264_640x360_25fps_10s_ffmpeg.ps", "h265_640x360_25fps_10s_ffmpeg.ps"]

Find = Callable[[bytes, int], int]

# The C search where make built it and the node would use it (the build is fresh and
# SENSING_NODE_PURE_PYTHON is not set), as the compiled demuxer imports it.
C_FIND: Find | None = None
if native.COMPILED:
    from rtp._startcode import find as C_FIND

FINDS = [pytest.param(rtp.psframe._search_start, id="pure")]
if C_FIND is not None:
    FINDS.append(pytest.param(C_FIND, id="c"))


def c_find() -> Find:
    """The C search, or a skip where there is no compiled build to use: only where nothing
    requires one (CI sets SENSING_NODE_REQUIRE_NATIVE=1, and builds it) or in the pure pass
    (SENSING_NODE_PURE_PYTHON=1, which runs the regex)."""
    if C_FIND is None:
        if not os.environ.get("SENSING_NODE_PURE_PYTHON"):
            assert not os.environ.get("SENSING_NODE_REQUIRE_NATIVE"), (
                f"SENSING_NODE_REQUIRE_NATIVE is set but nothing compiled is used: {native.WHY}")
        pytest.skip(f"not compiled here: {native.WHY}")
    return C_FIND


# --- the search against bytes.find -----------------------------------------------------------

# Bytes that make start codes (and near misses) likely, and any bytes.
DATA = st.one_of(
    st.binary(max_size=80),
    st.lists(st.sampled_from([0, 0, 0, 1, 2, 0xFF]), max_size=80).map(bytes),
)
STARTS = st.one_of(st.integers(-100, 100), st.integers())


@pytest.mark.parametrize("find", FINDS)
@given(data=DATA, start=STARTS)
def test_find_is_bytes_find(find: Find, data: bytes, start: int) -> None:
    assert find(data, start) == data.find(START, start)


@pytest.mark.parametrize("find", FINDS)
@pytest.mark.parametrize(
    ("data", "start", "found"),
    [
        (b"", 0, -1), (b"", -1, -1), (b"", 5, -1),
        (b"\x00\x01", 0, -1), (b"\x00\x00", 0, -1),
        (START, 0, 0), (START, 1, -1), (START, 3, -1), (START, 4, -1),
        (START, -3, 0), (START, -2, -1), (START, -1000, 0),
        (b"\x00\x00\x00\x01", 0, 1), (b"\x00\x00\x00\x01", 1, 1), (b"\x00\x00\x00\x01", 2, -1),
        (b"xy" + START, 2, 2), (b"xy" + START, 3, -1), (b"xy" + START, -3, 2),
        (b"xy" + START, -2, -1),
        # a match that begins before start does not count, the next one does
        (START + START, 1, 3), (START + START, 2, 3), (START + START, 3, 3),
        (START + START, 4, -1),
        (b"\x00" * 10 + b"\x01", 0, 8), (b"\x00" * 10 + b"\x01", 8, 8),
        (b"\x00" * 10 + b"\x01", 9, -1),
        # zeros before start and the 0x01 after it
        (b"\x00\x00\x01\x01", 1, -1), (b"\x00\x01\x00\x00\x01", 1, 2),
        (b"\x01\x00\x00\x01", 0, 1), (b"\x00\x00\x02\x00\x00\x01", 0, 3),
        (START, 2**70, -1), (START, -(2**70), 0),
    ],
)
def test_find_edges(find: Find, data: bytes, start: int, found: int) -> None:
    assert data.find(START, start) == found  # the table itself is right
    assert find(data, start) == found


@pytest.mark.parametrize("find", FINDS)
def test_find_in_long_buffers(find: Find) -> None:
    # Long runs without a 0x01 byte or a zero, and start codes at the very start and end.
    rng = random.Random(7)
    for data in (
        rng.randbytes(100_000),
        START + bytes(rng.choice([2, 3, 0xFF]) for _ in range(5000)) + START,
        bytes(50_000) + START,
        b"\x01" * 50_000 + START,
    ):
        found = [k for k in range(len(data)) if data.startswith(START, k)]
        starts = {*range(0, len(data), 997), len(data) - 3, len(data) - 2}
        starts |= {k + d for k in found for d in range(-3, 4)}
        for start in sorted(starts):
            assert find(data, start) == data.find(START, start)


def test_the_c_search_takes_any_buffer_and_checks_its_arguments() -> None:
    find: Callable[..., Any] = c_find()
    data = b"\xff\x00\x00\x00\x01\x07"
    for kind in (bytearray, memoryview):
        assert find(kind(data), 0) == 2 and find(kind(data), -3) == -1
    with pytest.raises(TypeError):
        find(data)
    with pytest.raises(TypeError):
        find(data, 0, 1)
    with pytest.raises(TypeError):
        find("\x00\x00\x01", 0)
    with pytest.raises(TypeError):
        find(data, 1.0)


# --- the demuxer's scan with either ----------------------------------------------------------


def video_payloads(name: str) -> list[bytes]:
    """The video units' payloads of a capture, as PsDemuxer cuts them (one frame each)."""
    demuxer = PsDemuxer()
    units = demuxer.feed(load(f"media/{name}")) + demuxer.flush()
    return [unit.data for unit in units if unit.stream_id >= 0xE0]


def scans(codec: str, data: bytes, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """_scan_video's result: pure (the regex), pure with the C search, compiled (the C search)."""
    find = c_find()
    import rtp._psframe_native as compiled  # type: ignore[import-not-found]

    pure = rtp.psframe._scan_video(codec, data)
    with monkeypatch.context() as patch:
        patch.setattr(rtp.psframe, "_find_start", find)
        with_c = rtp.psframe._scan_video(codec, data)
    return [pure, with_c, compiled._scan_video(codec, data)]


def bytes_find(data: bytes, start: int) -> int:
    return data.find(START, start)


def positions(find: Find, data: bytes) -> list[int]:
    """Every start code of `data`, one search after the other as the scan makes them."""
    found: list[int] = []
    k = find(data, 0)
    while k >= 0:
        found.append(k)
        k = find(data, k + 3)
    return found


@pytest.mark.parametrize("name", MEDIA)
def test_the_scan_of_real_frames_is_the_same_with_either(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    find = c_find()
    codec = "h265" if "h265" in name else "h264"
    frames = video_payloads(name)
    assert len(frames) == 250
    accepted = 0
    for data in frames:
        results = scans(codec, data, monkeypatch)
        assert results[1] == results[0] and results[2] == results[0]
        accepted += results[0] is not None
        assert positions(find, data) == positions(bytes_find, data)
    if "zlm" in name:  # camera frames: one access unit each, all taken
        assert accepted == len(frames)


# Pieces of a video payload: start codes, near misses, NAL headers of both codecs (with the
# first-slice bit), any bytes.
PIECES = st.one_of(
    st.sampled_from([
        START, b"\x00\x00\x00\x01", b"\x00", b"\x01", b"\x00\x00", b"\x00\x00\x03",
        START + b"\x67\x80", START + b"\x09\x80", START + b"\x65\x88", START + b"\x41\x08",
        START + b"\x40\x01\x80", START + b"\x26\x01\xaf", START + b"\x02\x01\x00",
        START + b"\xba", START + b"\xe0",
    ]),
    st.binary(max_size=6),
)


@given(
    codec=st.sampled_from(["h264", "h265"]),
    head=st.sampled_from([b"", START, b"\x00\x00\x00\x01", b"\x00" + START]),
    pieces=st.lists(PIECES, max_size=24),
)
def test_the_scan_of_generated_payloads_is_the_same_with_either(
    codec: str, head: bytes, pieces: list[bytes]
) -> None:
    data = head + b"".join(pieces)
    with pytest.MonkeyPatch.context() as monkeypatch:
        results = scans(codec, data, monkeypatch)
    assert results[1] == results[0] and results[2] == results[0]


# --- which search runs -----------------------------------------------------------------------


def test_the_compiled_demuxer_uses_the_c_search() -> None:
    # A build whose compiled demuxer fell back to the regex would pass every test above.
    find = c_find()
    import rtp._startcode
    from rtp import _psframe_native as compiled

    assert find is rtp._startcode.find
    assert compiled._find_start is rtp._startcode.find
    assert native.PsFrameDemuxer is compiled.PsFrameDemuxer
    assert rtp.psframe._find_start is rtp.psframe._search_start  # the pure one never does


def test_the_pure_python_runs_no_compiled_code() -> None:
    # SENSING_NODE_PURE_PYTHON=1: the demuxer scans frames with the regex, and neither the C
    # search nor a compiled module is loaded.
    code = (
        "import sys\n"
        "from sensing_node.transport import native\n"
        "from tests.conftest import load\n"
        "stream = load('media/gb_h264_zlm.ps')\n"
        "cuts = [0]\n"
        "while len(cuts) < 10:\n"
        "    cuts.append(stream.find(b'\\x00\\x00\\x01\\xba', cuts[-1] + 4))\n"
        "demuxer = native.PsFrameDemuxer()\n"
        "for a, b in zip(cuts, cuts[1:]):\n"
        "    demuxer.feed_frame(stream[a:b])\n"
        "assert not native.COMPILED and demuxer.fast_frames == len(cuts) - 1 > 5, native.WHY\n"
        "print(*sorted(name for name in sys.modules if name.startswith('rtp._')))\n"
    )
    env = {**os.environ, "SENSING_NODE_PURE_PYTHON": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
