"""Time to first frame in the browser: the console's live view in headless Chromium.

    .venv/bin/python bench/console.py [--reps 10] [--warmup 1] [--no-pin] [--no-doc]
                                      [--json FILE] [--note TEXT]
    make bench-console

The node is the real thing: `sensing-node run -c <config>` (settings parser, uvloop, HTTP API,
the console at `/`, WebRTC through aiortc), pinned to CPU 0, with its built-in simulated
cameras (`simulator.cameras: 2`, two channels each: camera 1 streams over UDP, camera 2 over
TCP; `sensing_node.sim.media.load_clip`'s test pattern). The browser is the system's Chromium
driven by Playwright (`executable_path`, headless, with
`--disable-features=WebRtcHideLocalIpsWithMdns`, so that its host candidates are plain loopback
addresses rather than mDNS names), signed in with the API token. This process and Chromium, which
inherits its affinity, run on CPU 1.

Three measurements, each repeated `--reps` times after `--warmup` repetitions that are not
counted:

  pulled   the channel is already being pulled (`POST /api/channels/{id}/live` before the
           repetitions); on the devices page, click the channel's Live button and wait for the
           tile's first frame. This is the goal of issue 13: under 1 s.
  cold     the channel is not pulled: the click makes the node INVITE the camera. The
           repetitions go round the four channels (UDP and TCP cameras), and each waits until
           the node has ended the stream of the one before (`media.linger_s: 0`).
  wall     a 2x2 wall of the four channels, all pulled: the four tiles are given their channels
           at once (one `change` event each, in one task) and the slowest tile counts.

Each tile of the console records `data-first-frame-ms`: from its choice of channel
(`playTile`) to the first `requestVideoFrameCallback` of its <video>. A click on Live first
shows the live page (which reads `/api/channels` again) and then chooses the channel, so the
benchmark also takes its own time from the click: an init script notes the click event's
`timeStamp` and the first `requestVideoFrameCallback` time of each <video> (same clock,
`performance.now()`). The same script times each `RTCPeerConnection` (created, ICE gathering
complete, answer set, ICE connected, connection (DTLS) connected, first track), and the
browser's resource timing gives the `POST /api/channels/{id}/webrtc`: its start, the server's
answer time (request sent to first response byte) and its end. So a first frame splits into:

  page     click -> peer connection created (the live page, `GET /api/channels`)
  gather   -> the browser's ICE gathering complete (the offer is sent whole, no trickle;
           the time of its first candidate is noted too)
  POST     -> the answer received (the node's ICE gathering; for a cold channel the INVITE
           and the wait for its first media too)
  connect  -> the connection connected (ICE checks, DTLS handshake)
  frame    -> the first frame shown (the first keyframe's packets, the decoder)

Writes its section of docs/benchmarks.md (between `<!-- console:begin -->` and
`<!-- console:end -->`) unless --no-doc.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import NODE_ID, PASSWORD, REALM, ROOT, pin  # noqa: E402
from common import write_section as write_doc_section  # noqa: E402
from relay import NodeProcess, free_port, machine, wait_until  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- console:begin -->", "<!-- console:end -->"
HOST = "127.0.0.1"
TOKEN = "bench-console-token"
CAMERAS, CHANNELS_PER_CAMERA = 2, 2
GOAL_MS = 1000.0  # issue 13: under 1 s when the channel is already pulled
FIRST_FRAME_TIMEOUT_MS = 20_000
CHROMIUM_ARGS = [
    "--no-sandbox",  # as root, Chromium's sandbox refuses to start
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Host candidates as addresses, not mDNS names: the node gets nothing it must resolve.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

# Runs in the page before the console's own script: notes the click, times each peer
# connection and the first frame of each <video>. It changes nothing the console does.
INSTRUMENT = """
(() => {
  const bench = { click: null, pcs: [] };
  window.__bench = bench;
  document.addEventListener("click", (e) => { bench.click = e.timeStamp; }, true);
  const Base = window.RTCPeerConnection;
  if (Base) {
    class Timed extends Base {
      constructor(...args) {
        super(...args);
        const t = { created: performance.now() };
        this.__bench = t;
        bench.pcs.push(t);
        const mark = (key) => { if (t[key] === undefined) t[key] = performance.now(); };
        this.addEventListener("icegatheringstatechange", () => {
          if (this.iceGatheringState === "complete") mark("gathered");
        });
        this.addEventListener("iceconnectionstatechange", () => {
          const s = this.iceConnectionState;
          if (s === "connected" || s === "completed") mark("ice");
        });
        this.addEventListener("connectionstatechange", () => {
          if (this.connectionState === "connected") mark("connected");
        });
        this.addEventListener("track", () => mark("track"));
        this.addEventListener("icecandidate", (e) => {
          if (e.candidate) { mark("candidate"); t.candidates = (t.candidates || 0) + 1; }
        });
      }
      setRemoteDescription(description) {
        if (this.__bench.answered === undefined) this.__bench.answered = performance.now();
        return super.setRemoteDescription(description);
      }
    }
    window.RTCPeerConnection = Timed;
  }
  const rvfc = HTMLVideoElement.prototype.requestVideoFrameCallback;
  if (rvfc) {
    HTMLVideoElement.prototype.requestVideoFrameCallback = function (callback) {
      const video = this;
      return rvfc.call(this, (now, meta) => {
        if (!video.dataset.benchFirst) video.dataset.benchFirst = String(now);
        callback(now, meta);
      });
    };
  }
})();
"""

# Collects one tile's figures once its first frame is shown: (tile index, channel, since),
# `since` the click's time when null.
COLLECT = """
([index, channel, since]) => {
  const tile = document.querySelectorAll("#wall .tile")[index];
  const video = tile.querySelector("video");
  const t0 = since === null ? window.__bench.click : since;
  const pc = window.__bench.pcs.find((p) => p.channel === channel) || {};
  const post = performance.getEntriesByType("resource").filter(
    (e) => e.name.endsWith(`/api/channels/${channel}/webrtc`)).pop();
  const rel = (v) => (v === undefined || t0 === null ? null : v - t0);
  return {
    tile_ms: Number(tile.dataset.firstFrameMs),
    first_ms: rel(Number(video.dataset.benchFirst)),
    created_ms: rel(pc.created), gathered_ms: rel(pc.gathered), answered_ms: rel(pc.answered),
    candidate_ms: rel(pc.candidate), candidates: pc.candidates || 0,
    ice_ms: rel(pc.ice), connected_ms: rel(pc.connected), track_ms: rel(pc.track),
    post_start_ms: post ? rel(post.startTime) : null,
    post_end_ms: post ? rel(post.responseEnd) : null,
    post_server_ms: post && post.requestStart > 0 ? post.responseStart - post.requestStart : null,
    post_ms: post ? post.responseEnd - post.startTime : null,
  };
}
"""

# Which channel each peer connection of the page serves: the order of their creation is the
# order of the tiles' choices.
LABEL_PCS = """
(channels) => {
  const fresh = window.__bench.pcs.filter((p) => p.channel === undefined);
  fresh.forEach((p, i) => { p.channel = channels[i]; });
  return fresh.length;
}
"""

RESET = """
() => {
  window.__bench.click = null;
  window.__bench.pcs = [];
  performance.clearResourceTimings();
  for (const v of document.querySelectorAll("video")) delete v.dataset.benchFirst;
  for (const t of document.querySelectorAll("#wall .tile")) delete t.dataset.firstFrameMs;
}
"""

# The wall: every tile gets its channel in one task, as fast as a person never could.
CHOOSE_ALL = """
(channels) => {
  const tiles = [...document.querySelectorAll("#wall .tile")];
  const since = performance.now();
  tiles.forEach((tile, i) => {
    const select = tile.querySelector(".tile-channel");
    select.value = channels[i] || "";
    select.dispatchEvent(new Event("change"));
  });
  return since;
}
"""

TILE_DONE = """
(n) => [...document.querySelectorAll("#wall .tile")].slice(0, n)
  .every((t) => t.dataset.firstFrameMs && t.querySelector("video").dataset.benchFirst)
"""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----- the node process ------------------------------------------------------------------------


def node_config(tmp: Path, sip_port: int, http_port: int) -> Path:
    text = f"""\
node:
  id: "{NODE_ID}"
  realm: "{REALM}"
  sip_listen: "{HOST}:{sip_port}"
  media_ip: "{HOST}"
  rtp_ports: "42000-42999"
  http_listen: "{HOST}:{http_port}"
  api_token: "{TOKEN}"
  data_dir: "{tmp / 'data'}"
devices:
  password: "{PASSWORD}"
  allow: ["31011200"]
recording:
  channels: []
simulator:
  cameras: {CAMERAS}
  channels_per_camera: {CHANNELS_PER_CAMERA}
media:
  linger_s: 0
"""
    path = tmp / "node.yaml"
    path.write_text(text)
    return path




# ----- the browser side ------------------------------------------------------------------------


class Console:
    """One signed-in page of the console, and the node's API beside it."""

    def __init__(self, page: Any, http: Any) -> None:
        self.page = page
        self.http = http

    async def get(self, path: str) -> Any:
        async with self.http.get(path) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {await resp.text()}")
            return await resp.json()

    async def no_viewers(self) -> None:
        async def none() -> bool:
            return not await self.get("/api/webrtc")

        await wait_until(none, 15, "the node did not end the WebRTC sessions")

    async def not_streaming(self, channels: list[str]) -> None:
        async def ended() -> bool:
            return not any(s["channel_id"] in channels for s in await self.get("/api/streams"))

        await wait_until(ended, 15, "the node did not end the streams")

    async def clear_tiles(self) -> None:
        await self.page.evaluate(CHOOSE_ALL, [])
        await self.no_viewers()

    async def live_click(self, channel: str) -> dict[str, Any]:
        """From the devices page, click the channel's Live button; the figures of its tile."""
        page = self.page
        await page.click("nav [data-page=devices]")
        button = page.locator(f"#channels-body tr[data-channel='{channel}']").get_by_role(
            "button", name="Live")
        await button.wait_for(state="visible")
        await page.evaluate(RESET)
        await button.click()
        await page.wait_for_function(TILE_DONE, arg=1, timeout=FIRST_FRAME_TIMEOUT_MS)
        await page.evaluate(LABEL_PCS, [channel])
        sample = await page.evaluate(COLLECT, [0, channel, None])
        sample["channel"] = channel
        await self.clear_tiles()
        return sample

    async def wall(self, channels: list[str]) -> list[dict[str, Any]]:
        """All tiles of the wall given their channels at once; the figures of each tile."""
        page = self.page
        await page.evaluate(RESET)
        since = await page.evaluate(CHOOSE_ALL, channels)
        await page.wait_for_function(TILE_DONE, arg=len(channels),
                                     timeout=FIRST_FRAME_TIMEOUT_MS)
        await page.evaluate(LABEL_PCS, channels)
        samples = []
        for i, channel in enumerate(channels):
            sample = await page.evaluate(COLLECT, [i, channel, since])
            sample["channel"] = channel
            samples.append(sample)
        await self.clear_tiles()
        return samples


async def signed_in(browser: Any, base: str) -> Any:
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.add_init_script(INSTRUMENT)
    await page.goto(base + "/")
    await page.fill("#token", TOKEN)
    await page.click("#signin-form button")
    await page.wait_for_selector("#top", state="visible")
    await page.wait_for_selector("#link.up")  # the event stream is open
    return page


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import aiohttp
    from playwright.async_api import async_playwright

    sip_port, http_port = free_port(), free_port(socket.SOCK_STREAM)
    node = NodeProcess(node_config(tmp, sip_port, http_port), args.cpus[0], tmp / "node.log")
    base = f"http://{HOST}:{http_port}"
    http = aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {TOKEN}"})
    out: dict[str, Any] = {"pulled": [], "cold": [], "wall": [], "failures": []}
    try:
        async def healthy() -> bool:
            if node.proc.poll() is not None:
                raise RuntimeError(f"the node exited ({node.proc.returncode}); see its log")
            try:
                async with http.get("/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(healthy, 30, "the node did not answer /healthz")
        out["node_pinned"] = node.pinned
        channels: list[str] = []

        async def catalogued() -> bool:
            nonlocal channels
            async with http.get("/api/channels") as resp:
                body = await resp.json()
            channels = sorted(c["id"] for c in body if c.get("status") == "ON")
            return len(channels) >= CAMERAS * CHANNELS_PER_CAMERA

        await wait_until(catalogued, 30, "the simulated cameras did not register")
        out["channels"] = channels
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=args.chromium,
                                                       args=CHROMIUM_ARGS)
            out["chromium"] = browser.version
            try:
                page = await signed_in(browser, base)
                console = Console(page, http)
                await measure(console, channels, args, out)
                out["page_errors"] = list(page.errors)
            finally:
                await browser.close()
    finally:
        await http.close()
        node.stop()
        out["node_log_errors"] = node.problems()
    return out


async def measure(console: Console, channels: list[str], args: argparse.Namespace,
                  out: dict[str, Any]) -> None:
    total = args.warmup + args.reps

    async def attempt(kind: str, i: int, coro: Any) -> Any:
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001  # a failed repetition is reported
            out["failures"].append(f"{kind} {i}: {type(exc).__name__}: {exc}".splitlines()[0])
            log(out["failures"][-1])
            try:
                await console.clear_tiles()
            except Exception:  # noqa: BLE001
                pass
            return None

    # Cold first: nothing is pulled yet.
    ended = len(await console.get("/api/streams/ended"))
    for i in range(total):
        channel = channels[i % len(channels)]
        await console.not_streaming(channels)
        sample = await attempt("cold", i, console.live_click(channel))
        if sample is not None:
            sample["warmup"] = i < args.warmup
            out["cold"].append(sample)
            log(f"cold {i}: {sample['first_ms']:.0f} ms ({channel})")
    await console.not_streaming(channels)
    # Each cold click started a stream of its own, which the node ended after the tile was
    # cleared: the evidence that no repetition found its channel still pulled.
    out["cold_streams_ended"] = len(await console.get("/api/streams/ended")) - ended
    for channel in channels:
        async with console.http.post(f"/api/channels/{channel}/live", json={}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"pulling {channel}: {resp.status} {await resp.text()}")
    await asyncio.sleep(1.0)  # every stream has a cached keyframe
    for i in range(total):
        sample = await attempt("pulled", i, console.live_click(channels[0]))
        if sample is not None:
            sample["warmup"] = i < args.warmup
            out["pulled"].append(sample)
            log(f"pulled {i}: {sample['first_ms']:.0f} ms")
    await console.page.click("nav [data-page=live]")
    await console.page.select_option("#wall-layout", "4")
    for i in range(total):
        samples = await attempt("wall", i, console.wall(channels[:4]))
        if samples is not None:
            slowest = max(samples, key=lambda s: s["first_ms"])
            out["wall"].append({"warmup": i < args.warmup, "tiles": samples,
                                "slowest": slowest})
            log(f"wall {i}: slowest {slowest['first_ms']:.0f} ms")
    for channel in channels:
        async with console.http.delete(f"/api/channels/{channel}/live") as resp:
            await resp.read()


# ----- the report ------------------------------------------------------------------------------

PARTS = [
    ("page", None, "created_ms"),
    ("gather", "created_ms", "gathered_ms"),
    ("POST", "gathered_ms", "answered_ms"),
    ("connect", "answered_ms", "connected_ms"),
    ("frame", "connected_ms", "first_ms"),
]


def parts(sample: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, begin, end in PARTS:
        a = 0.0 if begin is None else sample.get(begin)
        b = sample.get(end)
        out[name] = None if a is None or b is None else b - a
    return out


def cell(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def counted(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in samples if not s.get("warmup")]


def clip_defaults() -> dict[str, Any]:
    """The simulated cameras' clip: `load_clip`'s defaults, which the built-in cameras use."""
    from sensing_node.sim.media import load_clip

    return {k: p.default for k, p in inspect.signature(load_clip).parameters.items()
            if p.default is not inspect.Parameter.empty}


def clip_text() -> str:
    p = clip_defaults()
    return (f"{p['width']}x{p['height']}, {p['fps']} fps, a keyframe "
            f"every {p['gop']} frames")


def report(r: dict[str, Any], args: argparse.Namespace, info: dict[str, Any], command: str,
           seconds: float, notes: list[str]) -> str:
    rows = {
        "pulled": counted(r["pulled"]),
        "cold": counted(r["cold"]),
        "wall": [w["slowest"] for w in counted(r["wall"])],
    }
    label = {
        "pulled": "Live clicked, channel already pulled",
        "cold": "Live clicked, channel not pulled (INVITE)",
        "wall": "2x2 wall of pulled channels, slowest tile",
    }
    L: list[str] = []
    add = L.append
    add("## Time to first frame in the browser (`bench/console.py`)")
    add("")
    add("The whole node (`sensing-node run`, pinned to CPU 0) with its built-in simulated "
        f"cameras ({CAMERAS} cameras of {CHANNELS_PER_CAMERA} channels, one over UDP and one "
        "over TCP) and the console in headless Chromium (Playwright, the system's Chromium, "
        "with this process on CPU 1), on loopback. Each first frame is taken from the click "
        "(the wall: from the tiles' choice of channel) to the first `requestVideoFrameCallback` "
        "of the tile's <video>. What each figure counts: the docstring of `bench/console.py`.")
    add("")
    add(f"- Machine: {info['cpu']}, nproc {info['nproc']}; Linux {info['kernel']}; Python "
        f"{info['python']}; node commit {info['commit']}")
    add(f"- Browser: Chromium {r.get('chromium', '?')}, headless, "
        "`--disable-features=WebRtcHideLocalIpsWithMdns`")
    add(f"- Date: {info['date']}; the whole run took {seconds:.0f} s")
    add(f"- Command: `{command}`")
    add(f"- {args.reps} repetitions of each after {args.warmup} not counted; simulated "
        f"camera clip {clip_text()}.")
    add("")
    add("Median (min–max), ms. First frame: from the click; tile: the console's own "
        "`data-first-frame-ms` (from its choice of channel, after the live page is shown). "
        "The parts add up to the first frame: page (click to the peer connection), gather "
        "(the browser's ICE gathering), POST (offer sent to answer set, the node's whole "
        "`POST /api/channels/{id}/webrtc`), connect (ICE and DTLS), frame (connected to the "
        "first frame shown). Server: the POST's request sent to its first response byte "
        "(resource timing).")
    add("")
    add("| case | n | first frame | tile | page | gather | POST | server | connect | frame |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, samples in rows.items():
        ps = [parts(s) for s in samples]
        add(f"| {label[key]} | {len(samples)} | {cell([s['first_ms'] for s in samples])} | "
            f"{cell([s['tile_ms'] for s in samples])} | "
            + " | ".join(cell([p[name] for p in ps]) if name != "server" else
                         cell([s['post_server_ms'] for s in samples])
                         for name in ("page", "gather", "POST", "server", "connect", "frame"))
            + " |")
    add("")
    pulled = [s["first_ms"] for s in rows["pulled"]]
    if pulled:
        med, worst = statistics.median(pulled), max(pulled)
        verdict = "met" if worst < GOAL_MS else ("met at the median" if med < GOAL_MS
                                                 else "**missed**")
        add(f"- **Goal (issue 13): under {GOAL_MS:.0f} ms when the channel is already pulled: "
            f"{verdict}** (median {med:.0f} ms, worst {worst:.0f} ms).")
    for key, samples in rows.items():
        ps = [parts(s) for s in samples]
        medians = {name: statistics.median(v) for name in ("page", "gather", "POST", "connect",
                                                          "frame")
                   if (v := [p[name] for p in ps if p[name] is not None])}
        if medians:
            top = max(medians, key=lambda k: medians[k])
            total = sum(medians.values())
            add(f"- {label[key]}: the largest part is {top} ({medians[top]:.0f} of "
                f"{total:.0f} ms at the medians).")
    cold_server = [s["post_server_ms"] for s in rows["cold"] if s["post_server_ms"] is not None]
    warm_server = [s["post_server_ms"] for s in rows["pulled"]
                   if s["post_server_ms"] is not None]
    if cold_server and warm_server:
        cold_ms, warm_ms = statistics.median(cold_server), statistics.median(warm_server)
        add(f"- The INVITE in the cold case: the POST's server time {cold_ms:.0f} ms against "
            f"{warm_ms:.0f} ms pulled (medians); the node "
            f"started and ended {r.get('cold_streams_ended', '?')} streams for the "
            f"{len(r['cold'])} cold clicks (`GET /api/streams/ended`). The built-in simulated "
            "camera runs in the node's own process and answers at once over loopback, so this "
            "is the node's own cost; a real camera adds its INVITE answer time and, if it does "
            "not open a session with an IDR, its wait for the next keyframe.")
    gathering = [(s["candidate_ms"] - s["created_ms"], s["gathered_ms"] - s["created_ms"])
                 for s in rows["pulled"] + rows["cold"]
                 if None not in (s.get("candidate_ms"), s.get("gathered_ms"), s["created_ms"])]
    if gathering:
        first = statistics.median(g[0] for g in gathering)
        done = statistics.median(g[1] for g in gathering)
        add(f"- The browser's ICE gathering (single tiles): its first candidate {first:.0f} ms "
            f"after the peer connection was created, gathering complete after {done:.0f} ms "
            f"(medians); the console sends its offer only then. Sending it with the first "
            f"candidates (or a shorter wait) would take up to {done - first:.0f} ms off every "
            "first frame on loopback (an estimate, not measured).")
    keyframe = [s["first_ms"] - s["connected_ms"] for s in rows["pulled"]
                if s.get("connected_ms") is not None]
    if keyframe:
        clip = clip_defaults()
        add(f"- Connected to first frame, channel pulled: {cell(keyframe)} ms: the viewer "
            "starts from the stream's cached keyframe, so no wait for the next one. A cold "
            "session starts at the clip's first frame, an IDR, as the simulated camera sends "
            "it; a camera that begins mid-GOP would add up to a GOP "
            f"({clip['gop'] / clip['fps']:g} s here) to the cold case.")
    add("- The parts are event times as the page's main thread delivers them; with four "
        "peer connections at once a `connectionstatechange` can come after the first frame, "
        "so the wall's frame part can be slightly negative.")
    add(f"- Failed repetitions: {len(r['failures'])}"
        + (": " + "; ".join(r["failures"][:5]) if r["failures"] else "")
        + f". Page errors: {len(r.get('page_errors', []))}. Node log errors: "
        f"{len(r.get('node_log_errors', []))}.")
    for note in notes:
        add(f"- {note}")
    add("")
    return "\n".join(L)


def write_section(text: str) -> None:
    write_doc_section(BEGIN, END, text)



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10, help="repetitions of each case")
    parser.add_argument("--warmup", type=int, default=1,
                        help="repetitions of each case before those counted")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM") or shutil.which(
        "chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--no-pin", action="store_true",
                        help="leave the node and the browser to the scheduler")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--json", help="also write every raw figure to this file")
    args = parser.parse_args()
    if args.chromium is None:
        log("chromium is not installed (as root: apt-get install chromium, or make chromium)")
        return 2
    if args.reps < 1 or args.warmup < 0:
        parser.error("need --reps >= 1 and --warmup >= 0")
    avail = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(avail) >= 2
    args.cpus = (avail[0], avail[1]) if pinned else (None, None)
    log(f"this process and the browser: {pin(args.cpus[1])}")
    info = machine()
    command = shlex.join([".venv/bin/python", "bench/console.py", *sys.argv[1:]])
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="sensing-console-") as tmpname:
        tmp = Path(tmpname)
        try:
            result = asyncio.run(run(args, tmp))
        except Exception as exc:  # noqa: BLE001
            log(f"the run failed: {exc}")
            node_log = tmp / "node.log"
            if node_log.exists():
                log(node_log.read_text(errors="replace")[-3000:])
            return 1
    for line in result["node_log_errors"]:
        log(f"  node: {line}")
    text = report(result, args, info, command, time.perf_counter() - started, args.note)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "result": result}, indent=1))
    if not args.no_doc:
        write_section(text)
    print(text)
    counted_all = [counted(result[k]) for k in ("pulled", "cold", "wall")]
    return 0 if all(counted_all) and not result["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
