"""Split-KV (flash-decoding) decode graphs: the cache read in C chunks, attention per chunk with its own softmax
statistics, then a combine. Numerically equal to the plain graph (onnx.reference, random weights), the same MACs and
DRAM bytes as the closed forms, the combine's partials as their own closed form; the workload field, its CLI flag and
sweep axis; the per-platform default C."""

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

from stream_mla.cli import main
from stream_mla.errors import SpecError
from stream_mla.models import PRESETS as MODELS
from stream_mla.models import ModelSpec
from stream_mla.platforms import PRESETS
from stream_mla.sweeps.spec import SweepSpec
from stream_mla.workloads import build, make_spec, registry
from stream_mla.workloads.counts import count
from stream_mla.workloads.split_kv import default_chunks, partial_elements, working_set_bytes

import closed_forms as cf

TINY_MLA = ModelSpec(name="tiny-mla", d_model=12, heads=4, q_lora_rank=6, kv_lora_rank=8, qk_nope_head_dim=4,
                     qk_rope_head_dim=2, v_head_dim=6, precision="fp32")  # fmt: skip
TINY_GQA = ModelSpec(name="tiny-gqa", d_model=16, heads=4, kv_heads=2, head_dim=4, precision="fp32")
DENSE = [s for s in registry.NAMES if "decode" in registry.get(s).phases and s != "mla-sparse"]


def tiny(scheme):
    return TINY_GQA if registry.get(scheme).is_baseline else TINY_MLA


def spec_of(scheme, **kw):
    extra = {"kv_heads": 2} if scheme == "gqa" else {}
    return make_spec(model=tiny(scheme), scheme=scheme, **extra, **kw)


def run(model, feeds):
    return ReferenceEvaluator(model).run(None, feeds)[0]


@pytest.mark.parametrize("scheme", DENSE)
@pytest.mark.parametrize("part", ["layer", "core"])
@pytest.mark.parametrize(
    ("batch", "context", "queries", "chunks"),
    [(1, 8, 1, 2), (2, 12, 3, 4), (1, 6, 2, 6), (1, 7, 1, 2), (3, 13, 2, 4), (1, 9, 1, 6)],
)
@pytest.mark.parametrize("apart", [False, True])
def test_split_graph_equals_the_plain_graph(scheme, part, batch, context, queries, chunks, apart):
    """Random weights and random caches: the combine of per-chunk softmaxes is the softmax (C = T included), in
    both layouts (apart: B and the K/V heads as separate axes, rank-5 products for Stream; else rank <= 4). Where C
    does not divide T the split graph reads ceil(T/C)*C entries, the padding filled with garbage that the mask
    hides (T = 9, C = 6: chunks of 2, the last one padding alone)."""
    kw = {"batch": batch, "context": context, "queries": queries, "part": part}
    plain = build(spec_of(scheme, **kw), seed=5)
    split = build(spec_of(scheme, **kw, kv_chunks=chunks), seed=5, batch_apart=apart)
    rng = np.random.default_rng(batch * 100 + context)

    def shape(graph, name):
        return next([d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input if i.name == name)

    feeds = {i.name: rng.standard_normal(shape(plain, i.name)).astype(np.float32) for i in plain.graph.input}
    assert {i.name for i in split.graph.input} == set(feeds)  # the same inputs: the cache is split in the graph
    padded = {}
    for name, value in feeds.items():  # the padded slots after the real entries, along the keys (axis 2)
        extra = shape(split, name)[2] - value.shape[2] if value.ndim == 4 else 0
        garbage = 50 * rng.standard_normal((*value.shape[:2], extra, *value.shape[3:])).astype(np.float32)
        padded[name] = np.concatenate([value, garbage], axis=2) if extra else value
    pad = -(-context // chunks) * chunks - context
    assert {shape(split, n)[2] - v.shape[2] for n, v in feeds.items() if v.ndim == 4} - {0} == ({pad} - {0})
    np.testing.assert_allclose(run(split, padded), run(plain, feeds), rtol=1e-4, atol=1e-5)
    parsed = {"MatMul", "Add", "Sub", "Mul", "Div", "Exp", "ReduceMax", "ReduceSum", "ReduceMean", "Pow", "Reshape",
              "Transpose"}  # fmt: skip
    assert {n.op_type for n in split.graph.node} <= parsed
    rank = max(len(v.type.tensor_type.shape.dim) for v in split.graph.value_info
               if any(n.op_type == "MatMul" and v.name in n.input for n in split.graph.node))  # fmt: skip
    assert rank == 5 if apart else rank <= 4


@pytest.mark.parametrize(("model", "scheme"), [(m, s) for m in ("deepseek-v3", "deepseek-v2-lite")
                                               for s in registry.applicable(MODELS[m]) if s in DENSE])  # fmt: skip
@pytest.mark.parametrize(("batch", "context", "queries", "chunks"), [(1, 4096, 1, 8), (2, 1024, 2, 64)])
def test_counts_are_the_plain_graphs_and_the_partials_their_closed_form(model, scheme, batch, context, queries,
                                                                         chunks):  # fmt: skip
    m = MODELS[model]
    kv = {"kv_heads": m.heads // 8} if scheme == "gqa" else {}
    base = make_spec(model=m, scheme=scheme, batch=batch, context=context, queries=queries, **kv)
    plain, split = build(base), build(base.model_copy(update={"kv_chunks": chunks}))
    c, s = count(plain), count(split)
    for key in ("macs", "macs_causal", "bytes", "elements"):
        assert s[key] == c[key], key
    apart = build(base.model_copy(update={"kv_chunks": chunks}), batch_apart=True)
    a = count(apart)  # the other layout: the same counts, compute node by compute node (the views differ)

    def work(counts):
        return [
            (n["name"], n["macs"], n["io_bytes"]) for n in counts["nodes"] if n["op"] not in ("Reshape", "Transpose")
        ]

    assert work(a) == work(s)
    assert all(a[k] == s[k] for k in ("macs", "macs_causal", "bytes", "elements", "bytes_layer_by_layer"))
    assert partial_elements(apart) == partial_elements(split)
    e = s["elements"]
    forms = cf.Forms(s["macs"], e["weights"], e["kv_read"], e["kv_write"], e["activations"])
    assert forms == cf.decode(m, scheme, batch, context, base.group_kv_heads, Q=queries)
    assert partial_elements(split) == cf.split_kv_partials(base.layer_model, scheme, batch, chunks, queries)
    assert partial_elements(plain) == 0
    core = count(build(base.model_copy(update={"kv_chunks": chunks, "part": "core"})))
    ce = core["elements"]
    got = cf.Forms(core["macs"], ce["weights"], ce["kv_read"], ce["kv_write"], ce["activations"])
    assert got == cf.core(m, scheme, batch, context, queries, base.group_kv_heads)


@pytest.mark.parametrize(("model", "scheme"), [(m, s) for m in ("deepseek-v3", "deepseek-v2-lite")
                                               for s in registry.applicable(MODELS[m]) if s in DENSE])  # fmt: skip
@pytest.mark.parametrize(("batch", "context", "queries", "chunks"),
                         [(1, 4133, 1, 8), (3, 32831, 2, 64), (5, 1000, 1, 24)])  # fmt: skip
def test_padding_is_counted_as_its_closed_form(model, scheme, batch, context, queries, chunks):
    """C not dividing T: the split graph reads C*ceil(T/C) entries per sequence (and K/V head), so its MACs and cache
    bytes are the closed form at that many keys, the rest (weights, cache write, activations) and the attended
    pairs (`macs_causal`) the plain graph's."""
    m = MODELS[model]
    kv = {"kv_heads": m.heads // 8} if scheme == "gqa" else {}
    base = make_spec(model=m, scheme=scheme, batch=batch, context=context, queries=queries, **kv)
    split = base.model_copy(update={"kv_chunks": chunks})
    padded = -(-context // chunks) * chunks
    assert split.graph_keys == padded and split.pad_keys == padded - context > 0
    c, s = count(build(base)), count(build(split))
    e = s["elements"]
    got = cf.Forms(s["macs"], e["weights"], e["kv_read"], e["kv_write"], e["activations"])
    at_padded = cf.decode(m, scheme, batch, padded, base.group_kv_heads, Q=queries)
    assert got == at_padded  # the cache write, weights and activations do not depend on the keys read
    # the attended pairs are the plain graph's; recompute also re-projects the padded latents (no pair of its own)
    up = m.heads * m.kv_lora_rank * (m.qk_nope_head_dim + m.v_head_dim) if scheme == "mla-recompute" else 0
    assert s["macs_causal"] == c["macs_causal"] + batch * split.pad_keys * up
    assert s["bytes"]["weights"] == c["bytes"]["weights"]  # the mask is no weight


def test_kv_chunks_field_slug_and_validation():
    v3 = MODELS["deepseek-v3"]
    spec = make_spec(model=v3, scheme="mla-absorb", context=4096, kv_chunks=8)
    assert spec.chunks == 8 and spec.slug == "deepseek-v3_mla-absorb_decode_c8_b1_l4096_bf16"
    assert make_spec(model=v3, scheme="mla-absorb", context=4096, kv_chunks=1).slug.endswith("_b1_l4096_bf16")
    assert make_spec(model=v3, scheme="mla-absorb", context=4096).chunks == 1
    three = make_spec(model=v3, scheme="mla-absorb", context=4096, kv_chunks=3)  # 3 x 1366: 2 slots of padding
    assert (three.graph_keys, three.pad_keys, spec.pad_keys) == (4098, 2, 0)
    with pytest.raises(SpecError, match="--kv-chunks: 8192 chunks exceed the 4096 cache entries"):
        make_spec(model=v3, scheme="mla-absorb", context=4096, kv_chunks=8192)
    with pytest.raises(SpecError, match="--kv-chunks: 8 applies to decode only"):
        make_spec(model=v3, scheme="mla-absorb", phase="prefill", context=4096, kv_chunks=8)
    windowed = make_spec(model=v3, scheme="mha", context=4096, window=1024, queries=2, kv_chunks=5)  # T = 1025
    assert windowed.keys == 1025 and count(build(windowed))["macs"] == count(build(windowed.model_copy(
        update={"kv_chunks": None})))["macs"]  # fmt: skip


def test_cli_flag_and_sweep_axis(tmp_path, capsys):
    out = tmp_path / "g.onnx"
    args = ["export", "--model", "deepseek-v2-lite", "--scheme", "mla-absorb", "--context", "256", "--kv-chunks", "4"]
    assert main([*args, "-o", str(out)]) == 0
    assert "combine" in {n.name for n in __import__("onnx").load(str(out)).graph.node}
    assert main([*args[:-1], "5", "-o", str(out)]) == 0  # 5 x 52: 4 padded slots
    assert [d.dim_value for d in __import__("onnx").load(str(out)).graph.input[1].type.tensor_type.shape.dim][2] == 260
    assert main([*args[:-1], "257", "-o", str(out)]) == 2
    assert "--kv-chunks: 257 chunks exceed the 256" in capsys.readouterr().err
    doc = {"sweeps": [{"models": ["deepseek-v2-lite"], "schemes": ["mla-absorb"], "context": [256],
                       "platforms": ["edge-npu"], "kv_chunks": [None, 4]}]}  # fmt: skip
    points = SweepSpec.from_dict(doc).points()
    assert [p.kv_chunks for p in points] == [None, 4] and points[0].key() != points[1].key()
    assert points[1].workload().chunks == 4
    with pytest.raises(SpecError, match="kv_chunks: 300 chunks exceed the 256 cache entries"):
        SweepSpec.from_dict({"sweeps": [{**doc["sweeps"][0], "kv_chunks": [300]}]})
    prefill = {"sweeps": [{**doc["sweeps"][0], "phases": ["prefill"], "kv_chunks": [4]}]}
    assert [p.kv_chunks for p in SweepSpec.from_dict(prefill).points()] == [None]  # decode only, as queries


@pytest.mark.parametrize("platform", ["edge-npu", "tpu-v5e-like", "h100-like", "h20-like"])
@pytest.mark.parametrize(("scheme", "context"), [("mla-absorb", 4096), ("mla-absorb", 32768), ("mha", 32768),
                                                 ("mla-recompute", 1024), ("gqa", 4096), ("mla-absorb", 4133),
                                                 ("mla-absorb", 32831), ("mha", 3001),
                                                 ("mla-recompute", 2053)])  # fmt: skip
def test_default_chunks_one_per_core_and_fitting_on_chip(platform, scheme, context):
    """A multiple of the core count whose chunk of ceil(T/C) keys fits half a core's SRAM: the fewest such, F, or the
    fewest that divide T below 2F (no padding); never below the core count."""
    p = PRESETS[platform]
    m = MODELS["deepseek-v3"]
    spec = make_spec(model=m, scheme=scheme, context=context, **({"kv_heads": 16} if scheme == "gqa" else {}))
    c = default_chunks(spec, p)
    half = p.sram_bytes // 2
    fitting = [d for d in range(p.cores, context + 1, p.cores) if working_set_bytes(spec, -(-context // d)) <= half]
    fewest = fitting[0]
    dividing = [d for d in fitting if d < 2 * fewest and context % d == 0]
    assert c == (dividing[0] if dividing else fewest)
    assert c >= p.cores and c % p.cores == 0
    assert default_chunks(spec.model_copy(update={"phase": "prefill"}), p) == 1


def test_default_chunks_on_the_grid_divide():
    """Powers of two on power-of-two core counts: no padding (the chunk count divides the keys)."""
    for platform in ("edge-npu", "tpu-v5e-like", "h100-like", "h20-like", "cloud-fusemax"):
        for context in (1024, 4096, 32768):
            spec = make_spec(model=MODELS["deepseek-v3"], scheme="mla-absorb", context=context)
            assert context % default_chunks(spec, PRESETS[platform]) == 0


def test_working_set_of_a_latent_chunk():
    """V3 absorb: a chunk of Tc latents is read as keys (d_c + d_r) and as values (d_c), plus the h query rows'
    scores over it and their queries and partial outputs, in bf16."""
    spec = make_spec(model=MODELS["deepseek-v3"], scheme="mla-absorb", context=4096)
    assert working_set_bytes(spec, 512) == 512 * (576 + 512) * 2 + 128 * (512 + 1088) * 2
    assert default_chunks(spec, PRESETS["h100-like"]) == 8  # 1.5 MB per chunk, half of 6.25 MB holds it


def test_zigzag_costs_every_mac_of_a_split_graph(tmp_path):
    """The chunk axis sits on each MatMul's first input (ZigZag reads the batch axes off it and rejects rank 5):
    ZigZag costs exactly the graph's MACs, so it warns only about the vector ops it leaves free."""
    from stream_mla.engines import evaluate

    r = evaluate(make_spec(model=MODELS["deepseek-v2-lite"], scheme="mla-recompute", context=256, kv_chunks=4),
                 "edge-npu", "zigzag", workdir=tmp_path)  # fmt: skip
    assert len(r.warnings) == 1 and r.warnings[0].startswith("ZigZag costs MatMul only") and "Exp x2" in r.warnings[0]
    assert sum(n.macs for n in r.nodes) == r.macs and r.latency_s >= r.roofline_bound_s


@pytest.mark.parametrize("precision", ["bf16", "fp32", "int8", "fp8"])
def test_a_padded_graph_exports_at_every_precision(precision):
    """The mask is a constant of the graph's element type (1-byte graphs mask with the type's minimum); it is no
    DRAM traffic: the padded graph's bytes are the closed form's at C*ceil(T/C) keys."""
    m = MODELS["deepseek-v2-lite"]
    spec = make_spec(model=m, scheme="mla-absorb", context=257, kv_chunks=4, precision=precision,
                     act_precision=precision)  # fmt: skip
    c = count(build(spec))
    assert c["pad_keys"] == 3 and spec.graph_keys == 260
    e = c["elements"]
    assert cf.Forms(c["macs"], e["weights"], e["kv_read"], e["kv_write"], e["activations"]) == cf.decode(
        m, "mla-absorb", 1, 260
    )
