"""Live configuration reload against a running node started from a real YAML file: a bad file is
refused whole with its line numbers, a good one takes effect without dropping what it still
allows (device passwords, users, grants, upstreams, the recording plan), keys bound at start
are named and kept, and SIGHUP does the same to a `sensing-node run` process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import string
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from sensing_node.api.routes import NODE
from sensing_node.app import build_app
from sensing_node.settings import load_settings, settings_for_tests
from sensing_node.settings.access import hash_token
from sensing_node.settings.reload import masked
from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sensing_node.sim.upstream import PlatformConfig, SimulatedUpstream, UpstreamSession

from .conftest import PASSWORD, TOKEN, RunningNode, wait_for
from .test_cli import ROOT, write_config

CAMERA = "31011200001320000001"
CHANNELS = [f"31011200001310000{i}" for i in range(101, 104)]
UP_A = "31011200002000000100"
UP_B = "31011200002000000200"
UP_C = "31011200002000000300"
UP_PASSWORD = "upstream-password"


class ConfigFile:
    """The node's config file: `write` puts a document (base keys plus `changes`) in it."""

    def __init__(self, path: Path, data_dir: Path) -> None:
        self.path = path
        self.base: dict[str, Any] = {
            "node": {"sip_listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0",
                     "media_ip": "127.0.0.1", "api_token": TOKEN, "data_dir": str(data_dir)},
            "devices": {"password": PASSWORD, "allow": ["31011200"]},
            "media": {"timeout_s": 2},
            "recording": {"channels": []},
        }

    def write(self, **changes: Any) -> None:
        """`changes` by dotted key (double underscores in keyword names); None removes one."""
        document = json.loads(json.dumps(self.base))
        for dotted, value in changes.items():
            *parents, leaf = dotted.replace("__", ".").split(".")
            target = document
            for name in parents:
                target = target.setdefault(name, {})
            if value is None:
                target.pop(leaf, None)
            else:
                target[leaf] = value
        self.path.write_text(yaml.safe_dump(document, sort_keys=False))


Start = Callable[..., Awaitable[tuple[RunningNode, ConfigFile]]]


@pytest.fixture
async def node_from_file(tmp_path: Path) -> AsyncIterator[Start]:
    clients: list[TestClient] = []

    async def start(**changes: Any) -> tuple[RunningNode, ConfigFile]:
        config = ConfigFile(tmp_path / "node.yaml", tmp_path / "data")
        config.write(**changes)
        app = build_app(load_settings(config.path))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return RunningNode(app[NODE], client, {"Authorization": f"Bearer {TOKEN}"}), config

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def peers() -> AsyncIterator[list[Any]]:
    """Simulated cameras and upstreams, stopped at the end of the test."""
    started: list[Any] = []
    yield started
    for peer in reversed(started):
        if isinstance(peer, SimulatedCamera):
            await peer.stop(unregister=False)
        else:
            await peer.stop()


async def reload(running: RunningNode, token: str = TOKEN) -> tuple[int, Any]:
    response = await running.client.post(
        "/api/config/reload", headers={"Authorization": f"Bearer {token}"})
    return response.status, await response.json()


async def camera(running: RunningNode, peers: list[Any], device_id: str = CAMERA, *,
                 password: str = PASSWORD, channels: int = 3) -> SimulatedCamera:
    cam = SimulatedCamera(CameraConfig(server=running.sip, device_id=device_id,
                                       password=password, channels=channels))
    peers.append(cam)
    await cam.start(keepalives=False)
    return cam


async def upstream(peers: list[Any], platform_id: str) -> tuple[SimulatedUpstream, int]:
    up = SimulatedUpstream(PlatformConfig(platform_id=platform_id, password=UP_PASSWORD))
    peers.append(up)
    _, port = await up.start()
    return up, port


def upstream_entry(platform_id: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"id": platform_id, "address": f"127.0.0.1:{port}", "password": UP_PASSWORD,
            **extra}


async def flowing(session: UpstreamSession, packets: int = 20) -> None:
    """More packets reach the upstream from now on (the session plays on)."""
    before = session.packets
    await wait_for(lambda: session.packets >= before + packets or session.ended.is_set(),
                   timeout=10)
    assert not session.ended.is_set(), session.end_reason


async def audit(running: RunningNode, **filters: Any) -> list[Any]:
    return await running.node.recording.audit_query(**filters)


async def test_a_bad_file_is_refused_whole_with_its_line_numbers(node_from_file, peers):
    running, config = await node_from_file()
    await camera(running, peers)
    settings, loaded_at = running.node.settings, running.node.loaded_at
    shown = await running.get("/api/config")
    # A good change (the password) beside two bad ones: nothing of it is taken.
    text = config.path.read_text()
    config.path.write_text(
        text.replace(f"password: '{PASSWORD}'", "password: changed")
        .replace("timeout_s: 2", "timeout_s: -1\n  colour: blue")
    )
    lines = config.path.read_text().splitlines()
    bad_timeout = next(i for i, line in enumerate(lines, 1) if "timeout_s: -1" in line)
    assert lines[bad_timeout] == "  colour: blue"
    status, body = await reload(running)
    assert status == 400, body
    problems = body["problems"]
    assert any(p.startswith(f"{config.path}:{bad_timeout}: media.timeout_s:") for p in problems)
    assert any(p.startswith(f"{config.path}:{bad_timeout + 1}: media.colour:") for p in problems)
    assert len(problems) == 2 and "running configuration stays" in body["error"]
    # The same lines as check-config gives.
    check = subprocess.run([sys.executable, "-m", "sensing_node", "check-config",
                            str(config.path)], capture_output=True, text=True, timeout=30,
                           cwd=ROOT)
    assert [line for line in check.stderr.splitlines() if line.startswith(str(config.path))
            and ": media." in line] == problems
    # Nothing changed: the same settings, the old password still lets a device in.
    assert running.node.settings is settings and running.node.loaded_at == loaded_at
    assert await running.get("/api/config") == shown
    other = await camera(running, peers, "31011200001320000002")
    assert other.registered
    [entry] = await audit(running, action="config_reload")
    assert entry.result == "refused" and entry.actor.startswith("api-token@")
    assert f"{config.path}:{bad_timeout}: media.timeout_s" in entry.detail


async def test_a_new_device_password_takes_effect_and_registered_devices_stay(
        node_from_file, peers):
    running, config = await node_from_file()
    old = await camera(running, peers)
    assert old.registered
    config.write(**{"devices.password": "new-password"})
    status, body = await reload(running)
    assert status == 200, body
    assert body["applied"] == ["devices"] and body["restart_needed"] == []
    assert body["ended_sessions"] == 0
    # The registered device stays (until its registration ends or its next REGISTER).
    assert running.node.registry.get(CAMERA).online
    fresh = await camera(running, peers, "31011200001320000002", password="new-password")
    assert fresh.registered
    refused = await camera(running, peers, "31011200001320000003")
    assert not refused.registered and refused.last_register_response.status == 403
    # The old device's refresh is asked for the new password too.
    again = await old.register()
    assert again.status == 403
    [entry] = await audit(running, action="config_reload")
    assert entry.result == "ok" and "applied: devices" in entry.detail


async def test_upstreams_removed_added_and_changed(node_from_file, peers):
    """A removed upstream is unregistered (Expires: 0) and its session ends; a new one
    registers; a changed one registers again and its session plays on, as does the session of
    one that stays."""
    a, port_a = await upstream(peers, UP_A)
    b, port_b = await upstream(peers, UP_B)
    c, port_c = await upstream(peers, UP_C)
    running, config = await node_from_file(upstreams=[
        upstream_entry(UP_A, port_a), upstream_entry(UP_B, port_b)])
    await camera(running, peers)
    await a.wait_registered()
    await b.wait_registered()
    session_a = await a.invite(CHANNELS[0], "udp")
    session_b = await b.invite(CHANNELS[1], "udp")
    assert session_a.ok and session_b.ok
    await session_a.wait_units(5)
    await session_b.wait_units(5)
    registrations_b = b.registrations

    config.write(upstreams=[upstream_entry(UP_B, port_b), upstream_entry(UP_C, port_c)])
    status, body = await reload(running)
    assert status == 200, body
    assert body["applied"] == ["upstreams"]
    assert body["upstreams"] == {"added": [UP_C], "removed": [UP_A], "changed": []}
    assert body["ended_sessions"] == 1
    assert await session_a.wait_ended() == "BYE from the node"
    await wait_for(lambda: a.unregistrations == 1 and a.node is None)
    await c.wait_registered()
    await flowing(session_b)
    assert b.registrations == registrations_b and b.unregistrations == 0
    state = await running.get("/api/upstreams")
    assert sorted(u["id"] for u in state["upstreams"]) == [UP_B, UP_C]
    [ended] = [s for s in state["ended"] if s["upstream"] == UP_A]
    assert ended["end_reason"] == "upstream removed from the configuration"
    assert [s["upstream"] for s in state["sessions"]] == [UP_B]

    # B changes (its keepalive interval): unregistered, registered again, its session kept.
    config.write(upstreams=[upstream_entry(UP_B, port_b, keepalive_s=30),
                            upstream_entry(UP_C, port_c)])
    status, body = await reload(running)
    assert status == 200, body
    assert body["upstreams"] == {"added": [], "removed": [], "changed": [UP_B]}
    assert body["ended_sessions"] == 0
    await wait_for(lambda: b.unregistrations == 1)
    await wait_for(lambda: b.registrations > registrations_b, timeout=10)
    await flowing(session_b)
    [live] = (await running.get("/api/upstreams"))["sessions"]
    assert live["upstream"] == UP_B and live["state"] == "confirmed"
    assert running.node.cascade.links[UP_B].settings.keepalive_s == 30
    # The session's upstream is the new registration: its BYE is taken.
    answer = await session_b.bye()
    assert answer is not None and answer.status == 200


async def test_an_added_user_may_call_the_api_and_a_removed_one_no_longer(node_from_file):
    running, config = await node_from_file()
    headers = {"Authorization": "Bearer nina-token"}
    assert (await running.client.get("/api/devices", headers=headers)).status == 401
    nina = {"name": "nina", "token_sha256": hash_token("nina-token"), "role": "viewer"}
    config.write(users=[nina])
    status, body = await reload(running)
    assert status == 200 and body["applied"] == ["users"], body
    assert (await running.client.get("/api/devices", headers=headers)).status == 200
    # A viewer lacks the config right.
    assert (await running.client.get("/api/config", headers=headers)).status == 403
    assert (await reload(running, "nina-token"))[0] == 403
    # A new api_token replaces the old one at once.
    config.write(users=[nina], **{"node.api_token": "new-token"})
    assert (await reload(running))[0] == 200
    assert (await running.client.get("/api/devices", headers=headers)).status == 200
    assert (await running.client.get("/api/config", headers=running.headers)).status == 401
    config.write(**{"node.api_token": "new-token"})
    assert (await reload(running, "new-token"))[0] == 200
    assert (await running.client.get("/api/devices", headers=headers)).status == 401
    entries = await audit(running, action="config_reload")
    # newest first; the viewer's GET and POST were both refused
    assert [e.result for e in entries] == ["ok", "ok", "denied", "denied", "ok"]


async def test_a_removed_grant_ends_the_session_it_carried_and_others_stay(
        node_from_file, peers):
    b, port_b = await upstream(peers, UP_B)
    shared, authorized = CHANNELS[0], CHANNELS[1]
    now = time.time()
    grant = {"consumer": UP_B, "channels": [authorized], "actions": ["live"],
             "purpose": "incident 42", "max_sessions": 1,
             "valid_from": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 60)),
             "valid_to": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + 3600))}
    overrides = {authorized: {"share": "authorized"}}
    running, config = await node_from_file(**{
        "upstreams": [upstream_entry(UP_B, port_b)], "grants": [grant],
        "channels.overrides": overrides})
    await camera(running, peers)
    await b.wait_registered()
    carried = await b.invite(authorized, "udp")
    free = await b.invite(shared, "udp")
    assert carried.ok and free.ok, (carried, free)
    await carried.wait_units(5)

    config.write(**{"upstreams": [upstream_entry(UP_B, port_b)],
                    "channels.overrides": overrides})
    status, body = await reload(running)
    assert status == 200, body
    assert body["applied"] == ["grants"] and body["ended_sessions"] == 1
    assert await carried.wait_ended() == "BYE from the node"
    await flowing(free)
    refused = await b.invite(authorized, "udp")
    assert refused.status == 403
    for _ in range(50):
        ended = [e for e in await audit(running, action="grant") if e.result == "ended"]
        if ended:
            break
        await asyncio.sleep(0.1)
    assert ended and "after a reload" in ended[0].detail and authorized in ended[0].detail
    [session] = [e for e in await audit(running, action="upstream_live")
                 if e.channel_id == authorized and e.result == "ok"]
    assert "no longer allowed" in session.detail


async def test_keys_bound_at_start_are_named_and_kept(node_from_file, tmp_path):
    running, config = await node_from_file()
    before = running.node.settings
    config.write(**{
        "node.sip_listen": "127.0.0.1:5999", "node.data_dir": str(tmp_path / "elsewhere"),
        "node.id": "31011200002000000001", "recording.dir": str(tmp_path / "segments"),
        "recording.segment_s": 30, "recording.direct_io": False,
        "limits.max_outgoing_streams": 3,
        "media.linger_s": 1,
    })
    status, body = await reload(running)
    assert status == 200, body
    assert body["restart_needed"] == ["node.id", "node.realm", "node.sip_listen",
                                      "node.data_dir", "recording.dir", "recording.segment_s",
                                      "recording.direct_io"]
    assert body["applied"] == ["media", "limits"]
    after = running.node.settings
    assert after.node == before.node and after.recording == before.recording
    assert after.limits.max_outgoing_streams == 3 and after.media.linger_s == 1
    assert running.node.cascade.restreamer.settings.limits.max_outgoing_streams == 3
    assert running.node.media.settings.media.linger_s == 1
    shown = await running.get("/api/config")
    assert shown["node"]["sip_port"] == 0 and shown["node"]["id"] == before.node.id
    [entry] = await audit(running, action="config_reload")
    assert "restart needed for node.id, node.realm, node.sip_listen" in entry.detail


async def test_the_media_processes_and_ports_wait_for_a_restart(node_from_file):
    running, config = await node_from_file()
    before = running.node.settings.media
    config.write(**{"media.workers": 2})
    status, body = await reload(running)
    assert status == 200, body
    assert body["restart_needed"] == ["media.workers"]
    config.write(**{"media.single_port": 4999})
    status, body = await reload(running)
    assert status == 200, body
    assert body["restart_needed"] == ["media.single_port"]
    after = running.node.settings.media
    assert (after.workers, after.single_port) == (before.workers, before.single_port)
    assert running.node.media.workers is None and running.node.media.single_port is None
    assert (await running.get("/api/stats"))["single_port"] is None


async def test_the_sip_read_pace_changes_at_once(node_from_file):
    running, config = await node_from_file()
    udp = running.node.endpoint.udp
    assert udp is not None and udp.pace_s == 0.05
    config.write(**{"node.sip_read_pace_ms": 0})
    status, body = await reload(running)
    assert status == 200, body
    assert body["restart_needed"] == [] and "node" in body["applied"]
    assert running.node.endpoint.udp is udp and udp.pace_s == 0
    config.write(**{"node.sip_read_pace_ms": 20})
    status, body = await reload(running)
    assert status == 200 and udp.pace_s == 0.02


async def test_the_recording_plan_is_reconciled(node_from_file, peers):
    running, config = await node_from_file()
    await camera(running, peers)
    recording = running.node.recording
    assert recording.recordings == {}
    config.write(**{"recording.channels": [CHANNELS[2]]})
    status, body = await reload(running)
    assert status == 200 and body["applied"] == ["recording"], body
    await wait_for(lambda: CHANNELS[2] in running.node.media.streams
                   and running.node.media.streams[CHANNELS[2]].state == "playing", timeout=10)
    assert list(recording.recordings) == [CHANNELS[2]]
    config.write()
    assert (await reload(running))[0] == 200
    assert recording.recordings == {}


async def test_the_running_configuration_is_shown_with_secrets_masked(node_from_file):
    secrets = ["upstream-secret", PASSWORD, TOKEN, hash_token("nina-token"), "device-secret"]
    running, config = await node_from_file(**{
        "upstreams": [{"id": UP_A, "address": "127.0.0.1:9", "password": "upstream-secret"}],
        "users": [{"name": "nina", "token_sha256": hash_token("nina-token"), "role": "admin"}],
        "devices.overrides": {CAMERA: {"password": "device-secret"},
                              "31011200001320000002": {"name": "gate"}},
    })
    response = await running.client.get("/api/config", headers=running.headers)
    assert response.status == 200
    text = await response.text()
    assert not [s for s in secrets if s in text]
    shown = json.loads(text)
    assert shown["source"] == str(config.path)
    assert shown["loaded_at"] is not None and "T" in shown["loaded_at"]
    assert shown["node"]["api_token"] == shown["devices"]["password"] == "***"
    assert shown["upstreams"][0]["password"] == shown["users"][0]["token_sha256"] == "***"
    overrides = shown["devices"]["overrides"]
    assert overrides[CAMERA]["password"] == "***"
    assert overrides["31011200001320000002"]["password"] is None
    assert shown["upstreams"][0]["id"] == UP_A and shown["devices"]["allow"] == ["31011200"]


@given(secrets=st.lists(st.text(string.ascii_letters + string.digits + "-_!#%&*+,.:;=?@^~",
                                 min_size=6, max_size=40).map(lambda t: "S3cr!" + t),
                         min_size=6, max_size=6))
def test_no_secret_is_shown_whatever_it_is(tmp_path_factory, secrets):
    api_token, password, override, upstream_password, token, credential = secrets
    settings = settings_for_tests(tmp_path_factory.getbasetemp(), **{
        "node.api_token": api_token, "devices.password": password,
        "devices.overrides": {CAMERA: {"password": override}},
        "upstreams": [{"id": UP_A, "address": "127.0.0.1:9", "password": upstream_password}],
        "users": [{"name": "nina", "token_sha256": hash_token(token), "role": "admin"}],
        "console.ice_servers": [{"urls": ["turn:127.0.0.1:3478"], "username": "u",
                                 "credential": credential}],
    })
    text = json.dumps(masked(settings))
    assert [s for s in [*secrets, hash_token(token)] if s in text] == []
    assert text.count('"***"') == 6


# ----- a real process -------------------------------------------------------------------------

def _read_until(proc: subprocess.Popen[str], text: str, timeout: float = 20.0) -> str:
    """Lines of the node's output up to one containing `text` (bounded)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} not logged:\n" + "".join(seen[-30:]))


def _get(port: int, path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": "Bearer secret"})
    return json.loads(urllib.request.urlopen(request, timeout=5).read())


def test_sighup_reloads_a_running_node(tmp_path):
    config, sip_port, http_port = write_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sensing_node", "run", "-c", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _read_until(proc, "HTTP API on")
        first = _get(http_port, "/api/config")
        assert first["devices"]["register_expires_s"] == 3600
        text = config.read_text()
        config.write_text(text.replace(f"127.0.0.1:{sip_port}", f"127.0.0.1:{sip_port + 1}")
                          + "  register_expires_s: 600\n")
        proc.send_signal(signal.SIGHUP)
        line = _read_until(proc, "configuration reloaded from")
        assert str(config) in line and "applied: devices" in line
        assert "restart needed for node.sip_listen (not applied)" in line
        shown = _get(http_port, "/api/config")
        assert shown["devices"]["register_expires_s"] == 600
        assert shown["node"]["sip_port"] == sip_port
        assert shown["loaded_at"] >= first["loaded_at"]
        # A broken file: refused, logged with its line, and the node serves on.
        config.write_text(text + "  colour: blue\n")
        proc.send_signal(signal.SIGHUP)
        line = _read_until(proc, "configuration reload refused")
        assert f"{config}:{len(text.splitlines()) + 1}: devices.colour" in line
        assert _get(http_port, "/api/config")["devices"]["register_expires_s"] == 600
        entries = _get(http_port, "/api/audit?action=config_reload")
        assert [(e["result"], e["actor"]) for e in entries] == [
            ("refused", "node (SIGHUP)"), ("ok", "node (SIGHUP)")]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
