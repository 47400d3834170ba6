"""Minimal reproducer: Stream 2.1.1 folds a Reshape that merges a MatMul's contracted axis in one operand only; when
both operands merge it, the second operand's Reshape becomes a FusionEdge (a memory boundary), so the node producing
that operand can never share a fused group with the MatMul.

Needs only stream-dse 2.1.1 (onnx comes with it):  python stream_double_merge.py

Graph: w = W1 @ W2 ([h, c, v] @ [h, v, d] -> [h, c, d], a per-head product such as W_UV·W_O), then
y = reshape(x, [1, h·c]) @ reshape(w, [h·c, d]). Stream's layout folding (`stream/parser/onnx/layout.py: fold`)
splits the reader's K loop into (h, c) for the first operand's reshape; for the second, the merged axis is then
walked by the combination c·h' + c', not a single loop, so `fold` returns None and `_materialize` emits a FusionEdge.
Control: the same graph with x given flat ([1, h·c], only w's reshape merges K) folds and has no FusionEdge.
A fix in Stream: in `fold`, accept a merged group whose walked index is the row-major combination of loops with the
group's extents (what the first fold produced) and index the source axes by those loops.

Prints the workload's nodes per case; exits 1 when the double-merge case has no FusionEdge (the bug fixed).
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from stream.frontends import load_workload
from stream.workload.node import FusionEdge

H, C, V, D = 4, 8, 2, 16


def build_graph(path: Path, both_merge: bool) -> Path:
    """The merge-then-read graph; both_merge: x arrives [1, h, c] and is reshaped too (else it arrives flat)."""
    init = [numpy_helper.from_array(np.ones((H, C, V), np.float32), "W1"),
            numpy_helper.from_array(np.ones((H, V, D), np.float32), "W2"),
            numpy_helper.from_array(np.array([H * C, D]), "w_shape")]  # fmt: skip
    nodes = [helper.make_node("MatMul", ["W1", "W2"], ["w"], name="merge"),
             helper.make_node("Reshape", ["w", "w_shape"], ["w_flat"], name="w_view")]  # fmt: skip
    x, x_shape = "x", [1, H * C]
    if both_merge:
        init.append(numpy_helper.from_array(np.array([1, H * C]), "x_shape"))
        nodes.append(helper.make_node("Reshape", ["x", "x_shape"], ["x_flat"], name="x_view"))
        x, x_shape = "x_flat", [1, H, C]
    nodes.append(helper.make_node("MatMul", [x, "w_flat"], ["y"], name="reader"))
    graph = helper.make_graph(nodes, "double_merge", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, D])], init)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))
    return path


def fusion_edges(path: Path) -> list[str]:
    wl = load_workload(str(path))
    print(f"  {path.stem}: " + ", ".join(f"{type(n).__name__} {n.name}" for n in wl.dataflow_sort()))
    return [n.name for n in wl.nodes if isinstance(n, FusionEdge)]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        both = fusion_edges(build_graph(Path(tmp) / "both_operands_merge_k.onnx", True))
        one = fusion_edges(build_graph(Path(tmp) / "one_operand_merges_k.onnx", False))
    print(f"FusionEdges: both operands merge K: {both or 'none'}; one operand merges K: {one or 'none'}")
    return 0 if both and not one else 1


if __name__ == "__main__":
    sys.exit(main())
