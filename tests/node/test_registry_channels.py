"""`Registry.channel_ids` is the set `Registry.channels` yields, `Registry.online_count` the
devices online, and `Registry.channels_version` moves whenever what is derived from every
channel (the recorder's plan, the cascade's catalog view) could change, so that those who
derive it may skip the walk while it stays put."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sensing_node.cascade.service import channel_view
from sensing_node.devices.registry import Registry
from sensing_node.devices.store import Store

from .test_registry_sweep import Clock, register

DEVICES = [f"3101120000132000000{i}" for i in range(4)]
CHANNELS = [f"3101120000131000000{i}" for i in range(6)]


catalog = st.dictionaries(st.sampled_from(CHANNELS + ["not-an-id"]),
                          st.fixed_dictionaries({"Name": st.sampled_from(["a", "b"])}),
                          max_size=4)
step = st.one_of(
    st.tuples(st.just("register"), st.sampled_from(DEVICES)),
    st.tuples(st.just("unregister"), st.sampled_from(DEVICES)),
    st.tuples(st.just("catalog"), st.sampled_from(DEVICES), catalog),
    st.tuples(st.just("release"), st.sampled_from(CHANNELS)),
    st.tuples(st.just("keepalive"), st.sampled_from(DEVICES),
              st.sampled_from(["127.0.0.1:5060", "127.0.0.1:5070"])),
    st.tuples(st.just("time"), st.sampled_from([10.0, 200.0, 4000.0])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=25))
def test_channel_ids_match_and_the_version_moves_with_the_view(steps):
    clock = Clock()
    registry = Registry(None, keepalive_timeout_s=180.0, channel_takeover_s=300.0,
                        wall=clock.wall, mono=clock.mono)
    view, version = channel_view(registry), registry.channels_version
    for action, *args in steps:
        if action == "register":
            register(registry, clock, args[0], 3600)
        elif action == "unregister":
            registry.unregister(args[0], clock.wall())
        elif action == "catalog":
            registry.set_channels(args[0], args[1])
        elif action == "release":
            registry.release_channel(args[0])
        elif action == "keepalive":
            registry.keepalive(args[0], now=clock.wall(), transport="udp", remote=args[1])
        else:
            clock.now += args[0]
            registry.sweep(clock.mono())
        assert set(registry.channel_ids()) == {cid for _, cid, _ in registry.channels()}
        assert registry.online_count() == sum(d.online for d in registry)
        now = channel_view(registry)
        if now != view:
            assert registry.channels_version != version, (action, args)
        view, version = now, registry.channels_version


def test_devices_without_channels_leave_the_version_alone():
    clock = Clock()
    registry = Registry(None, keepalive_timeout_s=180.0, wall=clock.wall, mono=clock.mono)
    for device_id in DEVICES:
        register(registry, clock, device_id, 3600)
    before = registry.channels_version
    clock.now += 1000.0
    assert len(registry.sweep(clock.mono())) == len(DEVICES)  # all offline now
    for device_id in DEVICES:
        register(registry, clock, device_id, 3600)
    assert registry.channels_version == before
    assert list(registry.channel_ids()) == []


async def test_the_online_count_survives_a_restart(tmp_path: Path) -> None:
    """Devices still in their keepalive window come back online from the store and are
    counted; one whose keepalives stopped comes back offline."""
    path = tmp_path / "registry.sqlite3"
    clock = Clock()
    registry = Registry(Store(path), keepalive_timeout_s=180.0, wall=clock.wall,
                        mono=clock.mono)
    for device_id in DEVICES:
        register(registry, clock, device_id, 3600)
    clock.now += 150.0
    for device_id in DEVICES[:3]:
        registry.keepalive(device_id, now=clock.wall(), transport="udp", remote="127.0.0.1:5060")
    await registry.flush(clock.wall())
    assert registry.store is not None
    registry.store.close()

    clock.now += 60.0  # 210 s since the last device's keepalive: past the timeout
    again = Registry(Store(path), keepalive_timeout_s=180.0, wall=clock.wall, mono=clock.mono)
    again.load(clock.wall())
    assert again.online_count() == 3 == sum(d.online for d in again)
    assert again.store is not None
    again.store.close()
