"""The HTTP API's own checks: audit query limits and whose name goes into the audit log."""

from __future__ import annotations

import pytest

from .conftest import RunningNode, StartNode

CHANNEL = "31011200001310000101"
RANGE = {"channel": CHANNEL, "start": "2026-01-01T00:00:00", "end": "2026-01-01T01:00:00"}


async def search(running: RunningNode, **headers: str) -> None:
    response = await running.client.get(
        "/api/recordings", params=RANGE, headers={**running.headers, **headers}
    )
    assert response.status == 200, await response.text()


async def audit(running: RunningNode, limit: str | None = None) -> tuple[int, object]:
    params = {} if limit is None else {"limit": limit}
    response = await running.client.get("/api/audit", params=params, headers=running.headers)
    return response.status, await response.json()


@pytest.mark.parametrize("limit", ["-1", "0", "10001", "1e3", "ten", " ", "1.5", "٣",
                                   "9" * 5000])
async def test_audit_limit_out_of_range_or_not_a_number_is_refused(
    start_node: StartNode, limit: str
) -> None:
    running = await start_node()
    await search(running)
    status, body = await audit(running, limit)
    assert status == 400, body
    assert isinstance(body, dict)
    assert body["error"].startswith("limit must be a whole number from 1 to 10,000")


async def test_audit_limit_bounds_the_answer(start_node: StartNode) -> None:
    running = await start_node()
    for _ in range(3):
        await search(running)
    for limit, count in (("1", 1), ("2", 2), ("10000", 3), (None, 3), ("", 3)):
        status, body = await audit(running, limit)
        assert status == 200 and isinstance(body, list) and len(body) == count, (limit, body)


async def test_x_user_is_ignored_unless_the_token_holder_is_a_trusted_proxy(
    start_node: StartNode,
) -> None:
    running = await start_node()
    assert running.node.settings.node.api_trusted_proxy is False  # the default
    await search(running, **{"X-User": "alice"})
    await search(running)
    status, entries = await audit(running)
    assert status == 200 and isinstance(entries, list)
    assert [e["actor"] for e in entries] == ["api-token@127.0.0.1"] * 2


async def test_x_user_names_the_operator_behind_a_trusted_proxy(start_node: StartNode) -> None:
    running = await start_node(**{"node.api_trusted_proxy": True})
    await search(running, **{"X-User": "  alice  "})
    await search(running)  # the proxy did not name anybody: the token it is
    status, entries = await audit(running)
    assert status == 200 and isinstance(entries, list)
    assert [e["actor"] for e in entries] == ["api-token@127.0.0.1", "alice@127.0.0.1"]
