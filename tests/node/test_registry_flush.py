"""`Registry.flush` writes a registration storm's rows in slices, serving the event loop in
between, without losing a change made meanwhile or one taken by a flush that was cancelled, in
the real SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensing_node.devices.registry import FLUSH_SLICE, Registry
from sensing_node.devices.store import Store

COUNT = 3 * FLUSH_SLICE + 7


def device(k: int) -> str:
    return f"3101120000132{k:07d}"


def register_all(registry: Registry, contact: str, count: int = COUNT) -> None:
    for k in range(count):
        registry.register(device(k), now=1000.0, expires=3600, transport="udp",
                          remote="127.0.0.1:5060", contact=contact, call_id=f"c{k}")


def stored(path: Path) -> dict[str, str]:
    """The contact of every device row in the store (none before its first write)."""
    with sqlite3.connect(path) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'devices'").fetchone() is None:
            return {}
        return dict(conn.execute("SELECT id, contact FROM devices"))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "registry.sqlite3"


@pytest.fixture
def registry(path: Path) -> Iterator[Registry]:
    """A registry on a real store, with COUNT devices registered (contact "sip:a")."""
    registry = Registry(Store(path), keepalive_timeout_s=180)
    register_all(registry, "sip:a")
    yield registry
    assert registry.store is not None
    registry.store.close()


async def test_a_storm_is_written_whole_with_the_loop_served_between_slices(registry, path):
    turns = 0

    async def other_work() -> None:  # what the loop serves while the rows are built
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    seen: list[tuple[int, int]] = []  # (rows asked for, turns of the other work so far)
    rows_of = registry.rows_of

    def noted(device_ids):
        device_ids = list(device_ids)
        seen.append((len(device_ids), turns))
        return rows_of(device_ids)

    registry.rows_of = noted  # type: ignore[method-assign]
    task = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    await registry.flush(1000.0)
    task.cancel()
    # four slices, the other work served between each two
    assert [n for n, _ in seen] == [FLUSH_SLICE] * 3 + [COUNT - 3 * FLUSH_SLICE]
    assert all(later > earlier for (_, earlier), (_, later) in zip(seen, seen[1:], strict=False))
    assert registry.dirty_count == 0
    assert stored(path) == {device(k): "sip:a" for k in range(COUNT)}


async def test_a_change_made_while_rows_are_built_is_in_the_next_write(registry, path):

    async def change_everything_once() -> None:
        await asyncio.sleep(0)  # after the first slice's rows are built
        register_all(registry, "sip:b")

    changer = asyncio.create_task(change_everything_once())
    await registry.flush(1000.0)
    await changer
    assert registry.dirty_count == COUNT  # changed after the flush took them
    await registry.flush(1001.0)
    assert stored(path) == {device(k): "sip:b" for k in range(COUNT)}


async def test_a_flush_cancelled_while_building_leaves_its_devices_to_the_next(registry, path):
    flushing = asyncio.create_task(registry.flush(1000.0))
    await asyncio.sleep(0)  # the first slice is built, the task waits for its next turn
    flushing.cancel()
    await asyncio.gather(flushing, return_exceptions=True)
    assert flushing.cancelled()
    assert stored(path) == {}
    assert registry.dirty_count == COUNT
    await registry.flush(1000.0)  # the node's final flush
    assert stored(path) == {device(k): "sip:a" for k in range(COUNT)}


async def test_flushes_run_one_at_a_time_so_the_newest_row_is_stored_last(registry, path):
    slices: list[list[str]] = []
    rows_of = registry.rows_of

    def noted(device_ids):
        slices.append(list(device_ids))
        return rows_of(slices[-1])

    registry.rows_of = noted  # type: ignore[method-assign]
    first = asyncio.create_task(registry.flush(1000.0))
    await asyncio.sleep(0)  # the first flush has built its first slice, of state "a"
    (changed,) = slices
    for device_id in changed:  # newer state, for a second flush of one slice, started now
        registry.register(device_id, now=1001.0, expires=3600, transport="udp",
                          remote="127.0.0.1:5060", contact="sip:b", call_id="c")
    await asyncio.gather(first, registry.flush(1001.0))
    assert stored(path) == {device(k): "sip:b" if device(k) in changed else "sip:a"
                            for k in range(COUNT)}


async def test_two_flushes_at_once_write_each_device_once(registry, path):
    assert registry.store is not None
    writes: list[int] = []
    write = registry.store.write

    def counted(rows, channel_sets):
        writes.append(len(rows))
        write(rows, channel_sets)

    registry.store.write = counted  # type: ignore[method-assign]
    await asyncio.gather(registry.flush(1000.0), registry.flush(1000.0))
    assert writes == [COUNT]
    assert len(stored(path)) == COUNT
