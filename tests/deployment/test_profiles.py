"""Profiles: the shipped seven (the spec's six and cpu_gguf), the schema, lookup by name or path, and every invalid input's error."""

import json
from pathlib import Path

import pytest

from medvllm import config as C
from medvllm.deployment import profiles, schema, translate
from medvllm.errors import ProfileError
from medvllm.hardware import GPUInfo, HardwareInfo

REPO = Path(__file__).resolve().parents[2]
SPEC_ENGINES = {  # the engine blocks of the product spec (gpu_4bit as the issue spells it out)
    "cpu": {"device": "cpu", "tensor_parallel_size": 1, "quantization_bits": 8, "quantization_method": "dynamic"},
    "gpu_8bit": {
        "device": "cuda",
        "tensor_parallel_size": 1,
        "quantization_bits": 8,
        "quantization_method": "bnb-8bit",
    },
    "gpu_4bit": {"device": "cuda", "tensor_parallel_size": 1, "quantization_bits": 4, "quantization_method": "bnb-nf4"},
    "edge_cpu_int8": {
        "tensor_parallel_size": 1,
        "quantization_bits": 8,
        "quantization_method": "dynamic",
        "memory_efficient": True,
        "enable_memory_pooling": True,
        "pool_device": "auto",
    },
    "cpu_gguf": {  # not in the spec: a quantized GGUF file at its own quantization
        "device": "cpu",
        "tensor_parallel_size": 1,
        "quantization_method": "gguf",
        "gguf_activations": "mixed",
        "memory_efficient": True,
    },
    "onprem_gpu_bf16_flash": {
        "tensor_parallel_size": 1,
        "enable_mixed_precision": True,
        "mixed_precision_dtype": "bf16",
        "enable_flash_attention": True,
        "attention_impl": "flash",
        "allow_tf32": True,  # the spec's cudnn_benchmark dropped: these models run no convolutions
        "kvcache_block_size": 256,  # whole flash-attn pages (test_flash_block_size.py)
    },
    "cloud_gpu_tp4_fp16": {
        "tensor_parallel_size": 4,
        "enable_mixed_precision": True,
        "mixed_precision_dtype": "fp16",
        "enable_memory_pooling": True,
        "pool_device": "cuda",
    },
}
TRANSLATED = {
    "onprem_gpu_bf16_flash": {"dtype": "bfloat16", "attention_impl": "flash"},
    "cloud_gpu_tp4_fp16": {"dtype": "float16", "attention_impl": "auto"},
}
BIG = HardwareInfo(
    cpu_count=32,
    total_memory=256 << 30,
    available_memory=250 << 30,
    gpus=(GPUInfo("A100", (8, 0), 80 << 30),) * 4,
    backends={"bitsandbytes": True},
)


def write(tmp_path, text, name="p.json") -> str:
    path = tmp_path / name
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return str(path)


def test_the_shipped_profiles_match_the_spec():
    assert sorted(profiles.names({})) == sorted(SPEC_ENGINES)
    for name, engine in SPEC_ENGINES.items():
        p = profiles.load(name, {})
        assert (p.name, p.origin, p.engine, p.ignored, p.warnings) == (name, "shipped", engine, [], [])
        assert p.category in ("edge", "onprem", "cloud") and p.description


@pytest.mark.parametrize("name", sorted(SPEC_ENGINES))
def test_each_shipped_profile_builds_a_valid_config_on_hardware_that_can_run_it(name):
    from medvllm.deployment import merge

    p = profiles.load(name, {})
    hw = BIG.cpu_only() if p.engine.get("quantization_method") == "dynamic" else BIG
    config = merge.build(merge.merge(p.engine, f"profile:{name}", {}, hw)[0], hw)
    for key, value in p.engine.items():
        if key == "quantization_bits":
            assert C.quantization_bits(config.quantization_method) == value
        elif key not in translate.KEYS:
            assert getattr(config, key) == value
    for key, value in TRANSLATED.get(name, {}).items():  # what the profile keys mean as Config fields
        assert getattr(config, key) == value


def test_shipped_files_agree_with_the_repo_copies_and_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema.load_schema())
    validator.check_schema(schema.load_schema())
    assert json.loads((REPO / "docs/deployment_profile.schema.json").read_text()) == schema.load_schema()
    for path in profiles.shipped_dir().glob("*.json"):
        assert (REPO / "configs/deployment" / path.name).read_text() == path.read_text()
        validator.validate(json.loads(path.read_text()))


def test_schema_engine_keys_are_the_config_fields_and_profile_keys_with_their_enums():
    engine = schema.load_schema()["properties"]["engine"]["properties"]
    assert set(engine) == set(C.Config.field_names()) - {"model"} | set(translate.KEYS)
    assert engine["device"]["enum"] == list(C.DEVICES) == engine["pool_device"]["enum"]
    assert engine["attention_impl"]["enum"] == list(C.ATTENTION_IMPLS)
    assert engine["quantization_method"]["enum"] == list(C.QUANT_METHODS) + [None]
    assert engine["mixed_precision_dtype"]["enum"] == list(translate.MIXED_PRECISION_DTYPES)
    assert engine["quantization_bits"]["enum"] == sorted(set(C.QUANT_METHOD_BITS.values()) - {None}) + [None]


BAD = [
    ('{"engine": {', "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('"cpu"', "must be a JSON object"),
    ('{"profile": "x"}', "the required key 'engine' is missing"),
    ('{"engine": [1]}', "engine: [1] is not of type object"),
    ('{"engine": "cpu"}', 'engine: "cpu" is not of type object'),
    ('{"engine": {"quantization_bits": "8"}}', 'engine.quantization_bits: "8" is not one of 4, 8, null'),
    ('{"engine": {"tensor_parallel_size": "2"}}', 'engine.tensor_parallel_size: "2" is not of type integer'),
    ('{"engine": {"tensor_parallel_size": 0}}', "engine.tensor_parallel_size: 0 is less than the minimum 1"),
    ('{"engine": {"allow_tf32": "yes"}}', 'engine.allow_tf32: "yes" is not of type boolean'),
    ('{"engine": {"device": "tpu"}}', 'engine.device: "tpu" is not one of "auto", "cpu", "cuda"'),
    ('{"engine": {"quantization_method": "gptq"}}', 'engine.quantization_method: "gptq" is not one of'),
    ('{"engine": {"gpu_memory_utilization": 1.5}}', "more than the maximum 1"),
    ('{"engine": {}, "category": "datacenter"}', 'category: "datacenter" is not one of "edge", "onprem", "cloud"'),
    ('{"engine": {}, "profile": 3}', "profile: 3 is not of type string"),
    ('{"engine": {}, "description": false}', "description: false is not of type string"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_invalid_profiles_are_refused_with_the_reason(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as e:
        profiles.load(path, {})
    assert message in str(e.value) and path in str(e.value)


@pytest.mark.parametrize("text,_", BAD[3:])
def test_the_small_checker_agrees_with_jsonschema(text, _):
    jsonschema = pytest.importorskip("jsonschema")
    data = json.loads(text)
    assert bool(schema.check(data)) == (not jsonschema.Draft202012Validator(schema.load_schema()).is_valid(data))


def test_unknown_top_level_keys_are_ignored_with_a_warning_and_device_is_known(tmp_path):
    path = write(tmp_path, {"profile": "mine", "future": 1, "engine": {"device": "cpu"}})
    p = profiles.load(path, {})
    assert p.name == "mine" and p.origin == "path" and p.engine == {"device": "cpu"}
    assert p.ignored == ["future"]
    assert "ignoring unknown key(s) future" in p.warnings[0]


def test_a_path_must_exist_and_never_falls_back_to_a_shipped_profile(tmp_path):
    for value in ("cpu.json", str(tmp_path / "cpu.json"), "./cpu", "configs/nothing/cpu.json"):
        with pytest.raises(ProfileError, match="does not exist"):
            profiles.load(value, {})


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ProfileError) as e:
        profiles.load("gpu_2bit", {})
    assert "unknown deployment profile 'gpu_2bit'" in str(e.value) and "edge_cpu_int8" in str(e.value)


def test_user_folders_come_first_and_add_names(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    write(a, {"engine": {"device": "cpu", "max_num_seqs": 4}}, "cpu.json")
    write(b, {"engine": {"max_num_seqs": 2}}, "tiny.json")
    env = {profiles.PROFILES_DIR_ENV: f"{a}:{b}"}
    cpu = profiles.load("cpu", env)
    assert (cpu.origin, cpu.engine, cpu.path) == ("user", {"device": "cpu", "max_num_seqs": 4}, str(a / "cpu.json"))
    assert profiles.load("tiny", env).name == "tiny"
    assert profiles.names(env)[:2] == ["cpu", "tiny"] and len(profiles.names(env)) == 8


def test_load_all_reports_a_broken_user_profile_without_hiding_the_rest(tmp_path):
    write(tmp_path, "{oops", "broken.json")
    loaded = profiles.load_all({profiles.PROFILES_DIR_ENV: str(tmp_path)})
    broken = [x for x in loaded if isinstance(x, ProfileError)]
    assert len(loaded) == 8 and len(broken) == 1 and broken[0].profile_name == "broken"
