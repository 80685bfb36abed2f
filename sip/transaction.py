"""SIP transactions (RFC 3261 section 17, with RFC 6026 for INVITE), sans-I/O.

`TransactionLayer` sits between the transport adapters and the application:

* `receive(message, peer, now)` takes a parsed message. A new request becomes a server
  transaction and a `RequestReceived` event; a retransmitted request is absorbed and, once the
  transaction has answered, its cached final response is queued again (17.2.2). A response is
  matched to its client transaction (17.1.3) and becomes a `ResponseReceived` event.
* `respond(key, response, now)` answers a server transaction.
* `request(request, peer, now)` starts a client transaction. A non-INVITE one retransmits over UDP
  on Timer E (T1, doubling up to T2) and gives up on Timer F (64*T1) with `TransactionTimedOut`.
  An INVITE one (17.1.1) retransmits over UDP on Timer A (T1, doubling without a cap) until any
  response, and gives up on Timer B (64*T1). It passes up every 2xx, retransmissions included
  (the TU answers each with its own ACK), until Timer M (RFC 6026 section 7.2); for a 3xx-6xx it
  sends the ACK itself and absorbs retransmissions of that response until Timer D (17.1.1.3).
* `handle_timer(now)` fires due timers; `next_deadline()` says when to call it next.
* `datagrams_to_send()` drains the bytes to put on the wire, each with its `Peer`.

Time is a parameter throughout, so tests drive the layer with a fake clock. There are no INVITE
server transactions yet: received INVITE requests, ACKs and CANCELs pass through as
`RequestReceived` with key None, and so do responses that match no client transaction of ours
when their CSeq method is INVITE, ACK or CANCEL (`ResponseReceived` with key None).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from .errors import LocalProtocolError
from .headers import Headers
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
    "InviteState",
    "ack_for_non_2xx",
    "DEFAULT_MAX_SERVER_BYTES",
    "SERVER_ENTRY_OVERHEAD",
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
    # Timer D: how long an INVITE client transaction over UDP absorbs retransmitted 3xx-6xx
    # responses (at least 32 s, 17.1.1.2); zero on reliable transports.
    timer_d: float = 32.0
    # RFC 3261 stops Timer B once a provisional response arrives and leaves the wait for a final
    # response to the TU, which would CANCEL. We send no CANCEL yet, so a device that answers 1xx
    # and then nothing would hold the transaction forever: bound it as proxies do with Timer C
    # (more than 3 minutes, 16.6 step 11), restarted by each provisional response.
    timer_c: float = 180.0


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
    """A response for a client transaction (`key`), or one that matched none (key None).

    `retransmission` is True only for a 2xx to an INVITE that repeats one already passed up
    (same To tag); the TU answers it with its ACK again.
    """

    key: ClientKey | None
    response: Response
    peer: Peer
    final: bool
    retransmission: bool = False


@dataclass(frozen=True)
class TransactionTimedOut:
    key: ClientKey
    request: Request
    peer: Peer


Event = RequestReceived | ResponseReceived | TransactionTimedOut


class _ServerTx:
    __slots__ = ("size", "response")

    def __init__(self, size: int) -> None:
        self.size = size  # what the entry counts against max_server_bytes
        self.response: bytes | None = None  # last response sent, replayed on retransmission


# What a cached server transaction costs besides the characters of its key and the bytes of its
# response: the OrderedDict entry, the (deadline, tx) pair, the _ServerTx, the key tuple and the
# object headers of its two strings and of the response (tracemalloc and sys.getsizeof on
# CPython 3.11, 64-bit: 337 + 64 + 2 * 49 + 33 bytes).
SERVER_ENTRY_OVERHEAD = 536
# Timer J (32 s) at 15,000 REGISTER transactions per second is 480,000 answered transactions;
# 512 MiB holds them with responses of up to about 540 bytes (a 401 or 200 to a GB/T 28181
# REGISTER is 400 to 500).
DEFAULT_MAX_SERVER_BYTES = 512 * 2**20


def _entry_size(key: ServerKey, response: int) -> int:
    return SERVER_ENTRY_OVERHEAD + len(key[0]) + len(key[1]) + response


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


class InviteState(Enum):
    """States of an INVITE client transaction (RFC 3261 figure 5, RFC 6026 figure 5)."""

    CALLING = "calling"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"


class _InviteClientTx:
    __slots__ = (
        "request", "data", "peer", "state", "interval", "next_a", "deadline", "timer_id", "ack",
        "to_tags",
    )

    def __init__(self, request: Request, data: bytes, peer: Peer, t1: float, now: float):
        self.request = request
        self.data = data
        self.peer = peer
        self.state = InviteState.CALLING
        self.interval = t1
        self.next_a = now + t1  # Timer A, UDP only
        self.deadline = now + 64 * t1  # end of the current state: Timer B, C, M or D
        self.timer_id = -1  # the one heap entry that counts; older entries are stale
        self.ack: bytes | None = None  # the ACK we sent for a 3xx-6xx, re-sent on retransmission
        self.to_tags: set[str] = set()  # To tags of the 2xx responses passed up


def ack_for_non_2xx(invite: Request, response: Response) -> Request:
    """The ACK an INVITE client transaction sends for a 3xx-6xx response (RFC 3261 17.1.1.3).

    Request-URI, Call-ID, From and the top Via (so the branch) come from the INVITE, To (with
    the tag the response added) from the response, the CSeq number from the INVITE with method
    ACK, and Route from the INVITE.
    """
    headers = Headers()
    headers.add("Via", _header(invite, "Via"))
    headers.add("Max-Forwards", invite.headers.get("Max-Forwards") or "70")
    headers.add("From", _header(invite, "From"))
    headers.add("To", _header(response, "To"))
    headers.add("Call-ID", _header(invite, "Call-ID"))
    headers.add("CSeq", f"{invite.cseq[0]} ACK")
    for key, name, value in invite.headers.fields():
        if key == "route":
            headers.add(name, value)
    return Request(headers=headers, method="ACK", uri=invite.uri)


def _header(message: Request | Response, name: str) -> str:
    # The first value: for Via that is the top one, which is all an ACK may carry.
    value = message.headers.get(name)
    if value is None:
        raise LocalProtocolError(f"cannot build an ACK without {name}")
    return value


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
    """Non-INVITE client and server transactions and INVITE client transactions, over any mix
    of UDP and TCP peers."""

    def __init__(
        self,
        timers: TimerValues | None = None,
        *,
        max_server_bytes: int = DEFAULT_MAX_SERVER_BYTES,
        max_server_transactions: int = 2_000_000,
        max_client_transactions: int = 50_000,
    ) -> None:
        self.timers = timers or TimerValues()
        # The server transaction cache is bounded by what it holds (`server_bytes`: each
        # entry's key and cached response plus SERVER_ENTRY_OVERHEAD), the oldest entry going
        # first; the count bound is only a backstop against entries of no size at all.
        self.max_server_bytes = max_server_bytes
        self.max_server_transactions = max_server_transactions
        self.max_client_transactions = max_client_transactions
        # Server transactions in creation order: Timer J has one length for all UDP server
        # transactions, so the oldest is always the first to expire and a FIFO is enough.
        self._server: OrderedDict[ServerKey, tuple[float, _ServerTx]] = OrderedDict()
        self.server_bytes = 0
        self.server_evictions = 0  # entries dropped for room before their Timer J ended
        self._client: dict[ClientKey, _ClientTx | _InviteClientTx] = {}
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
        if not self.receive_key(key, peer, now):
            return []
        return [RequestReceived(key, request, peer)]

    def receive_key(self, key: ServerKey, peer: Peer, now: float) -> bool:
        """The transaction part of `receive` for a non-INVITE request whose server key the
        caller worked out (`fastpath.recognise`): True for a new transaction, which the caller
        answers with `respond` or `respond_bytes`; False for a retransmission, absorbed, its
        cached response (if any yet) queued again to `peer`."""
        entry = self._server.get(key)
        if entry is not None:
            self.absorbed_retransmissions += 1
            tx = entry[1]
            if tx.response is not None:
                self._out.append(Outgoing(tx.response, peer))
            return False
        self._expire_server(now)
        size = _entry_size(key, 0)
        self._make_room(size, 1)
        # Until answered, keep the transaction for Timer J past now as well; the expiry is
        # reset by respond().
        self._server[key] = (now + 64 * self.timers.t1, _ServerTx(size))
        self.server_bytes += size
        return True

    def _make_room(self, size: int, entries: int) -> None:
        """Evict the oldest entries until `entries` more of `size` bytes in all fit."""
        server = self._server
        while server and (self.server_bytes + size > self.max_server_bytes
                          or len(server) + entries > self.max_server_transactions):
            _, (_, tx) = server.popitem(last=False)
            self.server_bytes -= tx.size
            self.server_evictions += 1

    def _receive_response(self, response: Response, peer: Peer, now: float) -> list[Event]:
        via = response.top_via
        _, method = response.cseq
        key = (via.branch or "", method)
        tx = self._client.get(key)
        if isinstance(tx, _InviteClientTx):
            return self._invite_response(key, tx, response, peer, now)
        if tx is None and method in ("INVITE", "ACK", "CANCEL"):
            return [ResponseReceived(None, response, peer, response.status >= 200)]
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
        self.respond_bytes(key, response.status, response.to_bytes(), peer, now)

    def respond_bytes(
        self, key: ServerKey | None, status: int, data: bytes, peer: Peer, now: float
    ) -> None:
        """`respond` with the response already serialised (`data`, of status `status`)."""
        if key is not None:
            entry = self._server.get(key)
            if entry is not None:
                tx = entry[1]
                tx.response = data
                server = self._server
                if status >= 200 and peer.reliable:
                    # Timer J: 64*T1 on UDP, zero on reliable transports (17.2.2).
                    del server[key]
                    self.server_bytes -= tx.size
                else:
                    size = _entry_size(key, len(data))
                    self.server_bytes += size - tx.size
                    tx.size = size
                    if status >= 200:
                        server[key] = (now + 64 * self.timers.t1, tx)
                        server.move_to_end(key)
                    if self.server_bytes > self.max_server_bytes:
                        self._make_room(0, 0)  # the oldest go, this one last of all
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
        if request.method == "ACK":
            raise LocalProtocolError("ACK has no transaction: send it with send_raw")
        data = request.to_bytes()
        if request.method == "INVITE":
            invite = _InviteClientTx(request, data, peer, self.timers.t1, now)
            self._client[key] = invite
            self._out.append(Outgoing(data, peer))
            self._schedule_invite(key, invite)
            return key
        tx = _ClientTx(request, data, peer, self.timers.t1, now + 64 * self.timers.t1)
        self._client[key] = tx
        self._out.append(Outgoing(data, peer))
        if peer.reliable:
            self._push_timer(tx.deadline_f, key)
        else:
            self._push_timer(now + tx.interval, key)
        return key

    def invite_state(self, key: ClientKey) -> InviteState | None:
        """The state of an INVITE client transaction, None once it is gone."""
        tx = self._client.get(key)
        return tx.state if isinstance(tx, _InviteClientTx) else None

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
            _, seq, key = heapq.heappop(self._timers)
            tx = self._client.get(key)
            if tx is None:
                continue
            if isinstance(tx, _InviteClientTx):
                if seq == tx.timer_id:
                    events.extend(self._invite_timer(key, tx, now))
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

    # ----- INVITE client transactions (RFC 3261 17.1.1, RFC 6026 section 7.2) -----
    def _schedule_invite(self, key: ClientKey, tx: _InviteClientTx) -> None:
        """Arm the transaction's single timer: the sooner of Timer A and the state's deadline."""
        when = tx.deadline
        if tx.state is InviteState.CALLING and not tx.peer.reliable:
            when = min(tx.next_a, when)
        tx.timer_id = next(self._seq)
        heapq.heappush(self._timers, (when, tx.timer_id, key))

    def _invite_timer(self, key: ClientKey, tx: _InviteClientTx, now: float) -> list[Event]:
        if now >= tx.deadline:
            # Timer B (Calling), C (Proceeding), M (Accepted) or D (Completed).
            del self._client[key]
            if tx.state in (InviteState.CALLING, InviteState.PROCEEDING):
                return [TransactionTimedOut(key, tx.request, tx.peer)]
            return []
        if tx.state is InviteState.CALLING and not tx.peer.reliable and now >= tx.next_a:
            # Timer A: doubles with no T2 cap (17.1.1.2).
            self._out.append(Outgoing(tx.data, tx.peer))
            tx.interval *= 2
            tx.next_a = now + tx.interval
        # Otherwise a later provisional response moved the deadline on: wait for it.
        self._schedule_invite(key, tx)
        return []

    def _invite_response(
        self, key: ClientKey, tx: _InviteClientTx, response: Response, peer: Peer, now: float
    ) -> list[Event]:
        if tx.state is InviteState.ACCEPTED:
            return self._invite_accepted(key, tx, response, peer)
        if tx.state is InviteState.COMPLETED:
            return self._invite_completed(tx, response)
        return self._invite_calling(key, tx, response, peer, now)

    def _invite_calling(
        self, key: ClientKey, tx: _InviteClientTx, response: Response, peer: Peer, now: float
    ) -> list[Event]:
        """Calling and Proceeding (17.1.1.2): the first responses to the INVITE."""
        status = response.status
        if status < 200:
            # Each provisional response restarts the Proceeding bound; the entry already armed
            # is earlier and re-arms itself when it fires, so the heap does not grow per 1xx.
            tx.deadline = now + self.timers.timer_c
            if tx.state is InviteState.CALLING:
                tx.state = InviteState.PROCEEDING
                self._schedule_invite(key, tx)
            return [ResponseReceived(key, response, peer, False)]
        if status < 300:
            # RFC 6026: stay for Timer M so that 2xx retransmissions (and 2xx from other forks)
            # reach the TU, which ACKs each one; the transaction itself never ACKs a 2xx.
            tx.state = InviteState.ACCEPTED
            tx.deadline = now + 64 * self.timers.t1
            tx.to_tags.add(response.to.tag or "")
            self._schedule_invite(key, tx)
            return [ResponseReceived(key, response, peer, True)]
        tx.state = InviteState.COMPLETED
        tx.ack = ack_for_non_2xx(tx.request, response).to_bytes()
        self._out.append(Outgoing(tx.ack, tx.peer))
        if tx.peer.reliable:
            del self._client[key]  # Timer D is zero: no retransmissions to absorb
        else:
            tx.deadline = now + self.timers.timer_d
            self._schedule_invite(key, tx)
        return [ResponseReceived(key, response, peer, True)]

    def _invite_accepted(
        self, key: ClientKey, tx: _InviteClientTx, response: Response, peer: Peer
    ) -> list[Event]:
        """Accepted (RFC 6026 7.2): pass every 2xx up, drop anything else."""
        if not 200 <= response.status < 300:
            self.absorbed_retransmissions += 1
            return []
        tag = response.to.tag or ""
        seen = tag in tx.to_tags
        tx.to_tags.add(tag)
        return [ResponseReceived(key, response, peer, True, retransmission=seen)]

    def _invite_completed(self, tx: _InviteClientTx, response: Response) -> list[Event]:
        """Completed (17.1.1.2): a repeated final response gets the same ACK again."""
        self.absorbed_retransmissions += 1
        if response.status >= 300 and tx.ack is not None:
            self._out.append(Outgoing(tx.ack, tx.peer))
        return []

    def _expire_server(self, now: float) -> None:
        server = self._server
        while server:
            key, (deadline, tx) = next(iter(server.items()))
            if deadline > now:
                break
            del server[key]
            self.server_bytes -= tx.size

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
