"""GET /metrics: the node's state in the Prometheus text format.

One collector, registered on the application's own `CollectorRegistry`, builds the metric
families when Prometheus scrapes, from the counters the parts keep anyway (`Stats`, the
registry, each stream's receiver totals, the recorder, the cascade, the supervisor): nothing is
updated on the packet path for the sake of metrics. A scrape walks the devices, the running
streams and the upstream sessions, never a packet or a frame.

The recording index is read (oldest segment, segments and gaps held) on a thread at most once
a minute; the age of the oldest recording is computed at every scrape from that read.

Stream counters live in the stream objects and vanish with them, so the collector keeps what it
last saw of each running stream and adds it to a total of the ended ones when the stream is
gone: the RTP counters never go down (a stream's packets after the last scrape before its end
are not counted).

Without `node.metrics_auth` anybody who reaches the HTTP port may scrape; with it a scrape
needs `Authorization: Bearer <token>`, the token being `node.api_token` or one whose SHA-256 is
a user's `token_sha256`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from recorder.service import root_index
from sip.registration import RegistrationState

from ..access.principals import authenticate
from ..media.hub import RTP_TOTALS
from ..node import Node
from ..settings import Settings
from .routes import NODE

__all__ = ["METRICS", "IndexFigures", "NodeCollector", "NodeMetrics", "add_metrics",
           "authorized", "read_index_figures"]

log = logging.getLogger(__name__)

#: the classic text format: every Prometheus version reads it
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: how long one read of the recording index serves the scrapes
INDEX_TTL_S = 60.0
#: the methods a SIP peer may make a label of; anything else is counted as "other"
SIP_METHODS = frozenset({
    "ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS", "PRACK",
    "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE",
})
STREAM_STATES = ("starting", "playing", "retrying", "ended")
RTP_COUNTERS = RTP_TOTALS


@dataclass(frozen=True)
class IndexFigures:
    """What one read of the recording index found."""

    segments: int
    gaps: int
    oldest_start: float | None  # Unix seconds: start of the segment that ends first
    read_s: float  # how long the read took


def read_index_figures(path: Path) -> IndexFigures | None:
    """Read the index at `path` read-only (None when there is none yet).

    The oldest segment is the one that ends first, found through the index on `end_wall` (the
    one the retention sweeper uses); the counts read the tables' smallest indexes, which is the
    costly part on a full store (about 5 ms for a million segments once cached, the disk's
    time before) and the reason this runs on a thread once a minute. The connection is its own
    and read-only (the columns read are only ever added to, see `recorder.index`), so a
    scrape never waits behind a search on the recording service's reader thread.
    """
    if not path.exists():
        return None
    started = time.perf_counter()
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        row = db.execute("SELECT start_wall FROM segments ORDER BY end_wall LIMIT 1").fetchone()
        segments = db.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
        gaps = db.execute("SELECT COUNT(*) FROM gaps").fetchone()[0]
    finally:
        db.close()
    return IndexFigures(int(segments), int(gaps), None if row is None else float(row[0]),
                        time.perf_counter() - started)


def authorized(settings: Settings, header: str) -> bool:
    """Whether a scrape with this Authorization header is let in: anybody without
    `node.metrics_auth`, else a bearer of `node.api_token` or of any user's token, whatever its
    role (the figures name no video)."""
    if not settings.node.metrics_auth:
        return True
    scheme, _, supplied = header.partition(" ")
    return scheme.lower() == "bearer" and authenticate(settings, supplied) is not None


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class NodeCollector:
    """Builds every `sensing_node_*` family from the node's state at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.index: IndexFigures | None = None
        # Upstream refusals: counted once each, from the restreamer's list of ended sessions.
        self._refused: Counter[tuple[str, str]] = Counter()
        self._last_ended: dict[str, Any] | None = None

    def describe(self) -> list[Metric]:
        return []  # the families depend on the configuration; nothing to check up front

    def collect(self) -> Iterator[Metric]:
        yield from self._devices()
        yield from self._sip()
        yield from self._streams()
        yield from self._recording()
        yield from self._upstreams()
        yield from self._tasks()

    # ----- devices and SIP -----
    def _devices(self) -> Iterator[Metric]:
        node = self.node
        registry = node.registry
        yield _gauge("sensing_node_devices", "Devices known to the registry (registered at "
                     "least once, online or not)", len(registry))
        yield _gauge("sensing_node_devices_online", "Devices registered and keeping alive",
                     registry.online_count())
        yield _gauge("sensing_node_channels", "Channels in the devices' catalogs",
                     sum(len(dev.channels) for dev in registry))
        yield _gauge("sensing_node_health_problems",
                     "Reasons /healthz gives for degraded (0 when ok)", len(node.health_problems()))

    def _sip(self) -> Iterator[Metric]:
        stats = self.node.stats
        methods: Counter[str] = Counter()
        for method, count in stats.requests_received.items():
            methods[method if method in SIP_METHODS else "other"] += count
        requests = CounterMetricFamily("sensing_node_sip_requests_received",
                                       "SIP requests received, by method", labels=["method"])
        for method, count in sorted(methods.items()):
            requests.add_metric([method], count)
        yield requests
        for name, doc, by_status in (
            ("sensing_node_sip_responses_sent", "SIP responses sent, by status",
             stats.responses_sent),
            ("sensing_node_sip_responses_received", "SIP responses received, by status",
             stats.responses_received),
        ):
            family = CounterMetricFamily(name, doc, labels=["status"])
            for status, count in sorted(by_status.items()):
                family.add_metric([str(status)], count)
            yield family
        dropped = CounterMetricFamily("sensing_node_sip_dropped", "SIP messages dropped, by "
                                      "reason (malformed, oversized, flooded ...)",
                                      labels=["reason"])
        for reason, count in sorted(stats.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield _counter("sensing_node_sip_bad_requests", "Malformed SIP requests answered 400",
                       stats.bad_requests)
        yield _counter("sensing_node_sip_auth_failures",
                       "Digest authentications that failed (wrong password, unknown device)",
                       stats.auth_failures)
        yield _counter("sensing_node_sip_auth_rate_limited",
                       "Authentications refused for too many failures", stats.auth_rate_limited)
        yield _counter("sensing_node_sip_retransmissions_absorbed",
                       "Retransmitted SIP requests answered from their transaction",
                       stats.retransmissions_absorbed)
        yield _counter("sensing_node_sip_tcp_connections_accepted",
                       "SIP TCP connections accepted", stats.tcp_connections_accepted)
        endpoint = self.node.endpoint
        yield _gauge("sensing_node_sip_tcp_connections", "SIP TCP connections open",
                     len(endpoint.connections))
        transactions = GaugeMetricFamily("sensing_node_sip_transactions",
                                         "SIP transactions held, by side", labels=["side"])
        transactions.add_metric(["server"], endpoint.tx.server_transaction_count)
        transactions.add_metric(["client"], endpoint.tx.client_transaction_count)
        yield transactions

    # ----- live streams -----
    def _stream_counters(self) -> tuple[Counter[str], dict[tuple[str, str], Counter[str]]]:
        """RTP totals of every stream the node has run (an ended one with its last counts, as
        the hub keeps them), overall and by (channel, device)."""
        media = self.node.media
        totals = Counter(media.ended_totals)
        by_channel = {key: Counter(values) for key, values in media.ended_by_channel.items()}
        for stream in [*media.streams.values(), *media.device_playbacks.values()]:
            values = {name: stream.counter(name) for name in RTP_COUNTERS}
            totals.update(values)
            by_channel.setdefault((stream.channel_id, stream.device_id), Counter()).update(values)
        return totals, by_channel

    def _streams(self) -> Iterator[Metric]:
        media = self.node.media
        states = Counter(stream.state for stream in media.streams.values())
        family = GaugeMetricFamily("sensing_node_streams", "Live streams from devices, by state",
                                   labels=["state"])
        for state in STREAM_STATES:
            family.add_metric([state], states.get(state, 0))
        yield family
        yield _gauge("sensing_node_stream_consumers", "Consumers of the live streams (recorder, "
                     "viewers, upstream relays)",
                     sum(len(stream.consumers) for stream in media.streams.values()))
        totals, by_channel = self._stream_counters()
        docs = {"packets": "RTP packets received from devices",
                "bytes": "RTP bytes received from devices",
                "lost": "RTP packets lost (sequence numbers never received)"}
        for name in RTP_COUNTERS:
            yield _counter(f"sensing_node_rtp_{name}", docs[name], totals[name])
        if not self.node.settings.metrics.per_channel:
            return
        for name in RTP_COUNTERS:
            per_channel = CounterMetricFamily(f"sensing_node_channel_rtp_{name}",
                                              f"{docs[name]}, by channel (metrics.per_channel)",
                                              labels=["channel", "device"])
            for (channel, device), values in sorted(by_channel.items()):
                per_channel.add_metric([channel, device], values[name])
            yield per_channel

    # ----- recording -----
    def _recording(self) -> Iterator[Metric]:
        node = self.node
        stats = node.recording.stats()
        yield _gauge("sensing_node_recording_channels", "Channels being recorded",
                     stats["channels"])
        yield _counter("sensing_node_recording_bytes", "PS bytes written to segments since "
                       "start", stats["bytes"])
        yield _counter("sensing_node_recording_frames", "Frames written to segments since start",
                       stats["units"])
        yield _counter("sensing_node_recording_segments_closed",
                       "Segments closed (durable, hashed, indexed) since start",
                       stats["segments_closed"])
        yield _counter("sensing_node_recording_write_errors", "Failed segment writes",
                       stats["write_errors"])
        yield _counter("sensing_node_recording_dropped_frames", "Frames not recorded (queue "
                       "full, or waiting for a keyframe after a loss)", stats["dropped_units"])
        yield _gauge("sensing_node_recording_queue_frames", "Frames waiting for the writer",
                     stats["queue_depth"])
        if stats["free_bytes"] is not None:
            yield _gauge("sensing_node_recording_disk_free_bytes",
                         "Free bytes on the recordings' disk (checked every 30 s)",
                         stats["free_bytes"])
        yield _gauge("sensing_node_recording_disk_alarm",
                     "1 while the free space is below recording.min_free_gb",
                     int(stats["disk_alarm"] is not None))
        retention = node.settings.recording.retention_days * 86400.0
        yield _gauge("sensing_node_recording_retention_seconds",
                     "Retention period (recording.retention_days)", retention)
        figures = self.index
        if figures is None:
            return
        yield _gauge("sensing_node_recording_segments", "Segments in the index", figures.segments)
        yield _gauge("sensing_node_recording_gaps", "Gaps in the index (time not recorded)",
                     figures.gaps)
        yield _gauge("sensing_node_recording_index_read_seconds",
                     "How long the last read of the index took (once a minute)", figures.read_s)
        if figures.oldest_start is not None:
            yield _gauge("sensing_node_recording_oldest_age_seconds",
                         "Age of the oldest recording held (compare with the retention)",
                         max(0.0, node.wall() - figures.oldest_start))

    # ----- cascade -----
    def _upstreams(self) -> Iterator[Metric]:
        cascade = self.node.cascade
        states = [state.value for state in RegistrationState]
        state = GaugeMetricFamily("sensing_node_upstream_state",
                                  "Registration to each upper platform: 1 for its state",
                                  labels=["upstream", "state"])
        sessions = GaugeMetricFamily("sensing_node_upstream_sessions",
                                     "Sessions each upper platform holds", labels=["upstream"])
        limit = GaugeMetricFamily("sensing_node_upstream_sessions_limit",
                                  "Sessions each upper platform may hold (max_streams)",
                                  labels=["upstream"])
        registrations = CounterMetricFamily("sensing_node_upstream_registrations",
                                            "Registrations that succeeded, by upper platform",
                                            labels=["upstream"])
        for item in cascade.snapshot():
            for name in [*states, *([item["state"]] if item["state"] not in states else [])]:
                state.add_metric([item["id"], name], int(item["state"] == name))
            sessions.add_metric([item["id"]], item["sessions"])
            limit.add_metric([item["id"]], item["max_streams"])
            registrations.add_metric([item["id"]], item["registrations"])
        yield from (state, sessions, limit, registrations)
        yield _gauge("sensing_node_outgoing_sessions", "Sessions all upper platforms hold",
                     cascade.restreamer.count())
        yield _gauge("sensing_node_outgoing_sessions_limit",
                     "Sessions all upper platforms may hold (limits.max_outgoing_streams)",
                     self.node.settings.limits.max_outgoing_streams)
        refused = CounterMetricFamily("sensing_node_upstream_refused_sessions",
                                      "INVITEs from upper platforms refused, by SIP status",
                                      labels=["upstream", "status"])
        for (upstream, status), count in sorted(self._count_refusals().items()):
            refused.add_metric([upstream, status], count)
        yield refused

    def _count_refusals(self) -> Counter[tuple[str, str]]:
        """Add the refusals among the sessions ended since the last scrape. The restreamer keeps
        the last 100: past that many between two scrapes, the older ones are not counted."""
        ended: list[dict[str, Any]] = self.node.cascade.restreamer.ended
        new: list[dict[str, Any]] = []
        for record in reversed(ended):
            if record is self._last_ended:
                break
            new.append(record)
        if ended:
            self._last_ended = ended[-1]
        for record in new:
            reason = record.get("end_reason") or ""
            if reason.startswith("refused: "):
                status = reason[len("refused: "):].split(" ", 1)[0]
                self._refused[(record["upstream"], status)] += 1
        return self._refused

    # ----- supervised tasks -----
    def _tasks(self) -> Iterator[Metric]:
        failures = CounterMetricFamily("sensing_node_task_failures",
                                       "Failures of supervised background tasks", labels=["task"])
        restarts = CounterMetricFamily("sensing_node_task_restarts",
                                       "Restarts of supervised background tasks", labels=["task"])
        restarting = GaugeMetricFamily("sensing_node_task_restarting",
                                       "1 while a failed task waits for its restart",
                                       labels=["task"])
        for name, health in self.node.supervisor.as_dict().items():
            failures.add_metric([name], health["failures"])
            restarts.add_metric([name], health["restarts"])
            restarting.add_metric([name], int(health["restarting"]))
        yield from (failures, restarts, restarting)


class NodeMetrics:
    """The application's registry with the node's collector, and the index read behind it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        self.collector = NodeCollector(node)
        self.registry.register(self.collector)
        self._index_read_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh_index(self) -> None:
        """Read the recording index on a thread when the last read is a minute old."""
        async with self._lock:
            now = time.monotonic()
            if self._index_read_at is not None and now - self._index_read_at < INDEX_TTL_S:
                return
            self._index_read_at = now
            path = root_index(self.node.recording.root)
            loop = asyncio.get_running_loop()
            try:
                self.collector.index = await loop.run_in_executor(None, read_index_figures, path)
            except (OSError, sqlite3.Error) as exc:  # the last figures stay; tried next minute
                log.warning("metrics: cannot read the recording index %s: %s", path, exc)

    async def scrape(self) -> bytes:
        await self.refresh_index()
        return generate_latest(self.registry)


METRICS: web.AppKey[NodeMetrics] = web.AppKey("metrics", NodeMetrics)


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    if not authorized(app[NODE].settings, request.headers.get("Authorization", "")):
        return web.json_response(
            {"error": "missing or wrong bearer token"}, status=401,
            headers={"WWW-Authenticate": 'Bearer realm="sensing-node"'},
        )
    body = await app[METRICS].scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_metrics(app: web.Application) -> None:
    """Mount GET /metrics for the application's node (`app[NODE]`, set before)."""
    app[METRICS] = NodeMetrics(app[NODE])
    app.router.add_get("/metrics", metrics)

