"""A simulated GB/T 28181 camera (IPC or small NVR) for the demo, tests and load checks.

It behaves like a real device: REGISTER with digest auth (answering the 401 challenge, and a
stale nonce), keepalive MESSAGEs on an interval (re-registering after three failures, as
devices do), and answers to Catalog (in several parts), DeviceInfo and DeviceStatus queries,
each as a separate MESSAGE after the 200 OK.

It also answers live-view INVITEs for its channels (docs/gb28181.md section 4): the offer's
transport decides how media flows (`RTP/AVP`: UDP; `TCP/RTP/AVP` with `a=setup:passive`: the
camera connects; `a=setup:active`: the camera listens on the port of its answer), the 200 OK
carries an SDP answer with `y=` (by default the offered SSRC) and `f=`, media starts on the ACK
and stops on BYE; a CANCEL before the answer gets 487. Each dialog streams an encoded test
clip as PS over RTP, paced in real time (`simmedia.MediaSender`). `CameraConfig` has knobs for
the failures a node must survive: another final status, no answer at all, an answer but no
media, another SSRC or none, answers that contradict the offer (another m= proto, no
`a=setup`, a wrong `c=`, no SDP at all), a device that only connects for TCP media or only does
UDP, and `stop_media` for a stream that dies without a BYE.

Like an NVR or an IPC with a memory card, it can hold recordings of its own
(`CameraConfig.records`, the same spans for every channel). `Query/RecordInfo` is answered with
the spans that overlap the asked range, clipped to it, in several MESSAGEs as Hikvision and Dahua
devices split them. An INVITE with `s=Playback` or `s=Download` (`a=downloadspeed:N`) and a `t=`
range that meets a recording is answered like a live one, with `s=` and `t=` repeated; the clip
then plays for the range's length at real time (N times real time for a download), after which
the camera sends `Notify/MediaStatus` 121 in the dialog and waits for the BYE. In-dialog INFO
with MANSRTSP steers it: PAUSE holds the range's clock, PLAY resumes, seeks (to the key frame
at or before the target) and changes the speed with Scale.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo

from sip import auth, manscdp
from sip.dialog import Dialog
from sip.errors import LocalProtocolError, ParseError
from sip.mansrtsp import (
    MansrtspError,
    MansrtspRequest,
    is_mansrtsp,
    mansrtsp_reply,
    parse_mansrtsp,
)
from sip.message import Headers, Request, Response
from sip.playback import media_status, sdp_range_to_unix
from sip.sdp import MediaDescription, Origin, SessionDescription, build_sdp, parse_sdp
from sip.transaction import Peer, RequestReceived

from ..transport.sip import SipEndpoint
from .media import Clip, MediaSender, load_clip

log = logging.getLogger(__name__)

CHINA_TZ = timezone(timedelta(hours=8), "UTC+08:00")
MAX_DOWNLOAD_SPEED = 32  # a=downloadspeed beyond it is served at this speed
#: After its MediaStatus 121, how long a playback waits for the node's BYE before hanging up.
PLAYBACK_BYE_WAIT_S = 30.0
#: How many served playbacks and MANSRTSP requests the camera keeps for inspection.
HISTORY = 100


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
    # Media, and how the camera misbehaves on INVITE (the defaults make a normal device).
    media_codec: str = "h264"
    invite_status: int = 200  # another final status answers every INVITE with it
    answer_invite: bool = True  # False: never answer (the node's INVITE times out)
    answer_delay_s: float = 0.0  # the final answer comes this much after the 100 Trying
    send_media: bool = True  # False: answer and take the ACK, but send nothing
    # None: echo the offered y= (a new one when the offer has none); "": answer without y=;
    # digits: answer and send with this SSRC, as some devices and platforms do.
    answer_ssrc: str | None = None
    # Answers that contradict the offer (the media still flows as offered, unless said):
    answer_sdp: bool = True  # False: a 200 OK without a body
    answer_proto: str | None = None  # the m= proto of the answer, e.g. TCP/RTP/AVP to UDP
    answer_setup: bool = True  # False: a TCP answer without a=setup
    answer_address: str | None = None  # the c= address of the answer, e.g. 0.0.0.0
    ignore_setup: bool = False  # TCP media: always connect, never listen (a=setup ignored)
    udp_only: bool = False  # 488 to a TCP offer
    # Recordings of its own, (start, end) in Unix seconds, the same for every channel. Empty:
    # RecordInfo is answered with SumNum 0 and a Playback INVITE streams the clip like a live
    # one, without end; with spans, a Playback or Download outside them gets 404.
    records: tuple[tuple[float, float], ...] = ()
    tz: tzinfo = CHINA_TZ  # the zone of the device's wall clock, for RecordInfo times
    record_items_per_message: int = 8


@dataclass
class MediaSession:
    """One answered INVITE: a channel streamed under one dialog, keyed by its Call-ID.

    `transport` is the sender's role: "udp", "tcp-connect" (the node listens) or "tcp-listen"
    (the node connects to `local_port`). `remote` is where the offer asked the media to go.
    """

    call_id: str
    channel_id: str
    transport: str
    ssrc: int
    remote: tuple[str, int]
    sender: MediaSender
    local_port: int
    session_name: str = "Play"
    stream_number: int | None = None
    subject: str | None = None
    acked: bool = False
    invite: RequestReceived | None = field(default=None, repr=False)
    response: Response | None = field(default=None, repr=False)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    range: tuple[int, int] | None = None  # a recorded range served, Unix seconds
    speed: float = 1.0  # of a recorded range: 1 for Playback, the download speed for Download
    dialog: Dialog | None = field(default=None, repr=False)  # ours as the callee, for a range


@dataclass(frozen=True)
class _Range:
    """What a Playback or Download INVITE asks for: Unix seconds, and the pace."""

    start: int
    end: int
    speed: float


@dataclass
class _PendingInvite:
    """An INVITE not answered yet (CANCEL can still end it)."""

    event: RequestReceived
    to_tag: str
    task: asyncio.Task[None] | None = None


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
        self.controls: list[manscdp.ManscdpMessage] = []  # DeviceControl received, newest last
        self.last_register_response: Response | None = None
        self._task: asyncio.Task[None] | None = None
        self._call_seq = itertools.count(1)
        self.channel_ids = channel_ids(config.device_id, config.channels)
        if config.answer_ssrc and not (config.answer_ssrc.isascii() and
                                       config.answer_ssrc.isdigit()):
            raise ValueError(f"answer_ssrc must be digits: {config.answer_ssrc!r}")
        if config.record_items_per_message < 1:
            raise ValueError("record_items_per_message must be at least 1")
        for start, end in config.records:
            if not (math.isfinite(start) and math.isfinite(end) and 0 < start < end):
                raise ValueError(f"a record must be (start, end), 0 < start < end: {start}, {end}")
        self.records = sorted(config.records)
        self.media_sessions: dict[str, MediaSession] = {}
        self.invites_received = 0
        self.byes_received = 0
        self._pending: dict[str, _PendingInvite] = {}
        # Final non-2xx answers by Call-ID, re-sent to a retransmitted INVITE for 64*T1.
        self._finals: OrderedDict[str, tuple[float, Response]] = OrderedDict()
        self.record_queries = 0
        # Recorded ranges answered 200: (channel, start, end, s=), the last HISTORY of them.
        self.playbacks: list[tuple[str, int, int, str]] = []
        self.infos: list[MansrtspRequest] = []  # MANSRTSP requests accepted, the last HISTORY
        self.media_statuses_sent = 0
        self._tasks: set[asyncio.Task[None]] = set()

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
        for pending in self._pending.values():
            if pending.task is not None:
                pending.task.cancel()
        self._pending.clear()
        for session in self.media_sessions.values():
            self._end_session(session)
        self.media_sessions.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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

    # ----- requests from the node -----
    def _on_request(self, event: RequestReceived) -> None:
        match event.request.method:
            case "MESSAGE":
                self._on_message(event)
            case "INVITE":
                self._on_invite(event)
            case "ACK":
                self._on_ack(event.request)
            case "BYE":
                self._on_bye(event)
            case "CANCEL":
                self._on_cancel(event)
            case "INFO":
                self._on_info(event)
            case _:
                self.endpoint.respond(event, Response.for_request(event.request, 405,
                                                                  to_tag="sim"))

    def _on_message(self, event: RequestReceived) -> None:
        request = event.request
        try:
            msg = manscdp.parse_manscdp(request.body)
        except ParseError:
            self.endpoint.respond(event, Response.for_request(request, 400, to_tag="sim"))
            return
        self.endpoint.respond(event, Response.for_request(request, 200, to_tag="sim"))
        if msg.root == "Query":
            self.queries_answered[msg.cmd_type] = self.queries_answered.get(msg.cmd_type, 0) + 1
            if msg.cmd_type == "RecordInfo":
                self.record_queries += 1
            asyncio.get_running_loop().create_task(self._answer(msg))
        elif msg.root == "Control" and msg.cmd_type == "DeviceControl":
            self.controls.append(msg)
            del self.controls[:-100]
            # PTZ and the like have no answer; the commands that change a state do (2016 A.2.4)
            if any(name in msg.fields for name in ("RecordCmd", "GuardCmd", "AlarmCmd")):
                body = self._response("DeviceControl", msg.sn, [("Result", "OK")])
                asyncio.get_running_loop().create_task(self._message(body))

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
        elif query.cmd_type == "RecordInfo":
            try:
                bodies = self.record_info_bodies(query)
            except LocalProtocolError as exc:  # a DeviceID that cannot be written back
                log.info("%s: RecordInfo not answered: %s", self.device_id, exc)
                return
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

    # ----- recordings: RecordInfo -----
    def records_in(self, start: float, end: float) -> list[tuple[float, float]]:
        """The recordings that overlap [start, end), clipped to it, in time order."""
        return [(max(s, start), min(e, end)) for s, e in self.records if s < end and e > start]

    def record_info_bodies(self, query: manscdp.ManscdpMessage) -> list[bytes]:
        """The Response/RecordInfo MESSAGE bodies for a query, as a Hikvision or Dahua device
        writes them: one item per recording that overlaps StartTime..EndTime (local times of
        `CameraConfig.tz`), clipped to the range, `record_items_per_message` items a part.

        A channel of another device, or a range that cannot be read, gets SumNum 0.
        """
        cfg = self.config
        channel_id = query.device_id
        index = self._channel_index(channel_id)
        name = cfg.name if index is None else f"{cfg.name} 通道{index}"
        try:
            start = manscdp.parse_gb_time(query.get("StartTime") or "", cfg.tz).timestamp()
            end = manscdp.parse_gb_time(query.get("EndTime") or "", cfg.tz).timestamp()
        except (ValueError, OverflowError) as exc:
            log.info("%s: RecordInfo with a bad range: %s", self.device_id, exc)
            start = end = 0.0
        items: list[dict[str, manscdp.XmlValue]] = []
        for rec_start, rec_end in self.records:
            if index is None or rec_start >= end or rec_end <= start:
                continue
            items.append({
                "DeviceID": channel_id,
                "Name": name,
                "FilePath": self._file_path(index, rec_start),
                "Address": "模拟地址",
                "StartTime": self._gb_time(max(rec_start, start)),
                "EndTime": self._gb_time(min(rec_end, end)),
                "Secrecy": 0,
                "Type": "time",
                "RecorderID": cfg.device_id,
            })  # fmt: skip
        return manscdp.response_parts(
            "RecordInfo", query.sn, channel_id, items, list_name="RecordList",
            fields=[("Name", name)], per_message=cfg.record_items_per_message,
            encoding=cfg.charset,
        )  # fmt: skip

    def _channel_index(self, channel_id: str) -> int | None:
        """1 for the first channel (and for the device itself, as an IPC answers), else None."""
        if channel_id == self.device_id:
            return 1
        if channel_id in self.channel_ids:
            return self.channel_ids.index(channel_id) + 1
        return None

    def _gb_time(self, unix: float) -> str:
        return manscdp.format_gb_time(datetime.fromtimestamp(unix, self.config.tz))

    def _file_path(self, index: int, start: float) -> str:
        """Where the device says the file lies, in its own style: /record/ch1/20261206-1000.mp4."""
        return f"/record/ch{index}/{datetime.fromtimestamp(start, self.config.tz):%Y%m%d-%H%M}.mp4"

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

    # ----- live media: INVITE, ACK, BYE, CANCEL -----
    def _on_invite(self, event: RequestReceived) -> None:
        request = event.request
        call_id = request.call_id
        if self._resend_answer(event):
            return
        if request.to.tag:  # a re-INVITE: keep the session as it is
            session = self.media_sessions.get(call_id)
            if session is None or session.response is None:
                self._reply(event, 481)
            else:
                response = Response.for_request(request, 200)
                self._add_answer(response, session.response.body, session.channel_id)
                self.endpoint.respond(event, response)
            return
        self.invites_received += 1
        channel = self._channel_of(request)
        if channel is None:
            self._reject_invite(event, 404)
            return
        try:
            offer = parse_sdp(request.body)
        except ParseError as exc:
            log.info("%s: INVITE with bad SDP: %s", self.device_id, exc)
            self._reject_invite(event, 400)
            return
        video = offer.video
        encoding = video.rtpmap.get(96, "PS/90000") if video is not None else ""
        if (video is None or offer.address is None or not video.port
                or 96 not in video.formats or not encoding.upper().startswith("PS/")
                or (self.config.udp_only and video.is_tcp)):
            self._reject_invite(event, 488)
            return
        wanted: _Range | None = None
        if offer.session_name in ("Playback", "Download") and self.records:
            try:
                wanted = self._wanted_range(offer, video)
            except (ValueError, LocalProtocolError) as exc:
                log.info("%s: %s INVITE refused: %s", self.device_id, offer.session_name, exc)
                self._reject_invite(event, 400)
                return
            if not self.records_in(wanted.start, wanted.end):
                log.info("%s: no recording of %s in %d..%d", self.device_id, channel,
                         wanted.start, wanted.end)
                self._reject_invite(event, 404)
                return
        pending = _PendingInvite(event, os.urandom(4).hex())
        self._pending[call_id] = pending
        if self.config.answer_invite:
            loop = asyncio.get_running_loop()
            pending.task = loop.create_task(
                self._answer_invite(pending, channel, offer, wanted)
            )

    @staticmethod
    def _wanted_range(offer: SessionDescription, video: MediaDescription) -> _Range:
        """The `t=` range (Unix or NTP seconds) and pace of a Playback or Download offer;
        ValueError or LocalProtocolError when it names no range."""
        start, end = sdp_range_to_unix(offer.timing)
        if start is None or end is None or start >= end:
            raise ValueError(f"t={offer.timing[0]} {offer.timing[1]} is no range")
        speed = 1
        if offer.session_name == "Download":
            text = (video.attribute("downloadspeed") or "1").strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 4 and int(text) > 0):
                raise ValueError(f"bad a=downloadspeed {text[:20]!r}")
            speed = min(int(text), MAX_DOWNLOAD_SPEED)
        return _Range(start, end, float(speed))

    async def _answer_invite(
        self,
        pending: _PendingInvite,
        channel: str,
        offer: SessionDescription,
        wanted: _Range | None = None,
    ) -> None:
        cfg = self.config
        request = pending.event.request
        call_id = request.call_id
        sender: MediaSender | None = None
        try:
            self.endpoint.respond(pending.event, Response.for_request(request, 100))
            if cfg.answer_delay_s > 0:
                await asyncio.sleep(cfg.answer_delay_s)
            if self._pending.get(call_id) is not pending:
                return  # cancelled meanwhile
            if cfg.invite_status != 200:
                self._finish_pending(pending, cfg.invite_status)
                return
            loop = asyncio.get_running_loop()
            clip = await loop.run_in_executor(None, functools.partial(load_clip, cfg.media_codec))
            session_name = offer.session_name or "Play"
            offered = offer.ssrc if offer.ssrc_int is not None else None
            answered = cfg.answer_ssrc if cfg.answer_ssrc else offered
            if answered is None:
                answered = self._new_ssrc(history=session_name != "Play")
            video = offer.video
            assert video is not None and offer.address is not None
            transport = _sender_transport(video)
            if cfg.ignore_setup and transport == "tcp-listen":
                transport = "tcp-connect"  # and connects to a port nobody listens on
            remote = (offer.address, video.port)
            if wanted is None:
                sender = MediaSender(
                    clip, int(answered) & 0xFFFFFFFF, transport, remote,
                    local_host=self._media_host(),
                )
            else:
                sender = RangeSender(
                    clip, int(answered) & 0xFFFFFFFF, transport, remote,
                    seconds=wanted.end - wanted.start, speed=wanted.speed,
                    on_range_out=functools.partial(self._range_out, call_id),
                    local_host=self._media_host(),
                )
            port = await sender.prepare()
        except Exception:
            log.exception("%s: cannot answer INVITE %s", self.device_id, call_id)
            if sender is not None:
                sender.stop()
            if self._pending.get(call_id) is pending:
                self._finish_pending(pending, 500)
            return
        if self._pending.pop(call_id, None) is not pending:
            sender.stop()  # cancelled while the port was being bound
            return
        stream_number = (video.attribute("streamnumber") or "").strip()
        session = MediaSession(
            call_id=call_id,
            channel_id=channel,
            transport=transport,
            ssrc=sender.ssrc,
            remote=remote,
            sender=sender,
            local_port=port,
            session_name=session_name,
            stream_number=int(stream_number) if stream_number.isdigit() else None,
            subject=request.headers.get("Subject"),
            invite=pending.event,
        )
        if wanted is not None:
            session.range = (wanted.start, wanted.end)
            session.speed = wanted.speed
        self._replace_same_subject(session)
        answer = self._answer_sdp(
            session, offer, None if cfg.answer_ssrc == "" else answered, clip
        )
        response = Response.for_request(request, 200, to_tag=pending.to_tag)
        self._add_answer(response, build_sdp(answer) if cfg.answer_sdp else b"", channel)
        session.response = response
        if wanted is not None:
            try:
                session.dialog = Dialog.from_request(request, response)
            except (ParseError, LocalProtocolError) as exc:
                log.info("%s: no dialog for the MediaStatus of %s: %s", self.device_id,
                         call_id, exc)
            self.playbacks.append((channel, wanted.start, wanted.end, session_name))
            del self.playbacks[:-HISTORY]
        self.media_sessions[call_id] = session
        self.endpoint.respond(pending.event, response)
        log.info("%s: INVITE for %s answered (%s, SSRC %d)", self.device_id, channel,
                 transport, session.ssrc)
        self._await_ack(call_id, pending.event.peer.reliable)

    def _answer_sdp(
        self, session: MediaSession, offer: SessionDescription, ssrc: str | None, clip: Clip
    ) -> SessionDescription:
        cfg = self.config
        host = self._media_host()
        if session.transport == "udp":
            proto, attributes = "RTP/AVP", [("sendonly", None), ("rtpmap", "96 PS/90000")]
        else:
            setup = "active" if session.transport == "tcp-connect" else "passive"
            proto = "TCP/RTP/AVP"
            attributes = [("sendonly", None), ("rtpmap", "96 PS/90000")]
            if cfg.answer_setup:
                attributes.append(("setup", setup))
            attributes.append(("connection", "new"))
        video = MediaDescription.from_attributes(
            "video", session.local_port, cfg.answer_proto or proto, [96], attributes
        )
        host = cfg.answer_address or host
        return SessionDescription(
            version=0,
            origin=Origin(session.channel_id, "0", "0", "IN", "IP6" if ":" in host else "IP4",
                          host),
            session_name=session.session_name,
            uri=offer.uri if session.session_name != "Play" else None,
            connection_address=host,
            timing=offer.timing,
            media=[video],
            ssrc=ssrc,
            f=_f_line(clip),
        )

    def _add_answer(self, response: Response, body: bytes, channel: str) -> None:
        response.headers.add("Contact", f"<sip:{channel}@{self._contact_hostport()}>")
        response.headers.add("User-Agent", "sensing-node simulated camera")
        response.headers.add("Content-Type", "application/sdp")
        response.body = body

    def _await_ack(self, call_id: str, reliable: bool) -> None:
        """Re-send the 200 until the ACK (UDP: T1 doubling up to T2), give up after 64*T1.

        RFC 3261 13.3.1.4: the UAS, not a transaction, retransmits a 2xx to INVITE.
        """
        timers = self.endpoint.tx.timers
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 64 * timers.t1

        def tick(interval: float) -> None:
            session = self.media_sessions.get(call_id)
            if session is None or session.acked:
                return
            if loop.time() >= deadline:
                log.info("%s: no ACK for %s, session dropped", self.device_id, call_id)
                self._end_session(self.media_sessions.pop(call_id))
                return
            assert session.invite is not None and session.response is not None
            if not reliable:
                self.endpoint.respond(session.invite, session.response)
            wait = min(2 * interval, timers.t2) if not reliable else deadline - loop.time()
            session.timer = loop.call_later(wait, tick, wait)

        first = timers.t1 if not reliable else 64 * timers.t1
        self.media_sessions[call_id].timer = loop.call_later(first, tick, first)

    def _on_ack(self, request: Request) -> None:
        session = self.media_sessions.get(request.call_id)
        if session is None or session.acked:
            return  # the ACK of a non-2xx, or a repeated one
        session.acked = True
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        if self.config.send_media:
            session.sender.start()

    def _on_bye(self, event: RequestReceived) -> None:
        self.byes_received += 1
        session = self.media_sessions.pop(event.request.call_id, None)
        if session is None:
            self._reply(event, 481)
            return
        self._end_session(session)
        self._reply(event, 200)
        log.info("%s: BYE for %s, %d frames sent", self.device_id, session.channel_id,
                 session.sender.frames_sent)

    def _on_cancel(self, event: RequestReceived) -> None:
        call_id = event.request.call_id
        pending = self._pending.get(call_id)
        if pending is not None and pending.event.request.cseq[0] == event.request.cseq[0]:
            self._reply(event, 200)
            self._finish_pending(pending, 487)
        elif call_id in self.media_sessions or call_id in self._finals:
            self._reply(event, 200)  # answered already: the CANCEL changes nothing
        else:
            self._reply(event, 481)

    async def hang_up(self, call_id: str | None = None) -> list[Response]:
        """End streams from the camera's side with a BYE in each dialog (as a device that is
        rebooting or whose channel went away); returns the node's answers."""
        answers = []
        for session in list(self.media_sessions.values()):
            if call_id is not None and session.call_id != call_id:
                continue
            if session.invite is None or session.response is None:
                continue
            invite = session.invite.request
            self.media_sessions.pop(session.call_id, None)
            self._end_session(session)
            if session.dialog is not None:  # after its MediaStatus: the dialog's next CSeq
                bye = session.dialog.request("BYE", self.endpoint.via(self.config.transport))
                answers.append(await self.endpoint.request(bye, self.server_peer))
                continue
            contact = invite.contacts[0].uri if invite.contacts else None
            headers = Headers()
            headers.add("Via", self.endpoint.via(self.config.transport))
            headers.add("From", session.response.headers.get("To") or "")
            headers.add("To", invite.headers.get("From") or "")
            headers.add("Call-ID", session.call_id)
            headers.add("CSeq", f"{next(self.cseq)} BYE")
            headers.add("Max-Forwards", "70")
            bye = Request(headers=headers, method="BYE",
                          uri=str(contact) if contact else f"sip:{self.config.server_id}")
            answers.append(await self.endpoint.request(bye, self.server_peer))
        return answers

    # ----- recorded ranges: the end, and MANSRTSP -----
    def _range_out(self, call_id: str, sender: MediaSender) -> None:
        """The range has been sent: MediaStatus 121 in the dialog, then wait for the BYE."""
        session = self.media_sessions.get(call_id)
        if session is None or session.sender is not sender or session.dialog is None:
            return
        body = media_status(next(self.sn), session.channel_id, encoding=self.config.charset)
        request = session.dialog.request("MESSAGE", self.endpoint.via(self.config.transport),
                                         body, "Application/MANSCDP+xml")
        self.media_statuses_sent += 1
        log.info("%s: %s of %s sent (%d frames), MediaStatus 121", self.device_id,
                 session.session_name, session.channel_id, sender.frames_sent)
        self._background(self._send_media_status(session, request))

    async def _send_media_status(self, session: MediaSession, request: Request) -> None:
        try:
            response = await self.endpoint.request(request, self.server_peer)
            if response.status != 200:
                log.info("%s: MediaStatus of %s answered %d", self.device_id, session.call_id,
                         response.status)
        except Exception as exc:
            log.info("%s: MediaStatus of %s failed: %s", self.device_id, session.call_id, exc)
        if self.media_sessions.get(session.call_id) is not session:
            return  # the BYE came first

        def no_bye() -> None:
            session.timer = None
            if self.media_sessions.get(session.call_id) is session:
                log.info("%s: no BYE after the MediaStatus of %s", self.device_id,
                         session.call_id)
                self._background(self._hang_up_quietly(session.call_id))

        loop = asyncio.get_running_loop()
        session.timer = loop.call_later(PLAYBACK_BYE_WAIT_S, no_bye)

    async def _hang_up_quietly(self, call_id: str) -> None:
        try:
            await self.hang_up(call_id)
        except Exception as exc:
            log.info("%s: BYE for %s failed: %s", self.device_id, call_id, exc)

    def _background(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_info(self, event: RequestReceived) -> None:
        """MANSRTSP in a playback dialog: 200 with the reply carrying its CSeq; PAUSE, PLAY
        (resume, seek, Scale) and TEARDOWN steer the range's sender."""
        request = event.request
        session = self.media_sessions.get(request.call_id)
        if session is None or session.response is None or not request.to.tag:
            self._reply(event, 481)
            return
        if session.session_name == "Play":
            self.endpoint.respond(event, Response.for_request(request, 405, "Not A Playback"))
            return
        if not is_mansrtsp(request.content_type):
            self._reply(event, 415)
            return
        try:
            control = parse_mansrtsp(request.body)
        except MansrtspError as exc:
            self._info_reply(event, exc.status_hint, exc.reply())
            return
        self.infos.append(control)
        del self.infos[:-HISTORY]
        sender = session.sender
        cseq = control.cseq
        if control.method == "PLAY" and control.scale is not None and control.scale < 0:
            reply = mansrtsp_reply(cseq, 551, "Reverse playback not supported")
            self._info_reply(event, 400, reply)
            return
        if control.method == "PLAY" and control.start is not None and session.range is not None:
            if control.start >= session.range[1] - session.range[0]:
                reply = mansrtsp_reply(cseq, 457, f"npt {control.start:g} is past the range")
                self._info_reply(event, 400, reply)
                return
        if isinstance(sender, RangeSender):
            if control.method == "PAUSE":
                sender.pause()
            elif control.method == "PLAY":
                speed = None if control.scale is None else control.scale * session.speed
                sender.play(seek=control.start, speed=speed)
            else:
                sender.stop()  # TEARDOWN: nothing more is sent; the dialog ends with BYE
        self._info_reply(event, 200, mansrtsp_reply(cseq))

    def _info_reply(self, event: RequestReceived, status: int, body: bytes) -> None:
        response = Response.for_request(event.request, status)
        response.headers.add("Content-Type", "Application/MANSRTSP")
        response.body = body
        self.endpoint.respond(event, response)

    def stop_media(self, call_id: str | None = None) -> None:
        """Stop sending without a BYE, as a camera whose stream dies; dialogs stay up."""
        for session in list(self.media_sessions.values()):
            if call_id is None or session.call_id == call_id:
                session.sender.stop()

    def _end_session(self, session: MediaSession) -> None:
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        session.sender.stop()

    def _replace_same_subject(self, session: MediaSession) -> None:
        """A new INVITE naming a stream already sent replaces it (media keepalive annex)."""
        sender_part = (session.subject or "").split(",")[0]
        if not sender_part:
            return
        for old in list(self.media_sessions.values()):
            if (old.subject or "").split(",")[0] == sender_part:
                self._end_session(self.media_sessions.pop(old.call_id))

    def _resend_answer(self, event: RequestReceived) -> bool:
        """Answer a retransmitted INVITE as before; True if it was one."""
        request = event.request
        call_id = request.call_id
        pending = self._pending.get(call_id)
        if pending is not None:
            if pending.task is not None:  # answering: say so again
                self.endpoint.respond(event, Response.for_request(request, 100))
            return True
        session = self.media_sessions.get(call_id)
        if session is not None and session.response is not None:
            if session.response.cseq == request.cseq and not request.to.tag:
                self.endpoint.respond(event, session.response)
                return True
        final = self._finals.get(call_id)
        if final is not None and final[1].cseq == request.cseq:
            self.endpoint.respond(event, final[1])
            return True
        return False

    def _reject_invite(self, event: RequestReceived, status: int) -> None:
        response = Response.for_request(event.request, status, to_tag=os.urandom(4).hex())
        self._remember_final(event.request.call_id, response)
        self.endpoint.respond(event, response)

    def _finish_pending(self, pending: _PendingInvite, status: int) -> None:
        request = pending.event.request
        self._pending.pop(request.call_id, None)
        response = Response.for_request(request, status, to_tag=pending.to_tag)
        self._remember_final(request.call_id, response)
        self.endpoint.respond(pending.event, response)

    def _remember_final(self, call_id: str, response: Response) -> None:
        now = self.endpoint.loop.time()
        horizon = now - 64 * self.endpoint.tx.timers.t1
        while self._finals and next(iter(self._finals.values()))[0] < horizon:
            self._finals.popitem(last=False)
        self._finals[call_id] = (now, response)

    def _reply(self, event: RequestReceived, status: int) -> None:
        self.endpoint.respond(event, Response.for_request(event.request, status, to_tag="sim"))

    def _channel_of(self, request: Request) -> str | None:
        """The channel an INVITE asks for: the Request-URI user, else the To user."""
        users: list[str | None] = []
        try:
            users.append(request.request_uri.user)
            users.append(request.to.uri.user)
        except ParseError:
            pass
        return next((user for user in users if user in self.channel_ids), None)

    def _new_ssrc(self, *, history: bool) -> str:
        """A y= value as GB/T 28181 App. F builds it, with a random stream number."""
        return f"{1 if history else 0}{self.device_id[3:8]}{random.randrange(10000):04d}"

    def _media_host(self) -> str:
        return self.endpoint.advertise_host or "127.0.0.1"

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


class RangeSender(MediaSender):
    """A recorded range as a camera plays it back: `seconds` of the clip (looped as live does)
    at `speed` times real time, then `on_range_out(sender)` once, and nothing more is sent.

    The range's clock counts frames, so `pause` holds it and `play` carries on from where it
    stood: with `seek` (seconds into the range) from the key frame at or before that point,
    with `speed` at the new pace. Frame n of the range is due `n / (fps * speed)` after the
    range's (re)started clock.
    """

    def __init__(
        self,
        clip: Clip,
        ssrc: int,
        transport: str,
        remote: tuple[str, int] | None = None,
        *,
        seconds: float,
        speed: float = 1.0,
        on_range_out: Callable[[MediaSender], None] | None = None,
        local_host: str = "127.0.0.1",
    ) -> None:
        if not (seconds > 0 and speed > 0 and math.isfinite(seconds) and math.isfinite(speed)):
            raise ValueError("seconds and speed must be positive")
        super().__init__(clip, ssrc, transport, remote, local_host=local_host)
        self.range_frames = max(1, round(seconds * clip.fps))
        self.speed = speed
        self.on_range_out = on_range_out
        self.paused = False
        self.range_out = False

    @property
    def position(self) -> float:
        """Seconds into the range of the next frame to send."""
        return self._index / self.clip.fps

    def pause(self) -> None:
        """Stop sending until `play`; the range's clock stands still meanwhile."""
        if not self._streaming:
            return
        self.paused = True
        self._streaming = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def play(self, *, seek: float | None = None, speed: float | None = None) -> None:
        """Resume after `pause`, and/or move to `seek` seconds into the range, and/or go on at
        `speed` times real time; the next frame goes at once."""
        if self.range_out or self.finished.is_set():
            return
        if speed is not None:
            if not (speed > 0 and math.isfinite(speed)):
                raise ValueError(f"speed must be positive: {speed}")
            self.speed = speed
        if seek is not None:
            self._index = self._key_at_or_before(max(0, math.floor(seek * self.clip.fps)))
        if not (self._streaming or self.paused):
            return  # not flowing yet: the changes apply when it starts
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.paused = False
        self._begin()

    def _key_at_or_before(self, index: int) -> int:
        frames = self.clip.frames
        loops, position = divmod(min(index, self.range_frames - 1), len(frames))
        key = next((i for i in range(position, -1, -1) if frames[i][2]), 0)
        return loops * len(frames) + key

    def _begin(self) -> None:
        assert self._loop is not None
        self._streaming = True
        self._start_time = self._loop.time() - self._index / (self.clip.fps * self.speed)
        self._tick()

    def _tick(self) -> None:
        if self._index >= self.range_frames:
            self._streaming = False
            self._timer = None
            if not self.range_out:
                self.range_out = True
                if self.on_range_out is not None:
                    self.on_range_out(self)
            return
        clip = self.clip
        loops, position = divmod(self._index, len(clip.frames))
        data, pts, keyframe = clip.frames[position]
        self._send_frame(data, pts + loops * clip.duration, keyframe)
        self._index += 1
        if not self._streaming or self._loop is None:
            return
        due = self._start_time + self._index / (clip.fps * self.speed)
        self._timer = self._loop.call_at(due, self._tick)


def _sender_transport(video: MediaDescription) -> str:
    """The camera's role from the offer: `a=setup` names the node's role, we take the other.

    A TCP offer without `a=setup` (or with actpass) leaves the choice to us: front-end devices
    are TCP clients by default (GB/T 28181-2016 App. L).
    """
    if not video.is_tcp:
        return "udp"
    return "tcp-listen" if video.setup == "active" else "tcp-connect"


_RESOLUTIONS = {(176, 144): "1", (352, 288): "2", (704, 576): "3", (720, 576): "4",
                (1280, 720): "5", (1920, 1080): "6"}


def _f_line(clip: Clip) -> str:
    """`f=v/<codec>/<resolution>/<fps>/<rate type>/<kbps>a///`: video only, variable rate."""
    codec = "2" if clip.codec == "h264" else "5"
    resolution = _RESOLUTIONS.get((clip.width, clip.height), f"{clip.width}x{clip.height}")
    return f"v/{codec}/{resolution}/{clip.fps}/2/{clip.kbps}a///"
