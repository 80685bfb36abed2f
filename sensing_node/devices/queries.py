"""Queries the node sends to devices (Catalog, DeviceInfo) and the assembly of their answers.

A query is a MESSAGE in its own client transaction; the device answers 200 and later sends the
result as separate MESSAGEs with the same SN (GB/T 28181-2016 9.5.2). Catalog answers come in
parts: items are collected per (device, SN) until SumNum distinct channels arrived, or until
the parts stop for `catalog_silence_s` (devices miscount), or the first part never comes.

After a (re)registration DeviceInfo and Catalog are asked at the same time, so a device that
never answers one of them (several ignore DeviceInfo) still has its channels read at once. A
Catalog that goes unanswered (refused, no transaction answer, no result) is asked again on the
device's first keepalive `catalog_retry_s` (60 s) later, then after twice that, doubling up to
`catalog_retry_max_s` (one hour), until one is answered.

Work is bounded: a burst of registrations queues device IDs (deduplicated), at most
`max_inflight` devices are queried at once (two queries each), and a device has at most one
DeviceInfo and one Catalog query in flight: one asked for again meanwhile is asked once more
when it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from sip import manscdp
from sip.manscdp import ManscdpMessage
from sip.message import Headers, Request, Response
from sip.transaction import Peer

from ..runtime.stats import Stats
from ..runtime.supervise import Supervisor
from .registry import Device, Registry

if TYPE_CHECKING:
    from ..transport.sip import SipEndpoint

log = logging.getLogger(__name__)

QUERIES = ("DeviceInfo", "Catalog")  # asked after every (re)registration
#: the most RecordInfo items kept from one device answer (a month of hourly files is 720)
MAX_RECORD_ITEMS = 2000


@dataclass
class _Collector:
    device_id: str
    done: asyncio.Future[None]
    items: dict[str, dict[str, str]] = field(default_factory=dict)
    sum_num: int | None = None
    silence: asyncio.TimerHandle | None = None
    result: ManscdpMessage | None = None
    records: list[dict[str, str]] = field(default_factory=list)  # RecordInfo items, in order


class DeviceQueries:
    def __init__(
        self,
        endpoint: SipEndpoint,
        registry: Registry,
        stats: Stats,
        *,
        node_id: str,
        realm: str,
        max_inflight: int = 64,
        max_queued: int = 100_000,
        answer_timeout_s: float = 120.0,
        catalog_silence_s: float = 5.0,
        catalog_retry_s: float = 60.0,
        catalog_retry_max_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self.stats = stats
        self.node_id = node_id
        self.realm = realm
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.answer_timeout_s = answer_timeout_s
        self.catalog_silence_s = catalog_silence_s
        self.catalog_retry_s = catalog_retry_s
        self.catalog_retry_max_s = catalog_retry_max_s
        self.clock = clock
        self._queue: deque[str] = deque()
        self._queued: dict[str, set[str]] = {}  # device ID -> the queries it is due
        self._inflight: set[tuple[str, str]] = set()  # (device ID, query) being asked
        # Queries asked for again while in flight, asked once more when they end; bounded by
        # what is in flight.
        self._again: dict[str, set[str]] = {}
        # Devices whose Catalog went unanswered: (when to ask again, the backoff that led there).
        self._catalog_retry: dict[str, tuple[float, float]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._wakeup = asyncio.Event()
        self._pending: dict[tuple[str, str, int], _Collector] = {}
        self._sn = itertools.count(random.randint(1, 99_999))
        self._call_seq = itertools.count(1)
        self._call_prefix = f"{random.getrandbits(48):012x}"
        self.completed = 0

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the workers under `supervisor`: one that fails is restarted, not lost."""
        supervisor = supervisor or Supervisor()
        for _ in range(self.max_inflight):
            self._workers.append(supervisor.spawn("device queries", self._worker))

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    # ----- scheduling -----
    def device_registered(self, dev: Device) -> None:
        """Queue the catalog and device-info queries for a newly (re)registered device."""
        self._enqueue(dev.id, QUERIES)

    def keepalive(self, dev: Device) -> None:
        """A keepalive from `dev`: ask again for a Catalog it left unanswered, once due."""
        retry = self._catalog_retry.get(dev.id)
        if retry is not None and self.clock() >= retry[0]:
            self._enqueue(dev.id, ("Catalog",))

    def _enqueue(self, device_id: str, queries: tuple[str, ...]) -> None:
        queued = self._queued.get(device_id)
        if queued is not None:
            queued.update(queries)
            return
        if len(self._queue) >= self.max_queued:
            return
        self._queued[device_id] = set(queries)
        self._queue.append(device_id)
        self._wakeup.set()

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            device_id = self._queue.popleft()
            queries = self._queued.pop(device_id, set())
            dev = self.registry.get(device_id)
            if dev is None or not dev.online:
                continue
            await self._refresh(dev, queries)

    async def refresh(self, dev: Device) -> None:
        """DeviceInfo and Catalog at once; a device that ignores one still gets the other read."""
        await self._refresh(dev, set(QUERIES))

    async def _refresh(self, dev: Device, queries: set[str]) -> None:
        asks: list[asyncio.Future[None]] = []
        for cmd_type in QUERIES:
            if cmd_type not in queries:
                continue
            key = (dev.id, cmd_type)
            if key in self._inflight:
                self._again.setdefault(dev.id, set()).add(cmd_type)
                continue
            self._inflight.add(key)
            ask = self._read_catalog(dev) if cmd_type == "Catalog" else self._device_info(dev)
            task = asyncio.ensure_future(ask)
            # A callback, not `finally`: it runs even for a task cancelled before it started.
            task.add_done_callback(partial(self._asked, key))
            asks.append(task)
        if asks:
            await _together(asks)
            self.completed += 1

    def _asked(self, key: tuple[str, str], _: object) -> None:
        self._inflight.discard(key)
        device_id, cmd_type = key
        again = self._again.get(device_id)
        if again is not None and cmd_type in again:
            again.discard(cmd_type)
            if not again:
                del self._again[device_id]
            self._enqueue(device_id, (cmd_type,))

    async def _device_info(self, dev: Device) -> None:
        try:
            info = await self.query(dev, "DeviceInfo")
        except Exception as exc:
            log.info("DeviceInfo query to %s failed: %s", dev.id, exc)
            return
        if info is not None:
            self.registry.update_info(
                dev.id,
                name=info.get("DeviceName") or "",
                manufacturer=info.get("Manufacturer") or "",
                model=info.get("Model") or "",
                firmware=info.get("Firmware") or "",
            )

    async def _read_catalog(self, dev: Device) -> None:
        retry = self._catalog_retry.get(dev.id)
        if retry is not None:  # keepalives meanwhile must not ask again
            self._catalog_retry[dev.id] = (self.clock() + retry[1], retry[1])
        try:
            collector = await self.catalog(dev)
        except Exception as exc:
            self._catalog_missing(dev, exc)
            return
        self._catalog_retry.pop(dev.id, None)
        refused = self.registry.set_channels(dev.id, collector.items)
        if refused:
            self.stats.dropped["catalog_items_refused"] += len(refused)

    def _catalog_missing(self, dev: Device, exc: Exception) -> None:
        retry = self._catalog_retry.pop(dev.id, None)
        backoff = self.catalog_retry_s if retry is None else retry[1] * 2
        backoff = min(backoff, self.catalog_retry_max_s)
        if len(self._catalog_retry) >= self.max_queued:  # bounded; the oldest entry goes
            self._catalog_retry.pop(next(iter(self._catalog_retry)))
        self._catalog_retry[dev.id] = (self.clock() + backoff, backoff)
        log.info("Catalog query to %s failed: %s; asked again on its first keepalive after "
                 "%g s", dev.id, exc, backoff)

    # ----- one query -----
    def _build(self, dev: Device, cmd_type: str, sn: int) -> tuple[Request, Peer]:
        body = manscdp.build_manscdp("Query", cmd_type, sn, dev.id, encoding=dev.charset)
        return self.message_to(dev, body)

    async def send(self, dev: Device, body: bytes) -> Response:
        """Send one MANSCDP body (an answer to the device's own query) in a MESSAGE."""
        request, peer = self.message_to(dev, body)
        return await self.endpoint.request(request, peer)

    def message_to(self, dev: Device, body: bytes) -> tuple[Request, Peer]:
        host, port = dev.host_port
        peer = Peer(dev.transport, host, port)
        headers = Headers()
        headers.add("Via", self.endpoint.via(dev.transport))
        headers.add("From", f"<sip:{self.node_id}@{self.realm}>;tag={random.getrandbits(32):x}")
        headers.add("To", f"<sip:{dev.id}@{self.realm}>")
        headers.add("Call-ID", f"{self._call_prefix}{next(self._call_seq)}@{self.realm}")
        headers.add("CSeq", "1 MESSAGE")
        headers.add("Max-Forwards", "70")
        headers.add("Content-Type", "Application/MANSCDP+xml")
        uri = f"sip:{dev.id}@{dev.remote}"
        return Request(headers=headers, body=body, method="MESSAGE", uri=uri), peer

    async def _send(self, dev: Device, cmd_type: str) -> _Collector:
        sn = next(self._sn) % 1_000_000 or 1
        loop = asyncio.get_running_loop()
        collector = _Collector(dev.id, loop.create_future())
        self._pending[(dev.id, cmd_type.lower(), sn)] = collector
        request, peer = self._build(dev, cmd_type, sn)
        try:
            response = await self.endpoint.request(request, peer)
            if response.status != 200:
                raise RuntimeError(f"{cmd_type} query answered {response.status}")
            await asyncio.wait_for(asyncio.shield(collector.done), self.answer_timeout_s)
        except Exception:
            if not collector.items:
                raise
            # Some catalog parts came before the device went quiet: keep what we have.
        finally:
            self._pending.pop((dev.id, cmd_type.lower(), sn), None)
            if collector.silence is not None:
                collector.silence.cancel()
        return collector

    async def record_info(
        self, dev: Device, channel_id: str, start: str, end: str, *, timeout: float,
    ) -> list[dict[str, str]]:
        """Ask `dev` for the records of `channel_id` between `start` and `end` (GB local times,
        `YYYY-MM-DDTHH:MM:SS`) and collect the items of every part of its answer, until
        SumNum came, the parts stop for `catalog_silence_s`, or `timeout` passes; at most
        `MAX_RECORD_ITEMS`. What came by then is returned (nothing when the device refused or
        never answered)."""
        sn = next(self._sn) % 1_000_000 or 1
        key = (dev.id, "recordinfo", sn)
        collector = _Collector(dev.id, asyncio.get_running_loop().create_future())
        self._pending[key] = collector
        body = manscdp.build_manscdp(
            "Query", "RecordInfo", sn, channel_id,
            [("StartTime", start), ("EndTime", end), ("Secrecy", 0), ("Type", "all")],
            encoding=dev.charset,
        )
        request, peer = self.message_to(dev, body)
        try:
            async with asyncio.timeout(timeout):
                response = await self.endpoint.request(request, peer)
                if response.status != 200:
                    log.info("RecordInfo query to %s answered %d", dev.id, response.status)
                    return []
                await asyncio.shield(collector.done)
        except TimeoutError:
            log.info("RecordInfo from %s: %d items within %g s", dev.id,
                     len(collector.records), timeout)
        except Exception as exc:  # no transaction answer, the device's address unusable
            log.info("RecordInfo query to %s failed: %s", dev.id, exc)
        finally:
            if self._pending.get(key) is collector:
                del self._pending[key]
            if collector.silence is not None:
                collector.silence.cancel()
        return collector.records

    async def query(self, dev: Device, cmd_type: str) -> ManscdpMessage | None:
        collector = await self._send(dev, cmd_type)
        return collector.result

    async def catalog(self, dev: Device) -> _Collector:
        return await self._send(dev, "Catalog")

    # ----- answers -----
    async def expect(
        self, dev: Device, cmd_type: str, sn: int, timeout: float
    ) -> ManscdpMessage | None:
        """Wait for the device's Response `cmd_type` with `sn` (to a request somebody else
        sent it, e.g. a DeviceControl relayed from an upstream); None after `timeout`."""
        key = (dev.id, cmd_type.lower(), sn)
        if key in self._pending:
            return None  # somebody waits for it already
        collector = _Collector(dev.id, asyncio.get_running_loop().create_future())
        self._pending[key] = collector
        try:
            await asyncio.wait_for(asyncio.shield(collector.done), timeout)
        except TimeoutError:
            return None
        finally:
            if self._pending.get(key) is collector:
                del self._pending[key]
        return collector.result

    def response_received(self, dev: Device, msg: ManscdpMessage) -> None:
        collector = self._pending.get((dev.id, msg.cmd_type.lower(), msg.sn))
        if collector is None or collector.done.done():
            log.debug("unsolicited %s SN %s from %s", msg.cmd_type, msg.sn, dev.id)
            return
        if msg.cmd_type == "RecordInfo":
            self._record_part(collector, msg)
            return
        if msg.cmd_type != "Catalog":
            collector.result = msg
            collector.done.set_result(None)
            return
        if msg.sum_num is not None:
            collector.sum_num = msg.sum_num
        for item in msg.items:
            item_id = item.get("DeviceID")
            if item_id:  # devices sometimes send items without an ID: nothing to key them by
                collector.items[item_id] = item
        if collector.sum_num is not None and len(collector.items) >= collector.sum_num:
            self._finish(collector)
            return
        self._await_more(collector)

    def _record_part(self, collector: _Collector, msg: ManscdpMessage) -> None:
        if msg.sum_num is not None:
            collector.sum_num = msg.sum_num
        room = MAX_RECORD_ITEMS - len(collector.records)
        collector.records += msg.items[:room]
        wanted = collector.sum_num
        if wanted is None or len(collector.records) >= min(wanted, MAX_RECORD_ITEMS):
            self._finish(collector)
            return
        self._await_more(collector)

    def _await_more(self, collector: _Collector) -> None:
        """More parts are due: the answer is complete once they stop for catalog_silence_s."""
        if collector.silence is not None:
            collector.silence.cancel()
        loop = asyncio.get_running_loop()
        collector.silence = loop.call_later(self.catalog_silence_s, self._finish, collector)

    @staticmethod
    def _finish(collector: _Collector) -> None:
        if collector.silence is not None:
            collector.silence.cancel()
        if not collector.done.done():
            collector.done.set_result(None)


async def _together(tasks: list[asyncio.Future[None]]) -> None:
    """Wait for `tasks`; the first to raise cancels the others and its error goes up (as does
    a cancellation), so no query outlives the refresh that started it."""
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
