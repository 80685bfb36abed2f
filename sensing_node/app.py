"""The aiohttp application: the HTTP API around one `Node`, started and stopped with it.

`cleanup_ctx` starts the node before the API serves and stops it after the API has closed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .api.console import add_console_routes
from .api.metrics import add_metrics
from .api.routes import NODE, add_routes, bearer_auth
from .api.webrtc import add_webrtc_routes
from .node import Node
from .settings import Settings


async def _node_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    await node.start()
    yield
    await node.stop()


def build_app(
    settings: Settings,
    *,
    wall: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    app = web.Application(middlewares=[bearer_auth])
    app[NODE] = Node(settings, wall=wall, monotonic=monotonic)
    app.cleanup_ctx.append(_node_ctx)
    add_routes(app)
    add_metrics(app)  # GET /metrics, with its own token check (node.metrics_auth)
    add_webrtc_routes(app)  # live video in the browser; viewers end before the node stops
    add_console_routes(app)  # the operator console at /, and GET /api/events
    return app
