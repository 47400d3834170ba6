"""Evaluate an exported graph with onnx.reference, also returning named intermediate tensors."""

import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator


def run(model: onnx.ModelProto, feeds: dict, extra: list[str]) -> dict:
    """Every graph output plus the `extra` intermediate tensors, by name."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in extra)
    names = [o.name for o in m.graph.output]
    return dict(zip(names, ReferenceEvaluator(m).run(None, feeds), strict=True))
