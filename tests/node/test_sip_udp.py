"""The SIP endpoint's UDP socket: read as datagrams come, or paced while they come at a
moderate rate (`node.sip_read_pace_ms`), and sent through a bounded queue.

Real sockets on 127.0.0.1; a client sends OPTIONS at a given rate and times the answers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from sensing_node.transport.sip import SipEndpoint
from sip.message import Response
from sip.transaction import RequestReceived

PACE_S = 0.05


def options(n: int, port: int) -> bytes:
    return (
        f"OPTIONS sip:34020000002000000001@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK-pace-{n}\r\n"
        f"From: <sip:31011200001320000001@3101120000>;tag=t{n}\r\n"
        f"To: <sip:34020000002000000001@3101120000>\r\n"
        f"Call-ID: pace-{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Client(asyncio.DatagramProtocol):
    """Sends numbered OPTIONS and notes when each answer came."""

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.answered: dict[int, float] = {}  # 200 OK
        self.statuses: dict[int, int] = {}
        self.transport: Any = None
        self.port = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        lines = data.split(b"\r\n")
        call_id = next(line for line in lines if line.startswith(b"Call-ID:"))
        n = int(call_id.rsplit(b"-", 1)[1])
        self.statuses[n] = int(lines[0].split()[1])
        if self.statuses[n] == 200:
            self.answered.setdefault(n, asyncio.get_running_loop().time())

    def send(self, n: int, server: tuple[str, int]) -> None:
        self.sent[n] = asyncio.get_running_loop().time()
        self.transport.sendto(options(n, self.port), server)

    def delays(self) -> list[float]:
        return [self.answered[n] - self.sent[n] for n in self.answered]


async def endpoint(pace_s: float, **fail: Any) -> SipEndpoint:
    def on_request(event: RequestReceived) -> None:
        if fail.get("call_id") == event.request.headers.get("Call-ID"):
            raise RuntimeError("the application failed on this one")
        ep.respond(event, Response.for_request(event.request, 200))

    ep = SipEndpoint(on_request, udp_read_pace_s=pace_s)
    await ep.listen("127.0.0.1", 0, tcp=False)
    return ep


async def client_socket() -> Client:
    """A client whose socket holds a read's worth of answers (up to `MAX_BATCH` at once)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    _, client = await asyncio.get_running_loop().create_datagram_endpoint(Client, sock=sock)
    return client


async def run(ep: SipEndpoint, rate: float, seconds: float, first: int = 0) -> Client:
    """Send at `rate` a second for `seconds`, then wait for the last answers."""
    loop = asyncio.get_running_loop()
    client = await client_socket()
    start = loop.time()
    count = int(rate * seconds)
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        client.send(first + i, ep.local)
    for _ in range(100):
        if len(client.answered) == count:
            break
        await asyncio.sleep(0.02)
    client.transport.close()
    assert len(client.answered) == count, f"{count - len(client.answered)} not answered"
    return client


class Reads:
    """Counts the endpoint socket's reads that brought something, and their sizes."""

    def __init__(self, ep: SipEndpoint) -> None:
        assert ep.udp is not None
        self.sizes: list[int] = []
        drain = ep.udp._drain

        def counted() -> int:
            received = drain()
            if received:
                self.sizes.append(received)
            return received

        ep.udp._drain = counted  # type: ignore[method-assign]


async def test_unpaced_reads_each_datagram_as_it_comes() -> None:
    ep = await endpoint(0.0)
    reads = Reads(ep)
    try:
        client = await run(ep, rate=100, seconds=1.5)
    finally:
        await ep.close()
    assert max(client.delays()) < PACE_S / 2
    assert sum(reads.sizes) == 150 and len(reads.sizes) >= 140  # about one datagram per read


async def test_moderate_rate_is_read_once_per_pace() -> None:
    ep = await endpoint(PACE_S)
    reads = Reads(ep)
    try:
        # The first second measures the rate (each datagram read at once); then it is paced.
        first = await run(ep, rate=200, seconds=1.2)
        assert ep.udp is not None and ep.udp.rate > 100
        reads.sizes.clear()
        paced = await run(ep, rate=200, seconds=1.5, first=1_000)
    finally:
        await ep.close()
    assert max(first.delays()) < 1.0
    delays = paced.delays()
    # Every datagram waited at most one pace (and some scheduling slack), several per read.
    assert max(delays) < PACE_S + 0.1, max(delays)
    assert sum(delays) / len(delays) > PACE_S / 5  # really held back, not read at once
    assert sum(reads.sizes) == 300
    assert len(reads.sizes) <= 1.5 / PACE_S + 5, reads.sizes
    assert max(reads.sizes) >= 5


async def test_a_surge_ends_the_pacing_at_the_next_read() -> None:
    ep = await endpoint(PACE_S)
    assert ep.udp is not None
    reads = Reads(ep)
    try:
        await run(ep, rate=200, seconds=1.2)
        await run(ep, rate=200, seconds=0.3, first=1_000)  # paced by now
        assert ep.udp._paced is not None or ep.udp.rate > ep.udp.PACE_FROM
        reads.sizes.clear()
        # 3,000 a second: the first read after the pace finds more than 100 (2,000/s x 50 ms)
        # and reading goes on at once, long before the rate of the second is known.
        surge = await run(ep, rate=3_000, seconds=0.6, first=2_000)
    finally:
        await ep.close()
    late = [surge.answered[n] - surge.sent[n] for n in surge.answered if n >= 2_000 + 300]
    assert sorted(late)[int(0.95 * len(late))] < PACE_S / 2, sorted(late)[-20:]
    assert max(reads.sizes) > ep.udp.PACE_UNTIL * PACE_S  # the read that ended it


async def test_sparse_and_busy_traffic_are_not_paced() -> None:
    ep = await endpoint(PACE_S)
    assert ep.udp is not None
    ep.udp.PACE_UNTIL = 150.0  # a lower band, so that the busy side can be reached from here
    reads = Reads(ep)
    try:
        sparse = await run(ep, rate=10, seconds=2.5)
        assert ep.udp.rate < ep.udp.PACE_FROM and ep.udp._paced is None
        assert reads.sizes == [1] * 25  # each read as it came
        busy_warmup = await run(ep, rate=400, seconds=1.2, first=1_000)
        assert ep.udp.rate > ep.udp.PACE_UNTIL
        busy = await run(ep, rate=400, seconds=1.0, first=2_000)
    finally:
        await ep.close()
    assert max(sparse.delays()) < PACE_S / 2
    assert max(busy_warmup.delays()) < 1.0
    assert sorted(busy.delays())[int(0.9 * 400)] < PACE_S / 2
    assert ep.udp._paced is None


async def test_a_read_takes_at_most_a_batch_and_then_reads_on() -> None:
    ep = await endpoint(PACE_S)
    assert ep.udp is not None
    ep.udp.MAX_BATCH = 8
    reads = Reads(ep)
    client = await client_socket()
    try:
        for n in range(40):  # all at once, before the loop reads any
            client.send(n, ep.local)
        for _ in range(100):
            if len(client.answered) == 40:
                break
            await asyncio.sleep(0.01)
    finally:
        client.transport.close()
        await ep.close()
    assert len(client.answered) == 40
    assert max(reads.sizes) == 8 and len(reads.sizes) >= 5


async def test_a_failing_request_does_not_stop_the_reading() -> None:
    ep = await endpoint(PACE_S, call_id="pace-3")
    try:
        client = await client_socket()
        for n in range(6):
            client.send(n, ep.local)
        client.transport.sendto(b"garbage\r\n\r\n", ep.local)
        for n in range(6, 10):
            client.send(n, ep.local)
        for _ in range(100):
            if len(client.answered) == 9:
                break
            await asyncio.sleep(0.01)
        client.transport.close()
    finally:
        await ep.close()
    assert sorted(client.answered) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert client.statuses[3] == 500  # the application failed on it


async def test_datagrams_that_fail_are_counted_and_logged_once_a_second_per_host(
        caplog: pytest.LogCaptureFixture) -> None:
    # A fault past the transaction layer (not an application's: those are answered 500) on
    # every datagram of one kind: each is dropped and counted, the log gets one line a
    # second from that host, and the reader goes on with the rest.
    ep = await endpoint(0.0)
    received = ep.datagram_received

    def faulty(data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith(b"FAULT"):
            raise ValueError("a fault")
        received(data, addr)

    ep.datagram_received = faulty  # type: ignore[method-assign]
    try:
        client = await client_socket()
        with caplog.at_level(logging.ERROR, logger="sensing_node.transport.sip"):
            for n in range(50):
                client.transport.sendto(b"FAULT %d" % n, ep.local)
            client.send(1, ep.local)
            for _ in range(100):
                if client.answered:
                    break
                await asyncio.sleep(0.01)
        client.transport.close()
    finally:
        await ep.close()
    assert list(client.answered) == [1]
    assert ep.stats.dropped["failed"] == 50
    lines = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is not None


class _Refusing:
    """A socket whose sends the kernel refuses until `open` is set (as a full send buffer)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.open = False
        self.refused = 0

    def sendto(self, data: bytes, addr: Any) -> int:
        if not self.open:
            self.refused += 1
            raise BlockingIOError
        return self.sock.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


async def test_sends_the_kernel_refuses_wait_in_a_bounded_queue() -> None:
    ep = await endpoint(0.0)
    assert ep.udp is not None
    ep.udp.MAX_QUEUED = 5
    refusing = _Refusing(ep.udp.sock)
    ep.udp.sock = refusing  # type: ignore[assignment]
    client = await client_socket()
    try:
        for n in range(8):
            client.send(n, ep.local)
        for _ in range(50):
            if ep.stats.dropped["udp_send_queue_full"] == 3:
                break
            await asyncio.sleep(0.01)
        assert refusing.refused >= 1 and not client.answered
        assert len(ep.udp._queue) == 5 and ep.stats.dropped["udp_send_queue_full"] == 3
        refusing.open = True  # the writer drains the queue in order
        for _ in range(100):
            if len(client.answered) == 5:
                break
            await asyncio.sleep(0.01)
        assert sorted(client.answered) == [0, 1, 2, 3, 4] and not ep.udp._queue
        assert ep.udp._queued_bytes == 0
        # The bound in bytes: room for two and a half answers.
        refusing.open = False
        client.send(10, ep.local)
        for _ in range(50):
            if ep.udp._queue:
                break
            await asyncio.sleep(0.01)
        size = len(ep.udp._queue[0][0])
        assert ep.udp._queued_bytes == size
        ep.udp.MAX_QUEUED_BYTES = 2 * size + size // 2
        client.send(11, ep.local)
        client.send(12, ep.local)
        for _ in range(50):
            if ep.stats.dropped["udp_send_queue_full"] == 4:
                break
            await asyncio.sleep(0.01)
        assert len(ep.udp._queue) == 2 and ep.stats.dropped["udp_send_queue_full"] == 4
        refusing.open = True
        for _ in range(100):
            if {10, 11} <= set(client.answered):
                break
            await asyncio.sleep(0.01)
        assert {10, 11} <= set(client.answered) and 12 not in client.answered
        assert ep.udp._queued_bytes == 0
        client.send(20, ep.local)  # and sends at once again
        for _ in range(100):
            if 20 in client.answered:
                break
            await asyncio.sleep(0.01)
        assert 20 in client.answered
    finally:
        client.transport.close()
        await ep.close()


@pytest.mark.parametrize("pace_s", [0.0, PACE_S])
async def test_close_stops_reading_and_frees_the_port(pace_s: float) -> None:
    ep = await endpoint(pace_s)
    await run(ep, rate=100, seconds=1.2)  # paced by now when pace_s is set
    port = ep.local[1]
    udp = ep.udp
    assert udp is not None
    paced = udp._paced
    await ep.close()
    assert udp._closed and (paced is None or paced.cancelled())
    again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        again.bind(("127.0.0.1", port))
    finally:
        again.close()
