"""A running node on loopback: registration, keepalives, catalog, API, over UDP and TCP."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

import pytest

from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sip import auth, manscdp

from .conftest import PASSWORD, RunningNode, StartNode, wait_for
from .sipclient import (
    TcpPeer,
    UdpPeer,
    answer_challenge,
    message_bytes,
    register,
    register_bytes,
)

CAMERA = "31011200001320000001"


def camera(running: RunningNode, device_id: str = CAMERA, **kw) -> SimulatedCamera:
    config = CameraConfig(server=running.sip, device_id=device_id, password=PASSWORD, **kw)
    return SimulatedCamera(config)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_simulated_camera_registers_and_is_catalogued(start_node: StartNode, transport):
    running = await start_node()
    cam = camera(running, channels=6, transport=transport, name="Gate")
    await cam.start(keepalives=False)
    try:
        assert cam.registered
        reply = cam.last_register_response
        assert reply is not None and reply.status == 200
        assert reply.headers.get("Expires") == "3600"
        # GB28181 time sync: local time with milliseconds and no zone.
        datetime.strptime(reply.headers.get("Date") or "", "%Y-%m-%dT%H:%M:%S.%f")
        node = running.node
        await wait_for(lambda: len(node.registry.get(CAMERA).channels) == 6)
        await wait_for(lambda: node.registry.get(CAMERA).manufacturer)
        dev = await running.get(f"/api/devices/{CAMERA}")
        assert dev["online"] is True
        assert dev["transport"] == transport
        assert dev["remote"] == f"127.0.0.1:{cam.endpoint.local[1]}" or transport == "tcp"
        assert dev["channel_count"] == 6
        assert dev["name"] == "Gate"
        assert dev["manufacturer"] == "sensing-node"
        # Times carry an explicit offset.
        assert datetime.fromisoformat(dev["registered_at"]).utcoffset() is not None
        assert datetime.fromisoformat(dev["expires_at"]) > datetime.fromisoformat(
            dev["registered_at"]
        )
        channels = await running.get("/api/channels")
        assert sorted(c["id"] for c in channels) == sorted(cam.channel_ids)
        assert all(c["device_id"] == CAMERA and c["status"] == "ON" for c in channels)
        assert "通道" in channels[0]["name"]  # Chinese names survive GB2312 on the wire
        # Keepalive keeps it online and refreshes last_keepalive.
        before = node.registry.get(CAMERA).last_keepalive
        assert (await cam.send_keepalive()).status == 200
        assert node.registry.get(CAMERA).last_keepalive > before
    finally:
        await cam.stop()
    dev = await running.get(f"/api/devices/{CAMERA}")
    assert dev["online"] is False  # unregistered, but still listed


async def test_wrong_password_never_registers_and_is_rate_limited(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        for attempt in range(5):
            reply = await register(peer, CAMERA, "wrong-password", call_id=f"bad-{attempt}")
            assert reply.status == 403
        assert running.node.registry.get(CAMERA) is None
        stats = await running.get("/api/stats")
        assert stats["auth_failures"] == 5
        # The sixth attempt from the same source is refused before any challenge.
        peer.send(register_bytes(CAMERA, peer.port, call_id="bad-6"))
        reply = await peer.recv()
        assert reply.status == 403 and reply.reason == "Too Many Failed Attempts"
        # Other devices are not affected.
        ok = await register(peer, "31011200001320000002", PASSWORD, call_id="good")
        assert ok.status == 200
    finally:
        peer.close()


@pytest.mark.parametrize(
    ("device_id", "reason"),
    [
        ("3101120000132000001", "Invalid Device ID"),  # 19 digits
        ("3101120000132000000X", "Invalid Device ID"),
        ("44010000001320000001", "Device Not Allowed"),  # prefix outside allow
    ],
)
async def test_bad_ids_get_403_with_reason(start_node: StartNode, device_id, reason):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        peer.send(register_bytes(device_id, peer.port))
        reply = await peer.recv()
        assert (reply.status, reply.reason) == (403, reason)
    finally:
        peer.close()


async def test_register_retransmission_gets_cached_response(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        data = register_bytes(CAMERA, peer.port, branch="z9hG4bKretrans")
        peer.send(data)
        first = await peer.recv_raw()
        peer.send(data)
        second = await peer.recv_raw()
        assert first == second  # same nonce: replayed, not processed twice
        stats = await running.get("/api/stats")
        assert stats["retransmissions_absorbed"] == 1
        assert stats["requests_received"]["REGISTER"] == 2
    finally:
        peer.close()


async def test_stale_nonce_gets_401_stale(start_node: StartNode):
    running = await start_node()
    node = running.node
    peer = await UdpPeer.open(running.sip)
    try:
        peer.send(register_bytes(CAMERA, peer.port))
        challenge = await peer.recv()
        authorization = answer_challenge(challenge, CAMERA, PASSWORD)
        clock = node.registrar.mono  # nonce lifetimes run on the monotonic clock
        node.registrar.mono = lambda: clock() + 3600  # the nonce is an hour old now
        peer.send(register_bytes(CAMERA, peer.port, cseq=2, authorization=authorization))
        reply = await peer.recv()
        assert reply.status == 401
        assert "stale=true" in (reply.headers.get("WWW-Authenticate") or "").lower()
    finally:
        peer.close()


async def test_unregister_and_expiry(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, CAMERA, PASSWORD)).status == 200
        assert running.node.registry.get(CAMERA).online
        reply = await register(peer, CAMERA, PASSWORD, expires=0, call_id="reg-1")
        assert reply.status == 200
        dev = await running.get(f"/api/devices/{CAMERA}")
        assert dev["online"] is False
        # Not registered any more: a keepalive is refused.
        peer.send(message_bytes(CAMERA, peer.port, manscdp.keepalive(1, CAMERA)))
        refused = await peer.recv()
        assert (refused.status, refused.reason) == (403, "Device Not Registered")
    finally:
        peer.close()


async def test_keepalive_timeout_takes_device_offline_and_keepalive_brings_it_back(
    start_node: StartNode,
):
    running = await start_node(devices__keepalive_timeout_s=1)
    peer = await UdpPeer.open(running.sip)
    registry = running.node.registry
    try:
        assert (await register(peer, CAMERA, PASSWORD)).status == 200
        await wait_for(lambda: not registry.get(CAMERA).online, timeout=4.0)
        peer.send(message_bytes(CAMERA, peer.port, manscdp.keepalive(2, CAMERA)))
        assert (await peer.recv()).status == 200
        assert registry.get(CAMERA).online
    finally:
        peer.close()


async def test_expires_header_is_honoured_and_capped(start_node: StartNode):
    running = await start_node(devices__register_expires_s=600)
    peer = await UdpPeer.open(running.sip)
    try:
        reply = await register(peer, CAMERA, PASSWORD, expires=120)
        assert reply.headers.get("Expires") == "120"
        reply = await register(peer, CAMERA, PASSWORD, expires=86400, call_id="again")
        assert reply.headers.get("Expires") == "600"
    finally:
        peer.close()


async def test_x_gb_ver_is_recorded_and_echoed(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        reply = await register(peer, CAMERA, PASSWORD, extra="X-GB-Ver: 3.0")
        assert reply.headers.get("X-GB-Ver") == "3.0"
        dev = await running.get(f"/api/devices/{CAMERA}")
        assert dev["gb_version"] == "2022"
    finally:
        peer.close()


async def test_time_sync_off_leaves_date_out(start_node: StartNode):
    running = await start_node(devices__time_sync=False)
    peer = await UdpPeer.open(running.sip)
    try:
        reply = await register(peer, CAMERA, PASSWORD)
        assert reply.status == 200 and "Date" not in reply.headers
    finally:
        peer.close()


async def test_tcp_register_with_split_segments(start_node: StartNode):
    running = await start_node()
    peer = await TcpPeer.open(running.sip)
    try:
        data = register_bytes(CAMERA, peer.port, transport="TCP")
        for i in range(0, len(data), 7):  # one message across many segments
            peer.send(data[i : i + 7])
            await peer.writer.drain()
        assert (await peer.recv()).status == 401
        # Two messages in one segment, with a CRLF keep-alive ping between them.
        peer.send(register_bytes("31011200001320000002", peer.port, transport="TCP") + b"\r\n\r\n"
                  + register_bytes("31011200001320000003", peer.port, transport="TCP"))
        assert (await peer.recv()).status == 401
        assert (await peer.recv()).status == 401
        reply = await register(peer, CAMERA, PASSWORD, transport="TCP", call_id="tcp-1")
        assert reply.status == 200
        assert (await running.get(f"/api/devices/{CAMERA}"))["transport"] == "tcp"
    finally:
        peer.close()


async def test_api_requires_bearer_token(start_node: StartNode):
    running = await start_node()
    for path in ("/api/devices", "/api/channels", "/api/stats", f"/api/devices/{CAMERA}"):
        assert (await running.client.get(path)).status == 401
        bad = {"Authorization": "Bearer nope"}
        assert (await running.client.get(path, headers=bad)).status == 401
    health = await running.client.get("/healthz")
    assert health.status == 200
    assert (await health.json())["status"] == "ok"
    missing = await running.client.get("/api/devices/31011200001329999999", headers=running.headers)
    assert missing.status == 404


async def test_node_timezone_and_operator_archive_show_in_the_api(start_node: StartNode):
    running = await start_node(
        node__timezone="Asia/Shanghai",
        devices__overrides={CAMERA: {"name": "Gate 1", "address": "East gate",
                                     "longitude": 121.4, "latitude": 31.1}},
    )
    peer = await UdpPeer.open(running.sip)
    try:
        reply = await register(peer, CAMERA, PASSWORD)
        date = datetime.strptime(reply.headers.get("Date") or "", "%Y-%m-%dT%H:%M:%S.%f")
        dev = await running.get(f"/api/devices/{CAMERA}")
        registered = datetime.fromisoformat(dev["registered_at"])
        assert registered.utcoffset().total_seconds() == 8 * 3600
        # The Date header is the same local (Beijing) time, without a zone.
        assert abs((registered.replace(tzinfo=None) - date).total_seconds()) < 2
        assert (dev["name"], dev["address"], dev["longitude"]) == ("Gate 1", "East gate", 121.4)
    finally:
        peer.close()


async def device_info_queries(peer: UdpPeer, count: int, timeout: float = 10.0) -> list:
    """Wait (bounded) until the node sent `count` DeviceInfo queries, copies included."""

    def received() -> list:
        return [q for q in peer.requests if b"<CmdType>DeviceInfo</CmdType>" in q.body]

    async def gather() -> list:
        while len(received()) < count:
            with contextlib.suppress(TimeoutError):
                await peer.recv_raw(timeout=0.1)
        return received()

    return await asyncio.wait_for(gather(), timeout)


async def test_unanswered_query_is_retransmitted_then_abandoned(start_node: StartNode):
    """The node's own MESSAGE queries retransmit over UDP on Timer E (T1 = 0.5 s, doubling)."""
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, CAMERA, PASSWORD)).status == 200
        queries = await device_info_queries(peer, 3)  # first send at 0, again at 0.5 and 1.5 s
        assert len({q.top_via.branch for q in queries}) == 1  # the same transaction
        # DeviceInfo and Catalog, asked at once and both unanswered: two transactions.
        assert running.node.endpoint.tx.client_transaction_count == 2
    finally:
        peer.close()


async def test_contact_expires_parameter_is_used_when_expires_header_is_missing(
    start_node: StartNode,
):
    """Some devices send only `Contact: <...>;expires=N` (wvp answers them 400)."""
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        data = register_bytes(CAMERA, peer.port).replace(b"Expires: 3600\r\n", b"")
        data = data.replace(b">\r\nMax-Forwards", b">;expires=900\r\nMax-Forwards")
        peer.send(data)
        challenge = await peer.recv()
        assert challenge.status == 401
        authorization = answer_challenge(challenge, CAMERA, PASSWORD)
        second = data.replace(b"CSeq: 1 REGISTER", b"CSeq: 2 REGISTER").replace(
            b"Content-Length: 0", f"Authorization: {authorization}\r\nContent-Length: 0".encode()
        )
        second = second.replace(b"branch=z9hG4bK", b"branch=z9hG4bKx")
        peer.send(second)
        reply = await peer.recv()
        assert reply.status == 200 and reply.headers.get("Expires") == "900"
    finally:
        peer.close()


async def test_tcp_double_crlf_ping_gets_a_pong(start_node: StartNode):
    running = await start_node()
    peer = await TcpPeer.open(running.sip)
    try:
        peer.send(b"\r\n\r\n")
        assert await asyncio.wait_for(peer.reader.read(16), 3) == b"\r\n"
        peer.send(b"\r\n")  # a lone CRLF is padding, not a ping: no answer
        peer.send(register_bytes(CAMERA, peer.port, transport="TCP"))
        data = await asyncio.wait_for(peer.reader.read(12), 3)
        assert data.startswith(b"SIP/2.0 401"), data
    finally:
        peer.close()


async def test_digest_without_qop_is_accepted(start_node: StartNode):
    """Devices that ignore the offered qop answer with the RFC 2069 form."""
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        peer.send(register_bytes(CAMERA, peer.port))
        challenge = await peer.recv()
        params = auth.parse_digest(challenge.headers.get("WWW-Authenticate") or "")
        params.pop("qop")
        authorization = auth.build_authorization(
            params, username=CAMERA, password=PASSWORD, method="REGISTER",
            uri="sip:31011200002000000001@3101120000", cnonce="unused",
        )
        assert "qop" not in authorization and "cnonce" not in authorization
        peer.send(register_bytes(CAMERA, peer.port, cseq=2, authorization=authorization))
        assert (await peer.recv()).status == 200
    finally:
        peer.close()


async def test_simulated_camera_answers_device_status(start_node: StartNode):
    running = await start_node()
    cam = camera(running, channels=1)
    await cam.start(keepalives=False)
    try:
        dev = running.node.registry.get(CAMERA)
        assert running.node.queries is not None
        status = await running.node.queries.query(dev, "DeviceStatus")
        assert status is not None
        assert (status.get("Online"), status.get("Status")) == ("ONLINE", "OK")
        assert cam.queries_answered["DeviceStatus"] == 1
    finally:
        await cam.stop()


@pytest.mark.parametrize(
    ("body", "previous", "expected"),
    [
        (b'<?xml version="1.0" encoding="GB2312"?><Notify><CmdType>Keepalive</CmdType>'
         b"<SN>1</SN><DeviceID>1</DeviceID></Notify>", "UTF-8", "GB2312"),
        (b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>1</DeviceID></Notify>"
, "GB18030", "GB18030"),
        ('<?xml version="1.0" encoding="GB2312"?><Response><CmdType>Catalog</CmdType>'
         "<SN>1</SN><DeviceID>1</DeviceID><Name>东门</Name></Response>".encode(), "GB2312",
         "UTF-8"),
        ('<?xml version="1.0" encoding="UTF-8"?><Response><CmdType>Catalog</CmdType>'
         "<SN>1</SN><DeviceID>1</DeviceID><Name>东门</Name></Response>".encode("gb18030"),
         "UTF-8", "GB18030"),
    ],
    ids=["ascii-declared-gb2312", "ascii-undeclared", "utf8-bytes-declared-gb2312",
         "gbk-bytes-declared-utf8"],
)
def test_node_answers_in_the_encoding_the_device_really_uses(body, previous, expected):
    from sensing_node.devices.registrar import answer_charset
    from sip.manscdp import parse_manscdp

    assert answer_charset(parse_manscdp(body), body, previous) == expected


async def test_abandoned_query_stops_its_retransmissions(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, CAMERA, PASSWORD)).status == 200
        endpoint = running.node.endpoint
        await device_info_queries(peer, 1)
        # DeviceInfo and Catalog, both sent before the first reached us, both unanswered.
        assert endpoint.tx.client_transaction_count == 2
        assert running.node.queries is not None
        await running.node.queries.stop()  # cancels the waiting query
        assert endpoint.tx.client_transaction_count == 0
        # Nothing is left to retransmit, whenever the timers fire (Timer F is 64*T1 = 32 s).
        endpoint.tx.handle_timer(endpoint.loop.time() + 40.0)
        assert [o for o in endpoint.tx.datagrams_to_send() if o.data.startswith(b"MESSAGE")] == []
    finally:
        peer.close()
