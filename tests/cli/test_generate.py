"""`medvllm inference generate` end to end on the real embedded default model (no stand-in engine)."""

import io
import json
import os
import subprocess
import sys
import types

import pytest

from medvllm.cli import output
from medvllm.cli.main import main
from medvllm.hardware import detect

PROMPT = "What is hypertension?"
SITE = {
    "profile": "site",
    "category": "edge",
    "engine": {
        "device": "cpu",
        "max_num_seqs": 8,
        "kv_cache_space_gib": 0.25,
        "max_model_len": 1024,
        "enable_memory_pooling": True,
    },
}


@pytest.fixture
def site(tmp_path, monkeypatch):
    (tmp_path / "site.json").write_text(json.dumps(SITE))
    monkeypatch.setenv("MEDVLLM_PROFILES_DIR", str(tmp_path))
    monkeypatch.delenv("MEDVLLM_DEPLOYMENT_PROFILE", raising=False)
    return tmp_path / "site.json"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_flag_profile_with_overrides_and_json_provenance(capsys, site):
    code, out, err = run(
        capsys,
        "inference",
        "generate",
        "--text",
        PROMPT,
        "--max-tokens",
        "4",
        "--deployment-profile",
        "site",
        "--max-num-seqs",
        "4",
        "--no-memory-pooling",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    dep = data["deployment"]
    assert (dep["profile"], dep["how_chosen"], dep["profile_path"]) == ("site", "flag", str(site))
    s = dep["settings"]
    assert s["max_num_seqs"] == {"value": 4, "source": "cli"}
    assert s["enable_memory_pooling"] == {"value": False, "source": "cli"}
    assert s["device"] == {"value": "cpu", "source": "profile:site"}
    assert s["kv_cache_space_gib"] == {"value": 0.25, "source": "profile:site"}
    assert s["kvcache_block_size"] == {"value": 16, "source": "default"}
    assert data["text"] and data["usage"]["completion_tokens"] == 4 and data["finish_reason"] == "length"
    assert data["usage"]["prompt_tokens"] > 5 and data["chat_template"] is True
    assert data["timings"]["time_to_first_token_s"] > 0 and data["timings"]["total_s"] > 0
    assert data["runtime"]["device"] == "cpu" and data["sampling"]["max_tokens"] == 4
    assert "deployment profile: site (from --deployment-profile)" in err


@pytest.mark.slow
def test_env_profile_by_path(capsys, site, monkeypatch):
    monkeypatch.setenv("MEDVLLM_DEPLOYMENT_PROFILE", str(site))
    code, out, err = run(capsys, "inference", "generate", "--text", PROMPT, "--max-tokens", "2", "--json", "--quiet")
    dep = json.loads(out)["deployment"]
    assert code == 0 and err == ""
    assert (dep["profile"], dep["how_chosen"]) == ("site", "env")
    assert dep["settings"]["max_num_seqs"] == {"value": 8, "source": "profile:site"}


@pytest.mark.slow
def test_stdin_streams_plain_text_to_stdout_and_matches_json(capsys, site, tmp_path):
    env = dict(os.environ, MEDVLLM_PROFILES_DIR=str(tmp_path))
    env.pop("MEDVLLM_DEPLOYMENT_PROFILE", None)
    base = [
        sys.executable,
        "-m",
        "medvllm.cli",
        "inference",
        "generate",
        "--max-tokens",
        "6",
        "--deployment-profile",
        "site",
    ]
    streamed = subprocess.run(base + ["--quiet"], input=PROMPT, capture_output=True, text=True, env=env)
    assert streamed.returncode == 0 and streamed.stderr == ""
    as_json = subprocess.run(base + ["--json", "--text", PROMPT], capture_output=True, text=True, env=env)
    assert as_json.returncode == 0
    assert streamed.stdout == json.loads(as_json.stdout)["text"] + "\n"
    assert "deployment profile: site" in as_json.stderr  # informational lines go to stderr


@pytest.mark.slow
def test_input_file_without_chat_template_or_profile(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDVLLM_DEPLOYMENT_PROFILE", raising=False)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The heart has four")
    code, out, err = run(
        capsys,
        "inference",
        "generate",
        "--input",
        str(prompt),
        "--no-chat",
        "--max-tokens",
        "3",
        "--deployment-profile",
        "none",
        "--kv-cache-space-gib",
        "0.25",
        "--max-model-len",
        "1024",
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["chat_template"] is False and data["usage"]["prompt_tokens"] == 4
    assert data["deployment"]["how_chosen"] == "none" and data["deployment"]["profile"] is None
    assert "deployment profile: none (turned off)" in err


def test_shipped_cpu_profile_runs_or_says_why_not(capsys, monkeypatch):
    monkeypatch.delenv("MEDVLLM_DEPLOYMENT_PROFILE", raising=False)
    args = ["inference", "generate", "--text", PROMPT, "--max-tokens", "2", "--deployment-profile", "cpu", "--json"]
    if detect().engine_implements("dynamic"):
        code, out, _ = run(capsys, *args)
        assert code == 0 and json.loads(out)["deployment"]["settings"]["quantization_method"]["value"] == "dynamic"
    else:
        code, out, err = run(capsys, *args)
        assert code == 1 and out == "" and err.count("\n") == 1
        assert "deployment profile 'cpu' cannot run on this machine" in err and "not implemented" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--deployment-profile", "gpu_8bit"], "deployment profile 'gpu_8bit' cannot run on this machine"),
        (["--deployment-profile", "nope.json"], "deployment profile file 'nope.json' does not exist"),
        (["--quantization-bits", "4", "--quantization-method", "dynamic"], "does not match"),
        (["--device", "cpu", "--quantization-method", "bnb-8bit"], "needs a CUDA GPU"),
        (["--mixed-precision", "--mixed-precision-dtype", "fp16", "--device", "cpu"], "not supported on CPU"),
        (["--attention-impl", "flash", "--device", "cpu"], "flash attention needs a CUDA GPU"),
        (["--max-num-seqs", "0"], "max_num_seqs=0 is invalid"),
        (["--temperature", "-1"], "temperature=-1.0 is invalid"),
    ],
)
def test_bad_settings_are_one_line_errors(capsys, monkeypatch, argv, message):
    monkeypatch.delenv("MEDVLLM_DEPLOYMENT_PROFILE", raising=False)
    if detect().has_cuda and "gpu_8bit" in argv:
        pytest.skip("this machine has a GPU")
    code, out, err = run(capsys, "inference", "generate", "--text", PROMPT, *argv)
    assert code == 1 and out == "" and err.count("\n") == 1 and message in err, err


def test_engine_warnings_are_one_line_each():
    """A setting the engine adjusts while it starts (here max_model_len, to a tiny KV pool) is reported as
    a `medvllm: warning:` line, not in Python's file:line form."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "medvllm.cli",
            "inference",
            "generate",
            "--text",
            "hi",
            "--max-tokens",
            "2",
            "--kv-cache-space-gib",
            "0.001",
        ],
        capture_output=True,
        text=True,
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and "ConfigWarning" not in out.stderr
    assert any(line.startswith("medvllm: warning: max_model_len lowered from the model's 8192") for line in lines)
    assert lines[-1].startswith("medvllm: error: prompt (") and "exceeds max_model_len" in lines[-1]


def test_empty_stdin_is_an_error(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, out, err = run(capsys, "inference", "generate")
    assert code == 1 and err == "medvllm: error: the prompt is empty: give some text\n"


def test_missing_input_file_is_an_error(capsys, tmp_path):
    code, _, err = run(capsys, "inference", "generate", "--input", str(tmp_path / "none.txt"))
    assert code == 1 and "cannot read --input" in err


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_terminal_and_not_quiet(monkeypatch):
    for stream, quiet, shown in [(_Tty(), False, True), (_Tty(), True, False), (io.StringIO(), False, False)]:
        monkeypatch.setattr(sys, "stderr", stream)
        with output.step(types.SimpleNamespace(quiet=quiet), "Loading model"):
            pass
        assert ("Loading model... done" in stream.getvalue()) is shown


def test_chat_mode_on_a_model_without_a_chat_template_warns_that_the_text_goes_raw(capsys, tmp_path, monkeypatch):
    from tests.tiny_models import build_tiny

    monkeypatch.delenv("MEDVLLM_DEPLOYMENT_PROFILE", raising=False)
    build_tiny("llama", tmp_path)  # its tokenizer has no chat template
    argv = ["inference", "generate", "--model", str(tmp_path), "--text", "w5 w6", "--max-tokens", "2",
            "--deployment-profile", "none", "--max-model-len", "128", "--json"]  # fmt: skip
    code, out, err = run(capsys, *argv)
    assert code == 0 and json.loads(out)["chat_template"] is False
    assert "no chat template: the prompt is sent as raw text" in err
    code, _, err = run(capsys, *argv, "--no-chat")  # asked for raw text: nothing to warn about
    assert code == 0 and "no chat template" not in err
