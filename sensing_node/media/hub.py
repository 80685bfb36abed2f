"""Live streams: INVITE sessions with devices, and the stream hub that shares them.

One `LiveStream` per channel pulls the device's PS-over-RTP stream (GB/T 28181-2016 9.2, live
play with `s=Play`) and hands it to any number of `Consumer`s: the recorder, the cascade, a web
preview. The first subscriber starts the INVITE; when the last one leaves, the stream lingers for
`media.linger_s` and then ends with BYE.

An attempt goes: allocate a port (UDP, or TCP for the two TCP modes) and an SSRC (`y=`, unique
among running streams), INVITE with the SDP offer and the Subject header, wait for the final
answer (`media.answer_timeout_s`, then CANCEL), build the dialog from the 2xx, ACK, and watch the
media. The device's answer is taken as devices really send it: its own `y=` wins over ours, a
missing `y=` means the SSRC is learnt from the first packet, and for UDP the media may come from
the SDP address or from the device's signalling address (NAT). Where the answer contradicts the
offer (another transport, no `a=setup`, no usable `c=`), the offer decides and the device gets a
quirk in the registry. Which transport an attempt uses is `StreamHub.transport_plan`'s choice;
one that fails in a way another could avoid moves the stream on to the next.

A stream ends an attempt when no media came for `media.timeout_s` (also right after the ACK), when
the device hangs up (BYE) or closes the TCP media connection. While somebody still consumes it,
the stream is invited again with exponential backoff; the reason stays visible in the API
(`last_error`) and in the list of ended sessions. Each attempt releases its port and SSRC.

Per packet, the stream only checks the sequence number and adds the payload to its frame (and
hands it to the consumers that asked for RTP payloads); the PS is demuxed once per frame, and
everything else happens per frame or on the hub's half-second tick. A consumer must not block:
`on_unit` is called on the event loop, and one that raises is counted, not allowed to disturb the
others. `FrameQueue` is the consumer for asynchronous readers: bounded, it drops frames up to
the next keyframe when its reader falls behind.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rtp.ps import AccessUnit
from rtp.sps import find_video_format
from sip.dialog import Dialog
from sip.errors import SipError
from sip.headers import Headers
from sip.message import Request, Response
from sip.sdp import SessionDescription, build_sdp, gb_ssrc, parse_sdp, play_offer, subject_header
from sip.transaction import Peer, RequestReceived, ResponseReceived

from .registry import Device, Registry, iso
from .settings import TRANSPORTS, NodeSettings, Settings
from .supervise import Supervisor
from .transport.rtp import (
    MediaIngest,
    PortPool,
    PortsExhausted,
    RtpReceiveConfig,
    TcpRtpReceiver,
    UdpRtpReceiver,
)
from .transport.sip import SipEndpoint, TransactionTimeout

__all__ = ["Consumer", "FrameQueue", "LiveStream", "StreamError", "StreamHub"]

log = logging.getLogger(__name__)

TICK_S = 0.5
ACK_CACHE_S = 32.0  # 64*T1: how long a 2xx to our INVITE may be retransmitted
GOP_MAX_BYTES = 32 * 1024 * 1024
GOP_MAX_UNITS = 2000
ENDED_KEPT = 100


class StreamError(Exception):
    """A stream could not be started. `status` is the HTTP status the API answers with
    (404 unknown channel, 409 device offline, 502 refused by the device, 503 no resources,
    504 no answer); `sip_status` is the device's SIP status when it sent one."""

    def __init__(
        self, status: int, reason: str, sip_status: int | None = None, *,
        transport_fault: bool = False,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.sip_status = sip_status
        #: another transport could avoid it (a refused or timed-out connect, 488)
        self.transport_fault = transport_fault


class Consumer:
    """What subscribes to a live stream. Override what you need; every call is on the loop and
    must return quickly.

    :cvar persistent: keep the stream pulled through failures (a recorder); others are dropped
        when the attempt they wait for fails.
    :cvar wants_rtp: also call `on_rtp` with every RTP payload, in sequence order.
    """

    name = "consumer"
    persistent = False
    wants_rtp = False

    def on_unit(self, unit: AccessUnit) -> None:
        """A demuxed frame; `unit.ps_bytes` are the original PS bytes that carried it."""

    def on_rtp(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        """An RTP payload, valid only during the call."""

    def on_loss(self, packets: int) -> None:
        """`packets` RTP packets never arrived; the frames around them may be damaged."""

    def on_gap(self, reason: str) -> None:
        """The media stopped (`reason`); the stream is being invited again."""

    def on_end(self, reason: str) -> None:
        """The stream ended for good for this consumer."""


class FrameQueue(Consumer):
    """A bounded frame queue for an asynchronous reader (`await get()`).

    When the reader falls `maxsize` frames or `max_bytes` bytes (a unit's elementary data and
    its PS bytes) behind, frames are dropped (and counted) until the next video keyframe, so the
    reader resumes with a decodable picture and the ingest never waits. `get()` raises
    `EOFError` with the reason once the stream has ended.
    """

    name = "queue"

    def __init__(self, maxsize: int = 250, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.items: deque[AccessUnit] = deque()
        self.bytes = 0
        self.dropped = 0
        self.ended: str | None = None
        self._skipping = False
        self._waiter: asyncio.Future[None] | None = None

    def on_unit(self, unit: AccessUnit) -> None:
        if self._skipping:
            if not (unit.keyframe and unit.stream_id >= 0xE0):
                self.dropped += 1
                return
            self._skipping = False
        size = len(unit.data) + len(unit.ps_bytes)
        if len(self.items) >= self.maxsize or self.bytes + size > self.max_bytes:
            self.dropped += len(self.items) + 1
            self.items.clear()
            self.bytes = 0
            self._skipping = size > self.max_bytes or not (
                unit.keyframe and unit.stream_id >= 0xE0
            )
            if self._skipping:
                return
        self.items.append(unit)
        self.bytes += size
        self._wake()

    def on_end(self, reason: str) -> None:
        self.ended = reason
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> AccessUnit:
        while not self.items:
            if self.ended is not None:
                raise EOFError(self.ended)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        unit = self.items.popleft()
        self.bytes -= len(unit.data) + len(unit.ps_bytes)
        return unit


class _ApiHold(Consumer):
    """Keeps a stream started with POST /api/channels/{id}/live until DELETE."""

    name = "api"


class LiveStream:
    """The ingest of one channel: its INVITE attempts, receiver, demuxer and consumers."""

    def __init__(
        self, hub: StreamHub, channel_id: str, device_id: str, transport: str,
        fallback: tuple[str, ...] = (), *, pinned: bool = False,
    ) -> None:
        self.hub = hub
        self.channel_id = channel_id
        self.device_id = device_id
        self.transport = transport
        # The transports to go through, in order, when one fails in a way another could avoid;
        # a pinned transport (asked for explicitly) is neither changed nor remembered.
        self.plan = (transport, *(t for t in fallback if t != transport))
        self.pinned = pinned
        self._tried: set[str] = set()  # transports that failed since media last came
        self._transport_fault = False  # the current attempt got no media at all
        self._proven = False  # the current attempt brought a video keyframe
        self.stream = hub.settings.channels.stream_for(channel_id)
        self.consumers: list[Consumer] = []
        self._rtp_consumers: tuple[Consumer, ...] = ()
        self.state = "starting"  # starting | playing | retrying | ended
        self.started_at = hub.wall()
        self.playing_since: float | None = None  # wall time of the current attempt's ACK
        self.last_error: str | None = None
        self.end_reason: str | None = None
        self.attempts = 0
        # The current attempt.
        self.ssrc: str | None = None
        self.ssrc_value: int | None = None
        self.serial: int | None = None
        self.remote: str | None = None
        self.call_id: str | None = None
        self.dialog: Dialog | None = None
        self.peer: Peer | None = None
        self.receiver: UdpRtpReceiver | TcpRtpReceiver | None = None
        self.ingest = MediaIngest(on_units=self._units)
        self._next_seq = -1  # the RTP sequence number expected next; -1 before the first
        self.acked_at: float | None = None  # loop time
        # What the media looks like.
        self.codec: str | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.fps: float | None = None
        self.bitrate_bps: int | None = None
        self.frames = 0
        self.consumer_errors = 0
        self._totals = {"packets": 0, "bytes": 0, "lost": 0, "reordered": 0, "duplicates": 0,
                        "dropped_foreign": 0, "dropped_early": 0}
        self._window: deque[tuple[float, int, int]] = deque(maxlen=11)  # (t, bytes, frames)
        self.gop: list[AccessUnit] = []
        self._gop_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._attempt: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[tuple[str, bool]] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._stop_reason: str | None = None
        self._late_wall: float | None = None
        # (ACK time, video frames) at the last tick, and since when that count stands
        self._video_mark: tuple[float | None, int] = (None, 0)
        self._video_since = 0.0

    # ----- life cycle -----
    def start(self) -> None:
        self._attempt = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"stream {self.channel_id}")

    async def wait_playing(self) -> None:
        """Return once an attempt is playing; raise its StreamError if it fails."""
        if self.state == "playing":
            return
        if self.state == "ended" or self._attempt is None:
            raise StreamError(410, self.end_reason or "stream ended")
        await asyncio.shield(self._attempt)

    def stop(self, reason: str) -> None:
        """End the stream now: BYE if a dialog is up, resources released, consumers told."""
        if self.state == "ended" or self._task is None:
            return
        self._stop_reason = reason
        if self._ended is not None and not self._ended.done():
            self._ended.set_result((reason, True))
        else:
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        hub = self.hub
        loop = asyncio.get_running_loop()
        backoff = hub.backoff_min_s
        reason = "stopped"
        try:
            while True:
                self.attempts += 1
                began = loop.time()
                self._transport_fault = self._proven = False
                try:
                    await self._invite()
                except StreamError as exc:
                    self._teardown(bye=True)
                    self.last_error = reason = exc.reason
                    self._record_ended(exc.reason)
                    if exc.transport_fault and self._fall_back():
                        # Whoever waits for this attempt waits for the next transport.
                        log.warning("stream %s: %s; trying %s", self.channel_id, exc.reason,
                                    self.transport)
                        continue
                    self._settle_attempt(exc)
                    log.warning("stream %s: %s", self.channel_id, exc.reason)
                    if not any(c.persistent for c in self.consumers):
                        return
                except Exception as exc:  # a bug: this attempt ends, never half set up
                    reason = self.last_error = f"internal error: {type(exc).__name__}: {exc}"
                    log.exception("stream %s failed", self.channel_id)
                    self._teardown(bye=True)
                    self._settle_attempt(StreamError(502, reason))
                    self._record_ended(reason)
                    if not any(c.persistent for c in self.consumers):
                        return
                else:
                    self._settle_attempt(None)
                    self._ended = loop.create_future()
                    reason, bye = await self._ended
                    self._ended = None
                    self._teardown(bye=bye)
                    self._record_ended(reason)
                    if self._stop_reason is not None or not self.consumers:
                        return
                    self.last_error = reason
                    if self._transport_fault:
                        self._fall_back()
                    log.warning("stream %s: %s; inviting again (%s) in %.0f s", self.channel_id,
                                reason, self.transport, backoff)
                    if loop.time() - began > hub.backoff_reset_s:
                        backoff = hub.backoff_min_s
                self.state = "retrying"
                self._attempt = loop.create_future()
                for consumer in list(self.consumers):
                    self._call(consumer, consumer.on_gap, reason)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, hub.backoff_max_s)
        except asyncio.CancelledError:
            reason = self._stop_reason or "node stopping"
            self._teardown(bye=True)
            self._record_ended(reason)
        except Exception as exc:  # a bug between attempts: end the stream, never half set up
            reason = self.last_error = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("stream %s failed", self.channel_id)
            self._teardown(bye=True)
            self._record_ended(reason)
        finally:
            # Every way out (a failing teardown too) hangs up and gives the port and the SSRC
            # back; after a teardown that completed this does nothing.
            try:
                self._teardown(bye=True)
            finally:
                self._close(reason)

    def _fall_back(self) -> bool:
        """Move on to the plan's next transport; True if that one has not failed since media
        last came (False: every transport failed, and the round starts again)."""
        if self.pinned or len(self.plan) < 2:
            return False
        self._tried.add(self.transport)
        plan = self.plan
        self.transport = plan[(plan.index(self.transport) + 1) % len(plan)]
        if self.transport in self._tried:
            self._tried.clear()
            return False
        return True

    def _media_came(self) -> None:
        """The attempt's first video keyframe: its transport works for this device."""
        self._proven = True
        self._tried.clear()
        if not self.pinned:
            self.hub.registry.set_media_transport(self.device_id, self.transport)

    def _quirk(self, quirk: str) -> None:
        """The device answered otherwise than asked; the offer decides. Logged once per device
        and kept in the registry (`quirks` in the API)."""
        if self.hub.registry.add_quirk(self.device_id, quirk):
            log.warning("device %s %s; the node keeps to its offer", self.device_id, quirk)

    def unit_wall(self) -> float:
        """The wall time a consumer should give the unit it is handed now: the present, except
        for the units flushed out when an attempt ends, which arrived with the last packet."""
        return self._late_wall if self._late_wall is not None else self.hub.wall()

    def _close(self, reason: str) -> None:
        self.state = "ended"
        self.end_reason = reason
        self._settle_attempt(StreamError(502, reason))
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        consumers, self.consumers = self.consumers, []
        self._rtp_consumers = ()
        for consumer in consumers:
            self._call(consumer, consumer.on_end, reason)
        self.hub._forget(self)
        log.info("stream %s ended: %s", self.channel_id, reason)

    def _settle_attempt(self, error: StreamError | None) -> None:
        attempt = self._attempt
        if attempt is None or attempt.done():
            return
        if error is None:
            attempt.set_result(None)
        else:
            attempt.set_exception(error)
            attempt.exception()  # nobody may be waiting: do not log it as never retrieved

    # ----- consumers -----
    def add(self, consumer: Consumer, *, from_keyframe: bool = True) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if consumer in self.consumers:
            return
        self.consumers.append(consumer)
        self._rtp_consumers = tuple(c for c in self.consumers if c.wants_rtp)
        if from_keyframe:
            for unit in self.gop:
                self._call(consumer, consumer.on_unit, unit)

    def remove(
        self, consumer: Consumer, *, linger: bool = True, reason: str = "no consumers left"
    ) -> None:
        if consumer not in self.consumers:
            return
        self.consumers.remove(consumer)
        self._rtp_consumers = tuple(c for c in self.consumers if c.wants_rtp)
        if self.consumers or self.state == "ended":
            return
        linger_s = self.hub.settings.media.linger_s if linger else 0
        if linger_s > 0:
            loop = asyncio.get_running_loop()
            self._linger = loop.call_later(linger_s, self._linger_over)
        else:
            self.stop(reason)

    def _linger_over(self) -> None:
        self._linger = None
        if not self.consumers:
            self.stop(f"nobody watched for {self.hub.settings.media.linger_s} s")

    def _call(self, consumer: Consumer, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            self._failed(consumer)

    def _failed(self, consumer: Consumer) -> None:
        self.consumer_errors += 1
        if self.consumer_errors == 1:
            log.exception("stream %s: consumer %s failed (further failures only counted)",
                          self.channel_id, consumer.name)

    # ----- media (the hot path) -----
    def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        if seq != self._next_seq:
            if self._next_seq >= 0:
                self._discontinuity((seq - self._next_seq) & 0xFFFF)
        self._next_seq = (seq + 1) & 0xFFFF
        for consumer in self._rtp_consumers:
            self._call(consumer, consumer.on_rtp, payload, seq, ts, marker)
        self.ingest.on_packet(payload, seq, ts, marker)

    def _discontinuity(self, missing: int) -> None:
        """Packets were given up (or the sender restarted its sequence): hand out what was
        complete before the hole, start demuxing afresh, and tell the consumers."""
        self.ingest.restart()
        self.gop, self._gop_bytes = [], 0
        for consumer in list(self.consumers):
            self._call(consumer, consumer.on_loss, missing)

    def _units(self, units: list[AccessUnit]) -> None:
        for unit in units:
            if unit.stream_id >= 0xE0:  # video
                self.frames += 1
                if unit.keyframe:
                    self._keyframe(unit)
                    self.gop, self._gop_bytes = [unit], len(unit.ps_bytes)
                elif self.gop:
                    self._cache(unit)
            elif self.gop:
                self._cache(unit)
            for consumer in self.consumers:
                try:
                    consumer.on_unit(unit)
                except Exception:
                    self._failed(consumer)

    def _cache(self, unit: AccessUnit) -> None:
        self.gop.append(unit)
        self._gop_bytes += len(unit.ps_bytes)
        if self._gop_bytes > GOP_MAX_BYTES or len(self.gop) > GOP_MAX_UNITS:
            self.gop, self._gop_bytes = [], 0  # a GOP this long is not worth caching

    def _keyframe(self, unit: AccessUnit) -> None:
        if not self._proven:
            self._media_came()
        if self.codec != unit.codec or self.width is None:
            self.codec = unit.codec
            if unit.codec in ("h264", "h265"):
                video = find_video_format(unit.codec, unit.data)
                if video is not None:
                    self.width, self.height = video.width, video.height

    # ----- one attempt -----
    async def _invite(self) -> None:
        hub = self.hub
        settings = hub.settings
        device = hub.device_for(self.channel_id)
        self.device_id = device.id
        self.peer = peer = Peer(device.transport, *device.host_port)
        self.serial = hub.allocate_serial()
        self.ssrc = gb_ssrc(settings.node.id, self.serial, history=False)
        self.ssrc_value = int(self.ssrc)
        self.ingest = MediaIngest(on_units=self._units)
        self._next_seq = -1
        self.gop, self._gop_bytes = [], 0
        self.codec = self.width = self.height = None
        port = await self._open_receiver(device)
        offer = play_offer(
            node_id=settings.node.id,
            media_ip=settings.node.media_ip,
            port=port,
            transport=self.transport,
            ssrc=self.ssrc,
            channel_id=self.channel_id,
            stream_number=0 if self.stream == "main" else 1,
        )
        invite = hub.build_invite(device, self.channel_id, peer, offer, self.ssrc)
        self.call_id = invite.call_id
        hub.by_call_id[invite.call_id] = self
        response = await hub.send_invite(invite, peer)
        if response.status >= 300:
            raise StreamError(
                502, f"device answered {response.status} {response.reason}".rstrip(),
                sip_status=response.status, transport_fault=response.status == 488,
            )
        try:
            self.dialog = Dialog.from_2xx(invite, response)
        except SipError as exc:
            raise StreamError(502, f"device sent an unusable 200 OK: {exc}") from None
        if not response.body.strip():
            hub.ack(self.dialog, peer)  # and BYE with the teardown
            raise StreamError(502, "device answered without SDP")
        try:
            answer = parse_sdp(response.body)
            self._expect(answer, device)
        except (SipError, ValueError) as exc:
            hub.ack(self.dialog, peer)
            raise StreamError(502, f"device sent an unusable SDP answer: {exc}") from None
        hub.ack(self.dialog, peer)
        if self.transport == "tcp-active":
            await self._connect(device)
        loop = asyncio.get_running_loop()
        self.acked_at = loop.time()
        self.playing_since = hub.wall()
        self.state = "playing"
        self._window.clear()
        log.info("stream %s playing: %s from %s, SSRC %s", self.channel_id, self.transport,
                 self.remote, self.ssrc)

    async def _connect(self, device: Device) -> None:
        """tcp-active: connect to the port of the answer, at its c= address, and if that
        fails and the device signals from another address, there (a c= it cannot be reached
        at: a private address behind NAT, a wrong one)."""
        assert isinstance(self.receiver, TcpRtpReceiver) and self.remote is not None
        host, _, media_port = self.remote.rpartition(":")
        host = host.strip("[]")
        signalling = device.host_port[0]
        try:
            await self.receiver.connect_tcp(host, int(media_port))
            return
        except TimeoutError as exc:
            error = StreamError(504, f"connect timed out: {exc}", transport_fault=True)
        except (ConnectionError, OSError) as exc:
            error = StreamError(502, f"cannot connect to the device's media port: {exc}",
                                transport_fault=True)
        if host == signalling:
            raise error
        try:
            await self.receiver.connect_tcp(signalling, int(media_port))
        except (ConnectionError, OSError):  # TimeoutError included
            raise error from None
        self._quirk("answers a c= address its media port cannot be reached at")
        self.remote = f"{signalling}:{media_port}"

    async def _open_receiver(self, device: Device) -> int:
        """Bind the attempt's port on node.media_ip. Until the answer, a UDP receiver only
        holds what comes in, and a tcp-passive port takes connections only from the device's
        signalling address (its SDP address is added once the answer names it)."""
        hub = self.hub
        host = hub.media_bind_host
        try:
            if self.transport == "udp":
                udp = await UdpRtpReceiver.open(host, hub.pool, self, hub.receive_config)
                self.receiver = udp
                return udp.port
            tcp = TcpRtpReceiver(self, hub.receive_config)
            self.receiver = tcp
            # tcp-active needs no listener, but its offer still names a port of ours, and
            # holding it keeps the offer truthful; a connection to it is refused.
            peers = (device.host_port[0],) if self.transport == "tcp-passive" else ()
            _, port = await tcp.listen_tcp(host, hub.pool, peers)
            return port
        except PortsExhausted as exc:
            raise StreamError(503, str(exc)) from None
        except OSError as exc:
            raise StreamError(503, f"cannot open an RTP port: {exc}") from None

    def _expect(self, answer: SessionDescription, device: Device) -> None:
        """Point the receiver at what the answer says (the device's y= wins over ours)."""
        video = answer.video or (answer.media[0] if answer.media else None)
        if video is None:
            raise ValueError("no m= line")
        # What contradicts the offer is noted, and the offer decides: media comes over the
        # transport offered, or not at all (then the attempt ends after media.timeout_s).
        if video.is_tcp != (self.transport != "udp"):
            self._quirk(f"answers {video.proto} to a {self.transport} offer")
        elif self.transport != "udp":
            wanted = "passive" if self.transport == "tcp-active" else "active"
            if video.setup is None:
                self._quirk("answers TCP media without a=setup")
            elif video.setup != wanted:
                self._quirk(f"answers a=setup:{video.setup} to a {self.transport} offer")
        address = answer.address
        if address is None or not _usable_address(address):
            self._quirk("answers without a usable c= address")
            address = device.host_port[0]
        self.remote = f"{address}:{video.port}"
        if answer.ssrc_int is not None:
            if answer.ssrc != self.ssrc:
                log.info("stream %s: device chose SSRC %s (offered %s)", self.channel_id,
                         answer.ssrc, self.ssrc)
            self.ssrc, self.ssrc_value = answer.ssrc, answer.ssrc_int
        else:
            self.ssrc_value = None  # learnt from the first packet
        receiver = self.receiver
        hosts = {device.host_port[0], address}
        if isinstance(receiver, UdpRtpReceiver):
            receiver.expect(hosts, self.ssrc_value)
        elif isinstance(receiver, TcpRtpReceiver):
            receiver.expect(self.ssrc_value, hosts if self.transport == "tcp-passive" else None)

    def _teardown(self, *, bye: bool) -> None:
        """Hang up (if asked and a dialog is up) and release the port and the SSRC.

        Safe to call again: what was released is not released twice. The port, the SSRC and
        the Call-ID are released even if hanging up or the final flush fails.
        """
        hub = self.hub
        dialog, self.dialog = self.dialog, None
        receiver, self.receiver = self.receiver, None
        try:
            if bye and dialog is not None and self.peer is not None:
                hub.bye(dialog, self.peer)
            if receiver is not None:
                if receiver.last_packet_at is not None:
                    # What is still held arrived with the last packet, not now.
                    loop = asyncio.get_running_loop()
                    self._late_wall = hub.wall() - (loop.time() - receiver.last_packet_at)
                for key in self._totals:
                    self._totals[key] += getattr(receiver, key)
                receiver.close()  # hands over the packets the reorder buffer still held
                receiver = None
            self.ingest.flush()
        finally:
            if receiver is not None:  # the hang-up failed before it was closed
                receiver.close()
            self._late_wall = None
            if self.serial is not None:
                hub.release_serial(self.serial)
                self.serial = None
            if self.call_id is not None:
                hub.by_call_id.pop(self.call_id, None)
            self.acked_at = None
            self.playing_since = None
            self.gop, self._gop_bytes = [], 0

    def end_attempt(self, reason: str, *, bye: bool = True) -> None:
        """The current attempt is over (timeout, device BYE, closed connection)."""
        if self._ended is not None and not self._ended.done():
            self._ended.set_result((reason, bye))

    def _record_ended(self, reason: str) -> None:
        self.hub.ended.append({
            "channel_id": self.channel_id,
            "device_id": self.device_id,
            "transport": self.transport,
            "ssrc": self.ssrc,
            "reason": reason,
            "started_at": iso(self.started_at, self.hub.settings.node.tz),
            "ended_at": iso(self.hub.wall(), self.hub.settings.node.tz),
        })

    # ----- the hub's tick -----
    def tick(self, now: float) -> None:
        receiver = self.receiver
        if self.state != "playing" or receiver is None or self.acked_at is None:
            return
        timeout = self.hub.settings.media.timeout_s
        last = receiver.last_packet_at
        refusal = self.ingest.demuxer.refusal
        if refusal is not None:
            self.end_attempt(f"unusable media: {refusal}")
        elif isinstance(receiver, TcpRtpReceiver) and receiver.closed.is_set():
            self.end_attempt("the device closed the media connection")
        elif last is None and now - self.acked_at >= timeout:
            self._transport_fault = True  # another transport may bring it
            self.end_attempt(f"no media within {timeout} s after ACK")
        elif last is not None and now - last >= timeout:
            self.end_attempt(f"no media for {timeout} s")
        elif now - self._no_video_since(now) >= timeout:
            # packets come, but nothing in them is a frame (padding, private data, junk)
            self.end_attempt("no video in stream")
        window = self._window
        window.append((now, receiver.bytes, self.frames))
        first = window[0]
        span = now - first[0]
        if span >= 1.0:
            self.bitrate_bps = int((receiver.bytes - first[1]) * 8 / span)
            self.fps = round((self.frames - first[2]) / span, 1)

    def _no_video_since(self, now: float) -> float:
        """Since when the attempt has given no video frame (its ACK, or the last tick that saw
        the frame count move)."""
        mark = (self.acked_at, self.frames)
        if mark != self._video_mark:
            new_attempt = mark[0] != self._video_mark[0]
            self._video_since = self.acked_at if new_attempt and self.acked_at is not None else now
            self._video_mark = mark
        return self._video_since

    def counter(self, name: str) -> int:
        receiver = self.receiver
        return self._totals[name] + (getattr(receiver, name) if receiver is not None else 0)

    def as_json(self) -> dict[str, Any]:
        tz = self.hub.settings.node.tz
        return {
            "channel_id": self.channel_id,
            "device_id": self.device_id,
            "transport": self.transport,
            "stream": self.stream,
            "state": self.state,
            "ssrc": self.ssrc,
            "remote": self.remote,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "bitrate_bps": self.bitrate_bps,
            "packets": self.counter("packets"),
            "lost": self.counter("lost"),
            "reordered": self.counter("reordered"),
            "duplicates": self.counter("duplicates"),
            "dropped_foreign": self.counter("dropped_foreign"),
            "dropped_early": self.counter("dropped_early"),
            "frames": self.frames,
            "consumers": len(self.consumers),
            "started_at": iso(self.started_at, tz),
            "playing_since": iso(self.playing_since, tz),
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


def _usable_address(text: str) -> bool:
    """Whether a c= address is one media can come from: an IP address, not 0.0.0.0 or ::."""
    try:
        return not ipaddress.ip_address(text).is_unspecified
    except ValueError:
        return False


def _is_local_address(host: str) -> bool:
    """Whether `host` is an address of this machine (one a socket can bind)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                           socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
    except OSError as exc:
        return exc.errno != errno.EADDRNOTAVAIL
    return True


def media_bind_host(node: NodeSettings) -> tuple[str, str | None]:
    """Where RTP binds, and a warning when that cannot be node.media_ip.

    `node.media_bind` if set; else `node.media_ip`, the address devices send to, as long as it
    is an address of this host; else (1:1 NAT, a cloud public IP) the SIP host.
    """
    if node.media_bind is not None:
        return node.media_bind, None
    if _is_local_address(node.media_ip):
        return node.media_ip, None
    return node.sip_host, (
        f"node.media_ip {node.media_ip} is not an address of this host (1:1 NAT, a public "
        f"IP?): RTP binds {node.sip_host}, the SIP host; set node.media_bind to choose"
    )


class StreamHub:
    """All live streams of the node, one per channel, and their SIP plumbing."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        endpoint: SipEndpoint,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.endpoint = endpoint
        self.wall = wall
        node = settings.node
        self.pool = PortPool(node.rtp_port_min, node.rtp_port_max)
        self.receive_config = RtpReceiveConfig(
            connect_timeout_s=settings.media.connect_timeout_s
        )
        # RTP is bound where devices are told to send it, whatever address SIP listens on
        # (a wildcard would take packets for this port from any interface), unless that is
        # no address of this host (see media_bind_host).
        self.media_bind_host, warning = media_bind_host(node)
        if warning is not None:
            log.warning("%s", warning)
        self.streams: dict[str, LiveStream] = {}
        self.by_call_id: dict[str, LiveStream] = {}
        self.ended: deque[dict[str, Any]] = deque(maxlen=ENDED_KEPT)
        self.backoff_min_s = 1.0
        self.backoff_max_s = 30.0
        self.backoff_reset_s = 30.0  # an attempt that played this long resets the backoff
        self._serials: set[int] = set()
        self._next_serial = 1
        self._acks: dict[str, tuple[bytes, Peer, float]] = {}  # Call-ID -> our ACK
        self._holds: dict[str, _ApiHold] = {}
        self._tick_task: asyncio.Task[None] | None = None
        self._supervisor = Supervisor()  # replaced by the node's in start()
        self._background: set[asyncio.Future[Any]] = set()
        endpoint.on_response = self.on_response

    # ----- start / stop -----
    def start(self, supervisor: Supervisor | None = None) -> None:
        """Run the ticker (media timeouts, rates) under `supervisor`, restarted if it fails."""
        self._supervisor = supervisor or Supervisor()
        self._tick_task = self._supervisor.spawn("stream ticker", self._ticker)

    async def close(self) -> None:
        for stream in list(self.streams.values()):
            stream.stop("node stopping")
        await asyncio.gather(*(s.wait_closed() for s in list(self.streams.values())))
        if self._background:  # give the BYEs a moment to be answered
            await asyncio.wait(list(self._background), timeout=1.0)
        if self._tick_task is not None:
            self._tick_task.cancel()
            await asyncio.gather(self._tick_task, return_exceptions=True)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time()
            for stream in list(self.streams.values()):
                try:
                    stream.tick(now)
                except Exception as exc:
                    # One stream's fault ends that stream's attempt (invited again while it is
                    # wanted); the others keep their timeouts.
                    self._supervisor.failed("stream ticker", exc, f"stream {stream.channel_id}")
                    stream.end_attempt(f"internal error: {type(exc).__name__}: {exc}")
            for call_id, (_, _, expires) in list(self._acks.items()):
                if expires <= now:
                    del self._acks[call_id]

    # ----- subscribing -----
    def device_for(self, channel_id: str) -> Device:
        device = self.registry.channel_device(channel_id)
        if device is None:
            raise StreamError(404, f"unknown channel {channel_id}")
        if not device.online:
            raise StreamError(409, f"device {device.id} is offline")
        return device

    async def subscribe(
        self,
        channel_id: str,
        consumer: Consumer,
        *,
        transport: str | None = None,
        from_keyframe: bool = True,
    ) -> LiveStream:
        """Join the channel's stream, starting it if needed; returns once it plays.

        `transport` applies only when this call starts the stream (see `transport_plan` for
        the default). Raises StreamError when the stream cannot be started; a persistent
        consumer stays subscribed and the stream keeps trying.
        """
        if transport is not None and transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        stream = self.streams.get(channel_id)
        if stream is None:
            device = self.device_for(channel_id)
            chosen, fallback, pinned = self.transport_plan(channel_id, device, transport)
            stream = LiveStream(self, channel_id, device.id, chosen, fallback, pinned=pinned)
            self.streams[channel_id] = stream
            stream.start()
        stream.add(consumer, from_keyframe=from_keyframe)
        try:
            await stream.wait_playing()
        except StreamError:
            if not consumer.persistent:
                stream.remove(consumer, linger=False)
            raise
        except asyncio.CancelledError:
            stream.remove(consumer, linger=False)
            raise
        return stream

    def transport_plan(
        self, channel_id: str, device: Device, requested: str | None = None
    ) -> tuple[str, tuple[str, ...], bool]:
        """The transport a new stream starts with, the ones to fall back to, and whether it
        is pinned.

        An explicit choice (the API request's `transport`, else `channels.overrides.<id>.
        transport`) is pinned: used for every attempt, never remembered. Otherwise the stream
        starts with `devices.overrides.<id>.transport`, else the transport the device's media
        last came over (remembered in the registry), else `media.transport`, and moves on
        through `media.transport_fallback` when one fails in a way another could avoid.
        """
        settings = self.settings
        explicit = requested or settings.channels.transport_for(channel_id, "")
        if explicit:
            return explicit, (), True
        remembered = device.media_transport if device.media_transport in TRANSPORTS else None
        first = (settings.devices.transport_for(device.id) or remembered
                 or settings.media.transport)
        return first, settings.media.transport_fallback, False

    def unsubscribe(
        self, channel_id: str, consumer: Consumer, *, linger: bool = True,
        reason: str = "no consumers left",
    ) -> None:
        stream = self.streams.get(channel_id)
        if stream is not None:
            stream.remove(consumer, linger=linger, reason=reason)

    async def hold(self, channel_id: str, transport: str | None = None) -> LiveStream:
        """Start (or join) a stream on an operator's request; it runs until `release`."""
        hold = self._holds.get(channel_id)
        if hold is None:
            hold = self._holds[channel_id] = _ApiHold()
        try:
            return await self.subscribe(channel_id, hold, transport=transport)
        except BaseException:
            stream = self.streams.get(channel_id)
            if stream is None or hold not in stream.consumers:
                self._holds.pop(channel_id, None)
            raise

    async def release(self, channel_id: str) -> LiveStream | None:
        """Drop the operator's hold; with no other consumer the stream ends at once (BYE)."""
        hold = self._holds.pop(channel_id, None)
        stream = self.streams.get(channel_id)
        if stream is None:
            return None
        if hold is not None:
            stream.remove(hold, linger=False)
        if not stream.consumers:
            stream.stop("stopped by the operator")
            await stream.wait_closed()
        return stream

    def _forget(self, stream: LiveStream) -> None:
        if self.streams.get(stream.channel_id) is stream:
            del self.streams[stream.channel_id]
        self._holds.pop(stream.channel_id, None)

    # ----- SSRC serials (the last 4 digits of y=) -----
    def allocate_serial(self) -> int:
        for _ in range(9999):
            serial = self._next_serial
            self._next_serial = serial % 9999 + 1
            if serial not in self._serials:
                self._serials.add(serial)
                return serial
        raise StreamError(503, "all 9999 live SSRCs are in use")

    def release_serial(self, serial: int) -> None:
        self._serials.discard(serial)

    # ----- SIP -----
    def build_invite(
        self, device: Device, channel_id: str, peer: Peer, offer: SessionDescription, ssrc: str
    ) -> Request:
        node = self.settings.node
        endpoint = self.endpoint
        host, port = device.host_port
        contact_host = endpoint.advertise_host or endpoint.local[0]
        headers = Headers()
        headers.add("Via", endpoint.via(peer.transport))
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<sip:{node.id}@{node.realm}>;tag={os.urandom(6).hex()}")
        headers.add("To", f"<sip:{channel_id}@{device.id[:10]}>")
        headers.add("Call-ID", f"{os.urandom(10).hex()}@{contact_host}")
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", f"<sip:{node.id}@{contact_host}:{endpoint.local[1]}>")
        headers.add("Subject", subject_header(channel_id, ssrc, node.id, 0))
        headers.add("User-Agent", "sensing-node")
        headers.add("Content-Type", "APPLICATION/SDP")
        uri_host = f"[{host}]" if ":" in host else host
        return Request(
            headers=headers, body=build_sdp(offer), method="INVITE",
            uri=f"sip:{channel_id}@{uri_host}:{port}",
        )

    async def send_invite(self, invite: Request, peer: Peer) -> Response:
        """The final response to `invite`; CANCEL after `media.answer_timeout_s`."""
        timeout = self.settings.media.answer_timeout_s
        future = self.endpoint.request(invite, peer)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self._abandon(invite, peer, future)
            raise StreamError(504, f"no answer to INVITE within {timeout} s") from None
        except asyncio.CancelledError:
            self._abandon(invite, peer, future)
            raise
        except TransactionTimeout:
            raise StreamError(504, "no answer to INVITE (transaction timed out)") from None
        except ConnectionError as exc:
            raise StreamError(502, f"cannot reach the device: {exc}") from None

    def _abandon(self, invite: Request, peer: Peer, future: asyncio.Future[Response]) -> None:
        """Give up on an unanswered INVITE: CANCEL it, and hang up if a 2xx still comes."""
        if not future.done():
            headers = Headers()
            for name in ("Via", "From", "To", "Call-ID"):
                headers.add(name, invite.headers.get(name) or "")
            headers.add("Max-Forwards", "70")
            headers.add("CSeq", f"{invite.cseq[0]} CANCEL")
            cancel = Request(headers=headers, method="CANCEL", uri=invite.uri)
            self._background_request(cancel, peer)

        def answered(done: asyncio.Future[Response]) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            response = done.result()
            if 200 <= response.status < 300:
                try:
                    dialog = Dialog.from_2xx(invite, response)
                except SipError:
                    return
                log.info("late 200 OK for an abandoned INVITE (%s): ACK and BYE", invite.call_id)
                self.ack(dialog, peer)
                self.bye(dialog, peer)

        future.add_done_callback(answered)

    def ack(self, dialog: Dialog, peer: Peer) -> None:
        """ACK a 2xx, and remember the ACK to repeat it for retransmissions of the 2xx."""
        ack = dialog.ack(self.endpoint.via(peer.transport))
        data = ack.to_bytes()
        loop = asyncio.get_running_loop()
        self._acks[dialog.call_id] = (data, peer, loop.time() + ACK_CACHE_S)
        self.endpoint.send(ack, peer)

    def bye(self, dialog: Dialog, peer: Peer) -> None:
        bye = dialog.request("BYE", self.endpoint.via(peer.transport))
        self._background_request(bye, peer)

    def _background_request(self, request: Request, peer: Peer) -> None:
        future = self.endpoint.request(request, peer)
        self._background.add(future)

        def done(fut: asyncio.Future[Response]) -> None:
            self._background.discard(fut)
            if not fut.cancelled() and fut.exception() is not None:
                log.info("%s to %s:%s failed: %s", request.method, peer.host, peer.port,
                         fut.exception())

        future.add_done_callback(done)

    def on_response(self, event: ResponseReceived) -> None:
        """A final response nobody waited for: repeat our ACK for a retransmitted 2xx."""
        response = event.response
        if response.cseq[1] != "INVITE" or not 200 <= response.status < 300:
            return
        cached = self._acks.get(response.call_id)
        if cached is not None:
            data, peer, _ = cached
            self.endpoint.send(data, peer)

    def on_request(self, event: RequestReceived) -> bool:
        """A BYE from a device for one of our streams; False if it belongs to none."""
        request = event.request
        stream = self.by_call_id.get(request.call_id)
        if request.method != "BYE" or stream is None or stream.dialog is None \
                or not stream.dialog.match(request):
            return False
        self.endpoint.respond(event, Response.for_request(request, 200))
        stream.dialog = None  # hung up by the device: no BYE from us
        stream.end_attempt("the device hung up (BYE)", bye=False)
        return True

    # ----- API -----
    def snapshot(self) -> list[dict[str, Any]]:
        return [stream.as_json() for stream in self.streams.values()]
