"""The stream hub: one `LiveStream` per channel, shared by every consumer, and the signalling
(INVITE, ACK, BYE, CANCEL) it does for them with the devices."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sip.dialog import Dialog
from sip.errors import ParseError, SipError
from sip.headers import Headers
from sip.mansrtsp import CONTENT_TYPE as MANSRTSP
from sip.mansrtsp import MansrtspRequest, build_mansrtsp
from sip.message import Request, Response
from sip.playback import parse_media_status
from sip.sdp import SessionDescription, build_sdp, subject_header
from sip.transaction import Peer, RequestReceived, ResponseReceived

from ..devices.registry import Device, Registry
from ..runtime.supervise import Supervisor
from ..settings import TRANSPORTS, Settings
from ..transport.rtp import (
    PortPool,
    RtpReceiveConfig,
)
from ..transport.single_port import SinglePortMux
from ..transport.sip import SipEndpoint, TransactionTimeout
from .addresses import media_bind_host
from .consumers import Consumer, StreamError, _ApiHold
from .control import RelayEnded, RelayOpened, RelaySpec
from .overload import MAIN, LoadMeter, OverloadGuard, recorder_backlog
from .playback import PlaybackCommand, PlaybackRelay, PlaybackSpec
from .stream import History, LiveStream
from .workers.pool import MediaWorkers, RemoteReceiver
from .workers.relays import HubRelay, RemoteRelay

log = logging.getLogger(__name__)


TICK_S = 0.5


ACK_CACHE_S = 32.0  # 64*T1: how long a 2xx to our INVITE may be retransmitted


ENDED_KEPT = 100
#: what may wait for a TCP upstream before frames are dropped (about 1 s at 8 Mbit/s)
RELAY_BUFFER_BYTES = 1 << 20
#: relays of one channel that each pass the camera's packets on as they come: one send per
#: packet and relay; beyond this, whole frames in segmented sends (fewer calls, less waiting)
CUT_THROUGH_MAX_RELAYS = 2
#: relays in all that may pass packets on as they come; past it, all send whole frames
CUT_THROUGH_MAX_TOTAL = 32
#: the receive counters a stream leaves to the node's totals when it ends
RTP_TOTALS = ("packets", "bytes", "lost")
#: threads reading recordings for playbacks (file reads and the PS demux, off the loop)
PLAYBACK_READERS = 4


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
        rcvbuf = settings.media.receive_buffer_kib * 1024
        self.pool = PortPool(node.rtp_port_min, node.rtp_port_max, rcvbuf=rcvbuf)
        self.receive_config = RtpReceiveConfig(
            connect_timeout_s=settings.media.connect_timeout_s, rcvbuf=rcvbuf
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
        #: live relays to upstreams (and device playbacks passed on): senders in this
        #: process, or handles on senders in the channel's media worker
        self.relays: dict[int, HubRelay | RemoteRelay] = {}
        self._relay_ends: dict[int, RelayEnded] = {}
        self._relay_seq = 0
        #: RTP counters of the streams that ended, in all and by (channel, device)
        self.ended_totals: Counter[str] = Counter()
        self.ended_by_channel: dict[tuple[str, str], Counter[str]] = {}
        self._mansrtsp_cseq = 0
        self.playbacks: dict[int, PlaybackRelay] = {}
        #: playbacks of a device's own recordings, passed on to an upstream: relay ID -> the
        #: stream from the device (its own, never shared; see open_device_playback)
        self.device_playbacks: dict[int, LiveStream] = {}
        self._playback_reads: ThreadPoolExecutor | None = None
        #: the media worker processes that receive the streams (`media.workers` > 1); None:
        #: this process does
        self.workers: MediaWorkers | None = None
        #: the node's one media port (`media.single_port`), bound in start(); None: a port
        #: of node.rtp_ports per stream
        self.single_port: SinglePortMux | None = None
        endpoint.on_response = self.on_response
        # Overload (media/overload.py): what this process measures, and who decides.
        self.load_meter = LoadMeter(buffer_bytes=self._socket_capacity)
        self._worker_meters: dict[int, LoadMeter] = {}  # with media workers: one for each
        self.overload = OverloadGuard(lambda: self.settings.media.overload,
                                      lambda channel: self.settings.channels.priority_for(channel),
                                      wall=wall)

    # ----- start / stop -----
    def start(self, supervisor: Supervisor | None = None) -> None:
        """Run the ticker (media timeouts, rates) under `supervisor`, restarted if it fails."""
        self._supervisor = supervisor or Supervisor()
        self._tick_task = self._supervisor.spawn("stream ticker", self._ticker)
        port = self.settings.media.single_port
        if port is not None and self.single_port is None:
            # Bound here, so that a port someone else holds stops the node at start rather
            # than failing every stream later.
            self.single_port = SinglePortMux.bind(self.media_bind_host, port,
                                                  self.receive_config.rcvbuf)
            log.info("single media port %s:%d (UDP and TCP), streams told apart by SSRC",
                     self.media_bind_host, port)

    async def close(self) -> None:
        own = list(self.device_playbacks.values())
        for relay_id in [*self.relays, *self.playbacks]:
            self.close_relay(relay_id, "node stopping")
        await asyncio.gather(*(s.wait_closed() for s in own))
        if self._playback_reads is not None:
            self._playback_reads.shutdown(wait=False, cancel_futures=True)
            self._playback_reads = None
        for stream in list(self.streams.values()):
            stream.stop("node stopping")
        await asyncio.gather(*(s.wait_closed() for s in list(self.streams.values())))
        if self._background:  # give the BYEs a moment to be answered
            await asyncio.wait(list(self._background), timeout=1.0)
        if self.workers is not None:
            await self.workers.close(self.wall())
        if self.single_port is not None:
            self.single_port.close()
            self.single_port = None
        if self._tick_task is not None:
            self._tick_task.cancel()
            await asyncio.gather(self._tick_task, return_exceptions=True)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(TICK_S)
            now = loop.time()
            for stream in [*self.streams.values(), *self.device_playbacks.values()]:
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
            # Overload: shed whole streams when a media process cannot keep up
            # (media/overload.py): this one, or each worker by what it reports.
            if self.workers is None:
                load, carried = self.load_meter.sample(now, now - asked - TICK_S,
                                                       self.streams.values())
                victims = self.overload.feed(MAIN, now, load, carried)
            else:
                victims = self._worker_loads(now)
            for channel_id in victims:
                stream = self.streams.get(channel_id)
                if stream is not None:
                    stream.stop(self.overload.reason(channel_id))

    def _socket_capacity(self) -> int:
        """What a stream's UDP socket may queue before the kernel drops: twice the receive
        buffer asked for (Linux's bookkeeping), for the overload guard."""
        return 2 * self.settings.media.receive_buffer_kib * 1024

    def _worker_loads(self, now: float) -> list[str]:
        """Feed the overload guard each worker's load; the channels to shed."""
        assert self.workers is not None
        carried: dict[int, list[LiveStream]] = {w.index: [] for w in self.workers.workers}
        for stream in self.streams.values():
            receiver = stream.receiver
            if isinstance(receiver, RemoteReceiver):
                carried[receiver.worker.index].append(stream)
        victims: list[str] = []
        for worker in self.workers.workers:
            if not worker.alive or not worker.stats:
                continue
            meter = self._worker_meters.get(worker.index)
            if meter is None:
                meter = self._worker_meters[worker.index] = LoadMeter(
                    cpu=lambda w=worker: float(w.stats.get("loop_cpu_s", 0.0)),
                    process_cpu=lambda w=worker: float(w.stats.get("cpu_s", 0.0)),
                    cores=lambda w=worker: int(w.stats.get("cores") or 1),
                    buffer_bytes=self._socket_capacity,
                    recorder_queue=lambda w=worker: recorder_backlog(
                        int((w.stats.get("recorder") or {}).get("queue_bytes") or 0),
                        int((w.stats.get("recorder") or {}).get("queue_depth") or 0)))
            load, streams = meter.sample(now, float(worker.stats.get("max_lag_s") or 0.0),
                                         carried[worker.index])
            victims += self.overload.feed(f"worker {worker.index}", now, load, streams)
        return victims

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
        refused = self.overload.admit(channel_id)  # shed for media overload
        if refused is not None:
            raise StreamError(503, refused)
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
        # What an ended stream received stays in the node's totals (/metrics).
        self.count_ended(stream, {name: stream.counter(name) for name in RTP_TOTALS})
        if self.streams.get(stream.channel_id) is stream:
            del self.streams[stream.channel_id]
            self._holds.pop(stream.channel_id, None)
            if self.workers is not None:
                self.workers.release(stream.channel_id)

    def count_ended(self, stream: LiveStream, counts: dict[str, int]) -> None:
        """Add what an ended stream received to the totals; again for the last counts a
        worker reports after the stream was forgotten."""
        counts = {name: counts[name] for name in RTP_TOTALS if counts.get(name)}
        self.ended_totals.update(counts)
        self.ended_by_channel.setdefault((stream.channel_id, stream.device_id),
                                         Counter()).update(counts)

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

    # ----- relays to upstreams (the control interface, media/control.py) -----
    def _new_relay(self, spec: RelaySpec | PlaybackSpec) -> tuple[int, HubRelay]:
        """A relay ID and the sender of a new relay to an upstream (not opened yet)."""
        media = self.settings.media
        self._relay_seq += 1
        relay_id = self._relay_seq
        sender = HubRelay(
            ssrc=spec.ssrc, transport=spec.transport, remote=spec.remote, port_pool=self.pool,
            bind_host=self.media_bind_host, payload_max=media.rtp_payload_max,
            timeout_s=float(media.timeout_s), connect_timeout_s=media.connect_timeout_s,
            max_buffer_bytes=RELAY_BUFFER_BYTES,
            on_end=lambda reason: self._relay_ended(relay_id, reason),
        )
        sender.channel_id = spec.channel_id
        sender.gap_timeout_s = float(media.timeout_s)
        return relay_id, sender

    async def open_relay(self, spec: RelaySpec, on_end: RelayEnded) -> RelayOpened:
        """With media workers the sender runs in the worker that receives the channel
        (`_open_remote_relay`); otherwise here, a consumer of the channel's stream."""
        if self.workers is not None:
            return await self._open_remote_relay(spec, on_end)
        relay_id, sender = self._new_relay(spec)
        sender.on_stream_lost = lambda reason: self._relay_ended(
            relay_id, f"camera stream stopped: {reason}"
        )
        self.relays[relay_id] = sender
        self._relay_ends[relay_id] = on_end
        self._fan_out()
        try:
            port = await sender.open()
            await self.subscribe(spec.channel_id, sender)
        except BaseException:
            self._drop_relay(relay_id, "not opened")
            raise
        if relay_id not in self.relays:  # ended while the stream started
            raise StreamError(502, sender.end_reason or "relay ended")
        return RelayOpened(relay_id, port)

    async def _open_remote_relay(self, spec: RelaySpec, on_end: RelayEnded) -> RelayOpened:
        """A relay whose sender runs in the channel's media worker: this process binds its
        port (the pool's books stay here), passes it over, and joins the stream with a
        consumer that takes no frames, so the stream stays pulled and its gaps and end reach
        the relay. The worker feeds the sender from the stream it receives, cut-through
        included (`_fan_out`)."""
        assert self.workers is not None
        media = self.settings.media
        self._relay_seq += 1
        relay_id = self._relay_seq
        relay = RemoteRelay(
            relay_id, channel_id=spec.channel_id, ssrc=spec.ssrc, transport=spec.transport,
            remote=spec.remote, port_pool=self.pool, bind_host=self.media_bind_host,
            payload_max=media.rtp_payload_max, timeout_s=float(media.timeout_s),
            connect_timeout_s=media.connect_timeout_s, max_buffer_bytes=RELAY_BUFFER_BYTES,
            gap_timeout_s=float(media.timeout_s),
            on_end=lambda reason: self._relay_ended(relay_id, reason),
            on_stream_lost=lambda reason: self._relay_ended(
                relay_id, f"camera stream stopped: {reason}"),
        )
        self.relays[relay_id] = relay
        self._relay_ends[relay_id] = on_end
        self._fan_out()
        try:
            port = await self.workers.open_relay(relay)
            await self.subscribe(spec.channel_id, relay)
        except BaseException:
            self._drop_relay(relay_id, "not opened")
            if spec.channel_id not in self.streams:  # the relay took the channel's worker
                self.workers.release(spec.channel_id)
            raise
        if relay_id not in self.relays:  # ended while the stream started
            raise StreamError(502, relay.end_reason or "relay ended")
        return RelayOpened(relay_id, port)

    async def open_playback(
        self, spec: PlaybackSpec, on_end: RelayEnded, on_done: Callable[[int], None]
    ) -> RelayOpened:
        relay_id, sender = self._new_relay(spec)
        sender.cut_through = False
        if self._playback_reads is None:
            self._playback_reads = ThreadPoolExecutor(
                PLAYBACK_READERS, thread_name_prefix="playback"
            )
        playback = PlaybackRelay(
            spec, sender, executor=self._playback_reads,
            on_done=lambda: on_done(relay_id),
            on_end=lambda reason: self._relay_ended(relay_id, reason),
        )
        port = await sender.open()  # PortsExhausted, OSError: nothing to undo
        self.playbacks[relay_id] = playback
        self._relay_ends[relay_id] = on_end
        return RelayOpened(relay_id, port)

    async def open_device_playback(
        self, spec: RelaySpec, history: History, on_end: RelayEnded,
        on_done: Callable[[int], None],
    ) -> RelayOpened:
        """A playback or download of the device's own recordings (`history`), passed on to an
        upstream as a live relay is: the device is INVITEd for the range on a stream of this
        relay's own (never shared, never invited again), and its MediaStatus 121 calls
        `on_done`. Raises as `open_relay` does.

        Its sender runs in this process even with media workers (the worker that receives
        the device's stream sends the frames over for it), as do playbacks of the node's
        own recordings (`open_playback`)."""
        device = self.device_for(spec.channel_id)
        relay_id, sender = self._new_relay(spec)
        sender.cut_through = False
        sender.on_stream_lost = lambda reason: self._relay_ended(
            relay_id, f"device playback stopped: {reason}"
        )
        chosen, _, _ = self.transport_plan(spec.channel_id, device, None)
        stream = LiveStream(self, spec.channel_id, device.id, chosen, pinned=True,
                            history=history)
        stream.on_eof = lambda: on_done(relay_id)
        self.device_playbacks[relay_id] = stream
        self._relay_ends[relay_id] = on_end
        try:
            port = await sender.open()
            stream.add(sender)
            stream.start()
            self.relays[relay_id] = sender
            await stream.wait_playing()
        except BaseException:
            self._drop_relay(relay_id, "not opened")
            raise
        if relay_id not in self.relays:
            raise StreamError(502, sender.end_reason or "relay ended")
        return RelayOpened(relay_id, port)

    def steer_playback(self, relay_id: int, command: PlaybackCommand) -> bool:
        stream = self.device_playbacks.get(relay_id)
        if stream is not None:
            return self._steer_device(stream, command)
        playback = self.playbacks.get(relay_id)
        if playback is None:
            return False
        playback.steer(command)
        return True

    def _steer_device(self, stream: LiveStream, command: PlaybackCommand) -> bool:
        """Pass a playback control on to the device, as MANSRTSP in its dialog."""
        dialog, peer, history = stream.dialog, stream.peer, stream.history
        if dialog is None or peer is None or history is None:
            return False
        self._mansrtsp_cseq += 1
        if command.action == "pause":
            request = MansrtspRequest("PAUSE", self._mansrtsp_cseq)
        else:
            start = None if command.seek is None else max(0.0, command.seek - history.start)
            request = MansrtspRequest("PLAY", self._mansrtsp_cseq, start=start,
                                      scale=command.speed)
        info = dialog.request("INFO", self.endpoint.via(peer.transport), build_mansrtsp(request),
                              MANSRTSP)
        self._background_request(info, peer)
        return True

    def media_status(self, event: RequestReceived) -> bool:
        """A MESSAGE in the dialog of one of our playbacks of a device's recordings, from
        the device's address: answered (200, or 400 for a body that is no MANSCDP) and True;
        its MediaStatus 121 ends the playback. False for any other MESSAGE."""
        request = event.request
        stream = self.by_call_id.get(request.call_id)
        if stream is None or stream.history is None or stream.dialog is None \
                or stream.peer is None or event.peer.host != stream.peer.host \
                or not stream.dialog.match(request):
            return False
        try:
            status = parse_media_status(request.body)
        except ParseError as exc:
            log.info("stream %s: unreadable MESSAGE in the playback dialog: %s",
                     stream.channel_id, exc)
            self.endpoint.respond(event, Response.for_request(request, 400))
            return True
        self.endpoint.respond(event, Response.for_request(request, 200))
        if status.end_of_file:
            log.info("stream %s: the device's playback reached its end (MediaStatus 121)",
                     stream.channel_id)
            if stream.on_eof is not None:
                stream.on_eof()
        return True

    def start_relay(self, relay_id: int) -> None:
        sender = self.relays.get(relay_id)
        if sender is not None:
            sender.start()
        playback = self.playbacks.get(relay_id)
        if playback is not None:
            playback.start()

    def close_relay(self, relay_id: int, reason: str) -> None:
        self._relay_ends.pop(relay_id, None)
        self._drop_relay(relay_id, reason)

    def relay_stats(self, relay_id: int) -> dict[str, Any]:
        sender = self.relays.get(relay_id)
        if sender is not None:
            return sender.stats()
        playback = self.playbacks.get(relay_id)
        return playback.stats() if playback is not None else {}

    def _drop_relay(self, relay_id: int, reason: str) -> None:
        playback = self.playbacks.pop(relay_id, None)
        if playback is not None:
            playback.close(reason)
        own = self.device_playbacks.pop(relay_id, None)
        sender = self.relays.pop(relay_id, None)
        if own is not None:
            own.stop(reason)  # BYE to the device
        if sender is None:
            return
        if own is None:
            self.unsubscribe(sender.channel_id, sender, reason=reason)
        sender.close(reason)
        self._fan_out()

    def _fan_out(self) -> None:
        """Cut-through (each camera packet passed on as it comes, one send per packet and
        relay) while relays are few: at most `CUT_THROUGH_MAX_RELAYS` of a channel and
        `CUT_THROUGH_MAX_TOTAL` in all. Beyond that, whole frames in segmented sends cost less
        CPU and wait less (see docs/benchmarks.md, re-streaming)."""
        per_channel = Counter(relay.channel_id for relay in self.relays.values())
        few = len(self.relays) <= CUT_THROUGH_MAX_TOTAL
        for relay in self.relays.values():
            relay.allow_cut_through(few and per_channel[relay.channel_id] <= CUT_THROUGH_MAX_RELAYS)

    def _relay_ended(self, relay_id: int, reason: str) -> None:
        """A relay ended by itself: detach it, then tell its owner once."""
        self._drop_relay(relay_id, reason)
        on_end = self._relay_ends.pop(relay_id, None)
        if on_end is not None:
            on_end(relay_id, reason)

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
        """A BYE from a device for one of our streams, or the MediaStatus that ends a playback
        of its recordings; False if it belongs to none."""
        request = event.request
        if request.method == "MESSAGE":
            return self.media_status(event)
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

    def single_port_stats(self) -> dict[str, int] | None:
        """The single media port's node-wide counters (datagrams of an SSRC no stream has,
        TCP connections refused); None without single-port mode."""
        return self.single_port.stats() if self.single_port is not None else None

