"""The simulated upper platform on loopback, without the node's cascade.

Registration: `sip.registration.UpstreamRegistration` (what the node's cascade will run) is
driven over a real `SipEndpoint` by a small asyncio loop here, against `SimulatedUpstream`: the
digest exchange, keepalives, a refresh, `Expires: 0`, a wrong password, the 403 and silent
modes, and re-registration after the platform restarts on the same port.

Queries and media: a simulated camera registers to the platform as a lower platform would (its
REGISTER and catalog answers have the same shape), so the platform's queries, INVITE, ACK, BYE
and CANCEL, and its RTP receive path (UDP, TCP in both roles) are checked against the real clip
the camera's `MediaSender` sends: the access units must be the clip's frames byte for byte,
their PS bytes what the camera's muxer wrote, and PyAV must decode them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import av
import pytest

from rtp.packet import build_rtp
from rtp.psmux import PsMuxer
from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sensing_node.sim.media import Clip, load_clip
from sensing_node.sim.upstream import (
    PlatformConfig,
    SimulatedUpstream,
    UpstreamError,
    UpstreamSession,
)
from sensing_node.sim.upstream_run import run_upstream
from sensing_node.transport.sip import SipEndpoint
from sip import manscdp
from sip.catalog import ON, CatalogEvent, catalog_notify_parts
from sip.message import Request, Response
from sip.registration import (
    KeepaliveMissed,
    Registered,
    RegistrationEvent,
    RegistrationFailed,
    RegistrationLost,
    RegistrationState,
    Unregistered,
    UpstreamConfig,
    UpstreamRegistration,
)
from sip.transaction import Peer, RequestReceived, TimerValues

from .conftest import wait_for

HOST = "127.0.0.1"
PLATFORM = "31011200002000000100"
REALM = "3101120000"
PASSWORD = "upstream-secret"
NODE_ID = "31011200002000000001"
CAMERA = "31011200001320000001"
FAST = TimerValues(t1=0.05, t2=0.4, timer_d=0.5)  # transactions give up after 3.2 s


@pytest.fixture
async def upstream() -> AsyncIterator[SimulatedUpstream]:
    platform = SimulatedUpstream(PlatformConfig(PLATFORM, REALM, PASSWORD))
    await platform.start()
    yield platform
    await platform.stop()


# --- the node's registration, driven over a real endpoint ------------------------------------


class RegistrationDriver:
    """Runs `UpstreamRegistration` on the loop: its requests go through a `SipEndpoint`,
    answers and timeouts go back, `handle_timer` runs at `next_deadline()`."""

    def __init__(self, platform: SimulatedUpstream, transport: str, *, password: str = PASSWORD,
                 expires: int = 3600, keepalive_s: float = 60.0) -> None:
        self.platform = platform
        self.transport = transport
        self.password = password
        self.expires = expires
        self.keepalive_s = keepalive_s
        self.endpoint = SipEndpoint(self._on_request, timers=FAST)
        self.events: list[RegistrationEvent] = []
        self._wake = asyncio.Event()  # an answer came, or stop() was called
        self.requests: list[RequestReceived] = []
        self.machine: UpstreamRegistration | None = None
        self.peer: Peer | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Response]] = set()

    def _on_request(self, event: RequestReceived) -> None:
        self.requests.append(event)
        self.endpoint.respond(event, Response.for_request(event.request, 200, to_tag="node"))

    async def start(self) -> None:
        host, port = self.platform.local or (HOST, 0)
        if self.transport == "tcp":
            self.peer = await self.endpoint.connect_tcp(host, port)
        else:
            await self.endpoint.open_udp(HOST)
            self.peer = Peer("udp", host, port)
        config = UpstreamConfig(
            upstream_id=PLATFORM, realm=REALM, host=host, port=port, local_id=NODE_ID,
            contact_host=HOST, contact_port=self.endpoint.local[1], password=self.password,
            transport=self.transport, register_expires_s=self.expires,
            keepalive_s=self.keepalive_s, request_timeout_s=4.0,
        )
        self.machine = UpstreamRegistration(config, random=lambda: 0.5)
        self.machine.start(self.endpoint.loop.time())
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        machine, loop = self.machine, self.endpoint.loop
        assert machine is not None and self.peer is not None
        while machine.state is not RegistrationState.STOPPED:
            for request in machine.requests_to_send():
                self._send(request)
            while (event := machine.next_event()) is not None:
                self.events.append(event)
            deadline = machine.next_deadline()
            delay = 1.0 if deadline is None else max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(delay, 1.0))
            self._wake.clear()
            machine.handle_timer(loop.time())
        while (event := machine.next_event()) is not None:
            self.events.append(event)

    def _send(self, request: Request) -> None:
        assert self.peer is not None and self.machine is not None
        machine, loop = self.machine, self.endpoint.loop
        future = self.endpoint.request(request, self.peer)
        self._pending.add(future)

        def done(fut: asyncio.Future[Response]) -> None:
            self._pending.discard(fut)
            if fut.cancelled():
                return
            if fut.exception() is not None:
                machine.request_timed_out(request, loop.time())
            else:
                machine.response_received(fut.result(), loop.time())
            self._wake.set()

        future.add_done_callback(done)

    def of(self, kind: type) -> list[RegistrationEvent]:
        return [e for e in self.events if isinstance(e, kind)]

    async def stop(self) -> None:
        if self.machine is not None and self._task is not None:
            self.machine.stop(self.endpoint.loop.time())
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, 5.0)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for future in list(self._pending):
            future.cancel()
        await self.endpoint.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_register_with_digest_keepalive_refresh_and_unregister(upstream, transport):
    upstream.config.register_expires_s = 3  # granted 3 s: refreshed after 2 s
    driver = RegistrationDriver(upstream, transport, keepalive_s=0.3)
    await driver.start()
    try:
        node = await upstream.wait_registered(5.0)
        assert node.node_id == NODE_ID
        assert node.peer.transport == transport
        assert node.expires == 3
        assert upstream.challenges == 1 and upstream.auth_failures == 0
        assert upstream.registrations == 1
        await wait_for(lambda: driver.of(Registered))
        assert driver.machine.state is RegistrationState.REGISTERED
        await wait_for(lambda: upstream.keepalives >= 2)
        await wait_for(lambda: upstream.refreshes >= 1, timeout=6.0)
        # The refresh reuses the challenge with the next nc; no new registration, no new 401.
        assert upstream.registrations == 1
        assert upstream.challenges == 1
        assert not driver.of(RegistrationFailed) and not driver.of(KeepaliveMissed)
    finally:
        await driver.stop()
    assert driver.of(Unregistered) == [Unregistered(confirmed=True)]
    assert upstream.unregistrations == 1
    assert not upstream.registered.is_set() and upstream.node is None


async def test_wrong_password_is_refused_with_403(upstream):
    driver = RegistrationDriver(upstream, "udp", password="not-the-password")
    await driver.start()
    try:
        failed = await wait_for(lambda: driver.of(RegistrationFailed))
        assert failed[0].reason.startswith("403")
        assert driver.machine.state is RegistrationState.FAILED
        assert upstream.auth_failures == 1 and upstream.registrations == 0
        assert not upstream.registered.is_set()
    finally:
        await driver.stop()


async def test_forbid_mode_answers_403_without_a_challenge(upstream):
    upstream.mode = "forbid"
    driver = RegistrationDriver(upstream, "tcp")
    await driver.start()
    try:
        failed = await wait_for(lambda: driver.of(RegistrationFailed))
        assert failed[0].reason == "403 Forbidden"
        assert upstream.challenges == 0 and upstream.registrations == 0
    finally:
        await driver.stop()


async def test_ignore_mode_leaves_the_register_unanswered(upstream):
    upstream.mode = "ignore"
    driver = RegistrationDriver(upstream, "udp")
    await driver.start()
    try:
        failed = await wait_for(lambda: driver.of(RegistrationFailed), timeout=8.0)
        assert failed[0].reason == "REGISTER timed out"
        assert upstream.requests_received["REGISTER"] >= 1
        assert upstream.challenges == 0 and not upstream.registered.is_set()
    finally:
        await driver.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_node_registers_again_after_the_platform_restarts(upstream, transport):
    driver = RegistrationDriver(upstream, transport, keepalive_s=0.3)
    await driver.start()
    try:
        await upstream.wait_registered(5.0)
        port = upstream.local[1]
        if transport == "tcp":
            # The restart drops the node's connection; the driver connects again for the test
            # (the node's cascade reconnects on its own).
            await upstream.restart()
            driver.peer = await driver.endpoint.connect_tcp(HOST, port)
        else:
            await upstream.restart()
        assert upstream.local[1] == port and not upstream.registered.is_set()
        # The restarted platform forgot the node: its next keepalive gets 403 and the node
        # registers afresh (new Call-ID, new challenge).
        await upstream.wait_registered(8.0)
        assert upstream.registrations == 2 and upstream.challenges == 2
        lost = driver.of(RegistrationLost)
        assert lost and lost[0].reason.startswith("keepalive answered 403")
    finally:
        await driver.stop()


# --- queries, INVITE and media against a lower party -----------------------------------------


@pytest.fixture
async def camera(upstream) -> AsyncIterator[SimulatedCamera]:
    cam = await _camera(upstream)
    yield cam
    await cam.stop()


async def _camera(upstream: SimulatedUpstream, transport: str = "udp", **kw) -> SimulatedCamera:
    config = CameraConfig(server=upstream.local, device_id=CAMERA, password=PASSWORD,
                          transport=transport, server_id=PLATFORM, channels=kw.pop("channels", 3),
                          **kw)
    cam = SimulatedCamera(config)  # its domain is the platform's realm, as for the node
    await cam.start(keepalives=False)
    assert cam.registered, cam.last_register_response
    await upstream.wait_registered(2.0)
    return cam


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_catalog_device_info_and_status_queries(upstream, transport):
    cam = await _camera(upstream, transport, channels=5, catalog_items_per_message=2)
    try:
        items = await upstream.query_catalog()
        assert list(items) == cam.channel_ids
        assert all(fields["Status"] == "ON" for fields in items.values())
        assert items[cam.channel_ids[0]]["Name"].endswith("通道1")
        parts = await upstream.query_catalog_parts()
        assert [p.list_num for p in parts] == [2, 2, 1]
        assert len({p.sn for p in parts}) == 1 and {p.sum_num for p in parts} == {5}
        info = await upstream.query_device_info()
        assert info.get("Manufacturer") == "sensing-node" and info.get("Channel") == "5"
        status = await upstream.query_device_status()
        assert status.get("Online") == "ONLINE"
        await cam.send_keepalive()
        assert upstream.keepalives == 1
    finally:
        await cam.stop()


async def test_query_without_answers_fails_within_its_timeout(upstream, camera):
    camera.config.channels = 0  # answers SumNum 0: an empty catalog completes at once
    camera.channel_ids = []
    assert await upstream.query_catalog() == {}
    camera._answer = _never  # type: ignore[method-assign]
    with pytest.raises(UpstreamError, match="incomplete after 0.5 s"):
        await upstream.query_device_info(timeout=0.5)


async def _never(query):
    return None


async def test_catalog_notify_items_are_queued(upstream, camera):
    # The camera answers SUBSCRIBE 405; a node answers 200 and sends NOTIFYs. Play the node's
    # part on the camera's endpoint for this one test.
    endpoint = camera.endpoint
    original = endpoint.on_request
    subscribed: list[Request] = []

    def node_side(event: RequestReceived) -> None:
        if event.request.method != "SUBSCRIBE":
            original(event)
            return
        subscribed.append(event.request)
        answer = Response.for_request(event.request, 200, to_tag="sub")
        answer.headers.add("Expires", event.request.headers.get("Expires") or "0")
        endpoint.respond(event, answer)

    endpoint.on_request = node_side
    handle = await upstream.subscribe_catalog(90)
    assert handle.expires == 90 and handle.remote_tag == "sub"
    request = subscribed[0]
    assert request.headers.get("Event", "").startswith("Catalog")
    query = manscdp.parse_manscdp(request.body)
    assert (query.root, query.cmd_type) == ("Query", "Catalog")
    channel = camera.channel_ids[0]
    events = [CatalogEvent(channel, "OFF"), CatalogEvent(channel, ON),
              CatalogEvent("31011200001310009999", "ADD", {"Name": "new", "Status": "ON"})]
    for body in catalog_notify_parts(query.sn, CAMERA, events):
        notify = Request(method="NOTIFY", uri=f"sip:{PLATFORM}@{HOST}:{upstream.local[1]}",
                         body=body)
        for name, value in (
            ("Via", endpoint.via("udp")), ("From", f"{request.headers.get('To')};tag=sub"),
            ("To", request.headers.get("From") or ""), ("Call-ID", request.call_id),
            ("CSeq", "1 NOTIFY"), ("Max-Forwards", "70"), ("Event", "Catalog"),
            ("Subscription-State", "active;expires=90"),
            ("Content-Type", "Application/MANSCDP+xml"),
        ):
            notify.headers.add(name, value)
        answer = await endpoint.request(notify, camera.server_peer)
        assert answer.status == 200
    got = [await handle.next_event(2.0) for _ in events]
    assert got == events
    assert handle.notifies == 3 and handle.state == "active;expires=90"
    with pytest.raises(UpstreamError):
        await handle.next_event(0.1)


def _expected(clip: Clip, count: int) -> list[tuple[bytes, int, bool, bytes]]:
    """The first `count` frames a camera sends: (data, PTS, keyframe, PS bytes)."""
    muxer = PsMuxer(clip.codec)
    out = []
    for index in range(count):
        loops, position = divmod(index, len(clip.frames))
        data, pts, key = clip.frames[position]
        pts += loops * clip.duration
        out.append((data, pts, key, muxer.mux_video(data, pts, keyframe=key)))
    return out


def _check_media(session: UpstreamSession, clip: Clip) -> None:
    units = session.units
    assert session.problems == []
    assert session.wrong_ssrc == session.sequence_gaps == session.malformed == 0
    got = [(u.data, u.pts, u.keyframe, u.ps_bytes) for u in units]
    assert got == _expected(clip, len(units))
    decoder = av.CodecContext.create(clip.codec, "r")
    decoded = 0
    for unit in units:
        decoded += len(decoder.decode(av.Packet(unit.data)))
    decoded += len(decoder.decode(None))
    assert decoded == len(units)
    assert session.first_keyframe_at is not None and session.keyframe_delay > 0


@pytest.mark.parametrize("transport", ["udp", "tcp-active", "tcp-passive"])
async def test_invite_receives_and_checks_the_clip(upstream, camera, transport):
    clip = load_clip("h264")
    channel = camera.channel_ids[1]
    session = await upstream.invite(channel, transport)
    assert session.ok and session.status == 200, (session.status, session.warning)
    assert session.expected_ssrc == int(session.offered_ssrc)
    assert session.answer.ssrc == session.offered_ssrc
    offer = session.offer
    assert offer.video.rtpmap[96] == "PS/90000" and offer.video.direction == "recvonly"
    if transport != "udp":
        assert offer.video.setup == ("active" if transport == "tcp-active" else "passive")
        assert offer.video.connection == "new"
    await session.wait_units(30)
    _check_media(session, clip)
    [media] = camera.media_sessions.values()
    assert media.channel_id == channel and media.acked
    answer = await session.bye()
    assert answer is not None and answer.status == 200
    assert session.end_reason == "BYE sent" and session.ended.is_set()
    assert camera.byes_received == 1 and not camera.media_sessions
    assert not upstream.sessions


async def test_bye_from_the_lower_side_ends_the_session(upstream, camera):
    session = await upstream.invite(camera.channel_ids[0], "tcp-passive")
    await session.wait_units(5)
    answers = await camera.hang_up()
    assert [a.status for a in answers] == [200]
    assert await session.wait_ended(2.0) == "BYE from the node"
    assert session.dialog is None and not upstream.sessions


async def test_refused_invite_gives_status_and_warning(upstream, camera):
    camera.config.invite_status = 486
    session = await upstream.invite(camera.channel_ids[0], "udp")
    assert session.status == 486 and not session.ok
    assert session.end_reason == "486 Busy Here" and session.ended.is_set()
    assert session.warning is None  # the camera sends none; a node adds it for its limits
    assert session.units == [] and not upstream.sessions


async def test_cancel_before_the_answer(upstream, camera):
    camera.config.answer_delay_s = 5.0
    session = await upstream.start_invite(camera.channel_ids[0], "udp")
    await wait_for(lambda: camera._pending)
    final = await session.cancel(timeout=3.0)
    assert final is not None and final.status == 487
    assert session.end_reason == "487 Request Terminated"
    assert not camera._pending and not camera.media_sessions


async def test_foreign_ssrc_and_malformed_packets_are_counted_and_kept_out(upstream, camera):
    clip = load_clip("h264")
    session = await upstream.invite(camera.channel_ids[0], "udp")
    await session.wait_units(3)
    expected = session.expected_ssrc
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(build_rtp(96, 1, 0, expected ^ 1, True, b"\x00\x00\x01\xba"),
                    (HOST, session.local_port))
        sock.sendto(b"\x80", (HOST, session.local_port))  # too short for RTP
    await wait_for(lambda: session.wrong_ssrc == 1 and session.malformed == 1)
    assert any(p.startswith(f"SSRC {expected ^ 1} instead of {expected}")
               for p in session.problems)
    await session.bye()
    # The foreign packet reached neither the checks of sequence nor the demuxer.
    assert session.sequence_gaps == 0
    units = session.units
    assert [(u.data, u.pts) for u in units] == [e[:2] for e in _expected(clip, len(units))]


async def test_sequence_gaps_and_payload_types_are_counted(upstream, camera):
    camera.config.send_media = False  # answers and takes the ACK; the packets are ours
    session = await upstream.invite(camera.channel_ids[0], "udp")
    ssrc = session.expected_ssrc
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for seq, pt in ((65534, 96), (65535, 96), (0, 96), (1, 8), (3, 96), (4, 96)):
            sock.sendto(build_rtp(pt, seq, 3600, ssrc, False, b"\x00" * 8),
                        (HOST, session.local_port))
    await wait_for(lambda: session.packets == 6)
    assert session.wrong_payload_type == 1 and session.sequence_gaps == 1
    assert session.problems == ["payload type 8 (seq 1)", "sequence 3 after 1"]
    assert session.wrong_ssrc == session.malformed == 0
    assert session.units == []  # zeros are no PS: nothing comes out, nothing breaks
    await session.bye()


async def test_stall_stops_reading_and_the_sender_skips_frames(upstream, camera):
    session = await upstream.invite(camera.channel_ids[0], "tcp-passive", tcp_rcvbuf=16384)
    await session.wait_units(3)
    [media] = camera.media_sessions.values()
    media.sender.write_buffer_limit = 64 * 1024
    media.sender._tcp.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    session.stall()
    stalled_at = len(session.units)
    await wait_for(lambda: media.sender.frames_skipped > 0, timeout=10.0)
    assert len(session.units) == stalled_at  # nothing is read while stalled
    session.resume()
    await session.wait_units(stalled_at + 10)
    # After the skipped frames the sender resumed at a keyframe: one gap in the frames, none
    # in the RTP sequence (the sender skips whole frames).
    assert session.sequence_gaps == 0 and session.problems == []
    camera_side = media.sender._tcp
    await session.bye()
    await wait_for(media.sender.finished.is_set)
    # The camera's socket lets go once its last buffered write fails (uvloop shows it only
    # in the repr); a loop closed before that complains of an unclosed transport.
    await wait_for(lambda: "closed=True" in repr(camera_side))


async def test_units_are_bounded(upstream, camera):
    session = await upstream.invite(camera.channel_ids[0], "udp", max_units=4)
    await wait_for(lambda: session.units_dropped >= 2)
    assert len(session.units) == 4
    await session.bye()


async def test_invite_needs_a_registered_node(upstream):
    with pytest.raises(UpstreamError, match="not registered"):
        await upstream.invite("31011200001310000101")
    with pytest.raises(UpstreamError, match="not registered"):
        await upstream.query_catalog()


async def test_run_upstream_registers_lists_plays_and_reports():
    config = PlatformConfig(PLATFORM, REALM, PASSWORD)
    lines: list[str] = []
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        run_upstream(config, play=["31011200001310000102"], transport="tcp-passive",
                     seconds=20.0, stop=stop, out=lines.append))
    await wait_for(lambda: config.port)
    cam = SimulatedCamera(CameraConfig(server=(HOST, config.port), device_id=CAMERA,
                                       password=PASSWORD, channels=2, server_id=PLATFORM))
    await cam.start(keepalives=False)
    try:
        await wait_for(lambda: cam.media_sessions)
        await asyncio.sleep(0.5)  # some media
        stop.set()
        assert await asyncio.wait_for(task, 10.0) == 0, lines
    finally:
        await cam.stop(unregister=False)
    text = "\n".join(lines)
    assert f"node {CAMERA} registered from udp" in text
    assert "catalog: 2 channels" in text and "31011200001310000102" in text
    assert "31011200001310000102: 200 OK" in text
    [report] = [line for line in lines if line.startswith("31011200001310000102: ")
                and "units" in line]
    assert "problems []" in report and " 0 units" not in report
    assert cam.byes_received == 1
