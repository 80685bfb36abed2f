"""Operator HTTP API: /healthz (open) and /api/* (Bearer token).

Every time in a response is ISO 8601 with the offset of the node's zone (`node.timezone`).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

from aiohttp import web

from recorder.export import ExportError, export_mp4, export_ps, plan_export

from ..devices.registry import Device, iso
from ..media.consumers import StreamError
from ..node import Node
from ..settings import TRANSPORTS

NODE: web.AppKey[Node] = web.AppKey("node")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        token = request.app[NODE].settings.node.api_token
        header = request.headers.get("Authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            supplied.strip().encode(), token.encode()
        ):
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="sensing-node"'},
            )
    return await handler(request)


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
    reasons = node.health_problems()
    body = {
        "status": "degraded" if reasons else "ok",
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
            if device_id is None or dev.id == device_id
        ]
    )


async def stats(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body = node.stats.as_dict()
    body["devices"] = len(node.registry)
    body["online"] = node.registry.online_count()
    body["channels"] = sum(1 for _ in node.registry.channels())
    body["tcp_connections"] = len(node.endpoint.connections)
    body["recording"] = node.recording.stats()
    body["tasks"] = node.supervisor.as_dict()  # failures and restarts of long-lived tasks
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
    user = ""
    if request.app[NODE].settings.node.api_trusted_proxy:
        user = request.headers.get("X-User", "").strip()[:100]
    return f"{user or 'api-token'}@{request.remote or '?'}"


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
    try:
        while True:
            chunk = await loop.run_in_executor(None, next, chunks, None)
            if chunk is None:
                break
            await response.write(chunk)
            sent += len(chunk)
    except (ExportError, OSError, ConnectionError) as exc:
        result, detail = "error", str(exc)
    finally:
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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/devices", list_devices)
    app.router.add_get("/api/devices/{device_id}", get_device)
    app.router.add_get("/api/channels", list_channels)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/streams", list_streams)
    app.router.add_get("/api/streams/ended", ended_streams)
    app.router.add_post("/api/channels/{channel_id}/live", start_live)
    app.router.add_delete("/api/channels/{channel_id}/live", stop_live)
    app.router.add_post("/api/channels/{channel_id}/release", release_channel)
    app.router.add_get("/api/recordings", search_recordings)
    app.router.add_get("/api/recordings/export", export_recording)
    app.router.add_get("/api/recordings/play", play_recording)
    app.router.add_get("/api/audit", audit_log)
    app.router.add_get("/api/upstreams", list_upstreams)
