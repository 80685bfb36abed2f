"""Serial-number arithmetic across wrap (RFC 1982) and sequence extension (RFC 3550 A.1)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp.seq import SequenceExtender, seq_diff, seq_gt, seq_lt, ts_diff

seqs = st.integers(0, 0xFFFF)


@pytest.mark.parametrize(
    ("a", "b", "diff"),
    [
        (1, 0, 1),
        (0, 1, -1),
        (0, 0xFFFF, 1),
        (0xFFFF, 0, -1),
        (5, 0xFFF0, 21),
        (0x7FFF, 0, 0x7FFF),
        (0x8000, 0, -0x8000),
        (0, 0x8000, -0x8000),
    ],
)
def test_seq_diff(a: int, b: int, diff: int) -> None:
    assert seq_diff(a, b) == diff
    assert seq_lt(a, b) is (diff < 0)
    assert seq_gt(b, a) is (diff < 0)


def test_half_circle_is_before_both_ways() -> None:
    # RFC 1982 leaves it undefined; seq_lt stays consistent with the sign of seq_diff.
    assert seq_lt(0, 0x8000) and seq_lt(0x8000, 0)


def test_ts_diff_wraps() -> None:
    assert ts_diff(0, 0xFFFFFFFF) == 1
    assert ts_diff(3600, 0xFFFFF000) == 3600 + 0x1000
    assert ts_diff(0xFFFFF000, 3600) == -(3600 + 0x1000)
    assert ts_diff(0x80000000, 0) == -0x80000000


@given(seqs, st.integers(-0x7FFF, 0x7FFF))
def test_seq_diff_inverts_addition(a: int, step: int) -> None:
    b = (a + step) & 0xFFFF
    assert seq_diff(b, a) == step
    assert seq_diff(a, b) == -step
    assert seq_lt(a, b) is (step > 0)
    assert seq_lt(b, a) is (step < 0)
    assert not (seq_lt(a, b) and seq_gt(a, b))


@given(st.integers(0, 0xFFFFFFFF), st.integers(-0x7FFFFFFF, 0x7FFFFFFF))
def test_ts_diff_inverts_addition(a: int, step: int) -> None:
    assert ts_diff((a + step) & 0xFFFFFFFF, a) == step


def test_extender_counts_across_wraps() -> None:
    ext = SequenceExtender()
    start = 0xFFF0
    values = [ext.extend((start + i) & 0xFFFF) for i in range(3 * 0x10000)]
    assert values == list(range(start, start + 3 * 0x10000))
    assert ext.highest == values[-1]
    assert ext.restarts == 0


def test_extender_late_and_duplicate_packets_get_lower_numbers() -> None:
    ext = SequenceExtender()
    assert [ext.extend(s) for s in (0xFFFE, 0xFFFF, 1, 0, 1, 2)] == [
        0xFFFE,
        0xFFFF,
        0x10001,
        0x10000,
        0x10001,
        0x10002,
    ]
    assert ext.highest == 0x10002


def test_extender_gap_within_dropout_moves_on() -> None:
    ext = SequenceExtender(max_dropout=3000)
    ext.extend(100)
    assert ext.extend(100 + 2999) == 3099
    assert ext.restarts == 0


def test_extender_large_jump_restarts_but_stays_monotonic() -> None:
    ext = SequenceExtender(max_dropout=3000, max_misorder=100)
    for s in range(10):
        ext.extend(s)
    assert ext.extend(40000) == 10  # forward jump beyond max_dropout
    assert ext.extend(40001) == 11
    assert ext.extend(39000) == 12  # backward beyond max_misorder
    assert ext.extend(39001) == 13
    assert ext.restarts == 2


@given(st.lists(st.integers(-100, 3000), max_size=200), seqs)
def test_extender_highest_never_decreases(steps: list[int], start: int) -> None:
    ext = SequenceExtender()
    seq = start
    last = -1
    for step in steps:
        seq = (seq + step) & 0xFFFF
        value = ext.extend(seq)
        assert value & 0xFFFF == seq or ext.restarts
        assert ext.highest >= last
        last = ext.highest


def test_extender_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        SequenceExtender(max_dropout=0)
    with pytest.raises(ValueError):
        SequenceExtender(max_misorder=0x8000)
