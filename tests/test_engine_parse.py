"""Every committed reference graph parses in Stream 2.1.1 and ZigZag 3.9.1; both engines see our MACs and
ZigZag indexes the KV-cache operands by batch and head."""

import logging
import math
from pathlib import Path

import onnx
import pytest
from stream.frontends import load_workload
from stream.workload.normalization import expand_normalizations
from zigzag.parser.onnx.onnx_model_parser import ONNXModelParser
from zigzag.workload.layer_node import LayerNode

from stream_mla.workloads import reference_set
from stream_mla.workloads.counts import count_file, metadata

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = sorted((ROOT / "onnx_models").glob("*.onnx"))
ZIGZAG_MAPPING = ROOT / "mappings" / "zigzag" / "edge-npu.yaml"
ATTENTION_NODES = {"scores", "scores_lat", "scores_rope", "scores_nope", "ctx"}


@pytest.fixture(autouse=True)
def quiet_engines():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_reference_set_is_complete():
    assert sorted(ROOT / "onnx_models" / f"{s.slug}.onnx" for s in reference_set.grid()) == GRAPHS
    # V3 and V2-Lite: 8 schemes x (3 decode + 2 prefill); V3.2: mla-sparse x 3 decode (it has no prefill)
    assert len(GRAPHS) == 2 * 8 * 5 + 3


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.stem)
def test_stream_parses_with_our_macs(path):
    wl = expand_normalizations(load_workload(str(path)))
    macs = 0
    for node in wl.get_computation_nodes():
        if node.type == "MatMul":
            macs += math.prod(wl.get_dimension_size(d) for d in wl.get_dims(node))
    assert macs == count_file(path)["macs"]


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.stem)
def test_zigzag_parses_with_batch_and_head_indexed_kv(path):
    layers = {n.name: n for n in ONNXModelParser(str(path), str(ZIGZAG_MAPPING)).run().topological_sort()
              if isinstance(n, LayerNode)}  # fmt: skip
    counted = {n["name"]: n["macs"] for n in count_file(path)["nodes"] if n["op"] == "MatMul"}
    assert set(layers) == set(counted)
    for name, layer in layers.items():
        assert math.prod(layer.layer_dim_sizes[d] for d in layer.layer_dim_sizes) == counted[name], name
        if name in ATTENTION_NODES:  # both operands are activations indexed per batch and head
            assert "W[b][h][c][k]" in layer.equation, (name, layer.equation)
            assert not layer.constant_operands, name
    # the latent/K/V cache read by the first attention product is an activation, not a constant weight
    meta = metadata(onnx.load(str(path), load_external_data=False))
    if meta["phase"] == "decode":
        assert any(name in layers and not layers[name].constant_operands for name in ATTENTION_NODES)
