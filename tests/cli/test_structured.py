"""`inference generate --json-schema / --regex / --choice` on the real default model, checked with
jsonschema and re; a bad constraint is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from medvllm.cli.main import main

SCHEMA = {
    "type": "object",
    "properties": {"allergy": {"type": "string", "maxLength": 30}, "severe": {"type": "boolean"}},
    "required": ["allergy", "severe"],
    "additionalProperties": False,
}
NOTE = "Allergic to penicillin: anaphylaxis in 2019."


def run(capsys, *argv):
    code = main(["inference", "generate", "--text", NOTE, "--deployment-profile", "none", "--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_schema_regex_and_choice_flags_constrain_the_reply(capsys, tmp_path):
    (tmp_path / "allergy.json").write_text(json.dumps(SCHEMA))
    code, out, _ = run(capsys, "--json-schema", str(tmp_path / "allergy.json"), "--json")
    reply = json.loads(out)
    assert code == 0 and reply["finish_reason"] == "stop"
    jsonschema.validate(json.loads(reply["text"]), SCHEMA)
    code, out, _ = run(capsys, "--regex", r"(mild|moderate|severe) reaction", "--temperature", "0.8", "--seed", "2")
    assert code == 0 and re.fullmatch(r"(mild|moderate|severe) reaction", out.rstrip("\n"))
    code, out, _ = run(capsys, "--choice", "penicillin", "--choice", "sulfa", "--choice", "none")
    assert code == 0 and out.rstrip("\n") in ("penicillin", "sulfa", "none")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--regex", "a(b"], "structured_outputs.regex is invalid"),
        (["--json-schema", "/nonexistent.json"], "cannot read --json-schema"),
        (["--choice", ""], "structured_outputs.choice"),
    ],
)
def test_bad_constraints_are_one_line_errors(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == "" and err.count("\n") == 1 and message in err, err
