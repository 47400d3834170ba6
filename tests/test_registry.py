"""The scheme registry: one record per scheme read everywhere; every registered scheme exports, and claims and figures
run on a store holding every one of them (mqa/gqa rows once crashed `claims` with KeyError)."""

import json

import pandas as pd
import pytest

from stream_mla.claims import claims
from stream_mla.cli import main
from stream_mla.figures import make_figures
from stream_mla.models import PRESETS as MODELS
from stream_mla.models import ModelSpec
from stream_mla.sweeps.points import SweepPoint, run_point
from stream_mla.sweeps.spec import SweepSpec
from stream_mla.workloads import build, make_spec, registry
from stream_mla.workloads.counts import count

V3_SCHEMES = registry.applicable(MODELS["deepseek-v3"])  # every scheme but DSA's (V3 has no indexer)
LLAMA_LIKE = ModelSpec(name="llama-like", d_model=256, heads=8, kv_heads=2, head_dim=32)


def kv_for(scheme: str, model: ModelSpec) -> dict:
    return {"kv_heads": model.heads // 8} if scheme == "gqa" and model.n_kv == model.heads else {}


def test_records_are_distinct_and_complete():
    recs = list(registry.REGISTRY.values())
    for field in ("name", "label", "short", "color"):
        values = [getattr(r, field) for r in recs]
        assert len(set(values)) == len(values), f"duplicate {field}"
    assert tuple(r.name for r in recs) == registry.NAMES
    assert registry.canonical("mla-reuse") == "mla-absorb"  # the paper's name
    with pytest.raises(ValueError, match=r"unknown scheme 'mla-best' \(allowed: mha, gqa, mqa, .*mla-reuse\)"):
        registry.canonical("mla-best")
    for family in ("mla", "dsa", "mha", "gqa", "mqa"):  # every family has exactly one default
        assert sum(family in r.default_for for r in recs) == 1


@pytest.mark.parametrize(("model", "default"), [
    (MODELS["deepseek-v3"], "mla-absorb"), (MODELS["deepseek-v3.2"], "mla-sparse"), (LLAMA_LIKE, "gqa"),
    (ModelSpec(name="m", d_model=64, heads=4), "mha"), (ModelSpec(name="q", d_model=64, heads=4, kv_heads=1), "mqa"),
])  # fmt: skip
def test_default_scheme_per_family(model, default):
    assert registry.default_scheme(model) == default


@pytest.mark.parametrize("scheme", registry.NAMES)
def test_every_scheme_exports_where_it_applies(scheme):
    for model in (MODELS["deepseek-v2-lite"], MODELS["deepseek-v3.2"], LLAMA_LIKE):
        rec = registry.get(scheme)
        if model.family in rec.applies_to:
            c = count(build(make_spec(model=model, scheme=scheme, context=16, **kv_for(scheme, model))))
            assert c["macs"] > 0 and c["bytes"]["kv_read"] > 0
        else:
            with pytest.raises(Exception, match=f"scheme {scheme} needs "):
                make_spec(model=model, scheme=scheme, context=16)


def test_cli_default_scheme_follows_the_model(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 256, "num_attention_heads": 8,
                               "num_key_value_heads": 2, "num_hidden_layers": 2}))  # fmt: skip
    out = tmp_path / "llama.onnx"
    assert main(["export", "--hf-config", str(cfg), "--context", "16", "-o", str(out)]) == 0
    assert count(__import__("onnx").load(str(out)))["spec"]["scheme"] == "gqa"


@pytest.fixture(scope="module")
def every_scheme_table() -> pd.DataFrame:
    """Analytic rows of every registered scheme (V3; gqa at n_kv = h/8) on two presets, three contexts, B 1 and 32,
    a bandwidth sweep and a prefill pair: the shape of the default reproduction's store."""
    blocks = [
        {"models": ["deepseek-v3"], "schemes": list(V3_SCHEMES), "context": [1024, 4096, 32768],
         "batch": [1, 32], "platforms": ["h100-like", "h20-like"], "kv_heads": [16]},
        {"models": ["deepseek-v3"], "schemes": list(V3_SCHEMES), "context": [1024, 4096],
         "platforms": ["cloud-fusemax"], "bw_scale": [0.25, 4.0], "kv_heads": [16]},
        {"models": ["deepseek-v3"], "schemes": ["mha", "mqa", "mla-absorb"], "phases": ["prefill"], "context": [1024],
         "platforms": ["cloud-fusemax"]},
        {"models": ["deepseek-v3.2"], "schemes": ["mla-sparse", "mla-absorb"], "context": [1024, 4096, 32768],
         "platforms": ["h100-like", "h20-like"]},
    ]  # fmt: skip
    points = SweepSpec.from_dict({"sweeps": blocks}).points()
    return pd.DataFrame([run_point(p) for p in points])


@pytest.fixture(scope="module")
def serving_rows() -> pd.DataFrame:
    """Rows on the new axes: multi-token decode, the core alone, fp8 and an fp8 cache, a window."""
    block = {"models": ["deepseek-v3"], "schemes": list(V3_SCHEMES), "context": [4096],
             "platforms": ["h100-like"], "kv_heads": [16], "queries": [1, 2], "parts": ["layer", "core"],
             "precision": [None, "fp8"], "kv_precision": [None, "fp8"], "window": [None, 1024]}  # fmt: skip
    return pd.DataFrame([run_point(p) for p in SweepSpec.from_dict({"sweeps": [block]}).points()])


def test_claims_and_figures_take_every_scheme(every_scheme_table, tmp_path):
    t = every_scheme_table
    assert set(t["scheme"]) == set(registry.NAMES)
    table = claims(t)
    assert list(table["claim"]) == ["C1", "C2", "C3a", "C3b", "C3c", "C4"]
    assert set(table["result"]) <= {"PASS", "FAIL", "NO DATA"}
    assert (table.set_index("claim").loc[["C1", "C2", "C3b", "C3c"], "result"] == "PASS").all()  # analytic rows
    files = make_figures(t, tmp_path)
    assert len(files) == 18  # F1-F6, each PNG + SVG + CSV
    f1 = pd.read_csv(tmp_path / "F1_oi_vs_context.csv")
    assert set(f1.loc[f1["kind"] == "layer", "series"]) == set(V3_SCHEMES)  # F1 is about V3


def test_new_axes_leave_the_paper_views_unchanged(every_scheme_table, serving_rows, tmp_path):
    """Claims and figures take a store with every axis and read the paper's rows only (whole layer, Q = 1, one
    precision, bf16): adding multi-token, core, fp8 and windowed rows changes neither the claims nor F1-F6 data."""
    assert {"core", "layer"} == set(serving_rows["part"]) and {1, 2} == set(serving_rows["queries"])
    both = pd.concat([serving_rows, every_scheme_table], ignore_index=True)  # new rows first: no luck of order
    a, b = tmp_path / "a", tmp_path / "b"
    make_figures(every_scheme_table, a)
    make_figures(both, b)
    for csv in sorted(a.glob("*.csv")):
        assert csv.read_text() == (b / csv.name).read_text(), csv.name
    pd.testing.assert_frame_equal(claims(every_scheme_table), claims(both))


def test_sweep_rejects_unknown_schemes_with_the_registry_list():
    from stream_mla.errors import SpecError

    with pytest.raises(SpecError, match=r"unknown scheme 'mla-x' \(allowed: mha, gqa, mqa"):
        SweepSpec.from_dict({"sweeps": [{"models": ["deepseek-v3"], "schemes": ["mla-x"], "context": [8],
                                         "platforms": ["h20-like"]}]})  # fmt: skip


def test_gqa_row_records_its_kv_heads():
    row = run_point(SweepPoint(model="deepseek-v3", scheme="gqa", kv_heads=16, context=1024, platform="h20-like"))
    assert row["kv_heads"] == 16
    assert row["kv_read_bytes"] == 1024 * 2 * 16 * 128 * 2  # L * 2 * n_kv * d_h * bf16
