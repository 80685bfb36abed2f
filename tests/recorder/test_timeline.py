"""A channel's record of time: gaps never end before they start, never overlap a segment or
another gap, and carry the reason of what happened then (recorder.verify.check_timeline).

The state machine drives a real SegmentWriter over a real index and the real media through what
a node does to it: plan the channel, hand it frames, report losses (and the gaps a caller knows
of), fill the disk, stop cleanly, crash (the next start runs the real recovery), start again.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import recorder.segments
from recorder.index import TIME_TOLERANCE_S, GapRow, RecordIndex, SegmentRow
from recorder.recovery import recover
from recorder.segments import NODE_NOT_RUNNING, NOT_STARTED, SegmentWriter
from recorder.verify import GapProblem, check_timeline, verify
from tests.recorder.media import CHANNEL, FPS, T0, TZ, units

NAME = "gb_h264_zlm.ps"  # 250 frames at 25 fps, a keyframe every second
TOL = TIME_TOLERANCE_S
LOSSES = ["no answer to INVITE within 10 s", "no media for 10 s", "3 RTP packet(s) lost",
          "device offline"]
CALLER = "camera offline"  # a gap the caller reports with its own start and end


def segment(id: int, start: float, end: float, path: str = "") -> SegmentRow:
    return SegmentRow(id, CHANNEL, path or f"{CHANNEL}/{id}.ps", start, end, None, None, 1, 1,
                      "h264", "0" * 64, None, False)


def gap(id: int, start: float, end: float, reason: str = "packet loss") -> GapRow:
    return GapRow(id, CHANNEL, start, end, reason)


# ----- the invariant itself ---------------------------------------------------------------------

def test_a_record_whose_gaps_fit_between_its_segments_is_in_order() -> None:
    segments = [segment(1, 0.0, 10.0), segment(2, 12.0, 20.0), segment(3, 20.0, 30.0)]
    gaps = [gap(1, 10.0, 12.0), gap(2, 30.0, 30.0), gap(3, 30.0, 40.0, NODE_NOT_RUNNING),
            gap(4, 40.0 - TOL / 2, 41.0)]  # float rounding between two computed times
    assert check_timeline(segments, gaps) == []
    assert check_timeline([], []) == []


def test_a_gap_that_ends_before_it_starts_is_reported() -> None:
    reversed_ = gap(1, 58.0, 25.0, "no answer to INVITE within 10 s")
    assert check_timeline([segment(1, 0.0, 20.0)], [reversed_]) == [GapProblem(reversed_, None)]


def test_gaps_that_overlap_a_segment_or_each_other_are_reported() -> None:
    long = segment(1, 0.0, 100.0)  # a segment that reaches past later-starting ones
    segments = [long, segment(2, 10.0, 20.0), segment(3, 200.0, 210.0)]
    inside = gap(1, 50.0, 50.0)  # an instant inside the long segment
    across = gap(2, 150.0, 205.0, NODE_NOT_RUNNING)  # over the start of segment 3
    twice = gap(3, 160.0, 170.0)  # inside the gap before it
    fine = gap(4, 210.0, 220.0)
    assert check_timeline(segments, [fine, twice, across, inside]) == [
        GapProblem(inside, long), GapProblem(across, segments[2]), GapProblem(twice, across)]


def test_verify_reports_the_gaps_out_of_order(root: Path, index: RecordIndex) -> None:
    w = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
    for n, unit in enumerate(units(NAME)[:100]):
        w.write(unit, T0 + n / FPS)
    rows = w.close()
    assert verify(root, index).ok
    bad = index.add_gap(CHANNEL, T0 + 3, T0 + 1, "no answer to INVITE within 10 s")
    report = verify(root, index)
    assert not report.ok and report.gap_problems == [GapProblem(bad, None)]
    assert report.altered == report.missing == report.chain_breaks == []
    over = index.add_gap(CHANNEL, rows[0].end_wall - 1, rows[-1].end_wall + 5, NODE_NOT_RUNNING)
    assert verify(root, index).gap_problems == [GapProblem(bad, None), GapProblem(over, rows[0])]


# ----- the writer keeps it ----------------------------------------------------------------------

def test_a_restart_whose_first_attempt_fails_is_not_running_then_the_failure(
    root: Path, index: RecordIndex
) -> None:
    """The reported case: the first INVITE after a start fails, frames come with the retry."""
    first = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
    for n, unit in enumerate(units(NAME)[:50]):
        first.write(unit, T0 + n / FPS)
    (last,) = first.close(wall=T0 + 2)
    up = T0 + 33.0
    w = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)  # the next start of the node
    w.planned(up, up)
    w.lost(up + 10, "no answer to INVITE within 10 s")
    resumed = up + 21.0
    for n, unit in enumerate(units(NAME)[50:100]):
        w.write(unit, resumed + n / FPS)
    rows = w.close()
    assert [(g.start_wall, g.end_wall, g.reason) for g in index.gaps(CHANNEL)] == [
        (last.end_wall, up, NODE_NOT_RUNNING),
        (up, resumed, "no answer to INVITE within 10 s"),
    ]
    assert rows[0].start_wall == resumed
    assert check_timeline(index.segments(CHANNEL), index.gaps(CHANNEL)) == []


def test_a_gap_reported_from_before_a_pending_loss_never_ends_before_it_starts(
    root: Path, index: RecordIndex
) -> None:
    """What the node did at the first frame after a start whose first INVITE had failed: a
    "node not running" gap from the last segment's end, while the failure's gap was pending."""
    w = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
    for n, unit in enumerate(units(NAME)[:50]):
        w.write(unit, T0 + n / FPS)
    w.close()
    w = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
    w.lost(T0 + 43, "no answer to INVITE within 10 s")
    w.gap(T0 + 2, T0 + 58, NODE_NOT_RUNNING)
    for n, unit in enumerate(units(NAME)[50:100]):
        w.write(unit, T0 + 58 + n / FPS)
    w.close()
    gaps = index.gaps(CHANNEL)
    assert all(g.start_wall <= g.end_wall for g in gaps)
    assert check_timeline(index.segments(CHANNEL), gaps) == []
    assert [(g.start_wall, g.end_wall) for g in gaps] == [(T0 + 2, T0 + 58)]


def test_the_wait_for_a_stream_that_starts_is_no_gap_and_one_that_never_does_is(
    root: Path, index: RecordIndex
) -> None:
    w = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
    w.planned(T0, T0)  # the channel's first start: nothing before it to call a gap
    for n, unit in enumerate(units(NAME)[:50]):
        w.write(unit, T0 + 0.3 + n / FPS)
    w.close(wall=T0 + 2.3)
    assert index.gaps(CHANNEL) == []
    w = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
    w.planned(T0 + 60, T0 + 60)
    w.close(wall=T0 + 90)  # the node stops before the stream played
    assert [(g.start_wall, g.end_wall, g.reason) for g in index.gaps(CHANNEL)] == [
        (pytest.approx(T0 + 2.3), T0 + 60, NODE_NOT_RUNNING), (T0 + 60, T0 + 90, NOT_STARTED)]
    assert index.recorded_until(CHANNEL) == T0 + 90


def test_the_record_ends_at_a_recovered_segment(root: Path, index: RecordIndex) -> None:
    """A crash left a .part: recovery indexes it, and the "node not running" gap of the next
    start begins at its end, not at the end of the segment before it."""
    w = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ, buffer_bytes=16384)
    for n, unit in enumerate(units(NAME)[:90]):
        w.write(unit, T0 + n / FPS)
    (closed,) = index.segments(CHANNEL)
    assert w._open is not None
    os.close(w._open.fd)  # killed: what was buffered is lost, what was written stays
    (recovered,) = recover(root, index, tz=TZ)
    assert recovered.start_wall == pytest.approx(closed.end_wall, abs=TOL)
    assert recovered.end_wall > closed.end_wall + 1
    assert index.recorded_until(CHANNEL) == recovered.end_wall
    up = T0 + 100
    w = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
    w.planned(up, up)
    (down,) = index.gaps(CHANNEL)
    assert (down.start_wall, down.end_wall, down.reason) == (recovered.end_wall, up,
                                                             NODE_NOT_RUNNING)


# ----- the state machine ------------------------------------------------------------------------

class Disk:
    """Stands in for os.writev: full (ENOSPC) or not."""

    def __init__(self) -> None:
        self.full = False

    def __call__(self, fd: int, buffers: list[bytes | memoryview]) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.writev(fd, buffers)


@dataclass
class Plan:
    """A time the channel was planned, in one run of the node."""

    start: float
    end: float | None = None  # None: still planned
    first: str | None = None  # the first thing that happened: "frames" or a loss's reason


class RecordMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="timeline-"))
        self.index = RecordIndex(self.dir / "index.sqlite3")
        self.disk = Disk()
        self.saved_write = recorder.segments._write
        recorder.segments._write = self.disk
        self.units = units(NAME)
        self.next = 0  # the next unit to hand over
        self.wall = T0
        self.up = T0
        self.writer = self._writer()
        self.plans: list[Plan] = []

    def teardown(self) -> None:
        recorder.segments._write = self.saved_write
        if self.writer._open is not None:
            os.close(self.writer._open.fd)
        self.index.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _writer(self) -> SegmentWriter:
        return SegmentWriter(self.dir, self.index, CHANNEL, segment_s=2, tz=TZ,
                             buffer_bytes=16384, log_errors=False)

    @property
    def plan(self) -> Plan | None:
        return self.plans[-1] if self.plans and self.plans[-1].end is None else None

    # -- what the node does --

    @precondition(lambda self: self.plan is None)
    @rule()
    def planned(self) -> None:
        self.plans.append(Plan(self.wall))
        self.writer.planned(self.wall, self.up)

    @precondition(lambda self: self.plan is not None and self.next < len(self.units))
    @rule(count=st.integers(1, 40))
    def frames(self, count: int) -> None:
        plan = self.plan
        assert plan is not None
        plan.first = plan.first or "frames"
        for unit in self.units[self.next : self.next + count]:
            self.writer.write(unit, self.wall)
            self.wall += 1 / FPS
        self.next += count

    @precondition(lambda self: self.plan is not None)
    @rule(reason=st.sampled_from(LOSSES), pause=st.floats(0, 120))
    def lost(self, reason: str, pause: float) -> None:
        plan = self.plan
        assert plan is not None
        plan.first = plan.first or reason
        self.writer.lost(self.wall, reason)
        self.wall += pause

    @precondition(lambda self: self.plan is not None)
    @rule(back=st.floats(0, 30))
    def caller_gap(self, back: float) -> None:
        plan = self.plan
        assert plan is not None
        plan.first = plan.first or CALLER
        self.writer.gap(max(plan.start, self.wall - back), self.wall, CALLER)

    @rule(full=st.booleans())
    def disk_fills_or_frees(self, full: bool) -> None:
        self.disk.full = full

    @precondition(lambda self: self.plan is not None)
    @rule()
    def unplanned(self) -> None:
        plan = self.plan
        assert plan is not None
        self.writer.close(self.wall)
        plan.end = self.wall
        self._check_first(plan)
        self.writer = self._writer()

    @rule(down=st.floats(0.5, 7200), crash=st.booleans(), plan_at_start=st.booleans())
    def restart(self, down: float, crash: bool, plan_at_start: bool) -> None:
        plan = self.plan
        if crash:
            if self.writer._open is not None:
                os.close(self.writer._open.fd)  # buffered frames are lost with the process
            recover(self.dir, self.index, tz=TZ)
            if plan is not None:  # only what is on the disk remains of it
                plan.end = max(plan.start, self.index.recorded_until(CHANNEL) or plan.start)
        else:
            self.writer.close(self.wall)
            if plan is not None:
                plan.end = self.wall
                self._check_first(plan)
        self.wall += down
        self.up = self.wall
        self.writer = self._writer()
        if plan_at_start:
            self.planned()

    # -- what must hold --

    def _check_first(self, plan: Plan) -> None:
        """A loss reported before any frame names the wait from the plan's start (a wait of no
        time is no gap: then something else starts there)."""
        if plan.first is not None and plan.first != "frames":
            if any(abs(s.start_wall - plan.start) <= TOL for s in self.index.segments(CHANNEL)):
                return
            gaps = self.index.gaps(CHANNEL)
            assert any(abs(g.start_wall - plan.start) <= TOL for g in gaps), (plan, gaps)
            lasting = [g.reason for g in gaps if abs(g.start_wall - plan.start) <= TOL
                       and g.end_wall > g.start_wall + TOL]  # (not an earlier plan's instant)
            assert all(reason == plan.first for reason in lasting if reason in LOSSES), (plan, gaps)

    @invariant()
    def in_order(self) -> None:
        segments, gaps = self.index.segments(CHANNEL), self.index.gaps(CHANNEL)
        assert check_timeline(segments, gaps) == []
        planned = [(p.start, self.wall if p.end is None else p.end) for p in self.plans]

        def within(start: float, end: float) -> bool:
            return any(a - TOL <= start and end <= b + TOL for a, b in planned)

        for g in gaps:
            if g.reason == NODE_NOT_RUNNING:  # never while the node ran and wanted the channel
                # (but for the last frame of a segment open at the stop: its length is an
                # estimate, the frame interval, unknown after a single frame)
                assert not any(g.start_wall < b - 1 / FPS - TOL and g.end_wall > a + TOL
                               for a, b in planned), (g, planned)
            else:  # the rest happened while the channel was planned
                assert g.reason in (*LOSSES, CALLER, NOT_STARTED, "disk full"), g
                assert within(g.start_wall, g.end_wall), (g, planned)
        for s in segments:
            assert within(s.start_wall, s.end_wall), (s, planned)


TestRecordMachine = RecordMachine.TestCase
TestRecordMachine.settings = settings(max_examples=40, stateful_step_count=30)
