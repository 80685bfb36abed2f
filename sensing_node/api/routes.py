"""Operator HTTP API: /healthz (open) and /api/* (Bearer token).

Every time in a response is ISO 8601 with the offset of the node's zone (`node.timezone`).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..media import StreamError
from ..registry import Device, iso
from ..settings import TRANSPORTS

if TYPE_CHECKING:
    from ..node import Node

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
        "online": dev.online,
        "registered_at": iso(dev.registered_at, tz),
        "last_keepalive": iso(dev.last_keepalive, tz),
        "expires_at": iso(dev.expires_at, tz),
        "channel_count": len(dev.channels),
        "gb_version": dev.gb_version,
        "user_agent": dev.user_agent,
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
    try:
        stream = await node.media.hold(request.match_info["channel_id"], transport)
    except StreamError as exc:
        return web.json_response(
            {"error": exc.reason, "sip_status": exc.sip_status}, status=exc.status
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
