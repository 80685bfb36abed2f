"""Malformed, hostile, oversized and flooding input against a running node."""

from __future__ import annotations

import asyncio

from sip import manscdp

from .conftest import PASSWORD, StartNode
from .sipclient import TcpPeer, UdpPeer, message_bytes, register, register_bytes

CAMERA = "31011200001320000001"
OTHER = "31011200001320000002"

BILLION_LAUGHS = b"""<?xml version="1.0" encoding="GB2312"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>&lol3;</DeviceID></Notify>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>&xxe;</DeviceID></Notify>"""


async def test_hostile_and_undecodable_bodies_get_400_and_others_are_unaffected(
    start_node: StartNode,
):
    running = await start_node()
    bad = await UdpPeer.open(running.sip)
    good = await UdpPeer.open(running.sip)
    try:
        assert (await register(bad, CAMERA, PASSWORD)).status == 200
        assert (await register(good, OTHER, PASSWORD)).status == 200
        for body in (BILLION_LAUGHS, EXTERNAL_ENTITY, b"<Notify><CmdType>", b"\xff\xfe\x00garbage",
                     b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>" + b"\x81" * 9
                     + b"</DeviceID></Notify>"):
            bad.send(message_bytes(CAMERA, bad.port, body))
            reply = await bad.recv()
            assert (reply.status, reply.reason) == (400, "Bad MANSCDP Body"), body[:30]
            # The other device carries on as if nothing happened.
            good.send(message_bytes(OTHER, good.port, manscdp.keepalive(1, OTHER)))
            assert (await good.recv()).status == 200
    finally:
        bad.close()
        good.close()


async def test_unknown_manscdp_root_gets_415(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, CAMERA, PASSWORD)).status == 200
        body = b"<Frobnicate><CmdType>Keepalive</CmdType><SN>1</SN></Frobnicate>"
        peer.send(message_bytes(CAMERA, peer.port, body))
        assert (await peer.recv()).status == 415
    finally:
        peer.close()


async def test_garbage_is_dropped_and_counted_and_node_keeps_serving(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        for junk in (b"\x00\x01\x02", b"hello world\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n",
                     b"REGISTER\r\n\r\n", bytes(range(256)) * 4):
            peer.send(junk)
        assert await peer.nothing(0.3)
        stats = await running.get("/api/stats")
        assert stats["dropped"].get("malformed", 0) == 5
        # Still serving.
        assert (await register(peer, CAMERA, PASSWORD)).status == 200
    finally:
        peer.close()


async def test_malformed_but_addressable_request_gets_400(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        data = register_bytes(CAMERA, peer.port).replace(b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE")
        peer.send(data)
        reply = await peer.recv()
        assert reply.status == 400
        assert reply.call_id == "reg-1"
        stats = await running.get("/api/stats")
        assert stats["bad_requests"] == 1
    finally:
        peer.close()


async def test_oversized_messages_over_tcp_get_513_and_the_connection_is_closed(
    start_node: StartNode,
):
    running = await start_node()
    for data in (
        # A body larger than the 64 KiB cap, announced by Content-Length.
        message_bytes(CAMERA, 5060, b"<Notify>" + b"x" * 70_000 + b"</Notify>", transport="TCP"),
        # A header block that never ends within the cap.
        register_bytes(CAMERA, 5060, transport="TCP").replace(
            b"Max-Forwards", b"X-Padding: " + b"a" * 70_000 + b"\r\nMax-Forwards"
        ),
    ):
        peer = await TcpPeer.open(running.sip)
        try:
            peer.send(data)
            reply = await peer.recv()
            assert reply.status == 513
            assert await peer.reader.read() == b""  # closed by the node
        finally:
            peer.close()
    # A datagram close to the UDP limit is still read whole.
    udp = await UdpPeer.open(running.sip)
    try:
        udp.send(register_bytes(CAMERA, udp.port, extra="X-Padding: " + "a" * 60_000))
        assert (await udp.recv()).status == 401
    finally:
        udp.close()


async def test_message_flood_from_one_device_is_throttled(start_node: StartNode):
    running = await start_node()
    flood = await UdpPeer.open(running.sip)
    calm = await UdpPeer.open(running.sip)
    try:
        assert (await register(flood, CAMERA, PASSWORD)).status == 200
        assert (await register(calm, OTHER, PASSWORD)).status == 200
        for sn in range(400):
            flood.send(message_bytes(CAMERA, flood.port, manscdp.keepalive(sn + 1, CAMERA)))
        statuses = []
        for _ in range(400):
            statuses.append((await flood.recv()).status)
        assert statuses.count(503) > 0 and statuses.count(200) >= 150
        stats = await running.get("/api/stats")
        assert stats["dropped"]["flooded"] == statuses.count(503)
        calm.send(message_bytes(OTHER, calm.port, manscdp.keepalive(1, OTHER)))
        assert (await calm.recv()).status == 200
    finally:
        flood.close()
        calm.close()


async def test_unknown_method_gets_501(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        data = register_bytes(CAMERA, peer.port).replace(b"REGISTER", b"FROBNICATE")
        peer.send(data)
        assert (await peer.recv()).status == 501
    finally:
        peer.close()


async def test_registry_survives_restart_and_keepalive_is_accepted(start_node: StartNode, tmp_path):
    data_dir = tmp_path / "persist"
    first = await start_node(data_dir=data_dir)
    peer = await UdpPeer.open(first.sip)
    device_port = peer.port
    assert (await register(peer, CAMERA, PASSWORD)).status == 200
    peer.close()
    await first.client.close()  # clean stop flushes the registry

    second = await start_node(data_dir=data_dir)
    dev = second.node.registry.get(CAMERA)
    assert dev is not None and dev.expires_at is not None
    peer = await UdpPeer.open(second.sip, port=device_port)  # the device's own SIP port
    try:
        # No REGISTER: the keepalive alone is accepted because the registration is still valid.
        peer.send(message_bytes(CAMERA, peer.port, manscdp.keepalive(5, CAMERA)))
        assert (await peer.recv()).status == 200
        assert (await second.get(f"/api/devices/{CAMERA}"))["online"] is True
    finally:
        peer.close()


async def test_registration_burst_is_bounded(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        n = 2000
        for i in range(n):
            peer.send(register_bytes(f"31011200001320{i:06d}", peer.port, call_id=f"b{i}"))
        got = 0
        while got < n:
            try:
                await peer.recv_raw(timeout=2.0)
            except TimeoutError:
                break
            got += 1
        # Everything answered, or what the kernel dropped was dropped before reaching us; the
        # node holds at most one server transaction per request and stays healthy.
        assert got > n * 0.5
        stats = await running.get("/api/stats")
        assert stats["transactions"]["server"] <= n
        health = await running.client.get("/healthz")
        assert (await health.json())["status"] == "ok"
    finally:
        peer.close()


async def test_health_is_degraded_with_reason_when_the_registry_cannot_be_written(
    start_node: StartNode,
):
    running = await start_node()
    store = running.node.store

    def broken_write(*args, **kwargs):
        raise OSError(28, "No space left on device")

    store.write = broken_write  # type: ignore[method-assign]
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, CAMERA, PASSWORD)).status == 200  # still serving
        for _ in range(50):
            body = await (await running.client.get("/healthz")).json()
            if body["status"] == "degraded":
                break
            await asyncio.sleep(0.1)
        assert body["status"] == "degraded"
        assert any("No space left" in reason for reason in body["reasons"])
    finally:
        peer.close()


async def test_tcp_peer_stalling_inside_a_message_is_disconnected(start_node: StartNode):
    """RFC 4475 clerr.dat over TCP: wait for the rest, then close when none comes."""
    running = await start_node()
    running.node.endpoint.partial_message_timeout_s = 0.3
    peer = await TcpPeer.open(running.sip)
    try:
        data = register_bytes(CAMERA, 5060, transport="TCP")
        peer.send(data.replace(b"Content-Length: 0", b"Content-Length: 9999") + b"partial body")
        assert await asyncio.wait_for(peer.reader.read(), 5) == b""
        assert (await running.get("/api/stats"))["dropped"]["tcp_stalled"] == 1
    finally:
        peer.close()
