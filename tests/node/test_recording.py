"""Recording end to end: a running node records a simulated camera, answers searches, exports,
RecordInfo queries, keeps an audit log, and survives a real `kill -9`.

Segments are one second long here (`recording.segment_s: 1`) so that a few seconds of the
camera's 25 fps stream (keyframe every second) give several files.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import av
import pytest
from aiohttp.test_utils import TestClient, TestServer

from recorder.index import RecordIndex
from recorder.search import parse_file_path
from recorder.segments import NODE_NOT_RUNNING, O_DIRECT
from recorder.verify import check_timeline, verify
from rtp.ps import PsDemuxer
from sensing_node.api.routes import NODE
from sensing_node.app import build_app
from sensing_node.media.overload import Shed
from sensing_node.settings import settings_for_tests
from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sip import manscdp
from tests.recorder.media import open_part_flags

from .conftest import PASSWORD, TOKEN, WORKERS, RunningNode, StartNode, wait_for
from .test_cli import ROOT, write_config

CAMERA = "31011200001320000001"
CHANNEL = "31011200001310000101"  # the simulator's first channel of CAMERA
TZ_QUERY = "%Y-%m-%dT%H:%M:%S.%f"
SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = 86400.0


class Wall:
    """The node's wall clock in a test: real time moved by `offset`, or `frozen` at a time."""

    def __init__(self, offset: float = 0.0, frozen: float | None = None) -> None:
        self.offset = offset
        self.frozen = frozen

    def __call__(self) -> float:
        return self.frozen if self.frozen is not None else time.time() + self.offset


@pytest.fixture
async def recording(start_node: StartNode, tmp_path: Path):
    cameras: list[SimulatedCamera] = []
    clients: list[TestClient] = []

    async def start_at(wall: Wall, data_dir: Path, values: dict[str, Any]) -> RunningNode:
        """What `start_node` does, with the node on `wall`."""
        settings = settings_for_tests(data_dir, **{
            "node.api_token": TOKEN, "devices.password": PASSWORD,
            "devices.allow": ["31011200", "34020000"],
            **({"media.workers": WORKERS} if WORKERS else {}), **values})
        app = build_app(settings, wall=wall)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return RunningNode(app[NODE], client, {"Authorization": f"Bearer {TOKEN}"})

    async def setup(
        wall: Wall | None = None, camera: dict[str, Any] | None = None, **overrides: Any
    ) -> tuple[RunningNode, SimulatedCamera]:
        values = {"recording.channels": [CHANNEL], "recording.segment_s": 1,
                  "node.timezone": "Asia/Shanghai", **overrides}
        if wall is None:
            running = await start_node(**values)
        else:
            running = await start_at(wall, values.pop("data_dir", tmp_path / "data"), values)
        cam = SimulatedCamera(CameraConfig(server=running.sip, device_id=CAMERA,
                                           password=PASSWORD, **(camera or {})))
        cameras.append(cam)
        await cam.start(keepalives=False)
        return running, cam

    yield setup
    for cam in cameras:
        await cam.stop(unregister=False)
    for client in clients:
        await client.close()


async def segments_of(running: RunningNode, count: int, timeout: float = 15.0) -> list[Any]:
    service = running.node.recording

    async def enough() -> list[Any]:
        rows, _ = await service.search(CHANNEL, 0, 4e9)
        return rows if len(rows) >= count else []

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await enough()
        if rows:
            return rows
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} segments recorded")


def local(ts: float) -> str:
    """A query time without offset: the node's zone (Asia/Shanghai) applies."""
    return datetime.fromtimestamp(ts, SHANGHAI).strftime(TZ_QUERY)


def decoded_frames(data: bytes, fmt: str) -> int:
    with av.open(io.BytesIO(data), format=fmt) as container:
        return sum(1 for _ in container.decode(video=0))


async def test_records_searches_and_audits(recording) -> None:
    running, cam = await recording()
    rows = await segments_of(running, 3)
    root = running.node.recording.root
    previous = None
    for row in rows[:3]:
        data = (root / row.path).read_bytes()
        assert row.path.startswith(f"{CHANNEL}/")
        assert hashlib.sha256(data).hexdigest() == row.sha256 and len(data) == row.bytes
        assert data.startswith(b"\x00\x00\x01\xba")  # a keyframe pack opens every segment
        assert decoded_frames(data, "mpeg") == row.frames  # plays on its own
        if previous is not None:
            assert row.prev_sha256 == previous.sha256  # the hash chain
        previous = row

    start, end = rows[0].start_wall - 60, rows[-1].end_wall + 60
    response = await running.client.get(
        "/api/recordings", headers=running.headers,
        params={"channel": CHANNEL, "start": local(start), "end": local(end)},
    )
    assert response.status == 200
    body = await response.json()
    assert [s["sha256"] for s in body["segments"]][:3] == [r.sha256 for r in rows[:3]]
    first = body["segments"][0]
    assert first["codec"] == "h264" and first["channel_id"] == CHANNEL
    assert datetime.fromisoformat(first["start"]).utcoffset() == timedelta(hours=8)
    assert body["gaps"] == []

    bad = await running.client.get("/api/recordings", headers=running.headers,
                                   params={"channel": CHANNEL, "start": "yesterday"})
    assert bad.status == 400
    audit = await running.get("/api/audit")
    assert audit[0]["action"] == "search" and audit[0]["channel_id"] == CHANNEL
    assert audit[0]["actor"].startswith("api-token@")


async def test_a_recording_refused_again_and_again_is_logged_once(
    recording, caplog: pytest.LogCaptureFixture,
) -> None:
    # A channel shed for overload is asked for at every pass and refused for its cool-down:
    # one warning, not one every RECONCILE_S per channel.
    running, _ = await recording()
    hub, service = running.node.media, running.node.recording
    await wait_for(lambda: CHANNEL in hub.streams)
    hub.overload.shed[CHANNEL] = Shed(CHANNEL, "main", 0, 0.0, 0.0, 0.0, 1e9, 1,
                                      "shed: media overload (a drill; nothing measured)")
    hub.streams[CHANNEL].stop(hub.overload.reason(CHANNEL))
    await wait_for(lambda: CHANNEL not in hub.streams)
    caplog.set_level(logging.WARNING, logger="sensing_node.recording.service")

    async def passes(count: int) -> list[str]:
        for _ in range(count):
            service.reconcile()
            await asyncio.gather(*service._subscribing.values(), return_exceptions=True)
        return [r.getMessage() for r in caplog.records
                if r.getMessage().startswith(f"recording {CHANNEL}: shed")]

    refusals = await passes(3)
    # The stream's end (its reason), then the guard's refusal: each said once
    assert 1 <= len(refusals) <= 2
    assert "(a drill; nothing measured); refused until the load is low again" in refusals[-1]
    assert await passes(3) == refusals
    del hub.overload.shed[CHANNEL]  # back: recorded again, and a new refusal logged again
    await passes(1)
    await wait_for(lambda: CHANNEL in hub.streams)
    hub.overload.shed[CHANNEL] = Shed(CHANNEL, "main", 0, 0.0, 0.0, 0.0, 1e9, 1,
                                      "shed: media overload (a drill; nothing measured)")
    hub.streams[CHANNEL].stop(hub.overload.reason(CHANNEL))
    await wait_for(lambda: CHANNEL not in hub.streams)
    assert len(await passes(2)) > len(refusals)


async def test_export_needs_a_purpose_and_streams_ps_and_mp4(recording) -> None:
    running, _ = await recording()
    rows = await segments_of(running, 4)
    start, end = rows[1].start_wall + 0.3, rows[2].end_wall - 0.3  # mid-GOP at both ends
    params = {"channel": CHANNEL, "start": local(start), "end": local(end)}
    client, headers = running.client, running.headers

    refused = await client.get("/api/recordings/export", headers=headers,
                               params={**params, "format": "ps"})
    assert refused.status == 400 and "purpose" in (await refused.json())["error"]

    response = await client.get("/api/recordings/export", headers=headers,
                                params={**params, "format": "ps", "purpose": "case 2026-17"})
    assert response.status == 200
    ps = await response.read()
    root = running.node.recording.root
    # The original bytes, starting at the keyframe pack that opens segment 1.
    assert ps.startswith((root / rows[1].path).read_bytes()[:4096])
    demuxer = PsDemuxer()
    units = [u for u in demuxer.feed(ps) + demuxer.flush() if u.stream_id >= 0xE0]
    assert units[0].keyframe and len(units) >= 25

    response = await client.get("/api/recordings/export",
                                headers={**headers, "X-Purpose": "incident 4711"},
                                params={**params, "format": "mp4"})
    assert response.status == 200 and response.headers["Content-Type"] == "video/mp4"
    mp4 = await response.read()
    assert decoded_frames(mp4, "mp4") == len(units)  # the same frames as the PS export

    audit = await running.get("/api/audit?action=export")
    assert [(a["result"], a["purpose"]) for a in audit] == [
        ("ok", "incident 4711"), ("ok", "case 2026-17"), ("denied", None)]


async def test_play_streams_a_fragmented_mp4_for_a_browser_and_is_audited(recording) -> None:
    running, _ = await recording()
    rows = await segments_of(running, 3)
    params = {"channel": CHANNEL, "start": local(rows[0].start_wall + 0.3),
              "end": local(rows[1].end_wall - 0.3)}
    client, headers = running.client, running.headers
    refused = await client.get("/api/recordings/play", headers=headers, params=params)
    assert refused.status == 400 and "purpose" in (await refused.json())["error"]
    wrong = await client.get("/api/recordings/play", headers=headers,
                             params={**params, "purpose": "p", "format": "ps"})
    assert wrong.status == 400
    response = await client.get("/api/recordings/play", headers=headers,
                                params={**params, "purpose": "watch 12"})
    assert response.status == 200 and response.headers["Content-Type"] == "video/mp4"
    assert response.headers["Content-Disposition"].startswith("inline;")
    assert response.headers["X-Video-Codec"] == "h264" and "Warning" not in response.headers
    mp4 = await response.read()
    # Fragmented: a moov without samples, then moof/mdat pairs a player takes as they come.
    assert b"moof" in mp4[:200_000] and mp4.index(b"moov") < mp4.index(b"moof")
    export = await client.get("/api/recordings/export", headers=headers,
                              params={**params, "purpose": "same range", "format": "mp4"})
    assert decoded_frames(mp4, "mp4") == decoded_frames(await export.read(), "mp4") > 0
    audit = await running.get("/api/audit?action=playback")
    assert [(a["result"], a["purpose"]) for a in audit] == [("ok", "watch 12"), ("denied", None)]


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "cached"])
async def test_shutdown_closes_the_open_segment(recording, direct_io) -> None:
    running, _ = await recording(**{"recording.segment_s": 60, "recording.fsync_s": 0.5,
                                    "recording.direct_io": direct_io})
    await wait_for(lambda: running.node.recording.stats()["units"] > 30, timeout=10)
    # Meanwhile the open segment is synced to the disk every recording.fsync_s.
    await wait_for(lambda: running.node.recording.stats()["syncs"] > 0, timeout=10)
    root = running.node.recording.root
    # It is written past the page cache unless told not to, where the stream is: in the
    # node's process or in its media worker.
    workers = running.node.media.workers
    pids: list[int | str] = ["self"] if workers is None else [w.pid for w in workers.workers]
    flags = [f for pid in pids for f in open_part_flags(root, pid)]
    assert flags and all(bool(f & O_DIRECT) == direct_io for f in flags)
    await running.client.close()  # what SIGTERM does
    assert not list(root.rglob("*.part"))
    index = RecordIndex(root / "index.sqlite3")
    try:
        (row,) = index.segments(CHANNEL)
    finally:
        index.close()
    data = (root / row.path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == row.sha256 and len(data) == row.bytes
    assert row.frames > 30 and decoded_frames(data, "mpeg") == row.frames


async def test_low_disk_raises_the_alarm_and_keeps_recording(recording) -> None:
    running, _ = await recording(**{"recording.min_free_gb": 10**9})
    health = await running.client.get("/healthz")
    body = await health.json()
    assert body["status"] == "degraded"
    assert any("below min_free_gb" in reason for reason in body["reasons"])
    stats = await running.get("/api/stats")
    assert "below min_free_gb" in stats["recording"]["disk_alarm"]
    await segments_of(running, 2)  # recording goes on


async def test_record_info_query_is_answered_from_the_index(recording) -> None:
    from zoneinfo import ZoneInfo

    from .test_trust import answers_at

    running, cam = await recording()
    rows = await segments_of(running, 3)
    start = datetime.fromtimestamp(rows[0].start_wall - 5)
    end = datetime.fromtimestamp(rows[-1].end_wall + 5)
    tz = ZoneInfo("Asia/Shanghai")
    query = manscdp.record_info_query(77, CHANNEL, start.astimezone(tz), end.astimezone(tz), tz=tz)
    # Asked by the camera itself: a device learns about its own channels only (test_trust.py).
    answer = await answers_at(cam, query)
    assert answer.root == "Response" and answer.sn == 77 and answer.device_id == CHANNEL
    # Adjacent segments make one item (a run without a gap), not one each.
    assert answer.sum_num == 1 and len(answer.items) == 1
    item = answer.items[0]
    assert parse_file_path(item["FilePath"]) == (CHANNEL, round(rows[0].start_wall, 3))
    assert item["Type"] == "time"
    assert int(item["FileSize"]) >= sum(row.bytes for row in rows)
    assert manscdp.parse_gb_time(item["StartTime"], tz).timestamp() == int(rows[0].start_wall)
    assert manscdp.parse_gb_time(item["EndTime"], tz).timestamp() >= rows[-1].end_wall


# ----- a real process, killed -----------------------------------------------------------------

def _get(port: int, path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": "Bearer secret"})
    return json.loads(urllib.request.urlopen(request, timeout=2).read())


def test_kill_9_mid_segment_then_recovery_verification_and_tamper_reports(tmp_path: Path) -> None:
    config, _, http_port = write_config(
        tmp_path,
        "simulator:\n  cameras: 1\n"
        "recording:\n  segment_s: 600\n",  # the first segment is still open when killed
        password="12345678",
    )
    root = tmp_path / "data" / "recordings"
    node = subprocess.Popen([sys.executable, "-m", "sensing_node", "run", "-c", str(config)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        part: list[Path] = []
        while time.monotonic() < deadline:
            part = [p for p in root.rglob("*.part") if p.stat().st_size > 100_000]
            if part:
                break
            time.sleep(0.2)
        assert part, "no partial segment was written"
        os.kill(node.pid, signal.SIGKILL)
        node.wait(10)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    (partial,) = part
    assert node.returncode == -signal.SIGKILL

    # The next start recovers it: truncated to whole packs, hashed, indexed, playable.
    node = subprocess.Popen([sys.executable, "-m", "sensing_node", "run", "-c", str(config)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not partial.exists():
                break
            time.sleep(0.2)
        assert not partial.exists()
        while time.monotonic() < deadline:  # let the second run record a little too
            if any(p.stat().st_size > 0 for p in root.rglob("*.part")):
                break
            time.sleep(0.2)
        node.send_signal(signal.SIGTERM)
        assert node.wait(20) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    index = RecordIndex(root / "index.sqlite3")
    try:
        rows = index.segments()
    finally:
        index.close()
    recovered = [r for r in rows if r.recovered]
    assert len(recovered) == 1 and len(rows) >= 2  # plus the one the second run closed
    data = (root / recovered[0].path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == recovered[0].sha256
    assert decoded_frames(data, "mpeg") == recovered[0].frames > 0

    cli = [sys.executable, "-m", "sensing_node"]
    ok = subprocess.run([*cli, "verify-recordings", "-c", str(config)], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith(f"segments checked in {root}")

    plan = subprocess.run([*cli, "plan-storage", "-c", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert "Mbit/s observed" in plan.stdout and "retention 30 days" in plan.stdout

    # Alter one byte of one segment, delete another, add a stray file: all three reported.
    altered, deleted = rows[0], rows[1]
    with open(root / altered.path, "r+b") as file:
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 0xFF]))
    (root / deleted.path).unlink()
    stray = root / rows[0].channel_id / "2020-01-01" / "20200101T000000.000.ps"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"\x00\x00\x01\xba")
    bad = subprocess.run([*cli, "verify-recordings", "-c", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert f"ALTERED    {altered.path}" in bad.stdout
    assert f"MISSING    {deleted.path}" in bad.stdout
    assert "UNINDEXED" in bad.stdout and "20200101T000000.000.ps" in bad.stdout

    audit_ok = subprocess.run([*cli, "verify-audit", "-c", str(config)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert audit_ok.returncode == 0 and audit_ok.stdout.startswith("OK")


def _indexed(root: Path) -> tuple[list[Any], list[Any]]:
    """(segments, gaps) of the index under `root`, read as another process would."""
    if not (root / "index.sqlite3").exists():
        return [], []
    with RecordIndex(root / "index.sqlite3", read_only=True) as index:
        return index.segments(), index.gaps()


def test_kill_9_then_the_not_running_gap_starts_after_the_recovered_segment(
    tmp_path: Path,
) -> None:
    """At start the end of each channel's record was read before the writer thread had indexed
    the recovered .part, so the "node not running" gap overlapped the recovered segment. Now the
    writer thread reads it, after recovery."""
    config, _, _ = write_config(
        tmp_path, "simulator:\n  cameras: 1\nrecording:\n  segment_s: 2\n"
        "media:\n  answer_timeout_s: 2\n",  # the first INVITE goes to the camera's old port
        password="12345678")
    root = tmp_path / "data" / "recordings"
    run = [sys.executable, "-m", "sensing_node", "run", "-c", str(config)]
    node = subprocess.Popen(run, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        part: list[Path] = []
        while time.monotonic() < deadline:  # a segment indexed, the next one open and written
            part = [p for p in root.rglob("*.part") if p.stat().st_size > 10_000]
            if part and _indexed(root)[0]:
                break
            time.sleep(0.1)
        assert part and _indexed(root)[0], "no closed segment and open one"
        os.kill(node.pid, signal.SIGKILL)
        node.wait(10)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert node.returncode == -signal.SIGKILL
    before, _ = _indexed(root)

    node = subprocess.Popen(run, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # recovered, and recording again
            rows, gaps = _indexed(root)
            if gaps and len(rows) > len(before) + 1:
                break
            time.sleep(0.2)
        node.send_signal(signal.SIGTERM)
        assert node.wait(20) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    rows, gaps = _indexed(root)
    (recovered,) = [r for r in rows if r.recovered]
    assert {r.id for r in before} < {r.id for r in rows} and recovered.id not in {
        r.id for r in before}
    assert recovered.end_wall > recovered.start_wall
    (down,) = [g for g in gaps if g.reason == NODE_NOT_RUNNING]
    assert down.start_wall == recovered.end_wall  # where the record ended, recovery included
    assert check_timeline(rows, gaps) == []
    after = [r for r in rows if r.start_wall >= down.end_wall]
    assert after and all(r.end_wall <= down.start_wall for r in rows if r not in after)

    verified = subprocess.run([sys.executable, "-m", "sensing_node", "verify-recordings", "-c",
                               str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "GAP" not in verified.stdout


async def test_audit_log_tampering_is_reported_by_verify_audit(recording, tmp_path: Path) -> None:
    running, _ = await recording()
    await segments_of(running, 1)
    for _ in range(3):
        response = await running.client.post(f"/api/channels/{CHANNEL}/live",
                                             headers=running.headers)
        assert response.status == 200
    data_dir = running.node.settings.node.data_dir
    await running.client.close()
    db = sqlite3.connect(data_dir / "audit.sqlite3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET purpose = 'rewritten' WHERE id = 2")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET actor = 'someone else' WHERE id = 2")
    db.commit()
    db.close()
    config = tmp_path / "verify.yaml"
    config.write_text(f'node: {{api_token: "t", data_dir: "{data_dir}"}}\n'
                      'devices: {password: "p"}\n')
    result = subprocess.run([sys.executable, "-m", "sensing_node", "verify-audit", "-c",
                             str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "ALTERED rows: 2" in result.stdout and result.stdout.splitlines()[-1].startswith(
        "FAILED: 3 audit rows")


async def test_an_interrupted_stream_is_recorded_as_a_gap(recording, monkeypatch) -> None:
    # The node's clock runs three days behind: every time below is the node's own.
    # (the recorder of this process is watched: one media process)
    running, cam = await recording(wall=Wall(offset=-3 * DAY),
                                   **{"media.timeout_s": 1, "media.workers": 1})
    running.node.media.backoff_min_s = 0.2
    await segments_of(running, 1)
    service = running.node.recording
    recorder = service.recorder
    assert recorder is not None
    walls: list[float] = []  # the time of every frame handed to the recorder
    losses: list[tuple[float, str, int]] = []  # (when, why, frames handed over before)
    submit, lost = recorder.submit, recorder.lost

    def spy_submit(channel_id: str, unit: Any, wall: float) -> None:
        walls.append(wall)
        submit(channel_id, unit, wall)

    def spy_lost(channel_id: str, wall: float, reason: str = "packet loss") -> None:
        losses.append((wall, reason, len(walls)))
        lost(channel_id, wall, reason)

    monkeypatch.setattr(recorder, "submit", spy_submit)
    monkeypatch.setattr(recorder, "lost", spy_lost)
    await wait_for(lambda: walls)
    cam.stop_media()  # the camera's stream dies; the node times out and invites again
    deadline = time.monotonic() + 15
    gaps: list[Any] = []
    while time.monotonic() < deadline and not gaps:
        await asyncio.sleep(0.3)
        _, gaps = await service.search(CHANNEL, 0, 4e9)
    (gap,) = gaps
    assert gap.reason == "no media for 1 s"
    (noticed, _, count) = next(loss for loss in losses if loss[1] == gap.reason)
    last_frame = walls[count - 1]
    # The gap starts right after the last frame that came (25 fps), not where the timeout
    # noticed the silence.
    assert gap.start_wall == pytest.approx(last_frame + 0.04) and noticed > gap.start_wall
    before, _ = await service.search(CHANNEL, 0, gap.start_wall)
    assert before[-1].end_wall == gap.start_wall
    rows: list[Any] = []
    while time.monotonic() < deadline and not rows:
        await asyncio.sleep(0.3)
        rows, _ = await service.search(CHANNEL, gap.end_wall, 4e9)
    # It ends where recording resumed, at a keyframe of the stream invited again.
    assert rows[0].start_wall == gap.end_wall and gap.end_wall in walls[count:]
    assert gap.end_wall - gap.start_wall >= 1.0
    response = await running.client.get(
        "/api/recordings", headers=running.headers,
        params={"channel": CHANNEL, "start": local(last_frame - 30),
                "end": local(last_frame + 60)},
    )
    body = await response.json()
    assert [g["reason"] for g in body["gaps"]] == ["no media for 1 s"]


def test_a_long_record_list_is_split_over_several_messages() -> None:
    from zoneinfo import ZoneInfo

    from recorder.index import SegmentRow
    from recorder.search import record_search

    tz = ZoneInfo("Asia/Shanghai")
    rows = [  # 25 runs: half a minute recorded each minute
        SegmentRow(id=i, channel_id=CHANNEL, path=f"{CHANNEL}/2026-11-26/{i}.ps",
                   start_wall=1_795_000_000.0 + 60 * i, end_wall=1_795_000_030.0 + 60 * i,
                   start_pts=0, end_pts=0, bytes=1000 + i, frames=750, codec="h264",
                   sha256="0" * 64, prev_sha256=None, recovered=False)
        for i in range(25)
    ]
    found = record_search(rows, rows[0].start_wall, rows[-1].end_wall)
    items = [dict(item.fields(tz, name="Gate", recorder_id="31011200002000000001"))
             for item in found.items]
    parts = manscdp.response_parts("RecordInfo", 9, CHANNEL, items, list_name="RecordList",
                                   fields=[("Name", "Gate")], per_message=10, max_bytes=8000)
    messages = [manscdp.parse_manscdp(part) for part in parts]
    assert [len(m.items) for m in messages] == [10, 10, 5]
    assert all(m.sum_num == 25 and m.sn == 9 and m.get("Name") == "Gate" for m in messages)
    got = [item for m in messages for item in m.items]
    assert [int(item["FileSize"]) for item in got] == [row.bytes for row in rows]
    assert got[0]["StartTime"] == datetime.fromtimestamp(rows[0].start_wall, tz).strftime(
        "%Y-%m-%dT%H:%M:%S")


async def test_all_means_every_video_source_and_schedules_follow_the_clock(recording) -> None:
    running, cam = await recording(**{"recording.channels": "all"})
    registry = running.node.registry
    await wait_for(lambda: registry.get(CAMERA) and registry.get(CAMERA).channels)
    folder, alarm = "31011200002150000001", "31011200001340000001"
    before = running.node.recording.wanted()
    assert running.node.recording.wanted() is before  # not worked out again: nothing changed
    registry.set_channels(CAMERA, {**registry.get(CAMERA).channels,
                                   folder: {"Name": "Group"}, alarm: {"Name": "Door"}})
    assert running.node.recording.wanted() == {CHANNEL}
    registry.set_channels(CAMERA, {})  # the catalog changed: so does the plan
    assert running.node.recording.wanted() == set()
    registry.set_channels(CAMERA, {CHANNEL: {"Name": "Cam"}})
    assert running.node.recording.wanted() == {CHANNEL}
    await segments_of(running, 1)  # and it is being recorded


async def test_a_channel_is_recorded_only_inside_its_schedule(recording) -> None:
    def at(hour: int, minute: int) -> float:  # Wednesday 2026-11-25 in the node's zone
        return datetime(2026, 11, 25, hour, minute, tzinfo=SHANGHAI).timestamp()

    wall = Wall(frozen=at(10, 0))
    window = {CHANNEL: {"wed": "12:00-13:00", "thu": "10:00-11:00"}}
    running, _ = await recording(wall=wall, **{"recording.channels": window})
    registry, service, media = running.node.registry, running.node.recording, running.node.media
    await wait_for(lambda: registry.get(CAMERA) and registry.get(CAMERA).channels)
    assert service.wanted() == set()
    service.reconcile()
    assert service.recordings == {} and media.streams == {}

    wall.frozen = at(12, 0)
    assert service.wanted() == {CHANNEL}
    service.reconcile()
    consumer = service.recordings[CHANNEL]
    # frames reach the recorder (of this process or of a media worker)
    await wait_for(lambda: service.stats()["units"] > 0, timeout=15)
    assert consumer in media.streams[CHANNEL].consumers

    wall.frozen = at(13, 0)
    assert service.wanted() == set()
    service.reconcile()
    assert service.recordings == {}
    stream = media.streams.get(CHANNEL)
    assert stream is None or consumer not in stream.consumers


async def test_the_retention_sweep_leaves_every_index_write_to_the_writer_thread(
    recording, monkeypatch
) -> None:
    wall = Wall(offset=-40 * DAY)  # what is recorded first is forty days old later on
    # (the threads of this process's recorder are watched: one media process)
    running, _ = await recording(wall=wall, **{"media.workers": 1})
    old = await segments_of(running, 2)
    service = running.node.recording
    threads: list[str] = []
    record_deletions = RecordIndex.record_deletions

    def spy(self: RecordIndex, rows: Any, deleted_at: float) -> int:
        threads.append(threading.current_thread().name)
        return record_deletions(self, rows, deleted_at)

    monkeypatch.setattr(RecordIndex, "record_deletions", spy)
    wall.offset = 0.0
    # The node sees the forty-day step at its next recording time and ends the open segment
    # before it (a gap spans the step): indexed before the sweep, that one goes too.
    assert service.wall() == pytest.approx(time.time(), abs=1)
    assert await asyncio.get_running_loop().run_in_executor(None, service.recorder.drain, 10)
    deleted = await service.sweep()  # while the channel is still being recorded
    cutoff = wall() - 30 * DAY
    assert {row.id for row in old} <= {row.id for row in deleted}
    assert all(row.end_wall < cutoff for row in deleted)
    assert threads and set(threads) == {"recorder-writer"}
    assert not any((service.root / row.path).exists() for row in deleted)
    rows, _ = await service.search(CHANNEL, 0, 4e9)
    assert all(row.end_wall >= cutoff for row in rows)
    # Searches and the sweep read through a connection that cannot write.
    loop = asyncio.get_running_loop()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await loop.run_in_executor(
            service._reader, lambda: service._index().add_gap(CHANNEL, 0.0, 1.0, "a write"))


async def test_the_time_the_node_was_down_is_a_gap(recording, tmp_path: Path) -> None:
    running, cam = await recording()
    first = await segments_of(running, 1)
    await running.client.close()
    await cam.stop(unregister=False)
    await asyncio.sleep(1.5)
    started = time.time()
    running, _ = await recording(data_dir=tmp_path / "data")
    await segments_of(running, len(first) + 2)
    _, gaps = await running.node.recording.search(CHANNEL, 0, 4e9)
    down = [g for g in gaps if g.reason == "not recorded: node not running"]
    assert len(down) == 1
    rows, _ = await running.node.recording.search(CHANNEL, 0, 4e9)
    before = [r for r in rows if r.end_wall <= down[0].start_wall + 0.001]
    after = [r for r in rows if r.start_wall >= down[0].end_wall - 0.001]
    assert before and after and len(before) + len(after) == len(rows)
    # From the end of the record to the node's start (the time it took to play again is not
    # "not running").
    assert down[0].start_wall == max(r.end_wall for r in before)
    assert down[0].end_wall == running.node.recording.up >= started


async def test_a_restart_whose_first_invites_go_unanswered_keeps_its_gaps_true(
    recording, tmp_path: Path
) -> None:
    """The field report: after a restart the camera did not answer the first INVITE. The "node
    not running" gap then ended before it started (at the failure's pending gap) and covered the
    time the node was up and inviting. Now it ends when the node started, and the failure's
    reason names the time from there to the first frame."""
    values = {"media.answer_timeout_s": 1}
    running, cam = await recording(**values)
    await segments_of(running, 1)
    await running.client.close()
    await cam.stop(unregister=False)
    await asyncio.sleep(0.5)  # down for longer than the last frame lasts (its end is estimated)
    started = time.time()
    running, cam = await recording(data_dir=tmp_path / "data", camera={"answer_invite": False},
                                   **values)
    service, media = running.node.recording, running.node.media

    def failures() -> list[dict[str, Any]]:
        return [e for e in media.ended if e["channel_id"] == CHANNEL]

    await wait_for(failures, timeout=15)  # the first INVITE went unanswered
    cam.config.answer_invite = True  # and the camera answers a later one
    old, _ = await service.search(CHANNEL, 0, started)
    rows = await segments_of(running, len(old) + 2, timeout=30)
    _, gaps = await service.search(CHANNEL, 0, 4e9)
    assert all(g.start_wall <= g.end_wall for g in gaps), gaps
    assert check_timeline(rows, gaps) == []
    first_failure = failures()[0]
    failed_at = datetime.fromisoformat(first_failure["ended_at"]).timestamp()
    (down,) = [g for g in gaps if g.reason == NODE_NOT_RUNNING]
    assert down.start_wall == max(r.end_wall for r in old)
    assert started <= down.end_wall < failed_at  # up to the node's start, not beyond
    new = [r for r in rows if r.start_wall >= started]
    (wait,) = [g for g in gaps if g.start_wall == down.end_wall]
    assert wait.reason == first_failure["reason"]
    assert wait.reason.startswith("no answer to INVITE")
    assert wait.end_wall == new[0].start_wall  # up to the first frame recorded again
    assert [g for g in gaps if g.start_wall >= started] == [wait]

    root = service.root
    await running.client.close()
    with RecordIndex(root / "index.sqlite3", read_only=True) as index:
        report = verify(root, index)
    assert report.ok and report.gap_problems == []


async def test_a_restart_while_the_camera_is_offline_names_the_wait_device_offline(
    recording, start_node: StartNode, tmp_path: Path
) -> None:
    running, cam = await recording()
    await segments_of(running, 1)
    await cam.stop(unregister=True)  # the camera leaves: offline, and so it is kept
    await running.client.close()
    await asyncio.sleep(0.5)
    started = time.time()
    running = await start_node(data_dir=tmp_path / "data", **{
        "recording.channels": [CHANNEL], "recording.segment_s": 1,
        "node.timezone": "Asia/Shanghai"})
    service = running.node.recording
    old, _ = await service.search(CHANNEL, 0, started)
    await wait_for(lambda: CHANNEL in service._offline)  # planned, and its device is offline
    cam = SimulatedCamera(CameraConfig(server=running.sip, device_id=CAMERA, password=PASSWORD))
    try:
        await cam.start(keepalives=False)  # back: invited, recorded again
        rows = await segments_of(running, len(old) + 2)
    finally:
        await cam.stop(unregister=False)
    _, gaps = await service.search(CHANNEL, 0, 4e9)
    assert check_timeline(rows, gaps) == []
    (down, wait) = [g for g in gaps if g.start_wall >= max(r.end_wall for r in old)]
    assert (down.reason, down.end_wall) == (NODE_NOT_RUNNING, service.up)
    assert (wait.reason, wait.start_wall) == ("device offline", service.up)
    assert wait.end_wall == min(r.start_wall for r in rows if r.start_wall >= started)


def test_verify_recordings_reports_gaps_out_of_order(tmp_path: Path) -> None:
    from recorder.segments import SegmentWriter
    from tests.recorder.media import FPS, T0, units

    config = tmp_path / "verify.yaml"
    config.write_text(f'node: {{api_token: "t", data_dir: "{tmp_path / "data"}", '
                      'timezone: Asia/Shanghai}\ndevices: {password: "p"}\n')
    root = tmp_path / "data" / "recordings"
    root.mkdir(parents=True)
    with RecordIndex(root / "index.sqlite3") as index:
        writer = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=SHANGHAI)
        for n, unit in enumerate(units("gb_h264_zlm.ps")[:100]):
            writer.write(unit, T0 + n / FPS)
        rows = writer.close()
        cli = [sys.executable, "-m", "sensing_node", "verify-recordings", "-c", str(config)]
        ok = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and "GAP" not in ok.stdout, ok.stdout + ok.stderr
        index.add_gap(CHANNEL, T0 + 58, T0 + 25, "no answer to INVITE within 10 s")
        index.add_gap(CHANNEL, T0 + 1, T0 + 100, NODE_NOT_RUNNING)
    bad = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    lines = [line for line in bad.stdout.splitlines() if line.startswith("GAP")]
    assert lines == [  # by start time; the segment named is the one that ends last
        f"GAP        channel {CHANNEL}: 2026-11-26T16:05:13.123+08:00 .. "
        f"2026-11-26T16:06:52.123+08:00 ({NODE_NOT_RUNNING}) overlaps the segment {rows[-1].path}",
        f"GAP        channel {CHANNEL}: 2026-11-26T16:06:10.123+08:00 .. "
        "2026-11-26T16:05:37.123+08:00 (no answer to INVITE within 10 s) ends before it starts",
    ]
    assert bad.stdout.splitlines()[-1].startswith("FAILED")
