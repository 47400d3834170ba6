"""The closed forms of attention-schemes.md §3, §4.1, §5, §6, typed in from the spec, independently of the
graphs: the oracle the analytic counter is checked against. Elements, not bytes."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Forms:
    macs: int
    weights: int
    kv_read: int
    kv_write: int
    activations: int


def dims(m):
    return (
        m.d_model,
        m.heads,
        m.q_lora_rank,
        m.q_in,
        m.kv_lora_rank,
        m.qk_nope_head_dim,
        m.qk_rope_head_dim,
        m.v_head_dim,
    )


def w_mha(m, n_kv):
    d, h, dh = m.d_model, m.heads, m.d_h
    return d * (h + 2 * n_kv) * dh + h * dh * d


def w_f(m):
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)
    return d * dq + q_in * h * (dn + dr) + d * (dc + dr) + h * dc * (dn + dv) + h * dv * d


def w_m(m):
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)
    return d * dq + q_in * h * (dc + dr) + d * (dc + dr) + h * dc * d


def per_step_merge(m):
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)
    return h * (q_in * dn * dc + dc * dv * d)


def decode(m, scheme, B, L, n_kv=None, Q=1, W=None):
    """§3 and §5: MACs and DRAM elements per layer and decode step, for Q new tokens per sequence (multi-token
    decode: every projection runs on Q tokens, the dense Q x T attention block) reading T cache entries: L, or
    W + Q - 1 under a sliding window W (the entries the Q queries see)."""
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)
    T = min(L, W + Q - 1) if W else L
    act = 2 * B * Q * d
    if scheme in ("mha", "gqa", "mqa"):
        n_kv = n_kv or h
        return Forms(B * (Q * w_mha(m, n_kv) + 2 * h * Q * T * m.d_h), w_mha(m, n_kv), B * T * 2 * n_kv * m.d_h,
                     B * Q * 2 * n_kv * m.d_h, act)  # fmt: skip
    lat = dc + dr
    if scheme == "mla-naive":
        e = h * (dn + dr + dv)
        return Forms(B * (Q * w_f(m) + h * Q * T * (dn + dr + dv)), w_f(m), B * T * e, B * Q * e, act)
    if scheme == "mla-absorb":
        return Forms(B * (Q * w_f(m) + h * Q * T * (2 * dc + dr)), w_f(m), B * T * lat, B * Q * lat, act)
    if scheme == "mla-recompute":  # W_UK/W_UV run over the T cached latents, not over the Q new tokens
        up = h * dc * (dn + dv)
        macs = B * (Q * (w_f(m) - up) + T * up + h * Q * T * (dn + dr + dv))
        return Forms(macs, w_f(m), B * T * lat, B * Q * lat, act)
    if scheme == "mla-merged":
        return Forms(B * (Q * w_m(m) + h * Q * T * (2 * dc + dr)), w_m(m), B * T * lat, B * Q * lat, act)
    if scheme == "mla-merged-per-step":
        macs = B * (Q * w_m(m) + h * Q * T * (2 * dc + dr)) + per_step_merge(m)
        return Forms(macs, w_f(m), B * T * lat, B * Q * lat, act)
    raise KeyError(scheme)


def core(m, scheme, B, T, Q, n_kv=None):
    """The attention core alone, as kernels report it: Q queries per sequence over T keys; bytes are the queries,
    the cache read and the output (no projection weights, no cache write). FlashMLA's absorbed decode:
    2·h·Q·T·(2 d_c + d_r) FLOPs over B·T·(d_c + d_r) cache elements (FlashMLA's "≈ 2·h_q·s_q FLOP/B", §11)."""
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)
    if scheme in ("mha", "gqa", "mqa"):
        n_kv = n_kv or h
        return Forms(B * 2 * h * Q * T * m.d_h, 0, B * T * 2 * n_kv * m.d_h, 0, 2 * B * h * Q * m.d_h)
    if scheme in ("mla-absorb", "mla-merged", "mla-merged-per-step"):
        return Forms(B * h * Q * T * (2 * dc + dr), 0, B * T * (dc + dr), 0, B * h * Q * (2 * dc + dr))
    if scheme == "mla-naive":
        return Forms(B * h * Q * T * (dn + dr + dv), 0, B * T * h * (dn + dr + dv), 0, B * h * Q * (dn + dr + dv))
    if scheme == "mla-recompute":
        up = h * dc * (dn + dv)
        return Forms(B * (T * up + h * Q * T * (dn + dr + dv)), up, B * T * (dc + dr), 0, B * h * Q * (dn + dr + dv))
    raise KeyError(scheme)


def causal_pairs(Q, L, W=None):
    """Query-key pairs of causal (windowed) attention, by direct summation: query i of the last Q sees
    min(W, L - Q + 1 + i) keys."""
    return sum(min(W, L - Q + 1 + i) if W else L - Q + 1 + i for i in range(Q))


def prefill(m, scheme, B, S, causal=False, n_kv=None):
    """§6: MACs per layer (dense f = 1, or causal f = (S+1)/(2S)); cache written; activations 2*B*S*d."""
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)
    pairs = S * (S + 1) // 2 if causal else S * S  # f * S^2
    act = 2 * B * S * d
    lat = dc + dr
    if scheme in ("mha", "gqa", "mqa"):
        n_kv = n_kv or h
        return Forms(B * (S * w_mha(m, n_kv) + 2 * h * pairs * m.d_h), w_mha(m, n_kv), 0, B * S * 2 * n_kv * m.d_h, act)
    if scheme in ("mla-naive", "mla-recompute"):
        written = h * (dn + dr + dv) if scheme == "mla-naive" else lat
        return Forms(B * (S * w_f(m) + h * pairs * (dn + dr + dv)), w_f(m), 0, B * S * written, act)
    if scheme == "mla-absorb":
        return Forms(B * (S * w_f(m) + h * pairs * (2 * dc + dr)), w_f(m), 0, B * S * lat, act)
    if scheme == "mla-merged":
        return Forms(B * (S * w_m(m) + h * pairs * (2 * dc + dr)), w_m(m), 0, B * S * lat, act)
    if scheme == "mla-merged-per-step":
        macs = B * (S * w_m(m) + h * pairs * (2 * dc + dr)) + per_step_merge(m)
        return Forms(macs, w_f(m), 0, B * S * lat, act)
    raise KeyError(scheme)


def layer_by_layer_slope(m, scheme, n_kv=None):
    """DRAM elements per extra cached token (decode, per sequence) when every node reads its inputs from DRAM and
    writes its output back: the cache operands once per node that reads them, plus every h-wide score row
    written and read again (scores h, rope scores h, their sum 3h, softmax 2h, context h for MLA; 4h for MHA).
    For recompute the extra 2h(d_n + d_v) is §5.3's spill term."""
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)
    if scheme in ("mha", "gqa", "mqa"):
        return 2 * (n_kv or h) * m.d_h + 4 * h
    return {
        "mla-naive": h * (dn + dr + dv) + 8 * h,
        "mla-recompute": 2 * dc + 2 * h * (dn + dv) + dr + 8 * h,
    }.get(scheme, 2 * dc + dr + 8 * h)  # absorb and both merged schemes: the latent read by scores and context


def sparse_decode_bytes(m, B, L, Q=1, p=2, core=False):
    """DeepSeek sparse attention (V3.2) decode, in bytes (its indexer keys are fp8, 1 byte): absorbed MLA over the
    k = min(index_topk, L) latents each query selects, plus the lightning indexer: projections W_IQ [q_in, n·d_i],
    W_IW [d, n], W_IK [d, d_i]; n·Q·L·d_i index-score MACs and the Q·n·L weighted sum over heads. The core is the
    two kernels alone (index and attention queries in, caches read, context out)."""
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)
    n, di, k = m.index_n_heads, m.index_head_dim, min(m.index_topk, L)
    w_idx = q_in * n * di + d * n + d * di
    attn = n * Q * L * di + Q * n * L + h * Q * k * (2 * dc + dr)
    kv_read = B * (L * di + Q * k * (dc + dr) * p)
    if core:
        act = B * Q * (n * di + n + h * (2 * dc + dr)) * p
        return {"macs": B * attn, "weights": 0, "kv_read": kv_read, "kv_write": 0, "activations": act}
    return {"macs": B * (Q * (w_f(m) + w_idx) + attn), "weights": (w_f(m) + w_idx) * p, "kv_read": kv_read,
            "kv_write": B * Q * ((dc + dr) * p + di), "activations": 2 * B * Q * d * p}  # fmt: skip


def split_kv_partials(m, scheme, B, C, Q=1):
    """Split-KV (flash-decoding) decode with the cache in C chunks: the elements every chunk hands the combine, its
    unnormalised context o_c (value width per query row) and its max m_c and sum l_c (one each per row), for the
    h·Q query rows of each sequence. Value width: d_h for the baselines, the latent d_c for the absorbed schemes
    (values are the latent), d_v per head for naive and recompute. The split adds these and no MACs or DRAM bytes."""
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)
    width = {"mha": m.d_h, "gqa": m.d_h, "mqa": m.d_h, "mla-naive": dv, "mla-recompute": dv}.get(scheme, dc)
    return B * h * Q * C * (width + 2)


def serial_steps(m, scheme, B, L):
    """§8.0: the (MACs, elements moved) of each step of a decode layer (Q = 1), in graph order: each product of
    weights reads its input and weights and writes its output (norms ride along); a latent or K/V projection writes
    its new cache entry instead; the attention core reads its queries and the cache (recompute: W_UK and W_UV too,
    its re-projection inside) and writes its context. mla-absorb, mla-recompute and mha (V3-like, q_lora_rank > 0
    for MLA). The graph's cache-write sink adds a few B-element exchanges, left out here."""
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)

    def product(n_in, n_out, out=True):  # B rows through an n_in x n_out weight
        return B * n_in * n_out, B * n_in + n_in * n_out + (B * n_out if out else 0)

    if scheme == "mha":
        dh = m.d_h
        core = (2 * B * h * L * dh, B * h * dh + 2 * B * L * h * dh + B * h * dh)
        k, v = product(d, h * dh), product(d, h * dh)
        return [product(d, h * dh), k, v, core, product(h * dh, d)]
    front = [product(d, dq), product(dq, h * dn), product(dq, h * dr), product(d, dc), product(d, dr)]
    if scheme == "mla-absorb":
        absorb_q = (B * h * dn * dc, B * h * dn + h * dn * dc + B * h * dc)
        core = (B * h * L * (2 * dc + dr), B * h * (dc + dr) + B * L * (dc + dr) + B * h * dc)
        up_v = (B * h * dc * dv, B * h * dc + h * dc * dv + B * h * dv)
        return [*front, absorb_q, core, up_v, product(h * dv, d)]
    if scheme == "mla-recompute":
        macs = B * L * h * dc * (dn + dv) + B * h * L * (dn + dr + dv)
        moved = B * h * (dn + dr) + B * L * (dc + dr) + h * dc * (dn + dv) + B * h * dv
        return [*front, (macs, moved), product(h * dv, d)]
    raise KeyError(scheme)


def serial_roofline(m, scheme, B, L, peak_flop_per_s, bytes_per_s, p=2):
    """T_serial = sum over the steps of max(2 F_k / peak, p Q_k / BW) (§8.0)."""
    return sum(max(2 * f / peak_flop_per_s, p * q / bytes_per_s) for f, q in serial_steps(m, scheme, B, L))


def core_crossover(m, B, R, p=2):
    """§8.0 C3a: L*_core, the context above which recompute's attention core (≈ 2·B·L·h·d_c(d_n+d_v) FLOPs over
    B·L·(d_c+d_r)·p + W_UK + W_UV bytes) turns compute-bound on a platform of ridge R."""
    d, h, dq, q_in, dc, dn, dr, dv = dims(m)
    weights = h * dc * (dn + dv) * p
    return R * weights / (2 * h * dc * (dn + dv) * B - R * (dc + dr) * p * B)
