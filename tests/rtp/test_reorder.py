"""Bounded reordering (window, delay, duplicates, wrap, restarts) and RFC 3550 A.8 jitter."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rtp.reorder import JitterStats, ReorderBuffer


def _push_all(buf: ReorderBuffer[int], seqs: list[int], now: float = 0.0) -> list[int]:
    out: list[int] = []
    for s in seqs:
        out += buf.push(s, s, now)
    return out


def test_in_order() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    assert _push_all(buf, list(range(100))) == list(range(100))
    assert (buf.received, buf.lost, buf.reordered, buf.duplicates) == (100, 0, 0, 0)
    assert buf.next_deadline() is None


def test_swap_is_held_then_released() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer()
    assert buf.push(10, "a", 0.0) == ["a"]
    assert buf.push(12, "c", 0.01) == []
    assert buf.held == 1
    assert buf.next_deadline() == pytest.approx(0.21)
    assert buf.push(11, "b", 0.02) == ["b", "c"]
    assert buf.reordered == 1
    assert buf.lost == 0
    assert buf.next_deadline() is None


def test_wraparound_in_order() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    seqs = [(65530 + i) & 0xFFFF for i in range(20)]
    assert _push_all(buf, seqs) == seqs
    assert buf.lost == 0


def test_wraparound_reordered() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    assert _push_all(buf, [65534, 0, 65535, 2, 1]) == [65534, 65535, 0, 1, 2]
    assert buf.reordered == 2


def test_duplicates_released_and_held() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    assert _push_all(buf, [1, 2, 2, 1, 4, 4]) == [1, 2]
    assert buf.duplicates == 3
    assert buf.push(3, 3, 0.0) == [3, 4]
    assert buf.push(3, 3, 0.0) == []
    assert buf.duplicates == 4
    assert buf.received == 8


def test_gap_given_up_after_delay() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(max_delay_s=0.2)
    assert buf.push(1, 1, 0.0) == [1]
    assert buf.push(3, 3, 0.05) == []
    assert buf.push(4, 4, 0.1) == []
    assert buf.next_deadline() == pytest.approx(0.25)
    assert buf.flush(0.24) == []
    assert buf.flush(0.25) == [3, 4]
    assert buf.lost == 1
    assert buf.next_deadline() is None
    assert buf.push(2, 2, 0.3) == []  # too late now
    assert buf.late == 1
    assert buf.push(5, 5, 0.3) == [5]


def test_gap_given_up_on_push_after_delay() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(max_delay_s=0.2)
    _push_all(buf, [1, 3])
    assert buf.push(4, 4, 1.0) == [3, 4]
    assert buf.lost == 1


def test_second_gap_waits_from_its_own_packets() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(max_delay_s=0.2)
    buf.push(1, 1, 0.0)
    buf.push(3, 3, 0.0)
    buf.push(6, 6, 0.15)
    assert buf.flush(0.2) == [3]
    assert buf.next_deadline() == pytest.approx(0.35)
    assert buf.flush(0.35) == [6]
    assert buf.lost == 3


def test_gap_given_up_after_window() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(window=4, max_delay_s=10.0)
    buf.push(0, 0, 0.0)
    assert _push_all(buf, [2, 3, 4]) == []
    assert buf.push(5, 5, 0.0) == [2, 3, 4, 5]
    assert buf.lost == 1


def test_jump_beyond_window_skips_at_once() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(window=64)
    buf.push(0, 0, 0.0)
    buf.push(5, 5, 0.0)
    assert buf.push(1000, 1000, 0.0) == [5]
    assert buf.held == 1
    assert buf.lost == 4 + (1000 - 64 + 1 - 6)
    assert _push_all(buf, list(range(937, 1000))) == list(range(937, 1001))
    assert buf.lost == 4 + (937 - 6)


def test_restart_is_confirmed_by_the_next_packet() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    _push_all(buf, [100, 101, 103])
    assert buf.push(40000, 40000, 0.0) == []
    assert buf.push(40001, 40001, 0.0) == [103, 40000, 40001]
    assert buf.push(40002, 40002, 0.0) == [40002]
    assert buf.restarts == 1
    assert buf.lost == 1


def test_restart_backwards() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    _push_all(buf, list(range(1000, 1010)))
    assert _push_all(buf, [5, 6, 7]) == [5, 6, 7]
    assert buf.restarts == 1
    assert buf.late == 0


def test_stray_packet_is_discarded() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    assert _push_all(buf, [1, 2, 30000, 3, 4]) == [1, 2, 3, 4]
    assert buf.discarded == 1
    assert buf.restarts == 0
    assert _push_all(buf, [30001, 5]) == [5]  # 30001 follows the discarded 30000: not a restart
    assert buf.restarts == 0


def test_drain() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    _push_all(buf, [1, 3, 6, 5])
    assert buf.drain() == [3, 5, 6]
    assert buf.lost == 2
    assert buf.next_deadline() is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ReorderBuffer(window=0)
    with pytest.raises(ValueError):
        ReorderBuffer(window=100, max_dropout=50)
    with pytest.raises(ValueError):
        ReorderBuffer(max_delay_s=-1.0)


@st.composite
def window_permutations(draw: st.DrawFn) -> tuple[int, list[int]]:
    """Sequence numbers from a random start, each moved less than the window from its place."""
    start = draw(st.integers(0, 0xFFFF))
    count = draw(st.integers(1, 300))
    window = 16
    keys = [i + draw(st.integers(0, window - 1)) for i in range(count)]
    order = sorted(range(count), key=lambda i: (keys[i], i))
    return start, [(start + i) & 0xFFFF for i in order]


@given(window_permutations())
@example((65530, [65531, 65530, 65533, 65532, 0, 65535, 65534, 1]))
def test_permutation_within_window_comes_out_in_order(case: tuple[int, list[int]]) -> None:
    start, seqs = case
    buf: ReorderBuffer[int] = ReorderBuffer(window=32, max_delay_s=1.0)
    buf.push((start - 1) & 0xFFFF, -1, 0.0)
    out = _push_all(buf, seqs)
    assert out == sorted(seqs, key=lambda s: (s - start) & 0xFFFF)
    assert buf.lost == 0
    assert buf.held == 0


# Offsets stay below the buffer's history (128 packets for a window of 64): a packet further
# behind than that, followed by its successor, is a restarted source by design (see
# test_restart_is_confirmed_by_the_next_packet), and its output starts a new order.
@given(
    st.lists(st.tuples(st.integers(0, 120), st.floats(0, 0.05)), max_size=300),
    st.integers(0, 0xFFFF),
)
@example([(0, 0.0), (2, 0.0), (3, 0.0), (67, 0.0)], 0)
def test_gaps_never_wait_forever(steps: list[tuple[int, float]], start: int) -> None:
    """Any arrival order within the history: output is in order, bounded, and nothing is held
    past its deadline."""
    buf: ReorderBuffer[int] = ReorderBuffer(window=64, max_delay_s=0.2)
    now = 0.0
    out: list[int] = []
    for offset, dt in steps:
        now += dt
        seq = (start + offset) & 0xFFFF
        out += buf.push(seq, offset, now)
        assert buf.held < 64
        deadline = buf.next_deadline()
        assert deadline is None or deadline <= now + 0.2
    assert out == sorted(out)
    assert len(set(out)) == len(out)
    for _ in range(64):
        deadline = buf.next_deadline()
        if deadline is None:
            break
        assert deadline >= now
        now = deadline
        out += buf.flush(now)
    assert buf.next_deadline() is None
    assert buf.held == 0
    assert len(out) + buf.duplicates + buf.late + buf.discarded == buf.received
    assert out == sorted(out)


def test_jitter_constant_transit_is_zero() -> None:
    stats = JitterStats()
    for i in range(50):
        stats.update(i * 3600, 10.0 + i * 0.04)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_jitter_follows_a8() -> None:
    stats = JitterStats(clock_rate=90000)
    assert stats.update(0, 0.0) == 0.0
    # Sent 40 ms apart, received 50 ms apart: |D| = 900 timestamp units.
    assert stats.update(3600, 0.05) == pytest.approx(900 / 16)
    assert stats.update(7200, 0.09) == pytest.approx(900 / 16 * 15 / 16)  # D = 0 this time
    assert stats.jitter_s == pytest.approx(stats.jitter / 90000)


def test_jitter_across_timestamp_wrap() -> None:
    stats = JitterStats()
    stats.update(0xFFFFFFFF - 1799, 0.0)
    assert stats.update(1800, 0.04) == pytest.approx(0.0, abs=1e-6)


def test_jitter_bad_clock() -> None:
    with pytest.raises(ValueError):
        JitterStats(clock_rate=0)


def test_lone_jump_expires() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(max_delay_s=0.2)
    buf.push(1, 1, 0.0)
    assert buf.push(20000, 20000, 1.0) == []
    assert buf.next_deadline() == pytest.approx(1.2)
    assert buf.flush(1.2) == []
    assert buf.discarded == 1
    assert buf.next_deadline() is None
    assert buf.push(2, 2, 1.3) == [2]


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=120))
def test_take_then_push_is_push(offsets: list[int]) -> None:
    """A receiver that tries `take` first and falls back to `push` releases the same packets
    in the same order, with the same counters, as one that only pushes."""
    seqs = [(65500 + off + i) & 0xFFFF for i, off in enumerate(offsets)]
    plain: ReorderBuffer[int] = ReorderBuffer(16, 0.2)
    fast: ReorderBuffer[int] = ReorderBuffer(16, 0.2)
    out_plain: list[int] = []
    out_fast: list[int] = []
    for i, seq in enumerate(seqs):
        now = i * 0.001
        out_plain += plain.push(seq, seq, now)
        if fast.take(seq):
            out_fast.append(seq)
        else:
            out_fast += fast.push(seq, seq, now)
    out_plain += plain.drain()
    out_fast += fast.drain()
    assert out_fast == out_plain
    for name in ("received", "lost", "reordered", "duplicates", "late", "discarded", "restarts"):
        assert getattr(fast, name) == getattr(plain, name), name


@pytest.mark.parametrize("start", [0, 255, 256, 1000, 65400])
def test_a_taken_packet_sent_again_is_a_duplicate(start: int) -> None:
    """A packet released through `take` is remembered as released, whichever lap of slots its
    sequence number is on: sent again it counts as a duplicate, not as late."""
    buf: ReorderBuffer[int] = ReorderBuffer(64, 0.2)
    assert buf.push(start, start, 0.0) == [start]
    seqs = [(start + i) & 0xFFFF for i in range(1, 300)]
    assert all(buf.take(seq) for seq in seqs)
    for seq in seqs[-100:]:  # within the history
        assert buf.push(seq, seq, 0.1) == []
    assert (buf.duplicates, buf.late) == (100, 0)
