"""Operator HTTP API: /healthz (open) and /api/* (Bearer token).

A token is `node.api_token` (an admin) or a user's (`users:`), and each route needs a right of
the user's role (`access.principals.RIGHTS`): 403 names the right missing, and the refusal is
audited. Video (playback, export, search) is served only as the access policy allows: sharing
classes and grants for viewers, a user's `channels` for every role.

Every time in a response is ISO 8601 with the offset of the node's zone (`node.timezone`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

from aiohttp import web

from recorder.export import ExportError, export_mp4, export_ps, plan_export

from ..access.grants import GrantError, grant_from_json
from ..access.policy import Session
from ..access.principals import RIGHTS, Principal, authenticate, missing_right
from ..devices.registry import Device, iso
from ..media.consumers import StreamError
from ..node import Node, ReloadRefused
from ..settings import TRANSPORTS
from ..settings.reload import masked

NODE: web.AppKey[Node] = web.AppKey("node")
#: who is asking (set by `bearer_auth` on /api/*)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        header = request.headers.get("Authorization", "")
        scheme, _, supplied = header.partition(" ")
        principal = None
        if scheme.lower() == "bearer":
            principal = authenticate(request.app[NODE].settings, supplied)
        if principal is None:
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="sensing-node"'},
            )
        request[PRINCIPAL] = principal
    return await handler(request)


#: the audit action a refusal of each right is logged as
_AUDITED = {"read": "api_read", "live": "live_view", "pull": "live_view", "playback": "playback",
            "search": "search", "export": "export", "release": "channel_release",
            "grants": "grant", "audit": "api_read", "config": "config_reload"}


def needs(right: str) -> Callable[[Handler], Handler]:
    """The route needs `right` of the caller's role: else 403 naming it, audited."""

    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            principal = request[PRINCIPAL]
            problem = missing_right(principal, right)
            if problem is not None:
                await request.app[NODE].recording.log_access(
                    actor=_actor(request), action=_AUDITED[right],
                    channel_id=request.match_info.get("channel_id")
                    or request.query.get("channel"),
                    purpose=_purpose(request), result="denied",
                    detail=f"{request.method} {request.path}: {problem}",
                )
                return _error(403, problem)
            return await handler(request)

        checked.__name__ = handler.__name__
        checked.__doc__ = handler.__doc__
        return checked

    return wrap


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _may_see(request: web.Request, channel_id: str) -> bool:
    """Whether the caller may know of the channel: staff within their channels, a viewer
    where the sharing class or a grant lets it."""
    principal = _principal(request)
    return request.app[NODE].access.policy.visible(principal, channel_id)


def device_json(node: Node, dev: Device) -> dict[str, Any]:
    """A device as the API shows it; the operator's override entry ("one device, one archive")
    takes precedence over what the device reports about itself."""
    tz = node.settings.node.tz
    archive = node.settings.devices.overrides.get(dev.id)
    return {
        "id": dev.id,
        "name": (archive.name if archive and archive.name else None) or dev.name,
        "address": archive.address if archive else None,
        "longitude": archive.longitude if archive else None,
        "latitude": archive.latitude if archive else None,
        "manufacturer": dev.manufacturer,
        "model": dev.model,
        "firmware": dev.firmware,
        "transport": dev.transport,
        "remote": dev.remote,
        # "none": registers without digest, from its configured network only
        "auth": "none" if node.settings.devices.unauthenticated(dev.id) else "digest",
        "online": dev.online,
        "registered_at": iso(dev.registered_at, tz),
        "last_keepalive": iso(dev.last_keepalive, tz),
        "expires_at": iso(dev.expires_at, tz),
        "channel_count": len(dev.channels),
        "gb_version": dev.gb_version,
        "user_agent": dev.user_agent,
        "media_transport": dev.media_transport,
        "quirks": dev.quirks.splitlines(),
    }


CHANNEL_FIELDS = {
    "Manufacturer": "manufacturer",
    "Model": "model",
    "Owner": "owner",
    "CivilCode": "civil_code",
    "Address": "address",
    "Parental": "parental",
    "ParentID": "parent_id",
    "RegisterWay": "register_way",
    "Secrecy": "secrecy",
    "IPAddress": "ip_address",
    "Port": "port",
    "Longitude": "longitude",
    "Latitude": "latitude",
    "PTZType": "ptz_type",
    "BusinessGroupID": "business_group_id",
}


def channel_json(dev: Device, channel_id: str, fields: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": channel_id,
        "device_id": dev.id,
        "name": fields.get("Name", ""),
        "status": fields.get("Status", ""),
    }
    for src, dst in CHANNEL_FIELDS.items():
        if src in fields:
            out[dst] = fields[src]
    out["catalog"] = fields  # every field as the device sent it
    return out


async def healthz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    problems = node.health_problems()
    # Media overload: the processes that cannot keep up and the channels shed.
    problems += [p for p in node.media.overload.problems() if p not in problems]
    # Grants that end soon are worth a look, not a degraded node.
    reasons = problems + node.access.policy.expiring()
    body = {
        "status": "degraded" if problems else "ok",
        "reasons": reasons,
        "node_id": node.settings.node.id,
        "devices": len(node.registry),
        "online": node.registry.online_count(),
    }
    return web.json_response(body)


async def list_devices(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response([device_json(node, d) for d in node.registry])


async def get_device(request: web.Request) -> web.Response:
    node = request.app[NODE]
    dev = node.registry.get(request.match_info["device_id"])
    if dev is None:
        return web.json_response({"error": "unknown device"}, status=404)
    return web.json_response(device_json(node, dev))


async def list_channels(request: web.Request) -> web.Response:
    node = request.app[NODE]
    device_id = request.query.get("device_id")
    return web.json_response(
        [
            channel_json(dev, cid, fields)
            for dev, cid, fields in node.registry.channels()
            if (device_id is None or dev.id == device_id) and _may_see(request, cid)
        ]
    )


async def stats(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body = node.stats.as_dict()
    body["devices"] = len(node.registry)
    body["online"] = node.registry.online_count()
    body["channels"] = len(node.registry.channel_ids())
    body["tcp_connections"] = len(node.endpoint.connections)
    body["recording"] = node.recording.stats()
    workers = node.media.workers  # media.workers > 1: each worker process's figures
    body["workers"] = workers.snapshot() if workers is not None else []
    body["single_port"] = node.media.single_port_stats()  # None: a port per stream
    body["tasks"] = node.supervisor.as_dict()  # failures and restarts of long-lived tasks
    body["overload"] = overload = node.media.overload.as_json()  # media/overload.py
    tz = node.settings.node.tz
    for item in overload["shed"]:
        item["since"] = iso(item["since"], tz)
    if overload["last_decision"] is not None:
        overload["last_decision"] = {**overload["last_decision"],
                                     "at": iso(overload["last_decision"]["at"], tz)}
    body["transactions"] = {
        "server": node.endpoint.tx.server_transaction_count,
        "client": node.endpoint.tx.client_transaction_count,
    }
    return web.json_response(body)


async def list_streams(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE].media.snapshot())


async def ended_streams(request: web.Request) -> web.Response:
    """The last sessions that ended or failed, newest first, each with its reason."""
    return web.json_response(list(reversed(request.app[NODE].media.ended)))


async def start_live(request: web.Request) -> web.Response:
    """Start (or join) a channel's live ingest; 200 once the device answered and was ACKed."""
    node = request.app[NODE]
    transport = None
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        transport = body.get("transport")
        if transport is not None and transport not in TRANSPORTS:
            return _error(400, f"transport must be one of {', '.join(TRANSPORTS)}")
    channel_id = request.match_info["channel_id"]
    try:
        stream = await node.media.hold(channel_id, transport)
    except StreamError as exc:
        await node.recording.log_access(
            actor=_actor(request), action="live_view", channel_id=channel_id,
            purpose=_purpose(request), result="error", detail=exc.reason,
        )
        return web.json_response(
            {"error": exc.reason, "sip_status": exc.sip_status}, status=exc.status
        )
    await node.recording.log_access(
        actor=_actor(request), action="live_view", channel_id=channel_id,
        purpose=_purpose(request), result="ok", detail=stream.transport,
    )
    return web.json_response(stream.as_json())


async def stop_live(request: web.Request) -> web.Response:
    """Drop the operator's hold; with nobody else consuming, BYE goes out at once."""
    node = request.app[NODE]
    channel_id = request.match_info["channel_id"]
    stream = await node.media.release(channel_id)
    if stream is None:
        return _error(404, f"no live stream for channel {channel_id}")
    return web.json_response({
        "channel_id": channel_id,
        "stopped": stream.state == "ended",
        "consumers": len(stream.consumers),
    })


async def release_channel(request: web.Request) -> web.Response:
    """Free a channel from the device whose catalog holds it, so another device's catalog may
    take it now rather than after `devices.channel_takeover_s`; that device (the last one
    refused the channel) is asked for its catalog again."""
    node = request.app[NODE]
    channel_id = request.match_info["channel_id"]
    released = node.registry.release_channel(channel_id)
    if released is None:
        return _error(404, f"unknown channel {channel_id}")
    owner, claimant = released
    requeried = None
    if claimant is not None and claimant.online and node.queries is not None:
        node.queries.device_registered(claimant)
        requeried = claimant.id
    await node.recording.log_access(
        actor=_actor(request), action="channel_release", channel_id=channel_id,
        purpose=_purpose(request), result="ok",
        detail=f"from {owner.id}" + (f", catalog asked of {requeried}" if requeried else ""),
    )
    return web.json_response(
        {"channel_id": channel_id, "released_from": owner.id, "catalog_requested": requeried}
    )


# ----- recordings -----
def _actor(request: web.Request) -> str:
    """Who is asking, with the client's address: the operator that an authenticating proxy
    names in X-User when the token's holder is that proxy (`node.api_trusted_proxy`), else the
    token itself; from anyone else X-User is only a claim and is ignored."""
    principal = request.get(PRINCIPAL)
    name = principal.name if principal is not None else "anonymous"
    user = ""
    if name == "api-token" and request.app[NODE].settings.node.api_trusted_proxy:
        user = request.headers.get("X-User", "").strip()[:100]
    return f"{user or name}@{request.remote or '?'}"


def _purpose(request: web.Request) -> str | None:
    text = (request.query.get("purpose") or request.headers.get("X-Purpose") or "").strip()
    return text[:500] or None


class _BadQuery(Exception):
    pass


def _time(request: web.Request, name: str) -> float:
    """An ISO 8601 query time; without an offset it is the node's local time."""
    text = request.query.get(name)
    if not text:
        raise _BadQuery(f"{name} is required (ISO 8601)")
    try:
        value = datetime.fromisoformat(text.replace(" ", "+", 1) if text.count(" ") == 1
                                       and "T" in text else text)
    except ValueError:
        raise _BadQuery(f"{name}: not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=request.app[NODE].settings.node.tz)
    return value.timestamp()


def _range(request: web.Request) -> tuple[str, float, float]:
    channel = request.query.get("channel", "")
    if not channel:
        raise _BadQuery("channel is required")
    start, end = _time(request, "start"), _time(request, "end")
    if end <= start:
        raise _BadQuery("end must be after start")
    return channel, start, end


async def search_recordings(request: web.Request) -> web.Response:
    node = request.app[NODE]
    try:
        channel, start, end = _range(request)
    except _BadQuery as exc:
        return _error(400, str(exc))
    if not _may_see(request, channel):
        reason = f"channel {channel} is not shared with {_principal(request).name}"
        await node.recording.log_access(
            actor=_actor(request), action="search", channel_id=channel, range_start=start,
            range_end=end, purpose=_purpose(request), result="denied", detail=reason,
        )
        return _error(403, reason)
    segments, gaps = await node.recording.search(channel, start, end)
    tz = node.settings.node.tz
    await node.recording.log_access(
        actor=_actor(request), action="search", channel_id=channel, range_start=start,
        range_end=end, purpose=_purpose(request), result="ok",
        detail=f"{len(segments)} segments, {len(gaps)} gaps",
    )
    return web.json_response({
        "segments": [
            {"channel_id": row.channel_id, "start": iso(row.start_wall, tz),
             "end": iso(row.end_wall, tz), "bytes": row.bytes, "frames": row.frames,
             "codec": row.codec, "sha256": row.sha256}
            for row in segments
        ],
        "gaps": [
            {"start": iso(gap.start_wall, tz), "end": iso(gap.end_wall, tz), "reason": gap.reason}
            for gap in gaps
        ],
    })


async def export_recording(request: web.Request) -> web.StreamResponse:
    """The range as MP4 (stream copy) or as the original PS, streamed as it is produced."""
    fmt = request.query.get("format", "mp4")
    if fmt not in ("mp4", "ps"):
        return _error(400, "format must be mp4 or ps")
    return await _stream_range(request, "export", fmt)


async def play_recording(request: web.Request) -> web.StreamResponse:
    """The range as a fragmented MP4 for a browser's <video> to play while it downloads
    (progressive, no Range requests); audited as playback, with its purpose."""
    fmt = request.query.get("format", "mp4")
    if fmt != "mp4":
        return _error(400, "format must be mp4")
    return await _stream_range(request, "playback", fmt)


async def _stream_range(request: web.Request, action: str, fmt: str) -> web.StreamResponse:
    node = request.app[NODE]
    try:
        channel, start, end = _range(request)
    except _BadQuery as exc:
        return _error(400, str(exc))
    purpose = _purpose(request)
    actor = _actor(request)
    if purpose is None:
        await node.recording.log_access(
            actor=actor, action=action, channel_id=channel, range_start=start, range_end=end,
            result="denied", detail="no purpose given",
        )
        return _error(400, f"{'an export' if action == 'export' else 'a playback'} needs a "
                           "purpose (purpose=... or the X-Purpose header)")
    revoked: list[str] = []
    session = node.access.policy.open(_principal(request), channel, action,
                                      on_revoke=lambda reason: _cut(request, revoked, reason))
    if not isinstance(session, Session):
        await node.recording.log_access(
            actor=actor, action=action, channel_id=channel, range_start=start, range_end=end,
            purpose=purpose, result="denied", detail=session.reason,
        )
        return _error(429 if session.busy else 403, session.reason)
    try:
        return await _send_range(request, action, fmt, channel, start, end, purpose, revoked)
    finally:
        node.access.policy.close(session)


def _cut(request: web.Request, revoked: list[str], reason: str) -> None:
    """A grant under which a range is being sent ended: stop sending it."""
    revoked.append(reason)
    if request.transport is not None:
        request.transport.close()


async def _send_range(
    request: web.Request, action: str, fmt: str, channel: str, start: float, end: float,
    purpose: str, revoked: list[str],
) -> web.StreamResponse:
    node = request.app[NODE]
    actor = _actor(request)
    refs = await node.recording.segment_refs(channel, start, end)
    loop = asyncio.get_running_loop()
    try:
        plan = await loop.run_in_executor(None, plan_export, refs, start, end)
    except ExportError as exc:
        await node.recording.log_access(
            actor=actor, action=action, channel_id=channel, range_start=start, range_end=end,
            purpose=purpose, result="empty", detail=str(exc),
        )
        return _error(404, str(exc))
    chunks: Iterator[bytes] = export_mp4(plan) if fmt == "mp4" else export_ps(plan)
    stamp = datetime.fromtimestamp(plan.start_wall, node.settings.node.tz).strftime("%Y%m%dT%H%M%S")
    headers = {"Content-Type": "video/mp4" if fmt == "mp4" else "video/MP2P"}
    name = f"{channel}-{stamp}.{fmt}"
    if action == "export":
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    else:
        headers["Content-Disposition"] = f'inline; filename="{name}"'
        headers["Cache-Control"] = "no-store"
        headers["X-Video-Codec"] = plan.codec or "unknown"
        if plan.codec == "h265":  # most browsers decode no H.265: say so, not fail mutely
            headers["Warning"] = ('299 sensing-node "H.265 video: it plays only where the '
                                  'browser or player decodes H.265"')
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    sent, result, detail = 0, "ok", ""
    producing: asyncio.Future[bytes | None] | None = None
    try:
        while True:
            producing = loop.run_in_executor(None, next, chunks, None)
            # Shielded: a cancelled handler leaves the chunk's thread to finish, not the
            # future cancelled under it (the generator is closed once it is done).
            chunk = await asyncio.shield(producing)
            producing = None
            if chunk is None:
                break
            await response.write(chunk)
            sent += len(chunk)
    except (ExportError, OSError, ConnectionError, asyncio.CancelledError) as exc:
        # A client that went away cancels the handler; a grant that ended closed the link.
        result, detail = "error", str(exc) or type(exc).__name__
        if revoked:
            result, detail = "revoked", revoked[0]
        if isinstance(exc, asyncio.CancelledError):
            raise
    finally:
        if producing is not None:  # the chunk under way in its thread: let it finish first
            with contextlib.suppress(Exception):
                await producing
        await loop.run_in_executor(None, chunks.close)  # type: ignore[attr-defined]
        await node.recording.log_access(
            actor=actor, action=action, channel_id=channel, range_start=plan.start_wall,
            range_end=plan.end_wall, purpose=purpose, result=result,
            detail=f"{fmt}, {sent} bytes" + (f": {detail}" if detail else ""),
        )
    await response.write_eof()
    return response


async def audit_log(request: web.Request) -> web.Response:
    node = request.app[NODE]
    filters: dict[str, Any] = {}
    for name in ("actor", "action"):
        if request.query.get(name):
            filters[name] = request.query[name]
    if request.query.get("channel"):
        filters["channel_id"] = request.query["channel"]
    try:
        for name in ("start", "end"):
            if request.query.get(name):
                filters[name] = _time(request, name)
        filters["limit"] = _limit(request.query.get("limit") or "1000")
    except (_BadQuery, ValueError) as exc:
        return _error(400, str(exc))
    tz = node.settings.node.tz
    entries = await node.recording.audit_query(**filters)
    return web.json_response([
        {"id": e.id, "at": iso(e.at, tz), "actor": e.actor, "action": e.action,
         "channel_id": e.channel_id, "start": iso(e.range_start, tz), "end": iso(e.range_end, tz),
         "purpose": e.purpose, "result": e.result, "detail": e.detail, "hash": e.hash}
        for e in entries
    ])


AUDIT_LIMIT_MAX = 10_000


def _limit(text: str) -> int:
    """An audit query's `limit`: a whole number of entries from 1 to AUDIT_LIMIT_MAX."""
    text = text.strip()
    if not (len(text) <= 9 and text.isascii() and text.isdigit()
            and 1 <= int(text) <= AUDIT_LIMIT_MAX):
        raise _BadQuery(f"limit must be a whole number from 1 to {AUDIT_LIMIT_MAX:,}, "
                        f"got {text[:20]!r}")
    return int(text)


async def list_upstreams(request: web.Request) -> web.Response:
    """The upper platforms: registration state, sessions held of `max_streams`, and the
    sessions themselves."""
    node = request.app[NODE]
    tz = node.settings.node.tz
    upstreams = []
    for item in node.cascade.snapshot():
        item["since"] = iso(item["since"], tz)
        item["registered_until"] = iso(item["registered_until"], tz)
        upstreams.append(item)
    restreamer = node.cascade.restreamer

    def dated(session: dict[str, Any]) -> dict[str, Any]:
        return {**session, "started": iso(session["started"], tz),
                "ended": iso(session["ended"], tz)}

    return web.json_response({
        "upstreams": upstreams,
        "sessions": [dated(s) for s in restreamer.snapshot()],
        "ended": [dated(s) for s in reversed(restreamer.ended)],
    })


async def whoami(request: web.Request) -> web.Response:
    """Who the token belongs to and what its role may do (the console shows only what the
    caller may use; the API checks every call anyway)."""
    principal = _principal(request)
    return web.json_response({
        "name": principal.name, "role": principal.role,
        "rights": sorted(RIGHTS.get(principal.role, ())),
        "channels": list(principal.channels) if principal.channels is not None else None,
    })


# ----- grants -----
def _grant_json(node: Node, item: dict[str, Any]) -> dict[str, Any]:
    tz = node.settings.node.tz
    return {**item, "valid_from": iso(item["valid_from"], tz),
            "valid_to": iso(item["valid_to"], tz), "created_at": iso(item["created_at"], tz)}


async def list_grants(request: web.Request) -> web.Response:
    """Every grant, the configuration's and the API's, with its remaining time and the
    sessions it carries now."""
    node = request.app[NODE]
    return web.json_response([_grant_json(node, g) for g in node.access.policy.snapshot()])


async def create_grant(request: web.Request) -> web.Response:
    node = request.app[NODE]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body must be JSON")
    try:
        grant = grant_from_json(body, node.settings.node.tz)
    except GrantError as exc:
        await node.recording.log_access(actor=_actor(request), action="grant", result="denied",
                                        detail=f"not created: {exc}")
        return _error(400, str(exc))
    made = await node.access.add(grant, _actor(request))
    item = next(g for g in node.access.policy.snapshot() if g["id"] == made.id)
    return web.json_response(_grant_json(node, item), status=201)


async def revoke_grant(request: web.Request) -> web.Response:
    node = request.app[NODE]
    grant_id = request.match_info["grant_id"]
    try:
        ended = await node.access.revoke(grant_id, _actor(request))
    except KeyError:
        return _error(404, f"unknown grant {grant_id}")
    except GrantError as exc:
        return _error(409, str(exc))
    return web.json_response({"revoked": grant_id, "ended_sessions": len(ended)})


async def reload_config(request: web.Request) -> web.Response:
    """Read the config file again and apply it: what changed, what needs a restart, the
    sessions ended; 400 with every problem (file:line) when the file is refused."""
    node = request.app[NODE]
    try:
        outcome = await node.reload(actor=_actor(request))
    except ReloadRefused as exc:
        return web.json_response(
            {"error": f"{exc.source}: {len(exc.problems)} problem(s); the running "
                      "configuration stays", "problems": exc.problems},
            status=400,
        )
    return web.json_response(outcome.as_json())


async def show_config(request: web.Request) -> web.Response:
    """The running configuration, secrets masked, with its file and when it was read."""
    node = request.app[NODE]
    return web.json_response({
        **masked(node.settings),
        "loaded_at": iso(node.loaded_at, node.settings.node.tz),
    })


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_get("/api/devices", needs("read")(list_devices))
    app.router.add_get("/api/devices/{device_id}", needs("read")(get_device))
    app.router.add_get("/api/channels", needs("read")(list_channels))
    app.router.add_get("/api/stats", needs("read")(stats))
    app.router.add_get("/api/streams", needs("read")(list_streams))
    app.router.add_get("/api/streams/ended", needs("read")(ended_streams))
    app.router.add_post("/api/channels/{channel_id}/live", needs("pull")(start_live))
    app.router.add_delete("/api/channels/{channel_id}/live", needs("pull")(stop_live))
    app.router.add_post("/api/channels/{channel_id}/release", needs("release")(release_channel))
    app.router.add_get("/api/recordings", needs("search")(search_recordings))
    app.router.add_get("/api/recordings/export", needs("export")(export_recording))
    app.router.add_get("/api/recordings/play", needs("playback")(play_recording))
    app.router.add_get("/api/audit", needs("audit")(audit_log))
    app.router.add_get("/api/upstreams", needs("read")(list_upstreams))
    app.router.add_get("/api/grants", needs("grants")(list_grants))
    app.router.add_post("/api/grants", needs("grants")(create_grant))
    app.router.add_delete("/api/grants/{grant_id}", needs("grants")(revoke_grant))
    app.router.add_get("/api/config", needs("config")(show_config))
    app.router.add_post("/api/config/reload", needs("config")(reload_config))
