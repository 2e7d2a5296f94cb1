"""The audit trail's hash chain: it verifies, any edit, deletion or reordering is found at its line, and
it goes on across size rotation and a restart with no line lost."""

from __future__ import annotations

import json

import pytest

from medvllm.cli.main import main
from medvllm.errors import ConfigError
from medvllm.server.audit import AuditLog
from medvllm.server.audit_chain import GENESIS, rotated_files, verify


def write(path, n: int, start: int = 0, **kw) -> AuditLog:
    log = AuditLog(str(path), **kw)
    for i in range(start, start + n):
        log.write({"request_id": f"r{i}", "status": 200, "prompt_sha256": ["ab" * 32]})
    log.close()
    return log


def lines(path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_a_written_trail_verifies_from_its_first_line(tmp_path, capsys):
    write(tmp_path / "a.jsonl", 5)
    verdict = verify([str(tmp_path / "a.jsonl")])
    assert verdict.broken is None and verdict.lines == 5 and verdict.starts_after == GENESIS
    assert main(["audit", "verify", str(tmp_path / "a.jsonl")]) == 0
    assert "OK: 5 lines" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["edit", "delete", "reorder", "insert", "cut"])
def test_tampering_is_reported_at_the_first_broken_line(tmp_path, capsys, change):
    path = tmp_path / "a.jsonl"
    write(path, 6)
    text = lines(path)
    if change == "edit":
        record = json.loads(text[2])
        record["status"] = 500
        text[2] = json.dumps(record, separators=(",", ":")) + "\n"
        expected, why = 3, "edited"
    elif change == "delete":
        del text[2]
        expected, why = 3, "deleted, inserted or reordered"
    elif change == "reorder":
        text[2], text[3] = text[3], text[2]
        expected, why = 3, "deleted, inserted or reordered"
    elif change == "insert":
        text.insert(4, text[1])
        expected, why = 5, "deleted, inserted or reordered"
    else:
        text[5] = text[5][:40] + "\n"
        expected, why = 6, "unreadable"
    path.write_text("".join(text))
    assert main(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:{expected}:" in out and why in out


def test_the_chain_goes_on_across_rotation_and_a_restart(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    write(path, 30, max_bytes=4096)  # rotates a few times
    write(path, 30, start=30, max_bytes=4096)  # a restart: picks the chain up from the last line
    files = rotated_files(str(path)) + [str(path)]
    assert len(files) >= 3
    ids = [json.loads(line)["request_id"] for f in files for line in open(f)]
    assert ids == [f"r{i}" for i in range(60)]  # nothing lost, in order
    assert verify(files).broken is None
    assert main(["audit", "verify", str(path)]) == 0  # finds the rotated files itself
    assert "60 lines" in capsys.readouterr().out
    # a rotated file removed from the middle breaks the chain where the next file starts
    middle = files[1]
    assert verify([files[0]] + files[2:]).broken.startswith(files[2] + ":1:")
    assert verify([middle]).starts_after != GENESIS  # a file alone says where it picks up


def test_an_audit_log_that_is_not_a_trail_is_refused_at_start(tmp_path):
    (tmp_path / "other.log").write_text("plain text, not a record\n")
    with pytest.raises(ConfigError, match="not an audit record"):
        AuditLog(str(tmp_path / "other.log"))
