"""Shared ONNX graph helpers that obey the engines' rules (engines.md, first section and §5, §11).

- MatMul only (no Gemm), weights on the right in [K, N] layout; no Concat/Split/Expand/Constant/Identity.
- Node names are given explicitly; a node's output tensor is `<node>_o`, so no node shares a name with a tensor.
- Shapes are tracked here as the graph is built (static shapes), and shape inference runs at the end.
- Weights are data-less initializers in shapes mode, real float32 arrays in numeric mode.
- ZigZag's precision attributes are added after `onnx.checker` (which rejects them).
- Precision per tensor class: weights (initializers), the KV cache (cache inputs) and activations (x and every
  node output) each carry their own element type, as they are stored. ONNX wants both MatMul operands of one type,
  so a mixed graph is checked and shape-inferred as its single-type twin (every float tensor at the activation
  type); the engines read each operand's own type (Stream from the tensor, ZigZag from the node attributes).
"""

import json
import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
ELEM_TYPE = {  # fp8 is stored as 1-byte INT8: Stream's parser rejects FLOAT8 (engines.md §5)
    "bf16": TensorProto.BFLOAT16,
    "fp32": TensorProto.FLOAT,
    "int8": TensorProto.INT8,
    "fp8": TensorProto.INT8,
}
ELEM_BITS = {"bf16": 16, "fp32": 32, "int8": 8, "fp8": 8}
ACCUMULATOR_BITS = 32
TENSOR_CLASSES = ("weights", "kv_cache", "activations")
LAYOUT_OPS = ("Reshape", "Transpose")  # free in both engines: folded into the consumer
META_PREFIX = "stream_mla."
COPY_TAG = "__for_"  # a shared input's copy for one reader, "<input>__for_<reader>" (engines/graph_fix.py)


def broadcast_matmul_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if a[-1] != b[-2]:
        raise ValueError(f"MatMul inner dims differ: {a} x {b}")
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return (*batch, a[-2], b[-1])


def single_typed(model: onnx.ModelProto, elem_type: int) -> onnx.ModelProto:
    """A copy with every floating graph input and initializer at one element type (the ONNX rule for MatMul)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in (*copy.graph.input, *copy.graph.output):
        t.type.tensor_type.elem_type = elem_type
    for t in copy.graph.initializer:
        if t.data_type != TensorProto.INT64:
            t.data_type = elem_type
    return copy


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The checker demands data in every initializer; shapes-mode weights have none on purpose, so they are
    checked as the equivalent typed graph inputs (the graph is otherwise unchanged)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    g = copy.graph
    dataless = [
        t
        for t in g.initializer
        if not t.raw_data
        and not any(getattr(t, f) for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"))
    ]
    for t in dataless:
        g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        g.initializer.remove(t)
    return copy


class GraphBuilder:
    """Accumulates nodes, inputs and initializers of one attention-layer graph."""

    def __init__(self, precisions: str | dict[str, str], weights: dict[str, np.ndarray] | None = None):
        """precisions: one precision for every tensor, or one per class of TENSOR_CLASSES."""
        if isinstance(precisions, str):
            precisions = dict.fromkeys(TENSOR_CLASSES, precisions)
        self.precisions = {c: precisions[c] for c in TENSOR_CLASSES}  # tensor class -> precision name
        self.types = {c: ELEM_TYPE[p] for c, p in self.precisions.items()}
        self.dtype = self.types["activations"]  # node outputs, x and elementwise constants
        self.mixed = len(set(self.types.values())) > 1
        self.values = weights  # numeric mode: name -> float32 array; None: shapes mode
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.inits: list[TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.kv_writes: list[tuple[str, int]] = []  # (tensor, copies written per element)
        self.activation_inputs: list[str] = []  # graph inputs that are activations (x, or a core's queries)
        self.causal_nodes: list[str] = []

    # ---- sources -------------------------------------------------------------------------------
    def input(self, name: str, shape, cls: str = "kv_cache", precision: str | None = None) -> str:
        """A graph input: the KV cache (default) or, with cls="activations", the layer input x; `precision`
        overrides the class's (DSA's indexer keys are cached in fp8 whatever the latent's precision)."""
        elem = ELEM_TYPE[precision] if precision else self.types[cls]
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        if cls == "activations":
            self.activation_inputs.append(name)
        self.shapes[name] = tuple(shape)
        return name

    def weight(self, name: str, shape) -> str:
        """A weight matrix; data-less in shapes mode so a DeepSeek-V3 layer stays a few KB."""
        shape = tuple(shape)
        if self.values is None:
            self.inits.append(TensorProto(name=name, data_type=self.types["weights"], dims=list(shape)))
        else:
            value = self.values[name]
            if value.shape != shape:
                raise ValueError(f"weight {name}: expected {shape}, got {value.shape}")
            self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        self.shapes[name] = shape
        return name

    def constant(self, name: str, value, dtype=np.int64) -> str:
        """Shape vectors and scalars: initializers, never Constant nodes (Stream rejects those).
        Float scalars take the graph's element type so elementwise ops type-check."""
        array = np.asarray(value, dtype=dtype)
        if dtype == np.int64:
            tensor = numpy_helper.from_array(array, name)
        else:
            tensor = helper.make_tensor(name, self.dtype, array.shape, array.ravel().tolist())
        self.inits.append(tensor)
        self.shapes[name] = array.shape
        return name

    # ---- nodes ---------------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], name: str, shape, **attrs) -> str:
        out = f"{name}_o"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        self.shapes[out] = tuple(int(s) for s in shape)
        return out

    def matmul(self, name: str, a: str, b: str) -> str:
        return self.node("MatMul", [a, b], name, broadcast_matmul_shape(self.shapes[a], self.shapes[b]))

    def reshape(self, name: str, x: str, shape) -> str:
        shape = tuple(shape)
        if math.prod(shape) != math.prod(self.shapes[x]):
            raise ValueError(f"reshape {name}: {self.shapes[x]} -> {shape}")
        return self.node("Reshape", [x, self.constant(f"{name}_shape", shape)], name, shape)

    def transpose(self, name: str, x: str, perm) -> str:
        return self.node("Transpose", [x], name, [self.shapes[x][p] for p in perm], perm=list(perm))

    def add(self, name: str, a: str, b: str) -> str:
        return self.node("Add", [a, b], name, np.broadcast_shapes(self.shapes[a], self.shapes[b]))

    def mul(self, name: str, a: str, b: str) -> str:
        return self.node("Mul", [a, b], name, np.broadcast_shapes(self.shapes[a], self.shapes[b]))

    def relu(self, name: str, x: str) -> str:
        return self.node("Relu", [x], name, self.shapes[x])

    def softmax(self, name: str, x: str) -> str:
        return self.node("Softmax", [x], name, self.shapes[x], axis=-1)

    def reduce(self, op: str, name: str, x: str) -> str:
        """Reduce the last axis, keeping it (axes as an int64 initializer: opset 18, Stream-parsable)."""
        shape = (*self.shapes[x][:-1], 1)
        return self.node(op, [x, self.constant(f"{name}_axes", [-1])], name, shape, keepdims=1)

    def rmsnorm(self, name: str, x: str, eps: float = 1e-6) -> str:
        """x / sqrt(mean(x^2) + eps) from elementwise ops both engines parse; the gain is folded into the
        following projection (weights.py), so the graph holds no norm parameters."""
        sq = self.mul(f"{name}_sq", x, x)
        mean = self.reduce("ReduceMean", f"{name}_mean", sq)
        shifted = self.add(f"{name}_eps", mean, self.constant(f"{name}_eps_c", eps, np.float32))
        inv = self.node("Pow", [shifted, self.constant(f"{name}_pow_c", -0.5, np.float32)], f"{name}_rsqrt",
                        self.shapes[shifted])  # fmt: skip
        return self.mul(name, x, inv)

    def layernorm(self, name: str, x: str, eps: float = 1e-6) -> str:
        """(x - mean) / sqrt(var + eps) over the last axis, from elementwise ops both engines parse; no affine
        parameters (like rmsnorm's gain, they would fold into the consumer)."""
        mean = self.reduce("ReduceMean", f"{name}_row_mean", x)  # x + (-1)·mean: Stream's Sub takes no broadcast
        neg = self.mul(f"{name}_neg_mean", mean, self.constant(f"{name}_minus_one", -1.0, np.float32))
        centred = self.add(f"{name}_centre", x, neg)
        return self.rmsnorm(name, centred, eps)  # the mean of a centred row is 0: rms of it is its std

    # ---- heads ---------------------------------------------------------------------------------
    def split_heads(self, name: str, x: str, heads: int) -> str:
        """[B, S, H*d] -> [B, H, S, d] (Reshape + Transpose, both folded by the engines)."""
        b, s, hd = self.shapes[x]
        t = self.reshape(f"{name}_split", x, (b, s, heads, hd // heads))
        return self.transpose(name, t, (0, 2, 1, 3))

    def merge_heads(self, name: str, x: str) -> str:
        """[B, H, S, d] -> [B, S, H*d]."""
        b, h, s, d = self.shapes[x]
        t = self.transpose(f"{name}_t", x, (0, 2, 1, 3))
        return self.reshape(name, t, (b, s, h * d))

    def per_head_weight(self, name: str, w: str, heads: int, transpose: bool) -> str:
        """Canonical [K, H*N] weight viewed heads-first as [H, K, N] (or [H, N, K] with transpose).
        The view is a node, so ZigZag indexes the weight by head instead of collapsing it (engines.md #11)."""
        k, hn = self.shapes[w]
        t = self.reshape(f"{name}_split", w, (k, heads, hn // heads))
        return self.transpose(name, t, (1, 2, 0) if transpose else (1, 0, 2))

    # ---- roles read by the analytic counter -----------------------------------------------------
    def mark_kv_write(self, tensor: str, copies: int = 1, precision: str | None = None) -> None:
        """The tensor is stored in the cache (`copies` per element) at the cache's (or the given) precision."""
        self.kv_writes.append((tensor, copies, precision or self.precisions["kv_cache"]))

    def mark_causal(self, node_output: str) -> None:
        self.causal_nodes.append(node_output.removesuffix("_o"))

    def sink_side_outputs(self, y: str, side: list[str]) -> str:
        """Stream needs every node to feed the single graph output, but the new KV-cache entry of a decode
        step is a side effect (it is stored, and read back by the attention through the in-place cache).
        Its row sums are multiplied by zero and added to y: B*(d+w) element ops, numerically exact."""
        total = None
        for i, t in enumerate(side):  # no `_sum` suffix: Stream names a Softmax's pieces `<name>_sum` etc.
            # a row of one (DSA's top-k stand-in) is its own sum; Stream cannot size a reduction over it
            s = t if self.shapes[t][-1] == 1 else self.reduce("ReduceSum", f"{t.removesuffix('_o')}_rowsum", t)
            total = s if total is None else self.add(f"kv_write_acc{i}", total, s)
        gated = self.mul("kv_write_gate", total, self.constant("kv_write_gate_zero", 0.0, np.float32))
        return self.add("out", y, gated)

    # ---- model ---------------------------------------------------------------------------------
    def build(self, output: str, graph_name: str, metadata: dict) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(output, self.dtype, list(self.shapes[output]))
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, [out], initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="stream-mla")
        model.ir_version = 10  # fixed, so files do not change with the installed onnx
        meta = {**metadata, "kv_write": self.kv_writes, "causal_nodes": self.causal_nodes,
                "activation_inputs": self.activation_inputs}  # fmt: skip
        for key, value in meta.items():
            model.metadata_props.add(key=META_PREFIX + key, value=json.dumps(value, sort_keys=True))
        twin = single_typed(model, self.dtype) if self.mixed else model
        onnx.checker.check_model(checkable(twin))
        inferred = onnx.shape_inference.infer_shapes(twin, strict_mode=self.dtype in (TensorProto.FLOAT,))
        del model.graph.value_info[:]
        model.graph.value_info.extend(inferred.graph.value_info)
        self._check_inferred(model)
        types = self._tensor_types(model)
        for vi in model.graph.value_info:
            vi.type.tensor_type.elem_type = types[vi.name]
        bits = {t: 8 * helper.tensor_dtype_to_np_dtype(e).itemsize for t, e in types.items()}
        for n in model.graph.node:  # ZigZag reads operand precision from these (default 8 bit, trap #13)
            if n.op_type == "MatMul":
                a, w = (bits[x] for x in n.input)
                n.attribute.extend([helper.make_attribute("weight_size", w), helper.make_attribute("act_size", a),
                                    helper.make_attribute("output_size", ACCUMULATOR_BITS)])  # fmt: skip
        return model

    def _tensor_types(self, model: onnx.ModelProto) -> dict[str, int]:
        """Every tensor's element type as stored: a layout view keeps its source's type (a weight or cache seen
        through Reshape/Transpose is still that weight or cache); every other node writes an activation."""
        types = {t.name: t.type.tensor_type.elem_type for t in model.graph.input}
        types.update({t.name: t.data_type for t in model.graph.initializer})
        for n in model.graph.node:
            types[n.output[0]] = types[n.input[0]] if n.op_type in LAYOUT_OPS else self.dtype
        return types

    def _check_inferred(self, model: onnx.ModelProto) -> None:
        """Our tracked shapes must agree with ONNX shape inference wherever it produced one."""
        for vi in model.graph.value_info:
            dims = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
            if vi.name in self.shapes and dims and dims != self.shapes[vi.name]:
                raise AssertionError(f"shape of {vi.name}: tracked {self.shapes[vi.name]}, inferred {dims}")
