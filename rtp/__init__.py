"""Sans-I/O RTP, RFC 4571 framing and MPEG-PS (GB/T 28181 media). No I/O in this package.

- `packet`: RTP packets (RFC 3550), `build_rtp`, `peek_rtp_header`, `is_rtcp`
- `seq`: 16/32-bit serial arithmetic and sequence extension
- `framing`: RFC 4571 length-prefixed framing for RTP over TCP
- `reorder`: bounded reorder buffer with loss/duplicate counters, interarrival jitter
- `ps`: incremental MPEG-PS demuxer yielding access units with their original PS bytes
- `psmux`: GB/T 28181-style PS muxer and RTP packetizer (for simulated cameras)
- `packetize`: the relay's RTP packetizer: a camera's PS frames toward an upstream, whole or
  packet by packet (cut-through)
- `nal`: H.264/H.265 NAL unit scanning (keyframes, codec detection, frame boundaries)
"""
