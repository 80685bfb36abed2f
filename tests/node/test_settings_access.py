"""The users:, grants: and metrics: sections: tokens kept as hashes, a grant of at most a year,
line-numbered problems."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from sensing_node.settings import ConfigError, load_settings, parse_settings
from sensing_node.settings.access import hash_token

CONFIG = Path(__file__).resolve().parents[2] / "config"
BASE = (CONFIG / "demo.yaml").read_text(encoding="utf-8")


def parse(extra: str, tmp_path: Path) -> object:
    return parse_settings(BASE + extra, str(tmp_path / "node.yaml"), base_dir=tmp_path)


def problems(extra: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(extra, tmp_path)
    return caught.value.problems


def test_the_example_holds_a_user_a_grant_and_metrics():
    settings = load_settings(CONFIG / "node.example.yaml")
    [user] = settings.users
    assert (user.name, user.role, user.channels) == ("alice", "operator", ("3101120000",))
    [grant] = settings.grants
    assert grant.actions == ("live", "playback") and grant.max_sessions == 2
    assert grant.valid_from == datetime(2026, 12, 1) and grant.valid_from.tzinfo is None
    assert settings.metrics.per_channel is False and settings.node.metrics_auth is False


def test_a_token_file_is_kept_as_its_hash(tmp_path):
    (tmp_path / "bob.token").write_text("s3cret-token\n", encoding="utf-8")
    settings = parse("users:\n  - {name: bob, token_file: bob.token, role: admin}\n", tmp_path)
    [user] = settings.users  # type: ignore[attr-defined]
    assert user.token_sha256 == hash_token("s3cret-token") and user.channels is None
    assert "s3cret" not in repr(settings)


def test_user_problems_name_their_line(tmp_path):
    digest = "ab" * 32
    found = problems(
        "users:\n"
        f"  - {{name: a, token_sha256: '{digest}'}}\n"
        f"  - {{name: a, token_sha256: '{'cd' * 32}'}}\n"
        "  - {name: c}\n"
        f"  - {{name: d, token_sha256: '{digest}'}}\n",
        tmp_path,
    )
    text = "\n".join(found)
    assert "listed twice" in text and "token_sha256 or token_file" in text
    assert "same token" in text
    first = BASE.count("\n") + 2
    assert f":{first + 1}: users[1].name" in text and f":{first + 2}: users[2]" in text
    bad = problems("users:\n  - {name: e, token_sha256: 'xyz', role: boss}\n", tmp_path)
    assert "64 hex digits" in "\n".join(bad) and "boss" in "\n".join(bad)


def test_a_grant_longer_than_a_year_is_refused(tmp_path):
    grant = ("grants:\n  - consumer: '31011200002000000100'\n    channels: ['3101']\n"
             "    actions: [live]\n    purpose: test\n")
    ok = parse(grant + "    valid_from: 2026-01-01T00:00:00\n"
               "    valid_to: 2027-01-01T00:00:00\n", tmp_path)
    assert len(ok.grants) == 1  # type: ignore[attr-defined]
    [problem] = problems(grant + "    valid_from: 2026-01-01T00:00:00\n"
                         "    valid_to: 2027-01-02T00:00:00\n", tmp_path)
    assert "at most 365 days" in problem and "grants[0].valid_to" in problem
    line = BASE.count("\n") + 7  # the valid_to line
    assert f":{line}:" in problem
    [mixed] = problems(grant + "    valid_from: 2026-01-01T00:00:00+08:00\n"
                       "    valid_to: 2026-02-01T00:00:00\n", tmp_path)
    assert "both carry a zone" in mixed
    [backwards] = problems(grant + "    valid_from: 2026-02-01T00:00:00\n"
                           "    valid_to: 2026-01-01T00:00:00\n", tmp_path)
    assert "after valid_from" in backwards
    found = problems(grant.replace("[live]", "[live, watch]")
                     + "    valid_from: 2026-01-01\n    valid_to: 2026-02-01\n", tmp_path)
    assert any("unknown action 'watch'" in p for p in found)
