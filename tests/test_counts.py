"""Analytic counts read off the graphs equal the spec's closed forms exactly, and its worked numbers."""

import pytest

from stream_mla.errors import SpecError
from stream_mla.models import PRESETS
from stream_mla.workloads import build, make_spec, registry
from stream_mla.workloads.counts import count, roofline, step_counts

import closed_forms as cf

MODELS = ["deepseek-v3", "deepseek-v2", "deepseek-v2-lite"]
SCHEMES = registry.applicable(PRESETS["deepseek-v3"])  # the same for V2 and V2-Lite; mla-sparse: test_sparse.py
GQA_GROUP = 8  # DeepSeek has n_kv = h: gqa needs an explicit n_kv (h/8, as the reference set)


def counted(model, scheme, phase, batch, context, **kw):
    kv = {"kv_heads": PRESETS[model].heads // GQA_GROUP} if scheme == "gqa" else {}
    spec = make_spec(model=PRESETS[model], scheme=scheme, phase=phase, batch=batch, context=context, **kv, **kw)
    return spec, count(build(spec))


def as_forms(c):
    e = c["elements"]
    return cf.Forms(c["macs"], e["weights"], e["kv_read"], e["kv_write"], e["activations"])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("batch", "context"), [(1, 1024), (1, 4096), (4, 32768), (32, 4096)])
def test_decode_equals_closed_form(model, scheme, batch, context):
    spec, c = counted(model, scheme, "decode", batch, context)
    expected = cf.decode(PRESETS[model], scheme, batch, context, n_kv=spec.group_kv_heads)
    assert as_forms(c) == expected
    p = PRESETS[model].bytes_per_element
    assert c["bytes"]["total"] == p * (expected.weights + expected.kv_read + expected.kv_write + expected.activations)
    assert c["bytes"]["kv_write"] * context == c["bytes"]["kv_read"]  # one new entry per cached token layout


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("batch", "seq"), [(1, 1024), (2, 4096)])
def test_prefill_equals_closed_form(model, scheme, batch, seq):
    spec, c = counted(model, scheme, "prefill", batch, seq)
    n_kv = spec.group_kv_heads
    assert as_forms(c) == cf.prefill(PRESETS[model], scheme, batch, seq, n_kv=n_kv)
    assert c["macs_causal"] == cf.prefill(PRESETS[model], scheme, batch, seq, causal=True, n_kv=n_kv).macs


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_per_token_slopes(model, scheme):
    """MACs and KV bytes per extra cached token (decode, B = 1) match the closed-form slopes."""
    m = PRESETS[model]
    spec, a = counted(model, scheme, "decode", 1, 2048)
    _, b = counted(model, scheme, "decode", 1, 2049)
    lo, hi = cf.decode(m, scheme, 1, 2048, spec.group_kv_heads), cf.decode(m, scheme, 1, 2049, spec.group_kv_heads)
    assert b["macs"] - a["macs"] == hi.macs - lo.macs
    assert b["bytes"]["kv_read"] - a["bytes"]["kv_read"] == (hi.kv_read - lo.kv_read) * m.bytes_per_element
    slope = {"mha": 2 * m.heads * m.d_h, "mla-absorb": m.heads * (2 * m.kv_lora_rank + m.qk_rope_head_dim)}
    if scheme in slope:  # independent hand values: §3 (2*h*d_h) and §5.2 (h*(2*d_c + d_r) = 139,264 for V3)
        assert b["macs"] - a["macs"] == slope[scheme]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_layer_by_layer_bytes(model, scheme):
    """No on-chip reuse between nodes: never below the analytic bytes, and per extra token it grows by the
    hand-derived slope (with §5.3's spill term for recompute)."""
    m = PRESETS[model]
    spec, a = counted(model, scheme, "decode", 2, 1024)
    _, b = counted(model, scheme, "decode", 2, 1025)
    assert a["bytes_layer_by_layer"] >= a["bytes"]["total"]
    slope = cf.layer_by_layer_slope(m, scheme, spec.group_kv_heads)
    assert b["bytes_layer_by_layer"] - a["bytes_layer_by_layer"] == 2 * slope * m.bytes_per_element


@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_step_counts_bracket_the_layer(scheme, phase):
    """The serialized-steps exchange (physics_report's serial bound): one step holding every node moves exactly
    the graph's inputs, weights and output (the analytic bytes but the cache writes, which the graph returns folded
    into its output); one step per node moves at most the layer-by-layer bytes (which count a tensor a node reads
    twice, twice); the steps' MACs always sum to the layer's. An attention core as one step lies in between."""
    if phase == "prefill" and "prefill" not in registry.get(scheme).phases:
        pytest.skip(f"{scheme} has no prefill")
    heads = 4 if scheme == "gqa" else None  # GQA on an MHA-shaped model needs its K/V heads
    model = build(make_spec(model=PRESETS["deepseek-v2-lite"], scheme=scheme, phase=phase, batch=2, context=64,
                            kv_heads=heads))  # fmt: skip
    c = count(model)
    one = step_counts(model, {n.name: "layer" for n in model.graph.node})
    assert one == {"layer": (c["macs"], c["bytes"]["total"] - c["bytes"]["kv_write"])}
    each = step_counts(model, {})
    assert sum(m for m, _ in each.values()) == c["macs"]
    assert c["bytes"]["total"] - c["bytes"]["kv_write"] < sum(b for _, b in each.values()) <= c["bytes_layer_by_layer"]


# §4.1, §5.5, §7 worked numbers (V3, p = 2): rounded as printed in the spec.
@pytest.mark.parametrize(
    ("model", "w_f", "w_m"),
    [("deepseek-v3", 187.1e6, 598.1e6), ("deepseek-v2", 149.2e6, 459.6e6), ("deepseek-v2-lite", 13.76e6, 36.8e6)],
)
def test_weight_totals_match_spec(model, w_f, w_m):
    _, absorb = counted(model, "mla-absorb", "decode", 1, 1024)
    _, merged = counted(model, "mla-merged", "decode", 1, 1024)
    assert absorb["elements"]["weights"] == pytest.approx(w_f, rel=1e-3)
    assert merged["elements"]["weights"] == pytest.approx(w_m, rel=1e-3)


@pytest.mark.parametrize(
    ("scheme", "context", "gmac", "dram_mb", "oi"),
    [
        ("mha", 4096, 0.604, 1208, 1.0),
        ("mla-naive", 4096, 0.355, 710, 1.0),
        ("mla-absorb", 4096, 0.758, 379, 4.0),
        ("mla-recompute", 4096, 69.06, 379, 364),
        ("mla-merged", 4096, 1.169, 1201, 1.9),
        ("mla-merged-per-step", 4096, 74.18, 379, 392),
        ("mla-absorb", 32768, 4.751, 412, 23.1),
        ("mla-recompute", 1024, 17.39, 375, 92.7),
    ],
)
def test_v3_decode_table(scheme, context, gmac, dram_mb, oi):
    """§7.1 (DRAM excludes the 2*B*d activations there)."""
    _, c = counted("deepseek-v3", scheme, "decode", 1, context)
    dram = c["bytes"]["total"] - c["bytes"]["activations"]
    assert c["macs"] / 1e9 == pytest.approx(gmac, rel=2e-3)
    assert dram / 1e6 == pytest.approx(dram_mb, abs=0.6)
    assert 2 * c["macs"] / dram == pytest.approx(oi, rel=0.03)


def test_roofline_bound_and_regime():
    """§7.5 h100-like (989.4 TFLOP/s, 3,350 GB/s), V3 L = 1k: mha 0.301 ms memory-bound; recompute at 32k 1.11 ms
    compute-bound."""
    peak, bw = 989.4e12 / 2, 3350e9
    _, mha = counted("deepseek-v3", "mha", "decode", 1, 1024)
    _, rc = counted("deepseek-v3", "mla-recompute", "decode", 1, 32768)
    r_mha, r_rc = roofline(mha, peak, bw), roofline(rc, peak, bw)
    assert r_mha.bound == "memory" and r_mha.bound_s * 1e3 == pytest.approx(0.301, rel=5e-3)
    assert r_rc.bound == "compute" and r_rc.bound_s * 1e3 == pytest.approx(1.11, rel=5e-3)


def test_node_macs_sum_and_names():
    _, c = counted("deepseek-v3", "mla-absorb", "decode", 1, 4096)
    assert sum(n["macs"] for n in c["nodes"]) == c["macs"]
    names = {n["name"] for n in c["nodes"]}
    assert {"q_down", "q_up_nope", "kv_down", "q_absorb", "scores_lat", "scores_rope", "probs", "ctx", "v_up",
            "o_proj"} <= names  # fmt: skip
    by_name = {n["name"]: n["macs"] for n in c["nodes"]}
    assert by_name["scores_lat"] == 128 * 4096 * 512  # A2: B*h*L*d_c
    assert by_name["q_absorb"] == 128 * 128 * 512  # A1: B*h*d_n*d_c


def test_gqa_without_kv_heads_on_an_mha_model_is_an_error():
    with pytest.raises(SpecError, match="--kv-heads"):
        make_spec(model=PRESETS["deepseek-v3"], scheme="gqa", context=16)


def test_a_sum_of_products_is_the_products_accumulation():
    """mla-merged-per-step's output projection sums per-head products (a MatMul, then a ReduceSum over the heads):
    counted as one node, as the engines run it, reading o_lat and W_VO and writing y; the per-head partials
    (B x h x d) never cross DRAM. Hand values for V2-Lite, B = 2, bf16: o_lat 2·16·512, W_VO 16·512·2048, y 2·2048."""
    _, c = counted("deepseek-v2-lite", "mla-merged-per-step", "decode", 2, 64)
    io = {n["name"]: n["io_bytes"] for n in c["nodes"]}
    assert io["o_merged_proj"] == 2 * (2 * 16 * 512 + 16 * 512 * 2048 + 2 * 2048)
    assert io["o_merged_sum"] == 0
    spec, _ = counted("deepseek-v2-lite", "mla-merged-per-step", "decode", 2, 64)
    steps = step_counts(build(spec), {})  # each node a step: the sum is its product's
    assert "o_merged_sum" not in steps and steps["o_merged_proj"] == (2 * 16 * 512 * 2048, io["o_merged_proj"])


def test_a_sum_whose_products_another_node_reads_stays_a_node():
    """The partials of a MatMul that a second node also reads must reach it: no fold, the MatMul writes them all."""
    from stream_mla.workloads.graph import GraphBuilder

    b = GraphBuilder("bf16")
    p = b.matmul("p", b.input("x", (4, 1, 8), cls="activations"), b.weight("W", (4, 8, 16)))  # [4, 1, 16]
    s = b.node("ReduceSum", [p, b.constant("s_axes", [0])], "s", (1, 16), keepdims=0)
    y = b.add("y", s, b.reduce("ReduceMax", "m", p))  # [1, 16] + [4, 1, 1] -> [4, 1, 16]
    folded = count(b.build(y, "g", {"bytes_per_element": 2, "phase": "decode"}))
    io = {n["name"]: n["io_bytes"] for n in folded["nodes"]}
    assert io["p"] == 2 * (4 * 8 + 4 * 8 * 16 + 4 * 16)
    assert io["s"] == 2 * (4 * 16 + 16) + 8  # and its int64 axes

    b = GraphBuilder("bf16")
    p = b.matmul("p", b.input("x", (4, 1, 8), cls="activations"), b.weight("W", (4, 8, 16)))
    y = b.node("ReduceSum", [p, b.constant("s_axes", [0])], "s", (1, 16), keepdims=0)
    alone = count(b.build(y, "g", {"bytes_per_element": 2, "phase": "decode"}))
    io = {n["name"]: n["io_bytes"] for n in alone["nodes"]}
    assert io == {"p": 2 * (4 * 8 + 4 * 8 * 16 + 16), "s": 0}  # x, W; the sum's output
