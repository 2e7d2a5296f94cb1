"""An unknown engine key in a profile is an error naming the key and the closest valid one, however the profile
is found (path, name, environment variable); unknown top-level keys stay a warning (forward compatibility)."""

import json

import pytest

from medvllm.cli.main import main
from medvllm.deployment import PROFILE_ENV, PROFILES_DIR_ENV, profiles, resolve
from medvllm.errors import ProfileError
from medvllm.hardware import HardwareInfo

CPU = HardwareInfo(cpu_count=8, total_memory=32 << 30, available_memory=30 << 30)
TYPO = {"profile": "site", "engine": {"device": "cpu", "memory_efficent": True}}


def _write(folder, data, name="site.json") -> str:
    path = folder / name
    path.write_text(json.dumps(data))
    return str(path)


def _says_typo(message: str) -> None:
    assert "engine.memory_efficent" in message and "'memory_efficient'" in message
    assert "\n" not in message


def test_by_path(tmp_path):
    with pytest.raises(ProfileError) as e:
        profiles.load(_write(tmp_path, TYPO), {})
    _says_typo(str(e.value))


def test_by_name_from_a_user_folder(tmp_path):
    _write(tmp_path, TYPO)
    with pytest.raises(ProfileError) as e:
        profiles.load("site", {PROFILES_DIR_ENV: str(tmp_path)})
    _says_typo(str(e.value))


def test_from_the_environment_variable(tmp_path):
    env = {PROFILES_DIR_ENV: str(tmp_path), PROFILE_ENV: "site"}
    _write(tmp_path, TYPO)
    with pytest.raises(ProfileError) as e:
        resolve({}, None, env, CPU)
    _says_typo(str(e.value))


def test_a_key_like_no_other_lists_the_valid_ones(tmp_path):
    with pytest.raises(ProfileError) as e:
        profiles.load(_write(tmp_path, {"engine": {"zzzz": 1}}), {})
    assert "engine.zzzz" in str(e.value) and "max_num_seqs" in str(e.value)


def test_unknown_top_level_keys_are_still_a_warning(tmp_path):
    p = profiles.load(_write(tmp_path, {"future": 1, "engine": {"device": "cpu"}}), {})
    assert p.engine == {"device": "cpu"} and p.ignored == ["future"]
    assert "ignoring unknown key(s) future" in p.warnings[0]


def test_the_cli_prints_one_line_and_fails(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, TYPO)
    for argv in (["profiles", "show", path], ["inference", "generate", "--text", "x", "--deployment-profile", path]):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("medvllm: error: ")
        _says_typo(err.strip())
    monkeypatch.setenv(PROFILES_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(PROFILE_ENV, "site")
    code = main(["inference", "generate", "--text", "x"])
    out, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1
    _says_typo(err.strip())


def test_an_unknown_keyword_suggests_the_closest_setting():
    from medvllm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown setting.*'memory_efficent'.*did you mean 'memory_efficient'"):
        resolve({"memory_efficent": True}, "none", {}, CPU)


def test_the_schema_file_refuses_unknown_engine_keys_too():
    jsonschema = pytest.importorskip("jsonschema")
    from medvllm.deployment import schema

    validator = jsonschema.Draft202012Validator(schema.load_schema())
    assert not validator.is_valid(TYPO) and validator.is_valid({"future": 1, "engine": {"device": "cpu"}})
