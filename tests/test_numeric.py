"""Numeric graphs (random weights, fp32) against the numpy reference, through onnx.reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

from stream_mla.models import ModelSpec
from stream_mla.workloads import build, make_spec, registry
from stream_mla.workloads.counts import metadata
from stream_mla.workloads.weights import canonical_weights

import reference
from graph_eval import run

SEED = 7
MLA_SCHEMES = tuple(s for s, r in registry.REGISTRY.items() if r.family == "mla" and "mla" in r.applies_to)
# mla-sparse (DSA models only) has its own numeric test with a fixed selection, tests/test_sparse.py
BASELINES = tuple(s for s in registry.NAMES if registry.get(s).is_baseline)


def heads_major(a):  # [B, T, H, d] -> [B, H, T, d]
    return np.ascontiguousarray(a.transpose(0, 2, 1, 3)).astype(np.float32)


def check(spec, x_all, expected_y, caches, expected_writes):
    model = build(spec, seed=SEED)
    n_q = spec.query_tokens
    feeds = {"x": x_all[:, -n_q:].astype(np.float32)}
    if spec.phase == "decode":
        feeds.update({i.name: caches[i.name] for i in model.graph.input if i.name != "x"})
    writes = [t for t, *_ in metadata(model)["kv_write"]]
    out = run(model, feeds, writes)
    y = out[model.graph.output[0].name]
    np.testing.assert_allclose(y, expected_y, rtol=2e-4, atol=2e-5)
    for t in writes:  # the new cache entries the graph computes
        np.testing.assert_allclose(out[t], expected_writes[t][:, -n_q:], rtol=2e-4, atol=2e-5, err_msg=t)


mla_models = st.builds(
    lambda h, dq, dc, dn, dr, dv, dm: ModelSpec(
        name="tiny", d_model=dm, heads=h, q_lora_rank=dq, kv_lora_rank=dc, qk_nope_head_dim=dn,
        qk_rope_head_dim=dr, v_head_dim=dv, precision="fp32"),
    st.sampled_from([1, 2, 4]), st.sampled_from([0, 6]), st.sampled_from([4, 8]), st.sampled_from([2, 4]),
    st.sampled_from([2, 4]), st.sampled_from([2, 6]), st.sampled_from([8, 12]),
)  # fmt: skip


@pytest.mark.parametrize("scheme", MLA_SCHEMES)
@pytest.mark.parametrize("phase", ["decode", "prefill"])
@settings(max_examples=6, deadline=None)
@given(m=mla_models, batch=st.integers(1, 2), context=st.integers(1, 5), queries=st.integers(1, 3),
       data_seed=st.integers(0, 99))  # fmt: skip
def test_mla_matches_reference(scheme, phase, m, batch, context, queries, data_seed):
    """Decode with Q new tokens (multi-token decode) attends densely over the L cached entries, as the graph."""
    queries = min(queries, context) if phase == "decode" else 1
    spec = make_spec(model=m, scheme=scheme, phase=phase, batch=batch, context=context, queries=queries)
    x_all = np.random.default_rng(data_seed).standard_normal((batch, context, m.d_model))
    n_q = spec.query_tokens
    y, parts = reference.mla(m, canonical_weights(m, SEED), x_all, n_q)
    bsz, h = batch, m.heads
    flat = {k: v.reshape(bsz, context, -1) for k, v in parts.items()}
    caches = {
        "c_kv_cache": parts["latent"][:, None].astype(np.float32),
        "k_nope_cache": heads_major(parts["k_nope"]),
        "v_cache": heads_major(parts["v"]),
        "k_rope_cache": (parts["k_pe"][:, None] if scheme != "mla-naive" else
                         np.repeat(parts["k_pe"][:, None], h, axis=1)).astype(np.float32),
    }  # fmt: skip
    writes = {"kv_norm_o": flat["latent"], "k_rope_proj_o": flat["k_pe"], "k_up_o": flat["k_nope"], "v_up_o": flat["v"]}
    check(spec, x_all, y, caches, writes)


@pytest.mark.parametrize("scheme", BASELINES)
@pytest.mark.parametrize("phase", ["decode", "prefill"])
@settings(max_examples=6, deadline=None)
@given(heads=st.sampled_from([2, 4, 8]), kv_div=st.sampled_from([1, 2, 4]), d_h=st.sampled_from([2, 4]),
       batch=st.integers(1, 2), context=st.integers(1, 5), queries=st.integers(1, 3),
       data_seed=st.integers(0, 99))  # fmt: skip
def test_baselines_match_reference(scheme, phase, heads, kv_div, d_h, batch, context, queries, data_seed):
    kv_heads = max(1, heads // kv_div)
    if scheme == "gqa" and kv_heads == heads:
        kv_heads = heads // 2  # gqa with n_kv = h is an error (it would silently be mha)
    m = ModelSpec(name="tiny-llama", d_model=12, heads=heads, kv_heads=kv_heads, head_dim=d_h, precision="fp32")
    queries = min(queries, context) if phase == "decode" else 1
    spec = make_spec(model=m, scheme=scheme, phase=phase, batch=batch, context=context, queries=queries)
    n_kv = spec.group_kv_heads
    x_all = np.random.default_rng(data_seed).standard_normal((batch, context, m.d_model))
    n_q = spec.query_tokens
    cw = canonical_weights(spec.layer_model, SEED)
    y, parts = reference.mha(cw, x_all, n_q, heads, n_kv, d_h)
    caches = {"k_cache": heads_major(parts["k"]), "v_cache": heads_major(parts["v"])}
    writes = {"k_proj_o": parts["k"].reshape(batch, context, -1), "v_proj_o": parts["v"].reshape(batch, context, -1)}
    check(spec, x_all, y, caches, writes)


def test_schemes_share_canonical_weights():
    """Every MLA scheme exported with one seed computes the same layer output."""
    m = ModelSpec(name="tiny", d_model=16, heads=4, q_lora_rank=8, kv_lora_rank=8, qk_nope_head_dim=4,
                  qk_rope_head_dim=2, v_head_dim=4, precision="fp32")  # fmt: skip
    x = np.random.default_rng(0).standard_normal((2, 3, 16)).astype(np.float32)
    outs = [ReferenceEvaluator(build(make_spec(model=m, scheme=s, phase="prefill", batch=2, context=3), seed=3))
            .run(None, {"x": x})[0] for s in MLA_SCHEMES]  # fmt: skip
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-4, atol=1e-5)
