"""Plain numpy reference of DeepSeek MLA and of MHA/GQA, written from the Hugging Face module layout
(canonical weights), independently of the exporter's folded factors. RoPE is omitted (identity rotation)
in both the reference and the graphs; prefill attention is the dense S x S block (no mask), as the graphs."""

import numpy as np


def rms(x, gain=None, eps=1e-6):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if gain is None else y * gain


def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mla(m, cw, x_all, n_queries):
    """Attention of the last n_queries tokens of x_all [B, T, d] over all T tokens.
    Returns y and the per-token cache quantities in every layout."""
    h, dn, dr, dv, dc = m.heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank
    bsz, t, _ = x_all.shape
    x = x_all.astype(np.float64)
    if m.q_lora_rank:
        q = rms(x @ cw["q_a_proj"].T, cw["q_a_layernorm"]) @ cw["q_b_proj"].T
    else:
        q = x @ cw["q_proj"].T
    q = q.reshape(bsz, t, h, dn + dr)[:, t - n_queries :]
    kv_a = x @ cw["kv_a_proj_with_mqa"].T
    latent_raw, k_pe = kv_a[..., :dc], kv_a[..., dc:]
    c = rms(latent_raw, cw["kv_a_layernorm"])  # what DeepSeek caches
    kv = (c @ cw["kv_b_proj"].T).reshape(bsz, t, h, dn + dv)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    k = np.concatenate([k_nope, np.broadcast_to(k_pe[:, :, None, :], (bsz, t, h, dr))], axis=-1)
    scores = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(dn + dr)
    o = np.einsum("bhqk,bkhv->bqhv", softmax(scores), v).reshape(bsz, n_queries, h * dv)
    y = o @ cw["o_proj"].T
    return y, {
        "latent": rms(latent_raw),  # normalised latent before its gain: the exporter folds the gain
        "k_pe": k_pe,
        "k_nope": k_nope,
        "v": v,
    }


def mha(cw, x_all, n_queries, heads, kv_heads, d_h):
    bsz, t, _ = x_all.shape
    x = x_all.astype(np.float64)
    q = (x @ cw["q_proj"].T).reshape(bsz, t, heads, d_h)[:, t - n_queries :]
    k = (x @ cw["k_proj"].T).reshape(bsz, t, kv_heads, d_h)
    v = (x @ cw["v_proj"].T).reshape(bsz, t, kv_heads, d_h)
    group = heads // kv_heads
    k_h, v_h = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # head i reads K/V head i // group
    scores = np.einsum("bqhe,bkhe->bhqk", q, k_h) / np.sqrt(d_h)
    o = np.einsum("bhqk,bkhv->bqhv", softmax(scores), v_h).reshape(bsz, n_queries, heads * d_h)
    return o @ cw["o_proj"].T, {"k": k, "v": v}
