"""A simulated GB/T 28181 camera (IPC or small NVR) for the demo, tests and load checks.

It behaves like a real device: REGISTER with digest auth (answering the 401 challenge, and a
stale nonce), keepalive MESSAGEs on an interval (re-registering after three failures, as
devices do), and answers to Catalog (in several parts), DeviceInfo and DeviceStatus queries,
each as a separate MESSAGE after the 200 OK. Media comes with the live-media work.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass

from sip import auth, manscdp
from sip.errors import ParseError
from sip.message import Headers, Request, Response
from sip.transaction import Peer, RequestReceived

from .transport.sip import SipEndpoint

log = logging.getLogger(__name__)


@dataclass
class CameraConfig:
    server: tuple[str, int]
    device_id: str
    password: str
    channels: int = 1
    transport: str = "udp"
    server_id: str | None = None
    keepalive_interval_s: float = 60.0
    expires_s: int = 3600
    name: str = "Simulated IPC"
    manufacturer: str = "sensing-node"
    model: str = "SIM-IPC"
    firmware: str = "V1.0"
    charset: str = "GB2312"
    catalog_items_per_message: int = 4


def channel_ids(device_id: str, count: int) -> list[str]:
    """Channel codes (type 131) derived from the device code, unique per device serial."""
    serial = int(device_id[14:])
    return [
        f"{device_id[:10]}131{device_id[13]}{(serial * 100 + n) % 1_000_000:06d}"
        for n in range(1, count + 1)
    ]


class SimulatedCamera:
    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.domain = config.device_id[:10]
        self.endpoint = SipEndpoint(self._on_request)
        self.server_peer = Peer(config.transport, *config.server)
        self.call_id = f"{os.urandom(8).hex()}@{self.domain}"
        self.from_tag = os.urandom(4).hex()
        self.cseq = itertools.count(1)
        self.sn = itertools.count(1)
        self.registered = False
        self.keepalive_failures = 0
        self.keepalives_sent = 0
        self.queries_answered: dict[str, int] = {}
        self.last_register_response: Response | None = None
        self._task: asyncio.Task[None] | None = None
        self._call_seq = itertools.count(1)
        self.channel_ids = channel_ids(config.device_id, config.channels)

    @property
    def device_id(self) -> str:
        return self.config.device_id

    # ----- life cycle -----
    async def start(self, *, keepalives: bool = True) -> None:
        if self.config.transport == "tcp":
            self.server_peer = await self.endpoint.connect_tcp(*self.config.server)
        else:
            await self.endpoint.open_udp()
        await self.register()
        if keepalives:
            self._task = asyncio.create_task(self._keepalive_loop())

    async def stop(self, *, unregister: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if unregister and self.registered:
            try:
                await asyncio.wait_for(self.register(expires=0), 2.0)
            except Exception as exc:
                log.debug("unregister of %s failed: %s", self.device_id, exc)
        await self.endpoint.close()

    # ----- REGISTER -----
    def _register_request(self, expires: int, authorization: str | None) -> Request:
        cfg = self.config
        target = cfg.server_id or self.domain
        headers = self._base_headers("REGISTER", to_id=cfg.device_id, call_id=self.call_id)
        headers.add("Contact", f"<sip:{cfg.device_id}@{self._contact_hostport()}>")
        headers.add("Expires", str(expires))
        if authorization:
            headers.add("Authorization", authorization)
        return Request(headers=headers, method="REGISTER", uri=f"sip:{target}@{self.domain}")

    async def register(self, expires: int | None = None) -> Response:
        """Register (or unregister with expires=0), answering one digest challenge."""
        expires = self.config.expires_s if expires is None else expires
        request = self._register_request(expires, None)
        response = await self.endpoint.request(request, self.server_peer)
        if response.status == 401:
            challenge = auth.parse_digest(response.headers.get("WWW-Authenticate") or "")
            authorization = auth.build_authorization(
                challenge,
                username=self.config.device_id,
                password=self.config.password,
                method="REGISTER",
                uri=request.uri,
                cnonce=os.urandom(4).hex(),
            )
            request = self._register_request(expires, authorization)
            response = await self.endpoint.request(request, self.server_peer)
        self.last_register_response = response
        self.registered = response.status == 200 and expires > 0
        if response.status != 200:
            log.warning("%s: REGISTER answered %s %s", self.device_id, response.status,
                        response.reason)
        return response

    # ----- keepalive -----
    async def send_keepalive(self) -> Response:
        body = manscdp.keepalive(next(self.sn), self.device_id)
        response = await self._message(body)
        self.keepalives_sent += 1
        return response

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive_interval_s)
            try:
                response = await self.send_keepalive()
                ok = response.status == 200
            except Exception:
                ok = False
            self.keepalive_failures = 0 if ok else self.keepalive_failures + 1
            if self.keepalive_failures >= 3:
                self.keepalive_failures = 0
                try:
                    await self.register()
                except Exception as exc:
                    log.info("%s: re-register failed: %s", self.device_id, exc)

    # ----- queries from the node -----
    def _on_request(self, event: RequestReceived) -> None:
        request = event.request
        if request.method != "MESSAGE":
            self.endpoint.respond(event, Response.for_request(request, 405, to_tag="sim"))
            return
        try:
            msg = manscdp.parse_manscdp(request.body)
        except ParseError:
            self.endpoint.respond(event, Response.for_request(request, 400, to_tag="sim"))
            return
        self.endpoint.respond(event, Response.for_request(request, 200, to_tag="sim"))
        if msg.root == "Query":
            self.queries_answered[msg.cmd_type] = self.queries_answered.get(msg.cmd_type, 0) + 1
            asyncio.get_running_loop().create_task(self._answer(msg))

    async def _answer(self, query: manscdp.ManscdpMessage) -> None:
        cfg = self.config
        bodies: list[bytes]
        if query.cmd_type == "Catalog":
            bodies = manscdp.catalog_response_parts(
                query.sn,
                cfg.device_id,
                [self._catalog_item(i, cid) for i, cid in enumerate(self.channel_ids, 1)],
                per_message=cfg.catalog_items_per_message,
                encoding=cfg.charset,
            )
        elif query.cmd_type == "DeviceInfo":
            fields = [
                ("DeviceName", cfg.name),
                ("Result", "OK"),
                ("Manufacturer", cfg.manufacturer),
                ("Model", cfg.model),
                ("Firmware", cfg.firmware),
                ("Channel", str(cfg.channels)),
            ]
            bodies = [self._response("DeviceInfo", query.sn, fields)]
        elif query.cmd_type == "DeviceStatus":
            fields = [
                ("Result", "OK"),
                ("Online", "ONLINE"),
                ("Status", "OK"),
                ("Encode", "ON"),
                ("Record", "OFF"),
            ]
            bodies = [self._response("DeviceStatus", query.sn, fields)]
        else:
            return
        for body in bodies:  # parts go one after the other, each after the previous 200
            try:
                await self._message(body)
            except Exception as exc:
                log.info("%s: answer to %s failed: %s", self.device_id, query.cmd_type, exc)
                return

    def _response(self, cmd_type: str, sn: int, fields: list[tuple[str, str]]) -> bytes:
        return manscdp.build_manscdp(
            "Response", cmd_type, sn, self.device_id, fields, encoding=self.config.charset
        )

    def _catalog_item(self, index: int, channel_id: str) -> dict[str, str]:
        cfg = self.config
        return {
            "DeviceID": channel_id,
            "Name": f"{cfg.name} 通道{index}",
            "Manufacturer": cfg.manufacturer,
            "Model": cfg.model,
            "Owner": "Owner",
            "CivilCode": cfg.device_id[:6],
            "Address": "模拟地址",
            "Parental": "0",
            "ParentID": cfg.device_id,
            "RegisterWay": "1",
            "Secrecy": "0",
            "Status": "ON",
        }

    # ----- plumbing -----
    def _contact_hostport(self) -> str:
        host = self.endpoint.advertise_host or "127.0.0.1"
        return f"{host}:{self.endpoint.local[1]}"

    def _base_headers(self, method: str, *, to_id: str, call_id: str) -> Headers:
        headers = Headers()
        headers.add("Via", self.endpoint.via(self.config.transport))
        headers.add("From", f"<sip:{self.device_id}@{self.domain}>;tag={self.from_tag}")
        headers.add("To", f"<sip:{to_id}@{self.domain}>")
        headers.add("Call-ID", call_id)
        headers.add("CSeq", f"{next(self.cseq)} {method}")
        headers.add("Max-Forwards", "70")
        headers.add("User-Agent", "sensing-node simulated camera")
        return headers

    async def _message(self, body: bytes) -> Response:
        target = self.config.server_id or self.domain
        call_id = f"{os.urandom(6).hex()}{next(self._call_seq)}@{self.domain}"
        headers = self._base_headers("MESSAGE", to_id=target, call_id=call_id)
        headers.add("Content-Type", "Application/MANSCDP+xml")
        request = Request(
            headers=headers, body=body, method="MESSAGE", uri=f"sip:{target}@{self.domain}"
        )
        return await self.endpoint.request(request, self.server_peer)

