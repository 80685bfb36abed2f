"""The command line as an operator uses it: separate processes, real files, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sensing_node", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


@pytest.mark.parametrize(
    "command", [[], ["run"], ["check-config"], ["simulate-camera"], ["simulate-upstream"]]
)
def test_help(command):
    result = cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: sensing-node" in result.stdout


@pytest.mark.parametrize("name", ["demo.yaml", "node.example.yaml"])
def test_shipped_configs_are_valid(name):
    result = cli("check-config", f"config/{name}")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_says_what_each_service_binds_and_warns_of_every_interface(tmp_path):
    wide = tmp_path / "wide.yaml"
    wide.write_text(
        "node:\n"
        "  sip_listen: \"0.0.0.0:5060\"\n"
        "  http_listen: \"[::]:8080\"\n"
        "  media_ip: \"192.0.2.10\"\n"
        "  media_bind: \"192.0.2.10\"\n"
        "  rtp_ports: \"40000-40099\"\n"
        "  api_token: t\n"
        "devices:\n"
        "  password: p\n"
    )
    result = cli("check-config", str(wide))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{wide}: OK")
    assert lines[1] == ("listens: SIP on 0.0.0.0:5060 (UDP and TCP), HTTP API on [::]:8080, "
                        "RTP on 192.0.2.10 ports 40000-40099 (UDP and TCP, node.media_bind)")
    assert lines[2].startswith("WARNING: SIP listens on every interface (0.0.0.0)")
    assert lines[3].startswith("WARNING: the HTTP API listens on every interface (::)")

    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(wide.read_text().replace("0.0.0.0:5060", "192.0.2.10:5060")
                      .replace("[::]:8080", "127.0.0.1:8080"))
    result = cli("check-config", str(narrow))
    assert result.returncode == 0, result.stderr
    assert "SIP on 192.0.2.10:5060 (UDP and TCP), HTTP API on 127.0.0.1:8080" in result.stdout
    assert "WARNING" not in result.stdout


@pytest.mark.parametrize(("media_ip", "rtp"), [
    ("127.0.0.1", "RTP on 127.0.0.1 ports 30000-30999 (UDP and TCP, node.media_ip)"),
    # 1:1 NAT or a cloud public IP: not an address of this host
    ("192.0.2.10", "RTP on 127.0.0.1 ports 30000-30999 (UDP and TCP, the SIP host)"),
])
def test_check_config_says_where_rtp_binds_when_media_ip_is_not_ours(tmp_path, media_ip, rtp):
    config = tmp_path / "nat.yaml"
    config.write_text(
        "node:\n"
        "  sip_listen: \"127.0.0.1:5060\"\n"
        f"  media_ip: \"{media_ip}\"\n"
        "  api_token: t\n"
        "devices:\n"
        "  password: p\n"
    )
    result = cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].endswith(rtp)
    warnings = [line for line in lines if line.startswith("WARNING")]
    if media_ip == "127.0.0.1":
        assert warnings == []
    else:
        assert warnings == [
            "WARNING: node.media_ip 192.0.2.10 is not an address of this host (1:1 NAT, a "
            "public IP?): RTP binds 127.0.0.1, the SIP host; set node.media_bind to choose"
        ]


def test_bad_config_lists_every_problem_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "node:\n"
        "  id: \"1234\"\n"
        "  rtp_ports: \"40000-30000\"\n"
        "  api_token: t\n"
        "  colour: blue\n"
        "devices:\n"
        "  password: \"\"\n"
    )
    result = cli("check-config", str(bad))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(bad))]
    assert any(":2: node.id:" in line for line in lines), result.stderr
    assert any(":3: node.rtp_ports:" in line for line in lines), result.stderr
    assert any(":5: node.colour:" in line for line in lines), result.stderr
    assert any(":7: devices.password:" in line for line in lines), result.stderr
    # `run` refuses the same file without starting.
    assert cli("run", "-c", str(bad)).returncode != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, extra: str = "", password: str = "pw") -> tuple[Path, int, int]:
    """A node config on free loopback ports under `tmp_path`: (file, SIP port, HTTP port)."""
    sip_port, http_port = free_port(), free_port()
    config = tmp_path / "node.yaml"
    config.write_text(
        "node:\n"
        f"  sip_listen: \"127.0.0.1:{sip_port}\"\n"
        f"  http_listen: \"127.0.0.1:{http_port}\"\n"
        "  api_token: \"secret\"\n"
        f"  data_dir: \"{tmp_path / 'data'}\"\n"
        "devices:\n"
        f"  password: \"{password}\"\n" + extra
    )
    return config, sip_port, http_port


def test_run_with_simulated_cameras_and_stop_on_sigterm(tmp_path):
    config, _, http_port = write_config(
        tmp_path, "simulator:\n  cameras: 2\n  channels_per_camera: 3\n", password="12345678"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sensing_node", "run", "-c", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        devices = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{http_port}/api/devices",
                    headers={"Authorization": "Bearer secret"},
                )
                devices = json.loads(urllib.request.urlopen(req, timeout=2).read())
                if len(devices) == 2 and all(d["online"] and d["channel_count"] == 3
                                             for d in devices):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert len(devices) == 2, devices
        assert {d["transport"] for d in devices} == {"udp", "tcp"}
        assert all(d["channel_count"] == 3 for d in devices), devices
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "data" / "registry.sqlite3").exists()


def test_simulate_camera_command_registers_to_a_running_node(tmp_path):
    config, sip_port, http_port = write_config(tmp_path)
    node = subprocess.Popen([sys.executable, "-m", "sensing_node", "run", "-c", str(config)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cam = None
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        cam = subprocess.Popen(
            [sys.executable, "-m", "sensing_node", "simulate-camera", "--server",
             f"127.0.0.1:{sip_port}", "--id", "34020000001320000009", "--password", "pw",
             "--transport", "tcp", "--channels", "2"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert cam.stdout is not None
        line = cam.stdout.readline()
        assert "REGISTER -> 200" in line, line
        cam.send_signal(signal.SIGINT)
        cam.communicate(timeout=10)
        assert cam.returncode == 0
        wrong = subprocess.run(
            [sys.executable, "-m", "sensing_node", "simulate-camera", "--server",
             f"127.0.0.1:{sip_port}", "--id", "34020000001320000008", "--password", "nope"],
            cwd=ROOT, capture_output=True, text=True, timeout=20,
        )
        assert wrong.returncode == 1 and "REGISTER -> 403" in wrong.stdout
    finally:
        for proc in (cam, node):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("taken", ["sip", "http"])
def test_run_names_a_taken_port_and_exits_non_zero(tmp_path, taken):
    config, sip_port, http_port = write_config(tmp_path)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if taken == "sip" else
                            socket.SOCK_STREAM)
    try:
        blocker.bind(("127.0.0.1", sip_port if taken == "sip" else http_port))
        if taken == "http":
            blocker.listen()
        result = cli("run", "-c", str(config))
    finally:
        blocker.close()
    assert result.returncode == 1
    port = sip_port if taken == "sip" else http_port
    assert f"cannot listen for {taken.upper()} on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_upstream_pulls_a_channel_from_a_running_node(tmp_path):
    """Both commands as an operator runs them: the node with a built-in camera and an upstream
    entry, and `simulate-upstream`, which waits for the node's REGISTER, lists its catalog and
    pulls the camera's channel through it; it exits 0 only if every RTP packet checked out."""
    up_port = free_port()
    config, _, http_port = write_config(
        tmp_path,
        "simulator:\n  cameras: 1\n  channels_per_camera: 1\n"
        "upstreams:\n"
        "  - id: \"34020000002000000100\"\n"
        f"    address: \"127.0.0.1:{up_port}\"\n"
        "    transport: tcp\n"
        "    password: \"up-secret\"\n",
        password="12345678",
    )
    node = subprocess.Popen([sys.executable, "-m", "sensing_node", "run", "-c", str(config)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        channels: list = []
        while time.monotonic() < deadline and not channels:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/channels",
                                             headers={"Authorization": "Bearer secret"})
                channels = json.loads(urllib.request.urlopen(req, timeout=2).read())
            except OSError:
                pass
            time.sleep(0.2)
        assert [c["id"] for c in channels] == ["34020000001310000101"]
        result = subprocess.run(
            [sys.executable, "-m", "sensing_node", "simulate-upstream", "--listen",
             f"127.0.0.1:{up_port}", "--id", "34020000002000000100", "--password", "up-secret",
             "--play", "34020000001310000101", "--seconds", "15"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "node 34020000002000000001 registered from tcp" in result.stdout
        assert "catalog: 1 channels" in result.stdout
        assert "34020000001310000101: 200 OK" in result.stdout
        assert "problems []" in result.stdout
    finally:
        node.kill()
        node.wait()
