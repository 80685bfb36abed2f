"""The C reader of a UDP stream's connected socket (`sensing_node/transport/_drain.c`,
`native.drain`): one recvmmsg call, every datagram whole into one bytes object, then each
to the callback as (batch, start, end); and the receiver reading with it where the build is
compiled."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator

import pytest

from sensing_node.transport import native
from sensing_node.transport.rtp import READ_BATCH, PortPool, UdpRtpReceiver
from tests.node import test_rtp_transport
from tests.node.test_rtp_transport import HOST, Sender, Tap, seq_of, until

Drain = Callable[[int, Callable[[bytes, int, int], object], int], int]

# the RTP transport tests' fixtures: a camera's packets, a port pool
stream = test_rtp_transport.stream
pool = test_rtp_transport.pool


@pytest.fixture
def drain() -> Drain:
    """The C reader, or a skip where there is no compiled build to use: only where nothing
    requires one (CI sets SENSING_NODE_REQUIRE_NATIVE=1, and builds it) or in the pure pass
    (SENSING_NODE_PURE_PYTHON=1, whose receivers read with Python's recv)."""
    if native.drain is None:
        if not os.environ.get("SENSING_NODE_PURE_PYTHON"):
            assert not os.environ.get("SENSING_NODE_REQUIRE_NATIVE"), (
                f"SENSING_NODE_REQUIRE_NATIVE is set but nothing compiled is used: {native.WHY}")
        pytest.skip(f"not compiled here: {native.WHY}")
    return native.drain


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A receiving socket connected to a sender's, both non-blocking, on loopback."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind((HOST, 0))
    tx.bind((HOST, 0))
    rx.connect(tx.getsockname())
    tx.connect(rx.getsockname())
    rx.setblocking(False)
    try:
        yield rx, tx
    finally:
        rx.close()
        tx.close()


def test_every_queued_datagram_arrives_whole_and_in_order(drain: Drain, pair) -> None:
    rx, tx = pair
    sent = [bytes([i % 251]) * (1 + i * 37) for i in range(100)]  # 1 to 3,664 bytes
    sent.append(b"")  # an empty datagram is one too
    sent.append(os.urandom(65507))  # the largest an IPv4 datagram holds
    for datagram in sent:
        tx.send(datagram)
    got: list[tuple[bytes, int, int]] = []
    counts = []
    while len(got) < len(sent):
        counts.append(drain(rx.fileno(), lambda *call: got.append(call), READ_BATCH))
        assert counts[-1] > 0
    assert [batch[start:end] for batch, start, end in got] == sent
    assert all(type(batch) is bytes for batch, _, _ in got)
    # One object per call, each datagram right after the one before it in it.
    batches = {id(batch): batch for batch, _, _ in got}
    assert len(batches) == len(counts)
    for (batch, start, _), (before, _, end) in zip(got[1:], got[:-1], strict=True):
        assert start == (end if batch is before else 0)
    assert all(got[i][2] == len(got[i][0]) for i in range(len(got))
               if i + 1 == len(got) or got[i + 1][0] is not got[i][0])
    assert max(counts) <= 64 and sum(counts) == len(sent)
    assert drain(rx.fileno(), got.append, READ_BATCH) == 0  # empty: nothing, no error


def test_at_most_the_limit_is_read_per_call(drain: Drain, pair) -> None:
    rx, tx = pair
    for i in range(10):
        tx.send(bytes([i]))
    got: list[bytes] = []

    def take(batch: bytes, start: int, end: int) -> None:
        got.append(batch[start:end])

    assert drain(rx.fileno(), take, 3) == 3
    assert drain(rx.fileno(), take, 0) == 0
    assert drain(rx.fileno(), take, 100) == 7
    assert got == [bytes([i]) for i in range(10)]


def test_a_failing_callback_still_gets_the_rest_then_the_first_error(
    drain: Drain, pair,
) -> None:
    rx, tx = pair
    for i in range(5):
        tx.send(bytes([i]))
    got: list[bytes] = []

    def receive(batch: bytes, start: int, end: int) -> None:
        data = batch[start:end]
        got.append(data)
        if data[0] in (1, 3):
            raise ValueError(f"bad {data[0]}")

    with pytest.raises(ValueError, match="bad 1"):
        drain(rx.fileno(), receive, READ_BATCH)
    assert got == [bytes([i]) for i in range(5)]


def test_a_socket_error_reads_nothing(drain: Drain) -> None:
    read, write = os.pipe()
    try:
        assert drain(read, print, READ_BATCH) == 0  # not a socket (ENOTSOCK)
    finally:
        os.close(read)
        os.close(write)
    with pytest.raises(ValueError):
        drain(-1, print, READ_BATCH)


async def test_the_receiver_reads_its_latched_source_with_it(
    drain: Drain, monkeypatch: pytest.MonkeyPatch, stream, pool: PortPool,
) -> None:
    """Once the source is latched (and the queue from before the connect was read with
    addresses), the compiled build's receiver reads with `native.drain`."""
    _, packets = stream
    calls: list[int] = []

    def counting(fd: int, receive: Callable[[bytes, int, int], object], limit: int) -> int:
        calls.append(count := drain(fd, receive, limit))
        return count

    monkeypatch.setattr(native, "drain", counting)
    tap = Tap()
    receiver = await UdpRtpReceiver.open(HOST, pool, tap)
    receiver.expect(HOST)
    sender = Sender()
    try:
        await sender.send(packets[:1], receiver.port)
        await until(lambda: receiver.packets == 1)
        await asyncio.sleep(0.01)
        await sender.send(packets[1:200], receiver.port)
        await until(lambda: receiver.packets == 200)
    finally:
        sender.close()
        receiver.close()
    assert tap.seqs == [seq_of(p) for p in packets[:200]]
    assert sum(calls) == 199
