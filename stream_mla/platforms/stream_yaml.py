"""PlatformSpec -> one-file Stream hardware YAML (engines.md §3): cores 0..n-1 matrix, n vector, n+1 DRAM.

Every memory cost is per access of `bandwidth_max` bits (engines.md trap 5): r_cost = pJ/bit × bandwidth_max.
"""

import itertools
from pathlib import Path
from typing import Any

import yaml

from stream_mla.platforms.spec import STREAM_ELEMENT, PlatformSpec

# Port allocations: what a level receives (fill) and sends (drain); built fresh per call so the YAML has no anchors.
FILL = ("I1, fh", "I2, fh", "O, fh", "O, fl")
DRAIN = ("I1, tl", "I2, tl", "O, tl", "O, th")
ALL3 = ("I1", "I2", "O")
DRAM_BITS = 1 << 45  # 4 TiB: DRAM capacity never binds
MATRIX_OPS = ("MatMul", "Gemm", "Einsum", "Conv")
VECTOR_OPS = (
    "Add", "Sub", "Mul", "Div", "Pow", "Exp", "Sqrt", "Reciprocal", "Neg", "Abs", "Max", "Min",
    "Relu", "Sigmoid", "Silu", "Gelu", "Tanh", "Cast",
    "Softmax", "ReduceMax", "ReduceSum", "ReduceMean",
    "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
)  # fmt: skip


def _cost(pj_per_bit: float, bits: int) -> float:
    return round(pj_per_bit * bits, 6)  # round away float noise so the YAML is stable and readable


def memory(
    bits: int, pj_per_bit: float, bw: int, operands: tuple[str, ...], ports: list[tuple[str, str, tuple[str, ...]]],
    served: tuple[str, ...],
) -> dict[str, Any]:  # fmt: skip
    """One ZigZag memory level; ports are (name, type, allocation)."""
    return {
        "size": bits,
        "r_cost": _cost(pj_per_bit, bw),
        "w_cost": _cost(pj_per_bit, bw),
        "area": 0,
        "latency": 1,
        "operands": list(operands),
        "ports": [
            {"name": n, "type": t, "bandwidth_min": min(bw, 64), "bandwidth_max": bw, "allocation": list(a)}
            for n, t, a in ports
        ],
        "served_dimensions": list(served),
    }


def matrix_memories(p: PlatformSpec) -> dict[str, dict[str, Any]]:
    """Per-PE weight and partial-sum registers, then the core's SRAM holding all three operands (lowest first)."""
    w, acc = p.element_bits, 32
    return {
        "rf_w": memory(
            p.rf_weight_words * w, p.rf_pj_per_bit, w, ("I2",),
            [("r_port_1", "read", ("I2, tl",)), ("w_port_1", "write", ("I2, fh",))], (),
        ),
        "rf_o": memory(
            p.rf_output_words * acc, p.rf_pj_per_bit, acc, ("O",),
            [("r_port_1", "read", ("O, tl",)), ("r_port_2", "read", ("O, th",)),
             ("w_port_1", "write", ("O, fh",)), ("w_port_2", "write", ("O, fl",))], (),
        ),
        "sram": memory(
            p.sram_bytes * 8, p.sram_pj_per_bit, p.sram_bits_per_cycle, ALL3,
            [("r_port_1", "read", DRAIN), ("w_port_1", "write", FILL)], ("D1", "D2"),
        ),
    }  # fmt: skip


def matrix_array(p: PlatformSpec) -> dict[str, Any]:
    return {
        "unit_energy": p.mac_pj,
        "unit_area": 1,
        "dimensions": ["D1", "D2"],
        "sizes": [p.rows, p.cols],
        "systolic_dimensions": ["D1", "D2"],  # adds the array's fill/drain cycles
    }


def dram_memory(p: PlatformSpec) -> dict[str, Any]:
    """The off-chip level; its r_cost/bandwidth_max sets DRAM energy in both engines (engines.md §8)."""
    bw = p.dram_bits_per_cycle
    return memory(DRAM_BITS, p.dram_pj_per_bit, bw, ALL3, [("rw_port_1", "read_write", FILL + DRAIN)], ("D1", "D2"))


def _matrix_core(p: PlatformSpec) -> dict[str, Any]:
    return {
        "name": f"{p.name}_mxu",
        "type": "zigzag.compute",
        "memories": matrix_memories(p),
        "operational_array": matrix_array(p),
        "operand_precision": {"input": STREAM_ELEMENT[p.precision], "accumulator": p.accumulator},
        "operator_types": list(MATRIX_OPS),
    }


def _vector_core(p: PlatformSpec) -> dict[str, Any]:
    """Softmax pieces and elementwise ops run here, in fp32, out of the vector SRAM. Like a SIMD register file it has
    a read port per input operand and a write port: ZigZag serialises the operands sharing a port whatever its width,
    so with one read port for both a binary op or a reduction (its input and its partial sum) ran at half the lanes'
    rate (tests/test_calibration.py)."""
    bw = max(512, 32 * p.vector_lanes)  # one fp32 word per lane per cycle on each port
    first = ("I1, tl",)  # the first operand's reads; the second operand's and the partial sums' on the other port
    ports = [("w_port_1", "write", FILL), ("r_port_1", "read", first),
             ("r_port_2", "read", tuple(a for a in DRAIN if a not in first))]  # fmt: skip
    return {
        "name": f"{p.name}_vpu",
        "type": "zigzag.compute",
        "memories": {"vsram": memory(p.vector_sram_bytes * 8, p.sram_pj_per_bit, bw, ALL3, ports, ("D1",))},
        "operational_array": {
            "unit_energy": p.vector_pj_per_op,
            "unit_area": 0.01,
            "dimensions": ["D1"],
            "sizes": [p.vector_lanes],
        },
        "operand_precision": {"input": "fp32", "accumulator": "fp32"},
        "operator_types": list(VECTOR_OPS),
    }


def _dram_core(p: PlatformSpec) -> dict[str, Any]:
    return {
        "name": f"{p.name}_dram",
        "type": "zigzag.offchip",
        "memories": {"dram": dram_memory(p)},
        "operational_array": {"unit_energy": 0, "unit_area": 0, "dimensions": ["D1", "D2"], "sizes": [0, 0]},
    }


def stream_hardware(p: PlatformSpec) -> dict[str, Any]:
    """One bus to DRAM at DRAM bandwidth, and a link between every two on-chip cores (matrix cores and the vector
    core: a crossbar). Stream keeps one connection per core pair, the last one listed (its core graph is a DiGraph
    built from every pair of every entry): the bus is listed first, so each on-chip pair's link replaces it and only
    traffic to and from DRAM shares the bus. Listed after the links, the bus took every pair and all on-chip traffic
    contended with DRAM at DRAM bandwidth (tests/test_platforms.py reads the parsed graph)."""
    n, bw = p.cores, p.link_bits_per_cycle

    def link(a: int, b: int) -> dict[str, Any]:
        return {"type": "link", "cores": [a, b], "bandwidth": bw, "unit_energy_cost": _cost(p.link_pj_per_bit, bw)}

    # DRAM energy is in the dram r_cost, so the bus itself is free; its bandwidth matches the dram port.
    bus = {"type": "bus", "cores": list(range(n + 2)), "bandwidth": p.dram_bits_per_cycle, "unit_energy_cost": 0}
    on_chip = [link(a, b) for a, b in itertools.combinations(range(n + 1), 2)]
    return {
        "name": p.name,
        "offchip_core_id": n + 1,
        "unit_energy_cost": 0,
        "cores": {**{i: _matrix_core(p) for i in range(n)}, n: _vector_core(p), n + 1: _dram_core(p)},
        "core_coordinates": {**{i: [i, 0] for i in range(n)}, n: [0, 1], n + 1: [0, 2]},
        "core_connectivity": [bus, *on_chip],
    }


class _NoAliasDumper(yaml.SafeDumper):
    """safe_dump without &id001 anchors, even if a list object is shared."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_yaml(data: Any, path: Path, header: str) -> Path:
    """Deterministic YAML: insertion order, no anchors, a comment header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=None, width=120)
    path.write_text("".join(f"# {line}\n" for line in header.splitlines()) + body)
    return path


def write_stream_yaml(p: PlatformSpec, path: Path) -> Path:
    header = (
        f"Stream hardware for platform {p.name} (generated by stream_mla.platforms; do not edit).\n"
        f"cores 0..{p.cores - 1}: {p.rows}x{p.cols} matrix, {p.cores}: vector unit, {p.cores + 1}: DRAM. "
        f"Bandwidths in bits/cycle at {p.clock_ghz} GHz; costs in pJ per bandwidth_max-bit access."
    )
    return write_yaml(stream_hardware(p), path, header)
