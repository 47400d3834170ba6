"""CLI behaviour: exports, counts, byte-identical reference set, one-line errors with exit code 2."""

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream_mla.cli import main
from stream_mla.models import PRESETS, from_hf_config

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_mla.cli", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--model", "deepseek-v9"], "--model"),
        (["--scheme", "mla-best"], "--scheme"),
        (["--phase", "train"], "--phase"),
        (["--batch", "0"], "--batch"),
        (["--context", "-4"], "--context"),
        (["--precision", "fp16"], "--precision"),
        (["--scheme", "gqa", "--kv-heads", "3"], "kv_heads"),
        (["--weights", "zeros"], "--weights"),
        (["--weights", "random"], "--seed"),
        (["--weights", "random", "--seed", "1", "--precision", "bf16"], "--precision"),
        (["--hf-config", "/no/such/config.json"], "--hf-config"),
    ],
)
def test_bad_export_input_is_one_line_exit_2(args, field, capsys):
    assert main(["export", *args, "-o", "/dev/null"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"hidden_size": 0, "num_attention_heads": 4, "num_hidden_layers": 2}, "d_model"),
        ({"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3, "num_hidden_layers": 2}, "kv_heads"),
        ({"hidden_size": 64, "num_hidden_layers": 2}, "num_attention_heads"),
        ({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "kv_lora_rank": 16}, "qk_nope_head_dim"),
        ({"hidden_size": 66, "num_attention_heads": 4, "num_hidden_layers": 2}, "heads"),
    ],
)
def test_bad_hf_config_names_the_field(tmp_path, capsys, config, field):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["export", "--hf-config", str(path), "--scheme", "mha", "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err


def test_mla_scheme_on_mha_model_is_rejected(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2}))
    assert main(["export", "--hf-config", str(path), "--scheme", "mla-absorb", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "needs an MLA model" in capsys.readouterr().err


def test_hf_configs_read_deepseek_and_llama(tmp_path):
    v3 = PRESETS["deepseek-v3"]
    hf = {"model_type": "deepseek_v3", "hidden_size": 7168, "num_attention_heads": 128, "num_key_value_heads": 128,
          "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
          "v_head_dim": 128, "num_hidden_layers": 61, "vocab_size": 129280}  # fmt: skip
    (tmp_path / "v3.json").write_text(json.dumps(hf))
    got = from_hf_config(tmp_path / "v3.json")
    assert got.model_dump(exclude={"name"}) == v3.model_dump(exclude={"name"})
    lite = {**hf, "hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 16, "q_lora_rank": None}
    (tmp_path / "lite.json").write_text(json.dumps(lite))
    assert from_hf_config(tmp_path / "lite.json").q_lora_rank == 0
    llama = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
             "num_hidden_layers": 32, "head_dim": 128}  # fmt: skip
    (tmp_path / "llama.json").write_text(json.dumps(llama))
    m = from_hf_config(tmp_path / "llama.json")
    assert (m.is_mla, m.n_kv, m.d_h, m.heads) == (False, 8, 128, 32)


def test_export_and_count_json(tmp_path):
    out = tmp_path / "absorb.onnx"
    r = cli("export", "--model", "deepseek-v3", "--scheme", "mla-reuse", "--phase", "decode", "--batch", "1",
            "--context", "4096", "-o", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size < 16_000  # shapes mode: data-less weights, a few KB for a V3 layer
    r = cli("count", str(out), "--json", "--platform", "h100-like")
    doc = json.loads(r.stdout)
    assert set(doc["bytes"]) == {"weights", "kv_read", "kv_write", "activations", "total"}
    assert doc["macs"] == 187_105_280 * 1 + 128 * 4096 * (2 * 512 + 64)  # B*(W_f + h*L*(2*d_c + d_r))
    assert doc["bytes"]["kv_read"] == 2 * 4096 * 576
    assert doc["roofline"]["bound"] == "memory"
    assert {"name", "op", "macs"} <= set(doc["nodes"][0])


def test_count_rejects_non_workload(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert main(["count", str(bad)]) == 2
    assert main(["count", str(tmp_path / "missing.onnx")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_reference_set_regenerates_byte_identically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["export", "--reference-set", "--out", str(a), "-q"]) == 0
    assert main(["export", "--reference-set", "--out", str(b), "-q"]) == 0
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in (ROOT / "onnx_models").iterdir())
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors
    _, mismatch, errors = filecmp.cmpfiles(a, ROOT / "onnx_models", names, shallow=False)
    assert not mismatch and not errors, "committed onnx_models/ is stale: run `stream-mla export --reference-set`"


def test_numeric_export_is_deterministic(tmp_path):
    paths = [tmp_path / f"{i}.onnx" for i in range(2)]
    for p in paths:
        assert main(["export", "--model", "deepseek-v2-lite", "--scheme", "mla-absorb", "--context", "4",
                     "--weights", "random", "--seed", "5", "-o", str(p)]) == 0  # fmt: skip
    assert paths[0].read_bytes() == paths[1].read_bytes()
