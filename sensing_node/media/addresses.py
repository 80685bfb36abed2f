"""Which local address RTP binds, given the address announced to devices in SDP."""

from __future__ import annotations

import errno
import socket

from ..settings import NodeSettings


def _is_local_address(host: str) -> bool:
    """Whether `host` is an address of this machine (one a socket can bind)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                           socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
    except OSError as exc:
        return exc.errno != errno.EADDRNOTAVAIL
    return True


def media_bind_host(node: NodeSettings) -> tuple[str, str | None]:
    """Where RTP binds, and a warning when that cannot be node.media_ip.

    `node.media_bind` if set; else `node.media_ip`, the address devices send to, as long as it
    is an address of this host; else (1:1 NAT, a cloud public IP) the SIP host.
    """
    if node.media_bind is not None:
        return node.media_bind, None
    if _is_local_address(node.media_ip):
        return node.media_ip, None
    return node.sip_host, (
        f"node.media_ip {node.media_ip} is not an address of this host (1:1 NAT, a public "
        f"IP?): RTP binds {node.sip_host}, the SIP host; set node.media_bind to choose"
    )
