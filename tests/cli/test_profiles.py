"""`medvllm profiles list | show | validate | select`, and the CLI's error contract."""

import json
import subprocess
import sys

import pytest

from medvllm.cli.main import main
from medvllm.hardware import GPUInfo, HardwareInfo, detect

SHIPPED = {"cpu", "cpu_gguf", "gpu_8bit", "gpu_4bit", "edge_cpu_int8", "onprem_gpu_bf16_flash", "cloud_gpu_tp4_fp16"}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_profile_and_whether_it_runs_here(capsys):
    code, out, err = run(capsys, "profiles", "list")
    assert code == 0 and err == ""
    assert {line.split()[0] for line in out.splitlines()} == SHIPPED
    assert "gpu_8bit" in out and ("not here" in out or "runs here" in out)


def test_list_json(capsys, tmp_path, monkeypatch):
    (tmp_path / "site.json").write_text('{"category": "edge", "engine": {"device": "cpu"}}')
    (tmp_path / "broken.json").write_text("[]")
    monkeypatch.setenv("MEDVLLM_PROFILES_DIR", str(tmp_path))
    code, out, _ = run(capsys, "profiles", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == SHIPPED | {"site", "broken"}
    assert rows["site"]["origin"] == "user" and rows["site"]["runnable"] is True
    assert rows["broken"]["runnable"] is False and "must be a JSON object" in rows["broken"]["error"]
    if not detect().has_cuda:
        assert rows["gpu_8bit"]["runnable"] is False and "no CUDA GPU" in rows["gpu_8bit"]["reasons"][0]


def test_show_by_name_and_by_path(capsys, tmp_path):
    code, out, _ = run(capsys, "profiles", "show", "gpu_4bit")
    assert code == 0 and 'quantization_method: "bnb-nf4"' in out and "this machine:" in out
    path = tmp_path / "p.json"
    path.write_text('{"profile": "p", "later": 1, "engine": {"max_num_seqs": 2}}')
    code, out, _ = run(capsys, "profiles", "show", str(path), "--json")
    data = json.loads(out)
    assert code == 0 and data["engine"] == {"max_num_seqs": 2} and data["ignored"] == ["later"]


def test_show_unknown_is_a_one_line_error(capsys):
    code, out, err = run(capsys, "profiles", "show", "nope")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("medvllm: error: unknown deployment profile 'nope'")


def test_validate(capsys, tmp_path):
    good, extra, mismatch, bad = (tmp_path / n for n in ("good.json", "extra.json", "mismatch.json", "bad.json"))
    good.write_text('{"engine": {"quantization_method": "bnb-8bit", "quantization_bits": 8}}')
    extra.write_text('{"future_knob": 1, "engine": {}}')
    mismatch.write_text('{"engine": {"quantization_method": "dynamic", "quantization_bits": 4}}')
    bad.write_text('{"engine": {"tensor_parallel_size": "4"}}')
    code, out, _ = run(capsys, "profiles", "validate", str(good), str(extra))
    assert code == 0 and out.startswith(f"ok   {good}") and "warning" in out.splitlines()[1]
    code, out, _ = run(capsys, "profiles", "validate", "--strict", str(extra))
    assert code == 1 and out.startswith(f"FAIL {extra}") and "future_knob" in out
    typo = tmp_path / "typo.json"
    typo.write_text('{"engine": {"max_num_seq": 4}}')
    code, out, err = run(capsys, "profiles", "validate", str(good), str(mismatch), str(bad), str(typo))
    lines = out.splitlines()
    assert code == 1 and lines[0].startswith("ok") and "does not match" in lines[1] and "not of type" in lines[2]
    assert lines[3].startswith(f"FAIL {typo}") and "did you mean 'max_num_seqs'" in lines[3]
    assert "3 of 4 profile(s) invalid" in err


def test_validate_every_shipped_file(capsys):
    from medvllm.deployment.profiles import shipped_dir

    paths = sorted(str(p) for p in shipped_dir().glob("*.json"))
    code, out, _ = run(capsys, "profiles", "validate", "--strict", *paths)
    assert code == 0 and out.count("ok   ") == len(SHIPPED)


def fake(tmp_path, hw: HardwareInfo):
    path = tmp_path / "hw.json"
    path.write_text(json.dumps({"hardware": hw.to_dict()}))
    return str(path)


@pytest.mark.parametrize(
    "gpus,expected",
    [
        ((), "cpu_gguf"),  # the default model is a quantized GGUF file
        ((GPUInfo("A100", (8, 0), 80 << 30),) * 4, "cloud_gpu_tp4_fp16"),
        ((GPUInfo("A10", (8, 6), 24 << 30),), "onprem_gpu_bf16_flash"),
        ((GPUInfo("T4", (7, 5), 8 << 30),), "gpu_4bit"),
        ((GPUInfo("V100", (7, 0), 32 << 30),), "gpu_8bit"),
    ],
)
def test_select_on_described_hardware(capsys, tmp_path, gpus, expected):
    hw = HardwareInfo(
        cpu_count=8, total_memory=64 << 30, available_memory=60 << 30, gpus=gpus, backends={"bitsandbytes": True}
    )
    code, out, _ = run(capsys, "profiles", "select", "--hardware", fake(tmp_path, hw))
    assert code == 0 and out == f"{expected}\n"


def test_select_explain_marks_every_profile(capsys, tmp_path):
    hw = HardwareInfo(
        cpu_count=8,
        total_memory=64 << 30,
        available_memory=60 << 30,
        gpus=(GPUInfo("RTX", (8, 6), 8 << 30),),
        backends={"bitsandbytes": True},
    )
    code, out, _ = run(capsys, "profiles", "select", "--explain", "--hardware", fake(tmp_path, hw))
    assert code == 0 and out.startswith("onprem_gpu_bf16_flash\n")
    assert "SmolLM2-135M" in out and "auto-selection, in order:" in out
    assert sum(1 for line in out.splitlines() if "runs here" in line or "not here" in line) == len(SHIPPED)


def test_select_json_on_this_machine(capsys):
    code, out, _ = run(capsys, "profiles", "select", "--json")
    data = json.loads(out)
    assert code == 0 and data["hardware"]["cpu_count"] == detect().cpu_count
    assert {p["name"] for p in data["profiles"]} == SHIPPED and data["reasons"]
    assert data["model"]["num_params"] > 100_000_000


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profiles", "frobnicate"])
    assert e.value.code == 2


def test_module_entry_point_and_verbose_traceback():
    base = [sys.executable, "-m", "medvllm.cli", "profiles", "show", "/no/such.json"]
    quiet = subprocess.run(base, capture_output=True, text=True)
    assert quiet.returncode == 1 and quiet.stdout == "" and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines() == [
        "medvllm: error: deployment profile file '/no/such.json' does not exist: check the path "
        "(a path is never replaced by a shipped profile of the same name)"
    ]
    loud = subprocess.run(base + ["--verbose"], capture_output=True, text=True)
    assert loud.returncode == 1 and "Traceback" in loud.stderr
