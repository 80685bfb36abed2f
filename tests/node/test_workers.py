"""Media worker processes (`media.workers: 2`): real worker processes on loopback.

The streams of two cameras go to two workers, which receive and record them while the node's
process keeps the signalling; a worker killed with SIGKILL is started again, its stream is
invited again, and the segment it left open is recovered. A relay to an upstream is sent by
the worker that receives its camera, and ends with it; so is a browser's WebRTC viewer. The
message format between the processes is checked on its own (any bytes are a message or
`WireError`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.index import RecordIndex
from rtp.ps import AccessUnit
from sensing_node.api.webrtc import WEBRTC
from sensing_node.media.consumers import FrameQueue
from sensing_node.media.overload import Load, recorder_backlog
from sensing_node.media.workers.pool import RemoteReceiver
from sensing_node.media.workers.relays import RemoteRelay
from sensing_node.media.workers.wire import CODECS, WireError, decode_frames, encode_frames
from sensing_node.sim.camera import CameraConfig, SimulatedCamera

from .conftest import PASSWORD, RunningNode, StartNode, stop, wait_for
from .test_cascade import Setup, cascade, check_media  # noqa: F401  (cascade: a fixture)
from .test_cli import ROOT, write_config
from .test_webrtc import Browser, watch

CAMERAS = ("31011200001320000001", "31011200001320000002")


async def two_cameras(start_node: StartNode, **overrides: Any) -> tuple[RunningNode, list[Any]]:
    running = await start_node(media__workers=2, **overrides)
    cams = []
    for device_id in CAMERAS:
        cam = SimulatedCamera(CameraConfig(server=running.sip, device_id=device_id,
                                           password=PASSWORD))
        await cam.start(keepalives=False)
        cams.append(cam)
    await wait_for(lambda: len(list(running.node.registry.channels())) == 2, timeout=10)
    return running, cams


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return found


async def test_two_workers_carry_a_stream_each_and_record_it(
    start_node: StartNode,
) -> None:
    running, cams = await two_cameras(start_node, recording__channels="all",
                                      recording__segment_s=1)
    node = running.node
    try:
        workers = node.media.workers
        assert workers is not None and len(workers.workers) == 2
        pids = {w.pid for w in workers.workers}
        assert pids == children(os.getpid()) & pids and None not in pids
        channels = [cam.channel_ids[0] for cam in cams]
        # Recording pulls both; each lands on a worker of its own (the least loaded).
        await wait_for(lambda: all(
            c in node.media.streams and node.media.streams[c].state == "playing"
            for c in channels), timeout=15)
        receivers = [node.media.streams[c].receiver for c in channels]
        assert all(isinstance(r, RemoteReceiver) for r in receivers)
        assert {r.worker.index for r in receivers} == {0, 1}  # type: ignore[union-attr]
        # The workers record (nothing reaches the node's own recorder) ...
        await wait_for(lambda: node.recording.stats()["segments_closed"] >= 4, timeout=20)
        assert node.recording.recorder.local.units == 0  # type: ignore[union-attr]
        # ... while a viewer in the node's process gets the frames sent over.
        queue = FrameQueue()
        await node.media.subscribe(channels[0], queue)
        first = await asyncio.wait_for(queue.get(), 10)
        assert first.keyframe and first.codec == "h264"
        node.media.unsubscribe(channels[0], queue)
        stats = await running.get("/api/streams")
        assert {s["channel_id"] for s in stats} == set(channels)
        assert all(s["frames"] > 0 and s["packets"] > 0 and s["codec"] == "h264"
                   for s in stats)
    finally:
        root = node.recording.root
        await stop(running)
        for cam in cams:
            await cam.stop(unregister=False)
    # Every segment the workers wrote is whole, hashed and indexed, none left open.
    assert not list(root.rglob("*.part"))
    index = RecordIndex(root / "index.sqlite3")
    try:
        for channel in channels:
            rows = index.segments(channel)
            assert rows
            for row in rows:
                assert hashlib.sha256((root / row.path).read_bytes()).hexdigest() == row.sha256
    finally:
        index.close()


async def test_a_killed_worker_is_restarted_and_its_stream_recovered(
    start_node: StartNode,
) -> None:
    running, cams = await two_cameras(start_node, recording__channels="all",
                                      recording__segment_s=60, media__timeout_s=2)
    node = running.node
    try:
        channel = cams[0].channel_ids[0]
        await wait_for(lambda: channel in node.media.streams
                       and node.media.streams[channel].frames > 30, timeout=20)
        stream = node.media.streams[channel]
        receiver = stream.receiver
        assert isinstance(receiver, RemoteReceiver)
        worker = receiver.worker
        old_pid = worker.pid
        root = node.recording.root
        # (the recording service has the workers write their buffers out every few seconds)
        await wait_for(lambda: any(p.stat().st_size > 50_000
                                   for p in (root / channel).rglob("*.part")), timeout=15)
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        # Started again, the segment it left recovered and indexed, the stream invited again.
        await wait_for(lambda: worker.alive and worker.pid != old_pid, timeout=20)
        index = RecordIndex(root / "index.sqlite3")
        try:
            await wait_for(lambda: any(r.recovered for r in index.segments(channel)),
                           timeout=10)
        finally:
            index.close()
        await wait_for(lambda: stream.state == "playing" and stream.receiver is not receiver
                       and stream.attempts >= 2, timeout=20)
        assert stream.last_error == f"media worker {worker.index} stopped"
        frames = stream.frames
        await wait_for(lambda: stream.frames > frames + 10, timeout=10)
    finally:
        await stop(running)
        for cam in cams:
            await cam.stop(unregister=False)


def socket_holders(port: int, pids: list[int]) -> set[int]:
    """Which of `pids` hold a UDP socket bound to `port` (by the socket's inode, from
    /proc/net/udp and each process's file descriptors)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    holders = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    holders.add(pid)
            except OSError:
                continue  # closed meanwhile
    return holders


async def test_a_relay_to_an_upstream_is_sent_by_the_worker_that_receives_its_camera(
    cascade: Setup,  # noqa: F811
) -> None:
    """An upstream plays a channel of a node with two media workers: the relay's sender runs
    in the worker that receives the camera (its socket is there, not in the node's process,
    and it passes the camera's packets on as they come), the node's process gets no frames
    for it, and the upstream gets the camera's PS byte for byte. SIGKILL of that worker ends
    the relay: the upstream gets a BYE and the port goes back to the pool."""
    running, upstream, camera = await cascade(node={"media.workers": 2})
    hub = running.node.media
    restreamer = running.node.cascade.restreamer
    channel = camera.channel_ids[0]
    session = await upstream.invite(channel, "udp")
    assert session.ok, (session.status, session.reason)
    await session.wait_units(40)
    check_media(session)
    stream = hub.streams[channel]
    receiver = stream.receiver
    assert isinstance(receiver, RemoteReceiver)
    worker = receiver.worker
    [relay] = hub.relays.values()
    assert isinstance(relay, RemoteRelay) and relay.worker is worker
    assert worker.pid is not None
    # The worker sends it ...
    answer = await worker.request({"op": "stats"})
    sent = answer["relays"][str(relay.relay_id)]
    assert sent["state"] == "sending" and sent["packets"] > 0 and sent["forwarding"]
    assert sent["local_port"] == relay.local_port
    assert socket_holders(relay.local_port, [os.getpid(), worker.pid]) == {worker.pid}
    # ... and the node's process is sent no frames for it (the stream's tap stays off).
    assert receiver._tap is False and stream.gop == []
    stats = hub.relay_stats(relay.relay_id)
    assert stats["worker"] == worker.index and stats["packets"] > 0
    # SIGKILL of that worker ends the relay, as a relay that fails ends: BYE upstream.
    os.kill(worker.pid, signal.SIGKILL)
    reason = await session.wait_ended(timeout=10)
    assert "BYE" in reason
    await wait_for(lambda: not restreamer.live())
    assert (await running.get("/api/upstreams"))["sessions"] == []
    assert restreamer.ended[-1]["end_reason"] == f"media worker {worker.index} stopped"
    assert relay.relay_id not in hub.relays and relay.relay_id not in worker.relays
    # Its port is back in the pool, and the camera's once its stream has ended.
    await wait_for(lambda: hub.pool.in_use == 0, timeout=15)


async def test_a_webrtc_viewer_runs_in_the_worker_that_receives_its_camera(
    start_node: StartNode,
) -> None:
    """A browser (aiortc on loopback) watches a channel of a node with two media workers:
    the viewer's peer connection runs in the worker that receives the camera (its ICE socket
    is there, the worker's stats list it), the node's process is sent no frames for it, and
    the browser decodes the camera's H.264. SIGKILL of that worker ends the viewer: it leaves
    GET /api/webrtc and its end is audited with the reason."""
    running, cams = await two_cameras(start_node)
    node = running.node
    browser = Browser()
    try:
        channel = cams[0].channel_ids[0]
        body = await watch(running, browser, channel)
        viewer_id = body["session_id"]
        frames = [await browser.frame() for _ in range(20)]
        assert all((f.width, f.height) == (640, 360) for f in frames)
        stream = node.media.streams[channel]
        receiver = stream.receiver
        assert isinstance(receiver, RemoteReceiver)
        worker = receiver.worker
        assert worker.pid is not None
        # The worker runs it ...
        await wait_for(lambda: worker.stats.get("viewers", {}).get(viewer_id, {})
                       .get("frames_sent", 0) >= 20, timeout=5)
        reported = worker.stats["viewers"][viewer_id]
        assert reported["connection"] == "connected" and reported["dropped"] == 0
        (other,) = [w for w in node.media.workers.workers if w is not worker]
        assert other.viewers == {} and not other.stats.get("viewers")
        ports = {int(line.split()[5]) for line in body["sdp"].splitlines()
                 if line.startswith("a=candidate:") and line.split()[2].lower() == "udp"}
        assert ports
        for port in ports:
            assert socket_holders(port, [os.getpid(), worker.pid]) == {worker.pid}
        viewer = running.client.app[WEBRTC].viewers.get(viewer_id)
        assert viewer is not None and viewer.pc is None and viewer.remote is not None
        (listed,) = await running.get("/api/webrtc")
        assert listed["worker"] == worker.index and listed["frames_sent"] > 0
        assert [c.name for c in stream.consumers] == ["webrtc"]
        # ... and the node's process is sent no frames for it (the stream's tap stays off).
        assert receiver._tap is False and stream.gop == []
        # SIGKILL of that worker ends the viewer, audited as any other end.
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while await running.get("/api/webrtc") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await running.get("/api/webrtc") == []
        assert viewer.state == "ended"
        assert viewer.end_reason == f"media worker {worker.index} stopped"
        assert viewer_id not in worker.viewers and "webrtc" not in [
            c.name for c in stream.consumers]
        entries: list[Any] = []
        while len(entries) < 2 and time.monotonic() < deadline:
            entries = await running.get("/api/audit?action=live_view")
            await asyncio.sleep(0.05)
        ended = entries[0]
        assert ended["result"] == "ok" and ended["detail"].startswith(f"webrtc {viewer_id} "
                                                                      "ended after")
        assert ended["detail"].endswith(f": media worker {worker.index} stopped")
    finally:
        await browser.close()
        await stop(running)
        for cam in cams:
            await cam.stop(unregister=False)


def _unit(i: int, codec: str) -> AccessUnit:
    return AccessUnit(0xE0 + i % 16, codec, None if i % 3 else i * 3600, None,
                      i % 5 == 0, bytes([i % 256]) * (i * 7 % 300), bytes(i % 97), i * 1000)


def test_frames_round_trip() -> None:
    units = [_unit(i, CODECS[i % len(CODECS)]) for i in range(40)]
    message = b"".join(encode_frames(7, units))
    assert decode_frames(message[5:]) == (7, units)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_frames_body_decodes_or_raises_wire_error(body: bytes) -> None:
    try:
        stream, units = decode_frames(body)
    except WireError:
        return
    assert len(units) == struct.unpack_from("!IH", body)[1] and stream >= 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=6), st.integers(1, 40))
def test_a_frames_body_cut_anywhere_raises_wire_error(sizes: list[int], cut: int) -> None:
    units = [_unit(n, "h265") for n in sizes]
    body = b"".join(encode_frames(1, units))[5:]
    with pytest.raises(WireError):
        decode_frames(body[:-(1 + cut % len(body))])


async def test_an_overloaded_worker_sheds_its_newest_stream(start_node: StartNode) -> None:
    """The overload guard watches each worker by what it reports: a worker told to be losing
    packets on every stream sheds its newest, and the other worker's stream plays on."""
    running, cams = await two_cameras(start_node, media__overload="shed-newest")
    hub = running.node.media
    hub.overload.sustain_s = 1.0  # the rules unchanged, sooner
    try:
        channels = [cam.channel_ids[0] for cam in cams]
        for channel in channels:
            response = await running.client.post(f"/api/channels/{channel}/live",
                                                 headers=running.headers)
            assert response.status == 200, await response.text()
        receivers = [hub.streams[c].receiver for c in channels]
        assert all(isinstance(r, RemoteReceiver) for r in receivers)
        victim = receivers[1].worker.index  # type: ignore[union-attr]
        await wait_for(lambda: victim in hub._worker_meters, timeout=5)
        # Its recorder's queue is measured from what it reports, with its sockets' queues.
        worker = receivers[1].worker  # type: ignore[union-attr]
        meter = hub._worker_meters[victim]
        assert meter.recorder_queue is not None
        recorded = worker.stats["recorder"]
        assert meter.recorder_queue() == recorder_backlog(recorded["queue_bytes"],
                                                          recorded["queue_depth"])
        hub._worker_meters[victim].fed = Load(lag_s=0.0, streams=3, lossy=3, packets=1000,
                                              lost=300)
        await wait_for(lambda: hub.overload.shed, timeout=10)
        hub._worker_meters[victim].fed = Load(lag_s=0.0, streams=0)
        assert list(hub.overload.shed) == [channels[1]]
        await wait_for(lambda: channels[1] not in hub.streams)
        assert hub.streams[channels[0]].state == "playing"
        health = await running.get("/healthz")
        assert any(r.startswith(f"media overload in process worker {victim}")
                   for r in health["reasons"])
        stats = await running.get("/api/stats")
        assert [s["channel_id"] for s in stats["overload"]["shed"]] == [channels[1]]
        assert [w["index"] for w in stats["workers"]] == [0, 1]
        assert all(w["alive"] and w["pid"] for w in stats["workers"])
    finally:
        await stop(running)
        for cam in cams:
            await cam.stop(unregister=False)


async def test_a_worker_that_stops_answering_is_killed_and_started_again(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sensing_node.media.workers.pool.STATS_TIMEOUT_S", 0.3)
    monkeypatch.setattr("sensing_node.media.workers.pool.HUNG_AFTER", 2)
    running = await start_node(media__workers=2)
    try:
        workers = running.node.media.workers
        assert workers is not None
        worker = workers.workers[0]
        old_pid = worker.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGSTOP)  # alive, but its loop never answers
        await wait_for(lambda: worker.alive and worker.pid not in (None, old_pid), timeout=15)
        assert worker.restarts == 1 and workers.workers[1].restarts == 0
        assert (await worker.request({"op": "stats"}))["streams"] == {}
    finally:
        await stop(running)


def test_sigterm_to_the_whole_group_stops_the_workers_in_order(tmp_path: Path) -> None:
    """`sensing-node run` with two workers recording; a service manager's SIGTERM reaches
    every process of the group: the node's process stops the workers in order, so every
    segment is closed and indexed and no worker is left behind."""
    config, _, http_port = write_config(
        tmp_path, "simulator:\n  cameras: 2\nmedia:\n  workers: 2\n"
        "recording:\n  channels: all\n  segment_s: 60\n", password="12345678")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sensing_node", "run", "-c", str(config)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        recording: dict[str, Any] = {}
        while time.monotonic() < deadline and recording.get("units", 0) < 100:
            time.sleep(0.3)
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{http_port}/api/stats",
                    headers={"Authorization": "Bearer secret"})
                stats = json.loads(urllib.request.urlopen(request, timeout=2).read())
            except OSError:
                continue
            recording = stats["recording"]
            workers = stats["workers"]
        assert recording.get("units", 0) >= 100, recording
        pids = [w["pid"] for w in workers]
        assert len(pids) == 2 and all(pids)
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    root = tmp_path / "data" / "recordings"
    assert not list(root.rglob("*.part"))
    index = RecordIndex(root / "index.sqlite3")
    try:
        channels = {p.name for p in root.iterdir() if p.is_dir()}
        assert len(channels) == 2
        rows = [row for channel in channels for row in index.segments(channel)]
    finally:
        index.close()
    assert len(rows) == 2 and not any(row.recovered for row in rows)
    for row in rows:
        assert hashlib.sha256((root / row.path).read_bytes()).hexdigest() == row.sha256
