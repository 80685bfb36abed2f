"""One channel's ingest: INVITE attempts, receiver, demuxer, GOP cache and consumers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtp.ps import AccessUnit
from rtp.sps import find_video_format
from sip.dialog import Dialog
from sip.errors import SipError
from sip.sdp import SessionDescription, gb_ssrc, parse_sdp, play_offer
from sip.transaction import Peer

from ..devices.registry import Device, iso
from ..transport.rtp import (
    MediaIngest,
    PortsExhausted,
    TcpRtpReceiver,
    UdpRtpReceiver,
)
from ..transport.single_port import SharedTcpReceiver, SharedUdpReceiver
from .consumers import Consumer, StreamError
from .workers.pool import RemoteReceiver
from .workers.relays import RemoteRelay

if TYPE_CHECKING:
    from .hub import StreamHub

log = logging.getLogger(__name__)


GOP_MAX_BYTES = 32 * 1024 * 1024


GOP_MAX_UNITS = 2000


@dataclass(frozen=True)
class History:
    """What a stream of a device's recordings asks for: `session` Playback or Download, the
    `t=` times as sent, and a Download's speed."""

    session: str
    start: int
    stop: int
    download_speed: int | None = None


class LiveStream:
    """The ingest of one channel: its INVITE attempts, receiver, demuxer and consumers."""

    def __init__(
        self, hub: StreamHub, channel_id: str, device_id: str, transport: str,
        fallback: tuple[str, ...] = (), *, pinned: bool = False,
        history: History | None = None,
    ) -> None:
        self.hub = hub
        #: a playback or download of the device's own recordings instead of live video: one
        #: attempt, never invited again; `on_eof` is called when the device's MediaStatus 121
        #: says its range is out
        self.history = history
        self.on_eof: Callable[[], None] | None = None
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
        self.receiver: UdpRtpReceiver | TcpRtpReceiver | RemoteReceiver | None = None
        self._frames_base = 0  # frames counted before the current remote receiver
        self.ingest = MediaIngest(on_units=self._units)
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
                    if not any(c.persistent for c in self.consumers) or self.history is not None:
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
                    if self._stop_reason is not None or not self.consumers \
                            or self.history is not None:
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
        self._feed()
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
        self._feed()
        if self.consumers or self.state == "ended":
            return
        linger_s = self.hub.settings.media.linger_s if linger else 0
        if linger_s > 0:
            loop = asyncio.get_running_loop()
            self._linger = loop.call_later(linger_s, self._linger_over)
        else:
            self.stop(reason)

    def _feed(self) -> None:
        """A stream a media worker receives: tell it what the consumers need (the frames
        sent over, the channel recorded there, the relays it sends and the WebRTC viewers
        it serves there). Called for each new receiver too, so the relays and viewers follow
        the stream from attempt to attempt."""
        receiver = self.receiver
        if isinstance(receiver, UdpRtpReceiver | TcpRtpReceiver):
            # With no consumer of single packets, `on_packet` is the ingest's frame's
            # `next_seq` and `add`: the receiver's fast path does both itself.
            receiver.attach_fast(None if self._rtp_consumers else self.ingest.frame)
        if isinstance(receiver, RemoteReceiver):
            feeds = {c.remote_feed for c in self.consumers}
            relays = tuple(c.relay_id for c in self.consumers if isinstance(c, RemoteRelay))
            viewers = tuple(getattr(c, "viewer_id", "") for c in self.consumers
                            if c.remote_feed == "viewer")
            receiver.feed("units" in feeds, "record" in feeds, relays, viewers)

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
        # The ingest's frame keeps the RTP sequence number expected next (-1 before the first):
        # a new attempt's ingest starts afresh.
        frame = self.ingest.frame
        if seq != frame.next_seq:
            if frame.next_seq >= 0:
                self._discontinuity((seq - frame.next_seq) & 0xFFFF)
        frame.next_seq = (seq + 1) & 0xFFFF
        for consumer in self._rtp_consumers:
            self._call(consumer, consumer.on_rtp, payload, seq, ts, marker)
        frame.add(payload, seq, ts, marker)

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

    # ----- what a media worker reports (`media.workers` > 1) -----
    def _remote_loss(self, missing: int) -> None:
        """The worker gave packets up; it restarted its demuxer and told its recorder and
        relays."""
        self.gop, self._gop_bytes = [], 0
        for consumer in list(self.consumers):
            if consumer.remote_feed not in ("record", "relay"):
                self._call(consumer, consumer.on_loss, missing)

    def _remote_key(self, codec: str | None, width: int | None, height: int | None) -> None:
        """The attempt's first video keyframe (or one of another codec), seen in the worker."""
        if not self._proven:
            self._media_came()
        self.codec = codec
        if width is not None:
            self.width, self.height = width, height

    def _remote_units(self, units: list[AccessUnit]) -> None:
        """Frames the worker sent over for the consumers here (it counted them)."""
        for unit in units:
            if unit.stream_id >= 0xE0 and unit.keyframe:
                self.gop, self._gop_bytes = [unit], len(unit.ps_bytes)
            elif self.gop:
                self._cache(unit)
            for consumer in self.consumers:
                if consumer.remote_feed == "units":
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
        history = self.history
        self.ssrc = gb_ssrc(settings.node.id, self.serial, history=history is not None)
        self.ssrc_value = int(self.ssrc)
        self.ingest = MediaIngest(on_units=self._units)
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
            session=history.session if history else "Play",
            start=history.start if history else 0,
            stop=history.stop if history else 0,
            download_speed=history.download_speed if history else None,
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
        assert isinstance(self.receiver, (TcpRtpReceiver, RemoteReceiver))
        assert self.remote is not None
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
        signalling address (its SDP address is added once the answer names it).

        In single-port mode (`media.single_port`) no port is bound: the receiver joins the
        node's one port under the SSRC of the offer, and the offer names that port."""
        hub = self.hub
        host = hub.media_bind_host
        mux = hub.single_port
        if mux is not None:
            assert self.ssrc_value is not None
            try:
                await mux.ready()
                if self.transport == "udp":
                    self.receiver = await SharedUdpReceiver.attach(
                        mux, self.ssrc_value, self, hub.receive_config)
                    self._feed()
                    return mux.port
                shared = SharedTcpReceiver(self, hub.receive_config)
                port = shared.attach(mux, self.ssrc_value, (device.host_port[0],)
                                     if self.transport == "tcp-passive" else ())
                self.receiver = shared
                self._feed()
                return port
            except ValueError as exc:  # a device answered another stream with our SSRC
                raise StreamError(503, str(exc)) from None
            except OSError as exc:
                raise StreamError(503, f"the single media port is not open: {exc}") from None
        try:
            if hub.workers is not None:
                peers: tuple[str, ...] | None = None
                if self.transport != "udp":  # see below
                    peers = (device.host_port[0],) if self.transport == "tcp-passive" else ()
                remote = await hub.workers.open_receiver(self, self.transport, host, hub.pool,
                                                         peers)
                self.receiver = remote
                self._frames_base = self.frames
                self._feed()
                return remote.port
            if self.transport == "udp":
                udp = await UdpRtpReceiver.open(host, hub.pool, self, hub.receive_config)
                self.receiver = udp
                self._feed()
                return udp.port
            tcp = TcpRtpReceiver(self, hub.receive_config)
            self.receiver = tcp
            self._feed()
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
        # A receiver on the single port is moved to the answered SSRC by its expect(); one
        # another stream has there makes the answer unusable (ValueError).
        receiver = self.receiver
        hosts = {device.host_port[0], address}
        if isinstance(receiver, UdpRtpReceiver):
            receiver.expect(hosts, self.ssrc_value)
        elif isinstance(receiver, TcpRtpReceiver):
            receiver.expect(self.ssrc_value, hosts if self.transport == "tcp-passive" else None)
        elif isinstance(receiver, RemoteReceiver):
            receiver.expect(hosts, self.ssrc_value,
                            hosts if self.transport == "tcp-passive" else None)

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
        if isinstance(receiver, RemoteReceiver):
            self.frames = self._frames_base + receiver.frames
            refusal = receiver.refusal
        else:
            refusal = self.ingest.demuxer.refusal
        if refusal is not None:
            self.end_attempt(f"unusable media: {refusal}")
        elif not isinstance(receiver, UdpRtpReceiver) and receiver.closed.is_set():
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

    def _late_counts(self, counts: dict[str, int]) -> None:
        """A worker's last counts for a receiver already closed here: they join the stream's
        totals, and the node's if the stream has already ended."""
        for name, count in counts.items():
            self._totals[name] += count
        if self.state == "ended":
            self.hub.count_ended(self, counts)

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
