"""The node toward its upstreams: who may ask what, the shared catalog, and its NOTIFYs.

`Cascade` holds one `UpstreamLink` per configured upstream and takes every SIP request whose
From names one of them (`claims`). Such a request must come from that upstream's configured
address over its configured transport (UDP: host and port; TCP: the host, over any connection)
and, except for what belongs to a session already set up (ACK, BYE, CANCEL), while the node is
registered to it; anything else gets 403. Then:

- MESSAGE Query/Catalog: 200, then the channels this upstream may see (`sip.catalog`), in
  parts of one SN and SumNum, each part sent once the previous got its 200; DeviceInfo and
  DeviceStatus for the node's own ID are answered as a platform, for a shared channel from the
  registry. Control/DeviceControl for a shared channel is relayed to the device that owns it,
  and the device's SIP answer decides ours.
- SUBSCRIBE (Catalog): `sip.subscription`, bounded per upstream; a NOTIFY with the items that
  changed (ON, OFF, ADD, DEL, UPDATE) follows within one tick (`TICK_S`) of a change of a shared
  channel's status or fields, or of its sharing. A subscription that expires gets a final
  NOTIFY; one whose NOTIFY the upstream refuses with 481 is dropped.
- INVITE, ACK, CANCEL, BYE: the re-streamer (`restream.Restreamer`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from recorder.search import gb_time
from sip import catalog as cat
from sip.errors import ParseError
from sip.manscdp import ManscdpMessage, build_manscdp, parse_manscdp
from sip.message import Response
from sip.subscription import Subscription, SubscriptionTable
from sip.transaction import Peer, RequestReceived

from ..access.policy import AccessPolicy
from ..access.principals import as_upstream
from ..devices.queries import DeviceQueries
from ..devices.registry import Registry
from ..media.control import MediaControl
from ..recording.service import RecordAnswer
from ..runtime.supervise import Supervisor
from ..settings import Settings, UpstreamSettings
from ..transport.sip import SipEndpoint
from .links import UpstreamLink
from .records import add_device_records, uncovered
from .restream import Restreamer

log = logging.getLogger(__name__)

TICK_S = 0.5
#: catalog items per MESSAGE: small over UDP, where a datagram must not fragment
ITEMS_PER_PART_UDP = 1
ITEMS_PER_PART_TCP = 20
PART_BYTES_MAX = 8000
#: answers (catalog parts, relayed controls) under way at once, all upstreams together
MAX_ANSWERS = 64
#: how long the answer of a device to a relayed DeviceControl is waited for
CONTROL_ANSWER_S = 5.0
NODE_NAME = "sensing-node"


@dataclass
class UpstreamChanges:
    """What a reload did to the upstreams (their IDs), and the sessions it ended."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    ended: int = 0


def channel_view(registry: Registry) -> dict[str, dict[str, str]]:
    """Every channel the node knows, with its catalog fields as its device reported them, and a
    Status of OFF while that device is offline."""
    view: dict[str, dict[str, str]] = {}
    for dev, channel_id, fields in registry.channels():
        item = dict(fields)
        item.pop("DeviceID", None)
        if not dev.online:
            item["Status"] = "OFF"
        elif "Status" not in item:
            item["Status"] = "ON"
        view[channel_id] = item
    return view


class Cascade:
    """The node as a lower platform toward every configured upstream."""

    def __init__(
        self,
        settings: Settings,
        endpoint: SipEndpoint,
        registry: Registry,
        hub: MediaControl,
        *,
        audit: Callable[..., Coroutine[Any, Any, None]],
        access: AccessPolicy | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        #: who may see and take what: sharing classes and grants (the node's policy)
        self.access = access or AccessPolicy(settings, wall=wall)
        self.endpoint = endpoint
        self.registry = registry
        self.hub = hub
        self.wall = wall
        self.mono = mono
        self.node_id = settings.node.id
        self.policy = _Visibility(self.access)
        self.links: dict[str, UpstreamLink] = {}
        self.queries: DeviceQueries | None = None
        #: Response/RecordInfo bodies from the node's recordings (the recording service's)
        self.record_search: Callable[..., Awaitable[list[bytes]]] | None = None
        #: the same as items, to add a device's records to (`cascade.device_fallback`)
        self.record_items: Callable[..., Awaitable[RecordAnswer]] | None = None
        self.subscriptions = SubscriptionTable(self.node_id)
        self.restreamer = Restreamer(settings, hub, registry, audit=audit, access=self.access,
                                     wall=wall)
        self.refused = 0
        self._view: dict[str, dict[str, str]] = {}
        #: `Registry.channels_version` when `_view` was taken: the view is the same while it is
        self._view_version = -1
        #: per upstream, the channels it saw at the last look (for NOTIFY when a grant starts
        #: or ends, or the settings change, while the catalog stays the same)
        self._seen: dict[str, frozenset[str]] = {}
        self._seen_key: tuple[int, float] = (-1, 0.0)
        self._notify_chains: dict[int, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: each upstream's registration task, by upstream
        self._link_tasks: dict[str, asyncio.Task[None]] = {}
        self._supervisor: Supervisor | None = None
        self._contact: tuple[str, int] = ("", 0)
        self._watching = False
        self._background: set[asyncio.Future[None]] = set()
        self._tag = 0
        self._sn = 0

    def _next_sn(self) -> int:
        self._sn = self._sn % 999_999 + 1
        return self._sn

    # ----- life cycle -----
    def start(self, supervisor: Supervisor, contact: tuple[str, int]) -> None:
        """Register to every upstream and start the catalog watch."""
        self._supervisor, self._contact = supervisor, contact
        for upstream in self.settings.upstreams:
            self._start_link(upstream)
        self._view = channel_view(self.registry)
        self._view_version = self.registry.channels_version
        self._seen = {link_id: frozenset(cat.shared_channels(self._view, self.policy, link_id))
                      for link_id in self.links}
        self._seen_key = self.access.epoch(), self.access.next_change()
        self._start_watch()

    def _start_link(self, upstream: UpstreamSettings) -> UpstreamLink:
        assert self._supervisor is not None
        link = UpstreamLink(upstream, self.endpoint, node_id=self.node_id, contact=self._contact,
                            wall=self.wall, mono=self.mono, on_change=self._link_changed)
        self.links[upstream.id] = link
        self._link_tasks[upstream.id] = self._supervisor.spawn(f"upstream {upstream.id}",
                                                               link.run)
        return link

    def _start_watch(self) -> None:
        if self.links and not self._watching and self._supervisor is not None:
            self._watching = True
            self._tasks.append(self._supervisor.spawn("catalog watch", self._watch))

    async def _stop_link(self, link: UpstreamLink) -> None:
        """Stop registering to `link` and unregister (Expires: 0) from it."""
        task = self._link_tasks.pop(link.id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await link.stop()
        if self._supervisor is not None:  # its failures are no longer the node's problems
            self._supervisor.tasks.pop(f"upstream {link.id}", None)

    async def apply_settings(self, settings: Settings) -> UpstreamChanges:
        """Take reloaded settings. Limits and `cascade:` options hold for sessions set up from
        now on; running ones stay. Upstreams: a new one is registered to; a removed one has
        its sessions ended (BYE) and is unregistered from (Expires: 0); a changed one is
        unregistered from and registered to again with its new settings, its sessions going on
        where its address, transport and our code toward it stay the same (else they end).
        Only a new `max_streams` is taken without registering again."""
        self.settings = settings
        self.restreamer.apply_settings(settings)
        new = {upstream.id: upstream for upstream in settings.upstreams}
        changes = UpstreamChanges(
            added=[i for i in new if i not in self.links],
            removed=[i for i in self.links if i not in new],
            changed=[i for i in new if i in self.links and self.links[i].settings != new[i]],
        )
        if self._supervisor is None:  # not started: start() takes settings.upstreams
            return changes
        for upstream_id in changes.removed:
            link = self.links[upstream_id]
            changes.ended += self.restreamer.end_upstream(
                upstream_id, "upstream removed from the configuration")
            await self._stop_link(link)
            del self.links[upstream_id]
            self.subscriptions.drop_upstream(upstream_id)
            self._seen.pop(upstream_id, None)
            log.info("upstream %s removed: unregistered", upstream_id)
        for upstream_id in changes.changed:
            old, upstream = self.links[upstream_id], new[upstream_id]
            if dataclasses.replace(old.settings, max_streams=upstream.max_streams) == upstream:
                old.settings = upstream
                continue
            same_place = (old.peer == Peer(upstream.transport, upstream.host, upstream.port)
                          and old.local_id == (upstream.local_id or self.node_id))
            if not same_place:
                changes.ended += self.restreamer.end_upstream(
                    upstream_id, "upstream moved in the configuration")
            await self._stop_link(old)
            link = self._start_link(upstream)
            if same_place:
                self.restreamer.move_sessions(old, link)
            log.info("upstream %s changed: registering again", upstream_id)
        for upstream_id in changes.added:
            self._start_link(new[upstream_id])
            log.info("upstream %s added: registering", upstream_id)
        self._start_watch()
        return changes

    async def stop(self) -> None:
        """BYE to every upstream session, then unregister (Expires: 0) from every upstream."""
        self.restreamer.close()
        tasks = [*self._tasks, *self._link_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._link_tasks.clear()
        await asyncio.gather(*(link.stop() for link in self.links.values()),
                             return_exceptions=True)
        for chain in list(self._notify_chains.values()):
            chain.cancel()

    def visible(self, upstream_id: str, channel_id: str) -> bool:
        return self.access.visible(as_upstream(upstream_id), channel_id)

    def _link_changed(self, link: UpstreamLink) -> None:
        if not link.registered:
            # It restarted or refused us: its subscriptions went with its state.
            self.subscriptions.drop_upstream(link.id)

    # ----- routing -----
    def claims(self, event: RequestReceived) -> bool:
        """Whether the request comes in the name of one of our upstreams."""
        if not self.links:
            return False
        try:
            user = event.request.from_.uri.user
        except ParseError:
            return False
        return user in self.links

    def on_request(self, event: RequestReceived) -> None:
        request = event.request
        link = self.links[request.from_.uri.user or ""]
        peer = event.peer
        method = request.method
        source_ok = peer.host == link.peer.host and peer.transport == link.peer.transport and (
            peer.reliable or peer.port == link.peer.port
        )
        if not source_ok:
            self._forbid(event, "Source Mismatch", link)
            return
        restreamer = self.restreamer
        if method == "ACK":
            restreamer.on_ack(event)
            return
        if method == "BYE":
            if not restreamer.on_bye(link, event):
                self._answer(event, 481)
            return
        if method == "CANCEL":
            restreamer.on_cancel(link, event)
            return
        if method == "INFO":
            if not restreamer.on_info(link, event):
                self._answer(event, 481)
            return
        if not link.may_ask:
            self._forbid(event, "Not Registered", link)
            return
        if method == "INVITE":
            restreamer.on_invite(link, event)
        elif method == "MESSAGE":
            self._message(link, event)
        elif method == "SUBSCRIBE":
            self._subscribe(link, event)
        elif method == "OPTIONS":
            self._answer(event, 200)
        elif method in ("NOTIFY", "REGISTER"):
            self._answer(event, 405)
        else:
            self._answer(event, 501)

    def _answer(self, event: RequestReceived, status: int, reason: str | None = None) -> None:
        self._tag += 1
        response = Response.for_request(event.request, status, reason, to_tag=f"c{self._tag:x}")
        if event.key is None:
            self.endpoint.send(response, event.peer)
        else:
            self.endpoint.respond(event, response)

    def _forbid(self, event: RequestReceived, reason: str, link: UpstreamLink) -> None:
        self.refused += 1
        log.info("upstream %s: %s from %s:%d over %s refused: %s", link.id,
                 event.request.method, event.peer.host, event.peer.port, event.peer.transport,
                 reason)
        if event.request.method != "ACK":
            self._answer(event, 403, reason)

    # ----- MESSAGE -----
    def _message(self, link: UpstreamLink, event: RequestReceived) -> None:
        if len(self._background) >= MAX_ANSWERS:
            # Every query is answered by a task of its own (its parts go one after another):
            # an upstream asking faster than it takes the answers waits, it does not pile up.
            self._answer(event, 503, "Busy")
            return
        try:
            msg = parse_manscdp(event.request.body)
        except ParseError as exc:
            self._answer(event, 400, "Bad MANSCDP")
            log.info("upstream %s: unreadable MESSAGE body: %s", link.id, exc)
            return
        query = cat.platform_query(msg)
        if query is not None:
            self._answer(event, 200)
            self._spawn(self._answer_query(link, query), f"answer {query.cmd_type}")
            return
        if msg.root == "Control" and msg.cmd_type == "DeviceControl":
            self._relay_control(link, event, msg)
            return
        if msg.root == "Query" and msg.cmd_type == "RecordInfo" and self.record_search:
            self._answer(event, 200)
            self._spawn(self._answer_records(link, msg), "answer RecordInfo")
            return
        self._answer(event, 200)  # keepalives and notifications need no more

    async def _answer_query(self, link: UpstreamLink, query: cat.PlatformQuery) -> None:
        encoding = link.settings.charset
        local = link.local_id
        if query.cmd_type == "Catalog":
            items = cat.shared_channels(channel_view(self.registry), self.policy, link.id)
            per_part = ITEMS_PER_PART_TCP if link.peer.reliable else ITEMS_PER_PART_UDP
            bodies = cat.catalog_response_parts(
                query.sn, local, items, per_part=per_part, max_bytes=PART_BYTES_MAX,
                encoding=encoding,
            )
        elif query.cmd_type == "DeviceInfo":
            if query.device_id in (local, self.node_id):
                count = len(cat.shared_channels(channel_view(self.registry), self.policy, link.id))
                bodies = [cat.device_info_response(
                    query.sn, local, name=NODE_NAME, manufacturer=NODE_NAME,
                    model="GB/T 28181 aggregation node", firmware=_version(), channels=count,
                    encoding=encoding,
                )]
            else:
                bodies = self._channel_info(link, query)
        else:  # DeviceStatus
            if query.device_id in (local, self.node_id):
                bodies = [cat.device_status_response(query.sn, local, encoding=encoding)]
            else:
                dev = self._shared_device(link, query.device_id)
                bodies = [cat.device_status_response(
                    query.sn, query.device_id, online=dev is not None and dev.online,
                    encoding=encoding,
                )] if dev is not None else []
        await self._send_parts(link, bodies, f"{query.cmd_type} SN {query.sn}")

    async def _answer_records(self, link: UpstreamLink, msg: ManscdpMessage) -> None:
        """The node's own recordings of a shared channel, as runs without a gap; a channel not
        shared with this upstream is answered as unknown (no items), not refused. With
        `cascade.device_fallback`, what the device holds for the parts of the range the node
        has nothing for is added (`add_device_records`)."""
        assert self.record_search is not None
        shared = self.visible(link.id, msg.device_id)
        if shared and self.settings.cascade.device_fallback and self.record_items is not None:
            answer = await self.record_items(msg, known=True)
            await self._add_device_records(answer)
            bodies = answer.bodies(link.settings.charset)
        else:
            bodies = await self.record_search(msg, known=shared, encoding=link.settings.charset)
        await self._send_parts(link, bodies, f"RecordInfo SN {msg.sn}")

    async def _add_device_records(self, answer: RecordAnswer) -> None:
        dev = self.registry.channel_device(answer.channel_id)
        holes = uncovered(answer.start, answer.end, answer.spans)
        if not holes or dev is None or not dev.online or self.queries is None:
            return
        tz = self.settings.node.tz
        items = await self.queries.record_info(
            dev, answer.channel_id, gb_time(answer.start, tz), gb_time(answer.end, tz),
            timeout=self.settings.cascade.device_query_timeout_s,
        )
        added = add_device_records(answer, holes, items, tz)
        if added:
            log.info("RecordInfo for %s: %d items from device %s where the node has none",
                     answer.channel_id, added, dev.id)

    def _shared_device(self, link: UpstreamLink, channel_id: str) -> Any:
        if not self.visible(link.id, channel_id):
            return None
        return self.registry.channel_device(channel_id)

    def _channel_info(self, link: UpstreamLink, query: cat.PlatformQuery) -> list[bytes]:
        dev = self._shared_device(link, query.device_id)
        if dev is None:
            return []
        fields = dev.channels.get(query.device_id, {})
        return [cat.device_info_response(
            query.sn, query.device_id, name=fields.get("Name", dev.name),
            manufacturer=fields.get("Manufacturer", dev.manufacturer),
            model=fields.get("Model", dev.model), firmware=dev.firmware, channels=1,
            encoding=link.settings.charset,
        )]

    async def _send_parts(self, link: UpstreamLink, bodies: list[bytes], what: str) -> None:
        """Send MESSAGE bodies one by one, each once the previous got its 200."""
        for index, body in enumerate(bodies):
            try:
                response = await link.request(link.message(body))
            except Exception as exc:
                log.info("upstream %s: %s part %d/%d not delivered: %s", link.id, what,
                         index + 1, len(bodies), exc or type(exc).__name__)
                return
            if response.status >= 300:
                log.info("upstream %s refused %s part %d/%d: %d", link.id, what, index + 1,
                         len(bodies), response.status)
                return

    def _relay_control(self, link: UpstreamLink, event: RequestReceived,
                       msg: ManscdpMessage) -> None:
        dev = self._shared_device(link, msg.device_id)
        if dev is None or not dev.online or self.queries is None:
            self._answer(event, 404 if dev is None else 480)
            return
        queries = self.queries
        body = event.request.body

        async def relay() -> None:
            # Some commands (RecordCmd, GuardCmd, TeleBoot ...) get a Response/DeviceControl
            # from the device; it goes to the upstream as the device sent it, re-encoded.
            answer = asyncio.ensure_future(
                queries.expect(dev, "DeviceControl", msg.sn, CONTROL_ANSWER_S)
            )
            try:
                response = await queries.send(dev, body)
            except Exception as exc:
                answer.cancel()
                log.info("DeviceControl for %s from upstream %s not delivered: %s",
                         msg.device_id, link.id, exc or type(exc).__name__)
                self._answer(event, 504)
                return
            self._answer(event, response.status if response.status < 300 else 502)
            if response.status >= 300:
                answer.cancel()
                return
            reply = await answer
            if reply is not None and reply.root == "Response":
                relayed = build_manscdp(
                    "Response", "DeviceControl", reply.sn, reply.device_id,
                    list(reply.fields.items()), encoding=link.settings.charset,
                )
                await self._send_parts(link, [relayed], f"DeviceControl SN {reply.sn}")

        self._spawn(relay(), "relay DeviceControl")

    # ----- SUBSCRIBE / NOTIFY -----
    def _subscribe(self, link: UpstreamLink, event: RequestReceived) -> None:
        request = event.request
        if request.body:
            try:
                msg = parse_manscdp(request.body)
            except ParseError:
                self._answer(event, 400, "Bad MANSCDP")
                return
            if cat.catalog_subscription(msg) is None:
                self._answer(event, 489, "Bad Event")
                return
        # Whatever changed before this subscription goes to the others first: the new one
        # starts from the catalog as it is now.
        self._publish_changes()
        self._tag += 1
        outcome = self.subscriptions.receive(link.id, request, self.mono(),
                                             to_tag=f"s{self._tag:x}")
        self.endpoint.respond(event, outcome.response(request))
        sub = outcome.subscription
        if sub is None or outcome.status >= 300:
            return
        if outcome.kind in ("created", "fetched"):
            self._notify(link, sub, [])  # the state now: nothing changed yet
        elif outcome.kind == "ended":
            self._notify(link, sub, [], terminated="timeout")

    def _notify(self, link: UpstreamLink, sub: Subscription, bodies: list[bytes],
                terminated: str | None = None) -> None:
        """Queue NOTIFYs for `sub`, after any still being sent to it (order matters)."""
        previous = self._notify_chains.get(id(sub))

        async def send() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            for body in bodies or [b""]:
                via = self.endpoint.via(link.peer.transport)
                request = sub.notify(via, body, self.mono(), terminated=terminated)
                try:
                    response = await link.request(request)
                except Exception as exc:
                    log.info("NOTIFY to upstream %s not delivered: %s", link.id,
                             exc or type(exc).__name__)
                    return
                if response.status == 481:
                    self.subscriptions.remove(sub)
                    return

        task = asyncio.get_running_loop().create_task(send(), name=f"NOTIFY {link.id}")
        self._notify_chains[id(sub)] = task
        task.add_done_callback(lambda done: self._chain_done(id(sub), done))

    def _chain_done(self, key: int, task: asyncio.Task[None]) -> None:
        if self._notify_chains.get(key) is task:
            del self._notify_chains[key]

    async def _watch(self) -> None:
        """Catalog changes to NOTIFY, and subscriptions to expire, every TICK_S."""
        while True:
            await asyncio.sleep(TICK_S)
            now = self.mono()
            for sub in self.subscriptions.expire(now):
                link = self.links.get(sub.upstream_id)
                if link is not None:
                    self._notify(link, sub, [], terminated="timeout")
            self._publish_changes()

    def _publish_changes(self) -> None:
        """NOTIFY every subscription of what changed in its upstream's view since the last
        look."""
        key = self.access.epoch(), self.access.next_change()
        version = self.registry.channels_version
        if version == self._view_version and key == self._seen_key:
            return  # without a walk over every channel: twice a second on a large site
        view = channel_view(self.registry)
        self._view_version = version
        if view == self._view and key == self._seen_key:
            return
        before, self._view, self._seen_key = self._view, view, key
        seen, self._seen = self._seen, {
            link.id: frozenset(cat.shared_channels(view, self.policy, link.id))
            for link in self.links.values()
        }
        for link in self.links.values():
            subs = self.subscriptions.of(link.id)
            if not subs:
                continue
            # Both looks from the sets just taken: the policy is asked once per channel.
            events = cat.catalog_changes(before, view, _Seen(self._seen[link.id]), link.id,
                                         previous_policy=_Seen(seen.get(link.id, frozenset())))
            if not events:
                continue
            per_part = ITEMS_PER_PART_TCP if link.peer.reliable else ITEMS_PER_PART_UDP
            for sub in subs:
                bodies = cat.catalog_notify_parts(
                    self._next_sn(), link.local_id, events, per_part=per_part,
                    max_bytes=PART_BYTES_MAX, encoding=link.settings.charset,
                )
                self._notify(link, sub, bodies)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    # ----- API -----
    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for link in self.links.values():
            item = link.snapshot()
            item["sessions"] = self.restreamer.count(upstream=link.id)
            item["max_streams"] = link.settings.max_streams
            item["subscriptions"] = len(self.subscriptions.of(link.id))
            out.append(item)
        return out


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sensing-node")
    except Exception:
        return "0"


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cascade task %s failed", task.get_name(), exc_info=task.exception())


class _Visibility:
    """The node's access policy as `sip.catalog` asks it: which upstream sees which channel."""

    def __init__(self, access: AccessPolicy) -> None:
        self.access = access

    def visible_to(self, upstream_id: str, channel_id: str) -> bool:
        return self.access.visible(as_upstream(upstream_id), channel_id)


class _Seen:
    """What an upstream saw at the last look."""

    def __init__(self, channels: frozenset[str]) -> None:
        self.channels = channels

    def visible_to(self, upstream_id: str, channel_id: str) -> bool:
        return channel_id in self.channels
