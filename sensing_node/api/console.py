"""The operator console: the page at `/`, its files under `/console/`, and `GET /api/events`.

The page is plain HTML, JavaScript and CSS shipped in `sensing_node/console/` (no CDN, no build
step). It signs in with an API token and calls the same `/api/*` routes as any other client, so
the roles and rights of `api/routes.py` apply to it unchanged.

`GET /api/events` is a Server-Sent Events stream of status changes: devices online and offline,
streams started, changing state and ended, upper platforms changing state, and the health
status. The node has no event bus to subscribe to, so one watcher compares what the API would
answer once a second and tells every page what changed; it runs only while a page listens, and a
page holds one connection. A client that cannot keep up is told to `resync` (read everything
again) rather than queue without bound.

EventSource cannot set an Authorization header, and neither can a `<video src>` nor a download
link: for those three GET routes (`/api/events`, `/api/recordings/play`, `/api/recordings/export`)
a `token` query parameter stands for the header, and the bearer middleware checks it as it
checks the header. The node's HTTP server keeps no access log, so the token in the URL is not
written anywhere by the node; a reverse proxy in front of it should not log query strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ..access.principals import Principal
from ..devices.registry import iso
from .routes import NODE, PRINCIPAL, Handler, needs

#: the console's static files (package data of `sensing_node.console`)
CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"

#: GET routes where `?token=` may stand for `Authorization: Bearer` (see the module docstring)
TOKEN_IN_QUERY = frozenset({"/api/events", "/api/recordings/play", "/api/recordings/export"})

#: how often the watcher compares the node's state (seconds)
WATCH_INTERVAL_S = 1.0
#: a comment line this often keeps idle connections (and proxies) open
HEARTBEAT_S = 15.0
#: events queued for one page before it is told to resync instead
CLIENT_QUEUE_MAX = 256
#: pages listening at once; one more gets 503
MAX_CLIENTS = 64

_STATIC_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\.(?:html|js|css|svg|png)")
_CONTENT_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css",
                  "svg": "image/svg+xml", "png": "image/png"}


@web.middleware
async def token_in_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`?token=` as the bearer token, on the GET routes a browser cannot send headers for."""
    if (request.method == "GET" and request.path in TOKEN_IN_QUERY
            and "Authorization" not in request.headers and "token" in request.query):
        headers = CIMultiDict(request.headers)
        headers["Authorization"] = f"Bearer {request.query['token']}"
        request = request.clone(headers=headers)
    return await handler(request)


@dataclass(eq=False)  # one per page, kept in a set by identity
class _Client:
    principal: Principal
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = field(
        default_factory=lambda: asyncio.Queue(CLIENT_QUEUE_MAX))
    overflowed: bool = False


class EventHub:
    """The watcher and the pages listening to it."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.clients: set[_Client] = set()
        self._task: asyncio.Task[None] | None = None
        self._state: dict[str, dict[str, Any]] | None = None
        self.closing = False

    def join(self, principal: Principal) -> _Client:
        client = _Client(principal)
        self.clients.add(client)
        if self._task is None:
            self._state = self.state()
            self._task = asyncio.get_running_loop().create_task(self._watch())
        return client

    def leave(self, client: _Client) -> None:
        self.clients.discard(client)
        if not self.clients and self._task is not None:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        self.closing = True
        for client in list(self.clients):
            if client.queue.full():  # the end goes in even where the page fell behind
                client.queue.get_nowait()
            client.queue.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def state(self) -> dict[str, dict[str, Any]]:
        """What the pages are told about, keyed so that a change is a different value."""
        node = self.app[NODE]
        tz = node.settings.node.tz
        # Not the keepalive times: every keepalive would be an event.
        devices = {d.id: {"id": d.id, "name": d.name, "online": d.online}
                   for d in node.registry}
        streams = {}
        for s in node.media.snapshot():
            streams[s["channel_id"]] = {
                "channel_id": s["channel_id"], "device_id": s.get("device_id"),
                "state": s.get("state"), "codec": s.get("codec"),
                "transport": s.get("transport"), "last_error": s.get("last_error")}
        upstreams = {u["id"]: {"id": u["id"], "state": u.get("state"),
                               "last_error": u.get("last_error"),
                               "since": iso(u.get("since"), tz)}
                     for u in node.cascade.snapshot()}
        problems = node.health_problems()
        health = {"node": {"status": "degraded" if problems else "ok", "reasons": problems}}
        return {"device": devices, "stream": streams, "upstream": upstreams, "health": health}

    def changes(self, before: dict[str, dict[str, Any]],
                after: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for kind, items in after.items():
            old = before.get(kind, {})
            for key, value in items.items():
                if key not in old or _comparable(old[key]) != _comparable(value):
                    change = "new" if key not in old else "changed"
                    out.append((kind, {**value, "change": change}))
            for key, value in old.items():
                if key not in items:
                    out.append((kind, {**value, "change": "gone"}))
        return out

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            after = self.state()
            before, self._state = self._state or {}, after
            for kind, data in self.changes(before, after):
                self.publish(kind, data)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        policy = self.app[NODE].access.policy
        channel = data.get("channel_id")
        for client in self.clients:
            if client.overflowed:
                continue
            if channel and not policy.visible(client.principal, channel):
                continue
            try:
                client.queue.put_nowait((kind, data))
            except asyncio.QueueFull:
                client.overflowed = True


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _comparable(value: dict[str, Any]) -> dict[str, Any]:
    """A value without the figures that move by themselves ("last failure 12 s ago"): a health
    reason is news when it appears or goes, not every second while it stands."""
    reasons = value.get("reasons")
    if reasons is None:
        return value
    return {**value, "reasons": [_NUMBER.sub("#", reason) for reason in reasons]}


EVENTS: web.AppKey[EventHub] = web.AppKey("console_events", EventHub)


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `hello` first, then `device`, `stream`, `upstream`, `health` each
    with `change` (`new`, `changed`, `gone`), and `resync` when the page fell behind."""
    hub = request.app[EVENTS]
    if hub.closing:
        return web.json_response({"error": "the node is stopping"}, status=503)
    if len(hub.clients) >= MAX_CLIENTS:
        return web.json_response({"error": f"at most {MAX_CLIENTS} pages may listen at once"},
                                 status=503)
    node = request.app[NODE]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    client = hub.join(request[PRINCIPAL])
    try:
        await response.write(b"retry: 3000\n" + _sse("hello", {
            "node_id": node.settings.node.id,
            "timezone": node.settings.node.timezone_name,  # None: the system's zone
            "utc_offset_s": _utc_offset(node.settings.node.tz),
            "retention_days": node.settings.recording.retention_days,
        }))
        while True:
            try:
                item = await asyncio.wait_for(client.queue.get(), HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": still here\n\n")
                continue
            if item is None:
                break
            await response.write(_sse(*item))
            if client.overflowed and client.queue.empty():
                await response.write(_sse("resync", {}))
                client.overflowed = False
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        hub.leave(client)
    return response


def _utc_offset(tz: tzinfo) -> int:
    offset = datetime.now(tz).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(CONSOLE_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = CONSOLE_DIR / name
    if not _STATIC_NAME.fullmatch(name) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={
        "Cache-Control": "no-cache",
        "Content-Type": _CONTENT_TYPES[name.rsplit(".", 1)[1]]})


async def _close_events(app: web.Application) -> None:
    """Open event streams would hold a graceful shutdown for its whole timeout."""
    await app[EVENTS].close()


def add_console_routes(app: web.Application) -> None:
    """`/` (the page), `/console/{file}`, `GET /api/events`, and `?token=` on the routes above."""
    app.middlewares.insert(0, token_in_query)
    app[EVENTS] = EventHub(app)
    app.on_shutdown.append(_close_events)
    app.router.add_get("/", index)
    app.router.add_get("/console/{name}", static)
    app.router.add_get("/api/events", needs("read")(events))
