"""The report of `bench/node_bench.py`: the "Whole node" section of docs/benchmarks.md.

Pure functions of the raw results (lists of dicts, one per pass), so that `bench/compare.py`
and the tests can use them without running anything.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

BACKLOG_OK_MS = 100
GOAL_RATIO, GOAL_RATIO_N = 2.5, 400
GOAL_RECORD_SHARE, GOAL_RECORD_N = 0.85, 400
GOAL_SCALE = 1.8


def cell(values: list[float], digits: int = 1, scale: float = 1.0, unit: str = "") -> str:
    """Median, and (min–max) when the values differ; – for none."""
    xs = [v * scale for v in values if v == v]
    if not xs:
        return "–"
    med = statistics.median(xs)
    text = f"{med:,.{digits}f}{unit}"
    if min(xs) != max(xs):
        text += f" ({min(xs):,.{digits}f}–{max(xs):,.{digits}f})"
    return text


def node_rows(results: list[dict[str, Any]], transport: str, n: int, recording: bool,
              workers: int) -> list[dict[str, Any]]:
    return [r for r in results if r["kind"] == "node" and r["transport"] == transport
            and r["streams"] == n and r["recording"] == recording and r["workers"] == workers
            and not r.get("overload")]


def bare_of(results: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any] | None:
    """The bare pass of the same run, transport and stream count as node pass `r`."""
    for b in results:
        if (b["kind"] == "bare" and b["transport"] == r["transport"]
                and b["streams"] == r["streams"] and b.get("run") == r.get("run")):
            return b
    return None


def ratios(results: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[float]:
    out = []
    for r in rows:
        b = bare_of(results, r)
        if b is not None and b["us_per_packet"] > 0:
            out.append(r["us_per_packet"] / b["us_per_packet"])
    return out


def backlog_ok(r: dict[str, Any]) -> float:
    """The backlog a pass may show and still count as keeping up: BACKLOG_OK_MS, and half a
    second more with worker processes, which report their counters every 0.5 s."""
    return BACKLOG_OK_MS + (500 if r.get("processes", 1) > 1 else 0)


def kept_up(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and all(r["lost"] == 0 and r["backlog_ms"] <= backlog_ok(r)
                              for r in rows)


def largest_clean(results: list[dict[str, Any]], transport: str, recording: bool,
                  workers: int) -> int | None:
    """The largest stream count every run of the config took without loss or backlog."""
    ns = sorted({r["streams"] for r in results if r["kind"] == "node"}, reverse=True)
    for n in ns:
        if kept_up(node_rows(results, transport, n, recording, workers)):
            return n
    return None


def loss_split(r: dict[str, Any]) -> dict[str, Any]:
    """Loss of the streams the node kept and of those it said it shed (overload passes)."""
    shed = set(r.get("shed") or ())
    channels = r.get("channels") or []
    lost = r.get("lost_per_stream") or []
    sent = r.get("sent_by_stream") or []
    kept = {"n": 0, "lost": 0, "sent": 0, "with_loss": 0}
    gone = {"n": 0, "lost": 0, "sent": 0, "with_loss": 0}
    for i, channel in enumerate(channels):
        part = gone if channel in shed else kept
        part["n"] += 1
        x = lost[i] if i < len(lost) else 0
        if x is None:  # the stream ended: what the node took of it is not known
            continue
        part["lost"] += x
        part["sent"] += sent[i] if i < len(sent) else 0
        part["with_loss"] += 1 if x else 0
    return {"kept": kept, "shed": gone}


def header(info: dict[str, Any], args: Any, clips: dict[str, dict[str, float]],
           command: str, elapsed: float, notes: list[str]) -> list[str]:
    L = ["## Whole node (`make bench-node`)", ""]
    L.append(
        "N simulated cameras into the whole node (`python -m sensing_node run` with its own "
        "configuration: settings, uvloop, HTTP API, housekeeping and, where it has them, its "
        "media worker processes), against a bare uvloop receive loop given the same traffic in "
        "the same run. The channels are pulled through the operator API (or by the node "
        "itself with `recording.channels: all`); the media comes from other processes "
        "(`bench/ingest_sender.py`) to the ports and SSRCs of the node's INVITEs. CPU is that "
        "of the node's whole process tree over the window, per packet the node took "
        "(`/api/streams`); loss is per stream over the whole pass. Written by "
        "`bench/node_bench.py`; how each figure is taken: its docstring. It replaced the "
        "receive-path benchmarks whose last figures are in \"Live ingest\" and \"Recording\" "
        "above (the node's receive path and recorder in a process of the benchmark's own).")
    L.append("")
    for note in notes:
        L += [f"> **{note}**", ""]
    L.append(f"- Machine: {info['cpu']}, nproc {info['nproc']}; Linux {info['kernel']}; Python "
             f"{info['python']}; load average at the start {info['loadavg']}")
    L.append(f"- Date: {info['date']}; the whole run took {elapsed / 60:.0f} min")
    L.append(f"- Command: `{command}`; code under test: commit {info['commit']}")
    L.append(
        f"- Each pass: {args.warmup:g} s warm-up, then a {args.window:g} s window; "
        f"{args.runs} run{'s' if args.runs > 1 else ''}, each going through the transports and "
        "stream counts, and for each a bare pass, then a node pass per recording and workers "
        f"setting. Pinning: {args.pinning}. Recording: `recording.segment_s: {args.segment}`, "
        f"`fsync_s: {args.fsync:g}`, to a temporary directory under `{args.dir}`.")
    kinds = []
    for name, c in clips.items():
        kinds.append(f"{name} ({c['bitrate_bps'] / 1e6:.2f} Mbit/s on the wire, "
                     f"{c['packets_per_s']:.0f} packets/s, key frames "
                     f"{c['key_frame_packets']:.0f} packets)")
    pps = statistics.mean(c["packets_per_s"] for c in clips.values()) if clips else 0.0
    L.append(f"- Streams, dealt round robin: {'; '.join(kinds)}; {pps:.0f} packets/s per stream "
             "on average. H.264, 25 fps, a key frame every 50 frames, 1,400-byte payloads, "
             "8 s clips encoded once with libx264 and looped from different points.")
    L.append("")
    return L


def report(results: list[dict[str, Any]], args: Any, info: dict[str, Any],
           clips: dict[str, dict[str, float]], command: str, elapsed: float,
           notes: list[str]) -> str:
    L = header(info, args, clips, command, elapsed, notes)
    add = L.append
    add("Median (min–max) over the runs. CPU: the node's process tree (or the bare process) "
        "over the window, % of one core (over 100 % with several workers). µs/pkt: that CPU "
        "time over the packets taken in the window. Ratio: node µs/pkt over the bare loop's, "
        "same run. Lost: packets sent minus taken, whole pass (streams with loss); max: the "
        "worst stream's share lost. Backlog: sent but not taken at the window's end, ms of the "
        "offered load. Procs: processes in the node's tree.")
    add("")
    add("| transport | N | pass | offered pkt/s | CPU | µs/pkt | ratio to bare | lost (streams) "
        "| max stream loss | backlog ms | procs |")
    add("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for transport in args.transports:
        for n in args.streams:
            bare = [r for r in results if r["kind"] == "bare" and r["transport"] == transport
                    and r["streams"] == n]
            groups = [("bare loop", bare)] + [
                (f"{'record' if rec else 'ingest'}, {w} worker{'s' if w > 1 else ''}",
                 node_rows(results, transport, n, rec, w))
                for rec in args.recording for w in args.workers]
            for name, rows in groups:
                if not rows:
                    continue
                ratio = cell(ratios(results, rows), 2) if rows[0]["kind"] == "node" else "1"
                add(f"| {transport.upper()} | {n} | {name} | "
                    f"{cell([r['window_sent'] / r['seconds'] for r in rows], 0)} | "
                    f"{cell([r['cpu_share'] for r in rows], 1, 100, '%')} | "
                    f"{cell([r['us_per_packet'] for r in rows], 2)} | {ratio} | "
                    f"{cell([r['lost'] for r in rows], 0)} "
                    f"({cell([r['streams_with_loss'] for r in rows], 0)}) | "
                    f"{cell([r['max_stream_loss'] for r in rows], 2, 100, '%')} | "
                    f"{cell([r['backlog_ms'] for r in rows], 0)} | "
                    f"{max(r['processes'] for r in rows)} |")
    add("")
    L += goals(results, args)
    L += overload(results)
    L += per_run(results)
    return "\n".join(L)


def goals(results: list[dict[str, Any]], args: Any) -> list[str]:
    L = ["### Goals (issue 14)", ""]
    for transport in args.transports:
        rows = node_rows(results, transport, GOAL_RATIO_N, False, 1)
        if rows:
            r = statistics.median(ratios(results, rows) or [float("nan")])
            ok = r <= GOAL_RATIO and kept_up(rows)
            L.append(f"- {transport.upper()}, ingest, {GOAL_RATIO_N} streams, one worker: "
                     f"{r:.2f}x the bare loop's µs/packet, goal ≤ {GOAL_RATIO}x"
                     f"{'' if kept_up(rows) else ', with loss or backlog'}: "
                     f"**{'met' if ok else 'not met'}**.")
        rows = node_rows(results, transport, GOAL_RECORD_N, True, 1)
        if rows:
            share = statistics.median(r["cpu_share"] for r in rows)
            us = statistics.median(r["us_per_packet"] for r in rows)
            ok = share <= GOAL_RECORD_SHARE and kept_up(rows)
            L.append(f"- {transport.upper()}, ingest + recording, {GOAL_RECORD_N} streams, one "
                     f"worker: {100 * share:.0f}% of the core ({us:.2f} µs/packet), "
                     f"{'no loss' if kept_up(rows) else 'loss or backlog'}; goal zero loss at "
                     f"≤ {GOAL_RECORD_SHARE:.0%}: **{'met' if ok else 'not met'}**.")
        if 1 in args.workers and 2 in args.workers and True in args.recording:
            one, two = (largest_clean(results, transport, True, w) for w in (1, 2))
            top = max(args.streams)
            if one and two:
                bound = "at least " if two == top else ""
                ratio = two / one
                ok = ratio >= GOAL_SCALE
                L.append(f"- {transport.upper()}, ingest + recording without loss: one worker "
                         f"{one} streams, two {bound}{two} ({bound}{ratio:.2f}x; goal "
                         f"≥ {GOAL_SCALE}x; the sweep's steps bound both): "
                         f"**{'met' if ok else 'not shown' if bound else 'not met'}**.")
    for r in results:
        if r.get("overload") != 1.5 or not r.get("window_kept"):
            continue
        w = r["window_kept"]
        shed = len(set(r.get("shed") or ())) or (r.get("ended") or {}).get("streams", 0)
        ok = w["streams"] > 0 and w["lost"] == 0
        L.append(f"- {r['transport'].upper()}, {'recording' if r['recording'] else 'ingest'}, "
                 f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}, 150 % of the capacity "
                 f"({r['streams']} streams): kept {w['streams']} and shed {shed}; the kept "
                 f"streams lost {w['lost']:,} packets over the window (goal: none): "
                 f"**{'met' if ok else 'not met'}** (over the whole pass, the build-up "
                 f"included: {whole_pass_loss(r)}).")
    if len(L) == 2:
        L.append("- No pass of this run measures a goal (they are at 400 streams).")
    L.append("")
    return L


def whole_pass_loss(r: dict[str, Any]) -> str:
    """The kept streams' loss over the whole pass, as a share of what they sent."""
    kept = loss_split(r)["kept"]
    if not kept["sent"]:
        return "not known"
    return f"{100 * kept['lost'] / kept['sent']:.2f} % lost on {kept['with_loss']} streams"


def window(r: dict[str, Any]) -> str:
    """The kept streams over the measurement window alone: streams, packets lost (share of
    those counted), streams with loss; a dash for a pass that did not measure it."""
    w = r.get("window_kept")
    if not w:
        return "–"
    seen = w["packets"] + w["lost"]
    share = f" ({100 * w['lost'] / seen:.2f}%)" if seen and w["lost"] else ""
    return f"{w['streams']}, {w['lost']:,}{share}, {w['with_loss']}"


def overload(results: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in results if r.get("overload")]
    if not rows:
        return []
    L = ["### Overload", "",
         "Each config at 110 % and 150 % of its capacity (streams its CPU share says it carries "
         "on its cores, from the largest stream count it took without loss). µs/pkt: CPU per "
         "packet taken; at capacity: the same at that stream count. Kept / shed: the streams "
         "the node kept and those it named as shed under `overload` in `/api/stats`; lost: "
         "packets of theirs sent and not taken, over the whole pass (the build-up and the "
         "shedding included). Kept in the window: the streams carried through the measurement "
         "window and not shed, and the packets the node counted lost on them (RTP sequence "
         "gaps) in the window alone. Last shed: when the last shed stream's dialog ended, in "
         "s after the senders started (the window starts at the warm-up's end); a camera "
         "whose dialog ended stops sending.", "",
         "| transport | pass | capacity (from N) | N | CPU | µs/pkt | at capacity | kept: streams, "
         "lost, with loss | shed: streams, lost | kept in the window: streams, lost, with "
         "loss | last shed |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = node_rows(results, r["transport"], r.get("capacity_from") or -1, r["recording"],
                         r["workers"])
        split = loss_split(r)
        k, s = split["kept"], split["shed"]

        def share(part: dict[str, int]) -> str:
            return f"{100 * part['lost'] / part['sent']:.2f}%" if part["sent"] else "–"

        L.append(f"| {r['transport'].upper()} | {'record' if r['recording'] else 'ingest'}, "
                 f"{r['workers']} w, {r['overload']:.0%} | {r['capacity']} "
                 f"({r.get('capacity_from') or 'given'}) | {r['streams']} | "
                 f"{100 * r['cpu_share']:.1f}% | {r['us_per_packet']:.2f} | "
                 f"{cell([b['us_per_packet'] for b in base], 2)} | {k['n']}, {share(k)}, "
                 f"{k['with_loss']} | {s['n']}, {share(s)} | {window(r)} | "
                 f"{(r.get('ended') or {}).get('last_s') or '–'} |")
    L.append("")
    reports = [r for r in rows if "overload_report" in r]
    if reports:
        L.append("What the node reported under `overload` (`/api/stats`), at the end of each "
                 "pass:")
        L.append("")
        for r in reports:
            L.append(f"- {r['transport'].upper()} {r['overload']:.0%}: "
                     f"`{json.dumps(r['overload_report'])[:400]}`")
    else:
        L.append("The node's `/api/stats` had no `overload` entry: no stream counts as shed.")
    L.append("")
    return L


def per_run(results: list[dict[str, Any]]) -> list[str]:
    L = ["Per pass. Sender: the sender processes' CPU over their run, in cores; late p99: how "
         "late a frame's burst started. Other: CPU used by other processes during the window, "
         "in cores. Setup: from the first pull to every channel answered. Rec. dropped: "
         "access units the recorder did not write (`/api/stats`, recording).", "",
         "| run | transport | N | pass | pinned | CPU | µs/pkt | lost (streams) | backlog ms | "
         "procs | sender | late p99 ms | other | setup s | rec. dropped |",
         "|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        name = "bare" if r["kind"] == "bare" else (
            f"{'record' if r['recording'] else 'ingest'}, {r['workers']} w"
            + (f", {r['overload']:.0%}" if r.get("overload") else ""))
        setup = f"{r['setup_s']:.1f}" if "setup_s" in r else "–"
        dropped = (r.get("recording_stats") or {}).get("dropped_units", "–")
        L.append(f"| {r.get('run', 1)} | {r['transport'].upper()} | {r['streams']} | {name} | "
                 f"{r['pinned']} | {100 * r['cpu_share']:.1f}% | {r['us_per_packet']:.2f} | "
                 f"{r['lost']:,} ({r['streams_with_loss']}) | {r['backlog_ms']:.0f} | "
                 f"{r['processes']} | {r['sender_cpu_share']:.2f} | {r['late_p99_ms']:.1f} | "
                 f"{r['other_load']:.2f} | {setup} | {dropped} |")
    L.append("")
    return L
