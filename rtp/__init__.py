"""Sans-I/O RTP, RFC 4571 framing and MPEG-PS (GB/T 28181 media). No I/O in this package."""
