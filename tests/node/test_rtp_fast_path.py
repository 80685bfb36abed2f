"""The common RTP packet's fast path (`rtp.fast`, compiled by make) against the receiver's full
path: the same packets reach the consumer, in the same order, with the same counters, whatever
the datagrams are; and a real socket's stream takes the fast path."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtp.fast
import rtp.psframe
import rtp.reorder
from sensing_node.transport import native
from sensing_node.transport.rtp import PortPool, TcpRtpReceiver, UdpRtpReceiver

from .conftest import free_even_range

SOURCE = ("127.0.0.1", 40000)
SSRC = 0x0BADCAFE

#: the fast path, the reorder buffer and the frame it takes, as built (compiled or not) and pure
CLASSES = [pytest.param(
    (rtp.fast.FastReceive, rtp.reorder.ReorderBuffer, rtp.fast.FrameAssembly), id="pure")]
if native.COMPILED:
    CLASSES.append(pytest.param(
        (native.FastReceive, native.ReorderBuffer, native.FrameAssembly), id="compiled"))

Classes = tuple[type, type, type]


class Keeper:
    """A stream's sink as `LiveStream` is one: a gap check on its frame's `next_seq`, then the
    frame's `add`. The frame's ends are recorded (payloads joined, timestamp), and the
    `fail_at`-th event raises, as a failing consumer would."""

    def __init__(self, frame_class: type = native.FrameAssembly, fail_at: int = -1) -> None:
        self.frame = frame_class(4096, self.end_frame)
        self.events: list[tuple[Any, ...]] = []
        self.fail_at = fail_at

    def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        frame = self.frame
        if seq != frame.next_seq and frame.next_seq >= 0:
            self.events.append(("gap", (seq - frame.next_seq) & 0xFFFF))
        frame.next_seq = (seq + 1) & 0xFFFF
        frame.add(payload, seq, ts, marker)

    def end_frame(self) -> None:
        frame = self.frame
        parts, frame.parts = frame.parts, []
        self.events.append((b"".join(parts), frame.ts))
        if len(self.events) == self.fail_at:
            raise RuntimeError("consumer failed")

    def rest(self) -> list[tuple[Any, ...]]:
        """The events, and the frame still open."""
        return [*self.events, ("open", b"".join(self.frame.parts), self.frame.ts)]


class Loop:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        self.now += 0.001
        return self.now

    def call_at(self, when: float, callback: Any) -> Any:
        return asyncio.get_event_loop_policy()  # never fires: an object with no use


COUNTERS = ("packets", "bytes", "last_packet_at", "lost", "reordered", "duplicates", "rtcp",
            "dropped_foreign", "dropped_invalid", "sink_errors", "ssrc", "source")


def receiver(cls: Classes, fast: bool, fail_at: int, via: str = "udp") -> tuple[Any, Keeper]:
    fast_class, reorder_class, frame_class = cls

    def new_reorder(self: UdpRtpReceiver) -> Any:
        return reorder_class(self.config.reorder_window, self.config.max_delay_s)

    base = UdpRtpReceiver if via == "udp" else TcpRtpReceiver
    kind = type("Receiver", (base,), {"fast_class": fast_class, "_new_reorder": new_reorder,
                                      "fast_path": True})
    keeper = Keeper(frame_class, fail_at)
    r = kind(keeper)
    loop = Loop()
    r._loop = loop
    r._fast.clock = loop.time
    r._arm_timer = lambda: None  # no timer: nothing expires
    if via == "udp":
        r.expect(SOURCE[0], SSRC)
    else:
        r.expect(SSRC)
    if fast:
        r.attach_fast(keeper.frame)
    return r, keeper


def packet(seq: int, ts: int, marker: bool, ssrc: int = SSRC, first: int = 0x80,
           pt: int = 96, size: int = 20) -> bytes:
    head = struct.pack("!BBHII", first, pt | (0x80 if marker else 0), seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc)
    return head + bytes((seq + i) & 0xFF for i in range(size))


@st.composite
def datagrams(draw: st.DrawFn) -> list[tuple[bytes, tuple[str, int]]]:
    """A camera's stream (frames of a few packets, a marker on each last one) with what the
    network and strangers do to it: loss, reordering, duplicates, other sources and SSRCs,
    RTCP, packets with padding or an extension, garbage, a sequence number jump."""
    seq = draw(st.integers(0, 0xFFFF))
    ts = draw(st.integers(0, 0xFFFFFFFF))
    stream: list[bytes] = []
    for _ in range(draw(st.integers(1, 12))):
        count = draw(st.integers(1, 5))
        for i in range(count):
            stream.append(packet(seq, ts, i == count - 1))
            seq += 1
        ts += 3600
        if draw(st.integers(0, 20)) == 0:
            seq += draw(st.integers(2, 40000))  # a jump: a gap, or a restart
    out: list[tuple[bytes, tuple[str, int]]] = [(p, SOURCE) for p in stream]
    for _ in range(draw(st.integers(0, 12))):
        at = draw(st.integers(0, len(out)))
        what = draw(st.sampled_from(
            ["drop", "swap", "duplicate", "stranger", "ssrc", "rtcp", "padding", "extension",
             "garbage", "other port"]))
        if what == "drop" and at < len(out):
            del out[at]
        elif what == "swap" and at + 1 < len(out):
            out[at], out[at + 1] = out[at + 1], out[at]
        elif what == "duplicate" and at < len(out):
            out.insert(at, out[at])
        elif what == "stranger":
            out.insert(at, (packet(seq, ts, False), ("127.0.0.2", 40000)))
        elif what == "other port":
            out.insert(at, (packet(seq, ts, False), (SOURCE[0], 40002)))
        elif what == "ssrc":
            out.insert(at, (packet(seq, ts, False, ssrc=SSRC + 1), SOURCE))
        elif what == "rtcp":
            out.insert(at, (packet(seq, ts, False, pt=200 - 128), SOURCE))
        elif what == "padding" and at < len(out) and len(out[at][0]) > 12:
            data = bytearray(out[at][0])
            data[0] |= 0x20
            data += b"\x00\x00\x02"  # three bytes of padding, the last its count
            data[-1] = 3
            out[at] = (bytes(data), SOURCE)
        elif what == "extension" and at < len(out) and len(out[at][0]) > 12:
            data = out[at][0]
            ext = struct.pack("!HH", 0xABAC, 1) + b"\x01\x02\x03\x04"
            out[at] = (bytes([data[0] | 0x10]) + data[1:12] + ext + data[12:], SOURCE)
        elif what == "garbage":
            out.insert(at, (draw(st.binary(max_size=16)), SOURCE))
    return out


def feed(cls: Classes, fast: bool, items: list[tuple[bytes, tuple[str, int]]],
         fail_at: int, via: str = "udp") -> tuple[list[tuple[Any, ...]], dict[str, Any], int]:
    r, keeper = receiver(cls, fast, fail_at, "tcp" if via == "tcp" else "udp")
    if via == "udp":
        receive = r.receive_datagram if fast else r.datagram_received
        for data, addr in items:
            receive(data, addr)
    elif via == "batch":
        # A socket connected to its source once it is latched: only the source's datagrams,
        # read many at a time into one bytes object (`native.drain`), a few bytes before the
        # first, handed over as (batch, start, end).
        items = [(data, addr) for data, addr in items if addr == SOURCE]
        if not fast:
            for data, addr in items:
                r.datagram_received(data, addr)
        at = 0
        while fast and at < len(items):
            if r.source is None:
                r.receive_datagram(*items[at])
                at += 1
                continue
            group = [data for data, _ in items[at:at + 1 + at % 4]]
            at += len(group)
            batch = b"\xee" * 7 + b"".join(group)
            start = 7
            for data in group:
                r.receive_in(batch, start, start + len(data))
                start += len(data)
    else:
        # What the RFC 4571 deframer hands on: the packets of the one connection, never empty.
        take = r._on_rtp if fast else r._receive
        for data, addr in items:
            if addr == SOURCE and data:
                take(data)
    r._finish()  # what is held, counted as lost where gaps remain
    counters = COUNTERS if via == "udp" else tuple(c for c in COUNTERS if c != "source")
    return keeper.rest(), {name: getattr(r, name) for name in counters}, r.fast_packets


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("via", ["udp", "batch", "tcp"])
@settings(max_examples=300, deadline=None)
@given(items=datagrams(), fail=st.integers(-1, 12))
def test_the_fast_path_does_what_the_full_path_does(
    cls: Classes, via: str, items: Any, fail: int
) -> None:
    full = feed(cls, False, items, fail, via)
    quick = feed(cls, True, items, fail, via)
    assert quick[0] == full[0]
    assert quick[1] == full[1]
    assert full[2] == 0  # without a frame attached, nothing takes the fast path


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("via", ["udp", "batch", "tcp"])
def test_an_ordinary_stream_takes_the_fast_path(cls: Classes, via: str) -> None:
    items = [packet(65530 + i, 1000 + (i // 4) * 3600, i % 4 == 3) for i in range(40)]
    events, counters, fast = feed(cls, True, [(p, SOURCE) for p in items], -1, via)
    assert events[:-1] == [(b"".join(p[12:] for p in items[i:i + 4]), 1000 + i // 4 * 3600)
                           for i in range(0, 40, 4)]
    assert events[-1] == ("open", b"", 1000 + 9 * 3600)
    assert counters["packets"] == 40 and counters["lost"] == 0
    # The first packet latches the source and the sequence; every later one is fast.
    assert fast == 39


@pytest.mark.parametrize("cls", CLASSES)
def test_a_consumer_of_single_packets_turns_the_fast_path_off(cls: Classes) -> None:
    r, keeper = receiver(cls, True, -1)
    items = [packet(10 + i, 0, i == 9) for i in range(10)]
    for data in items[:5]:
        r.receive_datagram(data, SOURCE)
    r.attach_fast(None)  # what LiveStream does when a relay takes single packets
    for data in items[5:]:
        r.receive_datagram(data, SOURCE)
    assert r.fast_packets == 4
    assert keeper.events == [(b"".join(p[12:] for p in items), 0)]


def test_a_compiled_build_is_used_only_for_the_sources_it_was_built_from() -> None:
    built = list((native.Path(rtp.fast.__file__).parent).glob("_fast_native.*"))
    if not built or os.environ.get("SENSING_NODE_PURE_PYTHON"):
        assert not native.COMPILED
        # Without it the receive path is as it was: the receiver is the socket's protocol.
        r = UdpRtpReceiver(Keeper())
        assert not r.fast_path and r.receive_datagram == r.datagram_received
        assert native.drain is None  # and reads with Python's recv
        pytest.skip(f"not compiled here: {native.WHY}")
    import hashlib

    import rtp._fast_native as fast  # type: ignore[import-not-found]
    import rtp._psframe_native as psframe  # type: ignore[import-not-found]
    import rtp._reorder_native as reorder  # type: ignore[import-not-found]

    h = hashlib.sha256()
    for module in (rtp.reorder, rtp.fast, rtp.psframe):  # the order of tools/build_native.py
        h.update(native.Path(module.__file__ or "").read_bytes())
    h.update(native.Path(rtp.fast.__file__ or "").with_name("_startcode.c").read_bytes())
    h.update(native.Path(native.__file__ or "").with_name("_drain.c").read_bytes())
    assert fast.SOURCE_SHA256 == reorder.SOURCE_SHA256 == psframe.SOURCE_SHA256 == h.hexdigest()
    assert native.COMPILED and native.PsFrameDemuxer is psframe.PsFrameDemuxer
    assert (native.FastReceive, native.ReorderBuffer) == (fast.FastReceive, reorder.ReorderBuffer)
    r = UdpRtpReceiver(Keeper())
    assert type(r._fast) is fast.FastReceive and type(r.reorder) is reorder.ReorderBuffer
    assert r.fast_path and r.receive_datagram == r._fast.datagram_received
    r.reorder = r._new_reorder()  # as after an answer: the fast path follows
    assert r._fast.reorder is r.reorder
    import sensing_node.transport._drain as drain  # type: ignore[import-not-found]

    assert native.drain is drain.drain


@pytest.mark.skipif(not native.COMPILED, reason=native.WHY or "compiled")
def test_a_build_from_another_c_source_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The compiled demuxer imports the C start code search built with it, and the receivers
    # read with the C reader built with it: a change to either C source makes the whole build
    # stale, and a missing one leaves it unused.
    sources = native.C_SOURCES
    assert [p.name for p in sources] == ["_startcode.c", "_drain.c"]
    assert native._load()[1] == ""
    for index, source in enumerate(sources):
        changed = tmp_path / source.name
        changed.write_bytes(source.read_bytes() + b"\n")
        swapped = tuple(changed if i == index else p for i, p in enumerate(sources))
        monkeypatch.setattr(native, "C_SOURCES", swapped)
        assert native._load() == ({}, "built from other sources (make builds it again)")
        missing = tuple(tmp_path / "missing.c" if i == index else p
                        for i, p in enumerate(sources))
        monkeypatch.setattr(native, "C_SOURCES", missing)
        modules, why = native._load()
        assert modules == {} and why.startswith("its sources are missing")


@st.composite
def reorder_steps(draw: st.DrawFn) -> list[tuple[str, int, float]]:
    """What a receiver does to its reorder buffer: pushes (in order, out of order, repeated,
    far off), takes, flushes as time goes by, and a drain."""
    seq = draw(st.integers(0, 0xFFFF))
    now = 0.0
    steps: list[tuple[str, int, float]] = []
    for _ in range(draw(st.integers(1, 80))):
        now += draw(st.sampled_from([0.0, 0.001, 0.05, 0.3]))
        what = draw(st.sampled_from(["push", "push", "push", "take", "flush"]))
        step = draw(st.sampled_from([1, 1, 1, 2, 3, -1, -2, 0, 100, 5000, 40000]))
        seq = (seq + step) & 0xFFFF
        steps.append((what, seq, now))
    steps.append(("drain", 0, now))
    return steps


@pytest.mark.skipif(not native.COMPILED, reason=native.WHY or "compiled")
@settings(max_examples=400, deadline=None)
@given(steps=reorder_steps(), window=st.sampled_from([1, 4, 64]))
def test_the_compiled_reorder_buffer_does_what_the_pure_one_does(
    steps: list[tuple[str, int, float]], window: int
) -> None:
    results = []
    for cls in (rtp.reorder.ReorderBuffer, native.ReorderBuffer):
        buf = cls(window, 0.2)
        out: list[Any] = []
        for what, seq, now in steps:
            if what == "push":
                out.append(buf.push(seq, (seq, now), now))
            elif what == "take":
                out.append(buf.take(seq))
            elif what == "flush":
                out.append((buf.flush(now), buf.next_deadline()))
            else:
                out.append(buf.drain())
            out.append(buf.held)
        counters = [getattr(buf, name) for name in (
            "received", "lost", "reordered", "duplicates", "late", "discarded", "restarts")]
        results.append((out, counters))
    assert results[0] == results[1]


async def test_a_stream_over_a_real_socket_takes_the_fast_path() -> None:
    low, high = free_even_range(2, 31000, 32700)
    pool = PortPool(low, high)
    keeper = Keeper()
    # The fast path as the socket's protocol (as the node has it when compiled; pure here
    # when the pure Python is in use).
    kind = type("Receiver", (UdpRtpReceiver,), {"fast_path": True})
    r = await kind.open("127.0.0.1", pool, keeper)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.bind(("127.0.0.1", 0))
        r.expect("127.0.0.1", SSRC)
        r.attach_fast(keeper.frame)
        items = [packet(i, 90 * (i // 5), i % 5 == 4, size=1200) for i in range(200)]
        loop = asyncio.get_running_loop()
        for i, data in enumerate(items):
            sender.sendto(data, ("127.0.0.1", r.port))
            if i % 20 == 19:
                await asyncio.sleep(0.005)  # within the socket's buffer
        for _ in range(200):
            if r.packets == len(items):
                break
            await asyncio.sleep(0.01)
        assert keeper.events == [(b"".join(p[12:] for p in items[i:i + 5]), 90 * (i // 5))
                                  for i in range(0, 200, 5)]
        assert r.packets == 200 and r.bytes == sum(map(len, items))
        assert r.fast_packets == 199
        assert r.last_packet_at is not None and r.last_packet_at <= loop.time()
        assert r.source == sender.getsockname()
    finally:
        sender.close()
        r.close()
