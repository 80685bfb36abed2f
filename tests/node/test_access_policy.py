"""The access policy on its own, with a clock the test moves: classes, upstream lists, grants
by prefix, action and time, their session counts, and what ends when a grant does."""

from __future__ import annotations

from pathlib import Path

from sensing_node.access.grants import GrantStore, grant_from_json
from sensing_node.access.policy import AccessPolicy, Session
from sensing_node.access.principals import Principal, as_upstream, authenticate, missing_right
from sensing_node.settings import settings_for_tests
from sensing_node.settings.access import hash_token

UP = "31011200002000000100"
OTHER_UP = "31011200002000000200"
OPEN = "31011200001310000001"
AUTH = "31011200001310000002"
LISTED = "31011200001310000003"
CLOSED = "31011200001310000004"
T0 = 1_800_000_000.0
UPSTREAMS = [{"id": UP, "address": "127.0.0.1:5999", "password": "x"},
             {"id": OTHER_UP, "address": "127.0.0.1:5998", "password": "x"}]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def policy(tmp_path: Path, clock: Clock, **extra: object) -> AccessPolicy:
    settings = settings_for_tests(tmp_path, **{
        "node.timezone": "Asia/Shanghai",
        "upstreams": UPSTREAMS,
        "channels.overrides": {AUTH: {"share": "authorized"},
                               LISTED: {"share": "authorized", "upstreams": [UP]},
                               CLOSED: {"share": "none"}},
        "grants": [{"consumer": UP, "channels": ["3101120000131000000"], "actions": ["playback"],
                    "purpose": "p", "valid_from": "2027-01-15T00:00:00+00:00",
                    "valid_to": "2027-01-15T10:00:00+00:00", "max_sessions": 1}],
        **extra,
    })
    return AccessPolicy(settings, wall=clock)


def test_classes_lists_and_grants(tmp_path):
    clock = Clock()
    clock.now = 1_800_000_000.0 + 0  # 2027-01-15T08:00:00Z, inside the YAML grant
    access = policy(tmp_path, clock)
    up, other = as_upstream(UP), as_upstream(OTHER_UP)
    assert access.decide(up, OPEN, "live").allowed
    assert access.decide(up, LISTED, "live").allowed and not access.decide(other, LISTED,
                                                                           "live").allowed
    assert not access.decide(up, CLOSED, "live").allowed
    assert access.decide(up, AUTH, "playback").grant is not None  # by the prefix
    refused = access.decide(up, AUTH, "live")  # the grant names playback only
    assert not refused.allowed and "no valid grant" in refused.reason
    assert not access.decide(other, AUTH, "playback").allowed
    staff = Principal("otto", "operator")
    assert access.decide(staff, CLOSED, "export").allowed
    assert not access.decide(Principal("lim", "admin", (OPEN,)), AUTH, "live").allowed


def test_a_grants_sessions_its_end_and_the_next_change(tmp_path):
    clock = Clock()
    access = policy(tmp_path, clock)
    up = as_upstream(UP)
    ended: list[str] = []
    first = access.open(up, AUTH, "playback", on_revoke=ended.append)
    assert isinstance(first, Session) and first.grant is not None
    busy = access.open(up, AUTH, "playback")
    assert not isinstance(busy, Session) and busy.busy and "(1/1)" in busy.reason
    assert access.visible(up, AUTH)  # knowing of it does not take a session
    end = first.grant.valid_to
    assert access.next_change() == end
    assert access.expiring() == [f"grant yaml-1 for {UP} ends in 0.1 days"]
    assert access.sweep() == [] and not ended
    clock.now = end
    [(session, reason)] = access.sweep()
    assert session is first and ended == ["grant yaml-1 expired"] == [reason]
    assert not access.sessions and not access.visible(up, AUTH)
    assert access.next_change() == float("inf")


def test_a_reload_that_closes_a_channel_ends_its_sessions(tmp_path):
    clock = Clock()
    access = policy(tmp_path, clock)
    ended: list[str] = []
    live = access.open(as_upstream(UP), OPEN, "live", on_revoke=ended.append)
    kept = access.open(as_upstream(UP), LISTED, "live", on_revoke=ended.append)
    assert isinstance(live, Session) and isinstance(kept, Session)
    epoch = access.epoch()
    access.apply(settings_for_tests(tmp_path, **{"upstreams": UPSTREAMS, "channels.overrides": {
        OPEN: {"share": "none"}, LISTED: {"share": "authorized", "upstreams": [UP]}}}))
    assert access.epoch() > epoch
    [(session, reason)] = access.recheck()
    assert session is live and "no longer allowed" in reason and ended == [reason]
    assert access.sessions == {kept}


def test_api_grants_are_kept_checked_and_revoked(tmp_path):
    clock = Clock()
    store = GrantStore(tmp_path / "grants.sqlite3")
    tz = settings_for_tests(tmp_path).node.tz
    body = {"consumer": "vera", "channels": [AUTH], "actions": ["export"], "purpose": "audit",
            "valid_from": "2027-01-01T00:00:00", "valid_to": "2027-12-31T00:00:00"}
    made = store.add(grant_from_json(body, tz), "api-token@127.0.0.1", clock.now)
    again = GrantStore(tmp_path / "grants.sqlite3")
    assert again.load() == [made]
    assert store.revoke(made.id, "admin", clock.now) and not store.revoke(made.id, "x", 0)
    assert again.load() == []
    for bad, why in [({**body, "valid_to": "2028-01-02T00:00:00"}, "at most 365 days"),
                     ({**body, "actions": ["watch"]}, "actions"),
                     ({**body, "channels": [31011200]}, "channels"),
                     ({**body, "extra": 1}, "unknown keys"),
                     ({k: v for k, v in body.items() if k != "purpose"}, "purpose")]:
        try:
            grant_from_json(bad, tz)
        except ValueError as exc:
            assert why in str(exc)
        else:
            raise AssertionError(f"{bad} taken")
    store.close()
    again.close()


def test_tokens_and_rights(tmp_path):
    settings = settings_for_tests(tmp_path, users=[
        {"name": "vera", "token_sha256": hash_token("t-vera"), "role": "viewer"}])
    assert authenticate(settings, "test-token") == Principal("api-token", "admin")
    vera = authenticate(settings, " t-vera ")
    assert vera is not None and vera.name == "vera" and vera.role == "viewer"
    assert authenticate(settings, hash_token("t-vera")) is None
    assert authenticate(settings, "") is None
    assert missing_right(vera, "read") is None
    assert "'export'" in (missing_right(vera, "export") or "")
