"""Analytic counts read off an exported graph (attention-schemes.md §2 accounting rules).

- MACs: MatMul only, prod(output shape) x reduction width; every other op is vector work (zero MACs).
- DRAM bytes, per step: every weight once (rank >= 2 floating initializers, whether a MatMul reads it directly
  or through a layout view), every KV-cache input once, the cache write (tensors the exporter marked, times
  their per-head copies), and activations in/out (x and the output). Intermediates stay on-chip.
- Layer-by-layer bytes: the traffic of an executor that keeps nothing on-chip between nodes, each node reading
  all its inputs from DRAM and writing its output back (layout views are free). The upper reference for an engine
  run with a fusion cut after every layer, as the lower one above is for a perfect one. A ReduceSum that alone
  reads a MatMul's output is that MatMul's accumulation (`summed_products`: as both engines run it, Stream folding
  it into the product), so the partial products between them never cross DRAM.
- Causal (and windowed) attention: the graphs compute the dense Sq x T block; `macs_causal` scales the nodes the
  exporter marked by the exact share of query-key pairs a causal attention computes (`attended_pairs`): (S+1)/(2S)
  for prefill, 1 - (Q-1)/(2L) for Q new decode tokens, less where a window W caps what each query sees.
- Bytes are elements x each tensor's own element size as stored in the graph (weights, KV cache and activations may
  differ); the cache write is charged at the cache's precision.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.helper import tensor_dtype_to_np_dtype

from stream_mla.models import BYTES_PER_ELEMENT
from stream_mla.workloads.graph import META_PREFIX
from stream_mla.workloads.split_kv import MASK

LAYOUT_OPS = ("Reshape", "Transpose")  # views: the engines move no data for them
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8)


def _dims(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)


def metadata(model: onnx.ModelProto) -> dict:
    return {p.key.removeprefix(META_PREFIX): json.loads(p.value) for p in model.metadata_props
            if p.key.startswith(META_PREFIX)}  # fmt: skip


@dataclass(frozen=True)
class Roofline:
    compute_s: float
    memory_s: float

    @property
    def bound_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


def attended_pairs(queries: int, context: int, window: int | None = None) -> int:
    """Query-key pairs of causal attention for the last `queries` of `context` tokens, each query seeing itself and
    at most window - 1 earlier tokens: sum over i < Q of min(W, L - Q + 1 + i), in closed form."""
    first = context - queries + 1  # keys seen by the first query
    uncapped = queries if window is None else min(max(window - first + 1, 0), queries)
    return uncapped * first + uncapped * (uncapped - 1) // 2 + (queries - uncapped) * (window or 0)


def _shapes_and_types(g: onnx.GraphProto) -> tuple[dict, dict]:
    """Every tensor's shape and element type: graph inputs, inferred values, outputs and initializers."""
    shapes = {vi.name: _dims(vi) for vi in (*g.input, *g.value_info, *g.output)}
    shapes.update({t.name: tuple(t.dims) for t in g.initializer})
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.input, *g.value_info, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return shapes, types


def summed_products(g: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """{ReduceSum node name: the MatMul it sums}: each ReduceSum whose input a MatMul produces and it alone reads.
    The product accumulates over the summed axes in place (Stream: parser/onnx/reduce.py), so the pair is one node
    reading the MatMul's inputs and writing the ReduceSum's output."""
    producer = {o: n for n in g.node for o in n.output}
    reads: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            reads[t] = reads.get(t, 0) + 1
    return {n.name: m for n in g.node if n.op_type == "ReduceSum" and (m := producer.get(n.input[0])) is not None
            and m.op_type == "MatMul" and reads[n.input[0]] == 1}  # fmt: skip


def _matmul_macs(n: onnx.NodeProto, shapes: dict) -> int:
    """A MatMul's MACs: every output element sums over the contracted axis (the first input's last)."""
    return math.prod(shapes[n.output[0]]) * shapes[n.input[0]][-1]


def count(model: onnx.ModelProto) -> dict:
    """The `stream-mla count --json` document for one graph."""
    meta = metadata(model)
    if "bytes_per_element" not in meta:
        raise ValueError("not a stream-mla graph (no stream_mla.* metadata); export it with `stream-mla export`")
    g = model.graph
    shapes, types = _shapes_and_types(g)
    width = {name: tensor_dtype_to_np_dtype(t).itemsize for name, t in types.items()}  # bytes per element
    weights = {t.name for t in g.initializer if len(t.dims) >= 2 and t.name != MASK}
    act_inputs = meta.get("activation_inputs", ["x"])
    caches = [i.name for i in g.input if i.name not in act_inputs]
    causal = set(meta.get("causal_nodes", []))
    phase = meta["phase"]
    att = meta.get("attention")  # absent in a hand-built graph: its marked nodes (if any) count dense
    causal_factor = (
        (attended_pairs(att["queries"], att["context"], att["window"]), att["queries"] * att["keys"]) if att else (1, 1)
    )

    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    nbytes = {name: n * width[name] for name, n in numel.items() if name != MASK}
    kv_width = BYTES_PER_ELEMENT[meta["precision"]["kv_cache"]] if "precision" in meta else width["x"]
    nodes, macs, macs_causal = [], 0, 0
    summed = summed_products(g)
    sum_of = {m.name: r for r, m in summed.items()}  # the MatMul's name: its ReduceSum's name
    written = {r.name: r.output for r in g.node if r.name in summed}
    for n in g.node:
        node_macs = 0
        if n.op_type == "MatMul":
            node_macs = _matmul_macs(n, shapes)
        node_causal = node_macs * causal_factor[0] // causal_factor[1] if n.name in causal else node_macs
        macs += node_macs
        macs_causal += node_causal
        outputs = written[sum_of[n.name]] if n.name in sum_of else n.output
        moved = n.op_type in LAYOUT_OPS or n.name in summed  # a view; a sum its product accumulates
        io = 0 if moved else sum(nbytes[t] for t in (*n.input, *outputs) if t in nbytes)
        nodes.append({"name": n.name, "op": n.op_type, "macs": node_macs, "macs_causal": node_causal,
                      "flops": 2 * node_macs, "output_shape": list(shapes.get(n.output[0], ())),
                      "io_bytes": io})  # fmt: skip

    elems = {
        "weights": sum(numel[w] for w in weights),
        "kv_read": sum(numel[c] for c in caches),
        "kv_write": sum(numel[t] * copies for t, copies, *_ in meta.get("kv_write", [])),
        "activations": sum(numel[a] for a in act_inputs) + numel[g.output[0].name],
    }
    byte_counts = {
        "weights": sum(nbytes[w] for w in weights),
        "kv_read": sum(nbytes[c] for c in caches),
        "kv_write": sum(
            numel[t] * copies * (BYTES_PER_ELEMENT[p[0]] if p else kv_width)
            for t, copies, *p in meta.get("kv_write", [])
        ),  # fmt: skip
        "activations": sum(nbytes[a] for a in act_inputs) + nbytes[g.output[0].name],
    }
    byte_counts["total"] = sum(byte_counts.values())
    return {
        "graph": g.name,
        "phase": phase,
        "spec": meta.get("spec"),
        "bytes_per_element": meta["bytes_per_element"],
        "precision": meta.get("precision"),
        "macs": macs,
        "macs_causal": macs_causal,
        "flops": 2 * macs,
        "elements": elems,
        "bytes": byte_counts,
        "operational_intensity": 2 * macs / byte_counts["total"],
        "bytes_layer_by_layer": sum(n["io_bytes"] for n in nodes),
        "pad_keys": (att or {}).get("pad", 0),  # split-KV padding: masked key slots per sequence and K/V head
        "nodes": nodes,
    }


def step_counts(model: onnx.ModelProto, step_of: dict[str, str]) -> dict[str, tuple[int, int]]:
    """{step: (MACs, DRAM bytes)} when the graph runs as steps one after another, each step exchanging through DRAM
    only what crosses its boundary: the graph inputs and weights its nodes read, what other steps produce for it,
    and what it produces for other steps or as the graph output, each tensor once per step. `step_of` names each
    node's step (a node not in it is a step of its own); a view (Reshape, Transpose) is its source tensor and
    belongs to no step. One step holding every node moves the graph's inputs, weights and output; one step per
    node (no views) moves the layer-by-layer bytes."""
    g = model.graph
    shapes, types = _shapes_and_types(g)
    source: dict[str, str] = {}
    for n in g.node:  # graph order is topological: a view's input is resolved before the view
        if n.op_type in LAYOUT_OPS:
            source[n.output[0]] = source.get(n.input[0], n.input[0])
    # shapes, axes, scalars and a padding mask: attributes, not data
    constants = {t.name for t in g.initializer if len(t.dims) < 2 or t.name == MASK}
    nbytes = {t: math.prod(shapes[t]) * tensor_dtype_to_np_dtype(types[t]).itemsize for t in shapes
              if t not in constants}  # fmt: skip
    steps: dict[str, dict] = {}
    readers: dict[str, set[str]] = {}
    step_of = {**step_of, **{r: step_of.get(m.name, m.name) for r, m in summed_products(g).items()}}
    for n in g.node:
        if n.op_type in LAYOUT_OPS:
            continue
        step = steps.setdefault(step_of.get(n.name, n.name), {"macs": 0, "reads": set(), "writes": set()})
        if n.op_type == "MatMul":
            step["macs"] += _matmul_macs(n, shapes)
        for t in n.input:
            t = source.get(t, t)
            if t in nbytes:
                step["reads"].add(t)
                readers.setdefault(t, set()).add(step_of.get(n.name, n.name))
        step["writes"].update(o for o in n.output if o in nbytes)
    out = {source.get(o.name, o.name) for o in g.output}
    result = {}
    for name, step in steps.items():
        inbound = {t for t in step["reads"] if t not in step["writes"]}  # produced elsewhere, or an input
        outbound = {t for t in step["writes"] if t in out or readers.get(t, set()) - {name}}
        result[name] = (step["macs"], sum(nbytes[t] for t in inbound | outbound))
    return result


def count_file(path: str | Path) -> dict:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several types for unreadable files
        raise ValueError(f"{path}: not a readable ONNX file ({exc.__class__.__name__})") from None
    return count(model)


def roofline(counts: dict, peak_mac_per_s: float, dram_bytes_per_s: float, causal: bool = False) -> Roofline:
    """T = max(MACs / peak, bytes / bandwidth) (§2)."""
    macs = counts["macs_causal"] if causal else counts["macs"]
    return Roofline(compute_s=macs / peak_mac_per_s, memory_s=counts["bytes"]["total"] / dram_bytes_per_s)
