"""Minimal reproducer: Stream 2.1.1 fusion costs a node at a fraction of its work when two MatMuls of one fused group
read the same graph input and the group tiles the dim they reduce over.

Needs only stream-dse 2.1.1 (onnx and pyyaml come with it):  python stream_fusion_truncation.py [--k 2048 --n 128]

Graph: a = x @ W_a, b = x @ W_b (x: [1, 1, K], W: [K, N], bf16), out = a @ reshape(b, [N, 1]) (one graph output, as
Stream requires; the reshape leaves b's batch axes unlinked to a's, as a head split does in attention). Hardware: one
32x32 MAC core with a 64 KiB SRAM and a DRAM at 256 bit/cycle, so the generic mapper fuses the graph into one group
and tiles K. Both weights must cross the DRAM port: 2 K N x 16 bit / 256 bit/cycle is a hard floor on the cycles.
Run twice: x shared by a and b, then each MatMul with its own copy of x (same shape). Printed per run: cycles against
the floor, and per node the fraction of its iteration space Stream costs (steady-state tile x the temporal
iterations that vary for the node, over the node's full loop nest); anything but 1 is a wrong number.
"""

import argparse
import logging
import tempfile
import time
from math import prod
from pathlib import Path

import numpy as np
import onnx
import stream.api
import yaml
from onnx import TensorProto, helper, numpy_helper
from stream.api import SolveOptions, evaluate_mapping
from stream.stages.allocation.steady_state_lowering import SteadyStateLoweringStage
from stream.stages.stage import Stage
from stream.workload.steady_state.iteration_space import LoopEffect

BF16 = TensorProto.BFLOAT16
DRAM_BITS_PER_CYCLE = 256


def build_graph(path: Path, k: int, n: int, per_reader: bool) -> Path:
    """The two-reader graph; per_reader gives `a` and `b` their own copy of `x`. Weights are data-less."""
    x_a, x_b = ("x__for_a", "x__for_b") if per_reader else ("x", "x")
    inputs = [helper.make_tensor_value_info(name, BF16, [1, 1, k]) for name in dict.fromkeys((x_a, x_b))]
    weights = [TensorProto(name=w, data_type=BF16, dims=[k, n]) for w in ("W_a", "W_b")]
    column = numpy_helper.from_array(np.array([n, 1], dtype=np.int64), "b_col_shape")
    nodes = [
        helper.make_node("MatMul", [x_a, "W_a"], ["a_o"], name="a"),
        helper.make_node("MatMul", [x_b, "W_b"], ["b_o"], name="b"),
        helper.make_node("Reshape", ["b_o", "b_col_shape"], ["b_col_o"], name="b_col"),
        helper.make_node("MatMul", ["a_o", "b_col_o"], ["out_o"], name="out"),
    ]
    output = helper.make_tensor_value_info("out_o", BF16, [1, 1, 1])
    graph = helper.make_graph(nodes, "two_readers", inputs, [output], initializer=[*weights, column])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.save(model, path)
    return path


def memory(name: str, size_bits: int, bandwidth: int) -> dict:
    ops = ["I1", "I2", "O"]
    ports = [
        {"name": "r_port_1", "type": "read", "bandwidth_min": 64, "bandwidth_max": bandwidth,
         "allocation": ["I1, tl", "I2, tl", "O, tl", "O, th"]},
        {"name": "w_port_1", "type": "write", "bandwidth_min": 64, "bandwidth_max": bandwidth,
         "allocation": ["I1, fh", "I2, fh", "O, fh", "O, fl"]},
    ]  # fmt: skip
    return {name: {"size": size_bits, "r_cost": 1.0, "w_cost": 1.0, "area": 0, "latency": 1, "operands": ops,
                   "ports": ports, "served_dimensions": ["D1", "D2"]}}  # fmt: skip


def write_hardware(path: Path, sram_kib: int) -> Path:
    """One 32x32 MAC core with `sram_kib` of SRAM, linked to DRAM at 256 bit/cycle."""
    mxu = {"name": "mxu", "type": "zigzag.compute", "memories": memory("sram", sram_kib * 8192, 2048),
           "operational_array": {"unit_energy": 1, "unit_area": 1, "dimensions": ["D1", "D2"], "sizes": [32, 32]},
           "operand_precision": {"input": "bf16", "accumulator": "fp32"}, "operator_types": ["MatMul"]}  # fmt: skip
    dram = {
        "name": "dram",
        "type": "zigzag.offchip",
        "memories": memory("dram", 2**45, DRAM_BITS_PER_CYCLE),
        "operational_array": {"unit_energy": 0, "unit_area": 0, "dimensions": ["D1", "D2"], "sizes": [0, 0]},
    }
    hw = {"name": "one-mxu", "offchip_core_id": 1, "unit_energy_cost": 0, "cores": {0: mxu, 1: dram},
          "core_connectivity": [{"type": "link", "cores": [0, 1], "bandwidth": DRAM_BITS_PER_CYCLE,
                                 "unit_energy_cost": 0}]}  # fmt: skip
    path.write_text(yaml.safe_dump(hw, sort_keys=False))
    return path


class CoverageStage(Stage):
    """After the lowering of each fused group: per computation node, (steady-state tile x temporal iterations that
    VARY for it) / its full iteration space in the untiled group, and the temporal loops as the node sees them."""

    reads = ("allocation_problem", "sub_workloads", "group_index")
    optional_reads = ("coverage",)
    writes = ("coverage",)

    def run(self):
        problem = self.ctx.get("allocation_problem")
        untiled = self.ctx.get("sub_workloads")[self.ctx.get("group_index")]
        full = {n.name: prod(untiled.get_dimension_size(d) for d in untiled.get_dims(n))
                for n in untiled.get_computation_nodes()}  # fmt: skip
        lowered, rows = problem.workload, []
        for node in lowered.get_computation_nodes():
            dims = {str(d): lowered.get_dimension_size(d) for d in lowered.get_dims(node)}
            temporal = problem.ssis[node].get_temporal_variables()
            varying = prod(v.size for v in temporal if v.effect == LoopEffect.VARYING)
            loops = " ".join(f"{v.dimension}x{v.size}:{v.effect.name}" for v in temporal)
            rows.append((node.name, prod(dims.values()) * varying / full[node.name], dims, loops))
        transfers = [n.name for n in lowered.get_transfer_nodes() if n.name.startswith("Transfer(x")]
        self.ctx.set(coverage=[*(self.ctx.get("coverage") or []), (transfers, rows)])
        yield from self.list_of_callables[0](self.list_of_callables[1:], self.ctx).run()


def evaluate(hw: Path, graph: Path, out: Path):
    """Stream's generic mapper (default fusion), with CoverageStage right after the steady-state lowering."""
    stages = stream.api._ALLOCATION_STAGES
    stages.insert(stages.index(SteadyStateLoweringStage) + 1, CoverageStage)
    try:
        return evaluate_mapping(str(hw), str(graph), str(out), options=SolveOptions(artifacts=False))
    finally:
        stages.remove(CoverageStage)


def report(label: str, est, floor: float, wall: float) -> None:
    print(f"{label}: {est.cycles:,.0f} cycles = {est.cycles / floor:.3f} x the weight floor ({wall:.1f} s)")
    for transfers, rows in est.context.get("coverage"):  # one entry per fused group
        print(f"  fusion splits {splits(est)}; transfers of x: {', '.join(transfers)}")
        for name, coverage, dims, loops in rows:
            print(f"    {name:4s} coverage {coverage:<8.4g} tile {dims}  temporal loops {loops}")


def splits(est) -> str:
    return ", ".join(f"{s['dim']}x{s['factor']}" for g in est.context.get("group_allocations").values()
                     for s in g["tiling"]["fusion_splits"])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=2048, help="reduction dim (x is [1, 1, K])")
    ap.add_argument("--n", type=int, default=128, help="output dim of each MatMul")
    ap.add_argument("--sram-kib", type=int, default=64, help="SRAM of the MAC core")
    a = ap.parse_args()
    logging.disable(logging.WARNING)  # ZigZag's per-layer log
    work = Path(tempfile.mkdtemp(prefix="stream-truncation-"))
    hw = write_hardware(work / "hw.yaml", a.sram_kib)
    floor = 2 * a.k * a.n * 16 / DRAM_BITS_PER_CYCLE
    print(f"stream-dse {__import__('importlib.metadata').metadata.version('stream-dse')}; K={a.k} N={a.n}; "
          f"weight floor {floor:,.0f} cycles (2 x K x N x 16 bit over {DRAM_BITS_PER_CYCLE} bit/cycle)")  # fmt: skip
    for label, per_reader in (("x shared by a and b", False), ("x given once per reader", True)):
        graph = build_graph(work / f"{'per_reader' if per_reader else 'shared'}.onnx", a.k, a.n, per_reader)
        start = time.perf_counter()
        est = evaluate(hw, graph, work / graph.stem)
        report(label, est, floor, time.perf_counter() - start)


if __name__ == "__main__":
    main()
