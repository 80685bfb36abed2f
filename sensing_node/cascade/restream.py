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

from recorder.index import SegmentRow
from sip.dialog import Dialog
from sip.errors import LocalProtocolError, SipError
from sip.mansrtsp import (
    CONTENT_TYPE as MANSRTSP,
)
from sip.mansrtsp import (
    MansrtspError,
    is_mansrtsp,
    mansrtsp_reply,
    parse_mansrtsp,
)
from sip.message import Request, Response
from sip.playback import media_status, sdp_range_to_unix
from sip.relay import PlayRequest, PlayRequestError, parse_play_request, play_answer, warning_value
from sip.sdp import gb_ssrc
from sip.transaction import Peer, RequestReceived

from ..access.policy import AccessPolicy, Session
from ..access.principals import as_upstream
from ..devices.registry import Registry
from ..media.consumers import StreamError
from ..media.control import (
    History,
    MediaControl,
    PlaybackCommand,
    PlaybackSpec,
    RelayOpened,
    RelaySpec,
)
from ..settings import Settings
from ..transport.rtp import PortsExhausted

if TYPE_CHECKING:
    from .links import UpstreamLink

log = logging.getLogger(__name__)

T1 = 0.5
T2 = 4.0
RETRY_AFTER_S = 10
ENDED_KEPT = 100
#: a download's pace is capped here; a larger downloadspeed sends as fast as the link takes
MAX_DOWNLOAD_SPEED = 32
#: MANSRTSP Scale values a playback follows
SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)
#: what each kind of session is, for sharing and grants (a download is a copy: an export)
ACTIONS = {"Play": "live", "Playback": "playback", "Download": "export"}

#: the node's recordings of a channel that overlap a range: (recording root, index rows)
Recordings = Callable[[str, float, float], Coroutine[Any, Any, tuple[str, list[SegmentRow]]]]


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
    #: Play, Playback or Download (the offer's s=)
    kind: str = "Play"
    #: a playback's or download's range, Unix seconds
    range: tuple[float, float] | None = None
    #: where a playback's media comes from: the node's store, or the device's own
    source: str = "store"
    #: the session as the access policy holds it (the grant it rests on, if any)
    grant: Session | None = None

    def as_json(self, hub: MediaControl | None = None) -> dict[str, Any]:
        stats = self.stats
        if hub is not None and self.relay_id is not None:
            stats = hub.relay_stats(self.relay_id) or stats
        record = {
            "upstream": self.link.id,
            "channel_id": self.channel_id,
            "call_id": self.invite.call_id,
            "user": self.user,
            "kind": self.kind,
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
        if self.range is not None:
            record.update(
                range_start=self.range[0], range_end=self.range[1],
                speed=stats.get("speed"), paused=stats.get("paused", False),
                position=stats.get("position"), done=stats.get("done", False),
                gaps=stats.get("gaps", 0), altered=stats.get("altered", []),
                source=self.source,
            )
        return record


class Restreamer:
    """The upstreams' live sessions, within the configured limits."""

    def __init__(
        self,
        settings: Settings,
        hub: MediaControl,
        registry: Registry,
        *,
        audit: Callable[..., Coroutine[Any, Any, None]],
        access: AccessPolicy,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.access = access
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
        #: where playbacks and downloads find the recordings (the recording service's)
        self.recordings: Recordings | None = None
        #: browser viewers of a channel (the console's), counted in max_sessions_per_channel
        self.viewers: Callable[[str], int] = lambda _: 0
        #: after MediaStatus 121 the upstream is to BYE; past this the node does
        self.eof_bye_wait_s = 30.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tag = 0
        self._sn = 0

    def apply_settings(self, settings: Settings) -> None:
        """Take reloaded limits and options: sessions set up from now on are held to them,
        running ones stay."""
        self.settings = settings
        self.max_sessions = 4 * settings.limits.max_outgoing_streams + 1024

    def end_upstream(self, upstream_id: str, reason: str) -> int:
        """End every session of one upstream (BYE; 503 to an INVITE not answered yet); how
        many."""
        ended = 0
        for session in self.live():
            if session.link.id != upstream_id:
                continue
            if session.final is None:
                self._refuse(session, 503, "Service Unavailable", retry=True, detail=reason)
            else:
                self.end(session, reason)
            ended += 1
        return ended

    def move_sessions(self, old: UpstreamLink, new: UpstreamLink) -> None:
        """The upstream registers again (new settings, same address): its sessions go on over
        the new link."""
        for session in self.sessions.values():
            if session.link is old:
                session.link = new

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
        of_channel = self.count(channel=channel_id, besides=session) + self.viewers(channel_id)
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
            session.kind = play.session
            if play.session != "Play":
                try:
                    start, end = sdp_range_to_unix((play.start, play.stop))
                except LocalProtocolError as exc:
                    self._refuse(session, 400, "Bad Request", detail=str(exc))
                    return
                if start is None or end is None or self.recordings is None:
                    self._refuse(session, 488, f"s={play.session} is not served here")
                    return
                session.range = (float(start), float(end))
            elif self.registry.channel_device(play.channel_id) is None:
                self._refuse(session, 404, "Unknown Channel")
                return
            consumer = as_upstream(link.id)
            action = ACTIONS[play.session]
            decision = self.access.decide(consumer, play.channel_id, action)
            if not decision.allowed and not decision.busy:
                self._refuse(session, 403, "Channel Not Shared",
                             warning=warning_value(399, self.node_id, decision.reason))
                return
            limit = self._limit_hit(session)
            if limit is not None:
                self._refuse(session, 486, "Busy Here",
                             warning=warning_value(399, self.node_id, limit))
                return
            opened = self.access.open(consumer, play.channel_id, action,
                                      on_revoke=lambda reason: self.end(session, reason))
            if not isinstance(opened, Session):
                status, phrase = (486, "Busy Here") if opened.busy else (403, "Forbidden")
                self._refuse(session, status, phrase,
                             warning=warning_value(399, self.node_id, opened.reason))
                return
            session.grant = opened
            if session.range is not None:
                await self._start_playback(session, play, session.range)
            else:
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
        """Live video: the channel's stream from the hub."""
        if not self._choose_ssrc(session, play):
            return
        await self._open(session, play, self.hub.open_relay(
            self._relay_spec(session, play), lambda _, reason: self.end(session, reason)))

    def _relay_spec(self, session: RelaySession, play: PlayRequest) -> RelaySpec:
        return RelaySpec(play.channel_id, int(session.ssrc), play.transport,
                         (play.address, play.port))

    async def _open(
        self, session: RelaySession, play: PlayRequest,
        opening: Coroutine[Any, Any, RelayOpened], *, filesize: int | None = None,
    ) -> None:
        """Wait for the relay, then answer the INVITE; a failure is the upstream's answer (503
        without a port, the camera's own status), and a session CANCELled meanwhile gives the
        relay back."""
        try:
            opened = await opening
        except (PortsExhausted, OSError) as exc:
            self._refuse(session, 503, "Service Unavailable", retry=True, detail=str(exc))
            return
        except StreamError as exc:
            status, reason = _camera_failure(exc)
            self._refuse(session, status, reason, detail=exc.reason, retry=status == 503)
            return
        if session.cancelled or session.state == "ended":
            self.hub.close_relay(opened.relay_id, "cancelled")
            self._cleanup(session, "cancelled")
            return
        session.relay_id = opened.relay_id
        self._answer(session, play, opened.local_port, filesize=filesize)

    def _choose_ssrc(self, session: RelaySession, play: PlayRequest) -> bool:
        """The upstream's SSRC, or one of ours (y= of a history stream for a playback); False
        (and 503 sent) when no serial is free."""
        if play.ssrc:
            session.ssrc = play.ssrc
            return True
        try:
            session.serial = self.hub.allocate_serial()
        except StreamError as exc:
            self._refuse(session, 503, "Service Unavailable", retry=True, detail=exc.reason)
            return False
        session.ssrc = gb_ssrc(self.settings.node.realm, session.serial,
                               history=session.range is not None)
        return True

    async def _start_playback(
        self, session: RelaySession, play: PlayRequest, span: tuple[float, float]
    ) -> None:
        """A playback or download of the node's recordings: the segments of the range, a
        sender paced at real time (Playback) or at the download speed."""
        assert self.recordings is not None
        start, end = span
        root, rows = await self.recordings(play.channel_id, start, end)
        if session.cancelled or session.state == "ended":
            return
        if not rows:
            if (self.settings.cascade.device_fallback
                    and self.registry.channel_device(play.channel_id) is not None):
                await self._start_device_playback(session, play)
            else:
                self._refuse(session, 404, "No Recording In Range")
            return
        if not self._choose_ssrc(session, play):
            return
        speed = 1.0
        if play.session == "Download":
            asked = play.download_speed or 1
            speed = float(asked) if asked <= MAX_DOWNLOAD_SPEED else 0.0
        spec = PlaybackSpec(
            play.channel_id, int(session.ssrc), play.transport, (play.address, play.port),
            str(root), tuple(rows), start, end, speed=speed,
            on_altered=self.settings.recording.altered_segments,
        )
        filesize = _range_bytes(rows, start, end) if play.session == "Download" else None
        await self._open(session, play, self.hub.open_playback(
            spec, lambda _, reason: self.end(session, reason), lambda _: self._range_out(session),
        ), filesize=filesize)

    async def _start_device_playback(self, session: RelaySession, play: PlayRequest) -> None:
        """The node holds nothing of the range (`cascade.device_fallback`): the device plays
        its own recording of it, and the node passes it on as it does live video."""
        if not self._choose_ssrc(session, play):
            return
        history = History(play.session, play.start, play.stop,
                          play.download_speed if play.session == "Download" else None)
        session.source = "device"
        await self._open(session, play, self.hub.open_device_playback(
            self._relay_spec(session, play), history,
            lambda _, reason: self.end(session, reason), lambda _: self._range_out(session)))

    def _range_out(self, session: RelaySession) -> None:
        """The range has been sent: MediaStatus 121 in the dialog, then the upstream's BYE is
        awaited (`eof_bye_wait_s`; past it the node ends the session)."""
        dialog = session.dialog
        if session.state == "ended" or dialog is None:
            return
        link = session.link
        self._sn = self._sn % 999_999 + 1
        body = media_status(self._sn, session.channel_id, encoding=link.settings.charset)
        request = dialog.request("MESSAGE", link.endpoint.via(link.peer.transport), body,
                                 "Application/MANSCDP+xml")
        self._background(link.request(request))
        log.info("upstream %s %s of %s: end of range, MediaStatus 121 sent", link.id,
                 session.kind.lower(), session.channel_id)
        if session.timer is not None:
            session.timer.cancel()

        def no_bye() -> None:
            session.timer = None
            self.end(session, "no BYE after the end of the range")

        session.timer = asyncio.get_running_loop().call_later(self.eof_bye_wait_s, no_bye)

    def on_info(self, link: UpstreamLink, event: RequestReceived) -> bool:
        """MANSRTSP on a playback dialog: PLAY (seek, Scale, resume), PAUSE, TEARDOWN. False
        when the INFO belongs to no session of ours (481)."""
        request = event.request
        session = self._by_dialog(request)
        if session is None:
            return False
        if session.range is None or session.relay_id is None:
            self._respond(link, event.peer, Response.for_request(
                request, 405 if session.range is None else 491,
                "Not A Playback" if session.range is None else "Request Pending"))
            return True
        if not is_mansrtsp(request.content_type):
            self._respond(link, event.peer, Response.for_request(request, 415))
            return True
        try:
            control = parse_mansrtsp(request.body)
        except MansrtspError as exc:
            self._info_reply(link, event, exc.status_hint or 400, exc.reason, exc.reply())
            return True
        cseq = control.cseq
        if control.method == "TEARDOWN":
            self._info_reply(link, event, 200, None, mansrtsp_reply(cseq))
            self.end(session, "upstream sent TEARDOWN")
            return True
        if control.method == "PAUSE":
            command = PlaybackCommand("pause")
        else:
            if control.scale is not None and control.scale not in SCALES:
                reason = f"Scale {control.scale:g} not supported (0.5, 1, 2, 4, 8)"
                self._info_reply(link, event, 400, reason, mansrtsp_reply(cseq, 551, reason))
                return True
            seek = None
            if control.start is not None:
                assert session.range is not None
                seek = session.range[0] + control.start
                if seek >= session.range[1]:
                    reason = f"npt {control.start:g} is past the end of the range"
                    self._info_reply(link, event, 400, reason, mansrtsp_reply(cseq, 457, reason))
                    return True
            command = PlaybackCommand("play", seek=seek, speed=control.scale)
        if session.kind == "Download" and (command.seek is not None or command.speed is not None):
            reason = "a download is not steered; PAUSE and PLAY only"
            self._info_reply(link, event, 400, reason, mansrtsp_reply(cseq, 455, reason))
            return True
        self.hub.steer_playback(session.relay_id, command)
        if command.seek is not None and session.timer is not None:
            session.timer.cancel()  # played again after its end: no BYE awaited now
            session.timer = None
        self._info_reply(link, event, 200, None, mansrtsp_reply(cseq))
        log.info("upstream %s steers %s: %s", link.id, session.channel_id,
                 request.body[:80].decode("utf-8", "replace").split("\r")[0].strip())
        return True

    def _info_reply(
        self, link: UpstreamLink, event: RequestReceived, status: int, reason: str | None,
        body: bytes,
    ) -> None:
        response = Response.for_request(event.request, status, reason)
        response.headers.add("Content-Type", MANSRTSP)
        response.body = body
        self._respond(link, event.peer, response)

    def _answer(
        self, session: RelaySession, play: PlayRequest, port: int, *,
        filesize: int | None = None,
    ) -> None:
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
            transport=play.transport, ssrc=session.ssrc, f=play.f, session=play.session,
            start=play.start, stop=play.stop, filesize=filesize,
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
        log.info("upstream %s %s %s over %s (ssrc %s)", link.id,
                 {"Play": "plays", "Playback": "plays back", "Download": "downloads"}[play.session],
                 session.channel_id, play.transport, session.ssrc)

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
        self.access.close(session.grant)
        session.grant = None
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
        detail = f"{record['transport'] or '-'}, {record['bytes']} bytes, {reason}"
        range_start, range_end = session.started, session.ended
        action = "upstream_live"
        if session.range is not None:
            action = f"upstream_{session.kind.lower()}"
            range_start, range_end = session.range
            if record.get("gaps"):
                detail += f"; {record['gaps']} gaps skipped"
            if record.get("altered"):
                detail += "; altered, not sent: " + "; ".join(record["altered"])
                result = "altered" if result == "ok" else result
        self._background(self.audit(
            actor=actor, action=action, channel_id=session.channel_id or None,
            range_start=range_start, range_end=range_end,
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


def _range_bytes(rows: list[SegmentRow], start: float, end: float) -> int:
    """About the bytes a download of `start`..`end` sends: each segment's share of the range,
    in proportion to its time (what `a=filesize` announces, for the upstream's progress)."""
    total = 0.0
    for row in rows:
        span = row.end_wall - row.start_wall
        inside = min(end, row.end_wall) - max(start, row.start_wall)
        if span <= 0:
            total += row.bytes
        elif inside > 0:
            total += row.bytes * min(1.0, inside / span)
    return round(total)


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
