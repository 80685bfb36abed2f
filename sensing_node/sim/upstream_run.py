"""`sensing-node simulate-upstream`: the simulated upper platform run from the command line.

It listens, waits for the node's registration, lists and subscribes to its catalog, pulls
channels live and, with a `PlaybackPlan`, searches, plays back and downloads a recorded range
(`sim.recorded.check_recorded`), reporting as it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from .recorded import PlaybackPlan, check_recorded
from .upstream import (
    CatalogSubscriptionHandle,
    PlatformConfig,
    SimulatedUpstream,
    UpstreamError,
    UpstreamSession,
)

__all__ = ["run_upstream"]


async def run_upstream(
    config: PlatformConfig,
    *,
    play: Sequence[str] = (),
    transport: str = "udp",
    seconds: float | None = None,
    stop: asyncio.Event | None = None,
    out: Callable[[str], None] = print,
    playback: PlaybackPlan | None = None,
) -> int:
    """`sensing-node simulate-upstream`: listen, wait for the node's registration, list its
    catalog, subscribe to it, pull each channel of `play` over `transport`, and report until
    `stop` is set or `seconds` have passed. With `playback`, search, play back and download
    its range (`sim.recorded.check_recorded`) once the live pulls are up; without live pulls
    the run then ends. 0 when all went well, 1 otherwise."""
    upstream = SimulatedUpstream(config)
    host, port = await upstream.start()
    out(f"upstream {config.platform_id} listening on {host}:{port} (UDP and TCP), "
        f"realm {config.realm}")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    failed = False
    sessions: list[UpstreamSession] = []
    try:
        while not upstream.registered.is_set():
            if stop.is_set() or (deadline is not None and loop.time() >= deadline):
                out("the node did not register")
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(upstream.registered.wait(), 0.5)
        node = upstream._node()
        out(f"node {node.node_id} registered from {node.peer.transport} "
            f"{node.peer.host}:{node.peer.port}")
        try:
            items = await upstream.query_catalog()
        except (UpstreamError, TimeoutError) as exc:
            out(f"catalog: {exc}")
            return 1
        out(f"catalog: {len(items)} channels")
        for channel_id, fields in items.items():
            out(f"  {channel_id} {fields.get('Name', '')} {fields.get('Status', '')}")
        subscription: CatalogSubscriptionHandle | None = None
        try:
            subscription = await upstream.subscribe_catalog()
        except (UpstreamError, TimeoutError) as exc:
            out(f"catalog subscription: {exc}")  # a device below us has none: carry on
        for channel_id in play:
            session = await upstream.invite(channel_id, transport)
            sessions.append(session)
            if session.ok:
                out(f"{channel_id}: {session.status} {session.reason}, SSRC "
                    f"{session.expected_ssrc}")
            else:
                failed = True
                out(f"{channel_id}: {session.status} {session.reason} "
                    f"{session.warning or ''}".rstrip())
        if playback is not None and not await check_recorded(upstream, playback, out=out,
                                                             stop=stop):
            failed = True
        while (not stop.is_set() and (deadline is None or loop.time() < deadline)
               and (playback is None or sessions)):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            while subscription is not None and not subscription.events.empty():
                event = subscription.events.get_nowait()
                out(f"NOTIFY {event.channel_id} {event.event}")
        for session in sessions:
            if session.problems:
                failed = True
            out(f"{session.channel_id}: {session.packets} packets, {len(session.units)} "
                f"units, end {session.end_reason}, problems {session.problems[:5]}")
            if session.ok and not session.ended.is_set():
                await session.bye()
    finally:
        await upstream.stop()
    return 1 if failed else 0
