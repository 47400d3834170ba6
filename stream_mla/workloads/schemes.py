"""One builder per attention scheme (attention-schemes.md §3, §5, §6) over the shared helpers below.

Layout conventions (engines.md §5.3, §11):
- Every attention is written as grouped attention: queries `[B, G, g*Sq, d]` against keys and values
  `[B, G, T, d]`. MHA has G = h, GQA G = n_kv, and the MLA latent schemes G = 1 (the latent is one K/V
  head shared by all h query heads, i.e. MQA with key width d_c + d_r).
- Decode reads an in-place cache of T = L entries (the new token's entry included), given as graph inputs;
  the new entry is computed in the graph and marked as the cache write. Prefill computes K/V from X (T = S).
- Per-head weights are viewed heads-first through Reshape/Transpose nodes.
"""

from dataclasses import dataclass

from stream_mla.models import ModelSpec
from stream_mla.workloads import split_kv
from stream_mla.workloads.graph import GraphBuilder


@dataclass(frozen=True)
class Shape:
    """Runtime sizes of one exported layer."""

    batch: int
    queries: int  # Sq: the new tokens for decode (1 unless multi-token), S for prefill
    keys: int  # T: the cache entries read for decode (L, or the window's share of it), S for prefill
    decode: bool
    chunks: int = 1  # split-KV decode: the cache read in C chunks of T/C keys, then combined (split_kv.py)
    pad: int = 0  # split-KV decode: the last of the T keys that are padding (masked), so that C divides T
    batch_apart: bool = False  # split-KV: B and the K/V heads as separate axes (rank-5 products, for Stream)


# ---- shared pieces ------------------------------------------------------------------------------
def group_queries(b: GraphBuilder, name: str, x: str, heads: int, groups: int) -> str:
    """[B, Sq, heads*d] -> [B, groups, (heads/groups)*Sq, d]; heads sharing a K/V head become rows."""
    bsz, sq, hd = b.shapes[x]
    d, g = hd // heads, heads // groups
    if sq == 1:
        return b.reshape(name, x, (bsz, groups, g, d))
    t = b.reshape(f"{name}_split", x, (bsz, sq, groups, g, d))
    t = b.transpose(f"{name}_t", t, (0, 2, 3, 1, 4))
    return b.reshape(name, t, (bsz, groups, g * sq, d))


def ungroup(b: GraphBuilder, name: str, x: str, queries: int) -> str:
    """Inverse of group_queries: [B, G, g*Sq, d] -> [B, Sq, G*g*d]."""
    bsz, groups, rows, d = b.shapes[x]
    g = rows // queries
    if queries == 1:
        return b.reshape(name, x, (bsz, 1, groups * g * d))
    t = b.reshape(f"{name}_split", x, (bsz, groups, g, queries, d))
    t = b.transpose(f"{name}_t", t, (0, 3, 1, 2, 4))
    return b.reshape(name, t, (bsz, queries, groups * g * d))


def heads_first(b: GraphBuilder, name: str, x: str, heads: int) -> str:
    """[B, Sq, H*d] (or grouped [B, 1, H*Sq, d]) -> [H, B*Sq, d] for per-head weight products."""
    shape = b.shapes[x]
    bsz, sq, d = (shape[0], shape[2] // heads, shape[3]) if len(shape) == 4 else (shape[0], shape[1], shape[2] // heads)
    order = (bsz, heads, sq, d) if len(shape) == 4 else (bsz, sq, heads, d)
    t = b.reshape(f"{name}_split", x, order)
    t = b.transpose(f"{name}_t", t, (1, 0, 2, 3) if len(shape) == 4 else (2, 0, 1, 3))
    return b.reshape(name, t, (heads, bsz * sq, d))


def heads_last(b: GraphBuilder, name: str, x: str, batch: int) -> str:
    """[H, B*Sq, d] -> [B, Sq, H*d]."""
    heads, rows, d = b.shapes[x]
    t = b.reshape(f"{name}_split", x, (heads, batch, rows // batch, d))
    t = b.transpose(f"{name}_t", t, (1, 2, 0, 3))
    return b.reshape(name, t, (batch, rows // batch, heads * d))


def kv_view(b: GraphBuilder, name: str, cache: str) -> str:
    """A layout no-op on a cache input: ZigZag takes a MatMul operand for a constant weight (counted once,
    not per batch and head) unless a node produces it (engines.md #10); Stream rejects Identity."""
    return b.reshape(name, cache, b.shapes[cache])


def attention(b: GraphBuilder, terms: list[tuple[str, str, str]], values: str, causal: bool,
              split: Shape | None = None) -> str:  # fmt: skip
    """softmax(sum_i q_i @ k_i^T) @ values. Each term is (score node name, q [B,G',r,d], k [B,G',T,d]);
    every score is reshaped to the first term's [B, G, g*Sq, T] layout before the sum. The block is dense
    (no mask, engines.md #9); `causal` marks its query-key nodes, whose MACs the counter scales to the pairs a
    causal (and windowed) attention really computes. chunks > 1: the split-KV form (`split_kv.attention`, same
    result and MACs), whose keys and values may also come pre-chunked as [B, G', C, T/C, d]. `split`: the layer's
    Shape, whose chunks (and batch_apart) choose that form; None or one chunk: the plain form."""
    if split is not None and split.chunks > 1:
        return split_kv.attention(b, terms, values, causal, split.chunks, split.batch_apart, split.pad)
    scores = []
    for name, q, k in terms:
        kt = b.transpose(f"{name}_kt", k, (0, 1, 3, 2))
        s = b.matmul(name, q, kt)
        if causal:
            b.mark_causal(s)
        if scores and b.shapes[s] != b.shapes[scores[0]]:
            s = b.reshape(f"{name}_r", s, b.shapes[scores[0]])
        scores.append(s)
    total = scores[0]
    for i, s in enumerate(scores[1:], 1):
        total = b.add("scores_add" if i == 1 else f"scores_add{i}", total, s)
    probs = b.softmax("probs", total)
    ctx = b.matmul("ctx", probs, values)
    if causal:
        b.mark_causal(ctx)
    return ctx


def mla_queries(b: GraphBuilder, m: ModelSpec, x: str, nope: bool = True) -> tuple[str, str | None, str]:
    """F1-F3: (c_q, q_nope [B,Sq,h*d_n], q_rope [B,Sq,h*d_r]); merged schemes skip F2 (nope=False)."""
    c_q = x
    if m.q_lora_rank:
        c_q = b.rmsnorm("q_norm", b.matmul("q_down", x, b.weight("W_DQ", (m.d_model, m.q_lora_rank))))
    q_nope = b.matmul("q_up_nope", c_q, b.weight("W_UQ", (m.q_in, m.heads * m.qk_nope_head_dim))) if nope else None
    q_rope = b.matmul("q_up_rope", c_q, b.weight("W_QR", (m.q_in, m.heads * m.qk_rope_head_dim)))
    return c_q, q_nope, q_rope


def mla_latent(b: GraphBuilder, m: ModelSpec, x: str) -> tuple[str, str]:
    """F4-F5 for the tokens of x: (c_kv [B,Sq,d_c], k_rope [B,Sq,d_r])."""
    c_kv = b.rmsnorm("kv_norm", b.matmul("kv_down", x, b.weight("W_DKV", (m.d_model, m.kv_lora_rank))))
    k_rope = b.matmul("k_rope_proj", x, b.weight("W_KR", (m.d_model, m.qk_rope_head_dim)))
    return c_kv, k_rope


def latent_cache(b: GraphBuilder, m: ModelSpec, x: str, s: Shape) -> tuple[str, str, list[str]]:
    """The shared latent K/V as [B, 1, T, d_c] and [B, 1, T, d_r], plus decode's side outputs."""
    c_kv, k_rope = mla_latent(b, m, x)
    b.mark_kv_write(c_kv)
    b.mark_kv_write(k_rope)
    if s.decode:
        c = b.input("c_kv_cache", (s.batch, 1, s.keys, m.kv_lora_rank))
        kr = b.input("k_rope_cache", (s.batch, 1, s.keys, m.qk_rope_head_dim))
        return c, kr, [c_kv, k_rope]
    c = b.reshape("c_kv_heads", c_kv, (s.batch, 1, s.keys, m.kv_lora_rank))
    kr = b.reshape("k_rope_heads", k_rope, (s.batch, 1, s.keys, m.qk_rope_head_dim))
    return c, kr, []


def finish(b: GraphBuilder, y: str, side: list[str]) -> str:
    return b.sink_side_outputs(y, side) if side else y


def o_proj(b: GraphBuilder, m: ModelSpec, ctx: str, width: int) -> str:
    return b.matmul("o_proj", ctx, b.weight("W_O", (width, m.d_model)))


# ---- schemes ------------------------------------------------------------------------------------
def build_mha(b: GraphBuilder, m: ModelSpec, x: str, s: Shape) -> str:
    """§3: MHA (n_kv = h), GQA, MQA (n_kv = 1); m is the baseline layer, its kv_heads already resolved."""
    h, dh, kv_heads = m.heads, m.d_h, m.n_kv
    q = b.matmul("q_proj", x, b.weight("W_Q", (m.d_model, h * dh)))
    k_new = b.matmul("k_proj", x, b.weight("W_K", (m.d_model, kv_heads * dh)))
    v_new = b.matmul("v_proj", x, b.weight("W_V", (m.d_model, kv_heads * dh)))
    b.mark_kv_write(k_new)
    b.mark_kv_write(v_new)
    qg = group_queries(b, "q_heads", q, h, kv_heads)
    if s.decode:
        k = b.input("k_cache", (s.batch, kv_heads, s.keys, dh))
        v = kv_view(b, "v_cache_view", b.input("v_cache", (s.batch, kv_heads, s.keys, dh)))
        side = [k_new, v_new]
    else:
        k, v = b.split_heads("k_heads", k_new, kv_heads), b.split_heads("v_heads", v_new, kv_heads)
        side = []
    ctx = attention(b, [("scores", qg, k)], v, causal=True, split=s)
    y = o_proj(b, m, ungroup(b, "ctx_merged", ctx, s.queries), h * dh)
    return finish(b, y, side)


def latent_attention(b: GraphBuilder, m: ModelSpec, q_lat: str, q_rope: str, c: str, kr: str, s: Shape) -> str:
    """A2-A5: MQA over the shared latent; returns o_lat [B, 1, h*Sq, d_c]."""
    qg_rope = group_queries(b, "q_rope_rows", q_rope, m.heads, 1)
    values = kv_view(b, "c_kv_values", c) if s.decode else c
    return attention(b, [("scores_lat", q_lat, c), ("scores_rope", qg_rope, kr)], values, causal=True, split=s)


def build_mla_absorb(b: GraphBuilder, m: ModelSpec, x: str, s: Shape) -> str:
    """§5.2: W_UK absorbed into the query, attention in latent space, W_UV applied after."""
    h, dn, dv, dc = m.heads, m.qk_nope_head_dim, m.v_head_dim, m.kv_lora_rank
    _, q_nope, q_rope = mla_queries(b, m, x)
    c, kr, side = latent_cache(b, m, x, s)
    w_uk_t = b.per_head_weight("W_UK_heads_t", b.weight("W_UK", (dc, h * dn)), h, transpose=True)
    q_lat = b.matmul("q_absorb", heads_first(b, "q_nope_heads", q_nope, h), w_uk_t)  # [h, B*Sq, d_c]
    q_lat = b.reshape("q_lat_rows", b.transpose("q_lat_t", b.reshape("q_lat_split", q_lat,
              (h, s.batch, s.queries, dc)), (1, 0, 2, 3)), (s.batch, 1, h * s.queries, dc))  # fmt: skip
    o_lat = latent_attention(b, m, q_lat, q_rope, c, kr, s)
    w_uv = b.per_head_weight("W_UV_heads", b.weight("W_UV", (dc, h * dv)), h, transpose=False)
    o = b.matmul("v_up", heads_first(b, "o_lat_heads", o_lat, h), w_uv)  # [h, B*Sq, d_v]
    y = o_proj(b, m, heads_last(b, "o_merged", o, s.batch), h * dv)
    return finish(b, y, side)


def up_project(b: GraphBuilder, m: ModelSpec, c_kv: str) -> tuple[str, str]:
    """R1/R2 (and N1): K_nope = C @ W_UK, V = C @ W_UV over every token of c_kv [B, T, d_c]."""
    h = m.heads
    k = b.matmul("k_up", c_kv, b.weight("W_UK", (m.kv_lora_rank, h * m.qk_nope_head_dim)))
    v = b.matmul("v_up", c_kv, b.weight("W_UV", (m.kv_lora_rank, h * m.v_head_dim)))
    return k, v


def reprojected_kv(b: GraphBuilder, m: ModelSpec, c: str, s: Shape) -> tuple[str, str, str, str]:
    """R1/R2 over the latent cache c [B, 1, T, d_c]: (K_nope, V) per head as [B, h, T, d] (split-KV: the
    re-projection runs per chunk, [B, h, C, T/C, d], so it fuses into each chunk's attention), then the two
    projections' own outputs."""
    h = m.heads
    if s.chunks > 1:
        rows = b.reshape("c_kv_rows", c, (s.batch, s.chunks, s.keys // s.chunks, m.kv_lora_rank))
        k, v = up_project(b, m, rows)
        return split_kv.chunk_heads(b, "k_heads", k, h), split_kv.chunk_heads(b, "v_heads", v, h), k, v
    k, v = up_project(b, m, b.reshape("c_kv_rows", c, (s.batch, s.keys, m.kv_lora_rank)))
    return b.split_heads("k_heads", k, h), b.split_heads("v_heads", v, h), k, v


def build_mla_recompute(b: GraphBuilder, m: ModelSpec, x: str, s: Shape, write_expanded: bool = False) -> str:
    """§5.3: K and V re-projected from the latent cache every step. In prefill this is also mla-naive's
    graph (write_expanded: the up-projected K/V, not the latent, are written to the cache)."""
    h = m.heads
    _, q_nope, q_rope = mla_queries(b, m, x)
    c, kr, side = latent_cache(b, m, x, s)
    k, v, k_up, v_up = reprojected_kv(b, m, c, s)
    if write_expanded:
        rope_key = b.kv_writes[1][0]
        b.kv_writes.clear()  # the up-projected K/V are written, and the RoPE key once per head (HF cache)
        for t, copies in ((k_up, 1), (v_up, 1), (rope_key, h)):
            b.mark_kv_write(t, copies)
    qn = group_queries(b, "q_nope_heads", q_nope, h, h)
    qr = group_queries(b, "q_rope_rows", q_rope, h, 1)  # shared RoPE key: one K head, heads as rows
    ctx = attention(b, [("scores_nope", qn, k), ("scores_rope", qr, kr)], v, causal=True, split=s)
    y = o_proj(b, m, ungroup(b, "ctx_merged", ctx, s.queries), h * m.v_head_dim)
    return finish(b, y, side)


def build_mla_naive(b: GraphBuilder, m: ModelSpec, x: str, s: Shape) -> str:
    """§5.4: up-projected K/V (RoPE key per head) cached; prefill equals recompute's graph."""
    if not s.decode:
        return build_mla_recompute(b, m, x, s, write_expanded=True)
    h, dn, dr, dv = m.heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
    _, q_nope, q_rope = mla_queries(b, m, x)
    c_new, kr_new = mla_latent(b, m, x)
    k_new, v_new = up_project(b, m, c_new)
    for t, copies in ((k_new, 1), (v_new, 1), (kr_new, h)):
        b.mark_kv_write(t, copies)
    k = b.input("k_nope_cache", (s.batch, h, s.keys, dn))
    kr = b.input("k_rope_cache", (s.batch, h, s.keys, dr))
    v = kv_view(b, "v_cache_view", b.input("v_cache", (s.batch, h, s.keys, dv)))
    qn, qr = group_queries(b, "q_nope_heads", q_nope, h, h), group_queries(b, "q_rope_heads", q_rope, h, h)
    ctx = attention(b, [("scores_nope", qn, k), ("scores_rope", qr, kr)], v, causal=True, split=s)
    y = o_proj(b, m, ungroup(b, "ctx_merged", ctx, s.queries), h * dv)
    return finish(b, y, [k_new, v_new, kr_new])


def build_mla_merged(b: GraphBuilder, m: ModelSpec, x: str, s: Shape, per_step: bool = False) -> str:
    """§5.5: W_QK = W_UQ W_UK^T and W_VO = W_UV W_O, precomputed or (per_step) recomputed every step. Each merge is
    emitted just before the product that reads it: Stream fuses only runs of consecutive nodes (its dataflow order
    breaks ties by graph order), so the fused-attention mapping can give each merge and its reader one group."""
    c_q, _, q_rope = mla_queries(b, m, x, nope=False)
    c, kr, side = latent_cache(b, m, x, s)
    q_lat = group_queries(b, "q_lat_rows", b.matmul("q_merged", c_q, merged_qk(b, m, per_step)), m.heads, 1)
    o_lat = latent_attention(b, m, q_lat, q_rope, c, kr, s)
    return finish(b, merged_output(b, m, o_lat, s.queries, per_step), side)


def merged_qk(b: GraphBuilder, m: ModelSpec, per_step: bool) -> str:
    """W_QK [q_in, h*d_c]: a weight, or (per_step) W_UQ,i W_UK,i^T per head."""
    h, dn, dc = m.heads, m.qk_nope_head_dim, m.kv_lora_rank
    if not per_step:
        return b.weight("W_QK", (m.q_in, h * dc))
    w_uq = b.per_head_weight("W_UQ_heads", b.weight("W_UQ", (m.q_in, h * dn)), h, transpose=False)
    w_uk_t = b.per_head_weight("W_UK_heads_t", b.weight("W_UK", (dc, h * dn)), h, transpose=True)
    w_qk = b.transpose("W_QK_t", b.matmul("merge_qk", w_uq, w_uk_t), (1, 0, 2))
    return b.reshape("W_QK_merged", w_qk, (m.q_in, h * dc))


def merged_output(b: GraphBuilder, m: ModelSpec, o_lat: str, queries: int, per_step: bool) -> str:
    """y = o_lat W_VO. Per step, W_VO,i = W_UV,i W_O,i is made [h, d_c, d] and read in that layout: one MatMul over
    the heads and a ReduceSum of its per-head partials, which Stream folds into the product's accumulation
    (parser/onnx/reduce.py). The flat form [B, h*d_c] . [h*d_c, d] merges the contracted axis in both operands;
    Stream folds only the first such reshape and materialises the other, W_VO's, as a fusion boundary through DRAM
    (570 M elements for V3), so the merge could not be fused with its reader."""
    h, dv, dc, d = m.heads, m.v_head_dim, m.kv_lora_rank, m.d_model
    if not per_step:
        return b.matmul("o_merged_proj", ungroup(b, "o_lat_merged", o_lat, queries), b.weight("W_VO", (h * dc, d)))
    w_uv = b.per_head_weight("W_UV_heads", b.weight("W_UV", (dc, h * dv)), h, transpose=False)
    w_o = b.reshape("W_O_heads", b.weight("W_O", (h * dv, d)), (h, dv, d))
    w_vo = b.matmul("merge_vo", w_uv, w_o)  # [h, d_c, d]
    bsz, _, rows, _ = b.shapes[o_lat]
    heads = b.reshape("o_lat_heads", o_lat, (bsz, h, rows // h, dc))  # rows are (head, query), head outer
    partial = b.matmul("o_merged_proj", heads, w_vo)  # [B, h, Sq, d]
    return b.node("ReduceSum", [partial, b.constant("o_merged_sum_axes", [1])], "o_merged_sum", (bsz, queries, d),
                  keepdims=0)  # fmt: skip


# ---- the attention core alone (--part core) -----------------------------------------------------
# What attention kernels (FlashAttention, FlashMLA) compute and report: queries in, the cache read, the context
# out; no projections and no cache write. Queries arrive already projected (and scaled) as activations.
def core_mha(b: GraphBuilder, m: ModelSpec, s: Shape) -> str:
    """MHA/GQA/MQA core: softmax(q K^T) V over n_kv K/V heads, g = h/n_kv query heads per K/V head."""
    g, dh, kv = m.heads // m.n_kv, m.d_h, m.n_kv
    q = b.input("q", (s.batch, kv, g * s.queries, dh), cls="activations")
    k = b.input("k_cache", (s.batch, kv, s.keys, dh))
    v = kv_view(b, "v_cache_view", b.input("v_cache", (s.batch, kv, s.keys, dh)))
    return attention(b, [("scores", q, k)], v, causal=True, split=s)


def core_latent(b: GraphBuilder, m: ModelSpec, s: Shape) -> str:
    """Absorbed MLA core (absorb and both merged schemes): MQA over the latent, keys d_c + d_r, values d_c."""
    rows = m.heads * s.queries
    q_lat = b.input("q_lat", (s.batch, 1, rows, m.kv_lora_rank), cls="activations")
    q_rope = b.input("q_rope", (s.batch, 1, rows, m.qk_rope_head_dim), cls="activations")
    c = b.input("c_kv_cache", (s.batch, 1, s.keys, m.kv_lora_rank))
    kr = b.input("k_rope_cache", (s.batch, 1, s.keys, m.qk_rope_head_dim))
    terms = [("scores_lat", q_lat, c), ("scores_rope", q_rope, kr)]
    return attention(b, terms, kv_view(b, "c_kv_values", c), causal=True, split=s)


def core_naive(b: GraphBuilder, m: ModelSpec, s: Shape) -> str:
    """mla-naive core: MHA over the up-projected per-head cache (keys d_n + d_r, values d_v)."""
    h, dn, dr, dv = m.heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
    qn = b.input("q_nope", (s.batch, h, s.queries, dn), cls="activations")
    qr = b.input("q_rope", (s.batch, h, s.queries, dr), cls="activations")
    k, kr = b.input("k_nope_cache", (s.batch, h, s.keys, dn)), b.input("k_rope_cache", (s.batch, h, s.keys, dr))
    v = kv_view(b, "v_cache_view", b.input("v_cache", (s.batch, h, s.keys, dv)))
    return attention(b, [("scores_nope", qn, k), ("scores_rope", qr, kr)], v, causal=True, split=s)


def core_recompute(b: GraphBuilder, m: ModelSpec, s: Shape) -> str:
    """mla-recompute core: the re-projection of K and V from the latent cache is the scheme's attention work
    (R1/R2), so it is part of its core, with W_UK and W_UV."""
    h, dn, dr = m.heads, m.qk_nope_head_dim, m.qk_rope_head_dim
    qn = b.input("q_nope", (s.batch, h, s.queries, dn), cls="activations")
    qr = b.input("q_rope", (s.batch, 1, h * s.queries, dr), cls="activations")  # heads as rows: one RoPE key
    c = b.input("c_kv_cache", (s.batch, 1, s.keys, m.kv_lora_rank))
    kr = b.input("k_rope_cache", (s.batch, 1, s.keys, dr))
    k, v, _, _ = reprojected_kv(b, m, c, s)
    return attention(b, [("scores_nope", qn, k), ("scores_rope", qr, kr)], v, causal=True, split=s)


# ---- DeepSeek sparse attention (mla-sparse, DeepSeek-V3.2) ---------------------------------------------------------
# The engines have no TopK or Gather: the lightning indexer is costed in full (its projections, the scores of every
# index head over all T cached index keys, ReLU, the weighted sum over heads), top-k selection is a vector op over
# the T index scores (ReduceMax: one pass over the row, as a selection kernel reads it), and the k selected latents
# per query arrive as a graph input of k entries (what a gathering kernel reads from the latent cache).
INDEX_PRECISION = "fp8"  # DeepSeek-V3.2 caches the indexer keys (and runs the indexer) in fp8


def index_scores(b: GraphBuilder, m: ModelSpec, q_rows: str, weights: str, s: Shape) -> str:
    """I[t, s] = sum_j w_tj ReLU(q_tj . k_s) over all T cached index keys; q_rows [B, 1, n*Sq, d_i] head-major,
    weights [B, Sq, 1, n]; returns the top-k selection stand-in [B, Sq, 1, 1] (a side output)."""
    n, di = m.index_n_heads, m.index_head_dim
    k = b.input("index_k_cache", (s.batch, 1, s.keys, di), precision=INDEX_PRECISION)
    logits = b.matmul("index_scores", q_rows, b.transpose("index_scores_kt", k, (0, 1, 3, 2)))  # [B,1,n*Sq,T]
    b.mark_causal(logits)
    relu = b.relu("index_relu", logits)
    per_query = b.transpose("index_relu_t", b.reshape("index_relu_split", relu, (s.batch, n, s.queries, s.keys)),
                            (0, 2, 1, 3))  # fmt: skip
    total = b.matmul("index_weighted", weights, per_query)  # [B, Sq, 1, T]
    b.mark_causal(total)
    return b.reduce("ReduceMax", "index_topk", total)


def sparse_attention(b: GraphBuilder, m: ModelSpec, q_lat: str, q_rope: str, s: Shape) -> str:
    """Absorbed MLA of each query over its own k selected latents: every query token is a group of h query rows
    against its k gathered entries, q_lat [B, Sq, h, d_c], q_rope [B, Sq, h, d_r] -> [B, Sq, h, d_c]."""
    k = min(m.index_topk, s.keys)
    c = b.input("c_kv_selected", (s.batch, s.queries, k, m.kv_lora_rank))
    kr = b.input("k_rope_selected", (s.batch, s.queries, k, m.qk_rope_head_dim))
    terms = [("scores_lat", q_lat, c), ("scores_rope", q_rope, kr)]
    return attention(b, terms, kv_view(b, "c_kv_values", c), causal=False)  # every selected key is attended


def build_mla_sparse(b: GraphBuilder, m: ModelSpec, x: str, s: Shape) -> str:
    """DeepSeek-V3.2 DSA decode: absorbed MLA over the index_topk latents the lightning indexer selects."""
    h, dn, dv, dc, n, di = m.heads, m.qk_nope_head_dim, m.v_head_dim, m.kv_lora_rank, m.index_n_heads, m.index_head_dim
    c_q, q_nope, q_rope = mla_queries(b, m, x)
    c_kv, k_rope = mla_latent(b, m, x)
    k_idx = b.layernorm("index_k_norm", b.matmul("index_k_proj", x, b.weight("W_IK", (m.d_model, di))))
    for t, precision in ((c_kv, None), (k_rope, None), (k_idx, INDEX_PRECISION)):
        b.mark_kv_write(t, precision=precision)
    q_idx = group_queries(b, "index_q_rows", b.matmul("index_q", c_q, b.weight("W_IQ", (m.q_in, n * di))), n, 1)
    w_idx = b.reshape("index_w_rows", b.matmul("index_w", x, b.weight("W_IW", (m.d_model, n))),
                      (s.batch, s.queries, 1, n))  # fmt: skip
    topk = index_scores(b, m, q_idx, w_idx, s)
    w_uk_t = b.per_head_weight("W_UK_heads_t", b.weight("W_UK", (dc, h * dn)), h, transpose=True)
    q_lat = b.matmul("q_absorb", heads_first(b, "q_nope_heads", q_nope, h), w_uk_t)  # [h, B*Sq, d_c]
    q_lat = b.transpose("q_lat_t", b.reshape("q_lat_split", q_lat, (h, s.batch, s.queries, dc)), (1, 2, 0, 3))
    q_r = b.reshape("q_rope_rows", q_rope, (s.batch, s.queries, h, m.qk_rope_head_dim))
    o_lat = b.reshape("o_lat_rows", sparse_attention(b, m, q_lat, q_r, s), (s.batch, s.queries, h * dc))
    w_uv = b.per_head_weight("W_UV_heads", b.weight("W_UV", (dc, h * dv)), h, transpose=False)
    o = b.matmul("v_up", heads_first(b, "o_lat_heads", o_lat, h), w_uv)  # [h, B*Sq, d_v]
    y = o_proj(b, m, heads_last(b, "o_merged", o, s.batch), h * dv)
    return finish(b, y, [c_kv, k_rope, k_idx, b.reshape("index_topk_rows", topk, (s.batch, s.queries, 1))])


def core_sparse(b: GraphBuilder, m: ModelSpec, s: Shape) -> str:
    """DSA's two kernels: the indexer's scores over all T index keys with top-k selection, and the sparse absorbed
    attention over the k selected latents; queries (and index queries and weights) arrive projected."""
    h, dc, dr, n, di = m.heads, m.kv_lora_rank, m.qk_rope_head_dim, m.index_n_heads, m.index_head_dim
    q_idx = b.input("index_q", (s.batch, 1, n * s.queries, di), cls="activations")
    w_idx = b.input("index_w", (s.batch, s.queries, 1, n), cls="activations")
    topk = index_scores(b, m, q_idx, w_idx, s)
    q_lat = b.input("q_lat", (s.batch, s.queries, h, dc), cls="activations")
    q_rope = b.input("q_rope", (s.batch, s.queries, h, dr), cls="activations")
    return b.sink_side_outputs(sparse_attention(b, m, q_lat, q_rope, s), [topk])
