"""Run Stream 2.1.1 on one graph and one accelerator, and read every number off all fused groups.

Strategies, tried in order until one is feasible (engines.md §6): cuts after every layer that keep a Softmax's
pieces together (default-fusion cycles at per-layer speed), then plain per-layer cuts (every Softmax piece
round-trips DRAM, pessimistic), then a fixed mapping that tiles each layer to fit its cores' memory
(`stream_mapping.py`; it costs a Softmax as one node). The strategy that gave the result is recorded with it:
points from different strategies are not comparable to within a few percent (trap 8). `default-fusion` (Stream's own
whole-graph fusion) is not in that order (10-130 s a point); `evaluate_stream` runs it when asked by name.

Stream is given the graph with every reader of a shared input reading its own copy (`graph_fix`: Stream 2.1.1's
fusion otherwise costs a slice of a node, trap 16); the analytic counts read the graph as given. Every run is
checked by `stream_guard` (coverage 1 for every node, DRAM and latency at or above the analytic floors): a strategy
whose result fails is recorded in the warnings and the next one tried, and `EngineBelowPhysics` is raised when none
is left, so a number below physics is never returned.

Energy (trap 1, 5, 7): Stream reports per group the in-core ZigZag energy and the transfer energy. In-core
energy is split into MAC and on-chip memory with the per-iteration ZigZag cost entries Stream saves for the
cores each node ran on; DRAM energy is the off-chip bits moved times the DRAM pJ/bit, and the rest of the
transfer energy (link hops, the on-chip end of each DMA) is `onchip_transfer`.
"""

import logging
import pickle
import time
from importlib.metadata import version
from pathlib import Path

import onnx
from stream.api import SolveOptions, evaluate_mapping
from stream.frontends import load_workload
from stream.ir.infeasibility import InfeasibleAllocationError
from stream.workload.node import HasIterationSpace
from stream.workload.normalization import expand_normalizations

from stream_mla.engines.graph_fix import COPY_TAG, shared_inputs, split_shared_inputs
from stream_mla.engines.hardware import Hardware
from stream_mla.engines.result import STREAM_STRATEGIES, EngineError, NodeResult, Result
from stream_mla.engines.stream_guard import BELOW_PHYSICS, EngineBelowPhysics, coverage_of, coverage_probe, violations
from stream_mla.engines.stream_mapping import MappingError, write_fixed_mapping
from stream_mla.workloads.counts import count_file, roofline

SOFTMAX_PARTS = ("_max", "_exp", "_sum", "_div")
DEFAULT_FUSION = "default-fusion"  # Stream's generic mapper with no cut points


class InfeasibleError(EngineError):
    """No strategy fits the workload on the accelerator; the message names platform, layers and memory."""


def keep_softmax_cuts(onnx_path: Path) -> list[str]:
    """A cut after every node except inside a Softmax (its max/exp/sum/div stay in one group)."""
    wl = expand_normalizations(load_workload(str(onnx_path)))
    names = [n.name for n in wl.dataflow_sort() if isinstance(n, HasIterationSpace)]
    return [n for n in names[:-1] if not n.endswith(SOFTMAX_PARTS[:3])]


def layer_name(stream_node: str) -> str:
    """Stream's Softmax pieces (`probs_max`, ...) belong to the ONNX Softmax node (`probs`), and a view cloned per
    reader (`x_view__for_a`) to the view it copies."""
    stream_node = stream_node.split(COPY_TAG)[0]
    for part in SOFTMAX_PARTS:
        if stream_node.endswith(part):
            return stream_node.removesuffix(part)
    return stream_node


def run_strategy(hw: Hardware, hw_yaml: Path, onnx_path: Path, out: Path, strategy: str, bytes_per_element: int):
    """One Stream run of `onnx_path` (the graph Stream is given, see `stream_graph`)."""
    if strategy == "fixed-mapping":
        out.mkdir(parents=True, exist_ok=True)
        mapping = write_fixed_mapping(onnx_path, hw.stream, bytes_per_element, out / "fixed-mapping.yaml")
        return evaluate_mapping(str(hw_yaml), str(onnx_path), str(out), mapping=str(mapping),
                                options=SolveOptions(artifacts=False))  # fmt: skip
    if strategy == DEFAULT_FUSION:
        return evaluate_mapping(str(hw_yaml), str(onnx_path), str(out), options=SolveOptions(artifacts=False))
    cuts = keep_softmax_cuts(onnx_path) if strategy == "keep-softmax" else "per-layer"
    options = SolveOptions(artifacts=False, stage_options={"fusion_cut_points": cuts})
    return evaluate_mapping(str(hw_yaml), str(onnx_path), str(out), options=options)


def allocated_cores(group: dict, node: str) -> set[int]:
    """Core ids a node ran on (resource_allocation is a list of lists of resources)."""
    alloc = group.get("mapping_nodes", {}).get(node, {}).get("resource_allocation", [])
    return {r["id"] for option in alloc for r in option if r.get("type") == "core"}


def in_core_split(out: Path, index: int, group: dict) -> tuple[float, float]:
    """(mac, memory) pJ per iteration from the ZigZag entries of the cores each node was allocated to."""
    lut_path = out / f"group_{index}" / "core_cost_lut.pickle"
    lut = pickle.loads(lut_path.read_bytes())["lut"] if lut_path.exists() else {}
    mac = total = 0.0
    for node, per_core in lut.items():
        cores = allocated_cores(group, node.name)
        for core, cme in per_core.items():
            if core.id in cores:
                memory = sum(sum(levels) for levels in cme.mem_energy_breakdown.values())
                mac, total = mac + cme.energy_total - memory, total + cme.energy_total
    return mac, total


def stream_graph(onnx_path: Path, workdir: Path) -> Path:
    """The graph Stream is given: `onnx_path` itself, or a copy where each reader of a shared input has its own."""
    model = onnx.load(str(onnx_path))
    if not shared_inputs(model):
        return onnx_path
    path = workdir / f"{onnx_path.stem}.stream.onnx"
    onnx.save(split_shared_inputs(model), str(path))
    return path


def evaluate_stream(
    onnx_path: Path, hw: Hardware, workdir: Path, strategies=STREAM_STRATEGIES, split_inputs: bool = True
) -> Result:
    """The first strategy whose run fits and passes the guard. split_inputs=False hands Stream the graph as given,
    to measure Stream's own behaviour (the guard still runs)."""
    onnx_path, workdir = Path(onnx_path), Path(workdir)
    counts = count_file(onnx_path)  # the analytic side reads the graph as given
    graph = stream_graph(onnx_path, workdir) if split_inputs else onnx_path
    hw_yaml = hw.stream_yaml(workdir)
    start = time.perf_counter()
    failures, below = [], None
    logging.disable(logging.WARNING)  # ZigZag floods the log; degenerate nodes are checked in collect instead
    try:
        for strategy in strategies:
            out = workdir / f"stream-{strategy}"
            try:
                with coverage_probe():
                    est = run_strategy(hw, hw_yaml, graph, out, strategy, counts["bytes_per_element"])
            except InfeasibleAllocationError as exc:
                failures.append(describe_infeasible(hw, strategy, exc))
                continue
            except MappingError as exc:
                failures.append(f"{strategy}: {exc}")
                continue
            wall = time.perf_counter() - start
            result = collect(est, out, hw, onnx_path, counts, strategy, wall, failures)
            found = violations(result, coverage_of(est))
            if not found:
                return result
            failures.append(f"{strategy}: {'; '.join(found)}")  # like a strategy that does not fit: try the next
            below = (result, tuple(found))
    finally:
        logging.disable(logging.NOTSET)
    if below is not None:
        raise EngineBelowPhysics(below_message(hw, onnx_path, failures), *below)
    raise InfeasibleError(infeasible_message(hw, onnx_path, failures))


def below_message(hw: Hardware, onnx_path: Path, failures: list[str]) -> str:
    return (f"platform {hw.name}: {onnx_path.stem}: every strategy is {BELOW_PHYSICS} or does not fit "
            f"({'; '.join(failures)}): a Stream costing error, see docs/stream-fusion-truncation.md")  # fmt: skip


def failing_layers(exc: BaseException) -> list[str]:
    """Stream's error names a core, not the layers: read them off the decision space being solved."""
    tb, names = exc.__traceback__, []
    while tb is not None:
        frame_locals = tb.tb_frame.f_locals
        space = frame_locals.get("space") or getattr(frame_locals.get("self"), "space", None)
        if hasattr(space, "ssc_nodes"):
            names = [layer_name(n.name) for n in space.ssc_nodes]
        tb = tb.tb_next
    return list(dict.fromkeys(names))


def describe_infeasible(hw: Hardware, strategy: str, exc: InfeasibleAllocationError) -> str:
    summary = str(exc).split(" The auto-generated mapping")[0].removeprefix("Infeasible mapping: ")
    for core_id, core in hw.stream.get("cores", {}).items():  # "Core 0" -> "Core 0 (edge-npu_mxu)"
        summary = summary.replace(f"Core {core_id}:", f"Core {core_id} ({core.get('name', '?')}):")
    layers = failing_layers(exc)
    return f"{strategy}: layer {'+'.join(layers) if layers else '?'}: {summary}"


def infeasible_message(hw: Hardware, onnx_path: Path, failures: list[str]) -> str:
    return (f"platform {hw.name}: {onnx_path.stem} does not fit under any strategy ({'; '.join(failures)}); "
            "give the platform more on-chip memory, or shorten the context")  # fmt: skip


def collect(est, out: Path, hw: Hardware, onnx_path: Path, counts: dict, strategy: str, wall: float,
            failures: list[str]) -> Result:  # fmt: skip
    groups = est.context.get("group_allocations")
    accesses = est.context.get("group_memory_accesses")
    node_macs = {n["name"]: n["macs"] for n in counts["nodes"]}
    node_ops = {n["name"]: n["op"] for n in counts["nodes"]}
    energy = {"mac": 0.0, "onchip_memory": 0.0, "dram": 0.0, "onchip_transfer": 0.0}
    warnings = [f"strategy {f}" for f in failures]  # a copy: the caller's list grows with later strategies
    rows, dram_bits, stream_macs = [], 0.0, 0
    for index, group in groups.items():
        perf = group["performance"]
        e = perf["energy"]
        iterations = e["total_pj"] / e["per_iteration_pj"] if e["per_iteration_pj"] else 0.0
        mac_iter, core_iter = in_core_split(out, index, group)
        in_core = e["node_pj_per_iteration"] * iterations
        mac = in_core * (mac_iter / core_iter) if core_iter else 0.0
        bits = sum((c["read"] + c["write"]) * c["read_bandwidth"] for c in accesses[index]["cores"] if c["is_offchip"])
        dram_pj = bits * hw.dram_pj_per_bit
        transfer = e["transfer_pj_per_iteration"] * iterations
        energy["mac"] += mac
        energy["onchip_memory"] += in_core - mac
        energy["dram"] += dram_pj
        energy["onchip_transfer"] += transfer - dram_pj
        dram_bits += bits
        degenerate = perf["aggregate"]["degenerate_nodes"]
        if degenerate:
            warnings.append(f"Stream priced {degenerate} at ideal cycles and zero energy (ZigZag could not cost them)")
        names = sorted({layer_name(n) for n in perf["nodes"]}, key=list(node_macs).index)
        macs = sum(node_macs.get(n, 0) for n in names)
        stream_macs += macs
        bottleneck = perf["bottleneck"]
        cores = sorted(set().union(*(allocated_cores(group, n) for n in perf["nodes"])))
        rows.append(NodeResult(name="+".join(names), op="+".join(dict.fromkeys(node_ops.get(n, "?") for n in names)),
                               macs=macs, cycles=float(group["latency"]["total"]),
                               bound="compute" if bottleneck["compute_bound_pct"] >= 50 else "transfer",
                               energy_pj=e["total_pj"], core=",".join(map(str, cores)),
                               dram_bytes=bits / 8))  # fmt: skip
    if stream_macs != counts["macs"]:
        warnings.append(f"Stream's groups cover {stream_macs} MACs, the graph has {counts['macs']}")
    if energy["onchip_transfer"] < -1e-6 * max(1.0, energy["dram"]):
        warnings.append(f"DRAM energy {energy['dram']:.4g} pJ exceeds Stream's transfer energy: check dram pJ/bit")
    energy["static"] = hw.static_energy_pj(est.cycles)
    bound = roofline(counts, hw.peak_mac_per_s, hw.dram_bytes_per_s)
    return Result(engine="stream", engine_version=f"stream-dse {version('stream-dse')}", platform=hw.name,
                  workload=onnx_path.stem, clock_ghz=hw.clock_ghz, latency_cycles=float(est.cycles),
                  energy_breakdown_pj=energy, macs=counts["macs"], dram_bytes=counts["bytes"]["total"],
                  engine_dram_bytes=dram_bits / 8, roofline_bound_s=bound.bound_s, bound=bound.bound,
                  strategy=strategy, engine_wall_s=wall, nodes=rows, warnings=warnings)  # fmt: skip
