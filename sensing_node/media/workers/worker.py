"""One media worker process: the data plane of the streams the node's process gives it.

Started by `pool` as ``python -m sensing_node.media.workers.worker CTL FDS`` with the two
socket ends it inherits (see `wire`). For each stream it receives the RTP (on
the socket the node's process bound and passed over), puts it back in order, demuxes the PS,
records the frames with its own `Recorder` when the channel is recorded, sends the channel's
relays to upper platforms (`relays.HubRelay`, on ports the node's process bound and passed
over), serves the channel's WebRTC viewers (`viewers.WorkerViewers`: their peer connections
run here, on aiortc's own sockets), and sends the frames to the node's process only while
something there wants them (a consumer there that takes frames). It keeps no state that
outlives it: when it dies, the node's process invites its streams again elsewhere, ends its
relays and viewers and finishes what it was recording (`recorder.recovery`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from recorder.service import Recorder
from rtp.ps import AccessUnit
from rtp.sps import find_video_format

from ...runtime import collector
from ...runtime.logs import configure_logging
from ...settings.node import system_timezone
from ...transport.rtp import (
    MediaIngest,
    RtpReceiveConfig,
    TcpRtpReceiver,
    UdpRtpReceiver,
)
from ..overload import allowed_cpus
from .relays import HubRelay
from .wire import Link

if TYPE_CHECKING:
    from ..webrtc import ViewerFeed
    from .viewers import WorkerViewers

log = logging.getLogger(__name__)

#: how often the worker looks at how late its loop runs (the lag it reports)
LAG_PROBE_S = 0.25
#: units of a GOP kept for a consumer that joins (as `media.stream.GOP_MAX_BYTES`)
GOP_MAX_BYTES = 32 * 1024 * 1024
GOP_MAX_UNITS = 2000
#: sockets passed over and not (yet) claimed by an `open`: more is a broken peer
MAX_PENDING_SOCKETS = 256

RECORDER_COUNTERS = ("units", "bytes", "segments_closed", "write_errors", "dropped_units",
                     "queue_depth", "queue_bytes", "syncs")
RECEIVER_COUNTERS = ("packets", "bytes", "lost", "reordered", "duplicates", "dropped_foreign",
                     "dropped_early", "fast_packets")


class _Passed:
    """The port pool of one socket the node's process bound and passed over."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.sock, self.port = sock, port

    async def acquire_udp(self, host: str) -> tuple[socket.socket, int]:
        return self.sock, self.port

    async def acquire_tcp(self, host: str) -> tuple[socket.socket, int]:
        return self.sock, self.port

    def release(self, port: int) -> None:
        """The node's process keeps the pool's books; it releases the port when it closes."""


class WorkerStream:
    """One stream's receive path in a worker: the `RtpSink` of its receiver, and what feeds
    the relays and viewers the node's process named for it (`relays`, `viewers`)."""

    def __init__(self, worker: Worker, sid: int, channel_id: str) -> None:
        self.worker = worker
        self.sid = sid
        self.channel_id = channel_id
        self.receiver: UdpRtpReceiver | TcpRtpReceiver | None = None
        self.ingest = MediaIngest(on_units=self._units)
        self.frames = 0
        self.tap = False  # the node's process wants the frames
        self.record = False  # this worker's recorder writes them
        self.codec: str | None = None
        self.keyed = False
        self.gop: list[AccessUnit] = []
        self._gop_bytes = 0
        self._late_wall: float | None = None
        #: the relays it feeds, and of those the ones that may pass packets on as they come
        #: (empty: the hot path does nothing for relays)
        self.relays: list[HubRelay] = []
        self.rtp_relays: tuple[HubRelay, ...] = ()
        #: the feeds of the WebRTC viewers it feeds
        self.viewers: list[ViewerFeed] = []

    # ----- the hot path -----
    def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        frame = self.ingest.frame  # which keeps the sequence number expected next
        if seq != frame.next_seq:
            if frame.next_seq >= 0:
                self._discontinuity((seq - frame.next_seq) & 0xFFFF)
        frame.next_seq = (seq + 1) & 0xFFFF
        if self.rtp_relays:
            for relay in self.rtp_relays:
                try:
                    relay.on_rtp(payload, seq, ts, marker)
                except Exception:
                    self.worker.relay_failed(relay)
        frame.add(payload, seq, ts, marker)

    def _discontinuity(self, missing: int) -> None:
        self.ingest.restart()
        self.gop, self._gop_bytes = [], 0
        worker = self.worker
        if self.record and worker.recorder is not None:
            worker.recorder.lost(self.channel_id, worker.wall(), f"{missing} RTP packet(s) lost")
        for relay in self.relays:
            try:
                relay.on_loss(missing)
            except Exception:
                worker.relay_failed(relay)
        for feed in self.viewers:  # skips to the next keyframe
            feed.on_loss(missing)
        worker.link.send({"ev": "loss", "sid": self.sid, "missing": missing})

    def _units(self, units: list[AccessUnit]) -> None:
        for unit in units:
            if unit.stream_id >= 0xE0:  # video
                self.frames += 1
                if unit.keyframe:
                    if not self.keyed or unit.codec != self.codec:
                        self._keyframe(unit)
                    self.gop, self._gop_bytes = [unit], len(unit.ps_bytes)
                    continue
            if self.gop:
                self.gop.append(unit)
                self._gop_bytes += len(unit.ps_bytes)
                if self._gop_bytes > GOP_MAX_BYTES or len(self.gop) > GOP_MAX_UNITS:
                    self.gop, self._gop_bytes = [], 0
        if self.record:
            recorder = self.worker.recorder
            if recorder is not None:
                wall = self._late_wall or self.worker.wall()
                channel_id = self.channel_id
                for unit in units:
                    recorder.submit(channel_id, unit, wall)
        for relay in self.relays:
            try:
                for unit in units:
                    relay.on_unit(unit)
            except Exception:
                self.worker.relay_failed(relay)
        for feed in self.viewers:
            try:
                for unit in units:
                    feed.on_unit(unit)
            except Exception:
                self.worker.viewer_failed(self.channel_id)
        if self.tap:
            self.worker.link.send_frames(self.sid, units)

    def _keyframe(self, unit: AccessUnit) -> None:
        self.keyed = True
        self.codec = unit.codec
        width = height = None
        if unit.codec in ("h264", "h265"):
            video = find_video_format(unit.codec, unit.data)
            if video is not None:
                width, height = video.width, video.height
        self.worker.link.send({"ev": "key", "sid": self.sid, "codec": unit.codec,
                               "width": width, "height": height})

    # ----- control -----
    def set_tap(self, on: bool) -> None:
        if on and not self.tap and self.gop:
            self.worker.link.send_frames(self.sid, list(self.gop))
        self.tap = on

    def set_relays(self, relays: list[HubRelay]) -> None:
        """The relays it feeds from now on; one that joins gets the cached GOP first (as
        `LiveStream.add` gives it, from the keyframe), so it can send at once."""
        joined = [relay for relay in relays if relay not in self.relays]
        self.relays = relays
        self.cut_changed()
        for relay in joined:
            try:
                for unit in self.gop:
                    relay.on_unit(unit)
            except Exception:
                self.worker.relay_failed(relay)

    def set_viewers(self, feeds: list[ViewerFeed]) -> None:
        """The viewers' feeds it feeds from now on. One that joins gets the cached GOP first,
        as a consumer that joins the stream does; one that comes from the attempt before (a
        stream invited again) starts over at a keyframe, which a browser needs after a
        gap."""
        joined = [feed for feed in feeds if feed not in self.viewers]
        self.viewers = feeds
        for feed in joined:
            try:
                if feed.received:
                    feed.on_loss(0)
                for unit in self.gop:
                    feed.on_unit(unit)
            except Exception:
                self.worker.viewer_failed(self.channel_id)

    def cut_changed(self) -> None:
        self.rtp_relays = tuple(relay for relay in self.relays if relay.cut_through)
        self.arm_fast()

    def arm_fast(self) -> None:
        """With no relay taking single packets, `on_packet` is the ingest's frame's `next_seq`
        and `add`: the receiver's fast path does both itself."""
        receiver = self.receiver
        if receiver is not None:
            receiver.attach_fast(None if self.rtp_relays else self.ingest.frame)

    def stats(self, now: float) -> dict[str, Any]:
        receiver = self.receiver
        if receiver is None:
            return {"frames": self.frames}
        out: dict[str, Any] = {name: getattr(receiver, name) for name in RECEIVER_COUNTERS}
        last = receiver.last_packet_at
        out["age"] = None if last is None else now - last
        out["frames"] = self.frames
        out["refusal"] = self.ingest.demuxer.refusal
        out["ssrc"] = receiver.ssrc
        if isinstance(receiver, TcpRtpReceiver):
            out["refused_connections"] = receiver.refused_connections
            out["peer"] = receiver.peer
            out["local_port"] = receiver.local_port
        return out

    def close(self) -> dict[str, Any]:
        receiver, self.receiver = self.receiver, None
        loop = asyncio.get_running_loop()
        final: dict[str, Any] = {}
        if receiver is not None:
            if receiver.last_packet_at is not None:
                self._late_wall = self.worker.wall() - (loop.time() - receiver.last_packet_at)
            try:
                receiver.close()  # hands over what the reorder buffer held
                self.ingest.flush()
            finally:
                self._late_wall = None
                final = {name: getattr(receiver, name) for name in RECEIVER_COUNTERS}
        final["frames"] = self.frames
        self.tap = self.record = False
        self.gop = []
        self.relays, self.rtp_relays = [], ()  # the next attempt's stream feeds them
        self.viewers = []
        return final


class Worker:
    def __init__(self, ctl: socket.socket, fds: socket.socket) -> None:
        self.ctl = ctl
        self.fds = fds
        self.index = 0
        self.host = "127.0.0.1"
        self.config = RtpReceiveConfig()
        self.recorder: Recorder | None = None
        self.streams: dict[int, WorkerStream] = {}
        #: relays to upper platforms, by the node's relay ID; and the ones still opening
        #: (True once closed meanwhile)
        self.relays: dict[int, HubRelay] = {}
        self._opening: dict[int, bool] = {}
        self.relay_errors = 0
        #: the WebRTC viewers it serves (made with the first: aiortc is imported then)
        self._viewers: WorkerViewers | None = None
        self.viewer_errors = 0
        self.lag_s = 0.0
        self.max_lag_s = 0.0
        self._sockets: dict[int, socket.socket] = {}
        self._socket_waiters: dict[int, asyncio.Future[socket.socket]] = {}
        self._stopped: asyncio.Future[None] | None = None
        # The node's recording clock (`NodeClock.stamp`): its value at a time of the shared
        # monotonic clock, as the node's process last sent it; counted on from there.
        self._anchor = (time.time(), time.monotonic())
        self._watches: set[asyncio.Task[None]] = set()
        self.link: Link

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        reader, writer = await asyncio.open_unix_connection(sock=self.ctl)
        self.link = Link(reader, writer, self._control, self._no_frames, name="worker link")
        self.fds.setblocking(False)
        loop.add_reader(self.fds.fileno(), self._take_sockets)
        lag = asyncio.create_task(self._probe_lag())
        try:
            await asyncio.wait([self.link.closed, self._stopped],
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            lag.cancel()
            loop.remove_reader(self.fds.fileno())
            for watch in self._watches:
                watch.cancel()
            self._shutdown()
            self.link.close()

    def wall(self) -> float:
        """The node's recording time now: never earlier than one given before."""
        stamp, mono = self._anchor
        return stamp + (time.monotonic() - mono)

    def _set_clock(self, clock: dict[str, float] | None) -> None:
        if clock is None:
            return
        stamp, mono = float(clock["stamp"]), float(clock["mono"])
        if stamp + (time.monotonic() - mono) >= self.wall():  # never back
            self._anchor = (stamp, mono)

    def _no_frames(self, stream: int, units: list[AccessUnit]) -> None:
        raise ValueError("a worker takes no frames")

    async def _probe_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            lag = max(0.0, loop.time() - began - LAG_PROBE_S)
            self.lag_s = lag
            self.max_lag_s = max(self.max_lag_s, lag)

    # ----- sockets from the node's process -----
    def _take_sockets(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.fds, 16, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("worker %d: socket channel: %s", self.index, exc)
                return
            if not data and not fds:
                return  # the node's process closed it; the link's end follows
            if len(data) != 8 or len(fds) != 1 or len(self._sockets) >= MAX_PENDING_SOCKETS:
                for fd in fds:
                    os.close(fd)
                log.error("worker %d: a malformed socket message dropped", self.index)
                continue
            token = int.from_bytes(data, "big")
            sock = socket.socket(fileno=fds[0])
            waiter = self._socket_waiters.pop(token, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(sock)
            else:
                self._sockets[token] = sock

    async def _socket(self, token: int) -> socket.socket:
        sock = self._sockets.pop(token, None)
        if sock is not None:
            return sock
        waiter = asyncio.get_running_loop().create_future()
        self._socket_waiters[token] = waiter
        try:
            async with asyncio.timeout(10):
                return await waiter
        finally:
            self._socket_waiters.pop(token, None)

    # ----- requests and events from the node's process -----
    def _control(self, message: dict[str, Any]) -> Any:
        op = message.get("op")
        self._set_clock(message.get("clock"))
        if op == "open":
            return self._open(message)
        if op == "connect":
            return self._connect(message)
        if isinstance(op, str) and op.startswith("relay"):
            return self._relay_control(op, message)
        if isinstance(op, str) and op.startswith("viewer"):
            return self._viewer_control(op, message)
        stream = self.streams.get(message.get("sid", -1))
        if op == "expect":
            if stream is not None and stream.receiver is not None:
                receiver = stream.receiver
                hosts = message.get("hosts")
                if isinstance(receiver, UdpRtpReceiver):
                    receiver.expect(hosts, message.get("ssrc"))
                else:
                    receiver.expect(message.get("ssrc"), message.get("peers"))
            return None
        if op == "close":
            stream = self.streams.pop(message.get("sid", -1), None)
            return stream.close() if stream is not None else {}
        if op == "tap":
            if stream is not None:
                stream.set_tap(bool(message.get("on")))
            return None
        if op == "record":
            if stream is not None:
                stream.record = bool(message.get("on")) and self.recorder is not None
            return None
        if op == "rec":
            self._recorder_call(message)
            return None
        if op == "stats":
            return self._stats()
        if op == "flush":
            if self.recorder is not None:
                self.recorder.flush(timeout=0)
            return None
        if op == "hello":
            return self._hello(message)
        if op == "stop":
            return self._stop(message.get("wall"))
        raise ValueError(f"unknown request {op!r}")

    def _hello(self, message: dict[str, Any]) -> dict[str, Any]:
        self.index = int(message["index"])
        self.host = str(message["host"])
        self.config = RtpReceiveConfig(**message.get("receive", {}))
        recording = message.get("recording")
        if recording is not None:
            tz = recording.get("tz")
            self.recorder = Recorder(
                recording["root"], segment_s=recording["segment_s"],
                tz=system_timezone() if tz is None else _zone(tz),
                fsync_s=recording.get("fsync_s"), recover_on_start=False,
                direct_io=bool(recording.get("direct_io", True)),
            )
        return {"pid": os.getpid()}

    async def _open(self, message: dict[str, Any]) -> dict[str, Any]:
        sid = int(message["sid"])
        sock = await self._socket(int(message["token"]))
        port = sock.getsockname()[1]
        stream = WorkerStream(self, sid, str(message["channel"]))
        pool: Any = _Passed(sock, port)
        try:
            if message["transport"] == "udp":
                stream.receiver = await UdpRtpReceiver.open(self.host, pool, stream, self.config)
                stream.arm_fast()
            else:
                tcp = TcpRtpReceiver(stream, self.config)
                stream.receiver = tcp
                stream.arm_fast()
                await tcp.listen_tcp(self.host, pool, message.get("peers"))
                watch = asyncio.create_task(self._watch_closed(sid, tcp))
                self._watches.add(watch)
                watch.add_done_callback(self._watches.discard)
        except BaseException:
            sock.close()
            raise
        self.streams[sid] = stream
        return {"port": port}

    async def _watch_closed(self, sid: int, tcp: TcpRtpReceiver) -> None:
        """Tell the node's process when the device closes a TCP media connection."""
        await tcp.closed.wait()
        stream = self.streams.get(sid)
        if stream is not None and stream.receiver is tcp:
            self.link.send({"ev": "closed", "sid": sid})

    async def _connect(self, message: dict[str, Any]) -> dict[str, Any]:
        stream = self.streams.get(int(message["sid"]))
        if stream is None or not isinstance(stream.receiver, TcpRtpReceiver):
            return {"failed": "connection", "message": "the stream is gone"}
        try:
            await stream.receiver.connect_tcp(str(message["host"]), int(message["port"]))
        except TimeoutError as exc:
            return {"failed": "timeout", "message": str(exc)}
        except OSError as exc:  # ConnectionError included
            return {"failed": "connection", "message": str(exc)}
        return {}

    # ----- relays to upper platforms -----
    def _relay_control(self, op: str, message: dict[str, Any]) -> Any:
        if op == "relay":
            return self._relay_open(message)
        rid = int(message.get("rid", -1))
        if op == "relays":  # which relays a stream feeds
            stream = self.streams.get(int(message.get("sid", -1)))
            if stream is not None:
                rids = message.get("rids") or []
                stream.set_relays([self.relays[r] for r in rids if r in self.relays])
            return None
        relay = self.relays.get(rid)
        if op == "relay_close":
            if rid in self._opening:
                self._opening[rid] = True
            if relay is not None:
                self._drop_relay(rid)
                relay.close(str(message.get("reason", "closed")))
            return None
        if relay is None:
            return None
        if op == "relay_start":
            relay.start()
        elif op == "relay_cut":
            relay.allow_cut_through(bool(message.get("on")))
            for stream in self.streams.values():
                if relay in stream.relays:
                    stream.cut_changed()
        elif op == "relay_gap":
            relay.on_gap(str(message.get("reason", "")))
        else:
            raise ValueError(f"unknown request {op!r}")
        return None

    async def _relay_open(self, message: dict[str, Any]) -> dict[str, Any]:
        rid = int(message["rid"])
        self._opening[rid] = False
        try:
            sock = await self._socket(int(message["token"]))
            port = sock.getsockname()[1]
            remote = message["remote"]
            pool: Any = _Passed(sock, port)
            relay = HubRelay(
                ssrc=int(message["ssrc"]), transport=str(message["transport"]),
                remote=(str(remote[0]), int(remote[1])), port_pool=pool,
                bind_host=str(message["bind_host"]), payload_max=int(message["payload_max"]),
                timeout_s=float(message["timeout_s"]),
                connect_timeout_s=float(message["connect_timeout_s"]),
                max_buffer_bytes=int(message["max_buffer"]),
                on_end=lambda reason: self._relay_ended(rid, reason, gap=False),
            )
            relay.channel_id = str(message["channel"])
            relay.gap_timeout_s = float(message["gap_timeout_s"])
            relay.on_stream_lost = lambda reason: self._relay_ended(rid, reason, gap=True)
            relay.cut_through = bool(message.get("cut", True))
            try:
                await relay.open()
            except BaseException:
                sock.close()
                raise
            if self._opening.get(rid):  # closed by the node's process meanwhile
                relay.close("not opened")
                return {"port": port}
            self.relays[rid] = relay
        finally:
            self._opening.pop(rid, None)
        return {"port": port}

    def _relay_ended(self, rid: int, reason: str, *, gap: bool) -> None:
        """A relay ended by itself (`on_end`), or its camera's stream brought nothing after a
        gap (`on_stream_lost`): closed here, and the node's process told once."""
        relay = self._drop_relay(rid)
        if relay is None:
            return
        relay.close(reason)
        self.link.send({"ev": "relay_end", "rid": rid, "reason": reason, "gap": gap,
                        "stats": relay.stats()})

    def _drop_relay(self, rid: int) -> HubRelay | None:
        relay = self.relays.pop(rid, None)
        if relay is not None:
            for stream in self.streams.values():
                if relay in stream.relays:
                    stream.set_relays([r for r in stream.relays if r is not relay])
        return relay

    def relay_failed(self, relay: HubRelay) -> None:
        """A relay's call raised (a bug): counted, logged the first time; the stream and the
        other relays go on."""
        self.relay_errors += 1
        if self.relay_errors == 1:
            log.exception("worker %d: relay of %s failed (further failures only counted)",
                          self.index, relay.channel_id)

    def _close_relays(self, reason: str) -> None:
        relays, self.relays = self.relays, {}
        for relay in relays.values():
            try:
                relay.close(reason)
            except Exception:
                log.exception("worker %d: closing a relay", self.index)

    # ----- WebRTC viewers -----
    def _viewer_control(self, op: str, message: dict[str, Any]) -> Any:
        if op == "viewer":
            if self._viewers is None:
                from .viewers import WorkerViewers

                self._viewers = WorkerViewers(self)
            return self._viewers.open(message)
        viewers = self._viewers
        if op == "viewers":  # which viewers a stream feeds
            stream = self.streams.get(int(message.get("sid", -1)))
            if stream is not None:
                ids = [str(v) for v in message.get("vids") or []]
                stream.set_viewers(viewers.feeds(ids) if viewers is not None else [])
            return None
        if op == "viewer_answer":
            if viewers is None:
                return {"status": 410, "reason": "ended"}
            return viewers.answer(message)
        if op == "viewer_close":
            return viewers.close(message) if viewers is not None else None
        raise ValueError(f"unknown request {op!r}")

    def viewer_failed(self, channel_id: str) -> None:
        """A viewer's feed raised (a bug): counted, logged the first time."""
        self.viewer_errors += 1
        if self.viewer_errors == 1:
            log.exception("worker %d: webrtc viewer of %s failed (further failures only "
                          "counted)", self.index, channel_id)

    def _recorder_call(self, message: dict[str, Any]) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        call, channel, args = message["call"], str(message["channel"]), message.get("args", [])
        if call == "lost":
            recorder.lost(channel, *args)
        elif call == "planned":
            recorder.planned(channel, *args)
        elif call == "gap":
            recorder.gap(channel, *args)
        elif call == "close_channel":
            recorder.close_channel(channel, *args)
        else:
            raise ValueError(f"unknown recorder call {call!r}")

    def _stats(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        recorder = self.recorder
        rec: dict[str, Any] = {}
        if recorder is not None:
            rec = {name: getattr(recorder, name) for name in RECORDER_COUNTERS}
            rec["last_error"] = recorder.last_error
        max_lag, self.max_lag_s = self.max_lag_s, self.lag_s
        return {
            "streams": {str(sid): s.stats(now) for sid, s in self.streams.items()},
            "relays": {str(rid): relay.stats() for rid, relay in self.relays.items()},
            "relay_errors": self.relay_errors,
            "viewers": self._viewers.stats() if self._viewers is not None else {},
            "viewer_errors": self.viewer_errors,
            "recorder": rec,
            "lag_s": self.lag_s,
            "max_lag_s": max_lag,
            "cpu_s": time.process_time(),
            "loop_cpu_s": time.thread_time(),  # the loop's thread (stats are answered on it)
            "cores": allowed_cpus(),  # how many CPUs it may run on (its affinity)
            "frames_dropped": self.link.frames_dropped,
        }

    async def _stop(self, wall: float | None) -> dict[str, Any]:
        """Close every relay, viewer and stream, then the recorder (open segments durable
        and indexed)."""
        self._close_relays("node stopping")
        if self._viewers is not None:
            await self._viewers.stop("node stopping")
        self._close_streams()
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: recorder.close(wall=wall))
        stopped = self._stopped
        if stopped is not None and not stopped.done():
            asyncio.get_running_loop().call_soon(stopped.set_result, None)
        return {}

    def _close_streams(self) -> None:
        for stream in list(self.streams.values()):
            try:
                stream.close()
            except Exception:
                log.exception("worker %d: closing stream %d", self.index, stream.sid)
        self.streams.clear()

    def _shutdown(self) -> None:
        """The node's process went away without a stop: close what is open."""
        self._close_relays("node stopped")
        if self._viewers is not None:
            self._viewers.shutdown("node stopped")
        self._close_streams()
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close()


def _zone(name: str) -> Any:
    import zoneinfo

    return zoneinfo.ZoneInfo(name)


def main(argv: list[str]) -> int:
    ctl_fd, fds_fd = int(argv[1]), int(argv[2])
    level = os.environ.get("SENSING_NODE_LOG_LEVEL", "INFO")
    fmt = os.environ.get("SENSING_NODE_LOG_FORMAT", "text")
    configure_logging(level, fmt)
    collector.tune()
    try:
        import uvloop
    except ImportError:
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    # Ctrl-C in the node's terminal, or a service manager's SIGTERM to the whole group,
    # reaches the workers too: the node's process stops them in order (streams closed,
    # segments made durable). Should it die instead, the link's end stops the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctl = socket.socket(fileno=ctl_fd)
    fds = socket.socket(fileno=fds_fd)
    runner(Worker(ctl, fds).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
