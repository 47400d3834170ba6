"""Stream 2.1.1's default-fusion truncation (docs/stream-fusion-truncation.md): the graph fix that removes it, the
guard that catches it on every Stream result, and the maintainer's reproducer. Real Stream runs, small cases."""

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from stream.api import SolveOptions, evaluate_mapping

from stream_mla.engines import Hardware
from stream_mla.engines.graph_fix import shared_inputs, split_shared_inputs
from stream_mla.engines.stream_guard import (
    BELOW_PHYSICS,
    EngineBelowPhysics,
    coverage_of,
    coverage_probe,
    coverage_violations,
)
from stream_mla.engines.stream_runner import DEFAULT_FUSION, evaluate_stream
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import PRESETS
from stream_mla.workloads import export, make_spec

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stream_fusion_truncation.py"


def reproducer():
    """The standalone reproducer script as a module (it imports no stream_mla)."""
    spec = importlib.util.spec_from_file_location("stream_fusion_truncation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toy_graph() -> onnx.ModelProto:
    """x read by `a` directly and by `b` and `c` through one shared view; `cache` read by `d` alone."""
    f32 = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.ones((8, 4), np.float32), w) for w in ("W_a", "W_b", "W_c")]
    inits.append(numpy_helper.from_array(np.array([1, 8], np.int64), "x_view_shape"))
    nodes = [
        helper.make_node("MatMul", ["x", "W_a"], ["a_o"], name="a"),
        helper.make_node("Reshape", ["x", "x_view_shape"], ["x_view_o"], name="x_view"),
        helper.make_node("MatMul", ["x_view_o", "W_b"], ["b_o"], name="b"),
        helper.make_node("MatMul", ["x_view_o", "W_c"], ["c_o"], name="c"),
        helper.make_node("MatMul", ["a_o", "cache"], ["d_o"], name="d"),
        helper.make_node("Add", ["b_o", "c_o"], ["bc_o"], name="bc"),
        helper.make_node("Add", ["bc_o", "d_o"], ["out_o"], name="out"),
    ]
    inputs = [helper.make_tensor_value_info("x", f32, [1, 1, 8]), helper.make_tensor_value_info("cache", f32, [4, 4])]
    graph = helper.make_graph(nodes, "toy", inputs, [helper.make_tensor_value_info("out_o", f32, [1, 1, 4])], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_each_reader_of_a_shared_input_gets_its_own_copy():
    model = toy_graph()
    before = model.SerializeToString()
    assert shared_inputs(model) == {"x": ["a", "b", "c"]}  # through the view; `cache` has one reader
    fixed = split_shared_inputs(model)
    assert model.SerializeToString() == before  # pure
    inputs = {i.name: i for i in fixed.graph.input}
    assert list(inputs) == ["x__for_a", "x__for_b", "x__for_c", "cache"]
    x = next(i for i in model.graph.input if i.name == "x")
    assert all(inputs[f"x__for_{r}"].type == x.type for r in "abc")  # same shape and element type
    nodes = {n.name: n for n in fixed.graph.node}
    assert "x_view" not in nodes  # the shared view is cloned per reader
    assert list(nodes["x_view__for_b"].input) == ["x__for_b", "x_view_shape"]
    assert list(nodes["b"].input) == ["x_view_o__for_b", "W_b"] and list(nodes["c"].input) == ["x_view_o__for_c", "W_c"]
    assert list(nodes["a"].input) == ["x__for_a", "W_a"] and list(nodes["d"].input) == ["a_o", "cache"]
    onnx.checker.check_model(fixed, full_check=True)  # nodes still in topological order, shapes consistent
    assert shared_inputs(fixed) == {}
    assert split_shared_inputs(fixed) == fixed  # nothing left to split: equal to its input


def test_a_reader_of_two_slots_gets_two_copies_and_single_path_views_keep_their_names():
    f32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("Transpose", ["k"], ["k_t_o"], name="k_t"),
        helper.make_node("MatMul", ["k", "k_t_o"], ["sq_o"], name="sq"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("k", f32, [4, 4])],
                              [helper.make_tensor_value_info("sq_o", f32, [4, 4])])  # fmt: skip
    fixed = split_shared_inputs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [i.name for i in fixed.graph.input] == ["k__for_sq", "k__for_sq_1"]
    assert [(n.name, list(n.input)) for n in fixed.graph.node] == [
        ("k_t", ["k__for_sq"]),
        ("sq", ["k__for_sq_1", "k_t_o"]),
    ]  # paths in node order: the view's comes first
    onnx.checker.check_model(fixed, full_check=True)


def plain_stream(hw_yaml: Path, graph: Path, out: Path):
    """Stock evaluate_mapping (default fusion), with the guard's coverage probe installed."""
    logging.disable(logging.WARNING)
    try:
        with coverage_probe():
            return evaluate_mapping(str(hw_yaml), str(graph), str(out), options=SolveOptions(artifacts=False))
    finally:
        logging.disable(logging.NOTSET)


def test_two_matmuls_on_one_input_are_truncated_until_each_has_its_own(tmp_path):
    """The reproducer's graph (K=2048, N=128, 64 KiB SRAM): Stream costs `b` at 1/64 of its work and the run beats
    the weight floor (measured 16,868 vs 32,768 cycles); with the fix every node is costed in full (33,420)."""
    rep = reproducer()
    hw_yaml = rep.write_hardware(tmp_path / "hw.yaml", 64)
    shared = rep.build_graph(tmp_path / "shared.onnx", 2048, 128, per_reader=False)
    floor = 2 * 2048 * 128 * 16 / rep.DRAM_BITS_PER_CYCLE
    est = plain_stream(hw_yaml, shared, tmp_path / "shared")
    assert est.cycles < 0.6 * floor
    truncated = f"{BELOW_PHYSICS}: group 0 costs b at 0.01562 of its iteration space"
    assert coverage_violations(coverage_of(est)) == [truncated]
    fixed = tmp_path / "fixed.onnx"
    onnx.save(split_shared_inputs(onnx.load(str(shared))), str(fixed))
    est = plain_stream(hw_yaml, fixed, tmp_path / "fixed")
    assert coverage_violations(coverage_of(est)) == [] and len(coverage_of(est)) == 3
    assert floor <= est.cycles <= 1.05 * floor


def test_reproducer_prints_both_runs():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True).stdout
    shared, per_reader = out.split("x given once per reader")
    assert "b    coverage 0.01562" in shared and "Transfer(x for b)" in shared
    assert "coverage 0.01562" not in per_reader and per_reader.count("coverage 1 ") == 3


@pytest.fixture(scope="module")
def edge():
    return Hardware.from_platform(PRESETS["edge-npu"])


@pytest.fixture(scope="module")
def mqa(tmp_path_factory):
    """V2-Lite MQA decode at L = 1024 (the graph of onnx_models/deepseek-v2-lite_mqa_decode_b1_l1024_bf16.onnx)."""
    spec = make_spec(model=MODELS["deepseek-v2-lite"], scheme="mqa", phase="decode", batch=1, context=1024)
    return export(spec, tmp_path_factory.mktemp("graph") / "mqa.onnx")


def test_default_fusion_on_the_fixed_graph_respects_physics(edge, mqa, tmp_path):
    """engines.md §16.1: V2-Lite MQA decode on edge-npu with x given once per reader, 590,644 cycles (1.03x the
    roofline; 322,872 with the shared x). The runner applies the fix itself; a returned result passed the guard."""
    r = evaluate_stream(mqa, edge, tmp_path, strategies=(DEFAULT_FUSION,))
    assert r.strategy == DEFAULT_FUSION and not r.warnings
    assert r.roofline_bound_s <= r.latency_s <= 1.1 * r.roofline_bound_s
    assert r.latency_cycles == pytest.approx(590_644, rel=0.01)
    assert 1.0 <= r.engine_dram_bytes / r.dram_bytes <= 1.02
    assert {"q_proj", "k_proj", "v_proj"} <= {n.name for n in r.nodes}  # the copies of x map back to the layers
    assert r.macs == sum(n.macs for n in r.nodes)


def test_default_fusion_on_the_shared_input_is_refused(edge, mqa, tmp_path):
    """The same run on the graph as given: the guard names q_proj (costed at 1/32), the DRAM and the roofline,
    and the runner raises instead of returning the number."""
    with pytest.raises(EngineBelowPhysics) as info:
        evaluate_stream(mqa, edge, tmp_path, strategies=(DEFAULT_FUSION,), split_inputs=False)
    exc = info.value
    assert str(exc).startswith("platform edge-npu: mqa: every strategy is below physics")
    assert exc.violations[0] == f"{BELOW_PHYSICS}: group 0 costs q_proj at 0.03125 of its iteration space"
    assert exc.violations[1].startswith(f"{BELOW_PHYSICS}: engine DRAM ")
    assert exc.violations[2].startswith(f"{BELOW_PHYSICS}: latency ") and len(exc.violations) == 3
    assert exc.result.latency_s < 0.6 * exc.result.roofline_bound_s  # measured 322,872 cycles, 0.563x
    assert exc.result.engine_dram_bytes < 0.6 * exc.result.dram_bytes  # 0.558x


def test_a_strategy_below_physics_falls_back_and_is_recorded(edge, mqa, tmp_path):
    """Like a strategy that does not fit: the next one runs and the violation stays in the warnings."""
    r = evaluate_stream(mqa, edge, tmp_path, strategies=(DEFAULT_FUSION, "keep-softmax"), split_inputs=False)
    assert r.strategy == "keep-softmax" and r.latency_s >= r.roofline_bound_s
    assert len(r.warnings) == 1
    assert r.warnings[0].startswith(f"strategy {DEFAULT_FUSION}: {BELOW_PHYSICS}: group 0 costs q_proj at 0.03125")


def test_the_latency_floor_allows_the_rounding_of_the_dram_port_and_no_more():
    """A DRAM port of whole bits per cycle may be up to half a bit per cycle faster than the platform: a run on it
    may beat the platform's exact memory roofline by that ratio, not by more, and a slower port gives no slack."""
    from dataclasses import replace

    from stream_mla.engines.result import Result
    from stream_mla.engines.stream_guard import bound_violations

    roof = 1e-3  # s, memory-bound; clock 1 GHz, so 1e6 cycles
    base = Result(engine="stream", engine_version="", platform="p", workload="w", clock_ghz=1.0,
                  latency_cycles=1e6, energy_breakdown_pj={}, macs=0, dram_bytes=1000, engine_dram_bytes=1000.0,
                  roofline_bound_s=roof, bound="memory", strategy="s", engine_wall_s=0.0)  # fmt: skip
    assert bound_violations(base) == []
    fast = replace(base, latency_cycles=1e6 * (1 - 2e-5))  # 2e-5 below the exact roofline
    assert bound_violations(fast)  # on a port no faster than the platform: below physics
    assert bound_violations(fast, port_ratio=1 + 3e-5) == []  # the port is 3e-5 faster: within what it allows
    assert bound_violations(fast, port_ratio=1 + 1e-5)  # 1e-5 faster: still below
    assert bound_violations(fast, port_ratio=1 - 1e-3)  # a slower port gives no slack


def test_a_step_below_its_own_roofline_is_named():
    """(d): each step at least its MACs at the array's peak and its DRAM bytes at the port Stream was given, with one
    cycle of slack for Stream's whole cycles; the hand numbers: 1,024 MACs and 512 bits (64 B) a cycle, so 1,024,000
    MACs take 1,000 cycles and 64,000 B take 1,000."""
    from dataclasses import replace

    from stream_mla.engines.result import NodeResult, Result
    from stream_mla.engines.stream_guard import step_violations

    mm = NodeResult(name="mm", op="MatMul", macs=1_024_000, cycles=1_000, bound="compute", energy_pj=0.0)
    load = NodeResult(name="load", op="MatMul", macs=0, cycles=1_000, bound="transfer", energy_pj=0.0,
                      dram_bytes=64_000)  # fmt: skip
    base = Result(engine="stream", engine_version="", platform="p", workload="w", clock_ghz=1.0,
                  latency_cycles=2_000, energy_breakdown_pj={}, macs=1_024_000, dram_bytes=64_000,
                  engine_dram_bytes=64_000.0, roofline_bound_s=1e-6, bound="memory", strategy="s", engine_wall_s=0.0,
                  nodes=[mm, load])  # fmt: skip
    assert step_violations(base, 1024, 512) == []
    fast = replace(base, nodes=[replace(mm, cycles=998), load])  # 2 cycles under its compute: beyond the slack
    assert step_violations(fast, 1024, 512) == [
        f"{BELOW_PHYSICS}: step mm takes 998 cycles < its own roofline 1,000 (0.998x)"
    ]
    assert step_violations(replace(base, nodes=[mm, replace(load, cycles=999)]), 1024, 512) == []  # one cycle
    slow = step_violations(base, 1024, 256)  # half the port: the load needs 2,000 cycles
    assert slow == [f"{BELOW_PHYSICS}: step load takes 1,000 cycles < its own roofline 2,000 (0.500x)"]
    assert step_violations(base, 2048, 1024) == []  # a faster machine: both steps above their rooflines


def test_the_step_check_counts_every_dram_port():
    """(d) bounds a step by what the DRAM moves a cycle over all its ports: Stream's fusemax.yaml gives its off-chip
    memory three read-write ports of 3,200 bits (read here from its core file), each preset one port."""
    import stream
    import yaml

    hw_dir = Path(stream.__file__).parent / "inputs" / "examples" / "hardware"
    fusemax = Hardware.from_stream_yaml(hw_dir / "fusemax.yaml")
    top = yaml.safe_load((hw_dir / "fusemax.yaml").read_text())
    offchip = yaml.safe_load((hw_dir / top["cores"][top["offchip_core_id"]]).read_text())
    ports = [p["bandwidth_max"] for m in offchip["memories"].values() for p in m["ports"]]
    assert ports == [3200, 3200, 3200]
    assert (fusemax.dram_bits_all_ports, fusemax.dram_bits_per_cycle) == (9600, 3200)
    for name, p in PRESETS.items():
        assert Hardware.from_platform(p).dram_bits_all_ports == p.dram_bits_per_cycle, name
