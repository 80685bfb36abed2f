"""Command line: `sensing-node run | check-config | simulate-camera | simulate-upstream |
verify-recordings | verify-audit | plan-storage | hash-token`.

Also available as `python -m sensing_node`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .runtime.logs import LOG_FORMATS, configure_logging

if TYPE_CHECKING:
    from .settings import NodeSettings

log = logging.getLogger("sensing_node")


def check_layout() -> str | None:
    """The top-level `sip`, `rtp` and `recorder` packages must be ours, not same-named ones
    installed elsewhere (Debian's python3-sip installs a module called `sip`)."""
    here = Path(__file__).resolve().parent.parent
    import recorder
    import rtp
    import sip

    for module in (sip, rtp, recorder):
        path = Path(module.__file__ or "").resolve()
        if path.parent.parent != here:
            return f"module {module.__name__!r} is shadowed by {path}; expected it under {here}"
    return None


def install_event_loop_policy() -> str:
    """uvloop when available (about ten times cheaper per UDP datagram), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def _settings_or_exit(path: str):  # type: ignore[no-untyped-def]
    from .settings import ConfigError, load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s); the node was not started", file=sys.stderr)
        sys.exit(2)


def cmd_verify_recordings(args: argparse.Namespace) -> int:
    """Recompute every segment's SHA-256 and each channel's hash chain against the index, and
    check that no gap ends before it starts or overlaps a segment or another gap."""
    from recorder.index import GapRow, RecordIndex
    from recorder.service import root_index
    from recorder.verify import verify

    from .devices.registry import iso

    settings = _settings_or_exit(args.config)
    root = settings.recording.root(settings.node)
    if not root_index(root).exists():
        print(f"{root}: no recordings index", file=sys.stderr)
        return 1
    index = RecordIndex(root_index(root))
    try:
        report = verify(root, index, args.channel)
    finally:
        index.close()
    for path in report.altered:
        print(f"ALTERED    {path}")
    for path in report.missing:
        print(f"MISSING    {path}")
    for path in report.unindexed:
        print(f"UNINDEXED  {path}")
    for brk in report.chain_breaks:
        print(f"CHAIN      {brk.path} (channel {brk.channel_id}): links to {brk.found}, "
              f"expected {brk.expected}")
    tz = settings.node.tz

    def span(gap: GapRow) -> str:
        return f"{iso(gap.start_wall, tz)} .. {iso(gap.end_wall, tz)} ({gap.reason})"

    for problem in report.gap_problems:
        other = problem.other
        if other is None:
            what = "ends before it starts"
        elif isinstance(other, GapRow):
            what = f"overlaps the gap {span(other)}"
        else:
            what = f"overlaps the segment {other.path}"
        print(f"GAP        channel {problem.channel_id}: {span(problem.gap)} {what}")
    for path in report.partial:
        print(f"OPEN       {path} (being written, or left by a crash until the next start)")
    verdict = "OK" if report.ok else "FAILED"
    print(f"{verdict}: {report.checked} segments checked in {root}")
    return 0 if report.ok else 1


def cmd_verify_audit(args: argparse.Namespace) -> int:
    """Check every audit row's hash and the chain between rows."""
    from recorder.audit import AuditLog

    settings = _settings_or_exit(args.config)
    path = settings.node.data_dir / "audit.sqlite3"
    if not path.exists():
        print(f"{path}: no audit log", file=sys.stderr)
        return 1
    with AuditLog(path) as audit:
        report = audit.verify()
    if report.altered:
        print("ALTERED rows: " + ", ".join(map(str, report.altered)))
    if report.unlinked:
        print("UNLINKED rows (deleted or inserted before them): "
              + ", ".join(map(str, report.unlinked)))
    if not report.triggers:
        print("the append-only triggers are missing")
    verdict = "OK" if report.ok else "FAILED"
    print(f"{verdict}: {report.rows} audit rows in {path}")
    return 0 if report.ok else 1


def cmd_plan_storage(args: argparse.Namespace) -> int:
    """Observed bitrate of each channel x retention against the disk."""
    import time

    from recorder.index import RecordIndex
    from recorder.service import root_index

    from .recording.service import plan_storage

    settings = _settings_or_exit(args.config)
    root = settings.recording.root(settings.node)
    root.mkdir(parents=True, exist_ok=True)
    index = RecordIndex(root_index(root))
    try:
        plan = plan_storage(index, root, settings.recording.retention_days, time.time())
    finally:
        index.close()
    print("\n".join(plan.lines()))
    return 0 if plan.fits else 1


def cmd_hash_token(args: argparse.Namespace) -> int:
    """The SHA-256 of a token, for `users[].token_sha256`; the token from stdin when not given,
    so that it stays out of the shell's history."""
    from .settings.access import hash_token

    token = args.token
    if token is None:
        if sys.stdin.isatty():
            import getpass

            token = getpass.getpass("token: ")
        else:
            token = sys.stdin.readline()
    if not token.strip():
        print("the token is empty; give a non-empty one", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(args.file)
    node = settings.node
    print(f"{args.file}: OK (node {node.id}, realm {node.realm})")
    print("\n".join(listening_lines(node)))
    for device_id, override in settings.devices.overrides.items():
        if override.auth == "none":
            print(f"WARNING: device {device_id} registers without authentication from "
                  f"{override.from_} (auth: none); anyone there can register in its name")
    return 0


WILDCARDS = ("0.0.0.0", "::")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listening_lines(node: NodeSettings) -> list[str]:
    """What the node binds (SIP, HTTP, RTP), a warning for each service on every interface,
    and one when RTP cannot bind node.media_ip."""
    from .media.addresses import media_bind_host

    rtp_host, rtp_warning = media_bind_host(node)
    if node.media_bind is not None:
        rtp_source = "node.media_bind"
    else:
        rtp_source = "node.media_ip" if rtp_warning is None else "the SIP host"
    lines = [
        f"listens: SIP on {_host_port(node.sip_host, node.sip_port)} (UDP and TCP), "
        f"HTTP API on {_host_port(node.http_host, node.http_port)}, "
        f"RTP on {rtp_host} ports {node.rtp_port_min}-{node.rtp_port_max} "
        f"(UDP and TCP, {rtp_source})"
    ]
    if rtp_warning is not None:
        lines.append(f"WARNING: {rtp_warning}")
    if node.sip_host in WILDCARDS:
        lines.append(
            f"WARNING: SIP listens on every interface ({node.sip_host}): any host that can reach "
            "this machine can send it REGISTERs and MESSAGEs; set node.sip_listen to the address "
            "the devices use to narrow it"
        )
    if node.http_host in WILDCARDS:
        lines.append(
            f"WARNING: the HTTP API listens on every interface ({node.http_host}); keep it on "
            "loopback behind a reverse proxy with TLS unless the network is trusted"
        )
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(args.config)
    loop_name = install_event_loop_policy()
    log.info("event loop: %s", loop_name)
    from .runtime import collector
    from .transport import native

    collector.tune()

    if native.COMPILED:
        log.info("RTP fast path: compiled")
    else:
        log.info("RTP fast path: pure Python (%s)", native.WHY)
    return asyncio.run(_run(settings))


async def _run(settings) -> int:  # type: ignore[no-untyped-def]
    from aiohttp import web

    from .api.routes import NODE
    from .app import build_app
    from .node import StartupError

    app = build_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.node.http_host, settings.node.http_port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen for HTTP on {settings.node.http_host}:"
                f"{settings.node.http_port}: {exc.strerror or exc}"
            ) from exc
    except StartupError as exc:
        log.error("%s", exc)
        await runner.cleanup()
        return 1
    loop = asyncio.get_running_loop()
    # SIGHUP reads the config file again (set before the line below, which tells a supervisor
    # or a test that the node serves)
    loop.add_signal_handler(signal.SIGHUP, app[NODE].reload_soon, "node (SIGHUP)")
    log.info("HTTP API on http://%s:%d", settings.node.http_host, settings.node.http_port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()
    log.info("stopped")
    return 0


def cmd_simulate_camera(args: argparse.Namespace) -> int:
    from .sim.camera import CameraConfig, SimulatedCamera

    host, _, port = args.server.rpartition(":")
    if not host or not port.isdigit():
        print(f"--server must be HOST:PORT, not {args.server!r}", file=sys.stderr)
        return 2
    config = CameraConfig(
        server=(host, int(port)),
        device_id=args.id,
        password=args.password,
        channels=args.channels,
        transport=args.transport,
        server_id=args.server_id,
        keepalive_interval_s=args.keepalive_interval,
        media_codec=args.codec,
    )
    install_event_loop_policy()

    async def main() -> int:
        camera = SimulatedCamera(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await camera.start()
        reply = camera.last_register_response
        print(f"{config.device_id}: REGISTER -> {reply.status} {reply.reason}" if reply else "")
        if not camera.registered:
            await camera.stop(unregister=False)
            return 1
        await stop.wait()
        await camera.stop()
        return 0

    return asyncio.run(main())


def cmd_simulate_upstream(args: argparse.Namespace) -> int:
    from .sim.recorded import PlaybackPlan
    from .sim.upstream import PlatformConfig
    from .sim.upstream_run import run_upstream

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        print(f"--listen must be HOST:PORT, not {args.listen!r}", file=sys.stderr)
        return 2
    playback = None
    if args.playback is None:
        for option, value in (("--download-speed", args.download_speed),
                              ("--store", args.store)):
            if value is not None:
                print(f"{option} needs --playback", file=sys.stderr)
                return 2
    else:
        channel, start, end = args.playback
        try:
            playback = PlaybackPlan.from_text(
                channel, start, end, download_speed=args.download_speed, store=args.store,
                timezone=args.timezone, transport=args.transport)
        except ValueError as exc:
            print(f"--playback: {exc}", file=sys.stderr)
            return 2
    config = PlatformConfig(
        platform_id=args.id, realm=args.realm or args.id[:10], password=args.password,
        host=host, port=int(port), media_host=host,
    )
    install_event_loop_policy()

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_upstream(config, play=args.play, transport=args.transport,
                                  seconds=args.seconds, stop=stop, playback=playback)

    return asyncio.run(main())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sensing-node", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the node", description="Run the node until SIGTERM.")
    run.add_argument("-c", "--config", required=True, help="YAML configuration file")
    run.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                     help="text lines (default), or one JSON object per line with device, "
                     "channel and call_id fields")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Check a YAML file; list every problem as file:line: key: what is wrong.",
    )
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    sim = sub.add_parser(
        "simulate-camera",
        help="run one simulated GB/T 28181 camera",
        description="Register a simulated camera to a node, keep it alive, answer queries, and "
        "stream a test pattern as PS over RTP to each INVITE.",
    )
    sim.add_argument("--server", required=True, help="node SIP address HOST:PORT")
    sim.add_argument("--id", required=True, help="20-digit device ID")
    sim.add_argument("--password", required=True, help="digest password")
    sim.add_argument("--channels", type=int, default=1, help="number of channels (default 1)")
    sim.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    sim.add_argument("--server-id", help="node ID for the Request-URI (default: the domain)")
    sim.add_argument(
        "--keepalive-interval", type=float, default=60.0, help="seconds between keepalives"
    )
    sim.add_argument(
        "--codec", choices=("h264", "h265"), default="h264", help="video codec (default h264)"
    )
    sim.set_defaults(func=cmd_simulate_camera)

    up = sub.add_parser(
        "simulate-upstream",
        help="act as an upper platform toward a node",
        description="Listen as an upper platform (sensing center): accept the node's REGISTER "
        "with digest, list its catalog, subscribe to it, and pull the channels given with "
        "--play, checking the RTP (SSRC, sequence, PS frames). With --playback, search the "
        "channel's recordings of a range, play the range back and, with --download-speed, "
        "download it; report frames, media and wall time, pace and bytes of each, and with "
        "--store whether the bytes equal the stored ones. Exit status 1 if any check failed. "
        "Configure the node with an upstreams: entry for this address, ID and password.",
    )
    up.add_argument("--listen", default="127.0.0.1:15060", help="SIP HOST:PORT (UDP and TCP)")
    up.add_argument("--id", default="31011200002000000100", help="20-digit platform ID")
    up.add_argument("--realm", help="SIP domain (default: the first 10 digits of --id)")
    up.add_argument("--password", required=True, help="the password the node registers with")
    up.add_argument("--play", action="append", default=[], metavar="CHANNEL",
                    help="channel ID to pull (repeatable)")
    up.add_argument("--transport", choices=("udp", "tcp-active", "tcp-passive"), default="udp",
                    help="media transport from the platform's side (default udp)")
    up.add_argument("--seconds", type=float, help="stop after this long (default: at SIGTERM, "
                    "or when the playback is done)")
    up.add_argument("--playback", nargs=3, metavar=("CHANNEL", "START", "END"),
                    help="play back CHANNEL's recordings from START to END, each Unix seconds or "
                    "an ISO local time such as 2026-12-06T10:00:00")
    up.add_argument("--download-speed", type=int, metavar="N",
                    help="also download the range at N times real time (1 to 32)")
    up.add_argument("--store", metavar="DIR",
                    help="the node's recording directory (recording.dir): compare the bytes "
                    "received with the stored ones")
    up.add_argument("--timezone", metavar="ZONE",
                    help="IANA zone of ISO times and of RecordInfo times, as the node's "
                    "node.timezone (default: this machine's)")
    up.set_defaults(func=cmd_simulate_upstream)

    ver = sub.add_parser(
        "verify-recordings",
        help="check recordings against their hashes and chains",
        description="Recompute the SHA-256 of every segment and each channel's hash chain; list "
        "every altered, missing or unindexed file. Exit status 1 if anything is wrong.",
    )
    ver.add_argument("-c", "--config", required=True, help="the node's YAML file")
    ver.add_argument("--channel", help="only this channel")
    ver.set_defaults(func=cmd_verify_recordings)

    aud = sub.add_parser(
        "verify-audit",
        help="check the audit log's hash chain",
        description="Check every audit row's hash and the chain; exit status 1 if broken.",
    )
    aud.add_argument("-c", "--config", required=True, help="the node's YAML file")
    aud.set_defaults(func=cmd_verify_audit)

    plan = sub.add_parser(
        "plan-storage",
        help="estimate the disk the retention period needs",
        description="Per channel: observed bitrate x retention_days, against the disk's free "
        "space. Exit status 1 if the disk cannot hold the retention period.",
    )
    plan.add_argument("-c", "--config", required=True, help="the node's YAML file")
    plan.set_defaults(func=cmd_plan_storage)

    token = sub.add_parser(
        "hash-token",
        help="print the SHA-256 of an API token for users[].token_sha256",
        description="Print the SHA-256 to put into a user's token_sha256. Without TOKEN, read "
        "it from stdin (a prompt on a terminal), which keeps it out of the shell's history.",
    )
    token.add_argument("token", nargs="?", metavar="TOKEN", help="the token (default: stdin)")
    token.set_defaults(func=cmd_hash_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_format = getattr(args, "log_format", "text")
    configure_logging(args.log_level, log_format)
    os.environ["SENSING_NODE_LOG_FORMAT"] = log_format  # media workers log alike
    problem = check_layout()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 3
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
