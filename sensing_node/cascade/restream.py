"""Re-streaming live video to upstreams: the INVITE sessions an upper platform opens with us.

An upstream's INVITE (`s=Play`) for a channel gets `100 Trying` at once, then the checks in this
order: what the offer asks for (`sip.relay.parse_play_request`: 400/415/488), the channel (404
unknown), its sharing class (403), and the limits (486 with `Warning: 399 <node> "<limit>
(n/max)"`: the upstream's `max_streams`, `limits.max_outgoing_streams`,
`limits.max_sessions_per_channel`). A session counts from its INVITE, so two INVITEs racing for
the last slot cannot both have it. Then the channel's stream is taken from the hub (a running
ingest is shared: the camera is pulled once for recorder, upstreams and viewers) and the 200
goes once it plays, with our SDP: where we send from (or listen), and the upstream's SSRC, or
one we choose when it sent none. A camera that fails answers the upstream with the device's
own status, else 502 (504 when it did not answer); no port left answers 503 with Retry-After.

The node has no INVITE server transaction (see `sip.transaction`), so this module does its
part: a retransmitted INVITE gets the same answer again (100 while pending), never a second
session; our 2xx is retransmitted over UDP until the ACK comes (T1 doubling to T2, given up
after 64*T1 with a BYE); CANCEL before the answer gets 200, the INVITE 487, and nothing stays
behind. The session's media starts with the ACK (`RelaySender.start`).

A session ends with the upstream's BYE, with a camera stream that stops (the upstream gets a
BYE from us, and may INVITE again), or when its sender gives up (the upstream stopped reading or
never connected). Every session, refused ones included, goes into the audit log: upstream,
`Monitor-User-Identity` user, channel, start, end, bytes, how it ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sip.dialog import Dialog
from sip.errors import SipError
from sip.message import Request, Response
from sip.relay import PlayRequest, PlayRequestError, parse_play_request, play_answer, warning_value
from sip.sdp import gb_ssrc
from sip.transaction import Peer, RequestReceived

from ..devices.registry import Registry
from ..media.consumers import StreamError
from ..media.control import MediaControl, RelaySpec
from ..settings import Settings
from ..transport.rtp import PortsExhausted

if TYPE_CHECKING:
    from .links import UpstreamLink

log = logging.getLogger(__name__)

T1 = 0.5
T2 = 4.0
RETRY_AFTER_S = 10
ENDED_KEPT = 100


@dataclass(eq=False)
class RelaySession:
    """One live session an upstream holds."""

    link: UpstreamLink
    invite: Request
    peer: Peer
    key: tuple[str, int]
    started: float  # wall
    user: str | None
    channel_id: str = ""
    play: PlayRequest | None = None
    ssrc: str = ""
    serial: int | None = None
    state: str = "pending"  # pending | answered | confirmed | ended
    final: Response | None = None
    dialog: Dialog | None = None
    relay_id: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # the relay's, once it ended
    cancelled: bool = False
    end_reason: str | None = None
    ended: float | None = None
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None

    def as_json(self, hub: MediaControl | None = None) -> dict[str, Any]:
        stats = self.stats
        if hub is not None and self.relay_id is not None:
            stats = hub.relay_stats(self.relay_id) or stats
        return {
            "upstream": self.link.id,
            "channel_id": self.channel_id,
            "call_id": self.invite.call_id,
            "user": self.user,
            "state": self.state,
            "transport": self.play.transport if self.play else None,
            "ssrc": self.ssrc or None,
            "started": self.started,
            "ended": self.ended,
            "end_reason": self.end_reason,
            "packets": stats.get("packets", 0),
            "bytes": stats.get("bytes", 0),
            "dropped_frames": stats.get("dropped_frames", 0),
            # the camera's packets passed on as they come (else whole frames)
            "cut_through": bool(stats.get("forwarding")),
        }


class Restreamer:
    """The upstreams' live sessions, within the configured limits."""

    def __init__(
        self,
        settings: Settings,
        hub: MediaControl,
        registry: Registry,
        *,
        audit: Callable[..., Coroutine[Any, Any, None]],
        visible: Callable[[str, str], bool],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.visible = visible
        self.hub = hub
        self.registry = registry
        self.audit = audit
        self.wall = wall
        self.node_id = settings.node.id
        self.sessions: dict[tuple[str, int], RelaySession] = {}  # by (Call-ID, CSeq)
        #: sessions held, live or kept a while after they ended (the live ones are fewer
        #: than limits.max_outgoing_streams)
        self.max_sessions = 4 * settings.limits.max_outgoing_streams + 1024
        self.ended: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tag = 0

    # ----- counts -----
    def live(self) -> list[RelaySession]:
        return [s for s in self.sessions.values() if s.state != "ended"]

    def count(
        self, *, upstream: str | None = None, channel: str | None = None,
        besides: RelaySession | None = None,
    ) -> int:
        return sum(
            1 for s in self.live()
            if s is not besides and (upstream is None or s.link.id == upstream)
            and (channel is None or s.channel_id == channel)
        )

    def _limit_hit(self, session: RelaySession) -> str | None:
        """The limit this session would pass, counting every other session running or being
        set up; None within all of them."""
        limits = self.settings.limits
        link, channel_id = session.link, session.channel_id
        held = self.count(upstream=link.id, besides=session)
        if held >= link.settings.max_streams:
            return f"streams of upstream {link.id} ({held}/{link.settings.max_streams})"
        total = self.count(besides=session)
        if total >= limits.max_outgoing_streams:
            return f"outgoing streams of the node ({total}/{limits.max_outgoing_streams})"
        of_channel = self.count(channel=channel_id, besides=session)
        if of_channel >= limits.max_sessions_per_channel:
            return (f"sessions of channel {channel_id} "
                    f"({of_channel}/{limits.max_sessions_per_channel})")
        return None

    # ----- requests -----
    def on_invite(self, link: UpstreamLink, event: RequestReceived) -> None:
        request = event.request
        number, _ = request.cseq
        key = (request.call_id, number)
        session = self.sessions.get(key)
        if session is not None:  # a retransmission: the same answer, not a second session
            response = session.final or Response.for_request(request, 100)
            link.endpoint.send(response, event.peer)
            return
        if request.to.tag:  # a re-INVITE: we offer nothing new
            self._respond(link, event.peer, Response.for_request(request, 488))
            return
        if len(self.sessions) >= self.max_sessions:
            # Ended sessions are kept 64*T1 to answer retransmissions; an upstream sending
            # INVITEs faster than that fills the table: refuse without keeping anything.
            refusal = Response.for_request(request, 503, to_tag="full")
            refusal.headers.add("Retry-After", str(RETRY_AFTER_S))
            self._respond(link, event.peer, refusal)
            return
        session = RelaySession(
            link, request, event.peer, key, self.wall(),
            user=request.headers.get("Monitor-User-Identity"),
        )
        self.sessions[key] = session
        link.endpoint.send(Response.for_request(request, 100), event.peer)
        session.task = asyncio.get_running_loop().create_task(
            self._establish(session), name=f"upstream INVITE {request.call_id}"
        )

    async def _establish(self, session: RelaySession) -> None:
        link = session.link
        try:
            try:
                play = session.play = parse_play_request(session.invite)
            except PlayRequestError as exc:
                self._refuse(session, exc.status, exc.reason)
                return
            session.channel_id = play.channel_id
            if play.session != "Play":
                self._refuse(session, 488, f"s={play.session} is not served here")
                return
            if self.registry.channel_device(play.channel_id) is None:
                self._refuse(session, 404, "Unknown Channel")
                return
            if not self.visible(link.id, play.channel_id):
                self._refuse(session, 403, "Channel Not Shared")
                return
            limit = self._limit_hit(session)
            if limit is not None:
                self._refuse(session, 486, "Busy Here",
                             warning=warning_value(399, self.node_id, limit))
                return
            await self._start_media(session, play)
        except asyncio.CancelledError:
            self._cleanup(session, "cancelled")
            raise
        except Exception as exc:  # a bug: the upstream gets an answer, nothing stays behind
            log.exception("upstream INVITE %s failed", session.invite.call_id)
            if session.final is None:
                self._refuse(session, 500, "Server Internal Error", detail=str(exc))
            else:
                self.end(session, f"internal error: {exc}")

    async def _start_media(self, session: RelaySession, play: PlayRequest) -> None:
        settings = self.settings
        hub = self.hub
        if play.ssrc:
            session.ssrc = play.ssrc
        else:
            try:
                session.serial = hub.allocate_serial()
            except StreamError as exc:
                self._refuse(session, 503, "Service Unavailable", retry=True, detail=exc.reason)
                return
            session.ssrc = gb_ssrc(settings.node.realm, session.serial, history=False)
        spec = RelaySpec(play.channel_id, int(session.ssrc), play.transport,
                         (play.address, play.port))
        try:
            opened = await hub.open_relay(spec, lambda _, reason: self.end(session, reason))
        except (PortsExhausted, OSError) as exc:
            self._refuse(session, 503, "Service Unavailable", retry=True, detail=str(exc))
            return
        except StreamError as exc:
            status, reason = _camera_failure(exc)
            self._refuse(session, status, reason, detail=exc.reason, retry=status == 503)
            return
        if session.cancelled or session.state == "ended":
            hub.close_relay(opened.relay_id, "cancelled")
            self._cleanup(session, "cancelled")
            return
        session.relay_id = opened.relay_id
        port = opened.local_port
        self._answer(session, play, port)

    def _answer(self, session: RelaySession, play: PlayRequest, port: int) -> None:
        link = session.link
        self._tag += 1
        response = Response.for_request(
            session.invite, 200, to_tag=f"{id(self) & 0xFFFF:x}{self._tag:x}"
        )
        contact_host, contact_port = link.config.contact_host, link.config.contact_port
        response.headers.add("Contact", f"<sip:{link.local_id}@{contact_host}:{contact_port}>")
        response.headers.add("Content-Type", "application/sdp")
        response.body = play_answer(
            origin_id=link.local_id, media_ip=self.settings.node.media_ip, port=port,
            transport=play.transport, ssrc=session.ssrc, f=play.f,
        )
        try:
            session.dialog = Dialog.from_request(session.invite, response, first_seq=1)
        except SipError as exc:
            self._refuse(session, 400, "Bad Request", detail=str(exc))
            return
        session.final = response
        session.state = "answered"
        link.endpoint.send(response, session.peer)
        if not session.peer.reliable:
            self._retransmit(session, T1, 0.0)
        else:
            self._arm_ack_timeout(session)
        log.info("upstream %s plays %s over %s (ssrc %s)", link.id, session.channel_id,
                 play.transport, session.ssrc)

    def _retransmit(self, session: RelaySession, interval: float, waited: float) -> None:
        """Resend our 2xx until the ACK (RFC 3261 13.3.1.4); BYE when it never comes."""
        if session.state != "answered":
            return
        if waited >= 64 * T1:
            self.end(session, "no ACK for our 200")
            return
        if waited > 0 and session.final is not None:
            session.link.endpoint.send(session.final, session.peer)
        loop = asyncio.get_running_loop()
        session.timer = loop.call_later(
            interval, self._retransmit, session, min(interval * 2, T2), waited + interval
        )

    def _arm_ack_timeout(self, session: RelaySession) -> None:
        def expire() -> None:
            if session.state == "answered":
                self.end(session, "no ACK for our 200")

        session.timer = asyncio.get_running_loop().call_later(64 * T1, expire)

    def on_ack(self, event: RequestReceived) -> bool:
        request = event.request
        session = self._by_dialog(request)
        if session is None:
            return False  # the ACK of a refusal, or a stray one: nothing to do
        if session.state == "answered":
            session.state = "confirmed"
            if session.timer is not None:
                session.timer.cancel()
                session.timer = None
            if session.relay_id is not None:
                self.hub.start_relay(session.relay_id)
        return True

    def on_cancel(self, link: UpstreamLink, event: RequestReceived) -> None:
        request = event.request
        number, _ = request.cseq
        session = self.sessions.get((request.call_id, number))
        branch = request.top_via.branch
        if session is None or session.invite.top_via.branch != branch:
            self._respond(link, event.peer, Response.for_request(request, 481))
            return
        self._respond(link, event.peer, Response.for_request(request, 200))
        if session.final is not None:
            return  # too late: answered already (the upstream will BYE)
        session.cancelled = True
        self._refuse(session, 487, "Request Terminated")
        if session.task is not None and not session.task.done():
            session.task.cancel()

    def on_bye(self, link: UpstreamLink, event: RequestReceived) -> bool:
        session = self._by_dialog(event.request)
        if session is None:
            return False
        self._respond(link, event.peer, Response.for_request(event.request, 200))
        self.end(session, "upstream hung up (BYE)", bye=False)
        return True

    def _by_dialog(self, request: Request) -> RelaySession | None:
        for session in self.sessions.values():
            if (session.state != "ended" and session.invite.call_id == request.call_id
                    and session.dialog is not None and session.dialog.match(request)):
                return session
        return None

    # ----- endings -----
    def _respond(self, link: UpstreamLink, peer: Peer, response: Response) -> None:
        link.endpoint.send(response, peer)

    def _refuse(
        self, session: RelaySession, status: int, reason: str, *, warning: str | None = None,
        retry: bool = False, detail: str | None = None,
    ) -> None:
        if session.final is not None and session.final.status >= 200:
            return
        response = Response.for_request(session.invite, status, reason,
                                        to_tag=f"r{id(session) & 0xFFFFFF:x}")
        if warning is not None:
            response.headers.add("Warning", warning)
        if retry:
            response.headers.add("Retry-After", str(RETRY_AFTER_S))
        session.final = response
        self._respond(session.link, session.peer, response)
        log.info("upstream %s INVITE for %s refused: %d %s%s", session.link.id,
                 session.channel_id or "?", status, reason, f" ({detail})" if detail else "")
        self._cleanup(session, f"refused: {status} {reason}" + (f" ({detail})" if detail else ""),
                      result="refused")

    def end(self, session: RelaySession, reason: str, *, bye: bool = True) -> None:
        """End a session: BYE to the upstream when it is still up, media stopped. (An INVITE
        still being set up is left alone: the relay's failure reaches `_establish`, which
        answers it with the camera's status.)"""
        if session.state == "ended" or session.final is None:
            return
        dialog = session.dialog
        if bye and dialog is not None and session.state in ("answered", "confirmed"):
            request = dialog.request("BYE", session.link.endpoint.via(session.link.peer.transport))
            self._background(session.link.request(request))
        self._cleanup(session, reason)

    def _cleanup(self, session: RelaySession, reason: str, *, result: str = "ok") -> None:
        if session.state == "ended":
            return
        was_up = session.state in ("answered", "confirmed")
        session.state = "ended"
        session.end_reason = reason
        session.ended = self.wall()
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        if session.relay_id is not None:
            session.stats = self.hub.relay_stats(session.relay_id)
            self.hub.close_relay(session.relay_id, reason)
        if session.serial is not None:
            self.hub.release_serial(session.serial)
            session.serial = None
        task = session.task
        if task is not None and not task.done() and task is not _current_task():
            task.cancel()
        record = session.as_json()
        self.ended.append(record)
        del self.ended[:-ENDED_KEPT]
        if was_up:
            log.info("upstream %s session for %s ended: %s", session.link.id,
                     session.channel_id, reason)
        # Keep the entry a while so that a retransmitted INVITE gets the same final answer.
        loop = asyncio.get_running_loop()
        loop.call_later(64 * T1, self._forget, session)
        actor = f"upstream {session.link.id}" + (f" user {session.user}" if session.user else "")
        detail = (f"{record['transport'] or '-'}, {record['bytes']} bytes, {reason}")
        self._background(self.audit(
            actor=actor, action="upstream_live", channel_id=session.channel_id or None,
            range_start=session.started, range_end=session.ended,
            result=result if result != "ok" or was_up else "error", detail=detail,
        ))

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` on its own; its failure is logged at debug level (a BYE nobody answers,
        an audit write at shutdown)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_quiet)

    def _forget(self, session: RelaySession) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]

    def close(self, reason: str = "node stopping") -> None:
        """End every session: BYE to those up, 503 to INVITEs not answered yet."""
        for session in self.live():
            if session.final is None:
                self._refuse(session, 503, "Service Unavailable", retry=True, detail=reason)
            else:
                self.end(session, reason)

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.as_json(self.hub) for s in self.live()]


def _camera_failure(exc: StreamError) -> tuple[int, str]:
    """The status the upstream gets when the camera's stream could not be started."""
    if exc.sip_status is not None and 400 <= exc.sip_status < 700:
        return exc.sip_status, "Camera Refused"
    if exc.status == 404:
        return 404, "Unknown Channel"
    if exc.status == 504:
        return 504, "Camera Did Not Answer"
    if exc.status == 503:
        return 503, "Service Unavailable"
    return 502, "Camera Unavailable"


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _quiet(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("upstream request failed: %s", task.exception())
