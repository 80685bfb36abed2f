"""One upper platform as the node sees it: the registration toward it and how to reach it.

`UpstreamLink` drives `sip.registration.UpstreamRegistration` on the event loop: it sends the
requests the machine builds through the SIP endpoint (opening the TCP connection first for a
`tcp` upstream, and again after it dropped), feeds back the answers and the timeouts, and wakes
the machine at its deadlines. Everything the node sends the upstream besides (catalog answers,
NOTIFY, BYE) goes through `request`, to the same address over the same transport.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sip.headers import Headers
from sip.message import Request, Response
from sip.registration import (
    Registered,
    RegistrationFailed,
    RegistrationLost,
    RegistrationState,
    UpstreamConfig,
    UpstreamRegistration,
)
from sip.transaction import Peer

from ..settings import UpstreamSettings
from ..transport.sip import SipEndpoint

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
STOP_WAIT_S = 2.0


class UpstreamLink:
    """The registration to one upstream, and the way requests reach it."""

    def __init__(
        self,
        upstream: UpstreamSettings,
        endpoint: SipEndpoint,
        *,
        node_id: str,
        contact: tuple[str, int],
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        on_change: Callable[[UpstreamLink], None] | None = None,
    ) -> None:
        self.settings = upstream
        self.id = upstream.id
        self.local_id = upstream.local_id or node_id
        self.endpoint = endpoint
        self.wall = wall
        self.mono = mono
        self.on_change = on_change
        transport = upstream.transport
        self.peer = Peer(transport, upstream.host, upstream.port)
        self.config = UpstreamConfig(
            upstream_id=upstream.id,
            realm=upstream.realm,
            host=upstream.host,
            port=upstream.port,
            local_id=self.local_id,
            contact_host=contact[0],
            contact_port=contact[1],
            password=upstream.password,
            transport=transport,
            register_expires_s=upstream.register_expires_s,
            keepalive_s=float(upstream.keepalive_s),
            charset=upstream.charset,
        )
        self.registration = UpstreamRegistration(self.config)
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._tag = f"{id(self):x}"[-8:]
        # wall time of the registration's last state change (the machine counts monotonic)
        self._since_wall = wall()
        self._last_state = self.registration.state
        self.registrations = 0
        #: why the last TCP connection attempt failed (a REGISTER then counts as timed out)
        self.last_connect_error: str | None = None

    # ----- state -----
    @property
    def registered(self) -> bool:
        return self.registration.state is RegistrationState.REGISTERED

    @property
    def may_ask(self) -> bool:
        """Whether the upstream's requests are taken: while registered, and while a REGISTER
        is out (an upstream queries the catalog as soon as it sends its 200, which may reach
        the node after the query that follows it, over TCP in the same read)."""
        return self.registration.state in (
            RegistrationState.REGISTERED, RegistrationState.REGISTERING
        )

    def snapshot(self) -> dict[str, Any]:
        snap = self.registration.snapshot()
        until = snap.registered_until
        return {
            "id": self.id,
            "local_id": self.local_id,
            "address": f"{self.peer.host}:{self.peer.port}",
            "transport": self.peer.transport,
            "state": snap.state,
            "since": self._since_wall,
            "last_error": snap.last_error if not self.last_connect_error
            else f"{snap.last_error} ({self.last_connect_error})",
            # the machine counts on the monotonic clock: shown as wall time
            "registered_until": None if until is None else self.wall() + (until - self.mono()),
            "registrations": self.registrations,
        }

    # ----- running -----
    async def run(self) -> None:
        """Register and keep registered until cancelled (the supervisor restarts a failure)."""
        if self.registration.state is RegistrationState.UNREGISTERED:
            self.registration.start(self.mono())
        while True:
            self._pump()
            deadline = self.registration.next_deadline()
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - self.mono())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self.registration.handle_timer(self.mono())

    async def stop(self) -> None:
        """Unregister (Expires: 0) and wait a moment for the answer."""
        self.registration.stop(self.mono())
        self._pump()
        loop = asyncio.get_running_loop()
        end = loop.time() + STOP_WAIT_S
        while self.registration.state is RegistrationState.STOPPING and loop.time() < end:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), end - loop.time())
            except TimeoutError:
                break
            self._pump()

    def _pump(self) -> None:
        """Send what the machine built and act on what it reports."""
        for request in self.registration.requests_to_send():
            task = asyncio.get_running_loop().create_task(self._send(request))
            self._inflight.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._inflight.discard)
        while (event := self.registration.next_event()) is not None:
            if isinstance(event, Registered):
                self.registrations += 1
                self.last_connect_error = None
                log.info("registered to upstream %s (%s:%d over %s)", self.id, self.peer.host,
                         self.peer.port, self.peer.transport)
            elif isinstance(event, RegistrationFailed):
                why = event.reason + (f" ({self.last_connect_error})"
                                      if self.last_connect_error else "")
                log.warning("upstream %s: %s; registering again in %.0f s", self.id, why,
                            max(0.0, event.retry_at - self.mono()))
            elif isinstance(event, RegistrationLost):
                log.warning("upstream %s: registration lost (%s); registering again", self.id,
                            event.reason)
        state = self.registration.state
        if state is not self._last_state:
            self._last_state = state
            self._since_wall = self.wall()
            if self.on_change is not None:
                self.on_change(self)

    async def _send(self, request: Request) -> None:
        try:
            response = await self.request(request)
        except Exception as exc:
            if isinstance(exc, OSError | TimeoutError) and self.peer.reliable:
                self.last_connect_error = f"cannot connect: {exc.strerror or exc or 'timeout'}"
            self.registration.request_timed_out(request, self.mono())
        else:
            self.registration.response_received(response, self.mono())
        self._wake.set()
        self._pump()

    # ----- requests to the upstream -----
    async def request(self, request: Request) -> Response:
        """Send `request` to the upstream in a client transaction; its final response.

        Over TCP the connection is opened first when there is none. Raises what the endpoint
        raises (`TransactionTimeout`, `ConnectionError`, `OSError`)."""
        if self.peer.reliable and self.peer not in self.endpoint.connections:
            await asyncio.wait_for(
                self.endpoint.connect_tcp(self.peer.host, self.peer.port), CONNECT_TIMEOUT_S
            )
        return await self.endpoint.request(request, self.peer)

    def message(self, body: bytes, *, to: str | None = None) -> Request:
        """A MESSAGE with a MANSCDP body from our ID to the upstream (outside any dialog)."""
        self._seq += 1
        c = self.config
        to_user = to or self.id
        headers = Headers([
            ("Via", self.endpoint.via(self.peer.transport)),
            ("From", f"<sip:{self.local_id}@{c.realm}>;tag={self._tag}{self._seq:x}"),
            ("To", f"<sip:{to_user}@{c.realm}>"),
            ("Call-ID", f"{self._tag}-{self._seq}@{c.contact_host}"),
            ("CSeq", f"{self._seq} MESSAGE"),
            ("Max-Forwards", "70"),
            ("Content-Type", "Application/MANSCDP+xml"),
        ])
        return Request(headers=headers, body=body, method="MESSAGE", uri=c.request_uri)
