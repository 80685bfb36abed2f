"""Devices as they are found in the field, against a running node on loopback: one that ignores
DeviceInfo or refuses its Catalog, one that cannot do digest (`auth: none` from a network), and
one that registers or sends faster than the flood limits allow."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from sensing_node.__main__ import main
from sip import manscdp
from sip.message import Request, Response

from .conftest import PASSWORD, StartNode, wait_for
from .sipclient import UdpPeer, message_bytes, register, register_bytes

CAMERA = "31011200001320000001"
NVR = "31011200001110000001"
CHANNELS = ["31011200001310000101", "31011200001310000102"]


async def next_query(peer: UdpPeer, cmd_type: str, timeout: float = 5.0,
                     seen: set[str] | None = None) -> Request:
    """The next query of `cmd_type` the node sent to `peer` (others are left where they are);
    retransmitted copies of those in `seen` (Call-IDs) are passed over."""
    seen = set() if seen is None else seen

    async def find() -> Request:
        while True:
            for query in list(peer.requests):
                if f"<CmdType>{cmd_type}</CmdType>".encode() not in query.body:
                    continue
                peer.requests.remove(query)
                if query.call_id not in seen:
                    seen.add(query.call_id)
                    return query
            try:
                await peer.recv(timeout=0.1)
            except TimeoutError:
                pass

    return await asyncio.wait_for(find(), timeout)


async def answer_catalog(peer: UdpPeer, device_id: str, query: Request) -> None:
    peer.send(bytes(Response.for_request(query, 200, to_tag="dev")))
    sn = manscdp.parse_manscdp(query.body).sn
    items = [{"DeviceID": channel, "Name": "Camera", "Status": "ON"} for channel in CHANNELS]
    for body in manscdp.catalog_response_parts(sn, device_id, items, encoding="UTF-8"):
        peer.send(message_bytes(device_id, peer.port, body))
        assert (await peer.recv()).status == 200


# ----- item 1: DeviceInfo and Catalog at once; a missing Catalog asked again ---------------------


async def test_device_that_never_answers_device_info_has_its_channels_at_once(
    start_node: StartNode,
):
    """The DeviceInfo query gets no answer at all (no 200, no result: Timer F is 32 s away,
    the answer timeout 120 s); the Catalog is asked beside it and read within seconds."""
    running = await start_node()
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, NVR, PASSWORD)).status == 200
        catalog = await next_query(peer, "Catalog", timeout=3.0)
        await answer_catalog(peer, NVR, catalog)
        registry = running.node.registry
        await wait_for(lambda: sorted(registry.get(NVR).channels) == CHANNELS, 3.0)
        assert any(b"<CmdType>DeviceInfo</CmdType>" in q.body for q in peer.requests)
        channels = await running.get(f"/api/channels?device_id={NVR}")
        assert sorted(c["id"] for c in channels) == CHANNELS
    finally:
        peer.close()


async def test_unanswered_catalog_is_asked_again_on_keepalives_with_backoff(
    start_node: StartNode,
):
    """A refused Catalog is asked again on the first keepalive 60 s later, then after 120 s,
    doubling to one hour; keepalives before that ask nothing; an answer ends the retries."""
    running = await start_node()
    queries = running.node.queries
    assert queries is not None
    clock = [1000.0]
    queries.clock = lambda: clock[0]
    peer = await UdpPeer.open(running.sip)
    sn = 0

    async def keepalive_at(t: float) -> None:
        nonlocal sn
        clock[0] = t
        sn += 1
        peer.send(message_bytes(NVR, peer.port, manscdp.keepalive(sn, NVR)))
        assert (await peer.recv()).status == 200  # handled, and any query queued, by now

    def catalog_queued() -> bool:
        return NVR in queries._queued or (NVR, "Catalog") in queries._inflight

    seen: set[str] = set()
    try:
        assert (await register(peer, NVR, PASSWORD)).status == 200
        refused = await next_query(peer, "Catalog", seen=seen)  # DeviceInfo stays unanswered
        peer.send(bytes(Response.for_request(refused, 486, to_tag="dev")))
        await wait_for(lambda: not catalog_queued())
        failed_at = 1000.0
        backoffs = (60, 120, 240, 480, 960, 1920, 3600, 3600)
        for step, backoff in enumerate(backoffs):
            await keepalive_at(failed_at + backoff - 1)
            assert not catalog_queued()
            await keepalive_at(failed_at + backoff)
            query = await next_query(peer, "Catalog", seen=seen)
            if step == len(backoffs) - 1:
                await answer_catalog(peer, NVR, query)
                break
            peer.send(bytes(Response.for_request(query, 486, to_tag="dev")))
            await wait_for(lambda: not catalog_queued())
            failed_at = clock[0]
        await wait_for(lambda: sorted(running.node.registry.get(NVR).channels) == CHANNELS)
        await wait_for(lambda: not catalog_queued())
        await keepalive_at(clock[0] + 86400)  # answered: no more retries
        assert not catalog_queued()
    finally:
        peer.close()


# ----- item 5: devices that cannot do digest ---------------------------------------------------

OTHER = "31011200001320000002"
ELSEWHERE = "31011200001320000003"


async def test_device_without_digest_registers_only_from_its_network(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
):
    running = await start_node(devices__overrides={
        CAMERA: {"auth": "none", "from": "127.0.0.0/8"},
        ELSEWHERE: {"auth": "none", "from": "192.0.2.0/24"},
    })
    caplog.set_level(logging.WARNING, "sensing_node.devices.registrar")
    device = await UdpPeer.open(running.sip)
    intruder = await UdpPeer.open(running.sip)
    digest = await UdpPeer.open(running.sip)
    try:
        # No challenge: the first REGISTER, without Authorization, is accepted ...
        for call_id in ("reg-1", "reg-2"):
            device.send(register_bytes(CAMERA, device.port, call_id=call_id))
            reply = await device.recv()
            assert reply.status == 200 and reply.headers.get("Expires") == "3600"
        # ... and logged as unauthenticated every time.
        lines = [r for r in caplog.records if "WITHOUT authentication" in r.getMessage()]
        assert len(lines) == 2 and all(CAMERA in r.getMessage() for r in lines)
        assert all(r.levelno == logging.WARNING for r in lines)
        assert (await running.get(f"/api/devices/{CAMERA}"))["auth"] == "none"

        # Source binding holds as for any device: a MESSAGE from elsewhere moves nothing.
        device.send(message_bytes(CAMERA, device.port, manscdp.keepalive(1, CAMERA)))
        assert (await device.recv()).status == 200
        intruder.send(message_bytes(CAMERA, intruder.port, manscdp.keepalive(2, CAMERA)))
        assert (await intruder.recv()).reason == "Source Mismatch"
        assert running.node.registry.get(CAMERA).remote == f"127.0.0.1:{device.port}"

        # Outside its network: refused at once, neither challenged nor registered.
        intruder.send(register_bytes(ELSEWHERE, intruder.port))
        reply = await intruder.recv()
        assert (reply.status, reply.reason) == (403, "Source Not Allowed")
        assert running.node.registry.get(ELSEWHERE) is None
        assert any("outside its network 192.0.2.0/24" in r.getMessage()
                   and ELSEWHERE in r.getMessage() for r in caplog.records)

        # Every other device still needs its password, and is shown as such.
        digest.send(register_bytes(OTHER, digest.port))
        assert (await digest.recv()).status == 401
        assert (await register(digest, OTHER, PASSWORD, call_id="d")).status == 200
        assert (await running.get(f"/api/devices/{OTHER}"))["auth"] == "digest"
    finally:
        device.close()
        intruder.close()
        digest.close()


def test_check_config_refuses_auth_none_without_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    config = tmp_path / "node.yaml"
    config.write_text(
        "node: {api_token: t}\n"
        "devices:\n"
        "  password: p\n"
        "  overrides:\n"
        f'    "{CAMERA}":\n'
        "      name: Gate\n"
        "      auth: none\n"
        f'    "{OTHER}":\n'
        "      auth: none\n"
        '      from: "10.1.2.3/16"\n'
    )
    with pytest.raises(SystemExit) as stopped:
        main(["check-config", str(config)])
    assert stopped.value.code != 0
    errors = capsys.readouterr().err.splitlines()
    assert errors[0] == (f"{config}:7: devices.overrides.{CAMERA}.auth: none needs from: the "
                         "network this device registers from without a password, e.g. "
                         'from: "192.0.2.0/24"')
    assert errors[1] == (f'{config}:10: devices.overrides.{OTHER}.from: "10.1.2.3/16" has host '
                         'bits set; did you mean "10.1.0.0/16"?')

    config.write_text(config.read_text().replace("      name: Gate\n",
                                                 '      from: "2001:db8::/32"\n')
                      .replace("10.1.2.3/16", "10.1.0.0/16"))
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"WARNING: device {CAMERA} registers without authentication from 2001:db8::/32" in out


# ----- item 6: flood limits are settings, and a refusal is logged ------------------------------


async def test_register_flood_limit_is_configured_and_logged_once_per_device(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
):
    # A rate this low refills nothing while the test runs: the counts are exact.
    running = await start_node(devices__register_rate={"per_s": 0.001, "burst": 3})
    caplog.set_level(logging.WARNING, "sensing_node.devices.registrar")
    peer = await UdpPeer.open(running.sip)
    try:
        statuses = []
        for device_id in (CAMERA, OTHER):
            for attempt in range(8):
                peer.send(register_bytes(device_id, peer.port, call_id=f"{device_id}-{attempt}"))
                reply = await peer.recv()
                statuses.append(reply.status)
                if reply.status == 503:
                    assert reply.headers.get("Retry-After") == "5"
        assert statuses == ([401] * 3 + [503] * 5) * 2
        assert (await running.get("/api/stats"))["dropped"]["flooded"] == 10
        lines = [r.getMessage() for r in caplog.records if "register_rate" in r.getMessage()]
        assert len(lines) == 2  # the first refusal of each device
        assert CAMERA in lines[0] and OTHER in lines[1]
        assert "(0.001/s, burst 3)" in lines[0]
    finally:
        peer.close()


async def test_message_flood_limit_is_configured_and_logged_once_per_device(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
):
    running = await start_node(devices__message_rate={"per_s": 0.001, "burst": 4})
    caplog.set_level(logging.WARNING, "sensing_node.devices.registrar")
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, CAMERA, PASSWORD)).status == 200
        statuses = []
        for sn in range(1, 8):
            peer.send(message_bytes(CAMERA, peer.port, manscdp.keepalive(sn, CAMERA)))
            statuses.append((await peer.recv()).status)
        assert statuses == [200] * 4 + [503] * 3
        assert (await running.get("/api/stats"))["dropped"]["flooded"] == 3
        lines = [r.getMessage() for r in caplog.records if "message_rate" in r.getMessage()]
        assert len(lines) == 1 and CAMERA in lines[0]
    finally:
        peer.close()


def test_flood_limits_default_and_are_checked():
    from sensing_node.settings import ConfigError, Rate, parse_settings

    base = "node: {api_token: t}\ndevices:\n  password: p\n"
    devices = parse_settings(base).devices
    assert devices.register_rate == Rate(per_s=2.0, burst=10)
    assert devices.message_rate == Rate(per_s=50.0, burst=200)
    with pytest.raises(ConfigError) as bad:
        parse_settings(base + "  register_rate: {per_s: 0, burst: 10}\n"
                       "  message_rate: {per_s: 5}\n")
    assert bad.value.problems == [
        "<string>:4: devices.register_rate.per_s: must be a number above 0, got 0",
        "<string>:5: devices.message_rate.burst: required, but not given",
    ]


@pytest.mark.parametrize(("host", "network", "inside"), [
    ("192.0.2.7", "192.0.2.0/24", True),
    ("192.0.3.7", "192.0.2.0/24", False),
    ("::ffff:192.0.2.7", "192.0.2.0/24", True),  # an IPv4 peer on a dual-stack socket
    ("[2001:db8::7]", "2001:db8::/32", True),
    ("fe80::1%eth0", "fe80::/10", True),
    ("192.0.2.7", "2001:db8::/32", False),
    ("camera.example", "0.0.0.0/0", False),
])
def test_source_network_match(host: str, network: str, inside: bool):
    import ipaddress

    from sensing_node.devices.registrar import in_network

    assert in_network(host, ipaddress.ip_network(network)) is inside
