"""The in-process ZigZag runner on edge-npu: a GEMV against hand values, a V2-Lite decode graph for MAC
accounting, determinism and the memo cache, and decode latency against the roofline."""

import json
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from stream_mla.engines import zigzag_runner as zr
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import PRESETS
from stream_mla.workloads import export, make_spec

ROOT = Path(__file__).resolve().parents[1]
EDGE = PRESETS["edge-npu"]


def gemv_graph(path: Path, k: int = 4096, n: int = 1024, bits: int = 16) -> Path:
    """x[1,k] @ W[k,n] with W a data-less graph input (a constant weight for ZigZag), plus the stream_mla
    metadata count_file needs (W counts as a streamed input, so analytic bytes = W + x + y)."""

    def vi(name: str, shape: list[int]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    node = helper.make_node("MatMul", ["x", "W"], ["gemv_o"], name="gemv")
    graph = helper.make_graph([node], "gemv", [vi("x", [1, k]), vi("W", [k, n])], [vi("gemv_o", [1, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)  # before the precision attributes, which the checker rejects (trap 13)
    for key, value in (("weight_size", bits), ("act_size", bits), ("output_size", 2 * bits)):
        model.graph.node[0].attribute.append(helper.make_attribute(key, value))
    meta = {"bytes_per_element": bits // 8, "phase": "decode"}
    helper.set_model_props(model, {f"stream_mla.{k}": json.dumps(v) for k, v in meta.items()})
    onnx.save(onnx.shape_inference.infer_shapes(model), path)
    return path


def test_gemv_is_dram_bound_with_hand_energy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    onnx_path = gemv_graph(tmp_path / "gemv.onnx")
    before = set(tmp_path.iterdir())
    r = zr.evaluate_zigzag(onnx_path, EDGE, tmp_path / "run")
    assert set(tmp_path.iterdir()) - before == {tmp_path / "run"}  # nothing written to cwd
    weight_bits = 4096 * 1024 * 16
    dram_bound = weight_bits / EDGE.dram_bits_per_cycle  # 262,144 cycles
    assert dram_bound <= r.latency_cycles <= 1.3 * dram_bound
    assert r.energy_breakdown_pj["dram"] == pytest.approx(weight_bits * EDGE.dram_pj_per_bit, rel=0.02)
    assert r.energy_breakdown_pj["dram"] == pytest.approx(r.engine_dram_bytes * 8 * EDGE.dram_pj_per_bit, rel=1e-9)
    assert r.engine_dram_bytes == pytest.approx(weight_bits / 8, rel=0.02)
    assert r.engine_dram_bytes >= weight_bits / 8  # x and y ride along
    assert r.macs == 4096 * 1024 and [n.name for n in r.nodes] == ["gemv"] and r.nodes[0].bound == "transfer"
    assert r.energy_breakdown_pj["mac"] == pytest.approx(r.macs * EDGE.mac_pj)
    assert r.energy_pj == pytest.approx(r.nodes[0].energy_pj)  # static is 0 on edge-npu
    assert r.warnings == [] and r.strategy == "zigzag-loma-lpf5-EDP" and r.engine_version.startswith("zigzag-dse ")


def test_v2_lite_decode_macs_determinism_and_memo(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAM_MLA_CACHE", str(tmp_path / "cost-cache"))  # cold means cold: an empty disk cache
    spec = make_spec(model=MODELS["deepseek-v2-lite"], scheme="mla-absorb", phase="decode", batch=1, context=256)
    onnx_path = export(spec, tmp_path / "absorb.onnx")
    zr.clear_memo()
    cold = zr.evaluate_zigzag(onnx_path, EDGE, tmp_path / "a")
    misses = zr.MEMO_STATS["misses"]
    t0 = time.perf_counter()
    warm = zr.evaluate_zigzag(onnx_path, EDGE, tmp_path / "b")
    warm_s = time.perf_counter() - t0
    assert zr.MEMO_STATS["misses"] == misses and zr.MEMO_STATS["hits"] >= len(warm.nodes)  # all layers cached
    assert warm_s < cold.engine_wall_s / 3
    zr.clear_memo()
    again = zr.evaluate_zigzag(onnx_path, EDGE, tmp_path / "c")  # a fresh search, not the cache
    for r in (warm, again):
        assert (r.latency_cycles, r.energy_breakdown_pj, r.engine_dram_bytes) == (
            cold.latency_cycles,
            cold.energy_breakdown_pj,
            cold.engine_dram_bytes,
        )
    assert sum(n.macs for n in cold.nodes) == cold.macs
    assert cold.latency_cycles == sum(n.cycles for n in cold.nodes)  # layers never overlap (trap 14)
    assert len(cold.warnings) == 1 and "Softmax" in cold.warnings[0]  # only the free-ops note, no MAC mismatch


# Measured (lpf 5, EDP): MHA 1,315,962 cycles = 1.004x the roofline; absorb 938,202 cycles = 1.046x.
@pytest.mark.parametrize("scheme", ["mha", "mla-absorb"])
def test_decode_latency_at_or_above_roofline(tmp_path, scheme):
    onnx_path = ROOT / "onnx_models" / f"deepseek-v2-lite_{scheme}_decode_b1_l1024_bf16.onnx"
    r = zr.evaluate_zigzag(onnx_path, EDGE, tmp_path)
    assert r.bound == "memory"
    assert r.roofline_bound_s <= r.latency_s <= 1.1 * r.roofline_bound_s
    assert sum(n.macs for n in r.nodes) == r.macs
    assert 1.0 <= r.engine_dram_bytes / r.dram_bytes <= 1.1
