"""The operator console in headless Chromium against a running node with its two built-in
simulated cameras: sign-in, the device list, updates over the event stream, roles, the
recordings timeline with playback and export, and live video over WebRTC."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import av
import pytest
from aiohttp import web

from sensing_node.access.principals import hash_token
from sensing_node.api import console
from sensing_node.api.console import EVENTS
from sensing_node.sim.camera import CameraConfig, SimulatedCamera, channel_ids
from tests.node.conftest import PASSWORD, TOKEN, RunningNode, StartNode, wait_for
from tests.node.test_cascade_playback import CHANNEL, record

from .conftest import ROOT

pytestmark = pytest.mark.browser

NODE_ID = "31011200002000000001"
CAMERAS = ["31011200001320000001", "31011200001320000002"]  # the built-in cameras' codes
H265_CAMERA = "31011200001320000009"
UPSTREAM = "31011200002000000100"
ZONE = "Asia/Shanghai"  # the recordings' zone in tests.node.test_cascade_playback (UTC+8)
USERS = [
    {"name": "vera", "token_sha256": hash_token("vera-token"), "role": "viewer"},
    {"name": "otto", "token_sha256": hash_token("otto-token"), "role": "operator"},
]
DEVICE_IDS = "rows => rows.map(r => r.dataset.device)"
CHANNEL_IDS = "rows => rows.map(r => r.dataset.channel)"
# The 16-bit frame-number bar of the corpus clips, read from the <video> as
# tests.recorder.media.frame_number reads it from a decoded frame.
FRAME_NUMBER = """selector => {
  const video = document.querySelector(selector);
  video.pause();
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(video, 0, 0);
  const row = ctx.getImageData(0, video.videoHeight - 14, video.videoWidth, 1).data;
  let value = 0;
  for (let bit = 0; bit < 16; bit++) {
    const x = 8 + bit * 38 + 17;
    const luma = 0.299 * row[4 * x] + 0.587 * row[4 * x + 1] + 0.114 * row[4 * x + 2];
    value = (value << 1) | (luma > 128 ? 1 : 0);
  }
  return value;
}"""
SCREENSHOT = ROOT / "docs" / "console.png"


async def node_with_cameras(start_node: StartNode, **extra: Any) -> RunningNode:
    running = await start_node(**{
        "node.id": NODE_ID, "node.timezone": ZONE, "devices.allow": ["31011200"],
        "simulator.cameras": 2, "simulator.channels_per_camera": 1, "media.timeout_s": 2,
        "users": USERS, **extra,
    })
    await wait_for(lambda: sum(len(d.channels) for d in running.node.registry) == 2, 15)
    assert channel_ids(CAMERAS[0], 1) == [CHANNEL]
    return running


async def signed_in(browser: Any, running: RunningNode, token: str = TOKEN) -> Any:
    page = await browser.new_page(viewport={"width": 1280, "height": 800},
                                  accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(str(running.client.make_url("/")))
    await page.fill("#token", token)
    await page.click("#signin-form button")
    await page.wait_for_selector("#top", state="visible")
    await page.wait_for_selector("#link.up")  # the event stream is open
    return page


async def test_a_wrong_token_is_refused_and_the_right_one_shows_the_cameras(browser, start_node):
    running = await node_with_cameras(start_node)
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(str(running.client.make_url("/")))
    await page.fill("#token", "not-the-token")
    await page.click("#signin-form button")
    await page.wait_for_selector("#signin-error", state="visible")
    assert await page.text_content("#signin-error") == "The token was refused."
    assert await page.is_hidden("#top")
    assert await page.evaluate("sessionStorage.getItem('sensing-node-token')") is None

    await page.fill("#token", TOKEN)
    await page.click("#signin-form button")
    await page.wait_for_selector("#top", state="visible")
    assert await page.text_content("#who") == "api-token (admin)"
    await page.wait_for_function("document.querySelector('#ov-online').textContent === '2'")
    assert await page.text_content("#ov-offline") == "0"

    await page.click("nav [data-page=devices]")
    await page.wait_for_selector(f"#devices-body tr[data-device='{CAMERAS[1]}']")
    rows = await page.eval_on_selector_all(
        "#devices-body tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert sorted(r[0] for r in rows) == CAMERAS
    assert {r[1] for r in rows} == {"Simulated camera 1", "Simulated camera 2"}
    assert {r[2] for r in rows} == {"online"}
    channels = await page.eval_on_selector_all("#channels-body tr", CHANNEL_IDS)
    assert sorted(channels) == sorted(channel_ids(CAMERAS[0], 1) + channel_ids(CAMERAS[1], 1))

    # Search by name, by ID and by civil code (the first 8 digits).
    await page.fill("#device-search", "camera 2")
    assert await page.eval_on_selector_all("#devices-body tr", DEVICE_IDS) == [CAMERAS[1]]
    await page.fill("#device-search", CHANNEL)
    assert await page.eval_on_selector_all("#channels-body tr", CHANNEL_IDS) == [CHANNEL]
    await page.fill("#device-search", "31011200")
    assert len(await page.query_selector_all("#devices-body tr[data-device]")) == 2
    await page.fill("#device-search", "44010000")
    assert await page.query_selector_all("#devices-body tr[data-device]") == []
    await page.fill("#device-search", "")
    # A reload keeps the session (sessionStorage) and the page.
    await page.reload()
    await page.wait_for_selector(f"#devices-body tr[data-device='{CAMERAS[0]}']")
    await page.wait_for_selector("#link.up")
    assert errors == []


async def test_the_page_hears_a_camera_go_offline_over_one_event_stream(browser, start_node):
    running = await node_with_cameras(start_node)
    page = await signed_in(browser, running)
    await page.wait_for_function("document.querySelector('#ov-online').textContent === '2'")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    camera = running.node.simulators[1]
    await camera.stop()  # unregisters (Expires: 0)
    await page.wait_for_function(
        "document.querySelector('#ov-offline').textContent === '1'", timeout=10_000)
    assert await page.text_content("#ov-online") == "1"
    # The page reads the figures the event does not carry again once (ending with /metrics),
    # not on a timer: no /api/events reconnect and no request while nothing changes.
    await wait_for(lambda: any(url.endswith("/metrics") for url in requests), 10)
    settled = len(requests)
    await asyncio.sleep(3)
    assert len(requests) == settled, requests[settled:]
    assert not any("/api/events" in url for url in requests)
    assert len(running.client.app[EVENTS].clients) == 1


async def test_the_event_stream_takes_the_token_as_header_or_query(start_node):
    running = await node_with_cameras(start_node)
    client = running.client
    assert (await client.get("/api/events")).status == 401
    assert (await client.get("/api/events?token=wrong")).status == 401
    # The query token stands in only where a browser cannot send the header.
    assert (await client.get(f"/api/devices?token={TOKEN}")).status == 401
    for kwargs in ({"params": {"token": TOKEN}}, {"headers": running.headers}):
        response = await client.get("/api/events", **kwargs)
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first.startswith(b"retry: 3000\nevent: hello\ndata: ")
        hello = json.loads(first.split(b"data: ", 1)[1])
        assert hello == {"node_id": NODE_ID, "timezone": ZONE, "utc_offset_s": 8 * 3600,
                         "retention_days": 30}
        response.close()
    # A camera that leaves is told as a device event.
    response = await client.get("/api/events", headers=running.headers)
    await response.content.readuntil(b"\n\n")
    await running.node.simulators[0].stop()
    event = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
    kind, data = event.decode().strip().split("\n")
    assert kind == "event: device"
    assert json.loads(data.removeprefix("data: ")) == {
        "id": CAMERAS[0], "name": "Simulated camera 1", "online": False, "change": "changed"}
    response.close()


async def test_the_page_and_its_files_are_served_and_nothing_else(start_node):
    running = await node_with_cameras(start_node)
    client = running.client
    page = await client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    names = re.findall(r'(?:src|href)="/console/([^"]+)"', html)
    assert sorted(names) == ["app.js", "style.css"]
    types = {"app.js": "text/javascript", "style.css": "text/css"}
    for name in names:
        response = await client.get(f"/console/{name}")
        assert response.status == 200 and response.content_type == types[name]
        assert "http://" not in await response.text()  # nothing from a CDN
    for path in ["/console/__init__.py", "/console/missing.js", "/console/..%2Fapi%2Fconsole.py",
                 "/console/.hidden.js", "/console/"]:
        assert (await client.get(path)).status == 404, path


async def read_event(response: Any) -> tuple[str, Any]:
    block = (await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)).decode()
    fields = dict(line.split(": ", 1) for line in block.strip().split("\n")
                  if not line.startswith(("retry", ":")))
    return fields["event"], json.loads(fields["data"])


async def test_event_streams_are_bounded_and_end_when_the_node_stops(start_node, monkeypatch):
    monkeypatch.setattr(console, "CLIENT_QUEUE_MAX", 3)
    monkeypatch.setattr(console, "MAX_CLIENTS", 1)
    running = await node_with_cameras(start_node)
    client, hub = running.client, running.client.app[EVENTS]
    response = await client.get("/api/events", headers=running.headers)
    assert (await read_event(response))[0] == "hello"
    # One page too many is refused.
    refused = await client.get("/api/events", headers=running.headers)
    assert refused.status == 503 and "at most 1 pages" in (await refused.json())["error"]
    # A page that falls behind gets what fitted, then `resync`, then new events again.
    for i in range(10):
        hub.publish("device", {"id": f"dev{i}", "online": True, "change": "new"})
    got = [await read_event(response) for _ in range(4)]
    assert got == [("device", {"id": f"dev{i}", "online": True, "change": "new"})
                   for i in range(3)] + [("resync", {})]
    hub.publish("device", {"id": "dev10", "online": False, "change": "changed"})
    assert (await read_event(response))[1]["id"] == "dev10"
    # An open stream does not hold the node's shutdown.
    await asyncio.wait_for(client.close(), 20)
    assert hub.clients == set()


def test_a_health_reason_is_news_when_it_comes_or_goes_not_as_its_figures_move():
    hub = console.EventHub(web.Application())

    def health(*reasons: str) -> dict[str, Any]:
        return {"health": {"node": {"status": "degraded" if reasons else "ok",
                                    "reasons": list(reasons)}}}

    failed = "task ticker failed (1 failures, last failure {} s ago): boom"
    assert hub.changes(health(failed.format(3)), health(failed.format(4))) == []
    assert hub.changes(health(), health(failed.format(0))) == [
        ("health", {"status": "degraded", "reasons": [failed.format(0)], "change": "changed"})]
    assert hub.changes(health(failed.format(9)), health())[0][1]["status"] == "ok"
    devices = {"device": {"a": {"id": "a", "online": True}}}
    assert hub.changes(devices, {"device": {}}) == [
        ("device", {"id": "a", "online": True, "change": "gone"})]
    assert hub.changes({"device": {}}, devices)[0][1]["change"] == "new"


async def test_controls_a_role_may_not_use_are_hidden(browser, start_node):
    running = await node_with_cameras(start_node)
    expected = {"vera-token": ("viewer", False, False), "otto-token": ("operator", False, True),
                TOKEN: ("admin", True, True)}
    for token, (role, admin, export) in expected.items():
        page = await signed_in(browser, running, token)
        name = {"vera-token": "vera", "otto-token": "otto"}.get(token, "api-token")
        assert await page.text_content("#who") == f"{name} ({role})"
        assert await page.is_visible("nav [data-page=audit]") is admin
        assert await page.is_visible("nav [data-page=grants]") is admin
        await page.click("nav [data-page=recordings]")
        assert await page.is_visible("#export-form") is export
        await page.close()
    # The page asks who it is (GET /api/whoami): signing in costs no refusal in the audit log.
    assert [e for e in await running.node.recording.audit_query() if e.result == "denied"] == []


async def test_admins_create_and_revoke_grants_and_filter_the_audit_log(browser, start_node):
    running = await node_with_cameras(start_node, upstreams=[
        {"id": UPSTREAM, "address": "127.0.0.1:9", "password": "upstream-password"}])
    page = await signed_in(browser, running)
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    # The upper platform is listed with its state (nothing answers at port 9).
    await page.wait_for_selector(f"#ov-upstreams td:text('{UPSTREAM}')")
    await page.click("nav [data-page=upstreams]")
    await page.wait_for_selector(f"#upstreams-body td:text('{UPSTREAM}')")
    cells = await page.eval_on_selector_all(
        "#upstreams-body tr td", "tds => tds.map(td => td.textContent)")
    assert cells[:2] == [UPSTREAM, "127.0.0.1:9"] and cells[4] == "0 of 16", cells
    assert cells[2] in ("registering", "retrying"), cells

    await page.click("nav [data-page=grants]")
    await page.fill("#grant-form [name=consumer]", "vera")
    await page.fill("#grant-form [name=channels]", CHANNEL)
    await page.fill("#grant-form [name=actions]", "live, playback")
    await page.fill("#grant-form [name=purpose]", "case 17")
    await page.fill("#grant-form [name=valid_from]", "2026-01-01T08:00")
    await page.fill("#grant-form [name=valid_to]", "2027-03-01T08:00")  # more than 365 days
    await page.click("#grant-form button")
    message = page.locator("#grant-message")
    await message.wait_for()
    assert "365 days" in await message.text_content()
    await page.fill("#grant-form [name=valid_to]", "2026-12-31T08:00")
    await page.click("#grant-form button")
    await page.wait_for_selector("#grants-body button:text('Revoke')")
    grants = await running.get("/api/grants")
    assert [(g["consumer"], g["channels"], g["actions"]) for g in grants] == [
        ("vera", [CHANNEL], ["live", "playback"])]
    assert grants[0]["valid_from"] == "2026-01-01T08:00:00.000+08:00"  # the node's zone
    row = await page.eval_on_selector_all(
        "#grants-body tr td", "tds => tds.map(td => td.textContent)")
    assert row[:2] == [grants[0]["id"], "vera"]
    assert row[5] == "2026-01-01 08:00:00 – 2026-12-31 08:00:00"
    await page.click("#grants-body button:text('Revoke')")
    await page.wait_for_selector("#grants-body td:text-is('No grant.')")
    assert await running.get("/api/grants") == []

    # The audit log, filtered by action: the grant refused, made and revoked, newest first.
    await page.click("nav [data-page=audit]")
    await page.fill("#audit-form [name=action]", "grant")
    await page.click("#audit-form button")
    await page.wait_for_function(
        "document.querySelectorAll('#audit-body tr').length === 3")
    rows = await page.eval_on_selector_all(
        "#audit-body tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    entries = await running.node.recording.audit_query(action="grant")
    assert [(r[2], r[6], r[7]) for r in rows] == [
        (e.action, e.result, e.detail) for e in entries]
    assert [r[6] for r in rows][2] == "denied"
    await page.fill("#audit-form [name=action]", "no-such-action")
    await page.click("#audit-form button")
    await page.wait_for_selector("#audit-body td:text('No entry matches.')")
    assert page.errors == []


async def test_the_timeline_shows_segments_and_a_gap_plays_and_exports(
        browser, start_node, tmp_path: Path):
    running = await node_with_cameras(start_node)
    store = record(running.node.recording.root, time.time() - 3600)
    tz = ZoneInfo(ZONE)
    day = datetime.fromtimestamp(store.t0, tz).strftime("%Y-%m-%d")
    page = await signed_in(browser, running)
    await page.click("nav [data-page=recordings]")
    await page.select_option("#rec-channel", CHANNEL)
    await page.fill("#rec-day", day)
    await page.click("#rec-search")
    await page.wait_for_selector("#timeline-bar .segment")
    await page.select_option("#rec-zoom", "60")

    # Four segments and one gap, placed in the node's zone, the gap between the 2nd and 3rd.
    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, tz).isoformat(timespec="milliseconds")
    blocks = await page.eval_on_selector_all(
        "#timeline-bar > div",
        "els => els.map(e => [e.className, e.dataset.start, parseFloat(e.style.left), "
        "parseFloat(e.style.width)])")
    segments = [b for b in blocks if b[0] == "segment"]
    gaps = [b for b in blocks if b[0] == "gap"]
    assert len(segments) == 4 and len(gaps) == 1, blocks
    assert [s[1][:19] for s in segments] == [iso(r.start_wall)[:19] for r in store.rows]
    assert all(s[1].endswith("+08:00") for s in segments)
    assert segments[1][2] + segments[1][3] <= gaps[0][2] + 0.01
    assert gaps[0][2] + gaps[0][3] <= segments[2][2] + 0.01
    assert gaps[0][3] > 10  # 10 s of a 60 s window
    summary = await page.text_content("#rec-summary")
    assert f"from {iso(store.t0)[:19].replace('T', ' ')}" in summary, summary

    # A click on the third segment (after the gap) plays from there, without a purpose not.
    third = await page.query_selector_all("#timeline-bar .segment")
    await third[2].click()
    assert await page.is_visible("#rec-message")
    await page.fill("#rec-purpose", "incident 42")
    await third[2].click()
    src = await page.get_attribute("#rec-video", "src")
    # It plays from where the click fell in that segment (local time, to the second), which
    # may be in the minute after the segment's start.
    start = datetime.fromisoformat(parse_qs(urlsplit(src).query)["start"][0])
    assert start.strftime("%Y-%m-%d") == day, src
    offset = start.replace(tzinfo=tz).timestamp() - store.later
    assert -1 <= offset <= 5, (src, offset)
    await page.wait_for_function(
        "(() => { const v = document.querySelector('#rec-video');"
        " return !v.error && v.readyState >= 2 && v.currentTime > 0.5; })()", timeout=20_000)
    # The picture is the recording's from the click on: the frame-number bar drawn in the
    # corpus clip (tests/data/media/README.md) reads 100 or more after the gap.
    number = await page.evaluate(FRAME_NUMBER, "#rec-video")
    assert 100 <= number < 200, number

    # Export the whole recording as MP4: a file PyAV plays, with every recorded frame.
    async with page.expect_download() as download_info:
        await page.click("#export-form button")
    download = await download_info.value
    path = tmp_path / download.suggested_filename
    await download.save_as(path)
    assert download.suggested_filename.startswith(CHANNEL) and path.suffix == ".mp4"
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == sum(row.frames for row in store.rows)
    entries = await running.node.recording.audit_query(action="export")
    assert entries[0].purpose == "incident 42" and entries[0].result == "ok"
    assert page.errors == []


def webrtc_in(running: RunningNode) -> bool:
    return any(getattr(r, "canonical", "").endswith("/webrtc")
               for r in running.client.app.router.resources())


async def test_a_live_wall_shows_moving_video(browser, start_node, tmp_path):
    running = await node_with_cameras(start_node)
    if not webrtc_in(running):
        pytest.xfail("POST /api/channels/{id}/webrtc is not in the node yet")
    page = await signed_in(browser, running)
    await page.click("nav [data-page=live]")
    await page.select_option("#wall-layout", "4")
    tiles = await page.query_selector_all("#wall .tile")
    assert len(tiles) == 4
    second = channel_ids(CAMERAS[1], 1)[0]
    for tile, channel in zip(tiles, [CHANNEL, second], strict=False):
        await (await tile.query_selector(".tile-channel")).select_option(channel)
    frames = "i => Number(document.querySelectorAll('#wall .tile')[i].dataset.frames || 0)"
    for i in (0, 1):
        await page.wait_for_function(f"({frames})({i}) > 5", timeout=20_000)
    video = await tiles[0].query_selector("video")
    before = await video.screenshot()
    shown = int(await tiles[0].get_attribute("data-frames"))
    await page.wait_for_function(f"({frames})(0) > {shown + 10}", timeout=20_000)
    after = await video.screenshot()
    assert before != after  # the pattern moves
    assert await page.evaluate("document.querySelector('#wall .tile video').videoWidth") > 0
    assert "live" in await (await tiles[0].query_selector(".tile-status")).text_content()
    assert int(await tiles[0].get_attribute("data-first-frame-ms")) > 0
    # The overview heard of both streams on the event stream (this page reads no status).
    await page.wait_for_function("document.querySelector('#ov-streams').textContent === '2'")
    # README's picture: written when asked for (SENSING_NODE_SCREENSHOT=1 make test), so that
    # a test run leaves the tree as it was.
    shot = SCREENSHOT if os.environ.get("SENSING_NODE_SCREENSHOT") else tmp_path / "console.png"
    await page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    viewers = await running.get("/api/webrtc")
    assert sorted(v["channel_id"] for v in viewers) == sorted([CHANNEL, second])

    # A tile set to nothing ends its WebRTC session (DELETE) and the stream's consumer.
    await (await tiles[0].query_selector(".tile-channel")).select_option("")
    await wait_for(lambda: not any(s["channel_id"] == CHANNEL and s["consumers"]
                                   for s in running.node.media.snapshot()), 10)
    assert [v["channel_id"] for v in await running.get("/api/webrtc")] == [second]
    assert page.errors == []


async def test_an_h265_channel_offers_the_recording_instead(browser, start_node):
    running = await node_with_cameras(start_node)
    if not webrtc_in(running):
        pytest.xfail("POST /api/channels/{id}/webrtc is not in the node yet")
    camera = SimulatedCamera(CameraConfig(server=running.sip, device_id=H265_CAMERA,
                                          password=PASSWORD, media_codec="h265"))
    await camera.start(keepalives=False)
    try:
        channel = channel_ids(H265_CAMERA, 1)[0]
        await wait_for(lambda: running.node.registry.channel_device(channel) is not None, 10)
        page = await signed_in(browser, running)
        await page.click("nav [data-page=live]")
        await page.select_option(".tile-channel", channel)
        status = page.locator(".tile-status")
        await status.get_by_text("Play the recording instead").wait_for(timeout=20_000)
        assert "browsers cannot play it over WebRTC" in await status.text_content()
        await status.get_by_text("Play the recording instead").click()
        await page.wait_for_selector("#page-recordings", state="visible")
        assert await page.input_value("#rec-channel") == channel
        assert page.errors == []
    finally:
        await camera.stop()
