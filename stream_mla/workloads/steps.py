"""The steps a layer's graph runs in on an engine that fuses some of its nodes, and the serial bound they set.

Stream runs its fused groups strictly one after another (engines.md trap 9), and so does a GPU running one kernel
after another. Which nodes share a step follows the strategy: `fused-attention` runs the attention core
(`attention_core`: scores, softmax, context, a split-KV combine, and mla-recompute's re-projection) as one step;
both fixed mappings run each product of weights alone with the product that reads it (`weight_products`); every
other compute node is a step of its own. Each step exchanges through DRAM what crosses its boundary
(`counts.step_counts`). The **serial bound** is the sum of each step's own roofline: compute and memory overlap
within a step, never across steps. The layer's roofline (§2) overlaps them across the whole layer, so a schedule of
steps in turn can reach the serial bound, not the roofline; latency over this bound is what is left once that is
granted. A reference, not a proven floor: an engine may keep a tensor on-chip between steps.

Graph-only (onnx): the Stream mapping (`engines/stream_mapping.py`) builds its groups from the same functions.
"""

import math
from pathlib import Path

import onnx
import yaml

from stream_mla.models import BYTES_PER_ELEMENT
from stream_mla.workloads.counts import metadata, step_counts
from stream_mla.workloads.graph import COPY_TAG

Graph = onnx.ModelProto | str | Path
FUSED_ATTENTION = "fused-attention"
# the Stream strategies that run a mapping of stream-mla's own: both run each weight product with its reader
MAPPED_STRATEGIES = (FUSED_ATTENTION, "fixed-mapping")


class MappingError(ValueError):
    """The layer cannot be tiled to fit the core's memory."""


COMBINE_PREFIX = "combine"


def _load(graph: Graph) -> onnx.ModelProto:
    return graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph), load_external_data=False)


def _graph_nodes(model: onnx.ModelProto) -> tuple[list, dict[str, list], dict[str, object]]:
    g = model.graph
    readers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    return list(g.node), readers, {o: n for n in g.node for o in n.output}


def _score_products(probs, producer: dict) -> list:
    """The MatMuls nearest above the softmax (through its scale, mask and add): the score products q·kᵀ."""
    found, seen, stack = [], set(), [probs]
    while stack:
        n = stack.pop()
        for t in n.input:
            m = producer.get(t)
            if m is None or m.name in seen:
                continue
            seen.add(m.name)
            (found if m.op_type == "MatMul" else stack).append(m)
    return found


def attention_core(graph: Graph) -> tuple[list[str], list[str]]:
    """(core, combine): the compute nodes of the graph's attention core and of its split-KV combine (empty for a
    plain graph), by name. The core is every node that depends on a cache input (prefill, which has none: on a score
    product) and feeds the context product (the MatMul reading the softmax, or a split-KV graph's per-chunk
    probabilities)."""
    model = _load(graph)
    nodes, readers, producer = _graph_nodes(model)
    caches = cache_inputs(model)
    probs = next((n for n in nodes if n.op_type == "Softmax" or n.name == "chunk_p"), None)
    if probs is None:
        raise MappingError("fused-attention: the graph has no softmax (no attention core to fuse)")
    ctx = next(r for r in _through_views(probs.output[0], readers) if r.op_type == "MatMul")
    from_cache, stack = set(), list(caches)
    if not caches:  # prefill: K and V are made in the graph; the core starts at the score products
        scores = _score_products(probs, producer)
        from_cache = {n.name for n in scores}
        stack = [t for n in scores for t in n.output]
    while stack:  # every node downstream of a cache input
        for n in readers.get(stack.pop(), []):
            if n.name not in from_cache:
                from_cache.add(n.name)
                stack.extend(n.output)
    feeds, stack = set(), [ctx]
    while stack:  # ctx and every node upstream of it
        n = stack.pop()
        if n.name in feeds:
            continue
        feeds.add(n.name)
        stack.extend(producer[t] for t in n.input if t in producer)
    inside = from_cache & feeds
    after, stack = set(), list(ctx.output)
    while stack:  # every node downstream of ctx
        for n in readers.get(stack.pop(), []):
            if n.name not in after:
                after.add(n.name)
                stack.extend(n.output)
    for n in nodes:  # statistics of the core nothing downstream of ctx reads first (a split-KV chunk's l_c)
        sources = [producer[t] for t in n.input if t in producer]
        first = n.name not in after and n.op_type != "MatMul" and not n.name.startswith(COMBINE_PREFIX)
        if first and sources and all(m.name in inside for m in sources):
            inside.add(n.name)
    core = [n.name for n in nodes if n.name in inside and n.op_type not in LAYOUT_OPS]
    combine = [n.name for n in nodes if n.name.startswith(COMBINE_PREFIX) and n.op_type not in LAYOUT_OPS]
    return core, combine


LAYOUT_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")


def cache_inputs(model) -> list[str]:
    """The graph inputs that are KV cache (not activations such as x or a core's queries, nor weights), by name."""
    meta = {p.key: p.value for p in model.metadata_props}
    activations = set(yaml.safe_load(meta.get("stream_mla.activation_inputs", '["x"]')))
    weights = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name.split(COPY_TAG)[0] not in activations | weights]


def _through_views(tensor: str, readers: dict[str, list]) -> list:
    out = []
    for n in readers.get(tensor, []):
        out += _through_views(n.output[0], readers) if n.op_type in LAYOUT_OPS else [n]
    return out


def weight_products(graph: Graph) -> list[tuple[str, str]]:
    """(product, reader) by name: each MatMul both of whose inputs are weights (initializers, through views) whose
    output (through views) one MatMul alone reads."""
    model = _load(graph)
    nodes, readers, producer = _graph_nodes(model)
    weights = {t.name for t in model.graph.initializer}

    def source(tensor: str) -> str:  # the tensor a chain of views reads
        while tensor in producer and producer[tensor].op_type in LAYOUT_OPS:
            tensor = producer[tensor].input[0]
        return tensor

    pairs = []
    for n in nodes:
        if n.op_type != "MatMul" or not all(source(t) in weights for t in n.input):
            continue
        reads = _through_views(n.output[0], readers)
        if len(reads) == 1 and reads[0].op_type == "MatMul":
            pairs.append((n.name, reads[0].name))
    return pairs


def steps(graph: Graph, strategy: str) -> dict[str, str]:
    """{node name: its step} for the nodes that share a step under `strategy` (every other node is a step of its
    own): the attention core under fused-attention, each weight product with its reader under either fixed mapping."""
    model = _load(graph)
    step_of: dict[str, str] = {}
    if strategy == FUSED_ATTENTION:
        step_of = dict.fromkeys(attention_core(model)[0], "attention core")
    if strategy in MAPPED_STRATEGIES:
        step_of.update({n: product for product, reader in weight_products(model) for n in (product, reader)})
    return step_of


def reference_steps(graph: Graph) -> dict[str, str]:
    """{node name: its step} of the serial roofline (attention-schemes.md §8.0): what a kernel or a fused group runs.
    The attention core is one step and each product of weights shares one with its reader (as under
    fused-attention); every other matrix product is a step; every other compute node (a norm, RoPE, a cast, a
    split-KV combine, the cache write's sink) rides along with the step of the first node whose output it reads,
    or, reading only graph inputs, with the step of its first reader."""
    model = _load(graph)
    nodes, readers, producer = _graph_nodes(model)
    try:
        step_of = steps(model, FUSED_ATTENTION)
    except MappingError:  # no attention core (a hand-made graph of products alone): each product a step
        step_of = steps(model, "fixed-mapping")

    def root(tensor: str):  # the compute node a chain of views starts from
        while tensor in producer and producer[tensor].op_type in LAYOUT_OPS:
            tensor = producer[tensor].input[0]
        return producer.get(tensor)

    loose = []
    for n in nodes:
        if n.op_type in LAYOUT_OPS or n.op_type == "MatMul" or n.name in step_of:
            continue
        source = next((m for t in n.input if (m := root(t)) is not None), None)
        if source is None:
            loose.append(n)
        else:
            step_of[n.name] = step_of.get(source.name, source.name)
    for n in reversed(loose):
        first = next((r for r in _through_views(n.output[0], readers)), None)
        if first is not None:
            step_of[n.name] = step_of.get(first.name, first.name)
    return step_of


def serial_roofline_s(graph: Graph, peak_flop_per_s: float, dram_bytes_per_s: float) -> float:
    """The serial roofline (§8.0): the `reference_steps` one after another, each at its own roofline on its MACs and
    the bytes it moves: its weights, the cache it reads, what it exchanges with other steps, the layer's input and
    output, and the cache entries it writes."""
    model = _load(graph)
    step_of = reference_steps(model)
    per_step = {k: list(v) for k, v in step_counts(model, step_of).items()}
    _, _, producer = _graph_nodes(model)
    written = metadata(model).get("kv_write", [])
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.value_info}
    for tensor, copies, *precision in written:
        node = producer[tensor].name
        per_step[step_of.get(node, node)][1] += math.prod(shapes[tensor]) * copies * BYTES_PER_ELEMENT[precision[0]]
    return sum(max(2 * macs / peak_flop_per_s, nbytes / dram_bytes_per_s) for macs, nbytes in per_step.values())


def serial_bound_s(graph: Graph, strategy: str, peak_flop_per_s: float, dram_bytes_per_s: float) -> float:
    """Seconds if the steps of `strategy` run one after another, each at its own roofline on the MACs it does and the
    bytes crossing its boundary."""
    model = _load(graph)
    per_step = step_counts(model, steps(model, strategy))
    return sum(max(2 * macs / peak_flop_per_s, nbytes / dram_bytes_per_s) for macs, nbytes in per_step.values())
