"""Minimal reproducer: Stream 2.1.1 keeps one connection per core pair, the last `core_connectivity` entry that joins
it, so a bus listed after links over the same cores silently replaces them: every on-chip transfer then queues on
the bus (in a typical YAML, the DRAM bus at DRAM bandwidth).

Needs only stream-dse 2.1.1:  python stream_bus_replaces_links.py

`AcceleratorFactory.create_core_graph` (stream/parser/accelerator_factory.py) collects one (a, b, {"cl": link})
edge per direction for a link and for every pair of a bus's cores, then builds a networkx DiGraph from the list; a
DiGraph holds one edge per ordered pair and `add_edges_from` overwrites its data, so the last entry wins. Routing
(`CommunicationManager`, shortest paths over that graph) never sees the replaced link.

Hardware: two compute cores joined by a 4,096-bit link, and a 64-bit bus over both and the DRAM core. Prints the
connection Stream holds for the pair (0, 1) with the bus listed last and first, and which of Stream's own example
hardware files lose links this way. Exits 1 when the bus-last case keeps the link (the bug fixed).
A fix in Stream: build a MultiDiGraph and let routing pick among parallel connections, or keep a link over a bus for
its pair (the more specific connection), or refuse a pair joined twice with one line naming both entries.
"""

import sys
import tempfile
from pathlib import Path

import stream
import yaml
from stream.stages.parsing.accelerator_parser import parse_accelerator

LINK_BITS, BUS_BITS = 4096, 64


def memory(bits: int, bw: int) -> dict:
    ports = [{"name": "rw_port_1", "type": "read_write", "bandwidth_min": bw, "bandwidth_max": bw,
              "allocation": ["I1, fh", "I2, fh", "O, fh", "O, fl", "I1, tl", "I2, tl", "O, tl", "O, th"]}]  # fmt: skip
    return {"size": bits, "r_cost": 1.0, "w_cost": 1.0, "area": 0, "latency": 1, "operands": ["I1", "I2", "O"],
            "ports": ports, "served_dimensions": ["D1", "D2"]}  # fmt: skip


def core(name: str, sizes: list[int], kind: str = "zigzag.compute") -> dict:
    return {"name": name, "type": kind, "memories": {"mem": memory(1 << 23 if sizes[0] else 1 << 40, 512)},
            "operational_array": {"unit_energy": 1.0, "unit_area": 1, "dimensions": ["D1", "D2"], "sizes": sizes},
            "operator_types": ["MatMul", "Add"] if sizes[0] else None}  # fmt: skip


def hardware(bus_last: bool) -> dict:
    link = {"type": "link", "cores": [0, 1], "bandwidth": LINK_BITS, "unit_energy_cost": 0}
    bus = {"type": "bus", "cores": [0, 1, 2], "bandwidth": BUS_BITS, "unit_energy_cost": 0}
    cores = {0: core("c0", [8, 8]), 1: core("c1", [8, 8]), 2: core("dram", [0, 0], "zigzag.offchip")}
    cores[2].pop("operator_types")
    return {"name": "two_cores", "offchip_core_id": 2, "unit_energy_cost": 0, "cores": cores,
            "core_coordinates": {0: [0, 0], 1: [1, 0], 2: [0, 1]},
            "core_connectivity": [link, bus] if bus_last else [bus, link]}  # fmt: skip


def held(path: Path) -> str:
    graph = parse_accelerator(str(path)).cores
    c0, c1 = (c for c in graph.node_list if c.id in (0, 1))
    link = graph.edges[c0, c1]["cl"]
    return f"{'bus' if link.members else 'link'} of {link.bandwidth} bits/cycle"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for bus_last in (True, False):
            path = Path(tmp) / f"bus_{'last' if bus_last else 'first'}.yaml"
            path.write_text(yaml.safe_dump(hardware(bus_last), sort_keys=False))
            results[bus_last] = held(path)
            print(f"bus listed {'last ' if bus_last else 'first'}: pair (0, 1) is joined by a {results[bus_last]}")
    examples = Path(stream.__file__).parent / "inputs" / "examples" / "hardware"
    for path in sorted(examples.glob("*.yaml")):
        entries = (yaml.safe_load(path.read_text()) or {}).get("core_connectivity") or []
        last = {}
        for i, entry in enumerate(entries):
            cores = entry["cores"]
            for pair in ((a, b) for n, a in enumerate(cores) for b in cores[n + 1 :]):
                last[frozenset(pair)] = i
        lost = [i for i, entry in enumerate(entries) if entry.get("type", "link") == "link"
                and last[frozenset(entry["cores"])] != i]  # fmt: skip
        if lost:
            print(f"{path.name}: {len(lost)} of {len(entries)} connections replaced by a later bus")
    return 1 if results[True].startswith("link") else 0


if __name__ == "__main__":
    sys.exit(main())
