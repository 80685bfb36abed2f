"""SIP non-INVITE transactions (RFC 3261 section 17), sans-I/O.

`TransactionLayer` sits between the transport adapters and the application:

* `receive(message, peer, now)` takes a parsed message. A new request becomes a server
  transaction and a `RequestReceived` event; a retransmitted request is absorbed and, once the
  transaction has answered, its cached final response is queued again (17.2.2). A response is
  matched to its client transaction (17.1.3) and becomes a `ResponseReceived` event.
* `respond(key, response, now)` answers a server transaction.
* `request(request, peer, now)` starts a client transaction; over UDP it retransmits on Timer E
  (T1, doubling up to T2) and gives up on Timer F (64*T1) with `TransactionTimedOut`.
* `handle_timer(now)` fires due timers; `next_deadline()` says when to call it next.
* `datagrams_to_send()` drains the bytes to put on the wire, each with its `Peer`.

Time is a parameter throughout, so tests drive the layer with a fake clock. INVITE transactions
are not handled here yet: INVITE requests, ACKs and their responses pass through as plain events
(`RequestReceived` with key None, `ResponseReceived` with key None).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from .errors import LocalProtocolError
from .message import Request, Response

__all__ = [
    "Peer",
    "Outgoing",
    "RequestReceived",
    "ResponseReceived",
    "TransactionTimedOut",
    "TransactionLayer",
    "TimerValues",
    "MAGIC_COOKIE",
]

MAGIC_COOKIE = "z9hG4bK"


class Peer(NamedTuple):
    """Where a message came from or goes to: transport ("udp"/"tcp"), host and port."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


class Outgoing(NamedTuple):
    data: bytes
    peer: Peer


@dataclass(frozen=True)
class TimerValues:
    """RFC 3261 timer base values in seconds (section 17.1.1.1 and table 4)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


ServerKey = tuple[str, str, str]
ClientKey = tuple[str, str]


@dataclass(frozen=True)
class RequestReceived:
    """A new request (not a retransmission). Answer it with `respond(key, ...)`."""

    key: ServerKey | None
    request: Request
    peer: Peer


@dataclass(frozen=True)
class ResponseReceived:
    key: ClientKey | None
    response: Response
    peer: Peer
    final: bool


@dataclass(frozen=True)
class TransactionTimedOut:
    key: ClientKey
    request: Request
    peer: Peer


Event = RequestReceived | ResponseReceived | TransactionTimedOut


class _ServerTx:
    __slots__ = ("peer", "response")

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.response: bytes | None = None  # last response sent, replayed on retransmission


class _ClientTx:
    __slots__ = ("request", "data", "peer", "interval", "deadline_f", "done", "provisional")

    def __init__(self, request: Request, data: bytes, peer: Peer, interval: float, f: float):
        self.request = request
        self.data = data
        self.peer = peer
        self.interval = interval
        self.deadline_f = f
        self.done = False
        self.provisional = False


def server_key(request: Request) -> ServerKey | None:
    """The server transaction key of RFC 3261 17.2.3 (branch, sent-by, method).

    Returns None when the top Via has no RFC 3261 branch; such (RFC 2543) requests get a key
    built from Call-ID, CSeq and From tag instead, which is what 17.2.3 asks for in spirit.
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    sent_by = via.host if via.port is None else f"{via.host}:{via.port}"
    if branch.startswith(MAGIC_COOKIE):
        return (branch, sent_by.lower(), method)
    seq, _ = request.cseq
    return (f"2543:{request.call_id}:{seq}:{request.from_.tag}", sent_by.lower(), method)


class TransactionLayer:
    """Non-INVITE client and server transactions over any mix of UDP and TCP peers."""

    def __init__(
        self,
        timers: TimerValues | None = None,
        *,
        max_server_transactions: int = 200_000,
        max_client_transactions: int = 50_000,
    ) -> None:
        self.timers = timers or TimerValues()
        self.max_server_transactions = max_server_transactions
        self.max_client_transactions = max_client_transactions
        # Server transactions in creation order: Timer J has one length for all UDP server
        # transactions, so the oldest is always the first to expire and a FIFO is enough.
        self._server: OrderedDict[ServerKey, tuple[float, _ServerTx]] = OrderedDict()
        self._client: dict[ClientKey, _ClientTx] = {}
        self._timers: list[tuple[float, int, ClientKey]] = []
        self._seq = itertools.count()
        self._out: list[Outgoing] = []
        self.absorbed_retransmissions = 0
        self.stray_responses = 0

    # ----- input -----
    def receive(self, message: Request | Response, peer: Peer, now: float) -> list[Event]:
        if isinstance(message, Request):
            return self._receive_request(message, peer, now)
        return self._receive_response(message, peer, now)

    def _receive_request(self, request: Request, peer: Peer, now: float) -> list[Event]:
        if request.method in ("INVITE", "ACK", "CANCEL"):
            return [RequestReceived(None, request, peer)]
        key = server_key(request)
        assert key is not None
        entry = self._server.get(key)
        if entry is not None:
            self.absorbed_retransmissions += 1
            tx = entry[1]
            if tx.response is not None:
                self._out.append(Outgoing(tx.response, peer))
            return []
        self._expire_server(now)
        if len(self._server) >= self.max_server_transactions:
            self._server.popitem(last=False)
        # Until answered, keep the transaction for Timer J past now as well; the expiry is
        # reset by respond().
        self._server[key] = (now + 64 * self.timers.t1, _ServerTx(peer))
        return [RequestReceived(key, request, peer)]

    def _receive_response(self, response: Response, peer: Peer, now: float) -> list[Event]:
        via = response.top_via
        _, method = response.cseq
        if method in ("INVITE", "ACK", "CANCEL"):
            return [ResponseReceived(None, response, peer, response.status >= 200)]
        key = (via.branch or "", method)
        tx = self._client.get(key)
        if tx is None or tx.done:
            self.stray_responses += 1
            return []
        if response.status < 200:
            tx.provisional = True
            tx.interval = self.timers.t2
            return [ResponseReceived(key, response, peer, False)]
        tx.done = True
        # Timer K: keep the key a while so retransmitted final responses are absorbed.
        linger = 0.0 if tx.peer.reliable else self.timers.t4
        self._push_timer(now + linger, key)
        return [ResponseReceived(key, response, peer, True)]

    # ----- server side -----
    def respond(self, key: ServerKey | None, response: Response, peer: Peer, now: float) -> None:
        """Send `response`; for a transaction key, cache it to answer retransmissions."""
        data = response.to_bytes()
        if key is not None:
            entry = self._server.get(key)
            if entry is not None:
                tx = entry[1]
                tx.response = data
                if response.status >= 200:
                    # Timer J: 64*T1 on UDP, zero on reliable transports (17.2.2).
                    if peer.reliable:
                        del self._server[key]
                    else:
                        self._server[key] = (now + 64 * self.timers.t1, tx)
                        self._server.move_to_end(key)
        self._out.append(Outgoing(data, peer))

    def send_raw(self, data: bytes, peer: Peer) -> None:
        self._out.append(Outgoing(data, peer))

    # ----- client side -----
    def request(self, request: Request, peer: Peer, now: float) -> ClientKey:
        """Start a client transaction; the request must carry a Via with a unique branch."""
        via = request.top_via
        if not (via.branch or "").startswith(MAGIC_COOKIE):
            raise LocalProtocolError("client requests need an RFC 3261 branch")
        key = (via.branch or "", request.method)
        if key in self._client:
            raise LocalProtocolError(f"branch {key[0]} already in use")
        if len(self._client) >= self.max_client_transactions:
            raise LocalProtocolError("too many client transactions in progress")
        data = request.to_bytes()
        tx = _ClientTx(request, data, peer, self.timers.t1, now + 64 * self.timers.t1)
        self._client[key] = tx
        self._out.append(Outgoing(data, peer))
        if peer.reliable:
            self._push_timer(tx.deadline_f, key)
        else:
            self._push_timer(now + tx.interval, key)
        return key

    def cancel(self, key: ClientKey) -> None:
        """Forget a client transaction (its owner went away); no event will follow."""
        self._client.pop(key, None)

    # ----- timers -----
    def _push_timer(self, when: float, key: ClientKey) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), key))

    def next_deadline(self) -> float | None:
        """When `handle_timer` must run next for the client side.

        Completed server transactions are released lazily (on `receive` and `expire`), since
        holding one a little past Timer J is harmless and saves a timer per transaction.
        """
        return self._timers[0][0] if self._timers else None

    def expire(self, now: float) -> None:
        """Release server transactions whose Timer J has run out."""
        self._expire_server(now)

    def handle_timer(self, now: float) -> list[Event]:
        self._expire_server(now)
        events: list[Event] = []
        while self._timers and self._timers[0][0] <= now:
            _, _, key = heapq.heappop(self._timers)
            tx = self._client.get(key)
            if tx is None:
                continue
            if tx.done:
                del self._client[key]
                continue
            if now >= tx.deadline_f:
                del self._client[key]
                events.append(TransactionTimedOut(key, tx.request, tx.peer))
                continue
            if tx.peer.reliable:
                self._push_timer(tx.deadline_f, key)
                continue
            # Timer E: retransmit, doubling up to T2 (T2 at once after a provisional).
            self._out.append(Outgoing(tx.data, tx.peer))
            tx.interval = self.timers.t2 if tx.provisional else min(tx.interval * 2, self.timers.t2)
            self._push_timer(min(now + tx.interval, tx.deadline_f), key)
        return events

    def _expire_server(self, now: float) -> None:
        server = self._server
        while server:
            key, (deadline, _) = next(iter(server.items()))
            if deadline > now:
                break
            del server[key]

    # ----- output -----
    def datagrams_to_send(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    @property
    def server_transaction_count(self) -> int:
        return len(self._server)

    @property
    def client_transaction_count(self) -> int:
        return len(self._client)
