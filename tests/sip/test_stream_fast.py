"""`StreamParser(fast=True)`: a REGISTER or keepalive found whole at the start of the buffer
comes out as a `FastRequest` whose bytes parse to the message the plain parser gives; the
stream around it is framed exactly as before, however it is cut."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sip.fastpath import FastRequest
from sip.message import parse_message
from sip.stream import StreamEvent, StreamParser

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
NAMES = sorted(p.name for p in CORPUS.glob("*.sip"))


def as_parsed(events: list[StreamEvent]) -> list[object]:
    return [parse_message(e.raw) if isinstance(e, FastRequest) else e for e in events]


def feed(parser: StreamParser, stream: bytes, cuts: list[int]) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        events += parser.feed(stream[last:cut])
        last = cut
    return events


def test_a_whole_keepalive_and_register_come_out_fast():
    stream = (CORPUS / "keepalive-hikvision-ipc-01.sip").read_bytes() + (
        CORPUS / "register-hikvision-ipc-01.sip").read_bytes()
    events = StreamParser(fast=True).feed(stream)
    assert [type(e) for e in events] == [FastRequest, FastRequest]
    assert b"".join(e.raw for e in events) == stream  # type: ignore[union-attr]
    assert as_parsed(events) == StreamParser().feed(stream)


@pytest.mark.parametrize("seed", range(10))
def test_the_corpus_cut_anywhere_frames_alike(seed):
    rng = random.Random(seed)
    stream = b""
    for name in rng.sample(NAMES, len(NAMES)):
        if rng.random() < 0.3:
            stream += b"\r\n\r\n"
        stream += (CORPUS / name).read_bytes()
    cuts = [rng.randrange(len(stream)) for _ in range(rng.randrange(0, 40))]
    fast = feed(StreamParser(fast=True), stream, cuts)
    plain = feed(StreamParser(), stream, cuts)
    assert as_parsed(fast) == plain
    if not cuts:
        assert any(isinstance(e, FastRequest) for e in fast)
