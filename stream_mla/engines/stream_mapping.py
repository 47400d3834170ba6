"""A fixed Stream mapping for one workload on one accelerator: the last fallback when the generic mapper cannot
place the tensors (engines.md §4, §6 fix 4).

One fused group per layer, in dataflow order. A layer runs on every core that executes its operator (MatMuls on the
matrix cores, split across them along their largest output dim that divides, else the largest dim that does; vector
ops and the Softmax on the vector cores),
and its intra-core tile is halved, each time along the dim that shrinks the tile's operands most, until they fit
in half of the core's largest memory (the other half double-buffers). A Softmax's reduction axis is never tiled.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from stream.frontends import load_workload
from stream.workload.node import HasIterationSpace, NormalizationNode
from xdsl.ir.affine import AffineDimExpr

MATRIX_OPS = ("MatMul", "Gemm", "Einsum", "Conv")


class MappingError(ValueError):
    """The layer cannot be tiled to fit the core's memory."""


@dataclass(frozen=True)
class Core:
    id: int
    ops: tuple[str, ...] | None  # None: the core lists no operator types (executes anything)
    memory_bytes: int

    def runs(self, op: str) -> bool:
        return self.ops is None or op in self.ops


def compute_cores(stream_hw: dict) -> list[Core]:
    cores = []
    for cid, c in stream_hw["cores"].items():
        if int(cid) == stream_hw.get("offchip_core_id") or "offchip" in str(c.get("type", "")):
            continue
        ops = c.get("operator_types")
        sizes = [m.get("size", 0) for m in c.get("memories", {}).values()]
        cores.append(Core(int(cid), tuple(ops) if ops else None, max(sizes, default=0) // 8))  # sizes are bits
    return cores


def cores_for(op: str, cores: list[Core]) -> list[Core]:
    """Cores that list the op; failing that, cores that list no operator types."""
    listed = [c for c in cores if c.ops is not None and op in c.ops]
    return listed or [c for c in cores if c.ops is None]


def dim_sizes(node: HasIterationSpace) -> dict[int, int]:
    sizes = dict.fromkeys(range(node.num_dims), 1)
    for tensor, amap in zip(node.tensors, node.operand_mapping, strict=True):
        for axis, expr in enumerate(amap.results):
            if isinstance(expr, AffineDimExpr):
                sizes[expr.position] = max(sizes[expr.position], tensor.shape[axis])
    return sizes


def footprint(node: HasIterationSpace, tile: dict[int, int], bytes_per_element: int) -> int:
    """Bytes of one tile of every operand (inputs and output)."""
    dims = [[e.position for e in amap.results if isinstance(e, AffineDimExpr)] for amap in node.operand_mapping]
    return sum(math.prod(tile[d] for d in operand) for operand in dims) * bytes_per_element


def _halve(n: int) -> int:
    """The largest proper divisor of n (n // its smallest prime factor)."""
    return n // next(p for p in range(2, n + 1) if n % p == 0)


def layer_mapping(node: HasIterationSpace, cores: list[Core], bytes_per_element: int) -> tuple[dict, list[dict]]:
    """(the layer entry, its group's intra-core tiles)."""
    op = node.type
    on = cores_for(op, cores)
    if not on:
        raise MappingError(f"layer {node.name}: no core executes {op}")
    sizes = dim_sizes(node)
    out_dims = [e.position for e in node.operand_mapping[-1].results if isinstance(e, AffineDimExpr)]
    reduced = set(node.reduction_axes) if isinstance(node, NormalizationNode) else set()
    parallel = [d for d in out_dims if d not in reduced]
    layer = {"name": node.name, "core_allocation": [[c.id for c in on]]}
    tile = dict(sizes)
    if len(on) > 1:
        # an output dim if one divides; else the largest dim that does (e.g. the columns a fused row-sum reduces)
        divisible = [d for d in sizes if d not in reduced and sizes[d] % len(on) == 0]
        split_dim = max(divisible, key=lambda d: (d in parallel, sizes[d]), default=None)
        if split_dim is None:
            raise MappingError(f"layer {node.name}: no dim of its {sizes} divides over {len(on)} cores")
        layer["inter_core_tiling"] = [[{"dim": f"D{split_dim}", "split": len(on)}]]
        tile[split_dim] //= len(on)
    per_core = dict(tile)  # tile is per core: tile x split divides the dim
    budget = min(c.memory_bytes for c in on) // 2
    while (need := footprint(node, tile, bytes_per_element)) > budget:
        candidates = [d for d in sizes if d not in reduced and tile[d] > 1]
        if not candidates:
            raise MappingError(f"layer {node.name}: its smallest tile needs {need} B, the memory holds {budget * 2} B")

        def gain(d: int) -> tuple:  # bytes saved by halving d; then parallel dims (no partial sums), larger tiles
            return need - footprint(node, {**tile, d: _halve(tile[d])}, bytes_per_element), d in parallel, tile[d]

        d = max(candidates, key=gain)
        tile[d] = _halve(tile[d])
    tiles = [{"dim": f"{node.name}.D{d}", "tile": t} for d, t in sorted(tile.items()) if t != per_core[d]]
    return layer, tiles


def fixed_mapping(onnx_path: str | Path, stream_hw: dict, bytes_per_element: int) -> dict:
    """The mapping YAML document: one group per layer, in Stream's dataflow order."""
    wl = load_workload(str(onnx_path))
    cores = compute_cores(stream_hw)
    layers, groups = [], []
    for node in wl.dataflow_sort():
        if not isinstance(node, HasIterationSpace):
            continue
        layer, tiles = layer_mapping(node, cores, bytes_per_element)
        layers.append(layer)
        groups.append({"name": node.name, "layers": [node.name], "intra_core_tiling": tiles})
    return {"layers": layers, "fused_groups": groups}


def write_fixed_mapping(onnx_path: str | Path, stream_hw: dict, bytes_per_element: int, path: Path) -> Path:
    path.write_text(yaml.safe_dump(fixed_mapping(onnx_path, stream_hw, bytes_per_element), sort_keys=False))
    return path
