"""The whole-node benchmark's helpers (`bench/common.py`, `bench/node_bench.py`,
`bench/node_report.py`): the CPU of a process tree, with a child that is alive and one that was
reaped; the stream mix; what counts as shed in the node's overload report."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import common  # noqa: E402
import ingest_sender  # noqa: E402
import node_bench  # noqa: E402
import node_report  # noqa: E402

BURN_S = 0.3  # CPU seconds the grandchild spends, by its own clock

# A parent that starts a child burning BURN_S of CPU, says so, and on each line it reads:
# "reap" waits for the child (which has exited by then), "quit" ends.
PARENT = textwrap.dedent(f"""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", '''
    import sys, time
    while time.process_time() < {BURN_S}:
        pass
    print(time.process_time(), flush=True)
    sys.stdin.read()
    '''], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    print(child.pid, child.stdout.readline().strip(), flush=True)
    for line in sys.stdin:
        if line.strip() == "reap":
            child.stdin.close()
            child.wait()
            print("reaped", flush=True)
        else:
            break
""")


@pytest.fixture
def parent():
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    with proc:  # closes its pipes
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def test_tree_cpu_counts_a_child_alive_and_reaped(parent: subprocess.Popen[str]) -> None:
    child_pid, child_cpu = parent.stdout.readline().split()  # type: ignore[union-attr]
    assert float(child_cpu) >= BURN_S
    assert common.tree_pids(parent.pid) == [parent.pid, int(child_pid)]
    alive, processes = common.tree_cpu_seconds(parent.pid)
    assert processes == 2
    assert alive >= BURN_S - 0.02  # clock ticks of /proc/PID/stat
    own = common.tree_cpu_seconds(int(child_pid))[0]
    assert own <= alive

    parent.stdin.write("reap\n")  # type: ignore[union-attr]
    parent.stdin.flush()  # type: ignore[union-attr]
    assert parent.stdout.readline().strip() == "reaped"  # type: ignore[union-attr]
    assert common.tree_pids(parent.pid) == [parent.pid]
    reaped, processes = common.tree_cpu_seconds(parent.pid)
    assert processes == 1
    assert reaped >= alive - 0.02  # the child's time is now in the parent's cutime


def test_tree_of_a_process_that_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    assert common.tree_pids(proc.pid) == []
    assert common.tree_cpu_seconds(proc.pid) == (0.0, 0)


def test_stream_kinds_dealt_round_robin() -> None:
    kinds = node_bench.stream_kinds("720p@2,1080p@8000k, 1920x1080@4", 5)
    assert kinds == ["1280x720@2000k", "1920x1080@8000k", "1920x1080@4000k",
                     "1280x720@2000k", "1920x1080@8000k"]
    assert [ingest_sender.clip_spec(k) for k in kinds[:3]] == [
        (1280, 720, 2_000_000), (1920, 1080, 8_000_000), (1920, 1080, 4_000_000)]


@pytest.mark.parametrize("text", ["720p@0", "721x480@4", "big@4", "720p@x"])
def test_stream_kind_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ingest_sender.clip_spec(text)


def test_shed_channels_found_whatever_the_report_looks_like() -> None:
    ours = {"31011200001310000001", "31011200001310000002", "31011200001310000003"}
    report = {"state": "shedding", "shed": [{"channel": "31011200001310000002"}],
              "processes": {"w1": {"31011200001310000003": "shed", "streams": 2}},
              "last_decision": "31011200009990000001 (not ours)"}
    assert node_bench.channel_ids_in(report, ours) == {"31011200001310000002",
                                                       "31011200001310000003"}
    assert node_bench.channel_ids_in({"state": "ok", "shed": []}, ours) == set()


def test_loss_of_kept_and_shed_streams() -> None:
    result = {"channels": ["a", "b", "c"], "shed": ["c"], "lost_per_stream": [0, 5, 100],
              "sent_by_stream": [100, 100, 100]}
    split = node_report.loss_split(result)
    assert split["kept"] == {"n": 2, "lost": 5, "sent": 200, "with_loss": 1}
    assert split["shed"] == {"n": 1, "lost": 100, "sent": 100, "with_loss": 1}


def test_finish_counts_loss_per_stream() -> None:
    out = {"sent_per_stream": [100, 100], "window_sent": 100.0, "sent_by_t1": 150.0}
    node_bench.finish(out, [100, 90], 0, 140, cpu_s=0.5, seconds=1.0)
    assert out["lost"] == 10 and out["streams_with_loss"] == 1
    assert out["max_stream_loss"] == pytest.approx(0.10)
    assert out["window_packets"] == pytest.approx(95.0)  # sent in the window, less 5 % lost
    assert out["us_per_packet"] == pytest.approx(1e6 * 0.5 / 95.0)
    assert out["backlog_ms"] == pytest.approx(100.0)  # 10 packets behind at 100 packets/s


def test_finish_leaves_out_streams_that_ended() -> None:
    # Stream 2 was shed at the window's start: its counters left the node with it, so it is
    # neither lost nor delivered, and its packets sent before it stopped are no backlog.
    out = {"sent_per_stream": [100, 100, 40], "window_sent": 100.0, "sent_by_t1": 190.0}
    node_bench.finish(out, [100, 90, 0], 0, 140, cpu_s=0.5, seconds=1.0,
                      gone=frozenset({2}), gone_by_t1=frozenset({2}))
    assert out["lost_per_stream"] == [0, 10, None]
    assert out["lost"] == 10 and out["streams_with_loss"] == 1 and out["streams_gone"] == 1
    assert out["window_packets"] == pytest.approx(95.0)
    assert out["backlog_ms"] == pytest.approx(100.0)
    split = node_report.loss_split({**out, "channels": ["a", "b", "c"], "shed": ["c"]})
    assert split["kept"] == {"n": 2, "lost": 10, "sent": 200, "with_loss": 1}
    assert split["shed"] == {"n": 1, "lost": 0, "sent": 0, "with_loss": 0}  # not known


def test_window_cell_of_the_kept_streams() -> None:
    assert node_report.window({}) == "–"
    assert node_report.window({"window_kept": {"streams": 180, "packets": 99_000, "lost": 0,
                                               "with_loss": 0}}) == "180, 0, 0"
    assert node_report.window({"window_kept": {"streams": 180, "packets": 99_000,
                                               "lost": 1_000, "with_loss": 7}}) \
        == "180, 1,000 (1.00%), 7"


def test_goal_line_of_an_overload_pass_at_150_percent() -> None:
    args = SimpleNamespace(transports=["udp"], workers=[1], recording=[True], streams=[180])
    result = {"kind": "node", "transport": "udp", "streams": 285, "recording": True,
              "workers": 1, "overload": 1.5, "channels": ["a", "b", "c"], "shed": ["c"],
              "lost_per_stream": [0, 12, None], "sent_by_stream": [1000, 1000, 300],
              "window_kept": {"streams": 2, "packets": 900, "lost": 0, "with_loss": 0}}
    lines = node_report.goals([result], args)
    line = next(x for x in lines if "150 %" in x)
    assert "kept 2 and shed 1" in line and "**met**" in line
    assert "0.60 % lost on 1 streams" in line
    result["window_kept"] = {"streams": 2, "packets": 900, "lost": 3, "with_loss": 1}
    line = next(x for x in node_report.goals([result], args) if "150 %" in x)
    assert "lost 3 packets" in line and "**not met**" in line


def test_sender_stops_a_stream_when_told(tmp_path: Path) -> None:
    # Two small streams to two sockets of ours; one is stopped half a second in, as the
    # bench does on the node's BYE. What each socket got is what the sender says it sent.
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.setblocking(False)
        targets = tmp_path / "targets.json"
        targets.write_text(json.dumps({"host": "127.0.0.1",
                                       "ports": [s.getsockname()[1] for s in socks],
                                       "clips": ["320x240@300k"] * 2}))
        out = tmp_path / "sent.json"
        with subprocess.Popen(
            [sys.executable, str(Path(ingest_sender.__file__)), "--targets", str(targets),
             "--duration", "1.5", "--out", str(out), "--control"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
            try:
                line = proc.stdout.readline()  # type: ignore[union-attr]
                assert line.startswith("START "), line
                time.sleep(max(0.0, float(line.split()[1]) + 0.5 - time.monotonic()))
                proc.stdin.write("STOP 1\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
                assert proc.wait(120) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
        result = json.loads(out.read_text())
        got = [0, 0]
        for i, sock in enumerate(socks):
            while True:
                try:
                    sock.recv(2048)
                except BlockingIOError:
                    break
                got[i] += 1
    finally:
        for sock in socks:
            sock.close()
    assert result["stopped"] == [1]
    full, stopped = result["sent_packets"]
    assert 0 < stopped < 0.6 * full  # about a third of the run's 1.5 s
    assert got == result["sent_packets"]


def pass_result(kind: str, us: float, share: float, *, recording: bool = False,
                workers: int = 1, n: int = 400, lost: int = 0) -> dict:
    return {"kind": kind, "transport": "udp", "streams": n, "recording": recording,
            "workers": workers, "run": 1, "us_per_packet": us, "cpu_share": share,
            "lost": lost, "streams_with_loss": int(lost > 0), "max_stream_loss": 0.0,
            "backlog_ms": 0.0, "window_sent": 1000.0, "seconds": 1.0, "processes": workers,
            "pinned": "cpu 0", "sender_cpu_share": 0.1, "late_p99_ms": 0.0, "other_load": 0.0}


def test_report_states_each_goal_against_the_bare_loop_of_its_run() -> None:
    results = [pass_result("bare", 2.0, 0.3),
               pass_result("node", 4.8, 0.7),  # 2.4x the bare loop: met
               pass_result("node", 5.5, 0.9, recording=True),  # 90 % of the core: not met
               pass_result("node", 5.0, 0.6, recording=True, workers=2)]
    args = node_bench.parse(["--streams", "400", "--transport", "udp", "--runs", "1"])
    text = node_report.report(results, args, {"cpu": "x", "nproc": 2, "kernel": "k",
                                              "python": "3", "loadavg": "0", "date": "d",
                                              "commit": "c"}, {}, "cmd", 60.0, [])
    assert "| UDP | 400 | ingest, 1 worker | 1,000 | 70.0% | 4.80 | 2.40 |" in text
    assert "2.40x the bare loop's µs/packet, goal ≤ 2.5x: **met**" in text
    assert "90% of the core (5.50 µs/packet), no loss; goal zero loss at ≤ 85%: **not met**" \
        in text
    assert "one worker 400 streams, two at least 400" in text  # the sweep's top: a bound


def test_media_lines_go_into_the_media_section(tmp_path: Path) -> None:
    config, _, _ = node_bench.node_config(tmp_path, 10, "udp", True, 1, 10,
                                          media_extra=["receive_buffer_kib: 1024"])
    assert "\n  receive_buffer_kib: 1024\n" in config.read_text()
    assert node_bench.check_config(config, node_bench.ROOT) is None
    config.write_text(config.read_text().replace("1024", "1"))
    problem = node_bench.check_config(config, node_bench.ROOT)
    assert problem is not None and "media.receive_buffer_kib" in problem


def test_a_workers_value_the_node_refuses_is_named(tmp_path: Path) -> None:
    config, _, _ = node_bench.node_config(tmp_path, 10, "udp", True, 2, 10)
    assert "workers: 2" in config.read_text()
    assert node_bench.check_config(config, node_bench.ROOT) is None
    config.write_text(config.read_text().replace("workers: 2", "workers: 99"))
    problem = node_bench.check_config(config, node_bench.ROOT)
    assert problem is not None and "media.workers" in problem
