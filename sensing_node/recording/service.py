"""Recording: keeps the planned channels pulled through the stream hub and written by the recorder.

`RecordingService` decides every few seconds which channels should be recorded now
(`recording.channels`: all, a list, or weekly schedules in the node's zone) and subscribes a
persistent `ChannelRecording` consumer to each, which keeps the stream invited through faults.
Frames go to `recorder.service.Recorder`, whose writer thread does the file writes, hashing,
fsync and indexing, so the event loop only queues them. Losses and interruptions become gaps in
the index, and so does the time the node was not running: a channel's first plan in a run tells
the recorder when the node started (`Recorder.planned`), and the writer thread, after the
recovery of what a crash left, records the time from the end of the channel's record to then.

It also watches the disk (`recording.min_free_gb`: alarm in the log, `/healthz`, `/api/stats`;
nothing in retention is ever deleted to make room), runs the retention sweeper hourly, answers
searches and RecordInfo queries from the index (on a reader thread with its own read-only
connection; the sweep reads there too, and the recorder's writer thread commits its deletions),
and writes the audit log of who fetched what.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from recorder.audit import AuditLog
from recorder.export import SegmentRef
from recorder.index import GapRow, RecordIndex, SegmentRow
from recorder.search import record_search
from recorder.service import Recorder, root_index
from rtp.ps import AccessUnit
from sip import ids, manscdp

from ..devices.registry import Registry
from ..media.consumers import Consumer, StreamError
from ..media.hub import StreamHub
from ..media.overload import recorder_backlog
from ..media.workers.pool import MediaWorkers, RoutedRecorder
from ..runtime.supervise import Supervisor
from ..settings import RecordingSettings, Settings

__all__ = ["ChannelRecording", "RecordingService", "StoragePlan", "plan_storage"]

log = logging.getLogger(__name__)

RECONCILE_S = 2.0
DISK_CHECK_S = 30.0
SWEEP_S = 3600.0
GB = 1_000_000_000
DAY = 86400.0


class ChannelRecording(Consumer):
    """The recorder's subscription to one channel: frames in, gaps noted."""

    name = "recorder"
    persistent = True
    remote_feed = "record"  # a media worker records the channel itself

    def __init__(self, service: RecordingService, channel_id: str) -> None:
        self.service = service
        self.channel_id = channel_id
        self.units = 0

    def on_unit(self, unit: AccessUnit) -> None:
        recorder = self.service.recorder
        if recorder is not None:
            stream = self.service.hub.streams.get(self.channel_id)
            wall = stream.unit_wall() if stream is not None else self.service.wall()
            self.units += 1
            recorder.submit(self.channel_id, unit, wall)

    def on_loss(self, packets: int) -> None:
        self._lost(f"{packets} RTP packet(s) lost")

    def on_gap(self, reason: str) -> None:
        self._lost(reason)

    def on_end(self, reason: str) -> None:
        self._lost(reason)  # reconcile() subscribes the channel again while it is planned

    def _lost(self, reason: str) -> None:
        # The writer ends the open segment after its last frame and records the gap from
        # there once frames resume.
        recorder = self.service.recorder
        if recorder is not None:
            recorder.lost(self.channel_id, self.service.wall(), reason)


@dataclass
class RecordAnswer:
    """The answer to one Query/RecordInfo: the items (RecordList fields) in time order and
    the spans of the node's own recordings among them, Unix seconds; `start`/`end` is the
    range searched (after the `query_max_days` cut)."""

    sn: int
    channel_id: str
    name: str
    start: float
    end: float
    items: list[dict[str, manscdp.XmlValue]]
    spans: list[tuple[float, float]]

    def bodies(self, encoding: str = "GB2312") -> list[bytes]:
        return manscdp.response_parts(
            "RecordInfo", self.sn, self.channel_id, self.items, list_name="RecordList",
            fields=[("Name", self.name)], per_message=10, max_bytes=8000, encoding=encoding,
        )


@dataclass(frozen=True)
class StoragePlan:
    """What the configured retention needs against what the disk offers."""

    root: Path
    retention_days: int
    per_channel: dict[str, float]  # channel -> bytes per day, as observed in the index
    needed_bytes: float  # for the whole retention period
    stored_bytes: int  # what the recordings hold now
    free_bytes: int
    total_bytes: int

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.stored_bytes + self.free_bytes

    def lines(self) -> list[str]:
        out = [f"recordings in {self.root}: retention {self.retention_days} days"]
        for channel, per_day in sorted(self.per_channel.items()):
            out.append(f"  {channel}: {per_day * 8 / DAY / 1e6:.2f} Mbit/s observed, "
                       f"{per_day / GB:.1f} GB/day, {per_day * self.retention_days / GB:.1f} GB "
                       f"for {self.retention_days} days")
        if not self.per_channel:
            out.append("  no recorded channel yet: nothing observed to estimate from")
        out.append(f"needed {self.needed_bytes / GB:.1f} GB; recorded {self.stored_bytes / GB:.1f}"
                   f" GB + free {self.free_bytes / GB:.1f} GB of {self.total_bytes / GB:.1f} GB")
        out.append("the disk can hold the retention period" if self.fits else
                   "WARNING: the disk cannot hold the retention period")
        return out


def plan_storage(index: RecordIndex, root: Path, retention_days: int, now: float) -> StoragePlan:
    """Observed bytes per day of every channel (over the last week) times the retention."""
    per_channel = index.bytes_per_day(since=now - 7 * DAY)
    stored = index.total_bytes()
    usage = shutil.disk_usage(root)
    return StoragePlan(
        root=root,
        retention_days=retention_days,
        per_channel=per_channel,
        needed_bytes=sum(per_channel.values()) * retention_days,
        stored_bytes=stored,
        free_bytes=usage.free,
        total_bytes=usage.total,
    )


class RecordingService:
    """Recording of the planned channels, plus search, RecordInfo and the audit log."""

    def __init__(
        self,
        settings: Settings,
        hub: StreamHub,
        registry: Registry,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.config: RecordingSettings = settings.recording
        self.hub = hub
        self.registry = registry
        self.wall = wall
        self.root = self.config.root(settings.node)
        self.recorder: Recorder | None = None
        #: the media worker processes, which record the channels they receive (`media.workers`
        #: > 1; set by the node before `start`)
        self.workers: MediaWorkers | None = None
        self.audit: AuditLog | None = None
        self.recordings: dict[str, ChannelRecording] = {}
        self.disk_alarm: str | None = None
        self.free_bytes: int | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="recordings-reader")
        self._read_index: RecordIndex | None = None
        self._audit_thread = ThreadPoolExecutor(1, thread_name_prefix="audit-writer")
        self._task: asyncio.Task[None] | None = None
        self._subscribing: dict[str, asyncio.Task[Any]] = {}
        #: channel -> why its last subscription was refused, as logged (the reason up to its
        #: last ";", where a shed channel's says how long it is still refused): a refusal
        #: repeated every `RECONCILE_S` is logged once
        self._refused: dict[str, str] = {}
        #: when the node started: the "node not running" gaps end here
        self.up: float | None = None
        #: the channels planned now, told to the recorder (`Recorder.planned`)
        self._planned: set[str] = set()
        #: planned channels whose device was offline, said once until they are subscribed
        self._offline: set[str] = set()
        self._reconciled = False
        # `wanted()`'s last answer and what it depended on: the catalogs, the configuration
        # and the minute of the week.
        self._wanted: tuple[object, frozenset[str]] | None = None

    def apply_settings(self, settings: Settings) -> None:
        """Take reloaded settings: the plan (`recording.channels`) is reconciled at once
        (recordings start and stop), retention, the disk alarm and the search span apply from
        their next use. Where segments go and how they are cut are bound at start: the node
        passes the running `dir`, `segment_s`, `fsync_s` and `direct_io` (see `settings.reload`)."""
        self.settings = settings
        self.config = settings.recording
        if self.recorder is not None and self._task is not None:
            self.reconcile()

    # ----- start / stop -----
    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Open the recorder and the audit log, then run the recording loop under `supervisor`
        (restarted with backoff if it fails; a supervisor of its own without one)."""
        loop = asyncio.get_running_loop()
        tz = self.settings.node.tz
        self.up = self.wall()
        recorder = await loop.run_in_executor(None, lambda: Recorder(
            self.root, segment_s=self.config.segment_s, tz=tz, clock=self.wall,
            fsync_s=self.config.fsync_s, direct_io=self.config.direct_io,
        ))
        self.recorder = recorder
        # A recorder that falls behind is overload too (media/overload.py); the workers
        # report their own recorders' queues.
        self.hub.load_meter.recorder_queue = lambda: recorder_backlog(
            recorder.queue_bytes, recorder.queue_depth, recorder.max_queue,
            recorder.max_queue_bytes)
        if self.workers is not None:
            # What a crash left is finished before any worker opens a segment of its own.
            await loop.run_in_executor(None, recorder.drain)
            self.recorder = RoutedRecorder(recorder, self.workers)  # type: ignore[assignment]
        audit_path = self.settings.node.data_dir / "audit.sqlite3"
        self.audit = await loop.run_in_executor(self._audit_thread, AuditLog, audit_path)
        await self._check_disk()
        await self._warn_if_too_small()
        self._task = (supervisor or Supervisor()).spawn("recording", self._run)

    async def stop(self) -> None:
        """Unsubscribe, then close every open segment (durable, hashed, indexed)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in self._subscribing.values():
            task.cancel()
        await asyncio.gather(*self._subscribing.values(), return_exceptions=True)
        for channel_id, consumer in list(self.recordings.items()):
            self.hub.unsubscribe(channel_id, consumer, linger=False, reason="node stopping")
        self.recordings.clear()
        loop = asyncio.get_running_loop()
        # A sweep cancelled above still runs on the reader thread: it ends before the recorder
        # closes, so that no file it removes is left in the index.
        await loop.run_in_executor(self._reader, lambda: None)
        if self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            # A gap still open (a stream that did not play) ends now, not at its last frame.
            stopped = self.wall()
            await loop.run_in_executor(None, lambda: recorder.close(wall=stopped))
        await loop.run_in_executor(self._reader, self._close_reader)
        self._reader.shutdown(wait=True)
        if self.audit is not None:
            audit, self.audit = self.audit, None
            await loop.run_in_executor(self._audit_thread, audit.close)
        self._audit_thread.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_disk = loop.time() + DISK_CHECK_S
        next_sweep = loop.time() + 60.0
        while True:
            self.reconcile()
            await asyncio.sleep(RECONCILE_S)
            if self.recorder is not None and not self.config.fsync_s:
                # Buffered bytes reach the .part files every few seconds, so a crash loses
                # at most that much (recovery finishes the files at the next start). With
                # fsync_s set, the recorder's sync passes write them out (spread between the
                # units, where a flush would write every buffer at once).
                self.recorder.flush(timeout=0)
            now = loop.time()
            if now >= next_disk:
                next_disk = now + DISK_CHECK_S
                await self._check_disk()
            if now >= next_sweep:
                next_sweep = now + SWEEP_S
                await self.sweep()

    # ----- which channels -----
    def wanted(self) -> frozenset[str]:
        """The channels to record now. "all" means every catalogued video source (cameras,
        IPCs and the like): catalog items that are folders, alarm inputs or platforms are not
        streams; a channel the operator names is recorded whatever its type.

        Worked out again only when a catalog, the configuration or the minute changed: called
        every `RECONCILE_S`, it must not walk every channel of a large site each time.
        """
        local = datetime.fromtimestamp(self.wall(), self.settings.node.tz)
        weekday, minute = local.weekday(), local.hour * 60 + local.minute
        key = (self.registry.channels_version, self.config, weekday, minute)
        if self._wanted is not None and self._wanted[0] == key:
            return self._wanted[1]
        config = self.config  # compared by value: a reload with the same plan keeps the answer
        every = config.channels is None
        wanted = frozenset(
            channel_id
            for channel_id in self.registry.channel_ids()
            if config.wants(channel_id, weekday, minute)
            and (not every or _is_video_source(channel_id))
        )
        self._wanted = key, wanted
        return wanted

    def reconcile(self) -> None:
        """Subscribe the channels due now, unsubscribe the others."""
        wanted = self.wanted()
        for channel_id in list(self.recordings):
            if channel_id not in wanted:
                self._stop_recording(channel_id)
        for channel_id in self._planned - wanted:  # never subscribed: the device was offline
            self._unplan(channel_id)
        recorder = self.recorder
        # A channel planned at the first pass is waited for from the node's start on.
        since = self.wall() if self._reconciled or self.up is None else self.up
        self._reconciled = True
        for channel_id in wanted:
            if channel_id not in self._planned and recorder is not None:
                self._planned.add(channel_id)
                recorder.planned(channel_id, since, self.up)
            consumer = self.recordings.get(channel_id)
            stream = self.hub.streams.get(channel_id)
            attached = consumer is not None and stream is not None and consumer in stream.consumers
            if attached or channel_id in self._subscribing:
                continue
            device = self.registry.channel_device(channel_id)
            if device is None or not device.online:
                # Tried again once the device is back; meanwhile that is why it is not recorded
                # (if no other cause was reported first: the recorder keeps the first).
                if channel_id not in self._offline and recorder is not None:
                    self._offline.add(channel_id)
                    recorder.lost(channel_id, self.wall(), "device offline")
                continue
            self._offline.discard(channel_id)
            if consumer is None:
                consumer = self.recordings[channel_id] = ChannelRecording(self, channel_id)
            self._subscribing[channel_id] = asyncio.create_task(
                self._subscribe(channel_id, consumer)
            )

    async def _subscribe(self, channel_id: str, consumer: ChannelRecording) -> None:
        try:
            await self.hub.subscribe(channel_id, consumer)
            self._refused.pop(channel_id, None)
            log.info("recording %s", channel_id)
        except StreamError as exc:
            # The consumer is persistent: the stream keeps trying on its own. The same refusal
            # again (a channel shed for overload: refused at every pass for its cool-down) is
            # not logged again: at 100 shed channels that was 50 lines a second.
            why = exc.reason.rsplit(";", 1)[0]
            if self._refused.get(channel_id) != why:
                self._refused[channel_id] = why
                log.warning("recording %s: %s (retrying)", channel_id, exc.reason)
        finally:
            self._subscribing.pop(channel_id, None)

    def planned(self, channel_id: str) -> bool:
        """Whether the channel's recording is planned now (told to the recorder)."""
        return channel_id in self._planned

    def _stop_recording(self, channel_id: str) -> None:
        self._refused.pop(channel_id, None)
        consumer = self.recordings.pop(channel_id)
        task = self._subscribing.pop(channel_id, None)
        if task is not None:
            task.cancel()
        self.hub.unsubscribe(channel_id, consumer)
        self._unplan(channel_id)
        log.info("recording %s stopped (not planned now)", channel_id)

    def _unplan(self, channel_id: str) -> None:
        """The channel is no longer planned: its open segment ends, and a gap still open ends
        now."""
        self._planned.discard(channel_id)
        self._offline.discard(channel_id)
        if self.recorder is not None:
            self.recorder.close_channel(channel_id, self.wall())

    def wall_stepped(self, before: float, after: float) -> None:
        """The recording time jumped from `before` to `after` (the wall clock stepped forward):
        each open segment ends at its last frame, and the time skipped is a gap, so that no
        segment claims the hours it jumped. Recording resumes at the next keyframe."""
        recorder = self.recorder
        if recorder is None:
            return
        reason = f"not recorded: wall clock stepped forward {after - before:.0f} s"
        for channel_id in list(self.recordings):
            recorder.lost(channel_id, before, reason)

    # ----- disk and retention -----
    async def _check_disk(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            usage = await loop.run_in_executor(None, shutil.disk_usage, self.root)
        except OSError as exc:
            self._alarm(f"recordings disk: cannot read free space: {exc}")
            return
        self.free_bytes = usage.free
        limit = self.config.min_free_gb * GB
        if usage.free < limit:
            self._alarm(f"recordings disk: {usage.free / GB:.1f} GB free, below min_free_gb "
                        f"{self.config.min_free_gb:g}")
        elif self.disk_alarm is not None:
            log.warning("recordings disk: %.1f GB free again", usage.free / GB)
            self.disk_alarm = None

    def _alarm(self, text: str) -> None:
        if self.disk_alarm is None:
            log.error("%s; recording continues while space lasts, nothing in retention is "
                      "deleted", text)
        self.disk_alarm = text

    async def sweep(self) -> list[SegmentRow]:
        """Delete segments past retention (only those), oldest first; logged by the sweeper."""
        loop = asyncio.get_running_loop()
        now = self.wall()  # on the loop: the node's clock is the loop's to read
        return await loop.run_in_executor(self._reader, self._sweep, now)

    def _sweep(self, now: float) -> list[SegmentRow]:
        # Found through the read-only connection, files removed here, and each batch of
        # deletions committed by the recorder's writer thread: the index has one writer.
        recorder = self.recorder
        if recorder is None:
            return []
        return recorder.sweep(self.config.retention_days, now, reader=self._index(),
                              allow_short=self.config.allow_short_retention)

    async def _warn_if_too_small(self) -> None:
        loop = asyncio.get_running_loop()
        plan = await loop.run_in_executor(self._reader, self.storage_plan)
        if not plan.fits:
            for line in plan.lines():
                log.warning("%s", line)

    def storage_plan(self) -> StoragePlan:
        return plan_storage(self._index(), self.root, self.config.retention_days, self.wall())

    def problems(self) -> list[str]:
        problems = [self.disk_alarm] if self.disk_alarm else []
        recorder = self.recorder
        if recorder is not None and recorder.last_error and recorder.write_errors:
            problems.append(f"recorder: {recorder.last_error}")
        return problems

    def stats(self) -> dict[str, Any]:
        recorder = self.recorder
        return {
            "channels": len(self.recordings),
            "free_bytes": self.free_bytes,
            "disk_alarm": self.disk_alarm,
            "units": recorder.units if recorder else 0,
            "bytes": recorder.bytes if recorder else 0,
            "segments_closed": recorder.segments_closed if recorder else 0,
            "write_errors": recorder.write_errors if recorder else 0,
            "dropped_units": recorder.dropped_units if recorder else 0,
            "queue_depth": recorder.queue_depth if recorder else 0,
            "queue_bytes": recorder.queue_bytes if recorder else 0,
            "syncs": recorder.syncs if recorder else 0,
            "last_error": recorder.last_error if recorder else None,
        }

    # ----- reading the index (one reader thread, its own connection) -----
    def _index(self) -> RecordIndex:
        if self._read_index is None:
            self._read_index = RecordIndex(root_index(self.root), read_only=True)
        return self._read_index

    def _close_reader(self) -> None:
        if self._read_index is not None:
            self._read_index.close()
            self._read_index = None

    async def search(
        self, channel_id: str, start: float, end: float
    ) -> tuple[list[SegmentRow], list[GapRow]]:
        loop = asyncio.get_running_loop()

        def query() -> tuple[list[SegmentRow], list[GapRow]]:
            index = self._index()
            return index.segments(channel_id, start, end), index.gaps(channel_id, start, end)

        return await loop.run_in_executor(self._reader, query)

    async def playback_segments(
        self, channel_id: str, start: float, end: float
    ) -> tuple[str, list[SegmentRow]]:
        """The recording root and the index rows of `channel_id` that overlap the range, for a
        playback or download (read and checked by `recorder.playback` in the data plane)."""
        segments, _ = await self.search(channel_id, start, end)
        return str(self.root), segments

    async def segment_refs(self, channel_id: str, start: float, end: float) -> list[SegmentRef]:
        segments, _ = await self.search(channel_id, start, end)
        return [
            SegmentRef(self.root / row.path, row.start_wall, row.start_pts, row.codec,
                       row.end_wall)
            for row in segments
        ]

    async def record_items(
        self, query: manscdp.ManscdpMessage, *, known: bool = True
    ) -> RecordAnswer:
        """The items answering a Query/RecordInfo, from the index.

        One item per run of segments without a gap (`recorder.search`), so a day is a handful
        of items, not 1,440; gaps are simply absent. A range longer than
        `recording.query_max_days` is cut to its last that many days. `known=False` answers as
        for a channel the node has never heard of (no items, the ID as its name): what a device
        gets when it asks about a channel that is not its own, and an upstream about one not
        shared with it.
        """
        tz = self.settings.node.tz
        fields = query.fields
        channel_id = query.device_id
        try:
            start = manscdp.parse_gb_time(fields.get("StartTime", ""), tz).timestamp()
            end = manscdp.parse_gb_time(fields.get("EndTime", ""), tz).timestamp()
        except ValueError:
            start, end = 0.0, 0.0
        start = max(start, end - self.settings.recording.query_max_days * 86400.0)
        searched = known and end > start
        segments, gaps = await self.search(channel_id, start, end) if searched else ([], [])
        name = channel_id
        device = self.registry.channel_device(channel_id) if known else None
        if device is not None:
            name = device.channels.get(channel_id, {}).get("Name", "") or device.name or name
        found = record_search(segments, start, end, gaps=gaps, merge=True)
        if not found.complete:
            log.info("RecordInfo for %s: %d runs merged into %d items", channel_id,
                     found.runs, len(found.items))
        items: list[dict[str, manscdp.XmlValue]] = [
            dict(item.fields(tz, name=name, recorder_id=self.settings.node.id))
            for item in found.items
        ]
        spans = [(item.start, item.end) for item in found.items]
        return RecordAnswer(query.sn, channel_id, name, start, end, items, spans)

    async def record_info(
        self, query: manscdp.ManscdpMessage, *, known: bool = True, encoding: str = "GB2312"
    ) -> list[bytes]:
        """Response/RecordInfo bodies for a Query/RecordInfo, from the index (`record_items`)."""
        return (await self.record_items(query, known=known)).bodies(encoding)

    # ----- audit -----
    async def log_access(self, **entry: Any) -> None:
        """Append to the audit log (actor, action, channel_id, range_start, range_end,
        purpose, result, detail); on its own thread so the loop never waits for SQLite."""
        audit = self.audit
        if audit is None:
            return
        loop = asyncio.get_running_loop()
        entry.setdefault("at", self.wall())
        await loop.run_in_executor(self._audit_thread, lambda: audit.append(**entry))

    async def audit_query(self, **filters: Any) -> list[Any]:
        audit = self.audit
        if audit is None:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._audit_thread, lambda: audit.query(**filters))


def _is_video_source(channel_id: str) -> bool:
    return (len(channel_id) == 20 and channel_id.isdigit()
            and int(channel_id[10:13]) in ids.VIDEO_TYPES)
