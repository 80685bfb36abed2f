"""RFC 4475 torture messages blasted at a running node's SIP port (UDP and TCP).

The node must survive every one of them: a malformed request is answered with a 4xx or 5xx
where it can be addressed, or dropped and counted; it is never accepted with a 2xx, and the
node keeps serving devices afterwards.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import PASSWORD, StartNode
from .sipclient import TcpPeer, UdpPeer, register

TORTURE = Path(__file__).resolve().parents[1] / "data" / "rfc4475"


def verdicts() -> dict[str, str]:
    rows = {}
    for line in (TORTURE / "INDEX.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 5 and cells[1].endswith(".dat"):
            rows[cells[1]] = cells[4]
    return rows


VERDICTS = verdicts()


def wire_form(name: str) -> bytes:
    """CRLF line ends as the RFC's Content-Length values assume (see INDEX.md)."""
    data = (TORTURE / name).read_bytes()
    if b"\r" not in data:
        data = data.replace(b"\n", b"\r\n")
    return data


async def drain(peer: UdpPeer, timeout: float = 0.3) -> list[int]:
    statuses = []
    while True:
        try:
            raw = await peer.recv_raw(timeout=timeout)
        except TimeoutError:
            return statuses
        # Read the status line only: an answer salvaged from a malformed request copies its
        # malformed headers, so the response need not parse as a whole.
        match = re.match(rb"SIP/2\.0 (\d{3}) ", raw)
        if match:
            statuses.append(int(match.group(1)))


@pytest.mark.parametrize("name", sorted(VERDICTS), ids=lambda n: n[:-4])
async def test_node_survives_torture_message_over_udp(start_node: StartNode, name: str):
    running = await start_node(devices__allow=[])
    peer = await UdpPeer.open(running.sip)
    try:
        peer.send(wire_form(name))
        statuses = await drain(peer)
        if VERDICTS[name] == "invalid":
            assert all(s >= 400 for s in statuses), statuses
            if not statuses:
                stats = await running.get("/api/stats")
                assert sum(stats["dropped"].values()) >= 1  # dropped, and counted
        # Only the node's own answers (no 2xx to a REGISTER it cannot authenticate).
        assert all(s != 200 for s in statuses) or VERDICTS[name].startswith("valid")
        # It still serves a device.
        assert (await register(peer, "31011200001320000001", PASSWORD)).status == 200
    finally:
        peer.close()


async def test_node_survives_all_torture_messages_over_one_tcp_connection_each(
    start_node: StartNode,
):
    running = await start_node(devices__allow=[])
    for name in sorted(VERDICTS):
        peer = await TcpPeer.open(running.sip)
        try:
            peer.send(re.sub(rb"SIP/2.0/UDP", b"SIP/2.0/TCP", wire_form(name)))
            await peer.writer.drain()
        finally:
            peer.close()
    udp = await UdpPeer.open(running.sip)
    try:
        assert (await register(udp, "31011200001320000001", PASSWORD)).status == 200
    finally:
        udp.close()
