"""SIP load generator: many GB/T 28181 devices on one UDP socket, run as its own process.

    python bench/loadgen.py --server 127.0.0.1:5060 --devices 10000 --phases reg,ka,idle

A tight non-blocking loop (epoll, no asyncio) plays N distinct devices. Each phase keeps a
bounded number of transactions in flight (closed loop, `--window`) or starts them at a fixed
rate (open loop), retransmits on a timer like a UDP client transaction (T1 = 500 ms, doubling to
4 s, giving up after 32 s) and counts retransmissions and failures. Phases:

    reg      register devices [first, first+N) with the full digest exchange: REGISTER -> 401,
             REGISTER with Authorization (same Call-ID and From tag, CSeq 2, new branch) -> 200.
             Latency is recorded for the authorized REGISTER (send -> 200) and for the whole
             exchange (first REGISTER -> 200).
    regrate  the same for the next N devices, started at `--reg-rate` per second (open loop).
    ka       one keepalive MESSAGE per registered device, `--ka-rounds` times (closed loop).
    quiet    send nothing for `--quiet` seconds (the node's background cost).
    idle     keepalives at N/`--idle-interval` (60) per second for `--idle` seconds: every
             device once a minute.

With `--cpu-pid` the CPU time of that process (the node) is read from /proc at the start and end
of each phase, so the report has the server's CPU seconds per transaction and its utilisation.

With `--spawn-node TREE` (instead of `--server`) the load generator starts the node itself:
`bench/node_proc.py` of the source tree TREE (a git worktree of another commit, for a before and
after in the same run), with TREE first on PYTHONPATH, pinned to `--node-cpu`, metered as with
`--cpu-pid`, and stopped at the end; its `info` (collections, sweeps, transactions) is added to
the report. For example, on two cores:

    python bench/loadgen.py --spawn-node . --node-cpu 0 --cpu 1 --devices 10000 \
        --phases reg,ka,quiet,idle,regrate --reg-rate 15000

With `--echo` the server is a bare echo loop: every datagram comes back unchanged, the echoed
REGISTER stands for the 401 (a fixed nonce is used) and for the 200, the echoed MESSAGE for
its 200. The client does exactly the same work in both modes.

Requests the node sends to the devices (the DeviceInfo/Catalog queries that follow a new
registration) are answered 200 at once, with no query result after them.

The result is one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    NODE_ID,
    PASSWORD,
    REALM,
    REQUEST_URI,
    cpu_seconds,
    device_id,
    percentile,
    pin,
    rss_kib,
    thread_cpu_seconds,
)

T1 = 0.5
T2 = 4.0
GIVE_UP = 32.0
CNONCE = b"0a4f113b"
ECHO_NONCE = b"0" * 40

REGISTER = (
    b"REGISTER %(ruri)s SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:%(port)d;rport;branch=z9hG4bK%(branch)s\r\n"
    b"From: <sip:%(dev)s@%(realm)s>;tag=%(tag)s\r\n"
    b"To: <sip:%(dev)s@%(realm)s>\r\n"
    b"Call-ID: %(callid)s\r\n"
    b"CSeq: %(cseq)d REGISTER\r\n"
    b"Contact: <sip:%(dev)s@127.0.0.1:%(port)d>\r\n"
    b"Max-Forwards: 70\r\n"
    b"User-Agent: IP Camera\r\n"
    b"Expires: 3600\r\n"
    b"%(auth)s"
    b"Content-Length: 0\r\n\r\n"
)
AUTHORIZATION = (
    b'Authorization: Digest username="%s", realm="%s", nonce="%s", uri="%s", '
    b'response="%s", algorithm=MD5, cnonce="%s", qop=auth, nc=00000001\r\n'
)
MESSAGE = (
    b"MESSAGE %(ruri)s SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:%(port)d;rport;branch=z9hG4bK%(branch)s\r\n"
    b"From: <sip:%(dev)s@%(realm)s>;tag=%(tag)s\r\n"
    b"To: <sip:%(node)s@%(realm)s>\r\n"
    b"Call-ID: %(callid)s\r\n"
    b"CSeq: %(cseq)d MESSAGE\r\n"
    b"Content-Type: Application/MANSCDP+xml\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: %(length)d\r\n\r\n"
    b"%(body)s"
)
KEEPALIVE_BODY = (
    b'<?xml version="1.0" encoding="GB2312"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n'
    b"<SN>%d</SN>\r\n<DeviceID>%s</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n"
)

DONE = b""  # a flow's answer when the device's exchange is complete


def summarize(values: list[float]) -> dict[str, float]:
    """Latency summary in milliseconds."""
    values = sorted(values)
    if not values:
        return {"n": 0}
    ms = 1000.0
    return {
        "n": len(values),
        "mean": round(sum(values) / len(values) * ms, 3),
        "p50": round(percentile(values, 0.50) * ms, 3),
        "p90": round(percentile(values, 0.90) * ms, 3),
        "p99": round(percentile(values, 0.99) * ms, 3),
        "p999": round(percentile(values, 0.999) * ms, 3),
        "max": round(values[-1] * ms, 3),
    }


def header(data: bytes, name: bytes) -> bytes:
    """Value of header `name` (with its CRLF prefix and ': ', e.g. b"\\r\\nCall-ID: ")."""
    start = data.find(name)
    if start < 0:
        return b""
    start += len(name)
    return data[start : data.find(b"\r\n", start)]


class Flow:
    """One kind of exchange per device; subclasses say what to send and what an answer means."""

    def __init__(self, gen: LoadGenerator, first: int, count: int, tag: bytes) -> None:
        self.gen = gen
        self.first = first
        self.count = count
        self.tag = tag  # unique per phase: Call-IDs and branches never repeat across phases
        self.failures: dict[str, int] = {}

    def start(self, j: int, now: float) -> bytes:
        raise NotImplementedError

    def answer(self, j: int, data: bytes, now: float) -> bytes | None:
        """The next request for device j, DONE, or None to ignore the datagram."""
        raise NotImplementedError

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1


class RegisterFlow(Flow):
    def __init__(self, gen: LoadGenerator, first: int, count: int, tag: bytes) -> None:
        super().__init__(gen, first, count, tag)
        realm = REALM.encode()
        self.devs = [device_id(first + j).encode() for j in range(count)]
        # HA1 = MD5(username:realm:password) is what a camera keeps; HA2 is the same for all.
        pw = PASSWORD.encode()
        self.ha1 = [
            hashlib.md5(d + b":" + realm + b":" + pw).hexdigest().encode() for d in self.devs
        ]
        self.ha2 = hashlib.md5(b"REGISTER:" + REQUEST_URI.encode()).hexdigest().encode()
        self.step = bytearray(count)  # 1: waiting for 401, 2: waiting for 200
        self.t_start = [0.0] * count
        self.t_auth = [0.0] * count
        self.lat_challenge: list[float] = []
        self.lat_auth: list[float] = []
        self.lat_total: list[float] = []

    def _request(self, j: int, cseq: int, auth: bytes) -> bytes:
        dev = self.devs[j]
        return REGISTER % {
            b"ruri": REQUEST_URI.encode(),
            b"port": self.gen.port,
            b"branch": b"%s%dc%d" % (self.tag, j, cseq),
            b"dev": dev,
            b"realm": REALM.encode(),
            b"tag": b"t" + dev[-6:],
            b"callid": b"%s-%d" % (self.tag, j),
            b"cseq": cseq,
            b"auth": auth,
        }

    def start(self, j: int, now: float) -> bytes:
        self.step[j] = 1
        self.t_start[j] = now
        return self._request(j, 1, b"")

    def answer(self, j: int, data: bytes, now: float) -> bytes | None:
        cseq = header(data, b"\r\nCSeq: ")[:1]
        step = self.step[j]
        if step == 1 and cseq == b"1":
            if self.gen.echo:
                nonce = ECHO_NONCE
            elif data.startswith(b"SIP/2.0 401"):
                nonce = header(data, b'nonce="')
                nonce = nonce[: nonce.find(b'"')]
            else:
                self.fail(data[8:11].decode("ascii", "replace"))
                return DONE
            self.lat_challenge.append(now - self.t_start[j])
            response = hashlib.md5(
                b"%s:%s:00000001:%s:auth:%s" % (self.ha1[j], nonce, CNONCE, self.ha2)
            ).hexdigest().encode()
            auth = AUTHORIZATION % (
                self.devs[j], REALM.encode(), nonce, REQUEST_URI.encode(), response, CNONCE
            )
            self.step[j] = 2
            self.t_auth[j] = now
            return self._request(j, 2, auth)
        if step == 2 and cseq == b"2":
            if not (self.gen.echo or data.startswith(b"SIP/2.0 200")):
                self.fail(data[8:11].decode("ascii", "replace"))
                return DONE
            self.step[j] = 0
            self.lat_auth.append(now - self.t_auth[j])
            self.lat_total.append(now - self.t_start[j])
            return DONE
        return None  # a retransmitted answer to a step we are past

    def report(self) -> dict[str, object]:
        return {
            "latency_challenge_ms": summarize(self.lat_challenge),
            "latency_authorized_ms": summarize(self.lat_auth),
            "latency_exchange_ms": summarize(self.lat_total),
        }


class KeepaliveFlow(Flow):
    """One keepalive MESSAGE per item; item j belongs to device first + j % devices."""

    def __init__(
        self, gen: LoadGenerator, first: int, count: int, tag: bytes, devices: int
    ) -> None:
        super().__init__(gen, first, count, tag)
        self.devices = devices
        self.devs = [device_id(first + k).encode() for k in range(devices)]
        self.t_start = [0.0] * count
        self.waiting = bytearray(count)
        self.latency: list[float] = []

    def start(self, j: int, now: float) -> bytes:
        dev = self.devs[j % self.devices]
        body = KEEPALIVE_BODY % (j + 1, dev)
        self.t_start[j] = now
        self.waiting[j] = 1
        return MESSAGE % {
            b"ruri": REQUEST_URI.encode(),
            b"port": self.gen.port,
            b"branch": b"%s%d" % (self.tag, j),
            b"dev": dev,
            b"realm": REALM.encode(),
            b"tag": b"k" + dev[-6:],
            b"node": NODE_ID.encode(),
            b"callid": b"%s-%d" % (self.tag, j),
            b"cseq": 20,
            b"length": len(body),
            b"body": body,
        }

    def answer(self, j: int, data: bytes, now: float) -> bytes | None:
        if not self.waiting[j]:
            return None
        self.waiting[j] = 0
        if not (self.gen.echo or data.startswith(b"SIP/2.0 200")):
            self.fail(data[8:11].decode("ascii", "replace"))
            return DONE
        self.latency.append(now - self.t_start[j])
        return DONE

    def report(self) -> dict[str, object]:
        return {"latency_ms": summarize(self.latency)}


class LoadGenerator:
    def __init__(self, server: tuple[str, int], *, echo: bool, cpu_pid: int | None) -> None:
        self.server = server
        self.echo = echo
        self.cpu_pid = cpu_pid
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, 8 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0))
        sock.connect(server)
        sock.setblocking(False)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.poller = select.epoll()
        self.poller.register(sock.fileno(), select.EPOLLIN)
        self.node_requests = 0
        self.stray = 0

    # ----- measuring -----
    def _sample(self) -> tuple[float, float, float | None, dict[str, float]]:
        t = os.times()
        server = cpu_seconds(self.cpu_pid) if self.cpu_pid else None
        threads = thread_cpu_seconds(self.cpu_pid) if self.cpu_pid else {}
        return time.perf_counter(), t.user + t.system, server, threads

    def _phase_report(
        self,
        before: tuple[float, float, float | None, dict[str, float]],
        after: tuple[float, float, float | None, dict[str, float]],
        ops: int,
    ) -> dict[str, object]:
        wall = after[0] - before[0]
        own = after[1] - before[1]
        out: dict[str, object] = {
            "wall_s": round(wall, 4),
            "loadgen_cpu_util": round(own / wall, 3) if wall else None,
        }
        if before[2] is not None and after[2] is not None:
            cpu = after[2] - before[2]
            out["server_cpu_s"] = round(cpu, 4)
            out["server_cpu_util"] = round(cpu / wall, 4) if wall else None
            if ops:
                out["server_cpu_us_per_op"] = round(cpu / ops * 1e6, 2)
            out["server_rss_kib"] = rss_kib(self.cpu_pid)  # type: ignore[arg-type]
            # Threads other than the event loop's (the SQLite writer, the executor pool).
            out["server_cpu_s_by_thread"] = {
                name: round(sec - before[3].get(name, 0.0), 4)
                for name, sec in after[3].items()
                if sec - before[3].get(name, 0.0) > 0
            }
        return out

    # ----- the loop -----
    def run(
        self,
        flow: Flow,
        *,
        window: int | None = None,
        rate: float | None = None,
        max_inflight: int = 4000,
    ) -> dict[str, object]:
        """Drive `flow` for all its items; closed loop with `window`, else open loop at `rate`."""
        count = flow.count
        sock_send = self.sock.send
        sock_recv = self.sock.recv
        poll = self.poller.poll
        clock = time.perf_counter
        answer = flow.answer
        start = flow.start
        tag_prefix = flow.tag + b"-"
        # j -> [retransmit deadline, interval, first send time, bytes]
        inflight: dict[int, list] = {}
        limit = window if window is not None else max_inflight
        started = finished = 0
        retransmissions = 0
        gave_up = 0
        send_errors = 0
        next_check = 0.0
        before = self._sample()
        t0 = before[0]
        t_last = t0
        while finished < count:
            now = clock()
            due = count if rate is None else min(count, int((now - t0) * rate) + 1)
            while started < due and len(inflight) < limit:
                data = start(started, now)
                try:
                    sock_send(data)
                except (BlockingIOError, ConnectionRefusedError):
                    send_errors += 1
                inflight[started] = [now + T1, T1, now, data]
                started += 1
            got = 0
            while True:
                try:
                    data = sock_recv(65536)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    send_errors += 1
                    continue
                got += 1
                now = clock()
                at = data.find(b"\r\nCall-ID: ")
                if at < 0:
                    self.stray += 1
                    continue
                at += 11
                end = data.find(b"\r\n", at)
                call_id = data[at:end]
                if not call_id.startswith(tag_prefix):
                    if data.startswith(b"MESSAGE ") and not self.echo:
                        self._answer_node(data)
                    else:
                        self.stray += 1
                    continue
                j = int(call_id[len(tag_prefix) :])
                if j not in inflight:
                    continue  # duplicate answer after a retransmission
                nxt = answer(j, data, now)
                if nxt is None:
                    continue
                if nxt:
                    try:
                        sock_send(nxt)
                    except BlockingIOError:
                        send_errors += 1
                    entry = inflight[j]
                    entry[0] = now + T1
                    entry[1] = T1
                    entry[2] = now
                    entry[3] = nxt
                else:
                    del inflight[j]
                    finished += 1
                    t_last = now
            if now >= next_check:
                next_check = now + 0.01
                for j, entry in list(inflight.items()):
                    if entry[0] > now:
                        continue
                    if now - entry[2] >= GIVE_UP:
                        del inflight[j]
                        finished += 1
                        gave_up += 1
                        flow.fail("timeout")
                        continue
                    try:
                        sock_send(entry[3])
                    except BlockingIOError:
                        send_errors += 1
                    retransmissions += 1
                    entry[1] = min(entry[1] * 2, T2)
                    entry[0] = now + entry[1]
            if got == 0:
                if rate is not None and started < count:
                    wait = max(0.0, t0 + started / rate - clock())
                    timeout = min(wait, 0.01)
                else:
                    timeout = 0.01
                poll(timeout)
        after = self._sample()
        active = t_last - t0
        out: dict[str, object] = {
            "items": count,
            "rate_per_s": round(count / active, 1) if active > 0 else None,
            "offered_rate_per_s": rate,
            "window": window,
            "retransmissions": retransmissions,
            "gave_up": gave_up,
            "failures": flow.failures,
            "send_errors": send_errors,
        }
        out.update(self._phase_report(before, after, count))
        out.update(flow.report())  # type: ignore[attr-defined]
        return out

    def _answer_node(self, data: bytes) -> None:
        """200 OK to a request from the node (a DeviceInfo or Catalog query)."""
        self.node_requests += 1
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        keep = []
        for line in head[1:]:
            name = line.split(b":", 1)[0].strip().lower()
            if name in (b"via", b"from", b"call-id", b"cseq"):
                keep.append(line)
            elif name == b"to":
                keep.append(line + b";tag=dev")
        reply = b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n"
        try:
            self.sock.send(reply)
        except BlockingIOError:
            pass

    def pause(self, seconds: float) -> dict[str, object]:
        """Send nothing, keep answering the node; report the server's CPU over the pause."""
        before = self._sample()
        end = before[0] + seconds
        while time.perf_counter() < end:
            self.poller.poll(0.05)
            while True:
                try:
                    data = self.sock.recv(65536)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                if data.startswith(b"MESSAGE ") and not self.echo:
                    self._answer_node(data)
        return self._phase_report(before, self._sample(), 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", help="HOST:PORT of the node or echo server")
    target.add_argument("--spawn-node", metavar="TREE",
                        help="start bench/node_proc.py of this source tree and load it")
    parser.add_argument("--node-cpu", type=int, default=None, help="pin the spawned node here")
    parser.add_argument("--echo", action="store_true", help="the server is a bare echo loop")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--first", type=int, default=1, help="serial of the first device")
    parser.add_argument("--phases", default="reg,ka", help="comma-separated, in order")
    parser.add_argument("--window", type=int, default=256, help="transactions in flight")
    parser.add_argument("--reg-rate", default="0.5",
                        help="regrate: registrations per second, or a fraction (at most 1) "
                             "of the rate the reg phase reached")
    parser.add_argument("--ka-rounds", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=5.0, help="quiet phase, seconds")
    parser.add_argument("--idle", type=float, default=20.0, help="idle phase, seconds")
    parser.add_argument("--idle-interval", type=float, default=60.0,
                        help="keepalive interval per device in the idle phase")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="pause before quiet/idle so deferred work (SQLite) drains")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--cpu-pid", type=int, default=None, help="server PID to meter")
    args = parser.parse_args(argv)

    node = spawn_node(Path(args.spawn_node), args.node_cpu) if args.spawn_node else None
    try:
        return run(args, node)
    finally:
        if node is not None:
            node.stop()


class SpawnedNode:
    """bench/node_proc.py of a source tree, in its own process, steered over its stdin."""

    def __init__(self, tree: Path, cpu: int | None) -> None:
        tree = tree.resolve()
        self.data = tempfile.TemporaryDirectory(prefix="loadgen-node-")
        cmd = [sys.executable, str(tree / "bench" / "node_proc.py"), "--data-dir", self.data.name]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        self.port: int = ready["sip_port"]
        self.pid: int = ready["pid"]
        self.ready = ready

    def cmd(self, line: str) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.cmd("quit")
                self.proc.wait(30)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        self.data.cleanup()


def spawn_node(tree: Path, cpu: int | None) -> SpawnedNode:
    return SpawnedNode(tree, cpu)


def run(args: argparse.Namespace, node: SpawnedNode | None) -> int:
    pinned = pin(args.cpu)
    if node is not None:
        server, cpu_pid = ("127.0.0.1", node.port), node.pid
    else:
        host, _, port = args.server.rpartition(":")
        server, cpu_pid = (host, int(port)), args.cpu_pid
    gen = LoadGenerator(server, echo=args.echo, cpu_pid=cpu_pid)
    run_tag = os.urandom(3).hex().encode()
    n = args.devices
    result: dict[str, object] = {"pinned": pinned, "devices": n, "phases": {}}
    phases: dict[str, object] = result["phases"]  # type: ignore[assignment]
    factories: dict[str, Callable[[], dict[str, object]]] = {
        "reg": lambda: gen.run(RegisterFlow(gen, args.first, n, run_tag + b"r"),
                               window=args.window),
        "regrate": lambda: gen.run(RegisterFlow(gen, args.first + n, n, run_tag + b"q"),
                                   rate=reg_rate()),
        "ka": lambda: gen.run(KeepaliveFlow(gen, args.first, n * args.ka_rounds,
                                            run_tag + b"k", n), window=args.window),
        "quiet": lambda: gen.pause(args.quiet),
        "idle": lambda: gen.run(
            KeepaliveFlow(gen, args.first, max(1, int(n / args.idle_interval * args.idle)),
                          run_tag + b"i", n),
            rate=n / args.idle_interval),
    }

    def reg_rate() -> float:
        value = float(args.reg_rate)
        if value > 1:
            return value
        reached = phases.get("reg", {}).get("rate_per_s")  # type: ignore[union-attr]
        if not reached:
            raise SystemExit("--reg-rate as a fraction needs the reg phase before regrate")
        return round(value * reached)

    settled = False
    for name in args.phases.split(","):
        name = name.strip()
        if name in ("quiet", "idle") and not settled and args.settle > 0:
            gen.pause(args.settle)
            settled = True
        phases[name] = factories[name]()
    result["node_requests_answered"] = gen.node_requests
    result["stray_datagrams"] = gen.stray
    if node is not None:
        result["node"] = {"tree": str(Path(args.spawn_node).resolve()), "ready": node.ready,
                          "info": node.cmd("info")}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
