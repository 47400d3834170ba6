"""DeepSeek sparse attention (mla-sparse on deepseek-v3.2): counts against closed forms typed in from the DSA
structure, numerics against a numpy reference for a fixed selected index set, and its long-context balance."""

import numpy as np
import pytest

from stream_mla.errors import SpecError
from stream_mla.models import PRESETS, ModelSpec
from stream_mla.workloads import build, make_spec
from stream_mla.workloads.counts import count
from stream_mla.workloads.weights import canonical_weights

import closed_forms as cf
from graph_eval import run
from reference import rms, softmax

V32 = PRESETS["deepseek-v3.2"]


def test_preset_is_v3_plus_the_indexer():
    v3 = PRESETS["deepseek-v3"].model_dump(exclude={"name"})
    assert {k: v for k, v in V32.model_dump(exclude={"name"}).items() if k in v3} == v3
    assert (V32.index_n_heads, V32.index_head_dim, V32.index_topk, V32.family) == (64, 128, 2048, "dsa")


@pytest.mark.parametrize(("batch", "context", "queries"), [(1, 1024, 1), (1, 8192, 1), (2, 32768, 2),
                                                           (1, 131072, 1), (4, 4096, 4)])  # fmt: skip
@pytest.mark.parametrize("part", ["layer", "core"])
def test_counts_equal_closed_form(batch, context, queries, part):
    c = count(build(make_spec(model=V32, scheme="mla-sparse", batch=batch, context=context, queries=queries,
                              part=part)))  # fmt: skip
    expected = cf.sparse_decode_bytes(V32, batch, context, queries, core=part == "core")
    assert {"macs": c["macs"], **{k: c["bytes"][k] for k in ("weights", "kv_read", "kv_write", "activations")}} \
        == expected  # fmt: skip
    # only the indexer's Q x L blocks are causal among the new tokens; the selected keys are all attended
    index_macs = batch * (V32.index_n_heads * V32.index_head_dim + V32.index_n_heads)
    assert c["macs"] - c["macs_causal"] == index_macs * (queries * context - cf.causal_pairs(queries, context))


def test_sparse_against_absorb_at_long_context():
    """At L = 8k sparse moves more bytes than absorb (the indexer's weights and its fp8 keys cost more than the
    6k latents it skips); by 32k it moves less, and at 128k its cache read is 1/7.9 of absorb's."""

    def bytes_of(scheme, L):
        return count(build(make_spec(model=V32, scheme=scheme, context=L)))["bytes"]

    assert bytes_of("mla-sparse", 8192)["total"] > bytes_of("mla-absorb", 8192)["total"]
    assert bytes_of("mla-sparse", 32768)["total"] < bytes_of("mla-absorb", 32768)["total"]
    ratio = bytes_of("mla-absorb", 131072)["kv_read"] / bytes_of("mla-sparse", 131072)["kv_read"]
    assert ratio == pytest.approx(131072 * 576 * 2 / (131072 * 128 + 2048 * 576 * 2))


def test_sparse_is_decode_only_and_no_window():
    with pytest.raises(SpecError, match="modelled for decode only"):
        make_spec(model=V32, scheme="mla-sparse", phase="prefill", context=64)
    with pytest.raises(SpecError, match="--window"):
        make_spec(model=V32, scheme="mla-sparse", context=64, window=16)
    with pytest.raises(SpecError, match="needs a dsa model"):
        make_spec(model=PRESETS["deepseek-v3"], scheme="mla-sparse", context=64)


# ---- numerics ------------------------------------------------------------------------------------------------------
TINY = ModelSpec(name="tiny-dsa", d_model=16, heads=4, q_lora_rank=8, kv_lora_rank=8, qk_nope_head_dim=4,
                 qk_rope_head_dim=2, v_head_dim=4, index_n_heads=3, index_head_dim=4, index_topk=3,
                 precision="fp32")  # fmt: skip


def layernorm(x, eps=1e-6):
    c = x - x.mean(axis=-1, keepdims=True)
    return c / np.sqrt((c * c).mean(axis=-1, keepdims=True) + eps)


def reference(m, cw, x_all, Q, selected):
    """DSA written from the Hugging Face / DeepSeek module layout: the indexer scores of the last Q tokens over all
    T tokens, and MLA in which query i attends only to its selected tokens (a mask, not a gather)."""
    h, dn, dr, dv, dc = m.heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank
    n, di = m.index_n_heads, m.index_head_dim
    bsz, t, _ = x_all.shape
    x = x_all.astype(np.float64)
    q_resid = rms(x @ cw["q_a_proj"].T, cw["q_a_layernorm"])
    qi = (q_resid @ cw["indexer.wq_b"].T).reshape(bsz, t, n, di)[:, t - Q :]
    ki = layernorm(x @ cw["indexer.wk"].T)
    w = (x @ cw["indexer.weights_proj"].T)[:, t - Q :] / np.sqrt(n * di)
    index = np.einsum("bqj,bqjs->bqs", w, np.maximum(np.einsum("bqje,bse->bqjs", qi, ki), 0))
    q = (q_resid @ cw["q_b_proj"].T).reshape(bsz, t, h, dn + dr)[:, t - Q :]
    kv_a = x @ cw["kv_a_proj_with_mqa"].T
    c, k_pe = rms(kv_a[..., :dc], cw["kv_a_layernorm"]), kv_a[..., dc:]
    kv = (c @ cw["kv_b_proj"].T).reshape(bsz, t, h, dn + dv)
    k = np.concatenate([kv[..., :dn], np.broadcast_to(k_pe[:, :, None, :], (bsz, t, h, dr))], axis=-1)
    scores = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(dn + dr)
    mask = np.full((bsz, 1, Q, t), -np.inf)
    for b_ in range(bsz):
        for i in range(Q):
            mask[b_, 0, i, selected[b_, i]] = 0.0
    o = np.einsum("bhqk,bkhv->bqhv", softmax(scores + mask), kv[..., dn:]).reshape(bsz, Q, h * dv)
    return o @ cw["o_proj"].T, index, rms(kv_a[..., :dc]), k_pe, ki


@pytest.mark.parametrize(("batch", "context", "queries", "seed"), [(1, 6, 1, 0), (2, 6, 2, 1), (2, 3, 1, 2)])
def test_matches_reference_for_a_fixed_selection(batch, context, queries, seed):
    spec = make_spec(model=TINY, scheme="mla-sparse", batch=batch, context=context, queries=queries)
    k = min(TINY.index_topk, context)
    rng = np.random.default_rng(seed)
    x_all = rng.standard_normal((batch, context, TINY.d_model))
    # query i (position L - Q + i) may select any token up to its own position
    selected = np.array([[np.sort(rng.choice(context - queries + 1 + i, size=min(k, context - queries + 1 + i),
                                             replace=False)) for i in range(queries)] for _ in range(batch)],
                        dtype=object)  # fmt: skip
    if any(len(s) < k for row in selected for s in row):
        pytest.skip("an early query sees fewer than k tokens")
    selected = np.array(selected.tolist(), dtype=int)
    y, index, latent, k_pe, ki = reference(TINY, canonical_weights(TINY, 5), x_all, queries, selected)
    gather = np.take_along_axis
    feeds = {
        "x": x_all[:, -queries:].astype(np.float32),
        "index_k_cache": ki[:, None].astype(np.float32),
        "c_kv_selected": gather(latent[:, None], selected[..., None], axis=2).astype(np.float32),
        "k_rope_selected": gather(k_pe[:, None], selected[..., None], axis=2).astype(np.float32),
    }
    model = build(spec, seed=5)
    out = run(model, feeds, ["index_weighted_o"])
    got_y, got_index = out[model.graph.output[0].name], out["index_weighted_o"]
    np.testing.assert_allclose(got_y, y, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got_index[:, :, 0], index, rtol=2e-4, atol=2e-5)
