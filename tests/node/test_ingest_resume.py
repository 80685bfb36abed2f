"""MediaIngest after lost packets: the new demuxer is given the stream's program stream map, so
the fast path is taken up again at the first whole frame after a hole instead of at the next
keyframe, and the units are those the keyframe rule gives for the same packets."""

from __future__ import annotations

from functools import cache

from hypothesis import given
from hypothesis import strategies as st

from rtp.ps import AccessUnit
from rtp.psframe import PsFrameDemuxer
from rtp.psmux import PsMuxer, RtpPacketizer
from sensing_node.sim.media import load_clip
from sensing_node.transport.rtp import MediaIngest
from tests.conftest import load
from tests.rtp.test_psframe import camera_frames

PACK = b"\x00\x00\x01\xba"


class KeyframeRuleIngest(MediaIngest):
    """MediaIngest as it was before: after a hole, a demuxer that knows nothing of the stream,
    and the fast path only at the next keyframe that carries its PSM."""

    def restart(self) -> None:
        super().restart()
        self.demuxer = PsFrameDemuxer(self.max_buffered)
        self._after_hole = False


# --- the streams: RTP packets as a camera sends them --------------------------------------------


def packetize(frames: list[bytes]) -> list[bytes]:
    """One RTP frame per item (its own timestamp, marker on its last packet)."""
    rtp = RtpPacketizer(0x1234, payload_max=1400)
    packets: list[bytes] = []
    for k, frame in enumerate(frames):
        packets += rtp.packetize(frame, k * 3600)
    return packets


def simulated(codec: str, audio: str | None) -> list[bytes]:
    """The simulated camera's clip (GOP 25), muxed as `sensing_node.sim.media` sends it, with
    20 ms audio packs after each video frame when `audio` is given."""
    clip = load_clip(codec)
    mux = PsMuxer(codec, audio)
    frames: list[bytes] = []
    for index, (data, pts, key) in enumerate(clip.frames * 2):
        frames.append(mux.mux_video(data, pts + (index >= len(clip.frames)) * clip.duration,
                                    keyframe=key))
        if audio is not None:
            frames += [mux.mux_audio(bytes([index & 0xFF]) * 160, pts + half * 1800)
                       for half in (0, 1)]
    return frames


@cache
def streams() -> dict[str, list[bytes]]:
    out = {
        name: packetize(camera_frames(load(f"media/{name}")))
        for name in ("gb_h264_zlm.ps", "gb_h265_zlm.ps", "gb_h264_alaw_zlm.ps")
    }
    out["sim h264+g711a"] = packetize(simulated("h264", "g711a"))
    out["sim h265"] = packetize(simulated("h265", None))
    # Two frames per RTP frame: every frame starts with a pack header and none fits the fast
    # path, so each hole may cost one try and no more.
    zlm = camera_frames(load("media/gb_h264_zlm.ps"))
    out["zlm, frames in pairs"] = packetize([b"".join(zlm[k : k + 2])
                                             for k in range(0, len(zlm), 2)])
    # FFmpeg's packs, no PSM: nothing to resume with.
    out["ffmpeg h264"] = packetize(camera_frames(load("media/h264_640x360_25fps_10s_ffmpeg.ps")))
    return out


def feed(ingest: MediaIngest, packets: list[bytes]) -> list[tuple[int, AccessUnit]]:
    """Feed the packets as `LiveStream.on_packet` does (a sequence gap restarts the ingest);
    return each unit with the number of frames the ingest had been given when it came out."""
    out: list[tuple[int, AccessUnit]] = []
    ingest._deliver = lambda units: out.extend((ingest.frames, unit) for unit in units)
    expected = -1
    for packet in packets:
        seq = int.from_bytes(packet[2:4], "big")
        if expected >= 0 and seq != expected:
            ingest.restart()
        expected = (seq + 1) & 0xFFFF
        ingest.on_packet(memoryview(packet)[12:], seq, int.from_bytes(packet[4:8], "big"),
                         packet[1] >= 0x80)
    ingest.flush()
    return out


def content(unit: AccessUnit) -> tuple[object, ...]:
    return (unit.stream_id, unit.pts, unit.dts, unit.keyframe, unit.data, unit.ps_bytes)


def both(packets: list[bytes]) -> tuple[MediaIngest, list[tuple[int, AccessUnit]],
                                        MediaIngest, list[tuple[int, AccessUnit]]]:
    new, old = MediaIngest(), KeyframeRuleIngest()
    return new, feed(new, packets), old, feed(old, packets)


def drop(packets: list[bytes], holes: list[tuple[int, int]]) -> list[bytes]:
    """The packets without `holes` ((first index, count), the index modulo the length)."""
    lost: set[int] = set()
    for at, count in holes:
        at %= len(packets)
        lost.update(range(at, min(at + count, len(packets))))
    return [packet for index, packet in enumerate(packets) if index not in lost]


# --- equivalence with the keyframe rule, holes anywhere ------------------------------------------


@given(
    st.sampled_from(["gb_h264_zlm.ps", "gb_h265_zlm.ps", "gb_h264_alaw_zlm.ps", "sim h264+g711a",
                     "sim h265", "zlm, frames in pairs", "ffmpeg h264"]),
    st.integers(0, 40),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.sampled_from([1, 1, 1, 2, 3, 8, 40])),
             min_size=1, max_size=6),
)
def test_holes_anywhere_give_the_units_of_the_keyframe_rule(name, start, holes):
    packets = drop(streams()[name][start:], holes)  # a late start: no PSM until a keyframe
    new, got, old, want = both(packets)
    # The same units in the same order, byte for byte, around every hole...
    assert [content(unit) for _, unit in got] == [content(unit) for _, unit in want]
    # ...handed out no later, and labelled from the stream map where PsDemuxer, not given
    # it, knew no better than "unknown".
    for (new_at, mine), (old_at, theirs) in zip(got, want, strict=True):
        assert new_at <= old_at
        assert mine.codec == theirs.codec or theirs.codec == "unknown"
    assert new.frames == old.frames
    assert new.fast_frames + new.slow_frames >= new.frames  # a fallback replays kept frames
    # At most one more try per hole; a stream with no map to resume with is left as it was.
    assert new.fast_path_resumed <= old.fast_path_resumed + len(holes)
    if name in ("zlm, frames in pairs", "ffmpeg h264"):
        assert new.fast_frames == old.fast_frames == 0
    if name == "ffmpeg h264":
        assert [u for _, u in got] == [u for _, u in want]  # offsets and labels too
        assert new.fast_path_resumed == old.fast_path_resumed


# --- the fast path comes back at the next whole frame --------------------------------------------


def frame_starts(packets: list[bytes]) -> list[int]:
    return [0] + [k + 1 for k, packet in enumerate(packets[:-1]) if packet[1] >= 0x80]


def test_a_hole_in_a_p_frame_costs_the_fast_path_two_frames_not_a_gop():
    packets = streams()["gb_h264_alaw_zlm.ps"]
    starts = frame_starts(packets)
    # a video P-frame of three packets or more in the middle of a GOP (its pack has no PSM;
    # keyframes come every 50 RTP frames, audio packs between the video frames)
    frame = next(k for k in range(52, len(starts) - 1)
                 if starts[k + 1] - starts[k] >= 3 and packets[starts[k]][12:16] == PACK
                 and b"\x00\x00\x01\xbc" not in packets[starts[k]]
                 and b"\x00\x00\x01\xe0" in packets[starts[k]])
    assert frame < 70
    lost = starts[frame] + 1
    new, got, old, want = both(packets[:lost] + packets[lost + 1 :])
    assert [content(u) for _, u in got] == [content(u) for _, u in want]
    # Frames on the full demuxer: the part before the hole and the rest of the frame after it;
    # the next frame (an audio pack) takes the fast path with the map the stream had.
    assert new.slow_frames == 2 and new.fast_path_resumed == 1
    assert new.fast_frames == new.frames - 2
    # The keyframe rule stays on the full demuxer up to the next keyframe, a GOP later.
    assert old.slow_frames > 10 and old.fast_path_resumed == 1
    assert {u.codec for _, u in got if u.stream_id == 0xC0} == {"g711a"}


def test_a_hole_that_ends_a_frame_takes_the_fast_path_at_the_next_one():
    packets = streams()["gb_h265_zlm.ps"]
    starts = frame_starts(packets)
    # lose the marker packet of a P-frame mid-GOP: the next frame is whole
    frame = next(k for k in range(30, len(starts) - 1) if starts[k + 1] - starts[k] >= 2
                 and b"\x00\x00\x01\xbc" not in packets[starts[k]])
    lost = starts[frame + 1] - 1
    new, got, old, want = both(packets[:lost] + packets[lost + 1 :])
    assert [content(u) for _, u in got] == [content(u) for _, u in want]
    # On the full demuxer: the frame cut by the hole, and the one before it, whose units the
    # fast path held back (ZLMediaKit's H.265 payloads end with a zero byte) and so replays.
    assert new.slow_frames == 2
    assert new.fast_path_resumed == 0  # the new demuxer never fell back
    assert new.fast_frames == new.frames - 2
    assert old.slow_frames > 10


def test_the_keyframe_rule_stands_without_a_hole():
    # A start mid-GOP (no PSM yet) falls back and waits for the keyframe, as before: a frame
    # that merely starts with a pack header is no reason to try again.
    packets = streams()["gb_h264_zlm.ps"]
    start = frame_starts(packets)[3]
    new, got, old, want = both(packets[start:])
    assert [u for _, u in got] == [u for _, u in want]
    assert new.fast_path_resumed == old.fast_path_resumed == 1
    assert new.slow_frames == old.slow_frames > 1


def test_counters_add_up_over_the_demuxers_replaced():
    packets = streams()["sim h265"]
    lossy = drop(packets, [(len(packets) // 5, 1), (len(packets) // 2, 2), (len(packets) - 30, 1)])
    new = MediaIngest()
    feed(new, lossy)
    assert new.fast_path_resumed >= 1
    assert new.fast_frames == new.frames - new.slow_frames  # nothing replayed here
    assert new.slow_frames >= 3  # at least the cut frames
