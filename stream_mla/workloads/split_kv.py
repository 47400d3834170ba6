"""Split-KV (flash-decoding) attention: the cache split into C chunks along the keys, attention per chunk with its own
softmax statistics, then a combine, as FlashDecoding and FlashMLA run decode.

Per chunk c (a tensor dimension of every node, so an engine can split it over cores and tile it in time):
    s_c = q k_c^T, m_c = max s_c, p_c = exp(s_c - m_c), l_c = sum p_c, o_c = p_c v_c   (unnormalised)
then the combine: m = max_c m_c, a_c = exp(m_c - m), o = sum_c a_c o_c / sum_c a_c l_c, which equals
softmax(q K^T) V exactly. MACs are the plain graph's (the score and context products are the same products, split);
the combine is vector work and the partials (o_c, m_c, l_c) are its on-chip traffic, the "small terms"
(`partial_elements`). A real split kernel writes them to DRAM for a separate combine kernel.

Layout, from the engines' rules (engines.md first section, §5.2, §11): MatMuls stay rank 4 (ZigZag rejects rank 5)
and carry the chunk axis on their first input (ZigZag reads the batch axes off it, so a query broadcast over the
chunks there would be costed once): each K/V head group is `[B*G, C, T/C, d]` (a pure reshape of the cache), the
score is computed transposed, `k_c @ q^T -> [B*G, C, T/C, r]`, and viewed back as `[B*G, C, r, T/C]`. With `apart`
(what the Stream runner exports for B > 1) B and G stay separate axes, `[B, G, C, T/C, d]` (rank-5 MatMuls): Stream
folds a reshape merging the score product's batch loop in one operand only (scripts/stream_double_merge.py), so with
both K and q merging B with G it materialised the query's view inside the attention core, splitting mla-recompute's
fused group between the re-projection and the scores. Only
MatMul, Add/Sub/Mul/Div, Exp, ReduceMax/ReduceSum (keepdims, axes as an initializer) and Reshape/Transpose appear;
Stream needs its Exp parser registered (`stream_mapping.register_parsers`). Node names avoid `_max`/`_exp`/`_sum`,
the suffixes of Stream's own Softmax pieces.
"""

import math

import numpy as np
from onnx import TensorProto

from stream_mla.models import BYTES_PER_ELEMENT
from stream_mla.workloads.graph import GraphBuilder

# Node names of the chunked core (beyond the score MatMuls, which keep the plain graph's names)
CHUNK_NODES = ("chunk_m", "chunk_shift", "chunk_p", "chunk_l", "ctx")
COMBINE_NODES = ("combine_m", "combine_shift", "combine_a", "combine_oa", "combine_o", "combine_la", "combine_l",
                 "combine")  # fmt: skip
PARTIAL_NODES = ("ctx", "chunk_m", "chunk_l")  # what each chunk hands the combine: o_c, m_c, l_c
MASK = "kv_pad_mask"  # the padded slots' mask: an index comparison in a kernel, no DRAM traffic
MASK_VALUE = -1e30  # finite, so a chunk of padding alone gives no NaN (its combine weight underflows to 0)


def chunk_heads(b: GraphBuilder, name: str, x: str, heads: int) -> str:
    """A chunked projection [B, C, Tc, H*d] -> [B, H, C, Tc, d] (the form `attention` takes as pre-chunked)."""
    bsz, c, tc, hd = b.shapes[x]
    t = b.reshape(f"{name}_split", x, (bsz, c, tc, heads, hd // heads))
    return b.transpose(name, t, (0, 3, 1, 2, 4))


def chunked(b: GraphBuilder, name: str, kv: str, chunks: int, apart: bool = False) -> str:
    """Keys or values [B, G, T, d] (or pre-chunked [B, G, C, Tc, d]) as [B*G, C, T/C, d] (apart: [B, G, C, T/C, d])."""
    shape = b.shapes[kv]
    if len(shape) == 5:
        bsz, g, c, tc, d = shape
        if c != chunks:
            raise ValueError(f"{name}: {kv} has {c} chunks, the attention {chunks}")
    else:
        bsz, g, t, d = shape
        if t % chunks:
            raise ValueError(f"{name}: {chunks} chunks do not divide the {t} keys")
        tc = t // chunks
    if apart:
        return kv if len(shape) == 5 else b.reshape(name, kv, (bsz, g, chunks, tc, d))
    return b.reshape(name, kv, (bsz * g, chunks, tc, d))


def _reduce(b: GraphBuilder, op: str, name: str, x: str, axis: int) -> str:
    shape = list(b.shapes[x])
    shape[axis] = 1
    return b.node(op, [x, b.constant(f"{name}_axes", [axis])], name, shape, keepdims=1)


def _lead(bsz: int, g: int, apart: bool) -> tuple[int, ...]:
    """The leading axes of a split-KV tensor: B*G, or (apart) B and G."""
    return (bsz, g) if apart else (bsz * g,)


def _score(b: GraphBuilder, name: str, q: str, k: str, chunks: int, causal: bool, apart: bool) -> str:
    """One score term as [B*G', C, r', Tc] (apart: [B, G', C, r', Tc]): computed transposed (k_c @ q^T) so the chunk
    axis is on the first input."""
    bsz, g, rows, d = b.shapes[q]
    kc = chunked(b, f"{name}_kc", k, chunks, apart)
    qt = b.reshape(f"{name}_qt", b.transpose(f"{name}_qt_t", q, (0, 1, 3, 2)), (*_lead(bsz, g, apart), 1, d, rows))
    st = b.matmul(name, kc, qt)  # [B*G', C, Tc, r']
    if causal:
        b.mark_causal(st)
    lead = len(b.shapes[st]) - 3
    return b.transpose(f"{name}_t", st, (*range(lead), lead, lead + 2, lead + 1))


def _regroup(b: GraphBuilder, name: str, s: str, batch: int, groups: int, target: tuple[int, ...]) -> str:
    """A score of G' groups [B*G', C, (G/G')*r, Tc] (or [B, G', C, (G/G')*r, Tc]; rows head-major) in the first
    term's [B*G, C, r, Tc] (or [B, G, C, r, Tc])."""
    c, rows_in, tc = b.shapes[s][-3:]
    rows = target[-2]
    per = rows_in // rows  # G / G'
    t = b.reshape(f"{name}_split", s, (batch, groups, c, per, rows, tc))
    t = b.transpose(f"{name}_t", t, (0, 1, 3, 2, 4, 5))
    return b.reshape(name, t, target)


def pad_mask(b: GraphBuilder, scores: str, pad: int) -> str:
    """The scores with the last `pad` key slots masked: a paged kernel's last block, read whole and masked. A masked
    slot's score is MASK_VALUE, so its weight underflows to 0, in a chunk with real keys and (through the combine's
    exp(m_c - m)) in a chunk of padding alone. The mask is a constant of the scores' trailing (C, 1, Tc) shape, a
    kernel's index comparison: the counts leave it out of the DRAM bytes."""
    *_, c, _, tc = b.shapes[scores]
    mask = np.zeros(c * tc, dtype=np.float32)
    mask[c * tc - pad :] = MASK_VALUE if b.dtype != TensorProto.INT8 else np.iinfo(np.int8).min  # 1-byte graphs
    return b.add("chunk_mask", scores, b.constant(MASK, mask.reshape(c, 1, tc), np.float32))


def attention(b: GraphBuilder, terms: list[tuple[str, str, str]], values: str, causal: bool, chunks: int,
              apart: bool = False, pad: int = 0) -> str:  # fmt: skip
    """schemes.attention with the keys split into `chunks`: softmax(sum_i q_i k_i^T) @ values, returned as the plain
    graph's [B, G, g*Sq, d_v]. Terms are (score node name, q [B, G', r, d], k [B, G', T, d] or pre-chunked
    [B, G', C, Tc, d]); values likewise. apart: B and G as separate axes (see the module's layout note). pad: the
    last keys are padding slots (`pad_mask`)."""
    batch = b.shapes[terms[0][1]][0]
    scores = []
    for name, q, k in terms:
        s = _score(b, name, q, k, chunks, causal, apart)
        if scores and b.shapes[s] != b.shapes[scores[0]]:
            s = _regroup(b, f"{name}_r", s, batch, b.shapes[q][1], b.shapes[scores[0]])
        scores.append(s)
    total = scores[0]
    for i, s in enumerate(scores[1:], 1):
        total = b.add("scores_add" if i == 1 else f"scores_add{i}", total, s)
    if pad:
        total = pad_mask(b, total, pad)
    # per chunk: its own max, unnormalised probabilities, their sum and the unnormalised context
    m_c = _reduce(b, "ReduceMax", "chunk_m", total, -1)  # [B*G, C, r, 1]
    p = b.node("Exp", [b.node("Sub", [total, m_c], "chunk_shift", b.shapes[total])], "chunk_p", b.shapes[total])
    l_c = _reduce(b, "ReduceSum", "chunk_l", p, -1)
    o_c = b.matmul("ctx", p, chunked(b, "ctx_values", values, chunks, apart))  # [B*G, C, r, d_v]
    if causal:
        b.mark_causal(o_c)
    # the combine: rescale each chunk to the global max and normalise once
    axis = 2 if apart else 1  # the chunks
    m = _reduce(b, "ReduceMax", "combine_m", m_c, axis)  # [B*G, 1, r, 1]
    a = b.node("Exp", [b.node("Sub", [m_c, m], "combine_shift", b.shapes[m_c])], "combine_a", b.shapes[m_c])
    o = _reduce(b, "ReduceSum", "combine_o", b.mul("combine_oa", a, o_c), axis)  # [B*G, 1, r, d_v]
    den = _reduce(b, "ReduceSum", "combine_l", b.mul("combine_la", a, l_c), axis)  # [B*G, 1, r, 1]
    out = b.node("Div", [o, den], "combine", b.shapes[o])
    groups = math.prod(b.shapes[scores[0]][:axis]) // batch
    rows, dv = b.shapes[out][-2:]
    return b.reshape("ctx_chunks_out", out, (batch, groups, rows, dv))


# ---- choosing C -----------------------------------------------------------------------------------------------
def working_set_bytes(spec, tc: int) -> int:
    """On-chip bytes one chunk of one K/V head needs: its keys and values (a latent read as keys and as values is
    held twice, as Stream holds one copy per reader; mla-recompute's latent chunk plus one head's re-projected K/V),
    the query rows' scores over it, and the rows' queries and partial outputs."""
    w = attention_widths(spec)
    kv_b, act_b = (BYTES_PER_ELEMENT[spec.precisions[c]] for c in ("kv_cache", "activations"))
    width = w["key"] + w["value"]
    return tc * width * kv_b + w["rows"] * (tc + width) * act_b


def attention_widths(spec) -> dict[str, int]:
    """Key width, value width and query rows per K/V head group of the spec's attention core."""
    m, q = spec.layer_model, spec.query_tokens
    if spec.scheme_record.is_baseline:
        return {"key": m.d_h, "value": m.d_h, "rows": m.heads // m.n_kv * q}
    dn, dr, dv, dc = m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank
    if spec.scheme == "mla-naive":  # per-head K/V
        return {"key": dn + dr, "value": dv, "rows": q}
    if spec.scheme == "mla-recompute":  # the latent chunk, and one head's K/V re-projected from it on the fly
        return {"key": dc + dr + dn, "value": dv, "rows": q}
    return {"key": dc + dr, "value": dc, "rows": m.heads * q}  # the shared latent: MQA with h*Q rows


def default_chunks(spec, platform) -> int:
    """C for a decode spec on a platform: a multiple of the core count (every core gets as many chunks), at most T,
    whose chunk of ceil(T/C) keys has its working set (`working_set_bytes`) within half a core's SRAM (the other
    half double-buffers). The fewest such chunks F, or the fewest that divide T if they are below 2F (no padding at
    the cost of smaller chunks); T itself if none fits. Otherwise C need not divide T: the last chunk is padded
    (`WorkloadSpec.pad_keys`, fewer than C slots). 1 for prefill."""
    if spec.phase != "decode":
        return 1
    keys, cores, budget = spec.keys, platform.cores, platform.sram_bytes // 2
    step = min(cores, keys)
    fits = (c for c in range(step, keys + 1, step) if working_set_bytes(spec, -(-keys // c)) <= budget)
    first = next(fits, keys)
    return next((c for c in range(first, min(2 * first, keys + 1), step) if keys % c == 0), first)


def partial_elements(model) -> int:
    """Elements the chunks hand the combine (o_c, m_c, l_c) in an exported split-KV graph; 0 for a plain graph."""
    g = model.graph
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in (*g.value_info, *g.output)}
    names = {n.name: n.output[0] for n in g.node}
    if "combine" not in names:
        return 0
    return sum(math.prod(shapes[names[n]]) for n in PARTIAL_NODES)
