"""Interop with SIPp, an independent SIP implementation (Debian package `sip-tester`).

SIPp plays the device: REGISTER with digest auth, then a Keepalive MESSAGE, over UDP and TCP,
and a wrong-password scenario. The node runs in this test's event loop, so SIPp runs as an
asyncio subprocess. Without `sipp` installed these tests are skipped, saying why.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from .conftest import PASSWORD, StartNode

SCENARIOS = Path(__file__).resolve().parents[1] / "data" / "sipp"
SIPP = shutil.which("sipp")

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(SIPP is None, reason="sipp is missing: install Debian package sip-tester"),
]


async def run_sipp(
    scenario: str, server: tuple[str, int], rows: list[str], transport: str, tmp_path: Path
) -> tuple[int, str]:
    inject = tmp_path / "devices.csv"
    inject.write_text("SEQUENTIAL\n" + "".join(f"{row}\n" for row in rows))
    args = [
        SIPP or "sipp", f"{server[0]}:{server[1]}",
        "-sf", str(SCENARIOS / scenario),
        "-inf", str(inject),
        "-i", "127.0.0.1",
        "-p", "0",
        "-t", "u1" if transport == "udp" else "t1",
        "-m", str(len(rows)),
        "-r", "50",
        "-timeout", "20s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file", str(tmp_path / "errors.log"),
    ]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 40)
    errors = tmp_path / "errors.log"
    detail = out.decode(errors="replace")[-2000:]
    if errors.exists():
        detail += errors.read_text(errors="replace")[-2000:]
    assert proc.returncode is not None
    return proc.returncode, detail


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sipp_registers_with_digest_and_keeps_alive(
    start_node: StartNode, tmp_path: Path, transport: str
):
    running = await start_node()
    devices = [f"3101120000132000{i:04d}" for i in range(1, 11)]
    code, detail = await run_sipp(
        "register_keepalive.xml", running.sip, [f"{d};{PASSWORD}" for d in devices],
        transport, tmp_path,
    )
    assert code == 0, detail
    registry = running.node.registry
    for device_id in devices:
        dev = registry.get(device_id)
        assert dev is not None and dev.online and dev.transport == transport
        assert dev.user_agent == "SIPp"
    stats = await running.get("/api/stats")
    assert stats["requests_received"]["MESSAGE"] >= 10
    assert stats["responses_sent"]["200"] >= 20


async def test_sipp_wrong_password_is_refused(start_node: StartNode, tmp_path: Path):
    running = await start_node()
    devices = ["31011200001320000101", "31011200001320000102"]
    code, detail = await run_sipp(
        "register_wrong_password.xml", running.sip, [f"{d};x" for d in devices], "udp", tmp_path
    )
    assert code == 0, detail  # SIPp saw the 403 it expected
    for device_id in devices:
        assert running.node.registry.get(device_id) is None
    assert (await running.get("/api/stats"))["auth_failures"] == 2
