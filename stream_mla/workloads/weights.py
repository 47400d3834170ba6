"""Canonical (Hugging Face layout) random weights and the factors each scheme's graph uses.

The same seed gives the same canonical weights for every scheme, so MLA schemes can be compared
numerically. Graph factors use the `X @ W` convention (attention-schemes.md §4.1) and are derived from
the canonical tensors:
- the RMSNorm gains are folded into the next projection (q_a_layernorm into W_UQ/W_QR, kv_a_layernorm into
  W_UK/W_UV), so the latent cache holds the normalised latent before its gain;
- the softmax scale 1/sqrt(d_n + d_r) (MHA: 1/sqrt(d_h)) is folded into the query projections;
- merged matrices (W_QK, W_VO) are products of the folded factors.
RoPE is omitted (an identity rotation): it costs zero MACs in the spec and, at a fixed position, is a
rotation that folds into W_QR/W_KR exactly like the gains.
"""

import numpy as np

from stream_mla.models import ModelSpec


def canonical_weights(m: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """nn.Linear weights ([out, in]) and norm gains with Hugging Face module names."""
    rng = np.random.default_rng(seed)

    def linear(out_dim: int, in_dim: int) -> np.ndarray:
        return (rng.standard_normal((out_dim, in_dim)) / np.sqrt(in_dim)).astype(np.float32)

    def gain(n: int) -> np.ndarray:
        return rng.uniform(0.5, 1.5, n).astype(np.float32)

    d, h = m.d_model, m.heads
    if not m.is_mla:
        return {
            "q_proj": linear(h * m.d_h, d),
            "k_proj": linear(m.n_kv * m.d_h, d),
            "v_proj": linear(m.n_kv * m.d_h, d),
            "o_proj": linear(d, h * m.d_h),
        }
    dn, dr, dv, dc = m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank
    w = {}
    if m.q_lora_rank:
        w["q_a_proj"] = linear(m.q_lora_rank, d)
        w["q_a_layernorm"] = gain(m.q_lora_rank)
        w["q_b_proj"] = linear(h * (dn + dr), m.q_lora_rank)
    else:
        w["q_proj"] = linear(h * (dn + dr), d)
    w["kv_a_proj_with_mqa"] = linear(dc + dr, d)
    w["kv_a_layernorm"] = gain(dc)
    w["kv_b_proj"] = linear(h * (dn + dv), dc)
    w["o_proj"] = linear(d, h * dv)
    if m.index_topk:  # DSA's lightning indexer (its k_norm LayerNorm without affine, like the other gains' fold)
        n, di = m.index_n_heads, m.index_head_dim
        w["indexer.wq_b"] = linear(n * di, m.q_in)
        w["indexer.wk"] = linear(di, d)
        w["indexer.weights_proj"] = linear(n, d)
    return w


def mha_factors(m: ModelSpec, cw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "W_Q": cw["q_proj"].T / np.sqrt(m.d_h),
        "W_K": cw["k_proj"].T,
        "W_V": cw["v_proj"].T,
        "W_O": cw["o_proj"].T,
    }


def mla_factors(m: ModelSpec, cw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """§4.1 factors with gains and scale folded, plus the merged matrices of §5.5."""
    h, dn, dr, dv, dc = m.heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank
    scale = 1.0 / np.sqrt(dn + dr)
    f = {}
    if m.q_lora_rank:
        f["W_DQ"] = cw["q_a_proj"].T
        q_b = cw["q_b_proj"].T * cw["q_a_layernorm"][:, None]
    else:
        q_b = cw["q_proj"].T
    q_b = (q_b * scale).reshape(m.q_in, h, dn + dr)
    f["W_UQ"] = q_b[:, :, :dn].reshape(m.q_in, h * dn)
    f["W_QR"] = q_b[:, :, dn:].reshape(m.q_in, h * dr)
    kv_a = cw["kv_a_proj_with_mqa"].T
    f["W_DKV"], f["W_KR"] = kv_a[:, :dc], kv_a[:, dc:]
    kv_b = (cw["kv_b_proj"].T * cw["kv_a_layernorm"][:, None]).reshape(dc, h, dn + dv)
    f["W_UK"] = kv_b[:, :, :dn].reshape(dc, h * dn)
    f["W_UV"] = kv_b[:, :, dn:].reshape(dc, h * dv)
    f["W_O"] = cw["o_proj"].T
    uq = f["W_UQ"].reshape(m.q_in, h, dn)
    uk = f["W_UK"].reshape(dc, h, dn)
    f["W_QK"] = np.einsum("qhn,chn->qhc", uq, uk).reshape(m.q_in, h * dc)
    uv = f["W_UV"].reshape(dc, h, dv)
    wo = f["W_O"].reshape(h, dv, m.d_model)
    f["W_VO"] = np.einsum("chv,hvd->hcd", uv, wo).reshape(h * dc, m.d_model)
    if m.index_topk:  # index weights carry DeepSeek's n^-1/2 and d_i^-1/2 scales; the q latent's gain folds in
        n, di = m.index_n_heads, m.index_head_dim
        gain = cw["q_a_layernorm"][:, None] if m.q_lora_rank else 1.0
        f["W_IQ"] = cw["indexer.wq_b"].T * gain
        f["W_IK"] = cw["indexer.wk"].T
        f["W_IW"] = cw["indexer.weights_proj"].T / np.sqrt(n * di)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in f.items()}


def graph_factors(m: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    cw = canonical_weights(m, seed)
    return mla_factors(m, cw) if m.is_mla else mha_factors(m, cw)
