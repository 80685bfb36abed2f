"""The node's side of the media workers: starting them, giving them streams, watching them.

`MediaWorkers` runs `media.workers` worker processes (`sensing_node.media.workers.worker`). A new
stream goes to a worker when its receiver is opened: the channel's worker if it has one (a
channel stays with one worker while that lives, so its recording goes on in one place), else
the worker carrying the fewest packets per second. The node's process binds the RTP port
from its port pool, as with one process, and passes the socket over; the worker receives,
demuxes and records. What the node's process keeps of such a stream is a `RemoteReceiver`:
the `LiveStream` (signalling, retries, consumers) talks to it as to a local receiver. A relay
to an upstream goes the same way to the channel's worker (`open_relay`), which sends it from
the stream it receives; the node's process keeps a `relays.RemoteRelay`. So does a WebRTC
viewer of the channel (`open_viewer`): its peer connection runs in the worker, the node's
process keeps a `viewers.RemoteViewer`.

A worker that dies is started again (after a pause that grows while it keeps dying); its
streams end their attempt ("media worker N stopped") and are invited again, its relays end
(with the same reason, so the upstream gets a BYE) and give their ports back, its viewers
end (with the same reason, audited as any other end), and the segments
it left open are finished and indexed as after a crash (`recorder.recovery.recover`, for its
channels only).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from recorder.index import RecordIndex
from recorder.recovery import recover
from recorder.service import Recorder, root_index
from rtp.ps import AccessUnit

from ...runtime.supervise import Supervisor
from ...settings import Settings
from ...transport.rtp import PortPool, RtpReceiveConfig
from .relays import RemoteRelay
from .viewers import RemoteViewer
from .wire import Link, RemoteError
from .worker import RECEIVER_COUNTERS, RECORDER_COUNTERS


class LiveStream(Protocol):
    """What a receiver's handle needs of the stream it feeds (`media.stream.LiveStream`)."""

    channel_id: str
    receiver: Any
    _totals: dict[str, int]

    def end_attempt(self, reason: str, *, bye: bool = True) -> None: ...

    def _late_counts(self, counts: dict[str, int]) -> None: ...

    def _remote_loss(self, missing: int) -> None: ...

    def _remote_key(self, codec: str | None, width: int | None, height: int | None) -> None: ...

    def _remote_units(self, units: list[AccessUnit]) -> None: ...

log = logging.getLogger(__name__)

#: how often each worker's counters are fetched (stream timeouts and rates read them)
STATS_S = 0.5
#: a worker's answer to a request longer than this: the request fails
REQUEST_TIMEOUT_S = 15.0
#: the stats request's own limit; a worker that misses HUNG_AFTER of them in a row is taken
#: for hung and killed (then started again)
STATS_TIMEOUT_S = 2.0
HUNG_AFTER = 5
#: pause before a dead worker is started again, doubled while it keeps dying
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0


class RemoteReceiver:
    """The node's handle on a stream receiver that runs in a worker.

    Has what `LiveStream` reads of a local receiver: `port`, the counters and
    `last_packet_at` (as of the worker's last report, at most `STATS_S` old), `closed` (a TCP
    connection the device closed) and `close()`; and `frames` and `refusal` (the demuxer runs
    in the worker too).
    """

    def __init__(
        self, worker: _Worker, sid: int, stream: LiveStream, port: int, pool: PortPool
    ) -> None:
        self.worker = worker
        self.sid = sid
        self.stream = stream
        self.port = port
        self._pool = pool
        self.last_packet_at: float | None = None
        self.packets = self.bytes = self.lost = self.reordered = self.duplicates = 0
        self.dropped_foreign = self.dropped_early = 0
        self.fast_packets = 0  # of `packets`, those the worker's fast path took (`rtp.fast`)
        self.frames = 0
        self.refusal: str | None = None
        self.ssrc: int | None = None  # the SSRC the worker accepts (latched from the first)
        self.refused_connections = 0  # TCP: connections turned away
        self.peer: tuple[Any, ...] | None = None  # TCP: who carries the stream
        #: TCP: the local port of the connection carrying the stream (the overload meter
        #: reads its receive queue by it), once the worker has one
        self.local_port: int | None = None
        #: the address the port is bound to (by the node's pool, before it was passed over)
        self.bound: tuple[str, int] = ("", port)
        self.closed = asyncio.Event()
        self.ended = False
        self._tap = False
        self._record = False
        self._relays: tuple[int, ...] = ()
        self._viewers: tuple[str, ...] = ()

    def update(self, stats: dict[str, Any], now: float) -> None:
        for name in RECEIVER_COUNTERS:
            if name in stats:
                setattr(self, name, stats[name])
        age = stats.get("age")
        if age is not None:
            self.last_packet_at = now - age
        self.frames = stats.get("frames", self.frames)
        self.refusal = stats.get("refusal")
        self.ssrc = stats.get("ssrc", self.ssrc)
        self.refused_connections = stats.get("refused_connections", 0)
        peer = stats.get("peer")
        self.peer = tuple(peer) if peer else None
        self.local_port = stats.get("local_port", self.local_port)

    def expect(self, hosts: Iterable[str], ssrc: int | None, peers: Iterable[str] | None) -> None:
        self.worker.send({"op": "expect", "sid": self.sid, "hosts": sorted(hosts),
                          "ssrc": ssrc, "peers": None if peers is None else sorted(peers)})

    async def connect_tcp(self, host: str, port: int) -> None:
        """tcp-active, in the worker; raises `TimeoutError` or `ConnectionError` as the local
        receiver does."""
        answer = await self.worker.request(
            {"op": "connect", "sid": self.sid, "host": host, "port": port})
        failed = answer.get("failed")
        if failed == "timeout":
            raise TimeoutError(answer.get("message", "connect timed out"))
        if failed:
            raise ConnectionError(answer.get("message", "connect failed"))

    def feed(
        self, tap: bool, record: bool, relays: tuple[int, ...] = (),
        viewers: tuple[str, ...] = (),
    ) -> None:
        """Whether the node's process wants the frames, whether the worker records them, and
        which of the worker's relays (`RemoteRelay.relay_id`) and WebRTC viewers
        (`RemoteViewer.viewer_id`) it feeds."""
        if relays != self._relays:
            self._relays = relays
            self.worker.send({"op": "relays", "sid": self.sid, "rids": list(relays)})
        if viewers != self._viewers:
            self._viewers = viewers
            self.worker.send({"op": "viewers", "sid": self.sid, "vids": list(viewers)})
        if tap != self._tap:
            self._tap = tap
            self.worker.send({"op": "tap", "sid": self.sid, "on": tap})
        if record != self._record:
            self._record = record
            self.worker.send({"op": "record", "sid": self.sid, "on": record})

    def close(self) -> None:
        """Close it in the worker (what it still held is demuxed and recorded there) and give
        the port back; the final counters are added to the stream's totals when they come."""
        if self.ended:
            return
        self.ended = True
        self.worker.streams.pop(self.sid, None)
        self._pool.release(self.port)
        if self.worker.alive:
            self.worker.spawn_request({"op": "close", "sid": self.sid}, self._closed)

    def _closed(self, final: dict[str, Any]) -> None:
        late = {name: final[name] - getattr(self, name)
                for name in self.stream._totals if name in final}
        self.stream._late_counts(late)


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        #: a plain `subprocess.Popen`: an event loop's child watcher would keep the loop from
        #: closing should it miss the exit; the worker's end is seen by its link closing
        self.process: subprocess.Popen[bytes] | None = None
        self.link: Link | None = None
        self.fds: socket.socket | None = None
        self.alive = False
        self.streams: dict[int, RemoteReceiver] = {}
        #: the relays to upstreams it sends, by relay ID
        self.relays: dict[int, RemoteRelay] = {}
        #: the WebRTC viewers whose peer connections it runs, by viewer ID
        self.viewers: dict[str, RemoteViewer] = {}
        #: channels that stay with this worker while it lives
        self.channels: set[str] = set()
        self.stats: dict[str, Any] = {}
        self.rate = 0.0  # packets per second, from the last two reports
        self._reporting = 0  # streams in that rate
        self._last: tuple[float, int] | None = None
        self.restarts = 0
        self.missed = 0  # stats requests in a row it did not answer
        self.ready = False  # it answered its hello (a worker still starting is not polled)
        self.pid: int | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    def send(self, message: dict[str, Any]) -> None:
        if self.alive and self.link is not None:
            self.link.send(message)

    async def request(
        self, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT_S
    ) -> dict[str, Any]:
        if not self.alive or self.link is None:
            raise ConnectionError(f"media worker {self.index} is not running")
        try:
            return await self.link.request(message, timeout=timeout)
        except RemoteError as exc:
            raise OSError(f"media worker {self.index}: {exc}") from None

    def spawn_request(self, message: dict[str, Any], done: Any) -> None:
        """A request whose answer goes to `done` later; failures are only logged."""
        async def run() -> None:
            try:
                done(await self.request(message))
            except (OSError, TimeoutError) as exc:
                log.debug("media worker %d: %s: %s", self.index, message.get("op"), exc)

        task = asyncio.create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def load(self, mean_rate: float) -> float:
        """Packets per second it carries, and a stream's worth for each channel it has that
        brings none yet (just assigned, or waiting to be invited again)."""
        return self.rate + max(0, len(self.channels) - self._reporting) * mean_rate


class MediaWorkers:
    """`count` media worker processes and the streams they carry."""

    def __init__(
        self, settings: Settings, count: int, *, host: str, receive: RtpReceiveConfig,
        recording_root: Path | None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.receive = receive
        self.recording_root = recording_root
        self.workers = [_Worker(i) for i in range(count)]
        self._sid = 0
        self._stopping = False
        self._supervisor = Supervisor()
        self._watchers: list[asyncio.Task[None]] = []
        #: the node's recording clock (`NodeClock.stamp`), which the workers keep to
        self.stamp: Callable[[], float] = time.time
        #: whether a channel stays with its worker when it has no stream (its recording is
        #: planned: the worker's recorder holds its segment state)
        self.keep: Callable[[str], bool] = lambda channel_id: False

    # ----- life cycle -----
    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Start every worker (each is restarted when it dies) and the stats poll."""
        if supervisor is not None:
            self._supervisor = supervisor
        # One after the other: each worker's recorder opens the recording index, and the
        # first to open it sets it up (WAL mode, the schema), which SQLite may refuse to a
        # second process doing the same at that moment ("database is locked").
        for worker in self.workers:
            await self._spawn(worker)
        for worker in self.workers:
            self._watchers.append(asyncio.create_task(
                self._watch(worker), name=f"media worker {worker.index} watch"))
        self._supervisor.spawn("media worker stats", self._poll)

    async def close(self, wall: float | None = None) -> None:
        """Stop every worker: its streams closed, its open segments made durable (a gap
        still open ends at `wall`)."""
        self._stopping = True
        for task in self._watchers:
            task.cancel()
        stops = [self._stop(worker, wall) for worker in self.workers if worker.alive]
        await asyncio.gather(*stops, return_exceptions=True)

    async def _stop(self, worker: _Worker, wall: float | None) -> None:
        try:
            await worker.request({"op": "stop", "wall": wall})
        except (OSError, TimeoutError) as exc:
            log.warning("media worker %d did not stop in order: %s", worker.index, exc)
        worker.alive = False
        if worker.process is not None:
            await _reap(worker.process, 10.0)
        if worker.link is not None:
            worker.link.close("node stopping")
        if worker.fds is not None:
            worker.fds.close()

    async def _spawn(self, worker: _Worker) -> None:
        ctl, ctl_child = socket.socketpair()
        fds, fds_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        root = logging.getLogger()
        env["SENSING_NODE_LOG_LEVEL"] = logging.getLevelName(root.level)
        env.setdefault("SENSING_NODE_LOG_FORMAT", "text")
        try:
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "sensing_node.media.workers.worker",
                 str(ctl_child.fileno()), str(fds_child.fileno())],
                pass_fds=(ctl_child.fileno(), fds_child.fileno()), env=env,
            )
        finally:
            ctl_child.close()
            fds_child.close()
        fds.settimeout(5.0)
        worker.fds = fds
        reader, writer = await asyncio.open_unix_connection(sock=ctl)
        worker.link = Link(
            reader, writer, lambda message: self._event(worker, message),
            lambda sid, units: self._frames(worker, sid, units),
            name=f"media worker {worker.index}",
        )
        worker.alive = True
        worker.ready = False
        config = self.receive
        recording = None
        if self.recording_root is not None:
            rec = self.settings.recording
            recording = {"root": str(self.recording_root), "segment_s": rec.segment_s,
                         "fsync_s": rec.fsync_s, "direct_io": rec.direct_io,
                         "tz": self.settings.node.timezone_name}
        answer = await worker.request({
            "op": "hello", "clock": self._clock(), "index": worker.index, "host": self.host,
            "receive": {"reorder_window": config.reorder_window,
                        "max_delay_s": config.max_delay_s, "rcvbuf": config.rcvbuf,
                        "connect_attempts": config.connect_attempts,
                        "connect_retry_s": config.connect_retry_s,
                        "connect_timeout_s": config.connect_timeout_s},
            "recording": recording,
        })
        worker.pid = answer.get("pid")
        worker.missed = 0
        worker.ready = True
        log.info("media worker %d running (pid %s)", worker.index, worker.pid)

    async def _watch(self, worker: _Worker) -> None:
        """Start the worker again whenever it dies."""
        pause = RESTART_MIN_S
        while True:
            assert worker.process is not None and worker.link is not None
            # A worker that exits (or is killed) closes its end of the link.
            reason = await asyncio.shield(worker.link.closed)
            if self._stopping:
                return
            status = await _reap(worker.process, 2.0)
            if status is not None:
                reason = f"exit status {status}"
            await self._died(worker, reason)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_MAX_S)
            try:
                await self._spawn(worker)
            except (OSError, TimeoutError) as exc:
                log.error("media worker %d did not start again: %s", worker.index, exc)
                continue
            worker.restarts += 1
            if worker.restarts and pause > RESTART_MIN_S * 8:
                pause = RESTART_MIN_S  # it ran; the next death starts the backoff again

    async def _died(self, worker: _Worker, reason: str) -> None:
        """Finish what the worker was recording, then end its streams' attempts (they are
        invited again, on the workers that run)."""
        worker.alive = False
        log.error("media worker %d stopped (%s); its %d stream(s) are invited again",
                  worker.index, reason, len(worker.streams))
        if worker.link is not None:
            worker.link.close(reason)
        if worker.fds is not None:
            worker.fds.close()
            worker.fds = None
        # Before any of its channels is recorded elsewhere: recovery must find only the
        # files this worker left.
        await self._recover(worker)
        worker.channels.clear()
        for receiver in list(worker.streams.values()):
            receiver.ended = True
            receiver._pool.release(receiver.port)
            receiver.stream.end_attempt(f"media worker {worker.index} stopped", bye=True)
        worker.streams.clear()
        # Its relays end as a relay that fails does (the port back, BYE to the upstream).
        for relay in list(worker.relays.values()):
            relay.ended(f"media worker {worker.index} stopped", gap=False)
        worker.relays.clear()
        # Its viewers' peer connections went with it: they end (and are audited) here.
        viewers, worker.viewers = list(worker.viewers.values()), {}
        for viewer in viewers:
            viewer.ended(f"media worker {worker.index} stopped")
        worker.stats = {}

    async def _recover(self, worker: _Worker) -> None:
        """Finish the segments the dead worker left open (its channels only)."""
        root = self.recording_root
        if root is None or not worker.channels:
            return
        channels = set(worker.channels)
        tz = self.settings.node.tz

        def run() -> int:
            index = RecordIndex(root_index(root))
            try:
                return len(recover(root, index, tz=tz, channels=channels))
            finally:
                index.close()

        try:
            count = await asyncio.get_running_loop().run_in_executor(None, run)
        except Exception:
            log.exception("media worker %d: recovering its segments failed", worker.index)
            return
        if count:
            log.warning("media worker %d: %d segment(s) it left open recovered", worker.index,
                        count)

    def _clock(self) -> dict[str, float]:
        """The recording clock for a worker: its value now and the shared monotonic time."""
        return {"stamp": self.stamp(), "mono": time.monotonic()}

    # ----- streams -----
    def worker_for(self, channel_id: str) -> _Worker:
        """The channel's worker: the one it has while that lives, else the least loaded."""
        alive = [w for w in self.workers if w.alive]
        for worker in alive:
            if channel_id in worker.channels:
                return worker
        if not alive:
            raise ConnectionError("no media worker is running")
        rates = [w.rate / len(w.streams) for w in alive if w.streams and w.rate]
        mean = sum(rates) / len(rates) if rates else 1.0
        worker = min(alive, key=lambda w: (w.load(mean), w.index))
        for other in self.workers:
            other.channels.discard(channel_id)
        worker.channels.add(channel_id)
        return worker

    def release(self, channel_id: str) -> None:
        """The channel's stream ended and nothing keeps it with its worker (`keep`): its next
        stream goes to the least loaded worker."""
        if not self.keep(channel_id):
            for worker in self.workers:
                worker.channels.discard(channel_id)

    async def _hand_over(
        self, worker: _Worker, pool: PortPool, host: str, udp: bool
    ) -> tuple[int, int, tuple[str, int]]:
        """Bind a port from `pool` (UDP, or a TCP listener) and pass its socket to `worker`:
        the token the worker knows it by, the port and the address it is bound to. Raises
        `PortsExhausted` or `OSError`; the port goes back to the pool if it cannot be passed."""
        if udp:
            sock, port = await pool.acquire_udp(host)
        else:
            sock, port = await pool.acquire_tcp(host)
        self._sid += 1
        token = self._sid
        try:
            bound = sock.getsockname()[:2]
            if worker.fds is None:
                raise ConnectionError(f"media worker {worker.index} is not running")
            socket.send_fds(worker.fds, [token.to_bytes(8, "big")], [sock.fileno()])
        except BaseException:
            pool.release(port)
            raise
        finally:
            sock.close()
        return token, port, bound

    async def open_receiver(
        self, stream: LiveStream, transport: str, host: str, pool: PortPool,
        peers: Iterable[str] | None,
    ) -> RemoteReceiver:
        """Bind the stream's port, hand it to the channel's worker, and return the handle.
        Raises `PortsExhausted` or `OSError` (the worker's failures included)."""
        worker = self.worker_for(stream.channel_id)
        sid, port, bound = await self._hand_over(worker, pool, host, transport == "udp")
        receiver = RemoteReceiver(worker, sid, stream, port, pool)
        receiver.bound = bound
        worker.streams[sid] = receiver
        try:
            await worker.request({
                "op": "open", "clock": self._clock(), "sid": sid, "token": sid,
                "channel": stream.channel_id, "transport": transport,
                "peers": None if peers is None else list(peers),
            })
        except BaseException:
            receiver.ended = True
            worker.streams.pop(sid, None)
            pool.release(port)
            worker.send({"op": "close", "sid": sid})
            raise
        return receiver

    async def open_relay(self, relay: RemoteRelay) -> int:
        """Bind the relay's port as `RelaySender.open` does, hand it to the channel's worker
        (the one its stream is received in) and open the sender there; the port. Raises
        `PortsExhausted` or `OSError` (the worker's failures included)."""
        worker = self.worker_for(relay.channel_id)
        # tcp-passive listens on the pool's socket; for tcp-active the worker's sender replaces
        # the pool's listener with a plain bound socket on the same port.
        token, port, _ = await self._hand_over(worker, relay.port_pool, relay.bind_host,
                                               relay.transport == "udp")
        relay.worker, relay.local_port, relay.port_held = worker, port, True
        worker.relays[relay.relay_id] = relay
        request = relay.open_request()
        try:
            await worker.request({**request, "token": token, "clock": self._clock()})
        except BaseException:
            worker.relays.pop(relay.relay_id, None)
            worker.send({"op": "relay_close", "rid": relay.relay_id, "reason": "not opened"})
            relay._release()
            raise
        if relay.state != "new":  # closed while it opened
            worker.send({"op": "relay_close", "rid": relay.relay_id, "reason": "not opened"})
            return port
        relay.state, relay.opened = "open", True
        if relay.cut_through != request["cut"]:  # changed while it opened
            worker.send({"op": "relay_cut", "rid": relay.relay_id, "on": relay.cut_through})
        return port

    async def open_viewer(self, viewer: RemoteViewer, options: dict[str, Any]) -> dict[str, Any]:
        """Make a WebRTC viewer's peer connection in the channel's worker (the one its
        stream is, or will be, received in) and have it take the browser's offer
        (`options`: ``offer``, ``ice_servers``, the limits); the worker's answer: {} or
        the ``status`` and ``reason`` it refused the offer with. Raises `OSError`."""
        worker = self.worker_for(viewer.channel_id)
        viewer.worker = worker
        worker.viewers[viewer.viewer_id] = viewer
        try:
            answer = await worker.request(viewer.open_request(options))
        except BaseException:
            if worker.viewers.get(viewer.viewer_id) is viewer:
                del worker.viewers[viewer.viewer_id]
                worker.send({"op": "viewer_close", "vid": viewer.viewer_id,
                             "reason": "not started"})
            raise
        if "status" not in answer and viewer.state == "new":
            viewer.state = "open"
        return answer

    # ----- from the workers -----
    def _event(self, worker: _Worker, message: dict[str, Any]) -> None:
        event = message.get("ev")
        if event == "relay_end":
            relay = worker.relays.pop(int(message["rid"]), None)
            if relay is not None:
                relay.ended(str(message.get("reason")), gap=bool(message.get("gap")),
                            stats=message.get("stats"))
            return
        if event == "viewer_end":
            viewer = worker.viewers.pop(str(message["vid"]), None)
            if viewer is not None:
                viewer.ended(str(message.get("reason")), message.get("stats"))
            return
        receiver = worker.streams.get(message.get("sid", -1))
        if receiver is None:
            return
        if event == "loss":
            receiver.stream._remote_loss(int(message["missing"]))
        elif event == "key":
            receiver.stream._remote_key(message.get("codec"), message.get("width"),
                                        message.get("height"))
        elif event == "closed":
            receiver.closed.set()

    def _frames(self, worker: _Worker, sid: int, units: list[AccessUnit]) -> None:
        receiver = worker.streams.get(sid)
        if receiver is not None and receiver.stream.receiver is receiver:
            receiver.stream._remote_units(units)

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(STATS_S)
            alive = [w for w in self.workers if w.alive and w.ready]
            answers = await asyncio.gather(
                *(w.request({"op": "stats", "clock": self._clock()}, STATS_TIMEOUT_S)
                  for w in alive),
                return_exceptions=True,
            )
            now = loop.time()
            for worker, answer in zip(alive, answers, strict=True):
                if isinstance(answer, BaseException):
                    worker.missed += 1
                    if worker.missed == HUNG_AFTER and worker.process is not None \
                            and worker.alive:
                        # Its loop does not answer: killed, and started again by its watch.
                        log.error("media worker %d has not answered for %.0f s; killed",
                                  worker.index, HUNG_AFTER * STATS_TIMEOUT_S)
                        worker.process.kill()
                    continue
                worker.missed = 0
                worker.stats = answer
                worker._reporting = len(answer.get("streams", {}))
                packets = 0
                for sid, stats in answer.get("streams", {}).items():
                    receiver = worker.streams.get(int(sid))
                    if receiver is not None:
                        receiver.update(stats, now)
                    packets += stats.get("packets", 0)
                for rid, stats in answer.get("relays", {}).items():
                    relay = worker.relays.get(int(rid))
                    if relay is not None:
                        relay.update(stats)
                for vid, stats in answer.get("viewers", {}).items():
                    viewer = worker.viewers.get(vid)
                    if viewer is not None:
                        viewer.update(stats)
                last = worker._last
                if last is not None and now > last[0] and packets >= last[1]:
                    worker.rate = (packets - last[1]) / (now - last[0])
                worker._last = (now, packets)

    # ----- what the node reports -----
    def recorder_totals(self) -> dict[str, Any]:
        totals: dict[str, Any] = dict.fromkeys(RECORDER_COUNTERS, 0)
        errors: list[str] = []
        for worker in self.workers:
            rec = worker.stats.get("recorder") or {}
            for name in RECORDER_COUNTERS:
                totals[name] += rec.get(name, 0)
            if rec.get("last_error"):
                errors.append(f"worker {worker.index}: {rec['last_error']}")
        totals["last_error"] = errors[-1] if errors else None
        return totals

    def snapshot(self) -> list[dict[str, Any]]:
        return [{
            "index": w.index, "pid": w.pid, "alive": w.alive, "streams": len(w.streams),
            "channels": len(w.channels), "packets_per_s": round(w.rate, 1),
            "lag_s": w.stats.get("lag_s"), "max_lag_s": w.stats.get("max_lag_s"),
            "cpu_s": w.stats.get("cpu_s"), "restarts": w.restarts,
            "frames_dropped": w.stats.get("frames_dropped", 0),
            "viewers": len(w.viewers),
        } for w in self.workers]


async def _reap(process: subprocess.Popen[bytes], wait_s: float) -> int | None:
    """Wait up to `wait_s` for a worker to exit (off the loop), then kill it; its status."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, process.wait, wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return await loop.run_in_executor(None, process.wait)


class RoutedRecorder:
    """The recording service's recorder when workers record: per-channel calls go to the
    channel's worker, whose own `Recorder` writes the channel; the rest (retention, the
    index, frames of a stream the node's process itself receives) to the local one."""

    def __init__(self, local: Recorder, workers: MediaWorkers) -> None:
        self.local = local
        self.workers = workers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def submit(self, channel_id: str, unit: AccessUnit, wall: float) -> None:
        self.local.submit(channel_id, unit, wall)

    def _route(self, call: str, channel_id: str, *args: Any) -> None:
        try:
            worker = self.workers.worker_for(channel_id)
        except ConnectionError:
            return  # no worker runs: the channel is not recorded now anyway
        worker.send({"op": "rec", "call": call, "channel": channel_id, "args": list(args)})

    def lost(self, channel_id: str, wall: float, reason: str = "packet loss") -> None:
        self._route("lost", channel_id, wall, reason)

    def gap(self, channel_id: str, start_wall: float, end_wall: float, reason: str) -> None:
        self._route("gap", channel_id, start_wall, end_wall, reason)

    def planned(self, channel_id: str, since: float, up: float | None = None) -> None:
        self._route("planned", channel_id, since, up)

    def close_channel(self, channel_id: str, wall: float | None = None) -> None:
        self._route("close_channel", channel_id, wall)

    def flush(self, timeout: float | None = None) -> bool:
        for worker in self.workers.workers:
            worker.send({"op": "flush"})
        return self.local.flush(timeout)

    def _total(self, name: str) -> Any:
        return getattr(self.local, name) + self.workers.recorder_totals()[name]

    units = property(lambda self: self._total("units"))
    bytes = property(lambda self: self._total("bytes"))
    segments_closed = property(lambda self: self._total("segments_closed"))
    write_errors = property(lambda self: self._total("write_errors"))
    dropped_units = property(lambda self: self._total("dropped_units"))
    queue_depth = property(lambda self: self._total("queue_depth"))
    queue_bytes = property(lambda self: self._total("queue_bytes"))
    syncs = property(lambda self: self._total("syncs"))

    @property
    def last_error(self) -> str | None:
        return self.local.last_error or self.workers.recorder_totals()["last_error"]
