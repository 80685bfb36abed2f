"""Users and roles, sharing classes and time-limited grants, against a running node: the API
and an upper platform are served only what role, class and grant allow, refusals are audited
with the user's name, and a grant that ends ends the sessions it carried."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from sensing_node.api import routes
from sensing_node.settings.access import hash_token
from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sensing_node.sim.upstream import PlatformConfig, SimulatedUpstream

from .conftest import PASSWORD, RunningNode, StartNode, wait_for
from .test_cascade_playback import CAMERA, CHANNEL, record

UPSTREAM = "31011200002000000100"
UP_PASSWORD = "upstream-password"
FREE = "31011200001310000109"  # unconditional (the default)
AUTHORIZED = CHANNEL  # authorized, to nobody by the upstreams list
HIDDEN = "31011200001310000108"  # none
USERS = [
    {"name": "vera", "token_sha256": hash_token("vera-token"), "role": "viewer"},
    {"name": "otto", "token_sha256": hash_token("otto-token"), "role": "operator"},
    {"name": "lim", "token_sha256": hash_token("lim-token"), "role": "operator",
     "channels": [CHANNEL]},
]


def at(offset_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat()


def grant(consumer: str, actions: list[str], *, start: float = -60, end: float = 3600,
          channels: list[str] | None = None, sessions: int = 1) -> dict[str, Any]:
    return {"consumer": consumer, "channels": channels or [AUTHORIZED], "actions": actions,
            "purpose": "case 17", "valid_from": at(start), "valid_to": at(end),
            "max_sessions": sessions}


async def call(running: RunningNode, method: str, path: str, token: str = "test-token",
               **kw: Any) -> tuple[int, Any]:
    response = await running.client.request(
        method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
    body = await response.json() if response.content_type == "application/json" else None
    return response.status, body


async def audit(running: RunningNode, **filters: Any) -> list[Any]:
    return await running.node.recording.audit_query(**filters)


@pytest.fixture
async def node(start_node: StartNode):
    async def start(**extra: Any) -> RunningNode:
        return await start_node(**{
            "users": USERS,
            "channels.overrides": {AUTHORIZED: {"share": "authorized"},
                                   HIDDEN: {"share": "none"}},
            **extra,
        })
    return start


async def test_each_role_may_do_its_own_and_is_refused_the_rest(node):
    running = await node()
    assert (await call(running, "GET", "/api/devices", "vera-token"))[0] == 200
    assert (await call(running, "GET", "/api/devices", "wrong"))[0] == 401
    for method, path, right in [
        ("POST", f"/api/channels/{FREE}/live", "pull"),
        ("POST", f"/api/channels/{FREE}/release", "release"),
        ("GET", f"/api/recordings/export?channel={FREE}&start=2026-01-01T00:00:00"
                "&end=2026-01-01T01:00:00&purpose=x", "export"),
        ("GET", "/api/audit", "audit"),
        ("GET", "/api/grants", "grants"),
    ]:
        status, body = await call(running, method, path, "vera-token")
        assert status == 403 and f"'{right}'" in body["error"] and "vera" in body["error"]
    # An operator exports (nothing recorded here: 404, past the right) but sees no audit.
    status, _ = await call(running, "GET", f"/api/recordings/export?channel={FREE}"
                           "&start=2026-01-01T00:00:00&end=2026-01-01T01:00:00&purpose=x",
                           "otto-token")
    assert status == 404
    assert (await call(running, "GET", "/api/audit", "otto-token"))[0] == 403
    assert (await call(running, "GET", "/api/audit"))[0] == 200  # node.api_token: an admin
    denied = [e for e in await audit(running) if e.result == "denied"]
    assert {e.actor.split("@")[0] for e in denied} == {"vera", "otto"}
    assert any(e.action == "export" and e.actor.startswith("vera@") for e in denied)


async def test_grants_are_made_listed_and_revoked_with_a_year_at_most(node):
    running = await node(grants=[grant("vera", ["playback"])])
    too_long = grant("vera", ["playback"], end=366 * 86400)
    status, body = await call(running, "POST", "/api/grants", json=too_long)
    assert status == 400 and "at most 365 days" in body["error"]
    status, made = await call(running, "POST", "/api/grants",
                              json=grant(UPSTREAM, ["live", "playback"], sessions=2))
    assert status == 201 and made["id"].startswith("api-") and made["max_sessions"] == 2
    assert 3500 < made["remaining_s"] <= 3600 and made["active"]
    status, listed = await call(running, "GET", "/api/grants")
    assert [g["source"] for g in listed] == ["yaml", "api"]
    assert listed[0]["consumer"] == "vera" and listed[0]["sessions"] == 0
    status, body = await call(running, "DELETE", "/api/grants/yaml-1")
    assert status == 409 and "configuration file" in body["error"]
    assert (await call(running, "DELETE", "/api/grants/api-99"))[0] == 404
    status, body = await call(running, "DELETE", f"/api/grants/{made['id']}")
    assert status == 200 and body == {"revoked": made["id"], "ended_sessions": 0}
    assert [g["id"] for g in (await call(running, "GET", "/api/grants"))[1]] == ["yaml-1"]
    entries = await audit(running, action="grant")
    assert [e.result for e in reversed(entries)] == ["denied", "created", "revoked"]
    assert all(e.actor.startswith("api-token@") for e in entries)
    # A grant made after a revocation gets a new ID (the store keeps revoked ones; that they
    # survive a restart is test_access_policy.py's test_api_grants_are_kept_checked_and_revoked).
    status, again = await call(running, "POST", "/api/grants", json=grant(UPSTREAM, ["live"]))
    assert status == 201 and again["id"] not in (made["id"], "yaml-1")


async def test_sharing_classes_and_grants_decide_what_a_viewer_sees(node, start_node):
    running = await node(grants=[grant("vera", ["playback"], channels=[FREE])])
    policy = running.node.access.policy
    from sensing_node.access.principals import Principal

    vera, otto = Principal("vera"), Principal("otto", "operator")
    lim = Principal("lim", "operator", (AUTHORIZED,))
    assert policy.visible(vera, FREE)  # unconditional
    assert policy.visible(vera, AUTHORIZED) is False  # no grant of vera's names it
    assert policy.visible(vera, HIDDEN) is False
    assert policy.visible(otto, HIDDEN) and policy.visible(otto, AUTHORIZED)  # node staff
    assert policy.visible(lim, AUTHORIZED) and not policy.visible(lim, FREE)
    search = ("/api/recordings?channel={}&start=2026-01-01T00:00:00"
              "&end=2026-01-01T01:00:00")
    assert (await call(running, "GET", search.format(FREE), "vera-token"))[0] == 200
    status, body = await call(running, "GET", search.format(AUTHORIZED), "vera-token")
    assert status == 403 and "not shared" in body["error"]
    assert (await call(running, "GET", search.format(AUTHORIZED), "otto-token"))[0] == 200
    assert (await call(running, "GET", search.format(FREE), "lim-token"))[0] == 403
    # A grant that names vera and the channel opens it to her, for the actions it names.
    status, _ = await call(running, "POST", "/api/grants", json=grant("vera", ["playback"]))
    assert status == 201
    assert policy.visible(vera, AUTHORIZED)
    assert policy.decide(vera, AUTHORIZED, "export").allowed is False
    assert (await call(running, "GET", search.format(AUTHORIZED), "vera-token"))[0] == 200
    # A grant can never open a channel of class none.
    await call(running, "POST", "/api/grants", json=grant("vera", ["playback"],
                                                           channels=[HIDDEN]))
    assert policy.visible(vera, HIDDEN) is False


async def test_an_ending_grant_ends_the_upstream_session_it_carried(node):
    upstream = SimulatedUpstream(PlatformConfig(platform_id=UPSTREAM, password=UP_PASSWORD))
    _, port = await upstream.start()
    try:
        running = await node(**{
            "upstreams": [{"id": UPSTREAM, "address": f"127.0.0.1:{port}",
                           "password": UP_PASSWORD}],
        })
        store = record(running.node.recording.root, time.time() - 3600)
        await upstream.wait_registered(timeout=10)
        span = {"session": "Playback", "start": store.t0, "end": store.later + 4}
        refused = await upstream.invite(AUTHORIZED, "udp", **span)
        assert refused.status == 403 and "no valid grant" in (refused.warning or "")
        status, made = await call(running, "POST", "/api/grants",
                                  json=grant(UPSTREAM, ["playback"], end=4))
        assert status == 201
        first = await upstream.invite(AUTHORIZED, "udp", **span)
        assert first.ok, first
        second = await upstream.invite(AUTHORIZED, "udp", **span)
        assert second.status == 486 and "(1/1)" in (second.warning or "")
        [shown] = [g for g in (await call(running, "GET", "/api/grants"))[1]
                   if g["id"] == made["id"]]
        assert shown["sessions"] == 1
        # At the grant's end the node hangs up, and says why in the audit log.
        reason = await first.wait_ended(timeout=10)
        assert reason == "BYE from the node", reason
        await wait_for(lambda: not running.node.cascade.restreamer.live())
        for _ in range(50):
            expired = [e for e in await audit(running, action="grant") if e.result == "expired"]
            if expired:
                break
            await asyncio.sleep(0.1)
        assert expired and made["id"] in expired[0].detail and UPSTREAM in expired[0].detail
        [session] = await audit(running, action="upstream_playback", limit=1)
        assert "expired" in session.detail
        assert (await upstream.invite(AUTHORIZED, "udp", **span)).status == 403
    finally:
        await upstream.stop()


async def test_an_ending_grant_cuts_an_api_playback_and_healthz_warns_before(node, monkeypatch):
    running = await node(grants=[grant("vera", ["playback"], end=3 * 86400, channels=[FREE])])
    health = await (await running.client.get("/healthz")).json()
    assert health["status"] == "ok"
    assert any("grant yaml-1 for vera ends in" in r for r in health["reasons"])
    store = record(running.node.recording.root, time.time() - 3600)

    def slow(plan: Any) -> Any:  # the real MP4, 8 KB every 50 ms: a download of seconds
        for chunk in routes.export_mp4.__wrapped__(plan):
            for i in range(0, len(chunk), 8192):
                time.sleep(0.05)
                yield chunk[i:i + 8192]

    slow.__wrapped__ = routes.export_mp4  # type: ignore[attr-defined]
    monkeypatch.setattr(routes, "export_mp4", slow)
    status, made = await call(running, "POST", "/api/grants",
                              json=grant("vera", ["playback"], end=2, sessions=1))
    assert status == 201
    query = (f"/api/recordings/play?channel={AUTHORIZED}&purpose=review"
             f"&start={datetime.fromtimestamp(store.t0, UTC).isoformat()}"
             f"&end={datetime.fromtimestamp(store.later + 4, UTC).isoformat()}")
    headers = {"Authorization": "Bearer vera-token"}
    response = await running.client.get(query, headers=headers)
    assert response.status == 200
    second = await running.client.get(query, headers=headers)
    assert second.status == 429 and "(1/1)" in (await second.json())["error"]
    received = 0
    with contextlib.suppress(aiohttp.ClientPayloadError):  # cut mid-way: chunking unfinished
        async with asyncio.timeout(10):
            while chunk := await response.content.read(65536):
                received += len(chunk)
    for _ in range(200):
        [entry] = await audit(running, action="playback", limit=1)
        if entry.result == "revoked":
            break
        await asyncio.sleep(0.1)
    assert entry.result == "revoked" and "expired" in entry.detail, [
        (e.result, e.detail) for e in await audit(running)]
    assert 0 < received < int(entry.detail.split(", ")[1].split()[0]) + 1
    assert entry.actor.startswith("vera@") and entry.purpose == "review"


async def test_a_grant_starting_and_ending_reaches_the_upstreams_catalog(node):
    upstream = SimulatedUpstream(PlatformConfig(platform_id=UPSTREAM, password=UP_PASSWORD))
    _, port = await upstream.start()
    camera: SimulatedCamera | None = None
    try:
        running = await node(**{
            "upstreams": [{"id": UPSTREAM, "address": f"127.0.0.1:{port}",
                           "password": UP_PASSWORD}],
        })
        camera = SimulatedCamera(CameraConfig(server=running.sip, device_id=CAMERA,
                                              password=PASSWORD, channels=4))
        await camera.start(keepalives=False)
        await wait_for(lambda: running.node.registry.channel_device(AUTHORIZED) is not None)
        await upstream.wait_registered(timeout=10)
        assert AUTHORIZED not in await upstream.query_catalog()
        subscription = await upstream.subscribe_catalog()
        status, made = await call(running, "POST", "/api/grants",
                                  json=grant(UPSTREAM, ["live"]))
        assert status == 201
        event = await subscription.next_event(timeout=5)
        assert (event.channel_id, event.event) == (AUTHORIZED, "ADD")
        assert AUTHORIZED in await upstream.query_catalog()
        await call(running, "DELETE", f"/api/grants/{made['id']}")
        event = await subscription.next_event(timeout=5)
        assert (event.channel_id, event.event) == (AUTHORIZED, "DEL")
    finally:
        if camera is not None:
            await camera.stop(unregister=False)
        await upstream.stop()
