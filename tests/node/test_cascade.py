"""The node as a lower platform, end to end over loopback: a simulated upper platform registers
it, browses its shared catalog, subscribes, and pulls live video that a simulated camera sends
the node, over UDP and both TCP modes, within the configured limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import av
import pytest

from recorder.search import parse_file_path
from rtp.psmux import PsMuxer
from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sensing_node.sim.media import load_clip
from sensing_node.sim.upstream import PlatformConfig, SimulatedUpstream, UpstreamSession
from sensing_node.transport.sip import SipEndpoint
from sip import manscdp
from sip.headers import Headers
from sip.manscdp import build_manscdp
from sip.message import Request
from sip.transaction import Peer

from .conftest import PASSWORD, RunningNode, StartNode, free_even_range, wait_for

CAMERA = "31011200001320000001"
UPSTREAM = "31011200002000000100"
OTHER = "31011200002000000200"  # configured, never reachable
UP_PASSWORD = "upstream-password"

Setup = Callable[..., Awaitable[tuple[RunningNode, SimulatedUpstream, SimulatedCamera]]]


@pytest.fixture
async def cascade(start_node: StartNode) -> AsyncIterator[Setup]:
    """A simulated upstream, a node registered to it, and one catalogued camera (4 channels:
    0 shared by default, 1 authorized to the upstream, 2 never shared, 3 authorized to
    another upstream)."""
    upstreams: list[SimulatedUpstream] = []
    cameras: list[SimulatedCamera] = []

    async def setup(
        *, transport: str = "udp", max_streams: int = 16, node: dict[str, Any] | None = None,
        grant_s: int = 3600, camera_transport: str = "udp", **camera_config: Any,
    ) -> tuple[RunningNode, SimulatedUpstream, SimulatedCamera]:
        upstream = SimulatedUpstream(PlatformConfig(platform_id=UPSTREAM, password=UP_PASSWORD,
                                                    register_expires_s=grant_s))
        upstreams.append(upstream)
        _, port = await upstream.start()
        channels = [f"31011200001310000{i}" for i in range(101, 105)]
        settings: dict[str, Any] = {
            "media.timeout_s": 2,
            "upstreams": [
                {"id": UPSTREAM, "address": f"127.0.0.1:{port}", "password": UP_PASSWORD,
                 "transport": transport, "max_streams": max_streams},
                {"id": OTHER, "address": "127.0.0.1:9", "password": "x"},
            ],
            "channels.overrides": {
                channels[1]: {"share": "authorized", "upstreams": [UPSTREAM]},
                channels[2]: {"share": "none"},
                channels[3]: {"share": "authorized", "upstreams": [OTHER]},
            },
        }
        settings.update(node or {})
        running = await start_node(**settings)
        camera = SimulatedCamera(CameraConfig(
            server=running.sip, device_id=CAMERA, password=PASSWORD, channels=4,
            transport=camera_transport, **camera_config,
        ))
        cameras.append(camera)
        await camera.start(keepalives=False)
        device = running.node.registry.get(CAMERA)
        await wait_for(lambda: device is not None and len(device.channels) == 4)
        assert camera.channel_ids == channels
        await upstream.wait_registered(timeout=10)
        return running, upstream, camera

    yield setup
    for camera in cameras:
        await camera.stop(unregister=False)
    for upstream in upstreams:
        await upstream.stop()


def check_media(session: UpstreamSession, codec: str = "h264") -> None:
    """What the upstream got is the camera's clip, from a keyframe on, byte for byte: the
    elementary data in order and the very PS packs the camera sent (re-muxed the way the camera
    muxes them), and PyAV decodes every frame."""
    units = session.units
    assert units and units[0].keyframe
    assert session.problems == []
    assert session.wrong_ssrc == session.wrong_payload_type == session.sequence_gaps == 0
    clip = [data for data, _, _ in load_clip(codec).frames]
    start = clip.index(units[0].data)
    muxer = PsMuxer(codec)
    for i, unit in enumerate(units):
        assert unit.data == clip[(start + i) % len(clip)], i
        assert unit.ps_bytes == muxer.mux_video(unit.data, unit.pts, keyframe=unit.keyframe), i
    decoder = av.CodecContext.create(codec, "r")
    decoded = sum(len(decoder.decode(av.Packet(unit.data))) for unit in units)
    decoded += len(decoder.decode(None))
    assert decoded == len(units)


async def upstream_state(running: RunningNode) -> dict[str, Any]:
    body = await running.get("/api/upstreams")
    return {item["id"]: item for item in body["upstreams"]}


async def cut_through(running: RunningNode, expected: list[bool]) -> list[bool]:
    """Whether each live session passes the camera's packets on as they come, once it is as
    `expected` (within 5 s: a media worker's relay reports every `STATS_S`)."""
    found: list[bool] = []
    for _ in range(100):
        found = [s["cut_through"] for s in (await running.get("/api/upstreams"))["sessions"]]
        if found == expected:
            break
        await asyncio.sleep(0.05)
    return found


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_registers_refreshes_and_registers_again_after_a_restart(cascade, transport):
    running, upstream, _ = await cascade(transport=transport, grant_s=3)
    state = (await upstream_state(running))[UPSTREAM]
    assert state["state"] == "registered" and state["registered_until"] is not None
    assert state["transport"] == transport and state["max_streams"] == 16
    assert upstream.challenges >= 1 and upstream.auth_failures == 0
    # Refreshed at about 2/3 of the 3 s granted.
    await wait_for(lambda: upstream.refreshes >= 1, timeout=10)
    before = upstream.registrations
    await upstream.restart()  # it forgets the node: the next refresh or keepalive is refused
    await wait_for(lambda: upstream.registrations > before, timeout=15)
    assert (await upstream_state(running))[UPSTREAM]["state"] == "registered"
    assert (await upstream_state(running))[OTHER]["state"] != "registered"


async def test_catalog_holds_what_this_upstream_may_see(cascade):
    running, upstream, camera = await cascade()
    ch = camera.channel_ids
    items = await upstream.query_catalog()
    assert sorted(items) == [ch[0], ch[1]]  # default share, and authorized for it
    assert items[ch[0]]["Status"] == "ON"
    assert items[ch[0]]["Name"] == running.node.registry.get(CAMERA).channels[ch[0]]["Name"]
    info = await upstream.query_device_info()
    assert info.fields["Channel"] == "2" and info.fields["Result"] == "OK"
    status = await upstream.query_device_status()
    assert status.fields["Online"] == "ONLINE"


async def test_default_share_none_shares_only_authorized_channels(cascade):
    _, upstream, camera = await cascade(node={"channels.default_share": "none"})
    assert sorted(await upstream.query_catalog()) == [camera.channel_ids[1]]


async def test_camera_going_offline_is_notified_within_two_seconds(cascade):
    running, upstream, camera = await cascade()
    ch = camera.channel_ids
    subscription = await upstream.subscribe_catalog(expires=600)
    assert (await upstream_state(running))[UPSTREAM]["subscriptions"] == 1
    refreshed = await subscription.refresh(300)
    assert refreshed.status == 200 and refreshed.headers.get("Expires") == "300"
    loop = asyncio.get_running_loop()
    went = loop.time()
    await camera.stop(unregister=True)
    events = [await subscription.next_event(timeout=2.0) for _ in range(2)]
    assert loop.time() - went < 2.0
    assert sorted((e.channel_id, e.event) for e in events) == [(ch[0], "OFF"), (ch[1], "OFF")]


async def test_the_catalog_view_is_taken_again_only_after_a_change(cascade, monkeypatch):
    import sensing_node.cascade.service as service

    running, upstream, camera = await cascade()
    ch = camera.channel_ids
    subscription = await upstream.subscribe_catalog(expires=600)
    taken: list[int] = []
    real = service.channel_view
    monkeypatch.setattr(service, "channel_view", lambda reg: taken.append(1) or real(reg))
    await asyncio.sleep(4 * service.TICK_S)  # ticks with nothing changed: no walk
    assert taken == []
    registry = running.node.registry
    renamed = {**registry.get(CAMERA).channels}
    renamed[ch[0]] = {**renamed[ch[0]], "Name": "Renamed gate"}
    registry.set_channels(CAMERA, renamed)
    event = await subscription.next_event(timeout=2.0)
    assert event.channel_id == ch[0] and event.event == "UPDATE"
    assert len(taken) == 1


@pytest.mark.parametrize("transport", ["udp", "tcp-active", "tcp-passive"])
async def test_live_video_over_each_transport(cascade, transport):
    sip = "udp" if transport == "udp" else "tcp"
    running, upstream, camera = await cascade(transport=sip)
    channel = camera.channel_ids[0]
    session = await upstream.invite(channel, transport, user="duty-officer-7")
    assert session.ok, (session.status, session.reason, session.warning)
    assert session.answer.ssrc == session.offered_ssrc
    await session.wait_units(40)
    check_media(session)
    assert session.keyframe_delay is not None
    body = await running.get("/api/upstreams")
    [live] = body["sessions"]
    assert live["channel_id"] == channel and live["upstream"] == UPSTREAM
    # The node names the transport from its side: it listens where the upstream connects.
    ours = {"udp": "udp", "tcp-active": "tcp-passive", "tcp-passive": "tcp-active"}[transport]
    assert live["state"] == "confirmed" and live["transport"] == ours
    # The camera marks its frames' last packets: the relay passes them on as they come (in
    # the media worker that receives the camera, with media.workers > 1).
    assert await cut_through(running, [True]) == [True]
    answer = await session.bye()
    assert answer is not None and answer.status == 200
    hub = running.node.media
    await wait_for(lambda: not running.node.cascade.restreamer.live())
    await wait_for(lambda: hub.pool.in_use == 0, timeout=10)  # camera stream lingers, then ends
    ended = (await running.get("/api/upstreams"))["ended"]
    assert ended[0]["channel_id"] == channel and ended[0]["end_reason"] == "upstream hung up (BYE)"
    assert ended[0]["bytes"] > 0 and ended[0]["ended"] >= ended[0]["started"]
    entries = await running.node.recording.audit_query(action="upstream_live")
    assert entries and entries[0].channel_id == channel
    assert entries[0].actor == f"upstream {UPSTREAM} user duty-officer-7"
    assert "upstream hung up" in entries[0].detail and entries[0].result == "ok"
    assert entries[0].range_start is not None and entries[0].range_end >= entries[0].range_start
    assert int(entries[0].detail.split(", ")[1].split()[0]) > 0  # bytes sent


async def test_a_running_ingest_is_shared_and_starts_at_its_keyframe(cascade):
    running, upstream, camera = await cascade()
    channel = camera.channel_ids[0]
    first = await upstream.invite(channel, "udp")
    await first.wait_units(30)
    second = await upstream.invite(channel, "udp")
    assert second.ok
    await second.wait_units(10)
    check_media(second)
    assert len(camera.media_sessions) == 1  # one camera pull serves both
    assert second.keyframe_delay < 1.0
    assert await cut_through(running, [True] * 2) == [True] * 2
    # A third relay of the channel: all go back to whole frames (segmented sends fan out
    # cheaper), and to cut-through again once it is gone; the media stays continuous.
    third = await upstream.invite(channel, "udp")
    assert third.ok
    sessions = (await running.get("/api/upstreams"))["sessions"]
    assert [s["cut_through"] for s in sessions] == [False, False, False]
    await second.wait_units(len(second.units) + 30)
    await third.bye()
    assert await cut_through(running, [True] * 2) == [True] * 2
    await second.wait_units(len(second.units) + 30)
    check_media(second)
    check_media(first)


async def test_limits_refuse_with_486_and_a_warning_then_free_the_slot(cascade):
    running, upstream, camera = await cascade(max_streams=1)
    ch = camera.channel_ids
    first = await upstream.invite(ch[0], "udp")
    assert first.ok
    refused = await upstream.invite(ch[1], "udp")
    assert refused.status == 486
    assert refused.warning is not None and "(1/1)" in refused.warning
    assert refused.warning.startswith(f"399 {running.node.settings.node.id} ")
    await first.bye()
    again = await upstream.invite(ch[1], "udp")
    assert again.ok, (again.status, again.warning)


async def test_per_channel_limit(cascade):
    _, upstream, camera = await cascade(node={"limits.max_sessions_per_channel": 1})
    channel = camera.channel_ids[0]
    assert (await upstream.invite(channel, "udp")).ok
    refused = await upstream.invite(channel, "udp")
    assert refused.status == 486 and f"channel {channel} (1/1)" in refused.warning


async def test_browser_viewers_count_in_the_per_channel_limit(cascade):
    running, upstream, camera = await cascade(node={"limits.max_sessions_per_channel": 2})
    channel = camera.channel_ids[0]
    viewers = {channel: 1}  # one browser watching it through the console
    running.node.cascade.restreamer.viewers = lambda c: viewers.get(c, 0)
    assert (await upstream.invite(channel, "udp")).ok
    refused = await upstream.invite(channel, "udp")
    assert refused.status == 486 and f"channel {channel} (2/2)" in refused.warning
    viewers.clear()
    assert (await upstream.invite(channel, "udp")).ok


async def test_refusals_by_share_and_channel(cascade):
    _, upstream, camera = await cascade()
    ch = camera.channel_ids
    assert (await upstream.invite(ch[2], "udp")).status == 403  # share: none
    assert (await upstream.invite(ch[3], "udp")).status == 403  # another upstream's
    assert (await upstream.invite("31011200001310009999", "udp")).status == 404


async def test_cancel_before_the_answer_leaves_nothing_behind(cascade):
    running, upstream, camera = await cascade()
    session = await upstream.start_invite(camera.channel_ids[0], "udp")
    answer = await session.cancel()  # the INVITE's final answer
    assert answer is not None and answer.status == 487
    assert session.status == 487 and not session.ok
    restreamer = running.node.cascade.restreamer
    await wait_for(lambda: not restreamer.live())
    await wait_for(lambda: running.node.media.pool.in_use == 0, timeout=10)


async def test_camera_loss_ends_the_upstream_session_with_bye(cascade):
    _, upstream, camera = await cascade()
    session = await upstream.invite(camera.channel_ids[0], "udp")
    await session.wait_units(10)
    await camera.stop(unregister=True)  # the camera goes away with its stream
    reason = await session.wait_ended(timeout=10)
    assert "BYE" in reason


async def test_a_relay_follows_its_camera_invited_again_and_ends_if_it_does_not_come_back(
    cascade,
):
    """The camera's stream dies with its dialog up: the relay goes on with the stream's next
    attempt (with media workers, the new receiver is told to feed it). When the camera then
    answers no INVITE, nothing comes within media.timeout_s of the gap and the relay ends."""
    running, upstream, camera = await cascade(node={"media.answer_timeout_s": 8})
    channel = camera.channel_ids[0]
    session = await upstream.invite(channel, "udp")
    await session.wait_units(20)
    stream = running.node.media.streams[channel]
    camera.stop_media()
    await wait_for(lambda: stream.attempts >= 2 and stream.state == "playing", timeout=15)
    count = len(session.units)
    await session.wait_units(count + 20)
    assert not session.ended.is_set()
    camera.config.answer_invite = False
    camera.stop_media()
    reason = await session.wait_ended(timeout=15)
    assert "BYE" in reason
    ended = running.node.cascade.restreamer.ended
    assert ended[-1]["end_reason"] == "camera stream stopped: no media for 2 s"


async def test_a_stalled_tcp_upstream_does_not_disturb_another(cascade):
    running, upstream, camera = await cascade(transport="tcp")
    channel = camera.channel_ids[0]
    slow = await upstream.invite(channel, "tcp-active", tcp_rcvbuf=16 * 1024)
    fast = await upstream.invite(channel, "udp")
    await slow.wait_units(5)
    slow.stall()
    count = len(fast.units)
    await fast.wait_units(count + 60)  # 2.4 s of video keep coming while the other is stuck
    check_media(fast)
    reason = await slow.wait_ended(timeout=15)
    assert "BYE" in reason
    ended = running.node.cascade.restreamer.ended
    assert any("not reading" in (e["end_reason"] or "") for e in ended)


async def test_device_control_is_relayed_both_ways(cascade):
    _, upstream, camera = await cascade()
    ch = camera.channel_ids
    ptz = build_manscdp("Control", "DeviceControl", 11, ch[0],
                        [("PTZCmd", "A50F01021F0000D6")])
    assert (await upstream.message(ptz)).status == 200
    await wait_for(lambda: len(camera.controls) == 1)
    assert camera.controls[0].fields["PTZCmd"] == "A50F01021F0000D6"
    assert camera.controls[0].device_id == ch[0] and camera.controls[0].sn == 11
    guard = build_manscdp("Control", "DeviceControl", 12, ch[1], [("GuardCmd", "SetGuard")])
    assert (await upstream.message(guard)).status == 200
    reply = await wait_for(lambda: next(
        (m for m in upstream.messages if m.cmd_type == "DeviceControl" and m.sn == 12), None))
    assert reply.root == "Response" and reply.device_id == CAMERA
    assert reply.fields["Result"] == "OK"
    # a channel this upstream may not see is not relayed
    hidden = build_manscdp("Control", "DeviceControl", 13, ch[2], [("GuardCmd", "SetGuard")])
    assert (await upstream.message(hidden)).status == 404
    assert len(camera.controls) == 2


async def test_a_retransmitted_invite_gets_the_same_answer_not_a_second_session(cascade):
    running, upstream, camera = await cascade()
    session = await upstream.start_invite(camera.channel_ids[0], "udp")
    invite = session.invite_request
    upstream.sip.send(invite, session.peer)  # as a lost 100 would make a UAC resend it
    await session.answered()
    assert session.ok
    restreamer = running.node.cascade.restreamer
    assert len(restreamer.live()) == 1
    upstream.sip.send(invite, session.peer)  # after the 200: the same 200 again, no session
    await session.wait_units(5)
    assert len(restreamer.live()) == 1 and len(restreamer.sessions) == 1
    # Still one session after the retransmissions; its BYE ends it.
    assert (await session.bye()).status == 200
    await wait_for(lambda: not restreamer.live())


def catalog_query(sn: int, node_id: str, via: str, *, realm: str = "3101120000") -> Request:
    body = build_manscdp("Query", "Catalog", sn, node_id)
    headers = Headers([
        ("Via", via), ("From", f"<sip:{UPSTREAM}@{realm}>;tag=x{sn}"),
        ("To", f"<sip:{node_id}@{realm}>"), ("Call-ID", f"q{sn}@test"),
        ("CSeq", "1 MESSAGE"), ("Max-Forwards", "70"),
        ("Content-Type", "Application/MANSCDP+xml"),
    ])
    return Request(headers=headers, body=body, method="MESSAGE", uri=f"sip:{node_id}@x")


async def test_requests_in_an_upstreams_name_from_elsewhere_get_403(cascade):
    running, upstream, _ = await cascade()
    node_peer = Peer("udp", *running.sip)
    node_id = running.node.settings.node.id
    # from another port of the same host: not the configured address
    impostor = SipEndpoint(lambda event: None)
    await impostor.open_udp()
    try:
        answer = await impostor.request(catalog_query(1, node_id, impostor.via("udp")),
                                        node_peer)
        assert (answer.status, answer.reason) == (403, "Source Mismatch")
        # from the configured address itself, the same request is answered
        answer = await upstream.sip.request(
            catalog_query(2, node_id, upstream.sip.via("udp")), node_peer)
        assert answer.status == 200
    finally:
        await impostor.close()
    assert running.node.cascade.refused == 1


async def test_an_upstream_that_refused_the_node_gets_403(cascade):
    running, upstream, _ = await cascade(grant_s=3)  # refreshed within 2 s
    upstream.mode = "forbid"
    await upstream.restart()  # forgets the node; the next REGISTER is refused
    link = running.node.cascade.links[UPSTREAM]
    await wait_for(lambda: link.registration.state.value == "failed", timeout=15)
    answer = await upstream.sip.request(
        catalog_query(3, running.node.settings.node.id, upstream.sip.via("udp")),
        Peer("udp", *running.sip))
    assert (answer.status, answer.reason) == (403, "Not Registered")
    state = (await upstream_state(running))[UPSTREAM]
    assert state["state"] == "failed" and "403" in state["last_error"]


async def test_no_port_left_answers_503_with_retry_after(cascade):
    low, high = free_even_range(2, 31000, 32700)  # below the ephemeral ports: exactly two
    running, upstream, camera = await cascade(node={"node.rtp_ports": f"{low}-{high}"})
    channel = camera.channel_ids[0]
    first = await upstream.invite(channel, "udp")  # the camera's port and this relay's
    assert first.ok, (first.status, first.reason)
    refused = await upstream.invite(channel, "udp")
    assert refused.status == 503
    answer = refused.response
    assert answer is not None and answer.headers.get("Retry-After") == "10"
    assert running.node.media.pool.in_use == 2


async def test_record_search_answers_runs_of_a_shared_channel_and_nothing_for_others(cascade):
    running, upstream, camera = await cascade(node={
        "recording.channels": ["31011200001310000101", "31011200001310000103"],
        "recording.segment_s": 1,
    })
    ch = camera.channel_ids
    service = running.node.recording
    rows: list[Any] = []
    for _ in range(150):  # three one-second segments of each, at most 30 s
        rows, _ = await service.search(ch[0], 0, 4e9)
        others, _ = await service.search(ch[2], 0, 4e9)
        if len(rows) >= 3 and others:
            break
        await asyncio.sleep(0.2)
    assert len(rows) >= 3
    tz = running.node.settings.node.tz
    start = datetime.fromtimestamp(rows[0].start_wall - 60, tz).replace(tzinfo=None)
    end = datetime.fromtimestamp(rows[-1].end_wall + 60, tz).replace(tzinfo=None)
    items = await upstream.query_record_info(ch[0], start, end)
    assert len(items) == 1  # adjacent segments are one run
    item = items[0]
    assert item["DeviceID"] == ch[0] and item["Type"] == "time"
    assert parse_file_path(item["FilePath"]) == (ch[0], round(rows[0].start_wall, 3))
    began = manscdp.parse_gb_time(item["StartTime"], tz).timestamp()
    assert began == int(rows[0].start_wall)
    assert int(item["FileSize"]) >= sum(row.bytes for row in rows)
    # Recorded, but never shared: answered as unknown, not refused.
    assert await upstream.query_record_info(ch[2], start, end) == []


async def test_cut_through_is_left_to_a_node_with_few_relays(cascade, monkeypatch):
    monkeypatch.setattr("sensing_node.media.hub.CUT_THROUGH_MAX_TOTAL", 1)
    running, upstream, camera = await cascade()
    ch = camera.channel_ids
    first = await upstream.invite(ch[0], "udp")
    await first.wait_units(10)
    assert await cut_through(running, [True]) == [True]
    second = await upstream.invite(ch[1], "udp")  # two relays in all: whole frames for both
    assert second.ok
    sessions = (await running.get("/api/upstreams"))["sessions"]
    assert [s["cut_through"] for s in sessions] == [False, False]
    await second.bye()
    assert await cut_through(running, [True]) == [True]
    await first.wait_units(len(first.units) + 20)
    check_media(first)


async def test_a_camera_that_refuses_gives_the_upstream_its_status(cascade):
    _, upstream, camera = await cascade(invite_status=486)
    session = await upstream.invite(camera.channel_ids[0], "udp")
    assert session.status == 486 and session.warning is None  # the camera's, not a limit


async def test_a_camera_that_does_not_answer_gives_504(cascade):
    _, upstream, camera = await cascade(answer_invite=False,
                                        node={"media.answer_timeout_s": 1})
    session = await upstream.invite(camera.channel_ids[0], "udp")
    assert session.status == 504


async def test_an_invite_pending_when_the_node_stops_gets_503(cascade):
    running, upstream, camera = await cascade(answer_delay_s=5.0)
    session = await upstream.start_invite(camera.channel_ids[0], "udp")
    restreamer = running.node.cascade.restreamer
    await wait_for(lambda: restreamer.live())
    await running.client.close()  # the node stops while the camera has not answered yet
    await session.answered()
    assert session.status == 503


async def test_the_session_table_is_bounded(cascade):
    running, upstream, camera = await cascade()
    restreamer = running.node.cascade.restreamer
    restreamer.max_sessions = 1
    assert (await upstream.invite(camera.channel_ids[0], "udp")).ok
    refused = await upstream.invite(camera.channel_ids[1], "udp")
    assert refused.status == 503 and refused.response.headers.get("Retry-After") == "10"
    assert len(restreamer.sessions) == 1


async def test_queries_beyond_the_answers_under_way_get_503(cascade, monkeypatch):
    running, upstream, _ = await cascade()
    monkeypatch.setattr("sensing_node.cascade.service.MAX_ANSWERS", 0)
    answer = await upstream.sip.request(
        catalog_query(4, running.node.settings.node.id, upstream.sip.via("udp")),
        Peer("udp", *running.sip))
    assert answer.status == 503
    monkeypatch.setattr("sensing_node.cascade.service.MAX_ANSWERS", 64)
    assert sorted(await upstream.query_catalog())  # answered again once there is room
