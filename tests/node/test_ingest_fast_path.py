"""MediaIngest takes up the per-frame fast path again at a keyframe after anything that made it
fall back to the full demuxer (a start mid-GOP without a PSM, a lost packet)."""

from __future__ import annotations

from rtp.psmux import PsMuxer, RtpPacketizer
from sensing_node.sim.media import load_clip
from sensing_node.transport.rtp import MediaIngest


def packets_of_clip(loops: int = 2) -> tuple[list[bytes], list[tuple[bytes, bool]]]:
    clip = load_clip("h264")
    mux, rtp = PsMuxer("h264"), RtpPacketizer(0x1234)
    packets: list[bytes] = []
    frames: list[tuple[bytes, bool]] = []
    for loop in range(loops):
        for data, pts, key in clip.frames:
            pts += loop * clip.duration
            packets += rtp.packetize(mux.mux_video(data, pts, keyframe=key), pts)
            frames.append((data, key))
    return packets, frames


def feed(ingest: MediaIngest, packets: list[bytes]) -> None:
    for packet in packets:
        ingest.on_packet(memoryview(packet)[12:], int.from_bytes(packet[2:4], "big"),
                         int.from_bytes(packet[4:8], "big"), packet[1] >= 0x80)
    ingest.flush()


def test_a_start_mid_gop_falls_back_then_resumes_at_the_keyframe() -> None:
    packets, frames = packets_of_clip()
    # Start at the third frame: its pack has no system header or PSM, as when joining late.
    start = next(i for i, p in enumerate(packets) if p[1] >= 0x80) + 1
    start = next(i for i, p in enumerate(packets[start:], start) if p[1] >= 0x80) + 1
    ingest = MediaIngest()
    feed(ingest, packets[start:])
    key_at = next(i for i, (_, key) in enumerate(frames) if key and i >= 2)
    assert ingest.fast_path_resumed == 1
    # From the keyframe on, every frame takes the fast path.
    assert (ingest.demuxer.fast_frames, ingest.demuxer.slow_frames) == (len(frames) - key_at, 0)
    video = [u for u in ingest.units if u.stream_id >= 0xE0]
    first_key = next(i for i, u in enumerate(video) if u.keyframe)
    assert [u.data for u in video[first_key:]] == [data for data, _ in frames[key_at:]]


def test_a_lost_packet_costs_the_fast_path_only_until_the_next_keyframe() -> None:
    packets, frames = packets_of_clip()
    lost = len(packets) // 3
    ingest = MediaIngest()
    feed(ingest, packets[:lost] + packets[lost + 1:])
    assert ingest.fast_path_resumed == 1
    assert not ingest.demuxer.fallen_back and ingest.demuxer.slow_frames == 0
    video = [u for u in ingest.units if u.stream_id >= 0xE0]
    clip_data = [data for data, _ in frames]
    # Everything after the damaged GOP is exact.
    tail = len(clip_data) - next(i for i in range(len(clip_data) // 3 + 25, len(clip_data))
                                 if frames[i][1])
    assert [u.data for u in video[-tail:]] == clip_data[-tail:]
