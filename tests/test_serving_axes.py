"""The serving axes of a workload: multi-token decode (Q new tokens), the attention core alone, sliding windows.
Counts against the closed forms in closed_forms.py (typed in from the spec, independently of the builders); the core
numerically equal (onnx.reference) to the same part of the full layer."""

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

from stream_mla.cli import main
from stream_mla.errors import SpecError
from stream_mla.models import PRESETS, ModelSpec
from stream_mla.workloads import build, make_spec, registry
from stream_mla.workloads.counts import count

import closed_forms as cf
from graph_eval import run

LLAMA = ModelSpec(name="llama-like", d_model=4096, heads=32, kv_heads=8, head_dim=128)
MODELS = {**{k: PRESETS[k] for k in ("deepseek-v3", "deepseek-v2", "deepseek-v2-lite")}, "llama-like": LLAMA}


def workload(model, scheme, **kw):
    m = MODELS[model]
    kv = {"kv_heads": m.heads // 8} if scheme == "gqa" and m.n_kv == m.heads else {}
    return make_spec(model=m, scheme=scheme, **kv, **kw)


def schemes_of(model):
    return [s for s in registry.applicable(MODELS[model])]


def forms(c):
    e = c["elements"]
    return cf.Forms(c["macs"], e["weights"], e["kv_read"], e["kv_write"], e["activations"])


def attention_coeff(m, scheme, n_kv):
    """MACs per query-key pair (and sequence) of the marked attention nodes: scores + context."""
    if scheme in ("mha", "gqa", "mqa"):
        return 2 * m.heads * m.d_h
    if scheme in ("mla-naive", "mla-recompute"):
        return m.heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)
    return m.heads * (2 * m.kv_lora_rank + m.qk_rope_head_dim)


CASES = [(model, s) for model in MODELS for s in schemes_of(model)]


@pytest.mark.parametrize(("model", "scheme"), CASES)
@pytest.mark.parametrize(("batch", "context", "queries"), [(1, 4096, 1), (1, 4096, 2), (2, 1024, 4), (3, 8, 8)])
def test_multi_token_decode_equals_closed_form(model, scheme, batch, context, queries):
    spec = workload(model, scheme, batch=batch, context=context, queries=queries)
    c = count(build(spec))
    assert forms(c) == cf.decode(MODELS[model], scheme, batch, context, spec.group_kv_heads, Q=queries)
    # causal among the new tokens: query i sees L - Q + 1 + i entries
    coeff = attention_coeff(spec.layer_model, scheme, spec.group_kv_heads) * batch
    dense = coeff * queries * context
    assert c["macs_causal"] == c["macs"] - dense + coeff * cf.causal_pairs(queries, context)


@pytest.mark.parametrize(("model", "scheme"), CASES)
@pytest.mark.parametrize(("context", "queries", "window"), [(32768, 1, 4096), (32768, 2, 4096), (100, 3, 200),
                                                            (4096, 1, 4096), (64, 4, 10)])  # fmt: skip
def test_sliding_window_caps_the_cache_read(model, scheme, context, queries, window):
    spec = workload(model, scheme, context=context, queries=queries, window=window)
    c = count(build(spec))
    assert forms(c) == cf.decode(MODELS[model], scheme, 1, context, spec.group_kv_heads, Q=queries, W=window)
    T = min(context, window + queries - 1)
    coeff = attention_coeff(spec.layer_model, scheme, spec.group_kv_heads)
    assert c["macs_causal"] == c["macs"] - coeff * queries * T + coeff * cf.causal_pairs(queries, context, window)


def test_mistral_window_from_its_config():
    """Mistral-7B's sliding_window 4096: at L = 32k a decode step reads 4096 entries, not 32768 (8x less)."""
    m = PRESETS["mistral-7b"]
    assert m.sliding_window == 4096
    full = count(build(make_spec(model=m, scheme="gqa", context=32768, window=32768)))
    windowed = count(build(make_spec(model=m, scheme="gqa", context=32768)))
    assert windowed["bytes"]["kv_read"] == 4096 * 2 * 8 * 128 * 2  # T * 2 n_kv d_h * bf16
    assert full["bytes"]["kv_read"] == 8 * windowed["bytes"]["kv_read"]


@pytest.mark.parametrize(("model", "scheme"), CASES)
@pytest.mark.parametrize(("phase", "batch", "context", "queries"), [("decode", 1, 4096, 1), ("decode", 128, 4096, 2),
                                                                    ("prefill", 2, 1024, 1)])  # fmt: skip
def test_core_equals_closed_form(model, scheme, phase, batch, context, queries):
    spec = workload(model, scheme, phase=phase, batch=batch, context=context, queries=queries, part="core")
    c = count(build(spec))
    q = spec.query_tokens
    assert forms(c) == cf.core(spec.layer_model, scheme, batch, context, q, spec.group_kv_heads)
    coeff = attention_coeff(spec.layer_model, scheme, spec.group_kv_heads) * batch
    assert c["macs_causal"] == c["macs"] - coeff * q * context + coeff * cf.causal_pairs(q, context)


def test_flashmla_core_intensity():
    """FlashMLA's absorbed decode (§11): h = 128, s_q = 1, bf16 latent: 2·h·(2 d_c + d_r)/(2 (d_c + d_r)) =
    128 · 1088 / 576 = 241.78 FLOP/B per cached token; with the queries and output the whole kernel is just below."""
    spec = make_spec(model=PRESETS["deepseek-v3"], scheme="mla-absorb", part="core", batch=128, context=4096)
    c = count(build(spec))
    per_token = 2 * 128 * 1088 / (576 * 2)
    assert per_token == pytest.approx(241.78, abs=0.01)
    assert c["flops"] / c["bytes"]["kv_read"] == pytest.approx(per_token, rel=1e-12)
    assert c["bytes"]["weights"] == c["bytes"]["kv_write"] == 0


def test_axis_errors_are_one_line(capsys):
    with pytest.raises(SpecError, match="--queries: 2 applies to decode only"):
        make_spec(model=PRESETS["deepseek-v3"], scheme="mla-absorb", phase="prefill", context=16, queries=2)
    with pytest.raises(SpecError, match="--queries: 9 new tokens need a cache of at least"):
        make_spec(model=PRESETS["deepseek-v3"], scheme="mla-absorb", context=8, queries=9)
    assert main(["export", "--part", "kernel", "--context", "8", "-o", "/tmp/x.onnx"]) == 2
    assert "--part" in capsys.readouterr().err


# ---- numerics: the core is exactly the attention part of the layer -----------------------------------------------
TINY_MLA = ModelSpec(name="tiny", d_model=16, heads=4, q_lora_rank=8, kv_lora_rank=8, qk_nope_head_dim=4,
                     qk_rope_head_dim=2, v_head_dim=4, precision="fp32")  # fmt: skip
TINY_GQA = ModelSpec(name="tiny-gqa", d_model=16, heads=4, kv_heads=2, head_dim=4, precision="fp32")
# core input -> the layer tensor holding the same values (decode reads the caches directly)
LAYER_TENSORS = {
    "q": "q_heads_o", "q_lat": "q_lat_rows_o", "q_nope": "q_nope_heads_o",
    "q_rope": {"mla-naive": "q_rope_heads_o"}, "c_kv_cache": None, "k_rope_cache": None, "k_cache": None,
    "v_cache": None, "k_nope_cache": None,
}  # fmt: skip


def _layer_name(inp: str, scheme: str) -> str:
    special = LAYER_TENSORS.get(inp)
    if isinstance(special, dict):
        return special.get(scheme, "q_rope_rows_o")
    return special or inp


@pytest.mark.parametrize("scheme", registry.applicable(TINY_MLA))  # mla-sparse: tests/test_sparse.py
@pytest.mark.parametrize(("batch", "context", "queries"), [(1, 5, 1), (2, 6, 3)])
def test_core_is_the_layers_attention(scheme, batch, context, queries):
    m = TINY_GQA if registry.get(scheme).is_baseline else TINY_MLA
    layer_spec = make_spec(model=m, scheme=scheme, context=context, queries=queries, batch=batch)
    core_spec = layer_spec.model_copy(update={"part": "core"})
    layer, core = build(layer_spec, seed=3), build(core_spec, seed=3)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in layer.graph.input}  # fmt: skip
    core_inputs = [i.name for i in core.graph.input]
    wanted = [_layer_name(i, scheme) for i in core_inputs if _layer_name(i, scheme) not in feeds] + ["ctx_o"]
    out = run(layer, feeds, wanted)
    core_feeds = {i: (feeds | out)[_layer_name(i, scheme)] for i in core_inputs}
    got = ReferenceEvaluator(core).run(None, core_feeds)[0]
    np.testing.assert_allclose(got, out["ctx_o"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheme", ["mha", "mla-absorb", "mla-recompute"])
@pytest.mark.parametrize(("context", "queries", "window"), [(64, 1, 16), (64, 3, 16)])
def test_windowed_graph_is_the_plain_graph_over_the_window(scheme, context, queries, window):
    """A window W changes which entries are read (the last W + Q - 1), not the computation: the graph equals the
    plain graph over that many entries, node for node (so it is numerically the reference's attention over them)."""
    m = TINY_GQA if registry.get(scheme).is_baseline else TINY_MLA
    windowed = build(make_spec(model=m, scheme=scheme, context=context, queries=queries, window=window), seed=1)
    plain = build(make_spec(model=m, scheme=scheme, context=window + queries - 1, queries=queries), seed=1)
    for g in (windowed, plain):
        del g.metadata_props[:]
        g.graph.name = ""
    assert windowed.SerializeToString() == plain.SerializeToString()
