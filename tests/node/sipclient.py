"""A raw SIP peer for integration tests: sends bytes we choose, reads what the node answers."""

from __future__ import annotations

import asyncio
import os
import socket

from sip import auth
from sip.message import Request, Response, parse_message
from sip.stream import StreamParser


class UdpPeer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.requests: list[Request] = []  # what the node asked us (queries), left unanswered

    @classmethod
    async def open(cls, server: tuple[str, int], port: int = 0, host: str = "127.0.0.1") -> UdpPeer:
        """A socket on `host`:`port` (0: any free port) that talks to `server` only."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for the answers to a burst sent before the first one is read.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((host, port))
        sock.connect(server)
        _, proto = await loop.create_datagram_endpoint(cls, sock=sock)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self, timeout: float = 5.0) -> Response:
        """The next response; requests from the node (its queries) are set aside."""
        while True:
            message = parse_message(await self.recv_raw(timeout))
            if isinstance(message, Response):
                return message
            self.requests.append(message)

    async def recv_raw(self, timeout: float = 5.0) -> bytes:
        while True:
            data = await asyncio.wait_for(self.queue.get(), timeout)
            if not data.startswith(b"MESSAGE "):
                return data
            message = parse_message(data)
            assert isinstance(message, Request)
            self.requests.append(message)

    async def nothing(self, timeout: float = 0.3) -> bool:
        try:
            await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = StreamParser()
        self.pending: list[Response] = []
        self.requests: list[Request] = []

    @classmethod
    async def open(cls, server: tuple[str, int]) -> TcpPeer:
        reader, writer = await asyncio.open_connection(*server)
        return cls(reader, writer)

    @property
    def port(self) -> int:
        return self.writer.get_extra_info("sockname")[1]

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 5.0) -> Response:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("closed")
            for item in self.parser.feed(data):
                if isinstance(item, Response):
                    self.pending.append(item)
                elif isinstance(item, Request):
                    self.requests.append(item)
        return self.pending.pop(0)

    def close(self) -> None:
        self.writer.close()


def register_bytes(
    device_id: str,
    port: int,
    *,
    transport: str = "UDP",
    call_id: str = "reg-1",
    cseq: int = 1,
    expires: int = 3600,
    branch: str | None = None,
    authorization: str | None = None,
    extra: str = "",
) -> bytes:
    branch = branch or "z9hG4bK" + os.urandom(6).hex()
    lines = [
        "REGISTER sip:31011200002000000001@3101120000 SIP/2.0",
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};rport;branch={branch}",
        f"From: <sip:{device_id}@3101120000>;tag=t{device_id[-4:]}",
        f"To: <sip:{device_id}@3101120000>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{device_id}@127.0.0.1:{port}>",
        "Max-Forwards: 70",
        "User-Agent: IP Camera",
        f"Expires: {expires}",
    ]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    if extra:
        lines.append(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def message_bytes(device_id: str, port: int, body: bytes, *, branch: str | None = None,
                  transport: str = "UDP", call_id: str | None = None) -> bytes:
    branch = branch or "z9hG4bK" + os.urandom(6).hex()
    call_id = call_id or os.urandom(6).hex()
    head = "\r\n".join(
        [
            "MESSAGE sip:31011200002000000001@3101120000 SIP/2.0",
            f"Via: SIP/2.0/{transport} 127.0.0.1:{port};rport;branch={branch}",
            f"From: <sip:{device_id}@3101120000>;tag=m1",
            "To: <sip:31011200002000000001@3101120000>",
            f"Call-ID: {call_id}",
            "CSeq: 20 MESSAGE",
            "Content-Type: Application/MANSCDP+xml",
            "Max-Forwards: 70",
            f"Content-Length: {len(body)}",
        ]
    )
    return head.encode() + b"\r\n\r\n" + body


def answer_challenge(challenge: Response, device_id: str, password: str) -> str:
    """The Authorization value a device sends back for a 401."""
    params = auth.parse_digest(challenge.headers.get("WWW-Authenticate") or "")
    return auth.build_authorization(
        params, username=device_id, password=password, method="REGISTER",
        uri="sip:31011200002000000001@3101120000", cnonce="0a4f113b",
    )


async def register(peer: UdpPeer | TcpPeer, device_id: str, password: str, *,
                   transport: str = "UDP", expires: int = 3600, call_id: str = "reg-1",
                   extra: str = "") -> Response:
    """Full digest exchange; returns the final response."""
    peer.send(register_bytes(device_id, peer.port, transport=transport, call_id=call_id,
                             expires=expires, extra=extra))
    challenge = await peer.recv()
    if challenge.status != 401:
        return challenge
    authorization = answer_challenge(challenge, device_id, password)
    peer.send(register_bytes(device_id, peer.port, transport=transport, call_id=call_id, cseq=2,
                             expires=expires, authorization=authorization, extra=extra))
    return await peer.recv()
