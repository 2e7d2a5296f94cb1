"""Named API keys (stored as digests, reloaded on change) and per-key limits, without a server."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from medvllm.errors import ConfigError
from medvllm.server import keys as keys_module
from medvllm.server.errors import APIError
from medvllm.server.keys import KeyTable, new_entry, parse_keys
from medvllm.server.rate_limits import WINDOW_S, RateLimits


def entry(name: str, key: str, **limits) -> dict:
    return {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), **limits}


def write(path, *entries) -> str:
    path.write_text(json.dumps({"keys": list(entries)}))
    return str(path)


def test_each_key_is_known_by_its_name_and_limits(tmp_path):
    table = KeyTable(None, write(tmp_path / "k.json", entry("ed", "k-ed", max_concurrent=2), entry("lab", "k-lab")))
    assert table.identify("Bearer k-ed").name == "ed" and table.identify("Bearer k-ed").max_concurrent == 2
    assert table.identify("bearer  k-lab ").name == "lab"
    for header in (None, "", "Bearer", "Bearer k-e", "Bearer k-ed2", "Basic k-ed", "k-ed"):
        with pytest.raises(APIError) as e:
            table.identify(header)
        assert e.value.status == 401
    both = KeyTable("single", write(tmp_path / "k2.json", entry("ed", "k-ed")))
    assert both.identify("Bearer single").name == "default" and both.names() == ["default", "ed"]
    assert KeyTable(None, None).identify(None).name == "anonymous"


@pytest.mark.parametrize(
    "bad,why",
    [
        ({"keys": [{"name": "ed", "sha256": "k-ed-in-plain"}]}, "never the key itself"),
        ({"keys": [{"name": "ed", "sha256": "ab" * 32, "rpm": 3}]}, "unknown field"),
        ({"keys": [{"name": "", "sha256": "ab" * 32}]}, "no name"),
        ({"keys": [{"name": "ed", "sha256": "ab" * 32, "max_concurrent": 0}]}, "positive integer"),
        ({"keys": [{"name": "a", "sha256": "ab" * 32}, {"name": "b", "sha256": "ab" * 32}]}, "repeats"),
        ({"keys": []}, "with a key"),
    ],
)
def test_a_bad_keys_file_is_one_line_naming_the_problem(bad, why):
    with pytest.raises(ConfigError, match=why) as e:
        parse_keys(json.dumps(bad), "keys.json")
    assert "\n" not in str(e.value)


def test_keys_rotate_when_the_file_changes_and_a_broken_file_keeps_the_old_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(keys_module, "RECHECK_S", 0.0)
    path = write(tmp_path / "k.json", entry("ed", "old"))
    table = KeyTable(None, path)
    assert table.identify("Bearer old").name == "ed"
    write(tmp_path / "k.json", entry("ed", "new"), entry("icu", "icu-key"))
    os.utime(path, ns=(1, 1))  # a changed stamp even within the file system's time resolution
    assert table.identify("Bearer new").name == "ed" and table.identify("Bearer icu-key").name == "icu"
    with pytest.raises(APIError):
        table.identify("Bearer old")
    (tmp_path / "k.json").write_text("{not json")
    os.utime(path, ns=(2, 2))
    assert table.identify("Bearer new").name == "ed"  # still in force


def test_keys_new_prints_a_key_its_entry_admits(capsys):
    from medvllm.cli.main import main

    assert main(["keys", "new", "--name", "ward-7", "--requests-per-minute", "30"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].rsplit(" ", 1)[1]
    entry_ = json.loads(out[-1])
    assert entry_["name"] == "ward-7" and entry_["requests_per_minute"] == 30 and key not in out[-1]
    table = {v.name: v for v in parse_keys(json.dumps({"keys": [entry_]}), "x").values()}
    assert table["ward-7"].requests_per_minute == 30
    assert hashlib.sha256(key.encode()).hexdigest() == entry_["sha256"]
    assert new_entry("a")[0] != new_entry("a")[0]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def identity(**limits):
    from medvllm.server.keys import Identity

    return Identity("ed", **limits)


def test_requests_per_minute_with_retry_after():
    clock = Clock()
    limits, who = RateLimits(clock), identity(requests_per_minute=2)
    for _ in range(2):
        limits.settle(who, limits.admit(who, 10), 10)
    clock.now += 20
    with pytest.raises(APIError) as e:
        limits.admit(who, 10)
    assert e.value.status == 429 and e.value.code == "rate_limit_exceeded" and e.value.type == "requests"
    assert e.value.headers["Retry-After"] == str(int(WINDOW_S - 20))
    clock.now += WINDOW_S - 20
    limits.admit(who, 10)  # the first two left the window


def test_tokens_per_minute_charges_the_budget_then_what_was_used():
    clock = Clock()
    limits, who = RateLimits(clock), identity(tokens_per_minute=100)
    charge = limits.admit(who, 90)  # prompt + max_tokens
    with pytest.raises(APIError) as e:
        limits.admit(who, 20)
    assert e.value.type == "tokens" and int(e.value.headers["Retry-After"]) == WINDOW_S
    limits.settle(who, charge, 30)  # it ended early: only what it used counts
    limits.admit(who, 60)
    with pytest.raises(APIError, match="more than key 'ed' may use in a minute"):
        limits.admit(who, 101)


def test_max_concurrent_counts_requests_in_flight():
    limits, who = RateLimits(Clock()), identity(max_concurrent=1)
    first = limits.admit(who, 1)
    with pytest.raises(APIError, match="in flight"):
        limits.admit(who, 1)
    limits.settle(who, first, 1)
    limits.admit(who, 1)
    assert RateLimits(Clock()).admit(identity(), 10**9) is None  # no limits: nothing tracked


def test_serve_refuses_a_bad_keys_file_or_audit_flags_before_loading(tmp_path, capsys):
    from medvllm.cli.main import main

    (tmp_path / "plain.json").write_text(json.dumps({"keys": [{"name": "ed", "sha256": "hunter2"}]}))
    assert main(["serve", "--api-keys-file", str(tmp_path / "plain.json"), "--port", "1"]) == 1
    assert "never the key itself" in capsys.readouterr().err
    assert main(["serve", "--api-keys-file", str(tmp_path / "missing.json"), "--port", "1"]) == 1
    assert "cannot read keys file" in capsys.readouterr().err
    assert main(["serve", "--audit-content", "--port", "1"]) == 1
    assert "--audit-log" in capsys.readouterr().err
