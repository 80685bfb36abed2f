"""`Registry.sweep` looks only at the devices that are due (a heap by deadline, with lazy
invalidation) and takes exactly the devices offline that a walk over all of them would."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from sensing_node.devices.registry import Device, Registry

TIMEOUT = 180.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def wall(self) -> float:
        return 1_780_000_000.0 + self.now

    def mono(self) -> float:
        return self.now


class CountingDict(dict[str, Device]):
    """The registry's devices, counting the look-ups `sweep` makes."""

    looked_up = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.looked_up += 1
        return super().get(key, default)


def make(clock: Clock) -> Registry:
    return Registry(None, keepalive_timeout_s=TIMEOUT, wall=clock.wall, mono=clock.mono)


def register(registry: Registry, clock: Clock, device_id: str, expires: int) -> None:
    registry.register(device_id, now=clock.wall(), expires=expires, transport="udp",
                      remote="127.0.0.1:5060", contact="", call_id="c")


def walk_all(registry: Registry, mono: float) -> set[str]:
    """What the sweep did before: every online device checked."""
    gone = set()
    for dev in registry.devices.values():
        if dev.online and (not dev.registered(mono)
                           or mono - dev.keepalive_mono >= registry.keepalive_timeout_s):
            gone.add(dev.id)
    return gone


def test_a_sweep_with_nothing_due_looks_at_no_device():
    clock = Clock()
    registry = make(clock)
    for i in range(10_000):
        register(registry, clock, f"31011200001320{i:06d}", 3600)
    counting = CountingDict(registry.devices)
    registry.devices = counting
    clock.now += 60
    for i in range(0, 10_000, 2):  # half of them keep alive
        registry.keepalive(f"31011200001320{i:06d}", now=clock.wall(), transport="udp",
                           remote="127.0.0.1:5060")
    counting.looked_up = 0
    assert registry.sweep(clock.now) == []
    assert counting.looked_up == 0


def test_a_sweep_looks_at_the_devices_due_and_those_only():
    clock = Clock()
    registry = make(clock)
    for i in range(10_000):
        # Three devices with a short registration, everyone else keeping alive.
        register(registry, clock, f"31011200001320{i:06d}", 60 if i in (7, 700, 7000) else 3600)
    counting = CountingDict(registry.devices)
    registry.devices = counting
    clock.now += 61
    counting.looked_up = 0
    gone = registry.sweep(clock.now)
    assert sorted(d.id for d in gone) == [f"31011200001320{i:06d}" for i in (7, 700, 7000)]
    assert counting.looked_up == 3
    # The keepalive timeout of the others: found in the one sweep that follows it, each once.
    clock.now += TIMEOUT
    counting.looked_up = 0
    assert len(registry.sweep(clock.now)) == 9_997
    assert counting.looked_up == 9_997
    counting.looked_up = 0
    assert registry.sweep(clock.now + 1) == [] and counting.looked_up == 0
    assert len(registry._due) == 0


def test_a_keepalive_moves_the_deadline_without_a_new_entry():
    clock = Clock()
    registry = make(clock)
    register(registry, clock, "31011200001320000001", 3600)
    assert len(registry._due) == 1
    for _ in range(10):
        clock.now += 60
        registry.keepalive("31011200001320000001", now=clock.wall(), transport="udp",
                           remote="127.0.0.1:5060")
        assert registry.sweep(clock.now) == []
    assert len(registry._due) == 1
    clock.now += TIMEOUT
    (gone,) = registry.sweep(clock.now)
    assert gone.id == "31011200001320000001" and not gone.online


def test_a_device_brought_back_by_a_keepalive_times_out_again():
    clock = Clock()
    registry = make(clock)
    register(registry, clock, "31011200001320000001", 3600)
    clock.now += TIMEOUT
    (gone,) = registry.sweep(clock.now)
    registry.keepalive("31011200001320000001", now=clock.wall(), transport="udp",
                       remote="127.0.0.1:5060")
    assert gone.online
    clock.now += TIMEOUT
    assert registry.sweep(clock.now) == [gone] and not gone.online


def test_a_shorter_timeout_on_reload_applies_at_the_next_sweep():
    clock = Clock()
    registry = make(clock)
    register(registry, clock, "31011200001320000001", 3600)
    clock.now += 30
    registry.apply_settings(keepalive_timeout_s=20.0, channel_takeover_s=86400.0)
    (gone,) = registry.sweep(clock.now)
    assert gone.id == "31011200001320000001"


operations = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.integers(0, 9), st.sampled_from([0, 1, 30, 60, 400])),
        st.tuples(st.just("keepalive"), st.integers(0, 9), st.just(0)),
        st.tuples(st.just("unregister"), st.integers(0, 9), st.just(0)),
        st.tuples(st.just("wait"), st.just(0), st.sampled_from([0, 1, 29, 60, 179, 180, 500])),
        st.tuples(st.just("timeout"), st.just(0), st.sampled_from([10, 60, 180, 300])),
    ),
    max_size=60,
)


@given(operations)
@example([("register", 1, 400), ("wait", 0, 180), ("keepalive", 1, 0), ("wait", 0, 180)])
@example([("register", 1, 400), ("register", 1, 30), ("wait", 0, 29), ("wait", 0, 1)])
def test_the_heap_takes_offline_what_a_walk_over_all_devices_would(ops):
    clock = Clock()
    registry = make(clock)
    for op, n, arg in ops:
        device_id = f"3101120000132000000{n}"
        if op == "register":
            register(registry, clock, device_id, arg)
        elif op == "keepalive":
            registry.keepalive(device_id, now=clock.wall(), transport="udp",
                               remote="127.0.0.1:5060")
        elif op == "unregister":
            registry.unregister(device_id, clock.wall())
        elif op == "timeout":
            registry.apply_settings(keepalive_timeout_s=float(arg), channel_takeover_s=86400.0)
        else:
            clock.now += arg
        expected = walk_all(registry, clock.now)
        assert {d.id for d in registry.sweep(clock.now)} == expected
        assert walk_all(registry, clock.now) == set()  # nothing due is left online
    assert len(registry._due) <= 2 * len(registry.devices) + 1024
