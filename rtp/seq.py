"""Serial-number arithmetic for RTP sequence numbers and timestamps (RFC 1982; RFC 3550 A.1).

RTP sequence numbers are 16 bits and timestamps 32 bits; both wrap. Comparisons take the
shorter way round the circle. Values exactly half a circle apart are undefined in RFC 1982;
here `seq_diff` returns the negative value for them, so `seq_lt` is then true both ways.
"""

from __future__ import annotations

__all__ = ["SequenceExtender", "seq_diff", "seq_gt", "seq_lt", "ts_diff"]

_SEQ_MOD = 1 << 16
_SEQ_HALF = 1 << 15
_TS_MOD = 1 << 32
_TS_HALF = 1 << 31


def seq_diff(a: int, b: int) -> int:
    """`a - b` for 16-bit sequence numbers, in -32768..32767."""
    return ((a - b + _SEQ_HALF) & 0xFFFF) - _SEQ_HALF


def seq_lt(a: int, b: int) -> bool:
    """Whether sequence number `a` comes before `b`."""
    return ((a - b + _SEQ_HALF) & 0xFFFF) < _SEQ_HALF


def seq_gt(a: int, b: int) -> bool:
    """Whether sequence number `a` comes after `b`."""
    return seq_lt(b, a)


def ts_diff(a: int, b: int) -> int:
    """`a - b` for 32-bit RTP timestamps, in -2**31..2**31-1."""
    return ((a - b + _TS_HALF) & 0xFFFFFFFF) - _TS_HALF


class SequenceExtender:
    """Turn 16-bit sequence numbers into an extended count that does not wrap.

    Follows RFC 3550 appendix A.1 without probation: a packet less than `max_dropout` ahead of
    the highest so far moves the count on (adding a cycle on wrap); one up to `max_misorder`
    behind is a late or duplicate packet and gets its own, lower, extended number. Anything
    further away is taken as a restarted source: the count carries on from one past the highest,
    so `highest` never goes down, and `restarts` is incremented.
    """

    __slots__ = ("highest", "max_dropout", "max_misorder", "restarts", "_base", "_max_seq")

    def __init__(self, max_dropout: int = 3000, max_misorder: int = 100) -> None:
        if not 0 < max_dropout < _SEQ_HALF or not 0 < max_misorder < _SEQ_HALF:
            raise ValueError("max_dropout and max_misorder must be 1-32767")
        self.max_dropout = max_dropout
        self.max_misorder = max_misorder
        self.restarts = 0
        self.highest = -1  # extended number of the highest packet so far; -1 before the first
        self._base = 0  # extended value of sequence number 0 in the current cycle
        self._max_seq = 0

    def extend(self, sequence: int) -> int:
        """Return the extended number for `sequence` and update the highest seen."""
        if self.highest < 0:
            self._max_seq = sequence
            self.highest = sequence
            return sequence
        delta = seq_diff(sequence, self._max_seq)
        if 0 < delta < self.max_dropout:
            if sequence < self._max_seq:
                self._base += _SEQ_MOD
            self._max_seq = sequence
            self.highest = self._base + sequence
            return self.highest
        if -self.max_misorder <= delta <= 0:
            return self.highest + delta
        self.restarts += 1
        self.highest += 1
        self._base = self.highest - sequence
        self._max_seq = sequence
        return self.highest
