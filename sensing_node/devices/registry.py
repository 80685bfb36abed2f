"""Devices and channels known to the node: registration state, keepalives, catalog.

The registry holds everything in memory (one object per device, a dict of channels per device)
and persists it through `Store` in batches. Two clocks are involved: the wall clock labels what
is written down and shown (`registered_at`, `last_keepalive`, `expires_at`), and the monotonic
clock (`mono`) decides registration expiry and keepalive timeouts within a running node, so that
a wall clock stepped forward or back neither expires every registration nor keeps a dead one.
Across a restart only the wall clock is left: a stored registration's remaining time is judged
from it, but a device that was online when the node stopped keeps at least
`keepalive_timeout_s` (one keepalive interval of grace), so a wall clock that moved while the
node was down does not turn its next keepalive into 403 Device Not Registered.

Online rules (GB/T 28181-2016 9.1, 9.6): a device is online after a successful REGISTER and on
every keepalive while its registration is valid; it goes offline when it unregisters, when the
registration expires, or when no keepalive came for `keepalive_timeout_s`. After a restart, a
device whose registration has not expired is accepted again on its next keepalive.

Channel ownership: a channel (catalog item, a 20-digit ID) belongs to the first device that
lists it; a device's own ID is its own. Another device's catalog may take a channel over only
once its owner is offline and has not been heard from for `channel_takeover_s`, or after an
operator released it (`release_channel`); until then the item is refused and logged.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import operator
import time
from collections.abc import Callable, Iterable, Iterator, KeysView
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from .store import DEVICE_COLUMNS, Store

log = logging.getLogger(__name__)

_row_values = operator.attrgetter(*DEVICE_COLUMNS)



# Device rows built per turn of the event loop when the registry is written. A registration
# storm marks thousands of devices dirty in each half-second tick; their rows built in one go
# held the loop for up to 10 ms, which set the REGISTER p99 at 15,000 transactions/s.
FLUSH_SLICE = 500

MAX_QUIRKS = 16  # quirks kept per device
MAX_QUIRK_CHARS = 120


@dataclass(slots=True)
class Device:
    id: str
    name: str = ""
    manufacturer: str = ""
    model: str = ""
    firmware: str = ""
    transport: str = "udp"
    remote: str = ""  # "host:port" of the last packet seen from the device (NAT-safe)
    contact: str = ""
    user_agent: str = ""
    gb_version: str | None = None
    charset: str = "GB2312"  # encoding label to answer the device with
    call_id: str = ""
    registered_at: float | None = None
    last_keepalive: float | None = None
    expires_at: float | None = None
    online: bool = False
    media_transport: str | None = None  # the transport its media last came over (remembered)
    quirks: str = ""  # what it gets wrong that the node works around, one short line each
    channels: dict[str, dict[str, str]] = field(default_factory=dict)
    stored_keepalive: float = 0.0  # keepalive_mono when the device was last written
    # Monotonic times (the registry's `mono` clock): they decide, the wall times above only say.
    expires_mono: float = float("-inf")
    keepalive_mono: float = float("-inf")
    # The deadline of the device's live entry in the registry's sweep heap (inf: none).
    sweep_at: float = float("inf")

    def row(self) -> tuple[Any, ...]:
        self.stored_keepalive = self.keepalive_mono
        return _row_values(self)

    def registered(self, mono: float) -> bool:
        """Whether the registration holds at `mono` (monotonic seconds, the registry's clock)."""
        return self.expires_mono > mono

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.remote.rpartition(":")
        return host.strip("[]"), int(port or 5060)


def iso(ts: float | None, tz: tzinfo) -> str | None:
    """Epoch seconds -> ISO 8601 with an explicit offset in the node's zone."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="milliseconds")


class Registry:
    """In-memory device registry with write-behind persistence and expiry sweeps."""

    def __init__(
        self,
        store: Store | None,
        *,
        keepalive_timeout_s: float,
        max_devices: int = 100_000,
        on_change: Callable[[Device, str], None] | None = None,
        channel_takeover_s: float = 86400.0,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.keepalive_timeout_s = keepalive_timeout_s
        # A keepalive is written to the store only when the stored one is half a timeout old:
        # a restart within that half still finds the device online, and a device keeping alive
        # every 60 s (timeout 180 s) costs a row every other keepalive, not every one.
        self.keepalive_persist_s = keepalive_timeout_s / 2
        self.max_devices = max_devices
        self.on_change = on_change
        self.devices: dict[str, Device] = {}
        self._dirty: set[str] = set()
        self._dirty_channels: set[str] = set()
        self._flushing = asyncio.Lock()
        self._channel_owner: dict[str, str] = {}
        #: Moves on whenever what `channels()` yields may have changed (a catalog taken, a
        #: channel released or moved) or a device that has channels goes online or offline:
        #: those who derive something from every channel redo it only then.
        self.channels_version = 0
        self._online = 0  # devices online: kept by _set_online and load, read by online_count
        self.channel_takeover_s = channel_takeover_s
        self.wall = wall
        self.mono = mono
        # The device most recently refused each channel, asked for its catalog again when an
        # operator releases the channel. Bounded: refused IDs come from devices.
        self._claims: dict[str, str] = {}
        self.max_claims = 100_000
        self._changes: dict[str, list[Any]] = {"online": [0, []], "offline": [0, []]}
        # Online devices by the monotonic time they are due to be looked at by `sweep`: the
        # earlier of the registration's end and the last keepalive plus the timeout, as it was
        # when the entry was made. A keepalive moves a device's deadline later without touching
        # the heap; `sweep` finds the entry early, sees the device still alive and puts it back
        # with its deadline of then. Only a deadline that moves earlier (a shorter registration,
        # a shorter timeout) adds an entry at once; entries no longer live are dropped when
        # they come up (lazy invalidation), so each device has one or two.
        self._due: list[tuple[float, str]] = []

    def apply_settings(self, *, keepalive_timeout_s: float, channel_takeover_s: float) -> None:
        """Take reloaded timeouts (`devices.keepalive_timeout_s`, `devices.channel_takeover_s`):
        the next sweep and the next catalog judge by them."""
        shorter = keepalive_timeout_s < self.keepalive_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.keepalive_persist_s = keepalive_timeout_s / 2
        self.channel_takeover_s = channel_takeover_s
        if shorter:
            self._reschedule_all()

    # ----- persistence -----
    def load(self, now: float) -> int:
        """Read the store at start-up (`now`: the wall clock); returns how many registrations
        are still valid."""
        if self.store is None:
            return 0
        rows, channels = self.store.load()
        valid = 0
        mono = self.mono()
        for row in rows:
            dev = Device(**{k: row[k] for k in DEVICE_COLUMNS if k != "online"})
            dev.quirks = dev.quirks or ""  # NULL in a row an older node wrote
            # Online survives a restart only while both the registration and the keepalive
            # window hold; the next keepalive brings a device back otherwise.
            if dev.expires_at is not None:
                left = dev.expires_at - now
                if row["online"]:  # at least one keepalive interval of grace
                    left = max(left, self.keepalive_timeout_s)
                dev.expires_mono = mono + left
            if dev.last_keepalive is not None:
                dev.keepalive_mono = mono - max(0.0, now - dev.last_keepalive)
            dev.stored_keepalive = dev.keepalive_mono
            dev.online = bool(
                row["online"]
                and dev.registered(mono)
                and mono - dev.keepalive_mono < self.keepalive_timeout_s
            )
            valid += dev.registered(mono)
            replaced = self.devices.get(dev.id)
            self._online += dev.online - (replaced is not None and replaced.online)
            self.devices[dev.id] = dev
            if dev.online:
                self._schedule(dev)
        for device_id, channel_id, fields in channels:
            owner = self.devices.get(device_id)
            if owner is None:
                continue
            # A channel stored under two devices (written before ownership) stays with one.
            if self._channel_owner.setdefault(channel_id, device_id) == device_id:
                owner.channels[channel_id] = fields
        self.channels_version += 1
        return valid

    def rows_of(self, device_ids: Iterable[str]) -> list[tuple[Any, ...]]:
        """The store rows of those of `device_ids` still known."""
        devices = self.devices
        return [devices[d].row() for d in device_ids if d in devices]

    def _channel_sets(
        self, now: float
    ) -> list[tuple[str, list[tuple[str, dict[str, str]]], float]]:
        devices = self.devices
        chans = [(d, list(devices[d].channels.items()), now)
                 for d in self._dirty_channels if d in devices]
        self._dirty_channels.clear()
        return chans

    async def flush(self, now: float) -> None:
        """Write dirty devices and channel lists in one transaction on the writer thread.

        The rows are built `FLUSH_SLICE` at a time with the event loop served in between; a
        device changed meanwhile is dirty again and goes in the next write. Flushes run one
        at a time, so rows reach the store in the order they were built. Cancelled before
        the write (the node stopping), the devices taken are marked dirty again, for the
        final flush."""
        if self.store is None or not (self._dirty or self._dirty_channels):
            return
        async with self._flushing:
            ids, self._dirty = list(self._dirty), set()
            chans = self._channel_sets(now)
            rows: list[tuple[Any, ...]] = []
            try:
                for start in range(0, len(ids), FLUSH_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    rows += self.rows_of(ids[start:start + FLUSH_SLICE])
            except asyncio.CancelledError:
                self._dirty.update(ids)
                self._dirty_channels.update(d for d, _, _ in chans)
                raise
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.store.executor, self.store.write, rows, chans)

    @property
    def dirty_count(self) -> int:
        return len(self._dirty) + len(self._dirty_channels)

    # ----- mutations -----
    def get(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    def full(self, device_id: str) -> bool:
        return device_id not in self.devices and len(self.devices) >= self.max_devices

    def register(
        self,
        device_id: str,
        *,
        now: float,
        expires: int,
        transport: str,
        remote: str,
        contact: str,
        call_id: str,
        user_agent: str = "",
        gb_version: str | None = None,
    ) -> tuple[Device, bool]:
        """Record a successful REGISTER; returns the device and whether it is new or
        re-registered after a reboot (new Call-ID, or previously offline)."""
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self.devices[device_id] = Device(id=device_id)
        fresh = not dev.online or dev.call_id != call_id
        dev.transport = transport
        dev.remote = remote
        dev.contact = contact
        dev.call_id = call_id
        if user_agent:
            dev.user_agent = user_agent
        if gb_version:
            dev.gb_version = gb_version
        if fresh or dev.registered_at is None:
            dev.registered_at = now
        dev.expires_at = now + expires
        dev.last_keepalive = now
        mono = self.mono()
        dev.expires_mono = mono + expires
        dev.keepalive_mono = mono
        self._set_online(dev, True)
        self._schedule(dev)
        self._dirty.add(device_id)
        return dev, fresh

    def unregister(self, device_id: str, now: float) -> Device | None:
        dev = self.devices.get(device_id)
        if dev is None:
            return None
        dev.expires_at = now
        dev.expires_mono = self.mono()
        self._set_online(dev, False)
        self._dirty.add(device_id)
        return dev

    def keepalive(self, device_id: str, *, now: float, transport: str, remote: str) -> bool:
        """A keepalive arrived at `now` (wall clock); False if the device has no valid
        registration."""
        dev = self.devices.get(device_id)
        mono = self.mono()
        if dev is None or not dev.registered(mono):
            return False
        dev.last_keepalive = now
        dev.keepalive_mono = mono
        if not dev.online or dev.remote != remote or dev.transport != transport:
            dev.transport = transport
            dev.remote = remote
            self._set_online(dev, True)
            self._schedule(dev)
            self._dirty.add(device_id)
        elif mono - dev.stored_keepalive >= self.keepalive_persist_s:
            self._dirty.add(device_id)
        return True

    def add_quirk(self, device_id: str, quirk: str) -> bool:
        """Note something the device gets wrong (a line of text); True the first time. Some
        quirks quote the device's SDP: at most MAX_QUIRKS per device, each at most
        MAX_QUIRK_CHARS long, whatever the device sends."""
        dev = self.devices.get(device_id)
        quirk = quirk.replace("\n", " ")[:MAX_QUIRK_CHARS]
        if dev is None:
            return False
        known = dev.quirks.splitlines()
        if quirk in known or len(known) >= MAX_QUIRKS:
            return False
        dev.quirks = f"{dev.quirks}\n{quirk}" if dev.quirks else quirk
        self._dirty.add(device_id)
        return True

    def set_media_transport(self, device_id: str, transport: str) -> None:
        """Remember the transport the device's media came over, to try it first next time."""
        dev = self.devices.get(device_id)
        if dev is not None and dev.media_transport != transport:
            dev.media_transport = transport
            self._dirty.add(device_id)

    def update_info(self, device_id: str, **fields: str) -> None:
        dev = self.devices.get(device_id)
        if dev is None:
            return
        for name, value in fields.items():
            if value:
                setattr(dev, name, value)
        self._dirty.add(device_id)

    def set_channels(self, device_id: str, items: dict[str, dict[str, str]]) -> list[str]:
        """Make a device's catalog `items` its channel list; returns the IDs refused (logged):
        IDs that are not 20 digits, and channels another device still owns."""
        dev = self.devices.get(device_id)
        if dev is None:
            return []
        now = self.wall()
        kept: dict[str, dict[str, str]] = {}
        refused: list[str] = []
        for channel_id, fields in items.items():
            if len(channel_id) != 20 or not channel_id.isascii() or not channel_id.isdigit():
                refused.append(channel_id)
                continue
            owner_id = self._channel_owner.get(channel_id)
            if owner_id is None and channel_id in self.devices:
                owner_id = channel_id  # another device's own ID
            if owner_id is not None and owner_id != device_id:
                owner = self.devices[owner_id]
                if owner.online or now - (owner.last_keepalive or 0.0) < self.channel_takeover_s:
                    refused.append(channel_id)
                    self._claim(channel_id, device_id)
                    continue
                if owner.channels.pop(channel_id, None) is not None:
                    self._dirty_channels.add(owner_id)
                log.warning("channel %s moves from %s (silent since %s) to %s", channel_id,
                            owner_id, owner.last_keepalive, device_id)
            kept[channel_id] = fields
        for channel_id in dev.channels:
            if self._channel_owner.get(channel_id) == device_id:
                del self._channel_owner[channel_id]
        dev.channels = kept
        self.channels_version += 1
        for channel_id in kept:
            self._channel_owner[channel_id] = device_id
            self._claims.pop(channel_id, None)
        self._dirty_channels.add(device_id)
        if refused:
            sample = ", ".join(repr(c) for c in refused[:5])
            more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            log.warning("catalog of %s: %d item(s) refused (not a 20-digit ID, or a channel "
                        "another device owns): %s%s", device_id, len(refused), sample, more)
        return refused

    def _claim(self, channel_id: str, device_id: str) -> None:
        if channel_id not in self._claims and len(self._claims) >= self.max_claims:
            self._claims.pop(next(iter(self._claims)))
        self._claims[channel_id] = device_id

    def release_channel(self, channel_id: str) -> tuple[Device, Device | None] | None:
        """An operator frees a channel from its owner's catalog; returns the old owner and
        the device last refused the channel (to be asked for its catalog again), or None when
        no catalog lists `channel_id`."""
        owner_id = self._channel_owner.pop(channel_id, None)
        if owner_id is None:
            return None
        owner = self.devices[owner_id]
        owner.channels.pop(channel_id, None)
        self.channels_version += 1
        self._dirty_channels.add(owner_id)
        claimant_id = self._claims.pop(channel_id, None)
        claimant = self.devices.get(claimant_id) if claimant_id is not None else None
        log.warning("channel %s released from %s by the operator", channel_id, owner_id)
        return owner, claimant

    def sweep(self, mono: float) -> list[Device]:
        """Take devices offline whose registration expired or whose keepalives stopped, as of
        `mono` (monotonic seconds, the registry's clock), in the order they became due.

        Looks only at the devices whose heap entry is due: the cost follows the devices due,
        not the devices registered."""
        gone = []
        timeout = self.keepalive_timeout_s
        due = self._due
        devices = self.devices
        while due and due[0][0] <= mono:
            when, device_id = heapq.heappop(due)
            dev = devices.get(device_id)
            if dev is None or when != dev.sweep_at:
                continue  # superseded by an earlier entry of the same device
            dev.sweep_at = math.inf
            if not dev.online:
                continue
            if not dev.registered(mono) or mono - dev.keepalive_mono >= timeout:
                self._set_online(dev, False)
                self._dirty.add(dev.id)
                gone.append(dev)
            else:
                self._schedule(dev, after=mono)  # a keepalive moved it on
        return gone

    def _schedule(self, dev: Device, after: float = -math.inf) -> None:
        """Make sure an entry of `dev` comes up in the sweep heap by its deadline (and after
        `after`, so that a device found alive is not looked at again in the same sweep)."""
        when = min(dev.expires_mono, dev.keepalive_mono + self.keepalive_timeout_s)
        if when <= after:
            when = math.nextafter(after, math.inf)
        if when < dev.sweep_at:
            dev.sweep_at = when
            heapq.heappush(self._due, (when, dev.id))
            if len(self._due) > 2 * len(self.devices) + 1024:
                self._reschedule_all()  # too many entries no longer live: start afresh

    def _reschedule_all(self) -> None:
        self._due.clear()  # in place: a sweep in progress holds the list
        for dev in self.devices.values():
            dev.sweep_at = math.inf
            if dev.online:
                self._schedule(dev)

    def _set_online(self, dev: Device, online: bool) -> None:
        if dev.online != online:
            dev.online = online
            self._online += 1 if online else -1
            if dev.channels:
                self.channels_version += 1
            state = "online" if online else "offline"
            log.debug("device %s %s (%s)", dev.id, state, dev.remote)
            changes = self._changes[state]
            changes[0] += 1
            if len(changes[1]) < 5:
                changes[1].append(dev.id)
            if self.on_change is not None:
                self.on_change(dev, state)

    def log_changes(self) -> None:
        """One log line per state for the transitions since the last call (a burst of 10,000
        registrations is two lines, not 10,000)."""
        for state, (count, sample) in self._changes.items():
            if count:
                more = f" and {count - len(sample)} more" if count > len(sample) else ""
                log.info("%d device(s) %s: %s%s", count, state, ", ".join(sample), more)
        self._changes = {"online": [0, []], "offline": [0, []]}

    # ----- queries -----
    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices.values())

    def __len__(self) -> int:
        return len(self.devices)

    def online_count(self) -> int:
        """How many devices are online (a counter: /healthz, /api/stats and the metrics ask
        for it on every call, and a site may hold 100,000 devices)."""
        return self._online

    def channel_device(self, channel_id: str) -> Device | None:
        """The device whose catalog lists `channel_id`; a device's own ID names the device
        itself (an IPC that takes INVITEs to its device ID, as many do)."""
        owner = self._channel_owner.get(channel_id)
        if owner is not None:
            return self.devices.get(owner)
        return self.devices.get(channel_id)

    def channel_ids(self) -> KeysView[str]:
        """The IDs of every channel some device's catalog lists: the channels `channels()`
        yields, without a walk over the devices that have none."""
        return self._channel_owner.keys()

    def channels(self) -> Iterator[tuple[Device, str, dict[str, str]]]:
        for dev in self.devices.values():
            for cid, fields in dev.channels.items():
                yield dev, cid, fields
