"""What the registry remembers about a device's media across restarts: the transport its media
last came over and its quirks, in the real SQLite store (including one an older node wrote)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sensing_node.devices.registry import Registry
from sensing_node.devices.store import Store

DEVICE = "31011200001320000001"


async def test_media_transport_and_quirks_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    store = Store(path)
    registry = Registry(store, keepalive_timeout_s=180)
    registry.register(DEVICE, now=1000.0, expires=3600, transport="udp",
                      remote="127.0.0.1:5060", contact="", call_id="c1")
    registry.set_media_transport(DEVICE, "tcp-passive")
    assert registry.add_quirk(DEVICE, "answers TCP/RTP/AVP to a udp offer")
    assert not registry.add_quirk(DEVICE, "answers TCP/RTP/AVP to a udp offer")  # once
    assert registry.add_quirk(DEVICE, "answers TCP media without a=setup")
    await registry.flush(1000.0)
    store.close()

    again = Registry(Store(path), keepalive_timeout_s=180)
    again.load(1001.0)
    device = again.get(DEVICE)
    assert device is not None and device.media_transport == "tcp-passive"
    assert device.quirks.splitlines() == [
        "answers TCP/RTP/AVP to a udp offer", "answers TCP media without a=setup",
    ]
    assert not again.add_quirk(DEVICE, "answers TCP media without a=setup")
    assert again.store is not None
    again.store.close()


async def test_a_store_an_older_node_wrote_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    with sqlite3.connect(path) as conn:  # the devices table before media_transport and quirks
        conn.execute(
            "CREATE TABLE devices (id TEXT PRIMARY KEY, name TEXT, manufacturer TEXT, "
            "model TEXT, firmware TEXT, transport TEXT, remote TEXT, contact TEXT, "
            "user_agent TEXT, gb_version TEXT, charset TEXT, call_id TEXT, registered_at REAL, "
            "last_keepalive REAL, expires_at REAL, online INTEGER NOT NULL DEFAULT 0)"
        )
        conn.execute("INSERT INTO devices (id, transport, remote, online) "
                      "VALUES (?, 'udp', '127.0.0.1:5060', 0)", (DEVICE,))
    conn.close()
    registry = Registry(Store(path), keepalive_timeout_s=180)
    registry.load(1000.0)
    device = registry.get(DEVICE)
    assert device is not None and device.media_transport is None and device.quirks == ""
    registry.set_media_transport(DEVICE, "udp")
    assert registry.add_quirk(DEVICE, "answers without a usable c= address")
    await registry.flush(1000.0)
    assert registry.store is not None
    registry.store.close()
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT media_transport, quirks FROM devices WHERE id = ?",
                           (DEVICE,)).fetchone()
    conn.close()
    assert row == ("udp", "answers without a usable c= address")


def test_quirks_are_bounded_whatever_the_device_answers(tmp_path: Path) -> None:
    from sensing_node.devices.registry import MAX_QUIRK_CHARS, MAX_QUIRKS

    store = Store(tmp_path / "registry.sqlite3")
    registry = Registry(store, keepalive_timeout_s=180)
    registry.register(DEVICE, now=1000.0, expires=3600, transport="udp",
                      remote="127.0.0.1:5060", contact="", call_id="c1")
    added = [registry.add_quirk(DEVICE, f"answers P{n}{'X' * 500} to a udp offer")
             for n in range(100)]
    quirks = registry.get(DEVICE).quirks.splitlines()
    assert sum(added) == len(quirks) == MAX_QUIRKS
    assert all(len(q) <= MAX_QUIRK_CHARS for q in quirks)
    store.close()
