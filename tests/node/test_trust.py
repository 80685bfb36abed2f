"""Who may move a device, reuse credentials, claim channels and hold TCP connections: a running
node on loopback, attacked the way a peer on the network could."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sip import auth, manscdp
from sip.message import Request, Response
from sip.transaction import RequestReceived

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
OTHER = "31011200001320000002"
URI = "sip:31011200002000000001@3101120000"


def keepalive(device_id: str = CAMERA, sn: int = 1) -> bytes:
    return manscdp.keepalive(sn, device_id)


# ----- 1. only an authenticated REGISTER moves a device ----------------------------------------


async def test_message_from_another_source_is_refused_and_moves_nothing(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
):
    running = await start_node()
    device = await UdpPeer.open(running.sip)
    intruder = await UdpPeer.open(running.sip)
    try:
        assert (await register(device, CAMERA, PASSWORD)).status == 200
        dev = running.node.registry.get(CAMERA)
        where, seen = (dev.transport, dev.remote), dev.last_keepalive
        caplog.set_level(logging.WARNING, "sensing_node.devices.registrar")
        catalog = manscdp.catalog_response_parts(1, CAMERA, [{"DeviceID": OTHER}])[0]
        for body in (keepalive(), keepalive(sn=2), catalog):
            intruder.send(message_bytes(CAMERA, intruder.port, body))
            reply = await intruder.recv()
            assert (reply.status, reply.reason) == (403, "Source Mismatch")
        # Neither moved nor refreshed; counted, and logged once for the device.
        assert (dev.transport, dev.remote) == where == ("udp", f"127.0.0.1:{device.port}")
        assert dev.last_keepalive == seen
        assert (await running.get("/api/stats"))["dropped"]["source_mismatch"] == 3
        lines = [r for r in caplog.records if "refused: registered at" in r.getMessage()]
        assert len(lines) == 1 and CAMERA in lines[0].getMessage()
        # The device itself is still served where it registered.
        device.send(message_bytes(CAMERA, device.port, keepalive(sn=3)))
        assert (await device.recv()).status == 200
        assert dev.last_keepalive > seen
        # Only an authenticated REGISTER moves it (NAT rebinding, a new socket).
        assert (await register(intruder, CAMERA, PASSWORD, call_id="moved")).status == 200
        assert dev.remote == f"127.0.0.1:{intruder.port}"
        device.send(message_bytes(CAMERA, device.port, keepalive(sn=4)))
        assert (await device.recv()).reason == "Source Mismatch"
    finally:
        device.close()
        intruder.close()


async def test_tcp_device_keeps_alive_on_its_own_connection_only(start_node: StartNode):
    running = await start_node()
    device = await TcpPeer.open(running.sip)
    other = await TcpPeer.open(running.sip)
    udp = await UdpPeer.open(running.sip)
    try:
        assert (await register(device, CAMERA, PASSWORD, transport="TCP")).status == 200
        device.send(message_bytes(CAMERA, device.port, keepalive(), transport="TCP"))
        assert (await device.recv()).status == 200
        other.send(message_bytes(CAMERA, other.port, keepalive(sn=2), transport="TCP"))
        assert (await other.recv()).reason == "Source Mismatch"
        udp.send(message_bytes(CAMERA, udp.port, keepalive(sn=3)))  # same host, other transport
        assert (await udp.recv()).reason == "Source Mismatch"
        dev = running.node.registry.get(CAMERA)
        assert (dev.transport, dev.remote) == ("tcp", f"127.0.0.1:{device.port}")
    finally:
        device.close()
        other.close()
        udp.close()


async def test_follow_source_restores_the_old_unsafe_behaviour(start_node: StartNode):
    running = await start_node(devices__overrides={CAMERA: {"follow_source": True}})
    device = await UdpPeer.open(running.sip)
    elsewhere = await UdpPeer.open(running.sip)
    try:
        assert (await register(device, CAMERA, PASSWORD)).status == 200
        elsewhere.send(message_bytes(CAMERA, elsewhere.port, keepalive()))
        assert (await elsewhere.recv()).status == 200
        assert running.node.registry.get(CAMERA).remote == f"127.0.0.1:{elsewhere.port}"
    finally:
        device.close()
        elsewhere.close()


async def test_simulated_tcp_and_udp_cameras_keep_alive(start_node: StartNode):
    running = await start_node()
    cameras = [
        SimulatedCamera(CameraConfig(server=running.sip, device_id=device_id, password=PASSWORD,
                                     transport=transport))
        for device_id, transport in ((CAMERA, "udp"), (OTHER, "tcp"))
    ]
    try:
        for cam in cameras:
            await cam.start(keepalives=False)
            assert (await cam.send_keepalive()).status == 200
    finally:
        for cam in cameras:
            await cam.stop()


# ----- 2. replayed and misdirected credentials --------------------------------------------------


async def challenge_of(peer: UdpPeer, device_id: str, call_id: str = "reg-1") -> Response:
    peer.send(register_bytes(device_id, peer.port, call_id=call_id))
    reply = await peer.recv()
    assert reply.status == 401
    return reply


def stale(reply: Response) -> bool:
    return reply.status == 401 and "stale=true" in (reply.headers.get("WWW-Authenticate") or "")


async def test_captured_register_replayed_gets_a_fresh_stale_challenge(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        authorization = answer_challenge(await challenge_of(peer, CAMERA), CAMERA, PASSWORD)
        peer.send(register_bytes(CAMERA, peer.port, cseq=2, authorization=authorization))
        assert (await peer.recv()).status == 200
        expires_at = running.node.registry.get(CAMERA).expires_at
        # The same Authorization (nc=00000001) in a new transaction: a replay.
        peer.send(register_bytes(CAMERA, peer.port, cseq=3, authorization=authorization))
        assert stale(await peer.recv())
        assert running.node.registry.get(CAMERA).expires_at == expires_at
        # The device's next nc on the same nonce is fine; a lower one is not.
        params = auth.parse_digest(authorization)
        for nc, expected in ((3, 200), (2, 401), (3, 401)):
            again = auth.build_authorization(
                {**params, "qop": "auth"}, username=CAMERA, password=PASSWORD,
                method="REGISTER", uri=URI, cnonce="0a4f113b", nc=nc,
            )
            peer.send(register_bytes(CAMERA, peer.port, cseq=4 + nc, authorization=again))
            reply = await peer.recv()
            assert reply.status == expected, (nc, reply.status)
        assert (await running.get("/api/stats"))["dropped"]["replayed_nonce"] == 3
        # A device that starts over is challenged and registers as usual.
        assert (await register(peer, CAMERA, PASSWORD, call_id="again")).status == 200
    finally:
        peer.close()


async def test_nonce_without_qop_serves_one_register(start_node: StartNode):
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        params = auth.parse_digest((await challenge_of(peer, CAMERA)).headers.get(
            "WWW-Authenticate") or "")
        params.pop("qop")
        authorization = auth.build_authorization(
            params, username=CAMERA, password=PASSWORD, method="REGISTER", uri=URI, cnonce="x",
        )
        peer.send(register_bytes(CAMERA, peer.port, cseq=2, authorization=authorization))
        assert (await peer.recv()).status == 200
        peer.send(register_bytes(CAMERA, peer.port, cseq=3, authorization=authorization))
        assert stale(await peer.recv())
    finally:
        peer.close()


async def test_nonce_is_bound_to_its_source_address_and_device(start_node: StartNode):
    running = await start_node()
    device = await UdpPeer.open(running.sip)
    elsewhere = await UdpPeer.open(running.sip, host="127.0.0.2")
    try:
        challenge = await challenge_of(device, CAMERA)
        # The camera's nonce, answered correctly, from another address: a fresh challenge.
        authorization = answer_challenge(challenge, CAMERA, PASSWORD)
        elsewhere.send(register_bytes(CAMERA, elsewhere.port, cseq=2,
                                      authorization=authorization))
        reply = await elsewhere.recv()
        assert reply.status == 401 and not stale(reply)
        # ... or for another device from the same address.
        for_other = answer_challenge(challenge, OTHER, PASSWORD)
        device.send(register_bytes(OTHER, device.port, call_id="o", cseq=2,
                                   authorization=for_other))
        reply = await device.recv()
        assert reply.status == 401 and not stale(reply)
        assert running.node.registry.get(CAMERA) is None
        assert running.node.registry.get(OTHER) is None
        # The nonce still works for the one it was issued to.
        device.send(register_bytes(CAMERA, device.port, cseq=3, authorization=authorization))
        assert (await device.recv()).status == 200
    finally:
        device.close()
        elsewhere.close()


async def test_configured_digest_username_is_required(start_node: StartNode):
    running = await start_node(devices__overrides={CAMERA: {"username": "gate-1"}})
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, CAMERA, PASSWORD)).status == 403  # username = device ID
        challenge = await challenge_of(peer, CAMERA, call_id="named")
        params = auth.parse_digest(challenge.headers.get("WWW-Authenticate") or "")
        authorization = auth.build_authorization(
            params, username="gate-1", password=PASSWORD, method="REGISTER", uri=URI,
            cnonce="c",
        )
        peer.send(register_bytes(CAMERA, peer.port, call_id="named", cseq=2,
                                 authorization=authorization))
        assert (await peer.recv()).status == 200
    finally:
        peer.close()


# ----- 3. channel ownership ----------------------------------------------------------------------

# The simulator derives channel IDs from the device serial: both list 31011200001310000101.
OWNER, CLAIMANT = "31011200001320000001", "31011200001320010001"
SHARED = "31011200001310000101"


def simulated(running: RunningNode, device_id: str) -> SimulatedCamera:
    return SimulatedCamera(CameraConfig(server=running.sip, device_id=device_id,
                                        password=PASSWORD))


async def test_channel_of_an_online_device_cannot_be_claimed(start_node: StartNode):
    running = await start_node()
    registry = running.node.registry
    queries = running.node.queries
    assert queries is not None
    owner, claimant = simulated(running, OWNER), simulated(running, CLAIMANT)
    try:
        await owner.start(keepalives=False)
        await wait_for(lambda: registry.channel_device(SHARED) is registry.get(OWNER))
        done = queries.completed
        await claimant.start(keepalives=False)
        await wait_for(lambda: queries.completed > done)  # the claimant's catalog was read
        assert registry.channel_device(SHARED).id == OWNER
        assert SHARED not in registry.get(CLAIMANT).channels
        channels = await running.get("/api/channels")
        assert [c["device_id"] for c in channels if c["id"] == SHARED] == [OWNER]
        assert (await running.get("/api/stats"))["dropped"]["catalog_items_refused"] == 1

        # Offline, but not for long enough: still refused.
        await owner.stop()
        assert not registry.get(OWNER).online
        await queries.refresh(registry.get(CLAIMANT))
        assert registry.channel_device(SHARED).id == OWNER
        # A day later the channel moves.
        registry.wall = lambda: time.time() + 86400 + 60
        await queries.refresh(registry.get(CLAIMANT))
        assert registry.channel_device(SHARED).id == CLAIMANT
        assert SHARED not in registry.get(OWNER).channels
    finally:
        await owner.stop()
        await claimant.stop()


async def test_operator_releases_a_channel_to_the_device_that_claimed_it(start_node: StartNode):
    running = await start_node()
    registry = running.node.registry
    owner, claimant = simulated(running, OWNER), simulated(running, CLAIMANT)
    try:
        await owner.start(keepalives=False)
        await wait_for(lambda: registry.channel_device(SHARED) is registry.get(OWNER))
        await claimant.start(keepalives=False)
        await wait_for(lambda: claimant.queries_answered.get("Catalog"))
        path = f"/api/channels/{SHARED}/release"
        assert (await running.client.post(path)).status == 401
        unknown = await running.client.post("/api/channels/31011200001310999999/release",
                                            headers=running.headers)
        assert unknown.status == 404 and "error" in await unknown.json()
        await wait_for(lambda: running.node.queries.completed >= 2)
        assert registry.channel_device(SHARED).id == OWNER
        reply = await running.client.post(path, headers=running.headers)
        assert reply.status == 200
        assert await reply.json() == {"channel_id": SHARED, "released_from": OWNER,
                                      "catalog_requested": CLAIMANT}
        # The claimant is asked for its catalog again and gets the channel.
        await wait_for(lambda: registry.channel_device(SHARED) is registry.get(CLAIMANT))
        assert SHARED not in registry.get(OWNER).channels
        # The release is in the audit log, with who did it.
        audit = await running.client.get("/api/audit", params={"action": "channel_release"},
                                         headers=running.headers)
        entries = await audit.json()
        assert [(e["action"], e["channel_id"], e["result"]) for e in entries] == [
            ("channel_release", SHARED, "ok")
        ]
        assert entries[0]["detail"] == f"from {OWNER}, catalog asked of {CLAIMANT}"
    finally:
        await owner.stop()
        await claimant.stop()


async def next_query(peer: UdpPeer, cmd_type: str) -> Request:
    async def find() -> Request:
        while True:
            for query in peer.requests:
                if f"<CmdType>{cmd_type}</CmdType>".encode() in query.body:
                    peer.requests.remove(query)
                    return query
            try:
                await peer.recv(timeout=0.1)
            except TimeoutError:
                pass

    return await asyncio.wait_for(find(), 5.0)


async def test_catalog_items_need_20_digit_ids(start_node: StartNode):
    running = await start_node()
    running.node.queries.answer_timeout_s = 0.2
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, CAMERA, PASSWORD)).status == 200
        info = await next_query(peer, "DeviceInfo")
        peer.send(bytes(Response.for_request(info, 200, to_tag="d")))  # and no answer
        query = await next_query(peer, "Catalog")
        peer.send(bytes(Response.for_request(query, 200, to_tag="d")))
        sn = manscdp.parse_manscdp(query.body).sn
        items = [{"DeviceID": cid, "Name": "x"} for cid in
                 ("31011200001310000001", "3101120000131000000", "310112", "3101120000131000000A",
                  "3101120000131000000１")]
        body = manscdp.catalog_response_parts(sn, CAMERA, items, per_message=5,
                                              encoding="UTF-8")[0]
        peer.send(message_bytes(CAMERA, peer.port, body))
        assert (await peer.recv()).status == 200
        registry = running.node.registry
        await wait_for(lambda: registry.get(CAMERA).channels)
        assert list(registry.get(CAMERA).channels) == ["31011200001310000001"]
    finally:
        peer.close()


# ----- 4. a device asks about its own channels only ---------------------------------------------

CHANNEL = SHARED  # the owner camera's first channel
TZ = ZoneInfo("Asia/Shanghai")


async def recorded(start_node: StartNode, **overrides: Any) -> tuple[RunningNode, SimulatedCamera,
                                                                    list[Any]]:
    running = await start_node(**{"recording.channels": [CHANNEL], "recording.segment_s": 1,
                                  "node.timezone": "Asia/Shanghai", **overrides})
    cam = simulated(running, OWNER)
    await cam.start(keepalives=False)
    service = running.node.recording

    async def segments() -> list[Any]:
        while True:
            rows, _ = await service.search(CHANNEL, 0, 4e9)
            if len(rows) >= 2:
                return rows
            await asyncio.sleep(0.2)

    return running, cam, await asyncio.wait_for(segments(), 20.0)


def record_query(sn: int, start: float, end: float) -> bytes:
    return manscdp.record_info_query(sn, CHANNEL, datetime.fromtimestamp(start, TZ),
                                     datetime.fromtimestamp(end, TZ), tz=TZ)


async def answers_at(cam: SimulatedCamera, query: bytes) -> manscdp.ManscdpMessage:
    """Send `query` as the camera (from its registered source) and catch the node's answer."""
    answers: asyncio.Queue[manscdp.ManscdpMessage] = asyncio.Queue()
    handler = cam.endpoint.on_request

    def catch(event: RequestReceived) -> None:
        if event.request.method == "MESSAGE" and b"RecordInfo" in event.request.body:
            answers.put_nowait(manscdp.parse_manscdp(event.request.body))
        handler(event)

    cam.endpoint.on_request = catch
    try:
        assert (await cam._message(query)).status == 200
        return await asyncio.wait_for(answers.get(), 5.0)
    finally:
        cam.endpoint.on_request = handler


async def answer_at_peer(peer: UdpPeer) -> manscdp.ManscdpMessage:
    """The node's RecordInfo answer to a raw device; its other requests are answered 200."""
    while True:
        while peer.requests:
            message = peer.requests.pop(0)
            peer.send(Response.for_request(message, 200, to_tag="p").to_bytes())
            body = manscdp.parse_manscdp(message.body)
            if body.cmd_type == "RecordInfo":
                return body
        with contextlib.suppress(TimeoutError):
            await peer.recv_raw(timeout=0.1)  # files the node's MESSAGEs under requests


async def test_record_info_only_about_the_devices_own_channels(start_node: StartNode):
    running, cam, rows = await recorded(start_node)
    peer = await UdpPeer.open(running.sip)
    try:
        start, end = rows[0].start_wall - 5, rows[-1].end_wall + 5
        own = await answers_at(cam, record_query(7, start, end))
        # adjacent segments are one run: one item
        assert own.device_id == CHANNEL and own.sum_num == 1 and len(own.items) == 1
        # Another registered device asking about the camera's channel learns nothing.
        assert (await register(peer, OTHER, PASSWORD)).status == 200
        peer.send(message_bytes(OTHER, peer.port, record_query(8, start, end)))
        assert (await peer.recv()).status == 200
        foreign = await asyncio.wait_for(answer_at_peer(peer), 5.0)
        assert (foreign.sn, foreign.device_id, foreign.sum_num, foreign.items) == (
            8, CHANNEL, 0, [])
        assert foreign.get("Name") == CHANNEL  # as for a channel nobody knows
        assert (await running.get("/api/stats"))["dropped"]["foreign_query"] == 1
    finally:
        peer.close()
        await cam.stop(unregister=False)


async def test_record_info_range_is_cut_to_query_max_days(start_node: StartNode):
    running, cam, rows = await recorded(start_node, recording__query_max_days=1)
    try:
        # Recorded just now, asked about with a range that runs on two days past them: only
        # the last day of the range is searched, which holds nothing.
        start, end = rows[0].start_wall - 5, rows[-1].end_wall + 2 * 86400
        assert (await answers_at(cam, record_query(9, start, end))).sum_num == 0
        within = await answers_at(cam, record_query(10, start, rows[-1].end_wall + 5))
        assert within.sum_num == 1  # the run of adjacent segments
    finally:
        await cam.stop(unregister=False)


# ----- 5. TCP connections ------------------------------------------------------------------------


async def closed(peer: TcpPeer, *, drain: bool = False) -> bool:
    """Whether the node closed the connection (bounded wait); ours is closed either way. With
    `drain`, whatever the node sent before closing is read past."""

    async def end() -> bytes:
        while (data := await peer.reader.read(65536)) and drain:
            pass
        return data

    try:
        return await asyncio.wait_for(end(), 5.0) == b""
    finally:
        peer.close()


async def test_idle_tcp_connection_without_a_device_is_closed(start_node: StartNode):
    running = await start_node()
    endpoint = running.node.endpoint
    endpoint.tcp_idle_timeout_s = 1.0  # 30 s in a real node
    device = await TcpPeer.open(running.sip)
    try:
        assert (await register(device, CAMERA, PASSWORD, transport="TCP")).status == 200
        idle = await TcpPeer.open(running.sip)
        talking = await TcpPeer.open(running.sip)
        talking.send(register_bytes(OTHER, talking.port, transport="TCP"))
        assert (await talking.recv()).status == 401  # challenged, never registers
        assert await closed(idle) and await closed(talking)
        assert (await running.get("/api/stats"))["dropped"]["tcp_idle"] == 2
        # The device's own connection has been idle longer, and stays.
        device.send(message_bytes(CAMERA, device.port, keepalive(), transport="TCP"))
        assert (await device.recv()).status == 200
    finally:
        device.close()


async def test_a_connection_a_device_left_is_counted_and_times_out_again(start_node: StartNode):
    running = await start_node()
    endpoint = running.node.endpoint
    endpoint.tcp_idle_timeout_s = 1.0  # 30 s in a real node
    first = await TcpPeer.open(running.sip)
    second = await TcpPeer.open(running.sip)
    gone = await TcpPeer.open(running.sip)
    try:
        assert (await register(first, CAMERA, PASSWORD, transport="TCP")).status == 200
        assert (await register(gone, OTHER, PASSWORD, transport="TCP")).status == 200
        # The camera registers again over a new connection: the first one is no longer its
        # own, and idles out; the other device unregisters: its connection idles out too.
        assert (await register(second, CAMERA, PASSWORD, transport="TCP",
                               call_id="moved")).status == 200
        assert (await register(gone, OTHER, PASSWORD, transport="TCP", expires=0)).status == 200
        # (The node's queries to the devices may still be queued on them: read past those.)
        assert await closed(first, drain=True) and await closed(gone, drain=True)
        assert (await running.get("/api/stats"))["dropped"]["tcp_idle"] == 2
        second.send(message_bytes(CAMERA, second.port, keepalive(), transport="TCP"))
        assert (await second.recv()).status == 200
    finally:
        for peer in (first, second, gone):
            peer.close()


async def test_tcp_connections_per_address_and_in_all_are_capped(start_node: StartNode):
    running = await start_node()
    endpoint = running.node.endpoint
    peers = []  # up to 8 connections per address that no device registered through
    try:
        for _ in range(8):
            peers.append(await TcpPeer.open(running.sip))
        await wait_for(lambda: len(endpoint.connections) == 8)
        ninth = await TcpPeer.open(running.sip)
        assert await closed(ninth)
        assert (await running.get("/api/stats"))["dropped"]["tcp_refused_per_host"] == 1
        # A device registering through one of them frees its address's slot.
        assert (await register(peers[0], CAMERA, PASSWORD, transport="TCP")).status == 200
        peers.append(await TcpPeer.open(running.sip))
        peers[-1].send(register_bytes(OTHER, peers[-1].port, transport="TCP"))
        assert (await peers[-1].recv()).status == 401
        # Another address has its own slots, within the total.
        endpoint.max_tcp_connections = len(endpoint.connections) + 1
        reader, writer = await asyncio.open_connection(*running.sip, local_addr=("127.0.0.2", 0))
        peers.append(TcpPeer(reader, writer))
        peers[-1].send(register_bytes(OTHER, peers[-1].port, transport="TCP"))
        assert (await peers[-1].recv()).status == 401
        reader, writer = await asyncio.open_connection(*running.sip, local_addr=("127.0.0.3", 0))
        assert await closed(TcpPeer(reader, writer))
        assert (await running.get("/api/stats"))["dropped"]["tcp_refused"] == 1
    finally:
        for peer in peers:
            peer.close()
