# The C extension rtp/_startcode.c, built by tools/build_native.py for the compiled
# rtp/psframe.py (which imports it in place of rtp.psframe._search_start).
from typing_extensions import Buffer

def find(data: Buffer, start: int, /) -> int:
    """The index of the first 00 00 01 in data at or after start, or -1: as
    data.find(b"\\x00\\x00\\x01", start), start clamped the same way."""
