"""Baseline servers on uvloop, run as their own process and pinned to the node's core.

    python bench/echo.py --cpu 0            # bare echo: every datagram goes back unchanged
    python bench/echo.py --cpu 0 --minimal  # a minimal SIP registrar, for scale

The echo loop is the floor: what one datagram in and one out cost through uvloop and the
kernel on this machine, with the same message sizes the load generator sends the node. The
ratio node/echo is the figure that stays comparable on a noisy or slower machine.

`--minimal` answers like a registrar with the least work that is still honest: it finds the
headers it needs with bytes searches, issues an HMAC-signed nonce in a 401, checks the digest
of the second REGISTER (one MD5 for HA2 and one for the response, HA1 cached per device as a
registrar storing HA1 would), keeps a dict of registered devices and answers 200 to MESSAGEs
from them. No SIP grammar checks, no transaction layer, no persistence: a ceiling, not a target.

Prints `PORT <n>` on stdout once listening; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PASSWORD, REALM, pin  # noqa: E402


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sendto = transport.sendto  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sendto(data, addr)


def _field(data: bytes, name: bytes) -> bytes:
    at = data.find(name)
    if at < 0:
        return b""
    at += len(name)
    return data[at : data.find(b"\r\n", at)]


class MinimalRegistrar(asyncio.DatagramProtocol):
    """Just enough of a GB/T 28181 registrar to answer the load generator correctly."""

    def __init__(self) -> None:
        self.secret = os.urandom(16)
        self.counter = 0
        self.ha1: dict[bytes, bytes] = {}
        self.registered: dict[bytes, float] = {}
        self.realm = REALM.encode()
        self.password = PASSWORD.encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sendto = transport.sendto  # type: ignore[attr-defined]

    def _answer(self, data: bytes, status: bytes, extra: bytes = b"") -> bytes:
        head = data[: data.find(b"\r\n\r\n")].split(b"\r\n")
        out = [b"SIP/2.0 " + status]
        for line in head[1:]:
            lower = line[:8].lower()
            if lower.startswith((b"via:", b"from:", b"call-id:", b"cseq:")):
                out.append(line)
            elif lower.startswith(b"to:"):
                out.append(line + b";tag=b5e1")
        out.append(extra + b"Content-Length: 0\r\n\r\n")
        return b"\r\n".join(out)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        user = _field(data, b"\r\nFrom: <sip:")
        user = user[: user.find(b"@")]
        if data.startswith(b"REGISTER "):
            auth = _field(data, b"\r\nAuthorization: ")
            if not auth:
                self.counter += 1
                body = b"%d.%d" % (time.monotonic_ns() // 1_000_000, self.counter)
                mac = hmac.new(self.secret, body, hashlib.sha256).hexdigest()[:16].encode()
                challenge = (
                    b'WWW-Authenticate: Digest realm="%s",nonce="%s.%s",algorithm=MD5,'
                    b'qop="auth"\r\n' % (self.realm, body, mac)
                )
                self.sendto(self._answer(data, b"401 Unauthorized", challenge), addr)
                return
            params = {}
            for part in auth[7:].split(b", "):
                name, _, value = part.partition(b"=")
                params[name] = value.strip(b'"')
            nonce = params.get(b"nonce", b"")
            body, _, mac = nonce.rpartition(b".")
            good = hmac.new(self.secret, body, hashlib.sha256).hexdigest()[:16].encode()
            ha1 = self.ha1.get(user)
            if ha1 is None:
                ha1 = self.ha1[user] = hashlib.md5(
                    user + b":" + self.realm + b":" + self.password
                ).hexdigest().encode()
            ha2 = hashlib.md5(b"REGISTER:" + params.get(b"uri", b"")).hexdigest().encode()
            expected = hashlib.md5(
                b"%s:%s:%s:%s:auth:%s"
                % (ha1, nonce, params.get(b"nc", b""), params.get(b"cnonce", b""), ha2)
            ).hexdigest().encode()
            if hmac.compare_digest(good, mac) and hmac.compare_digest(
                expected, params.get(b"response", b"")
            ):
                self.registered[user] = time.time() + 3600
                self.sendto(self._answer(data, b"200 OK", b"Expires: 3600\r\n"), addr)
            else:
                self.sendto(self._answer(data, b"403 Forbidden"), addr)
        elif data.startswith(b"MESSAGE "):
            ok = self.registered.get(user, 0.0) > time.time()
            self.sendto(self._answer(data, b"200 OK" if ok else b"403 Forbidden"), addr)


async def serve(minimal: bool, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    factory = MinimalRegistrar if minimal else Echo
    # The same receive buffer as the node's SIP socket (SipEndpoint.udp_rcvbuf).
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((host, port))
    transport, _ = await loop.create_datagram_endpoint(factory, sock=sock)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    transport.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--minimal", action="store_true")
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    pin(args.cpu)
    import uvloop

    host, _, port = args.listen.rpartition(":")
    uvloop.run(serve(args.minimal, host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
