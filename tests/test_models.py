"""Model presets and the Hugging Face config.json reader: families, model types, Falcon, dtypes, unique names."""

import json
import re

import pytest

from stream_mla.errors import SpecError
from stream_mla.models import CONFIG_DIR, PRESETS, SHIPPED_PRESETS, from_hf_config, resolve_name_or_path

# Typed in from the public config.json of each model (not read from the shipped files):
# (d_model, heads, kv_heads, d_h, layers, family, sliding_window)
PUBLIC = {
    "kimi-k2": (7168, 64, 64, 128, 61, "mla", None),  # moonshotai/Kimi-K2-Instruct
    "llama-3.1-8b": (4096, 32, 8, 128, 32, "gqa", None),  # meta-llama/Llama-3.1-8B
    "llama-3.1-70b": (8192, 64, 8, 128, 80, "gqa", None),  # meta-llama/Llama-3.1-70B
    "qwen2.5-7b": (3584, 28, 4, 128, 28, "gqa", None),  # Qwen/Qwen2.5-7B (use_sliding_window: false)
    "mistral-7b": (4096, 32, 8, 128, 32, "gqa", 4096),  # mistralai/Mistral-7B-v0.1
}
LLAMA_8B = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
            "num_hidden_layers": 32, "torch_dtype": "bfloat16"}  # fmt: skip
FALCON_7B = {"model_type": "falcon", "hidden_size": 4544, "num_attention_heads": 71, "num_hidden_layers": 32,
             "multi_query": True, "new_decoder_architecture": False, "num_kv_heads": 71}  # fmt: skip


@pytest.fixture
def write(tmp_path):
    def _write(config: dict, name: str = "config.json"):
        path = tmp_path / name
        path.write_text(json.dumps(config))
        return path

    return _write


@pytest.mark.parametrize("preset", PUBLIC)
def test_preset_matches_public_config(preset):
    m = PRESETS[preset]
    assert (m.d_model, m.heads, m.n_kv, m.d_h, m.layers, m.family, m.sliding_window) == PUBLIC[preset]
    assert (m.name, m.precision) == (preset, "bf16")


def test_kimi_k2_is_deepseek_v3_mla_with_half_the_heads():
    k2, v3 = PRESETS["kimi-k2"], PRESETS["deepseek-v3"]
    assert k2.model_dump(exclude={"name", "heads", "kv_heads"}) == v3.model_dump(exclude={"name", "heads", "kv_heads"})
    assert (k2.q_lora_rank, k2.kv_lora_rank, k2.qk_nope_head_dim, k2.qk_rope_head_dim) == (1536, 512, 128, 64)


def test_every_shipped_config_is_a_preset():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.json")) == sorted(SHIPPED_PRESETS) == sorted(PUBLIC)


@pytest.mark.parametrize("preset", ["deepseek-v3", "deepseek-v2", "deepseek-v2-lite"])
def test_deepseek_presets_are_mla(preset):
    assert PRESETS[preset].family == "mla"


@pytest.mark.parametrize(
    ("kv", "family"), [({"num_key_value_heads": 1}, "mqa"), ({"num_key_value_heads": 32}, "mha"), ({}, "mha")]
)
def test_family_by_kv_heads(write, kv, family):
    cfg = {k: v for k, v in LLAMA_8B.items() if k != "num_key_value_heads"} | kv
    assert from_hf_config(write(cfg)).family == family


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "deepseek"])
def test_unsupported_model_type_is_one_line_naming_the_allowed(write, model_type):
    with pytest.raises(SpecError) as exc:
        from_hf_config(write({**LLAMA_8B, "model_type": model_type}))
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and f"model_type {model_type!r} is not supported" in msg
    assert "(allowed: deepseek_v2, deepseek_v3, deepseek_v32, kimi_k2, llama, mistral, qwen2, falcon)" in msg


def test_config_without_model_type_is_read_from_its_fields(write):
    cfg = {k: v for k, v in LLAMA_8B.items() if k != "model_type"}
    m = from_hf_config(write(cfg))
    assert (m.d_model, m.heads, m.n_kv, m.layers, m.family) == (4096, 32, 8, 32, "gqa")
    assert m.name.startswith("custom-")


def test_mla_model_type_needs_its_mla_fields(write):
    cfg = {"model_type": "deepseek_v3", "hidden_size": 7168, "num_attention_heads": 128, "num_hidden_layers": 61}
    with pytest.raises(SpecError, match="missing field kv_lora_rank"):
        from_hf_config(write(cfg))


def test_falcon_multi_query_is_mqa(write):
    m = from_hf_config(write(FALCON_7B))  # num_kv_heads=71 is ignored without the new decoder architecture
    assert (m.n_kv, m.family, m.d_h, m.heads) == (1, "mqa", 64, 71)
    no_flag = {k: v for k, v in FALCON_7B.items() if k != "multi_query"}  # FalconConfig defaults multi_query=True
    assert from_hf_config(write(no_flag)).family == "mqa"


def test_falcon_new_decoder_architecture_reads_num_kv_heads(write):
    falcon_40b = {"model_type": "falcon", "hidden_size": 8192, "num_attention_heads": 128, "num_hidden_layers": 60,
                  "num_kv_heads": 8, "multi_query": True, "new_decoder_architecture": True}  # fmt: skip
    m = from_hf_config(write(falcon_40b))
    assert (m.n_kv, m.family, m.d_h) == (8, "gqa", 64)


def test_falcon_without_multi_query_is_mha(write):
    rw_1b = {"model_type": "falcon", "hidden_size": 2048, "num_attention_heads": 32, "num_hidden_layers": 24,
             "multi_query": False, "new_decoder_architecture": False}  # fmt: skip
    assert from_hf_config(write(rw_1b)).family == "mha"


def test_falcon_old_field_names(write):
    old = {"model_type": "falcon", "hidden_size": 8192, "n_head": 128, "n_head_kv": 8, "n_layer": 60,
           "new_decoder_architecture": True}  # fmt: skip
    m = from_hf_config(write(old))
    assert (m.heads, m.n_kv, m.layers) == (128, 8, 60)


def test_head_dim_is_honoured(write):
    m = from_hf_config(write({**LLAMA_8B, "hidden_size": 3072, "num_attention_heads": 24, "head_dim": 128}))
    assert (m.d_h, m.head_dim) == (128, 128)


@pytest.mark.parametrize(
    ("dtype", "precision"), [("bfloat16", "bf16"), ("float16", "bf16"), ("float32", "fp32"), (None, "bf16")]
)
def test_torch_dtype_maps_to_precision(write, dtype, precision):
    assert from_hf_config(write({**LLAMA_8B, "torch_dtype": dtype})).precision == precision


def test_newer_dtype_field_is_read(write):
    cfg = {k: v for k, v in LLAMA_8B.items() if k != "torch_dtype"} | {"dtype": "float32"}
    assert from_hf_config(write(cfg)).precision == "fp32"


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3fn", ["bfloat16"]])
def test_unsupported_torch_dtype_is_one_line(write, dtype):
    with pytest.raises(SpecError) as exc:
        from_hf_config(write({**LLAMA_8B, "torch_dtype": dtype}))
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and "torch_dtype" in msg and "(allowed: bfloat16, float16, float32)" in msg


def test_sliding_window(write):
    mistral = {**LLAMA_8B, "model_type": "mistral"}  # Llama has no window (LlamaConfig); Mistral has
    assert from_hf_config(write({**mistral, "sliding_window": 4096})).sliding_window == 4096
    assert from_hf_config(write({**mistral, "sliding_window": None})).sliding_window is None  # null: none
    unused = {**LLAMA_8B, "sliding_window": 131072, "use_sliding_window": False}  # Qwen2's full attention
    assert from_hf_config(write(unused)).sliding_window is None


def test_model_without_window_dumps_as_before():
    assert "sliding_window" not in PRESETS["llama-3.1-8b"].model_dump()
    assert PRESETS["mistral-7b"].model_dump()["sliding_window"] == 4096


def test_two_llama_sizes_get_different_safe_deterministic_names(write):
    llama_70b = {**LLAMA_8B, "hidden_size": 8192, "num_attention_heads": 64, "num_hidden_layers": 80}
    a, b = from_hf_config(write(LLAMA_8B, "8b.json")), from_hf_config(write(llama_70b, "70b.json"))
    assert a.name != b.name
    assert all(re.fullmatch(r"llama-[0-9a-f]{8}", n) for n in (a.name, b.name))
    assert from_hf_config(write(LLAMA_8B, "again.json")).name == a.name  # content, not path, decides


def test_equal_layers_get_equal_names(write):
    explicit = {**LLAMA_8B, "head_dim": 128, "torch_dtype": "float32"}  # d/h = 128 anyway; precision is in the slug
    assert from_hf_config(write(explicit, "x.json")).name == from_hf_config(write(LLAMA_8B)).name


def test_name_from_name_or_path_is_file_safe(write):
    a = from_hf_config(write({**LLAMA_8B, "_name_or_path": "meta-llama/Llama-3.1-8B"}))
    assert re.fullmatch(r"Llama-3\.1-8B-[0-9a-f]{8}", a.name)
    pruned = {**LLAMA_8B, "_name_or_path": "meta-llama/Llama-3.1-8B", "num_hidden_layers": 16}
    assert from_hf_config(write(pruned, "pruned.json")).name != a.name  # same base name, different layer count
    odd = from_hf_config(write({**LLAMA_8B, "_name_or_path": "/ckpt/my model (v2)/"}))
    assert re.fullmatch(r"my-model-v2-[0-9a-f]{8}", odd.name)


def test_resolve_name_or_path(write):
    assert resolve_name_or_path("llama-3.1-70b") is PRESETS["llama-3.1-70b"]
    m = resolve_name_or_path(str(write(LLAMA_8B)))
    assert (m.d_model, m.heads, m.n_kv, m.layers) == (4096, 32, 8, 32)


@pytest.mark.parametrize("value", ["llama-9", "/no/such/config.json"])
def test_resolve_name_or_path_error_names_the_presets(value):
    with pytest.raises(SpecError) as exc:
        resolve_name_or_path(value)
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and repr(value) in msg
    presets = (
        "deepseek-v3, deepseek-v3.2, deepseek-v2, deepseek-v2-lite, kimi-k2, llama-3.1-8b, llama-3.1-70b, "
        "qwen2.5-7b, mistral-7b"
    )
    assert f"(allowed: {presets})" in msg


def test_sweep_models_take_a_config_path_relative_to_the_spec(tmp_path):
    """The README's sweep `models:` promise: a preset or a config.json, found next to the spec file."""
    from stream_mla.sweeps.points import run_point
    from stream_mla.sweeps.spec import load_sweep

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text((CONFIG_DIR / "llama-3.1-8b.json").read_text())
    spec = tmp_path / "sweep.yaml"
    spec.write_text("sweeps:\n  - models: [cfg/config.json, llama-3.1-8b]\n    schemes: [gqa]\n    context: [1024]\n"
                    "    platforms: [h20-like]\n")  # fmt: skip
    rows = [run_point(p) for p in load_sweep(spec).points()]
    assert [r["model"] for r in rows] == [str(tmp_path / "cfg" / "config.json"), "llama-3.1-8b"]
    assert rows[0]["kv_read_bytes"] == rows[1]["kv_read_bytes"] == 1024 * 2 * 8 * 128 * 2  # L * 2 n_kv d_h * bf16
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "sweeps:\n  - models: [nope.json]\n    schemes: [gqa]\n    context: [8]\n    platforms: [h20-like]\n"
    )
    with pytest.raises(SpecError, match=r"sweeps.0.models.0: model 'nope.json': neither a preset"):
        load_sweep(bad)
