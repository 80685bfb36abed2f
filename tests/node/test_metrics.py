"""GET /metrics against a running node: the scrape parsed as Prometheus parses it, its figures
checked against the API, the recording index and a simulated upper platform, the token check
of node.metrics_auth, and `sensing-node hash-token` as an operator runs it."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from recorder.index import RecordIndex
from recorder.service import root_index
from sensing_node.api.metrics import METRICS
from sensing_node.settings.access import hash_token
from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sensing_node.sim.upstream import PlatformConfig, SimulatedUpstream

from .conftest import PASSWORD, TOKEN, RunningNode, StartNode, wait_for

ROOT = Path(__file__).resolve().parents[2]
CAMERA = "31011200001320000001"
UPSTREAM = "31011200002000000100"
UP_PASSWORD = "upstream-password"

Families = dict[str, Metric]
AddCamera = Callable[..., Awaitable[SimulatedCamera]]


@pytest.fixture
async def cameras() -> AsyncIterator[AddCamera]:
    started: list[SimulatedCamera] = []

    async def add(running: RunningNode, device_id: str = CAMERA, password: str = PASSWORD,
                  **config: Any) -> SimulatedCamera:
        camera = SimulatedCamera(CameraConfig(server=running.sip, device_id=device_id,
                                              password=password, **config))
        started.append(camera)
        await camera.start(keepalives=False)
        return camera

    yield add
    for camera in started:
        await camera.stop(unregister=False)


async def scrape(running: RunningNode, headers: dict[str, str] | None = None) -> Families:
    response = await running.client.get("/metrics", headers=headers or {})
    text = await response.text()
    assert response.status == 200, text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: Families, name: str, **labels: str) -> float:
    """The one sample of `name` (a family's name, or a sample's such as `x_total`) with
    exactly these labels."""
    family = families.get(name.removesuffix("_total"))
    assert family is not None, f"{name} missing from the scrape"
    found = [s.value for s in family.samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, family.samples)
    return found[0]


def labelled(families: Families, name: str, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in families[name.removesuffix("_total")].samples}


async def live(running: RunningNode, channel: str) -> None:
    response = await running.client.post(f"/api/channels/{channel}/live",
                                         json={"transport": "udp"}, headers=running.headers)
    assert response.status == 200, await response.text()


def packets(running: RunningNode) -> int:
    return sum(item["packets"] for item in running.node.media.snapshot())


async def test_scrape_is_consistent_with_the_api(start_node: StartNode, cameras: AddCamera):
    running = await start_node(**{"media.timeout_s": 2})
    camera = await cameras(running, channels=2)
    intruder = await cameras(running, device_id="31011200001320000002", password="wrong")
    assert not intruder.registered
    await wait_for(lambda: len(running.node.registry.get(CAMERA).channels) == 2)
    channel = camera.channel_ids[0]
    await live(running, channel)
    await wait_for(lambda: packets(running) > 0)

    before, streamed = await running.get("/api/stats"), packets(running)
    families = await scrape(running)  # no token: node.metrics_auth is off by default
    after, streamed_after = await running.get("/api/stats"), packets(running)

    for family in families.values():
        assert family.name.startswith("sensing_node_") and family.documentation, family.name
    assert families["sensing_node_sip_requests_received"].type == "counter"
    assert families["sensing_node_devices_online"].type == "gauge"
    devices = await running.get("/api/devices")
    assert value(families, "sensing_node_devices") == len(devices) == before["devices"] == 1
    assert value(families, "sensing_node_devices_online") == before["online"] == 1
    assert value(families, "sensing_node_channels") == before["channels"] == 2
    for method in ("REGISTER", "MESSAGE"):
        got = value(families, "sensing_node_sip_requests_received_total", method=method)
        assert before["requests_received"][method] <= got <= after["requests_received"][method]
    failures = value(families, "sensing_node_sip_auth_failures_total")
    assert 1 <= before["auth_failures"] <= failures <= after["auth_failures"]
    sent = labelled(families, "sensing_node_sip_responses_sent_total", "status")
    assert set(sent) == set(after["responses_sent"]) and sent["200"] > 0
    assert value(families, "sensing_node_streams", state="playing") == 1
    assert value(families, "sensing_node_streams", state="retrying") == 0
    assert streamed <= value(families, "sensing_node_rtp_packets_total") <= streamed_after
    assert value(families, "sensing_node_rtp_bytes_total") > 0
    assert value(families, "sensing_node_rtp_lost_total") == 0
    assert "sensing_node_channel_rtp_packets" not in families  # metrics.per_channel is off
    restarts = labelled(families, "sensing_node_task_restarts_total", "task")
    assert restarts == {name: task["restarts"] for name, task in before["tasks"].items()}
    assert value(families, "sensing_node_health_problems") == 0

    # The stream ends: its packets stay in the totals, which never go down.
    seen = value(families, "sensing_node_rtp_packets_total")
    stream = running.node.media.streams[channel]
    response = await running.client.delete(f"/api/channels/{channel}/live",
                                           headers=running.headers)
    assert response.status == 200
    await wait_for(lambda: not running.node.media.streams)
    ended = await scrape(running)
    assert value(ended, "sensing_node_streams", state="playing") == 0
    assert value(ended, "sensing_node_rtp_packets_total") >= seen > 0
    # Exactly what the stream received, to its last packet (not its count at the last scrape).
    # A media worker reports its receiver's last counts just after the stream has ended: they
    # join the totals when they come.
    for _ in range(50):
        if value(ended, "sensing_node_rtp_packets_total") == stream.counter("packets"):
            break
        await asyncio.sleep(0.1)
        ended = await scrape(running)
    assert value(ended, "sensing_node_rtp_packets_total") == stream.counter("packets")
    # A new stream of the channel adds its packets to what the ended one had.
    seen = value(ended, "sensing_node_rtp_packets_total")
    await live(running, channel)
    await wait_for(lambda: packets(running) > 0)
    anew = packets(running)
    again = await scrape(running)
    assert value(again, "sensing_node_rtp_packets_total") >= seen + anew
    assert value(again, "sensing_node_streams", state="playing") == 1


async def test_per_channel_series_when_configured(start_node: StartNode, cameras: AddCamera):
    running = await start_node(**{"media.timeout_s": 2, "metrics.per_channel": True})
    camera = await cameras(running, channels=2)
    await wait_for(lambda: len(running.node.registry.get(CAMERA).channels) == 2)
    await live(running, camera.channel_ids[1])
    await wait_for(lambda: packets(running) > 0)
    families = await scrape(running)
    family = families["sensing_node_channel_rtp_packets"]
    [sample] = [s for s in family.samples if s.name.endswith("_total")]
    assert sample.labels == {"channel": camera.channel_ids[1], "device": CAMERA}
    assert sample.value == value(families, "sensing_node_rtp_packets_total") > 0


def index_counts(running: RunningNode) -> tuple[int, int, float]:
    """Segments and gaps in the node's index, and the start of its oldest segment."""
    with RecordIndex(root_index(running.node.recording.root), read_only=True) as index:
        segments = index.segments()
        return len(segments), len(index.gaps()), min(s.start_wall for s in segments)


async def test_recording_figures_come_from_the_index(start_node: StartNode,
                                                     cameras: AddCamera):
    channel = "31011200001310000101"
    running = await start_node(**{"recording.channels": [channel], "recording.segment_s": 1,
                                  "recording.retention_days": 45})
    await cameras(running)
    await wait_for(lambda: running.node.recording.stats()["segments_closed"] >= 3, timeout=20)

    low, gaps_low, oldest = index_counts(running)
    wall_before = running.node.wall()
    families = await scrape(running)
    wall_after = running.node.wall()
    high, gaps_high, _ = index_counts(running)

    assert 3 <= low <= value(families, "sensing_node_recording_segments") <= high
    assert gaps_low <= value(families, "sensing_node_recording_gaps") <= gaps_high
    age = value(families, "sensing_node_recording_oldest_age_seconds")
    assert wall_before - oldest <= age <= wall_after - oldest
    assert value(families, "sensing_node_recording_retention_seconds") == 45 * 86400
    assert value(families, "sensing_node_recording_channels") == 1
    assert value(families, "sensing_node_recording_segments_closed_total") >= low
    assert value(families, "sensing_node_recording_bytes_total") > 0
    assert value(families, "sensing_node_recording_disk_free_bytes") > 0
    assert value(families, "sensing_node_recording_disk_alarm") == 0

    # The index is read once a minute, not at every scrape.
    metrics = running.client.app[METRICS]
    figures = metrics.collector.index
    await scrape(running)
    assert metrics.collector.index is figures


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[SimulatedUpstream, int]]:
    platform = SimulatedUpstream(PlatformConfig(platform_id=UPSTREAM, password=UP_PASSWORD))
    _, port = await platform.start()
    yield platform, port
    await platform.stop()


async def test_upstream_state_sessions_and_refusals(start_node: StartNode, cameras: AddCamera,
                                                    upstream: tuple[SimulatedUpstream, int]):
    platform, port = upstream
    running = await start_node(**{
        "media.timeout_s": 2,
        "upstreams": [{"id": UPSTREAM, "address": f"127.0.0.1:{port}",
                       "password": UP_PASSWORD, "max_streams": 1}],
    })
    camera = await cameras(running, channels=2)
    await wait_for(lambda: len(running.node.registry.get(CAMERA).channels) == 2)
    await platform.wait_registered(timeout=10)
    first = await platform.invite(camera.channel_ids[0])
    assert first.ok
    assert (await platform.invite(camera.channel_ids[1])).status == 486  # max_streams
    assert (await platform.invite("31011200001310009999")).status == 404

    families = await scrape(running)
    states = {s.labels["state"]: s.value for s in families["sensing_node_upstream_state"].samples
              if s.labels["upstream"] == UPSTREAM}
    assert states["registered"] == 1 and sum(states.values()) == 1
    listed = await running.get("/api/upstreams")
    [item] = listed["upstreams"]
    assert value(families, "sensing_node_upstream_sessions", upstream=UPSTREAM) \
        == item["sessions"] == 1
    assert value(families, "sensing_node_upstream_sessions_limit", upstream=UPSTREAM) == 1
    assert value(families, "sensing_node_outgoing_sessions") == len(listed["sessions"]) == 1
    assert value(families, "sensing_node_upstream_registrations_total", upstream=UPSTREAM) \
        == item["registrations"] >= 1
    refused = {s.labels["status"]: s.value
               for s in families["sensing_node_upstream_refused_sessions"].samples}
    assert refused == {"486": 1, "404": 1}

    # Each refusal is counted once, however often Prometheus scrapes.
    assert (await platform.invite(camera.channel_ids[1])).status == 486
    for _ in range(2):
        again = await scrape(running)
        assert value(again, "sensing_node_upstream_refused_sessions_total",
                     upstream=UPSTREAM, status="486") == 2
    await first.bye()


def hash_token_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensing_node", "hash-token", *args],
                          input=stdin, capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_hash_token_prints_the_sha256_of_the_token_from_stdin_or_the_argument():
    from_stdin = hash_token_cli(stdin="correct horse\n")
    assert from_stdin.returncode == 0, from_stdin.stderr
    digest = from_stdin.stdout.strip()
    assert digest == hashlib.sha256(b"correct horse").hexdigest() == hash_token("correct horse")
    assert hash_token_cli("correct horse").stdout.strip() == digest
    for empty in ("", "\n", "   \n"):
        refused = hash_token_cli(stdin=empty)
        assert refused.returncode == 2 and refused.stdout == ""
        assert "empty" in refused.stderr


async def test_metrics_auth_takes_the_api_token_or_a_users_token(start_node: StartNode):
    digest = hash_token_cli(stdin="viewer-token\n").stdout.strip()
    running = await start_node(**{
        "node.metrics_auth": True,
        "users": [{"name": "grafana", "token_sha256": digest, "role": "viewer"}],
    })
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer "},
                    {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {digest}"}):  # the hash is not the token
        response = await running.client.get("/metrics", headers=headers)
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for token in (TOKEN, "viewer-token"):
        families = await scrape(running, {"Authorization": f"Bearer {token}"})
        assert value(families, "sensing_node_devices") == 0
