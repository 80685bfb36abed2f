"""Live video in the browser: the WebRTC viewers' routes.

``POST /api/channels/{channel_id}/webrtc`` takes the browser's SDP offer (``{"sdp", "type":
"offer"}``, receiving video) and answers, once the node's ICE candidates are gathered, with
``{"sdp", "type": "answer", "session_id", "codec": "h264"}``: the channel's H.264 passed through
from the stream hub (`media.webrtc`). A viewer needs the right ``live`` and the access policy's
leave (403, or 429 when its grant's sessions are taken), counts with the upstreams' sessions
against ``limits.max_sessions_per_channel`` (429 naming the limit), and fails as a live pull
does (404 unknown channel, 409 device offline, 502 refused, 503, 504); an H.265 channel is 415
with ``"codec": "h265"`` unless ``console.transcode_h265``. ``DELETE /api/webrtc/{session_id}``
ends a viewer (its own, or any for operators and admins); ``GET /api/webrtc`` lists them.

Each viewer is audited as ``live_view`` when it starts (or fails to) and when it ends, with its
duration and frames; a grant that ends or is revoked ends the viewers under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..access.policy import Session
from ..devices.registry import iso
from ..media.consumers import StreamError
from ..media.webrtc import Viewer, ViewerError, Viewers
from .routes import NODE, PRINCIPAL, _actor, needs

__all__ = ["WEBRTC", "WebrtcViewers", "add_webrtc_routes"]

#: the least time a viewer waits for the first video frame of a stream it starts
FIRST_FRAME_MIN_S = 5.0


@dataclass
class WebrtcViewers:
    """What the app holds for the viewers: the registry, who owns each viewer, and the audit
    entries under way (finished before the node stops)."""

    viewers: Viewers
    owners: dict[str, str] = field(default_factory=dict)
    audits: set[asyncio.Task[None]] = field(default_factory=set)


WEBRTC: web.AppKey[WebrtcViewers] = web.AppKey("webrtc", WebrtcViewers)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def start_viewer(request: web.Request) -> web.Response:
    """Answer a browser's offer with the channel's live video."""
    node = request.app[NODE]
    state = request.app[WEBRTC]
    channel_id = request.match_info["channel_id"]
    actor = _actor(request)
    principal = request[PRINCIPAL]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body must be JSON: {\"sdp\": ..., \"type\": \"offer\"}")
    if not isinstance(body, dict) or body.get("type") != "offer" \
            or not isinstance(body.get("sdp"), str) or not body["sdp"].strip():
        return _error(400, "the body must be {\"sdp\": \"<offer>\", \"type\": \"offer\"}")

    async def audit(result: str, detail: str) -> None:
        await node.recording.log_access(actor=actor, action="live_view", channel_id=channel_id,
                                        result=result, detail=detail)

    viewers = state.viewers
    mine: list[str] = []  # the viewer, once reserved, for a revoked grant to end

    def revoked(reason: str) -> None:
        for viewer_id in mine:
            viewers.end(viewer_id, f"revoked: {reason}")

    session = node.access.policy.open(principal, channel_id, "live", on_revoke=revoked)
    if not isinstance(session, Session):
        await audit("denied", f"webrtc: {session.reason}")
        return _error(429 if session.busy else 403, session.reason)
    limit = node.settings.limits.max_sessions_per_channel
    upstream = node.cascade.restreamer.count(channel=channel_id)
    watching = viewers.count(channel_id)
    if upstream + watching >= limit:
        node.access.policy.close(session)
        reason = (f"limits.max_sessions_per_channel ({limit}) reached for channel "
                  f"{channel_id}: {upstream} upstream sessions, {watching} viewers")
        await audit("denied", f"webrtc: {reason}")
        return _error(429, reason, limit="limits.max_sessions_per_channel")
    try:
        viewer = viewers.reserve(channel_id, actor)
    except ViewerError as exc:
        node.access.policy.close(session)
        return _error(exc.status, exc.reason)
    mine.append(viewer.id)
    state.owners[viewer.id] = principal.name
    started = False

    def ended(viewer: Viewer, reason: str) -> None:
        node.access.policy.close(session)
        state.owners.pop(viewer.id, None)
        if not started:
            return  # the handler audits the failure
        duration = viewers.wall() - viewer.started
        result = "revoked" if reason.startswith("revoked: ") else "ok"
        task = asyncio.get_running_loop().create_task(audit(
            result, f"webrtc {viewer.id} ended after {duration:.1f} s, {viewer.frames_sent} "
                    f"frames sent, {viewer.feed.dropped} dropped: {reason}"
        ))
        state.audits.add(task)
        task.add_done_callback(state.audits.discard)

    viewer.on_end = ended
    settings = node.settings
    try:
        answer = await viewers.start(
            viewer, body["sdp"], ice_servers=settings.console.ice_servers,
            transcode_h265=settings.console.transcode_h265,
            first_frame_timeout_s=max(FIRST_FRAME_MIN_S, float(settings.media.timeout_s)),
        )
    except ViewerError as exc:
        await audit("error", f"webrtc: {exc.reason}")
        extra = {"codec": exc.codec} if exc.codec else {}
        return _error(exc.status, exc.reason, **extra)
    except StreamError as exc:
        await audit("error", f"webrtc: {exc.reason}")
        return _error(exc.status, exc.reason, sip_status=exc.sip_status)
    started = True
    transcoded = viewer.source_codec != "h264"
    await audit("ok", f"webrtc {viewer.id}" + (f", {viewer.source_codec} transcoded to h264"
                                               if transcoded else ""))
    return web.json_response({"sdp": answer, "type": "answer", "session_id": viewer.id,
                              "codec": "h264", "source_codec": viewer.source_codec})


async def end_viewer(request: web.Request) -> web.Response:
    """End a viewer: the caller's own, or anyone's for operators and admins."""
    state = request.app[WEBRTC]
    viewer_id = request.match_info["session_id"]
    principal = request[PRINCIPAL]
    viewer = state.viewers.get(viewer_id)
    if viewer is None or not (principal.staff or state.owners.get(viewer_id) == principal.name):
        return _error(404, f"no webrtc session {viewer_id}")
    state.viewers.end(viewer_id, f"ended by {_actor(request)}")
    return web.json_response({
        "session_id": viewer_id, "channel_id": viewer.channel_id, "ended": True,
        "frames_sent": viewer.frames_sent, "dropped": viewer.feed.dropped,
    })


async def list_viewers(request: web.Request) -> web.Response:
    """The viewers of the channels the caller may see."""
    node = request.app[NODE]
    principal = request[PRINCIPAL]
    tz = node.settings.node.tz
    return web.json_response([
        {**item, "started": iso(item["started"], tz)}
        for item in request.app[WEBRTC].viewers.snapshot()
        if node.access.policy.visible(principal, item["channel_id"])
    ])


async def _viewers_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    state = app[WEBRTC]
    await state.viewers.close("node stopping")
    if state.audits:
        await asyncio.wait(list(state.audits), timeout=5.0)


def add_webrtc_routes(app: web.Application) -> None:
    """The routes, and the viewers' registry; call it after the node's cleanup context is in
    place, so that the viewers end (and are audited) before the node stops."""
    node = app[NODE]
    app[WEBRTC] = WebrtcViewers(Viewers(node.media, wall=node.wall))
    # Browser viewers and upstream sessions share limits.max_sessions_per_channel.
    node.cascade.restreamer.viewers = app[WEBRTC].viewers.count
    app.cleanup_ctx.append(_viewers_ctx)
    app.router.add_post("/api/channels/{channel_id}/webrtc", needs("live")(start_viewer))
    app.router.add_get("/api/webrtc", needs("read")(list_viewers))
    app.router.add_delete("/api/webrtc/{session_id}", needs("live")(end_viewer))
