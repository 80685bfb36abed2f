"""Every REGISTER and MESSAGE of the real-device corpus, sent as captured to a running node."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from sip.message import Request, Response, parse_message

from .conftest import PASSWORD, StartNode, wait_for
from .sipclient import UdpPeer, register

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"


def corpus_requests(method: str) -> list[Path]:
    out = []
    for path in sorted(CORPUS.glob("*.sip")):
        message = parse_message(path.read_bytes())
        if isinstance(message, Request) and message.method == method:
            out.append(path)
    return out


def from_user(message: Request) -> str:
    return message.from_.uri.user or ""


def valid_id(text: str) -> bool:
    return len(text) == 20 and text.isdigit()


@pytest.mark.parametrize("path", corpus_requests("REGISTER"), ids=lambda p: p.stem)
async def test_corpus_register_is_challenged_or_refused_with_reason(start_node: StartNode, path):
    running = await start_node(devices__allow=[])
    peer = await UdpPeer.open(running.sip)
    try:
        data = path.read_bytes()
        request = parse_message(data)
        peer.send(data)
        reply = await peer.recv()
        assert reply.call_id == request.call_id and reply.cseq == request.cseq
        if valid_id(from_user(request)):
            # A captured Authorization carries another server's nonce: challenged afresh.
            assert reply.status == 401
            challenge = reply.headers.get("WWW-Authenticate") or ""
            assert challenge.startswith("Digest ") and 'realm="' in challenge
        else:
            assert (reply.status, reply.reason) == (403, "Invalid Device ID")
        assert running.node.registry.get(from_user(request)) is None
    finally:
        peer.close()


@pytest.mark.parametrize("path", corpus_requests("MESSAGE"), ids=lambda p: p.stem)
async def test_corpus_message_needs_registration_then_is_accepted(start_node: StartNode, path):
    running = await start_node(devices__allow=[])
    peer = await UdpPeer.open(running.sip)
    try:
        data = path.read_bytes()
        request = parse_message(data)
        device_id = from_user(request)
        peer.send(data)
        refused = await peer.recv()
        assert (refused.status, refused.reason) == (403, "Device Not Registered")
        if not valid_id(device_id):
            return
        assert (await register(peer, device_id, PASSWORD, call_id=f"r-{path.stem}")).status == 200
        # The same bytes again would be a retransmission; a device sends a new branch.
        fresh = data.replace(request.top_via.branch.encode(), b"z9hG4bKcorpus" + path.stem.encode())
        peer.send(fresh)
        accepted = await peer.recv()
        assert accepted.status == 200, (accepted.status, accepted.reason)
    finally:
        peer.close()


async def answer(peer: UdpPeer, query: Request) -> None:
    peer.send(bytes(Response.for_request(query, 200, to_tag="dev")))


async def next_query(peer: UdpPeer, cmd_type: str, timeout: float = 5.0) -> tuple[Request, int]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for query in list(peer.requests):
            if f"<CmdType>{cmd_type}</CmdType>".encode() in query.body:
                peer.requests.remove(query)
                sn = int(re.search(rb"<SN>(\d+)</SN>", query.body).group(1))
                return query, sn
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {cmd_type} query from the node")
        try:
            await peer.recv(timeout=0.1)
        except TimeoutError:
            pass


def with_sn(path: Path, sn: int, branch: str) -> bytes:
    message = parse_message(path.read_bytes())
    message.body = re.sub(rb"<SN>\d+</SN>", b"<SN>%d</SN>" % sn, message.body)
    old = message.top_via.branch or ""
    message.headers.set("Via", (message.headers.get("Via") or "").replace(old, branch))
    return bytes(message)


async def test_real_nvr_catalog_and_device_info_fill_the_registry(start_node: StartNode):
    """The Hikvision NVR announces SumNum 8 but sends 2 items: the node keeps those 2 once the
    parts stop coming, and takes the Dahua DeviceInfo answer for the device record."""
    running = await start_node(devices__allow=[])
    queries = running.node.queries
    assert queries is not None
    queries.catalog_silence_s = 0.3
    nvr = "34020000001110000001"
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, nvr, PASSWORD)).status == 200
        info_query, sn = await next_query(peer, "DeviceInfo")
        await answer(peer, info_query)
        info = with_sn(CORPUS / "deviceinfo-response-dahua-sd-01.sip", sn, "z9hG4bKinfo")
        peer.send(info.replace(b"34020000001320000002", nvr.encode()))
        assert (await peer.recv()).status == 200
        catalog_query, sn = await next_query(peer, "Catalog")
        await answer(peer, catalog_query)
        peer.send(with_sn(CORPUS / "catalog-response-hikvision-nvr-multipart-01.sip", sn,
                          "z9hG4bKcat1"))
        assert (await peer.recv()).status == 200
        registry = running.node.registry
        await wait_for(lambda: registry.get(nvr).channels)
        channels = await running.get(f"/api/channels?device_id={nvr}")
        assert {c["id"]: c["status"] for c in channels} == {
            "34020000001320000001": "ON",
            "34020000001320000002": "OFF",
        }
        assert channels[0]["address"].startswith("192.168.254.")
        device = await running.get(f"/api/devices/{nvr}")
        assert device["manufacturer"] and device["channel_count"] == 2
    finally:
        peer.close()


async def test_device_that_never_answers_device_info_still_gets_its_catalog_read(
    start_node: StartNode,
):
    running = await start_node(devices__allow=[])
    queries = running.node.queries
    assert queries is not None
    queries.answer_timeout_s = 0.5
    ipc = "34020000001320000002"
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, ipc, PASSWORD)).status == 200
        info_query, _ = await next_query(peer, "DeviceInfo")
        await answer(peer, info_query)  # 200, and then silence
        catalog_query, sn = await next_query(peer, "Catalog")
        await answer(peer, catalog_query)
        peer.send(with_sn(CORPUS / "catalog-response-hikvision-ipc-01.sip", sn, "z9hG4bKipc"))
        assert (await peer.recv()).status == 200
        await wait_for(lambda: running.node.registry.get(ipc).channels)
        assert len(running.node.registry.get(ipc).channels) == 2
    finally:
        peer.close()
