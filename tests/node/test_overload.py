"""Overload without collapse (media/overload.py): the guard's decisions on fed loads and a fake
clock, what a media process measures of itself, the settings, and a node on loopback that
sheds the newest of its simulated cameras' streams and says so in /healthz and /api/stats."""

from __future__ import annotations

import dataclasses
import math
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest

from recorder.service import MAX_QUEUE_BYTES
from sensing_node.media.overload import (
    MAIN,
    Candidate,
    Load,
    LoadMeter,
    OverloadGuard,
    recorder_backlog,
    tcp_queues,
    udp_sockets,
)
from sensing_node.settings import ConfigError, parse_settings
from sensing_node.sim.camera import CameraConfig, SimulatedCamera, channel_ids

from .conftest import PASSWORD, StartNode, wait_for

TICK = 0.5
#: 20 streams playing, started one a second (the last is the newest)
STREAMS = [Candidate(f"3101120000131000{n:04d}", float(n)) for n in range(20)]
HOT = Load(lag_s=0.0, streams=20, lossy=8, packets=7000, lost=200)  # 8 of 20 losing packets
CALM = Load(lag_s=0.002, streams=20, lossy=0, packets=7200, busy=0.5)


@dataclass
class Run:
    """A guard fed one load a tick on a fake clock."""

    policy: str = "shed-lowest-priority"
    priorities: dict[str, int] = field(default_factory=dict)
    now: float = 0.0
    candidates: list[Candidate] = field(default_factory=lambda: list(STREAMS))

    def __post_init__(self) -> None:
        self.guard = OverloadGuard(lambda: self.policy,
                                   lambda channel: self.priorities.get(channel, 0),
                                   wall=lambda: 1_700_000_000.0 + self.now)
        self.shed: list[list[str]] = []  # each step's channels, in order

    def tick(self, load: Load, seconds: float = TICK) -> list[str]:
        """Feed `load` each tick for `seconds`; the channels shed meanwhile (stopped, so no
        longer candidates)."""
        out: list[str] = []
        for _ in range(round(seconds / TICK)):
            self.now += TICK
            victims = self.guard.feed(MAIN, self.now, load, self.candidates)
            if victims:
                self.shed.append(victims)
                out += victims
                self.candidates = [c for c in self.candidates if c.channel_id not in victims]
        return out

    @property
    def state(self) -> str:
        return self.guard.processes[MAIN].state


def name(n: int) -> str:
    return STREAMS[n].channel_id


# ----- detection -----


def test_one_lossy_camera_is_not_overload() -> None:
    run = Run()
    bad_camera = Load(lag_s=0.003, streams=20, lossy=1, packets=7000, lost=300)
    assert run.tick(bad_camera, 30.0) == []
    assert run.state == "ok"
    assert run.guard.problems() == []
    # Two cameras out of twenty are not a spread either (at least 3 and a quarter of them).
    assert run.tick(Load(lag_s=0.003, streams=20, lossy=4), 30.0) == []
    assert run.state == "ok"


def test_spread_loss_sustained_sheds_the_newest_first() -> None:
    run = Run(policy="shed-newest")
    # Hot for less than sustain_s (3 s) after the first tick: nothing yet.
    assert run.tick(HOT, 3.0) == []
    assert run.state == "ok"
    assert run.tick(HOT, TICK) == [name(19)]
    assert run.state == "overloaded"
    assert run.guard.admit(name(19)) is not None
    assert run.guard.admit(name(18)) is None


def test_a_saturated_process_losing_on_a_few_streams_at_a_time_is_overload() -> None:
    # 3 of 20 streams lose packets each tick (under a quarter): overload only when busy.
    run = Run(policy="shed-newest")
    few = Load(lag_s=0.01, streams=20, lossy=3, packets=7000, lost=40, busy=0.7)
    assert run.tick(few, 10.0) == [] and run.state == "ok"
    saturated_no_loss = Load(lag_s=0.01, streams=20, lossy=0, packets=7200, busy=0.99)
    assert run.tick(saturated_no_loss, 10.0) == [] and run.state == "ok"
    saturated_one_camera = Load(lag_s=0.01, streams=20, lossy=2, packets=7100, lost=30,
                                busy=0.99)
    assert run.tick(saturated_one_camera, 10.0) == [] and run.state == "ok"
    saturated = Load(lag_s=0.01, streams=20, lossy=3, packets=7000, lost=40, busy=0.95)
    # Sized to bring it to 90 % busy: 1 - (1 - 40/7040) x 0.9 / 0.95 = 6 % of 20, 2 streams.
    assert run.tick(saturated, 3.5) == [name(19), name(18)]
    assert run.state == "overloaded"
    decision = run.guard.last_decision
    assert decision is not None and decision["action"] == "shed"
    assert "3 of 20 streams lost packets" in decision["reason"]


def test_late_wake_up_sustained_is_overload_but_a_spike_is_not() -> None:
    run = Run(policy="shed-newest")
    late = Load(lag_s=0.3, streams=20)
    for _ in range(10):  # one late tick in four: a GC pause, a slow query
        assert run.tick(late, TICK) == []
        assert run.tick(CALM, 3 * TICK) == []
    assert run.state == "ok"
    assert run.tick(late, 3.5) == [name(19)]


def started_now(run: Run) -> list[Candidate]:
    """`STREAMS`, all started just now, in their order (a node that has just started them)."""
    return [Candidate(c.channel_id, run.guard.wall() - 0.01 * (len(STREAMS) - n))
            for n, c in enumerate(STREAMS)]


#: a process starting its 20 streams: saturated, a wake-up 0.2 s late, its queues growing by
#: 11 % of what it takes, its fullest socket at 30 % of its receive buffer
STARTING = Load(lag_s=0.2, streams=20, packets=3600, busy=0.99, queued=2304 * 1800,
                grew=2304 * 400, fullest=0.3)


def test_a_start_rides_out_its_backlog_while_nothing_is_lost() -> None:
    # The same ticks in a process whose streams run for long: overload within 3.5 s.
    assert Run(policy="shed-newest").tick(STARTING, 3.5)[:1] == [name(19)]
    # Starting its streams (a node's start), it is not: the kernel's buffers hold what its
    # queues do with room to spare.
    run = Run(policy="shed-newest")
    run.candidates = started_now(run)
    assert run.tick(STARTING, 9.5) == [] and run.state == "ok"
    assert run.guard.as_json()["processes"][MAIN]["starting"] is True
    # Once starting_s (10 s) is over, the same ticks are overload again.
    assert run.tick(STARTING, 4.0)[:1] == [name(19)]
    assert run.guard.as_json()["processes"][MAIN]["starting"] is False


def test_a_start_that_falls_a_second_behind_or_loses_packets_is_overload() -> None:
    # An overloaded start: a socket's queue at half its buffer, nothing lost yet.
    behind = Run(policy="shed-newest")
    behind.candidates = started_now(behind)
    late = dataclasses.replace(STARTING, fullest=0.5)
    assert behind.guard.hot(late, starting=True)
    assert not behind.guard.hot(STARTING, starting=True)
    assert not behind.guard.hot(dataclasses.replace(late, busy=0.8), starting=True)
    # Seconds from the kernel dropping: a step at once, with no sustain_s of hot ticks.
    assert behind.tick(late, TICK)[:1] == [name(19)] and behind.state == "overloaded"
    decision = behind.guard.last_decision
    assert decision is not None
    assert "starting its streams, the fullest receive queue at 50% of its buffer" \
        in decision["reason"]
    # Spread loss while starting sheds as it always does.
    lossy = Run(policy="shed-newest")
    lossy.candidates = started_now(lossy)
    assert lossy.tick(HOT, 3.5) == [name(19)]
    # A wake-up a second late too.
    stalled = Run(policy="shed-newest")
    stalled.candidates = started_now(stalled)
    assert stalled.tick(Load(lag_s=1.2, streams=20), 3.5) == [name(19)]
    # A few streams started among many that run for long: no start.
    few = Run(policy="shed-newest")
    few.candidates = [*STREAMS[:16], *started_now(few)[16:]]
    assert few.tick(STARTING, 3.5)[:1] == [name(19)]


def test_shed_lowest_priority_order_and_ties_newest() -> None:
    priorities = {name(n): 5 for n in range(20)}
    priorities |= {name(3): 1, name(7): 1, name(12): 2, name(19): 9}
    run = Run(priorities=priorities)
    run.guard.shed_share = run.guard.shed_share_max = 0.2  # 4 streams a step
    shed = run.tick(HOT, 3.5)
    # priority 1 (newest first: 7, then 3), then 2, then the newest of the 5s (18, not 19: 9)
    assert shed == [name(7), name(3), name(12), name(18)]
    assert [item["priority"] for item in run.guard.as_json()["shed"]] == [1, 1, 2, 5]


def test_shed_newest_ignores_priority() -> None:
    run = Run(policy="shed-newest", priorities={name(19): 100, name(18): 100})
    run.guard.shed_share = run.guard.shed_share_max = 0.15  # 3 streams a step
    assert run.tick(HOT, 3.5) == [name(19), name(18), name(17)]


def test_steps_settle_then_shed_more_until_the_signal_clears() -> None:
    run = Run(policy="shed-newest")
    assert run.tick(HOT, 3.5) == [name(19)]  # 5 % of 20: one stream
    # settle_s (2 s) then a fresh sustain_s (3 s) of hot ticks before the next step
    assert run.tick(HOT, 4.5) == []
    assert run.tick(HOT, TICK) == [name(18)]
    # Loss spread and heavy (30 % of packets): the step follows the loss share.
    heavy = Load(lag_s=0.0, streams=18, lossy=18, packets=7000, lost=3000)
    assert run.tick(heavy, 5.0) == [name(n) for n in (17, 16, 15, 14, 13, 12)]  # 30 % of 18
    # Not calm (one tick in two still late) but no longer hot: no more shedding, and the
    # overload holds until clear_s (5 s) of calm ticks only.
    between = Load(lag_s=0.05, streams=13, lossy=1)
    assert run.tick(between, 20.0) == []
    assert run.state == "overloaded"
    run.tick(CALM, 4.5)
    assert run.state == "overloaded"
    run.tick(CALM, TICK)
    assert run.state == "ok"
    assert run.guard.last_decision is not None
    assert run.guard.last_decision["action"] == "clear"


@pytest.mark.parametrize(
    ("loads", "share"),
    [
        # 150 % of what the process carries: it takes two thirds, the rest is lost; a
        # third at most in one step.
        ([Load(0.02, 30, 30, 6000, 3000, busy=1.0)] * 6, 1 / 3),
        # 110 %: saturated, a little lost on a few streams at a time: down to 90 % busy.
        ([Load(0.02, 30, 4, 9900, 100, busy=1.0)] * 6, 1 - 0.99 * 0.9),
        # The same loss, busy on average under busy_hot: the loss share, at least 5 %.
        ([Load(0.02, 30, 4, 9900, 100, busy=0.8)] * 6, 0.05),
        # Late wake-ups and spread loss with no busy figure: the loss share over the ticks
        # since the last step, not the last tick's alone.
        ([Load(0.2, 30, 10, 9000, 1000), Load(0.2, 30, 10, 10000, 0)] * 3, 0.05),
        ([Load(0.2, 30, 10, 8000, 2000), Load(0.2, 30, 10, 10000, 0)] * 3, 0.10),
        # Queues that grew count as lost: 1,000 packets' worth a tick of 9,000 taken.
        ([Load(0.01, 30, 0, 9000, 0, busy=0.5, grew=2304 * 1000)] * 6, 0.10),
        ([], 0.05),
    ],
)
def test_a_step_is_sized_to_the_overload(loads: list[Load], share: float) -> None:
    assert OverloadGuard().step_share(loads) == pytest.approx(share)


def test_a_known_trend_sizes_the_step_instead_of_the_saw_tooth() -> None:
    # The ticks since the last step end on the high side of the saw-tooth (30 MB more than
    # they began with); the trend says the queues rise by 10 % of the intake.
    loads = [Load(0.01, 30, 0, 9000, 0, busy=0.5, grew=30_000_000)] + \
        [Load(0.01, 30, 0, 9000, 0, busy=0.5)] * 5
    guard = OverloadGuard()
    swing = 30_000_000 / 2304  # 13,021 packets' worth
    assert guard.step_share(loads) == pytest.approx(swing / (54_000 + swing))  # 19 %
    assert guard.step_share(loads, 0.10) == pytest.approx(0.1 / 1.1)
    assert guard.step_share(loads, -0.2) == pytest.approx(0.05)  # falling: the floor


def test_a_process_at_150_percent_sheds_a_third_in_one_step() -> None:
    run = Run(policy="shed-newest")
    run.candidates = [Candidate(f"3101120000131001{n:04d}", float(n)) for n in range(30)]
    over = Load(lag_s=0.02, streams=30, lossy=30, packets=6000, lost=3000, busy=1.0)
    assert len(run.tick(over, 3.5)) == 10
    assert run.guard.last_decision is not None
    assert "10 of 30 streams" in run.guard.last_decision["reason"]


# ----- cool-down and coming back -----


def shed_three(run: Run) -> list[str]:
    run.guard.shed_share = run.guard.shed_share_max = 0.15  # 3 streams a step
    shed = run.tick(HOT, 3.5)
    assert len(shed) == 3
    return shed


def test_shed_channels_come_back_one_at_a_time_after_cool_down_most_valuable_first() -> None:
    run = Run(priorities={name(19): -1, name(18): 3})
    shed = shed_three(run)
    assert shed == [name(19), name(17), name(16)]  # -1 first, then the newest of 0
    refusal = run.guard.admit(name(17))
    assert refusal is not None and refusal.startswith("shed: media overload (shed-lowest-priority")
    # Calm at once, but the cool-down (60 s) holds every one of them.
    run.tick(CALM, 59.0)
    assert set(run.guard.shed) == set(shed)
    # Then one every readmit_every_s (10 s), the reverse of the shedding order.
    back = []
    for _ in range(3):
        before = set(run.guard.shed)
        run.tick(CALM, 10.0)
        back += sorted(before - set(run.guard.shed))
    assert back == [name(16), name(17), name(19)]
    assert all(run.guard.admit(channel) is None for channel in shed)
    assert run.guard.problems() == []


def test_a_busy_loop_keeps_shed_channels_out() -> None:
    run = Run(policy="shed-newest")
    shed = shed_three(run)
    busy = Load(lag_s=0.002, streams=17, packets=6000, busy=0.93)  # calm, but no headroom
    run.tick(busy, 300.0)
    assert set(run.guard.shed) == set(shed)
    run.tick(CALM, 5.0)  # headroom again: the first comes back
    assert len(run.guard.shed) == 2


def test_shed_again_soon_after_coming_back_doubles_the_cool_down() -> None:
    run = Run(policy="shed-newest")
    run.tick(HOT, 3.5)
    assert run.guard.shed[name(19)].strikes == 1
    run.tick(CALM, 70.0)
    assert name(19) not in run.guard.shed
    run.candidates.append(Candidate(name(19), run.now))  # subscribed again: the newest
    assert run.tick(HOT, 3.5) == [name(19)]
    item = run.guard.shed[name(19)]
    assert item.strikes == 2
    assert item.until - item.since == pytest.approx(120.0)
    refusal = run.guard.admit(name(19))
    assert refusal is not None and "at least 120 s more" in refusal


def test_policy_off_reports_but_sheds_nothing_and_lets_the_shed_back() -> None:
    run = Run(policy="shed-newest")
    run.tick(HOT, 3.5)
    assert name(19) in run.guard.shed
    run.policy = "off"
    assert run.tick(HOT, 30.0) == []
    assert run.guard.shed == {}
    assert run.state == "overloaded"
    problems = run.guard.problems()
    assert len(problems) == 1 and problems[0].startswith("media overload in process main")


# ----- what /healthz and /api/stats are given -----


def test_problems_and_json_name_the_shed_channels() -> None:
    run = Run(policy="shed-newest", priorities={name(19): 7})
    run.tick(HOT, 3.5)
    problems = run.guard.problems()
    assert problems[0] == ("media overload in process main: wake-up 0.000 s late, 8 of 20 "
                           "streams lost packets (200 of 7200)")
    assert problems[1].startswith("1 channel(s) shed for media overload (shed-newest)")
    assert problems[1].endswith(name(19))
    body = run.guard.as_json()
    assert body["state"] == "overloaded" and body["policy"] == "shed-newest"
    assert body["lag_s"] == 0.0
    assert body["processes"][MAIN]["lossy"] == 8
    [item] = body["shed"]
    assert item["channel_id"] == name(19) and item["priority"] == 7
    assert item["since"] == 1_700_000_003.5 and item["cool_down_s"] == 60.0
    assert body["last_decision"]["action"] == "shed"
    assert body["last_decision"]["channels"] == [name(19)]


def test_each_decision_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    run = Run(policy="shed-newest")
    with caplog.at_level("INFO", logger="sensing_node.media.overload"):
        run.tick(HOT, 4.0)  # overload and one step, then settling
        run.tick(CALM, 64.0)  # clear, then one channel back
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 4, messages
    assert "cannot keep up" in messages[0]
    assert f"streams shed: {name(19)}" in messages[1]
    assert "keeping up again" in messages[2]
    assert f"may come back: {name(19)}" in messages[3]


# ----- what a media process measures -----


class FakeStream:
    def __init__(self, channel_id: str, started: float, transport: str = "udp",
                 port: int = 0) -> None:
        self.channel_id = channel_id
        self.started_at = started
        self.transport = transport
        self.state = "playing"
        self.receiver = SimpleNamespace(port=port)
        self.counts = {"packets": 0, "lost": 0}

    def counter(self, counter: str) -> int:
        return self.counts[counter]


def test_load_meter_counts_deltas_per_stream() -> None:
    kernel = {30000: (5, 0), 30002: (0, 4608)}  # port: (drops, queued bytes)
    tcp = {30004: 1000}  # port: bytes waiting on its established connection
    cpu = [10.0]
    meter = LoadMeter(cpu=lambda: cpu[0], process_cpu=None,
                      sockets=lambda ports: {p: kernel[p] for p in ports if p in kernel},
                      tcp=lambda ports: {p: tcp[p] for p in ports if p in tcp},
                      buffer_bytes=lambda: 2304 * 100)
    a = FakeStream("a", 1.0, port=30000)
    b = FakeStream("b", 2.0, port=30002)
    c = FakeStream("c", 3.0, transport="tcp-passive", port=30004)
    load, carried = meter.sample(100.0, 0.004, [a, b, c])
    assert load.streams == 3 and load.lossy == 0 and load.busy is None
    assert [x.channel_id for x in carried] == ["a", "b", "c"]
    a.counts = {"packets": 350, "lost": 0}
    b.counts = {"packets": 340, "lost": 10}
    c.counts = {"packets": 360, "lost": 0}
    kernel[30000] = (9, 0)  # a's socket overflowed: lost in the kernel before any sequence check
    kernel[30002] = (0, 2304 * 12)  # b's queue grew by 10 datagrams
    kernel[30006] = (0, 2304 * 50)  # d's is new: its queue counts, its growth not yet
    tcp[30004] = 1000 + 1414 * 5  # c's connection: 5 packets more wait
    cpu[0] = 10.3
    d = FakeStream("d", 4.0, port=30006)
    d.counts = {"packets": 5000, "lost": 400}  # new since the last tick: counted from now on
    load, _ = meter.sample(100.5, 0.2, [a, b, c, d])
    assert load == Load(lag_s=0.2, streams=4, lossy=2, packets=1050, lost=10, drops=4,
                        busy=pytest.approx(0.6), queued=2304 * 62 + 1000 + 1414 * 5,
                        grew=2304 * 10 + 1414 * 5, fullest=0.5)  # d's UDP queue, not c's TCP
    c.state = "retrying"  # not playing: neither counted nor a candidate
    load, carried = meter.sample(101.0, -0.001, [a, b, c, d])
    assert load.streams == 3 and load.lag_s == 0.0
    assert [x.channel_id for x in carried] == ["a", "b", "d"]
    meter.fed = HOT
    assert meter.sample(101.5, 0.0, [a])[0] is HOT


def test_streams_sharing_one_port_count_its_queue_and_drops_once() -> None:
    # media.single_port: three streams on one UDP port, one on its own.
    kernel = {10000: (0, 2304 * 100), 30000: (0, 0)}
    meter = LoadMeter(cpu=lambda: 0.0, process_cpu=None,
                      sockets=lambda ports: {p: kernel[p] for p in ports if p in kernel},
                      tcp=lambda ports: {})
    shared = [FakeStream(f"s{n}", float(n), port=10000) for n in range(3)]
    own = FakeStream("own", 5.0, port=30000)
    streams = [*shared, own]
    assert meter.sample(100.0, 0.0, streams)[0].queued == 2304 * 100
    for stream in streams:
        stream.counts = {"packets": 300, "lost": 0}
    kernel[10000] = (7, 2304 * 160)  # the shared socket overflowed and its queue grew
    load, _ = meter.sample(100.5, 0.0, streams)
    assert load.queued == 2304 * 160 and load.grew == 2304 * 60 and load.drops == 7
    assert load.lossy == 0  # which of the three lost shows in their sequence gaps
    shared[1].counts = {"packets": 600, "lost": 4}
    kernel[30000] = (2, 0)
    load, _ = meter.sample(101.0, 0.0, streams)
    assert load.lossy == 2 and load.drops == 2 and load.grew == 0


def test_tcp_queues_reads_a_real_connection_and_leaves_the_listener_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        assert tcp_queues([port]) == {}  # listening only: nothing established
        with socket.create_connection(("127.0.0.1", port)) as client:
            server, _ = listener.accept()
            with server:
                client.sendall(b"\x00" * 50_000)
                found: dict[int, int] | None = {}
                for _ in range(200):  # bounded: loopback delivers within milliseconds
                    found = tcp_queues([port])
                    if found and found.get(port) == 50_000:
                        break
                    time.sleep(0.01)
                assert found == {port: 50_000}  # the server's end; the client's port differs
                assert len(server.recv(65536)) > 0
    assert tcp_queues([port], tables=("/nonexistent/tcp",)) is None


@pytest.mark.parametrize(("cores", "busy"), [(1, 0.96), (2, 0.6)])
def test_load_meter_busy_counts_the_whole_process_per_cpu(cores: int, busy: float) -> None:
    # The loop's thread ran 0.3 s of the 0.5 s tick; the process (the recorder's threads with
    # it) 0.48 s: on one CPU the process was saturated, on two the loop was the busiest.
    thread, process = [10.0], [20.0]
    meter = LoadMeter(cpu=lambda: thread[0], process_cpu=lambda: process[0],
                      cores=lambda: cores, sockets=lambda ports: {})
    meter.sample(100.0, 0.0, [])
    thread[0], process[0] = 10.3, 20.48
    load, _ = meter.sample(100.5, 0.0, [])
    assert load.busy == pytest.approx(busy)


def test_udp_sockets_reads_a_real_queue_and_overflow() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        assert udp_sockets([port]) == {port: (0, 0)}
        for _ in range(5):  # not read yet: queued, as the kernel charges them
            sender.sendto(b"x" * 1400, ("127.0.0.1", port))
        found = udp_sockets([port])
        assert found is not None
        drops, queued = found[port]
        assert drops == 0 and 5 * 1400 < queued <= 5 * 4 * 1400
        for _ in range(500):  # never read: the buffer overflows
            sender.sendto(b"x" * 1400, ("127.0.0.1", port))
        found = udp_sockets([port])
        assert found is not None and found[port][0] > 0
        receiver.setblocking(False)
        while True:
            try:
                receiver.recv(2048)
            except BlockingIOError:
                break
        found = udp_sockets([port])
        assert found is not None and found[port][1] == 0  # read: nothing queued
    assert udp_sockets([port], tables=("/nonexistent/udp",)) is None


def test_a_saturated_process_falling_behind_is_overload_before_it_loses_anything() -> None:
    # 20 streams, nothing lost yet, the process 98 % busy and its streams' receive queues
    # growing by 12 % of what it takes: hot, and the step sheds that share (and a bit more,
    # down to 90 % busy) before the kernel drops anything. (The per-tick rule alone: the
    # trend over trend_s is the next test's.)
    run = Run(policy="shed-newest")
    run.guard.trend_s = math.inf
    keeping_up = Load(lag_s=0.01, streams=20, packets=3600, busy=0.98, queued=2304 * 40,
                      grew=2304 * 20)  # under backlog_share (2 %) of 3,600 packets
    assert run.tick(keeping_up, 10.0) == [] and run.state == "ok"
    behind = Load(lag_s=0.01, streams=20, packets=3600, busy=0.98, queued=2304 * 4000,
                  grew=2304 * 432)
    assert run.guard.hot(behind) and not run.guard.hot(keeping_up)
    shed = run.tick(behind, 3.5)
    # lost or queued: 432 of 4,032 packets a tick (10.7 %); to 90 % busy:
    # 1 - (1 - 0.107) x 0.9 / 0.98 = 18 % of 20 streams, 4 of them
    assert shed == [name(n) for n in (19, 18, 17, 16)]
    decision = run.guard.last_decision
    assert decision is not None and "receive queues grew by 972 KiB" in decision["reason"]
    # Growth without a busy process (a stall, say) is the lag rule's business, not this one's.
    assert not OverloadGuard().hot(Load(lag_s=0.01, streams=20, packets=3600, busy=0.5,
                                        grew=2304 * 1000))


def saw_tooth(rise: float, busy: float, packets: int = 27000) -> list[Load]:
    """Two ticks of a busy process whose receive queues swing by 30 MB from one tick to the
    next (at capacity too: key-frame bursts, the recorder's batches) and rise by `rise` of
    its intake underneath."""
    net = round(rise * packets * 2304)
    swing = 30_000_000
    return [Load(lag_s=0.01, streams=20, packets=packets, busy=busy, grew=swing + net),
            Load(lag_s=0.01, streams=20, packets=packets, busy=busy, grew=-swing + net)]


def test_receive_queues_rising_under_the_saw_tooth_are_overload_before_any_loss() -> None:
    # At capacity the queues swing but do not rise: never overload, however long.
    run = Run(policy="shed-newest")
    for _ in range(60):
        assert run.tick(saw_tooth(0.0, 0.98)[0], TICK) == []
        assert run.tick(saw_tooth(0.0, 0.98)[1], TICK) == []
    assert run.state == "ok"
    trend = run.guard.as_json()["processes"][MAIN]["queues_trend"]
    assert trend is not None and abs(trend) < 0.001
    # Rising by 5 % of the intake: only one tick in two is hot (short of three in four), yet
    # the process is overloaded once trend_s (6 s) of ticks show the rise, before the
    # kernel has dropped anything, and the step sheds at least that share.
    rising = Run(policy="shed-newest")
    while not rising.shed:
        for load in saw_tooth(0.05, 0.98):
            rising.tick(load, TICK)
    # trend_s after the first tick (the trend's start), with the tick of the first shedding
    assert rising.now == 7.0 and rising.state == "overloaded"
    # 1 - (1 - 0.05 / 1.05) x 0.9 / 0.98 = 12.5 % of 20: 3 streams
    assert rising.shed == [[name(19), name(18), name(17)]]
    decision = rising.guard.last_decision
    assert decision is not None
    assert "receive queues rising by 5.0% of the intake over 6 s" in decision["reason"]
    # Without the trend, the per-tick rule never sees it: one tick in two is hot.
    per_tick = Run(policy="shed-newest")
    per_tick.guard.trend_s = math.inf
    for _ in range(30):
        for load in saw_tooth(0.05, 0.98):
            assert per_tick.tick(load, TICK) == []
    assert per_tick.state == "ok"
    # The same rise in a process with time to spare is catching up, not overload.
    idle = Run(policy="shed-newest")
    for _ in range(30):
        for load in saw_tooth(0.05, 0.7):
            assert idle.tick(load, TICK) == []
    assert idle.state == "ok"


# ----- settings -----


def test_settings_overload_policy_and_priorities() -> None:
    base = "node: {api_token: t}\ndevices: {password: p}\n"
    settings = parse_settings(base)
    assert settings.media.overload == "shed-lowest-priority"
    assert settings.channels.priority_for("31011200001310000001") == 0
    settings = parse_settings(
        base + "media: {overload: shed-newest}\n"
        'channels: {overrides: {"31011200001310000001": {priority: -3}}}\n'
    )
    assert settings.media.overload == "shed-newest"
    assert settings.channels.priority_for("31011200001310000001") == -3
    with pytest.raises(ConfigError) as caught:
        parse_settings(base + "media: {overload: shed-oldest}\n"
                       'channels: {overrides: {"31011200001310000001": {priority: 5000}}}\n')
    assert caught.value.problems == [
        '<string>:3: media.overload: unknown value "shed-oldest"; did you mean "shed-newest"?',
        "<string>:4: channels.overrides.31011200001310000001.priority: must be at most 1000, "
        "got 5000",
    ]


# ----- a node on loopback -----


CAMERAS = [f"3101120000132000000{n}" for n in (1, 2, 3)]


async def test_node_sheds_the_newest_stream_and_says_so(start_node: StartNode) -> None:
    # The guard of the node's own process (each worker's: tests/node/test_workers.py).
    running = await start_node(**{"media.overload": "shed-newest", "media.workers": 1})
    hub = running.node.media
    hub.overload.sustain_s = 1.0  # the rules unchanged, sooner
    # A socket's queue is measured against what the kernel lets it hold.
    assert hub.load_meter.buffer_bytes is not None
    kib = running.node.settings.media.receive_buffer_kib
    assert hub.load_meter.buffer_bytes() == 2 * kib * 1024
    # The recorder's queue is measured with the sockets' (each worker reports its own).
    recorder = running.node.recording.recorder
    assert recorder is not None and hub.load_meter.recorder_queue is not None
    assert hub.load_meter.recorder_queue() == recorder.queue_bytes == 0
    recorder.max_queue_bytes = 4  # as if its bounds were nearly reached: what passes the slack
    recorder._bytes_in += 3
    try:
        assert hub.load_meter.recorder_queue() == recorder_backlog(3, 0, recorder.max_queue, 4)
        assert hub.load_meter.recorder_queue() == 2  # 3 x (1 - 0.25 / 0.75)
    finally:
        recorder._bytes_in -= 3
        recorder.max_queue_bytes = MAX_QUEUE_BYTES
    cameras = []
    try:
        channels = []
        for device_id in CAMERAS:
            camera = SimulatedCamera(CameraConfig(server=running.sip, device_id=device_id,
                                                  password=PASSWORD))
            cameras.append(camera)
            await camera.start(keepalives=False)
            channels.append(channel_ids(device_id, 1)[0])
        await wait_for(lambda: all(running.node.registry.channel_device(c) for c in channels))
        for channel in channels:  # one after another: the last is the newest
            response = await running.client.post(f"/api/channels/{channel}/live",
                                                 headers=running.headers)
            assert response.status == 200, await response.text()
        newest = channels[-1]
        # The guard is told every stream loses packets, as a process that cannot keep up sees.
        hub.load_meter.fed = Load(lag_s=0.0, streams=3, lossy=3, packets=1000, lost=300)
        await wait_for(lambda: hub.overload.shed, timeout=10.0)
        hub.load_meter.fed = Load(lag_s=0.0, streams=2, lossy=0)  # not hot: no second step
        assert list(hub.overload.shed) == [newest]
        await wait_for(lambda: newest not in hub.streams)
        ended = await running.get("/api/streams/ended")
        assert ended[0]["channel_id"] == newest
        assert ended[0]["reason"].startswith("shed: media overload (shed-newest; ")
        playing = await running.get("/api/streams")
        assert sorted(s["channel_id"] for s in playing) == sorted(channels[:2])
        assert all(s["state"] == "playing" for s in playing)
        # Refused while it cools down, with the reason.
        response = await running.client.post(f"/api/channels/{newest}/live",
                                             headers=running.headers)
        assert response.status == 503
        assert (await response.json())["error"].startswith("shed: media overload")
        health = await running.get("/healthz")
        assert health["status"] == "degraded"
        [line] = [r for r in health["reasons"] if "shed for media overload" in r]
        assert line.endswith(newest)
        assert any(r.startswith("media overload in process main") for r in health["reasons"])
        overload: dict[str, Any] = (await running.get("/api/stats"))["overload"]
        assert overload["state"] == "overloaded" and overload["policy"] == "shed-newest"
        assert [item["channel_id"] for item in overload["shed"]] == [newest]
        assert overload["shed"][0]["priority"] == 0
        assert datetime.fromisoformat(overload["shed"][0]["since"]).tzinfo is not None
        assert overload["last_decision"]["action"] == "shed"
        assert overload["last_decision"]["channels"] == [newest]
    finally:
        for camera in cameras:
            await camera.stop(unregister=False)


def test_a_recorder_falling_behind_is_overload_before_it_drops_a_unit() -> None:
    """The recorder's queue (what the meter is given: past its slack, `recorder_backlog`) is
    counted as one more receive queue, its PS bytes charged as the datagrams that carried
    them: a busy process whose recorder queue keeps rising sheds streams while no packet is
    lost, before the queue fills and drops units of every stream."""
    kernel = {30000 + 2 * n: (0, 0) for n in range(20)}
    recorder = [0]
    cpu = [0.0]
    meter = LoadMeter(cpu=lambda: cpu[0], process_cpu=None,
                      sockets=lambda ports: {p: kernel[p] for p in ports},
                      tcp=lambda ports: {}, recorder_queue=lambda: recorder[0])
    streams = [FakeStream(s.channel_id, s.started, port=30000 + 2 * n)
               for n, s in enumerate(STREAMS)]
    load, _ = meter.sample(0.0, 0.0, streams)
    assert load.queued == 0 and load.grew == 0
    run = Run(policy="shed-newest")
    packets = 0
    while not run.shed and run.now < 30:
        packets += 3500  # 20 streams of 350 packets/s, half a second
        for stream in streams:
            stream.counts = {"packets": packets // 20, "lost": 0}
        recorder[0] += 3500 * 1400 // 20  # the queue gains 5 % of the intake's PS bytes
        cpu[0] += 0.48  # 96 % busy
        load, carried = meter.sample(run.now + TICK, 0.0, streams)
        assert load.lost == 0 and load.drops == 0
        assert load.grew == 3500 * 2304 // 20
        assert load.queued == recorder[0] * 2304 // 1400
        run.candidates = list(carried)
        run.tick(load, TICK)
    assert run.shed and run.now <= 7.0 and run.state == "overloaded"
    decision = run.guard.last_decision
    assert decision is not None and "receive queues grew by 393 KiB" in decision["reason"]
    # A recorder that catches up (its queue shrinking) is no overload.
    calm = Run(policy="shed-newest")
    for _ in range(20):
        recorder[0] = max(0, recorder[0] - 100_000)
        packets += 3500
        for stream in streams:
            stream.counts = {"packets": packets // 20, "lost": 0}
        cpu[0] += 0.48
        load, _ = meter.sample(calm.now + TICK, 0.0, streams)
        assert calm.tick(load, TICK) == []


def test_a_recorder_queue_counts_as_backlog_only_past_its_slack() -> None:
    """The recorder's queue rides out the writer's stalls: up to a quarter of its bounds it is
    no backlog; past that, what it holds beyond counts, growing from zero (no step when it
    crosses), by whichever bound it fills more."""
    mib = 1 << 20
    assert recorder_backlog(0, 0) == 0
    assert recorder_backlog(64 * mib, 100) == 0  # a quarter of 256 MiB
    assert recorder_backlog(64 * mib + 1024, 100) == pytest.approx(1024, abs=2)
    assert recorder_backlog(128 * mib, 100) == 64 * mib  # half full: the half past the slack
    assert recorder_backlog(256 * mib, 100) == 192 * mib
    # By units: 5,000 of 10,000 queued, 20 MiB of them; the bytes alone are far from theirs.
    assert recorder_backlog(20 * mib, 5_000) == 10 * mib
    assert recorder_backlog(20 * mib, 2_500) == 0
    # Continuous: a byte more never adds more than a byte and a bit.
    last = 0
    for queued in range(60 * mib, 70 * mib, 256 * 1024):
        now = recorder_backlog(queued, 0)
        assert 0 <= now - last <= 256 * 1024 * 2
        last = now
