"""Fixed Stream mappings for one workload on one accelerator (engines.md §4, §6 fix 4, §16.2): the per-layer fixed
mapping (the fallback when the generic mapper cannot place the tensors) and the fused-attention mapping built on it
(`fused_attention_mapping`, at the end of this module).

One fused group per layer, in dataflow order. A layer runs on every core that executes its operator (MatMuls on the
matrix cores, split across them along their largest output dim that divides, else the largest dim that does; vector
ops and the Softmax on the vector cores),
and its intra-core tile is halved, each time along the dim that shrinks the tile's operands most, until they fit
in half of the core's largest memory (the other half double-buffers). A Softmax's reduction axis is never tiled.
"""

import functools
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import onnx
import yaml
from stream.frontends import load_workload
from stream.parser.onnx.elementwise import ElementwiseParser
from stream.parser.onnx.model import onnx_parser_for, register_onnx_parser
from stream.workload.node import HasIterationSpace, NormalizationNode
from xdsl.ir.affine import AffineDimExpr

from stream_mla.engines.graph_fix import COPY_TAG, UNIT_TAG
from stream_mla.workloads.steps import MappingError, attention_core, cache_inputs, weight_products

MATRIX_OPS = ("MatMul", "Gemm", "Einsum", "Conv")
# Temporal tiles a matrix layer's group runs in at least (layer_mapping): Stream overlaps a group's DRAM transfers
# with its compute only from one iteration to the next, so a group of one tile pays its whole load before its compute
# (V3 absorb B = 32 L = 4k on tpu-v5e-like: q_absorb and v_up 1.26x and 1.16x their own roofline in one tile, 1.01x
# in 16); a tile is 1/16 of what the layer moves, the part of its load no compute hides.
PIPELINE_TILES = 16
# Elementwise ops our graphs use that Stream 2.1.1 ships no parser for (engines.md §5.5): the split-KV graphs' Exp
EXTRA_ELEMENTWISE = ("Exp",)


def register_parsers() -> None:
    """Give Stream a parser for each of EXTRA_ELEMENTWISE (once per process; a parser already there is kept)."""
    for op in EXTRA_ELEMENTWISE:
        if onnx_parser_for(op) is None:
            register_onnx_parser(op, ElementwiseParser)


register_parsers()  # every Stream call of this package imports this module first


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


def operand_positions(node: HasIterationSpace) -> list[list[int]]:
    """Per operand (inputs, then the output), the positions of the dims that index it."""
    return [[e.position for e in amap.results if isinstance(e, AffineDimExpr)] for amap in node.operand_mapping]


def footprint(node: HasIterationSpace, tile: dict[int, int], bytes_per_element: int) -> int:
    """Bytes of one tile of every operand (inputs and output)."""
    return sum(math.prod(tile[d] for d in operand) for operand in operand_positions(node)) * bytes_per_element


def _halve(n: int) -> int:
    """The largest proper divisor of n (n // its smallest prime factor)."""
    return n // next(p for p in range(2, n + 1) if n % p == 0)


def layer_mapping(node: HasIterationSpace, cores: list[Core], bytes_per_element: int,
                  smallest: bool = False) -> tuple[dict, list[dict]]:  # fmt: skip
    """(the layer entry, its group's intra-core tiles): tiles that fit half the memory of the cores the layer runs on
    (smallest: of the smallest compute core, see `fixed_mapping`)."""
    op = node.type
    on = cores_for(op, cores)
    if not on:
        raise MappingError(f"layer {node.name}: no core executes {op}")
    sizes = dim_sizes(node)
    *inputs, out_dims = operand_positions(node)
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
    budget = min(c.memory_bytes for c in (cores if smallest else on)) // 2

    def halve_best(candidates: list[int]) -> None:  # most bytes saved; then parallel dims (no partial sums), larger
        need = footprint(node, tile, bytes_per_element)
        d = max(candidates, key=lambda d: (need - footprint(node, {**tile, d: _halve(tile[d])}, bytes_per_element),
                                           d in parallel, tile[d]))  # fmt: skip
        tile[d] = _halve(tile[d])

    while (need := footprint(node, tile, bytes_per_element)) > budget:
        candidates = [d for d in sizes if d not in reduced and tile[d] > 1]
        if not candidates:
            raise MappingError(f"layer {node.name}: its smallest tile needs {need} B, the memory holds {budget * 2} B")
        halve_best(candidates)
    if op in MATRIX_OPS:
        # at least PIPELINE_TILES tiles (see there), cut along the output dims that index the largest input (its
        # weights): no partial sums, and the other inputs stay on-chip across the tiles (a cut of a GEMV's rows would
        # read its weights again per row tile; a cut of its columns reads x once)
        largest = max(inputs, key=lambda dims: math.prod(sizes[d] for d in dims))
        while math.prod(per_core[d] // tile[d] for d in tile) < PIPELINE_TILES:
            candidates = [d for d in parallel if d in largest and tile[d] > 1]
            if not candidates:
                break
            halve_best(candidates)
    tiles = [{"dim": f"{node.name}.D{d}", "tile": t} for d, t in sorted(tile.items()) if t != per_core[d]]
    return layer, tiles


def fixed_mapping(onnx_path: str | Path, stream_hw: dict, bytes_per_element: int, smallest: bool = False) -> dict:
    """The mapping YAML document: one group per layer, in Stream's dataflow order, except that each product of
    weights alone runs in one group with its reader (`weight_products`). smallest: every layer's tiles fit half the
    memory of the smallest compute core, not only of its own cores (a retry: Stream 2.1.1 finds no allocation for V3
    prefill S = 1024 on cloud-fusemax with q_proj's or o_proj's tiles sized for its 32 MB matrix core, structurally,
    no memory over its budget; sized for its 4 MB vector core it does)."""
    wl, layers, groups = _per_layer(onnx_path, stream_hw, bytes_per_element, smallest)
    merged = _product_merges(onnx_path, wl, stream_hw, bytes_per_element, layers)
    return {"layers": list(layers.values()), "fused_groups": _merged_groups(groups, merged, _by_name(wl))}


def _per_layer(onnx_path: str | Path, stream_hw: dict, bytes_per_element: int, smallest: bool):
    """(Stream's workload, each layer's entry by name, one group per layer in dataflow order)."""
    wl = load_workload(str(onnx_path))
    cores = compute_cores(stream_hw)
    layers, groups = {}, []
    for node in wl.dataflow_sort():
        if not isinstance(node, HasIterationSpace):
            continue
        layer, tiles = layer_mapping(node, cores, bytes_per_element, smallest)
        layers[node.name] = layer
        groups.append({"name": node.name, "layers": [node.name], "intra_core_tiling": tiles})
    return wl, layers, groups


def _by_name(wl) -> dict:
    return {n.name: n for n in wl.dataflow_sort() if isinstance(n, HasIterationSpace)}


def write_fixed_mapping(onnx_path: str | Path, stream_hw: dict, bytes_per_element: int, path: Path,
                        smallest: bool = False) -> Path:  # fmt: skip
    doc = fixed_mapping(onnx_path, stream_hw, bytes_per_element, smallest)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---- the fused attention core (engines.md §16.2) ---------------------------------------------------------------
# One fused group per attention core: its score products, their sum, the softmax (a split-KV graph's per-chunk
# statistics, split_kv.py), the context product and the split-KV combine, with the re-projections that read the cache
# (mla-recompute's k_up/v_up). The combine stays in the group: Stream 2.1.1 cannot hand a tensor that a group also
# reads itself (the per-chunk max) to another group ("Currently only support single destination for constant output
# transfer", stream/allocation/lowering.py), and on-chip is where a one-kernel split attention keeps its partials.
# Matrix nodes run on every matrix core, split along the chunks (each core holds only its chunks of the cache); the
# softmax pieces and elementwise ops on the vector core(s). The group is tiled in time to one chunk per core at a
# time (as a split kernel walks them), then until a tile fits on-chip: first along the dims that index the cache
# (batch, K/V heads), then along the query rows of one K/V head (a latent chunk serves all h heads, so a tile of them
# reads the chunk again).
def _operand_dims(wl, node) -> list[list]:
    """Per operand of a Stream node, the unique dims that index it."""
    dims = wl.get_dims(node)
    return [[dims[e.position] for e in amap.results if isinstance(e, AffineDimExpr)] for amap in node.operand_mapping]


def _group_footprint(wl, nodes, extent: dict, split: dict, bytes_per_element: int, per_core: bool,
                     whole: dict | None = None) -> int:  # fmt: skip
    """Bytes of one tile of every distinct tensor the nodes touch (per matrix core: split dims divided). whole: the
    dims' full sizes, given to hold a tensor no temporal loop tiles (its tile is the whole tensor, the same in every
    iteration) once rather than double-buffered: it counts half against a budget of half the memory."""
    seen: dict[str, float] = {}
    for node in nodes:
        for tensor, dims in zip(node.tensors, _operand_dims(wl, node), strict=True):
            dims = list(dict.fromkeys(dims))
            size = math.prod(extent[d] // (split.get(d, 1) if per_core else 1) for d in dims)
            if whole is not None and all(extent[d] == whole[d] for d in dims):
                size = size / 2
            seen[tensor.name] = max(seen.get(tensor.name, 0), size)
    return math.ceil(sum(seen.values()) * bytes_per_element)


PLAN_SAVING = 0.05  # another tiling of the attention core replaces the rule of thumb only if it reads this much less


@dataclass(frozen=True)
class CorePlan:
    """One tiling of the fused attention core: the dim split over the matrix cores (None: one core), each dim's tile
    across the cores, the temporal loops (outermost first) and the DRAM bytes `_CoreShape.dram_bytes` estimates."""

    split_dim: object
    extent: dict
    loops: list
    dram_bytes: int
    least_bytes: int  # every input read once
    sizes: dict
    again: dict  # {graph tensor: times read} of the inputs read more than once

    @property
    def rereads(self) -> bool:
        return self.dram_bytes > (1 + PLAN_SAVING) * self.least_bytes

    def trips(self) -> list[tuple[int, int]]:
        """(size, trip count) of each temporal loop that runs more than once, outermost first."""
        return [(self.sizes[d], self.sizes[d] // self.extent[d]) for d in self.loops if self.extent[d] < self.sizes[d]]


def _tensor_name(name: str) -> str:
    """The graph's name of a tensor Stream is given (without stream_graph's copy and squeeze suffixes)."""
    return name.split(COPY_TAG)[0].removesuffix(UNIT_TAG)


@dataclass(frozen=True)
class _CoreShape:
    """What the attention core's tilings are chosen from: its nodes, dim sizes, the split-KV chunk dim (None for a
    plain graph), the parallel dims besides it (`heads`: sequences, K/V heads, query rows), the dims indexing the
    cache, the weights its matrix nodes read (mla-recompute's W_UK and W_UV), and the number of matrix cores."""

    wl: object
    members: list
    on_matrix: list
    on_vector: list
    sizes: dict
    chunk: object
    heads: list
    per_cache: set
    weights: set
    n: int

    @functools.cached_property
    def inputs(self) -> dict[str, list]:
        """Each tensor the core reads and does not make, with the dims indexing it."""
        made = {t.name for node in self.members for t in node.outputs}
        found: dict[str, list] = {}
        for node in self.members:
            for tensor, dims in zip(node.tensors, _operand_dims(self.wl, node), strict=True):
                if tensor.name not in made:
                    found[tensor.name] = list(dict.fromkeys(dims))
        return found

    def splits(self) -> list:
        """Dims to split over the matrix cores, the rule of thumb first: the chunks (each core reads its own part of
        the cache), else the largest parallel dim that divides, one that indexes the cache first. Then every other
        parallel dim that divides and indexes each matrix node (the heads: each core reads only its heads' weights,
        and the cache they share reaches every core at once, Stream multicasting it over the DRAM bus)."""
        if self.n == 1:
            return [None]
        divides = [d for d in ([self.chunk] if self.chunk is not None else []) + self.heads
                   if self.sizes[d] % self.n == 0]  # fmt: skip
        if self.chunk in divides:
            first = self.chunk
        else:
            first = max((d for d in self.heads if d in divides), key=lambda d: (d in self.per_cache, self.sizes[d]),
                        default=None)  # fmt: skip
            if first is None:
                raise MappingError(f"fused-attention: no attention dim of {self.sizes.values()} divides over "
                                   f"{self.n} matrix cores")  # fmt: skip
        indexes_all = [d for d in divides if all(d in self.wl.get_dims(node) for node in self.on_matrix)]
        return [first] + [d for d in indexes_all if d != first]

    def plan(self, split_dim, weights_outer: bool, budget: tuple[int, int], bytes_per_element: int,
             extra_halvings: int, held: bool = False) -> CorePlan | None:  # fmt: skip
        """Temporal tiles: halve the chunks (one chunk per core in a tile), then the dims that index the cache (batch,
        K/V heads; largest first), then the rest (query rows of one K/V head, largest first), until the matrix
        cores' tiles fit half their memory and the vector core's half its own. Loops, outermost first: the dims
        indexing the cache (a sequence, a K/V head), then the chunks, then the query rows sharing a chunk. A chunk
        stays while its query rows run, and a sequence's chunks and their combine finish before the next sequence
        starts, so only one tile's split-KV partials are live (chunks outermost, V3 absorb B = 32 L = 32k on
        h100-like kept every sequence's partials, 5.35 MB, on the 4 MB vector core). weights_outer: the dims
        indexing the weights outermost instead, so each weight tile is read once and the cache once per weight tile.
        held: a tensor no temporal loop tiles counts once against the memory (it stays for the whole group, nothing
        to prefetch), so a core may hold its heads' weights whole beside smaller double-buffered tiles (mla-recompute:
        each h100-like core's 16 heads of W_UK and W_UV, 4 MiB, at 16 chunks of 64 positions). None where nothing
        fits or weights_outer changes nothing."""
        wl, sizes, chunk, per_cache = self.wl, self.sizes, self.chunk, self.per_cache
        split = {split_dim: self.n} if split_dim is not None and self.n > 1 else {}
        by_cache = sorted(self.heads, key=lambda d: (d not in per_cache, -sizes[d]))
        order = ([chunk] if chunk is not None else []) + by_cache
        extent = dict(sizes)

        def fits() -> bool:
            sides = ((self.on_matrix, True, budget[0]), (self.on_vector, False, budget[1]))
            return all(_group_footprint(wl, nodes, extent, split, bytes_per_element, per_core,
                                        sizes if held else None) <= room
                       for nodes, per_core, room in sides)  # fmt: skip

        halvings = extra_halvings
        while not fits() or halvings > 0 or (chunk is not None and extent[chunk] > split.get(chunk, 1)):
            if fits() and (chunk is None or extent[chunk] == split.get(chunk, 1)):
                halvings -= 1
            dim = next((d for d in order if extent[d] > split.get(d, 1)), None)
            if dim is None:
                return None
            extent[dim] = _halve(extent[dim] // split.get(dim, 1)) * split.get(dim, 1)
        loops = [d for d in order if d != chunk and d in per_cache]
        loops += [d for d in order if d == chunk or d not in per_cache]
        if weights_outer:
            indexing = {d for name, dims in self.inputs.items() if name in self.weights for d in dims}
            tiled = [d for d in loops if d in indexing and extent[d] != sizes[d]]
            if not tiled:
                return None
            loops = [d for d in loops if d in indexing] + [d for d in loops if d not in indexing]
        times = self.reads(extent, loops)
        once = dict.fromkeys(times, 1)
        again = {_tensor_name(n): k for n, k in times.items() if k > 1}
        return CorePlan(split_dim, extent, loops, self.dram_bytes(times, bytes_per_element),
                        self.dram_bytes(once, bytes_per_element), sizes, again)  # fmt: skip

    def reads(self, extent: dict, loops: list) -> dict[str, int]:
        """How many times the loops read each input from DRAM: once per iteration of every loop outside the innermost
        loop indexing it that does not index it itself (a tile stays on-chip only while the loops inside it run);
        once where no loop that runs more than once indexes it (the whole input stays for the group). A
        tile several matrix cores read is read once (Stream multicasts it over the bus). An estimate that ranks
        tilings: Stream may keep a tensor on-chip longer where its memory allows."""
        trips = [(d, self.sizes[d] // extent[d]) for d in loops if self.sizes[d] > extent[d]]
        found = {}
        for name, dims in self.inputs.items():
            inner = max((i for i, (d, _) in enumerate(trips) if d in dims), default=None)
            found[name] = 1 if inner is None else math.prod(t for d, t in trips[:inner] if d not in dims)
        return found

    def dram_bytes(self, times: dict[str, int], bytes_per_element: int) -> int:
        """Bytes read from DRAM when each input is read `times[input]` times (`reads`)."""
        return bytes_per_element * sum(math.prod(self.sizes[d] for d in self.inputs[n]) * k for n, k in times.items())


def fused_attention_mapping(onnx_path: str | Path, stream_hw: dict, bytes_per_element: int,
                            extra_halvings: int = 0, smallest: bool = False) -> dict:  # fmt: skip
    """The fixed mapping (smallest: see `fixed_mapping`) with the attention core as one fused group (and a split-KV
    combine as another). extra_halvings: halve the tile that many more times than the footprint estimate needs (a
    retry after Stream found the estimated tile too big)."""
    return _fused_attention(onnx_path, stream_hw, bytes_per_element, extra_halvings, smallest)[0]


def attention_plans(onnx_path: str | Path, stream_hw: dict, bytes_per_element: int) -> tuple[list[CorePlan], CorePlan]:
    """The attention core's candidate tilings (the rule of thumb first) and the one `fused_attention_mapping` takes:
    the rule of thumb unless another reads PLAN_SAVING less from DRAM by `_CoreShape.dram_bytes`."""
    return _fused_attention(onnx_path, stream_hw, bytes_per_element, 0, False)[1:]


def _fused_attention(onnx_path: str | Path, stream_hw: dict, bytes_per_element: int, extra_halvings: int,
                     smallest: bool) -> tuple[dict, list[CorePlan], CorePlan]:  # fmt: skip
    wl, layers, groups = _per_layer(onnx_path, stream_hw, bytes_per_element, smallest)
    core, combine = attention_core(onnx_path)
    by_name = _by_name(wl)
    missing = [n for n in (*core, *combine) if n not in by_name]
    if missing:
        raise MappingError(f"fused-attention: Stream's workload lacks {missing}")
    cores = compute_cores(stream_hw)
    matrix = cores_for("MatMul", cores)
    members = [by_name[n] for n in (*core, *combine)]
    on_matrix = [n for n in members if n.type in MATRIX_OPS]
    on_vector = [n for n in members if n.type not in MATRIX_OPS]
    stats = by_name.get("chunk_m") or next(n for n in on_vector if isinstance(n, NormalizationNode))
    sizes = {d: wl.get_dimension_size(d) for n in members for d in wl.get_dims(n)}
    stats_dims = wl.get_dims(stats)
    parallel = list(dict.fromkeys(d for d in _operand_dims(wl, stats)[-1] if sizes[d] > 1))
    chunk = _reduced_dim(wl, by_name["combine_m"]) if "combine_m" in by_name else None
    if isinstance(stats, NormalizationNode):  # a Softmax keeps its reduced axis whole
        parallel = [d for d in parallel if stats_dims.index(d) not in stats.reduction_axes]
    heads = [d for d in parallel if d != chunk]
    model = onnx.load(str(onnx_path), load_external_data=False)
    caches = set(cache_inputs(model))
    # dims that index the cache a matrix node reads: a tile of them reads its own part of the cache; a tile of the
    # others (query rows sharing a K/V head, e.g. all h heads of the MLA latent) reads the same cache chunk again
    operands = [(t.name, dims) for n in on_matrix for t, dims in zip(n.tensors, _operand_dims(wl, n), strict=True)]
    per_cache = {d for name, dims in operands if name in caches for d in dims}
    if not per_cache:  # prefill: K and V come from the layer's projections; the operands the query rows share (not
        # indexed by every parallel dim) play the cache's part
        produced = {t.name for n in members for t in n.outputs}
        per_cache = {d for name, dims in operands if name not in produced and not set(parallel) <= set(dims)
                     for d in dims}  # fmt: skip
    vector = [c for c in cores if c not in matrix] or matrix
    budget = (min(c.memory_bytes for c in matrix) // 2, min(c.memory_bytes for c in vector) // 2)
    initializers = {t.name for t in model.graph.initializer}
    weights = {name for name, _ in operands if _tensor_name(name) in initializers}
    shape = _CoreShape(wl, members, on_matrix, on_vector, sizes, chunk, heads, per_cache, weights, len(matrix))
    tilings = itertools.product((False, True), shape.splits(), (False, True))  # held, split, weights outermost
    plans = [plan for held, split_dim, outer in tilings
             if (plan := shape.plan(split_dim, outer, budget, bytes_per_element, extra_halvings, held))]  # fmt: skip
    if not plans:
        raise MappingError(f"fused-attention: the attention core's smallest tile does not fit ({', '.join(core)})")
    # the first plan is the rule of thumb (split along the chunks, the cache's loops outermost); another wins only
    # where it reads clearly less from DRAM (mla-recompute: the weights its re-projection reads)
    best = min(plans, key=lambda plan: plan.dram_bytes)
    first = plans[0]
    chosen = best if best.dram_bytes < (1 - PLAN_SAVING) * first.dram_bytes else first
    split_dim, extent, loops = chosen.split_dim, chosen.extent, chosen.loops
    split = {split_dim: len(matrix)} if split_dim is not None else {}
    for node in on_matrix:
        entry = {"name": node.name, "core_allocation": [[c.id for c in matrix]]}
        if split:
            entry["inter_core_tiling"] = [[{"dim": f"D{wl.get_dims(node).index(split_dim)}", "split": len(matrix)}]]
        layers[node.name] = entry
    for node in on_vector:  # the vector cores, as the fixed mapping places them
        layers[node.name] = layer_mapping(node, cores, bytes_per_element)[0]
    anchor = on_matrix[0]
    tiling = []
    for d in reversed(loops):  # the mapping lists tiles innermost first
        if extent[d] != sizes[d]:
            host = anchor if d in wl.get_dims(anchor) else next(n for n in members if d in wl.get_dims(n))
            tiling.append({"dim": f"{host.name}.D{wl.get_dims(host).index(d)}", "tile": extent[d] // split.get(d, 1)})
    merged = [("attention", core + combine, tiling)]
    merged += _product_merges(onnx_path, wl, stream_hw, bytes_per_element, layers)
    return {"layers": list(layers.values()), "fused_groups": _merged_groups(groups, merged, by_name)}, plans, chosen


# ---- weight products consumed on-chip (attention-schemes.md §5.5) ------------------------------------------------
# A product of weights alone that the graph makes every step (mla-merged-per-step's W_QK = W_UQ W_UK^T and
# W_VO = W_UV W_O, 570 M elements for V3) runs in one fused group with the one product that reads it, so each tile of
# it is consumed on the core that made it instead of going through DRAM. The pair is split over the matrix cores
# along a dim that indexes every input of the product (the heads: each core reads only its heads' factors), then
# tiled in time until a tile fits, halving first the dims whose tiling re-reads the fewest factor bytes (for W_VO,
# d_model: only W_UV[h], not W_O, is read again per tile).
def _product_merges(onnx_path: str | Path, wl, stream_hw: dict, bytes_per_element: int, layers: dict) -> list:
    """The (name, members, tiling) group of each weight product and its reader that can be split and tiled to fit;
    their layer entries updated in `layers`."""
    matrix = cores_for("MatMul", compute_cores(stream_hw))
    by_name, merged = _by_name(wl), []
    for product, reader in weight_products(onnx_path):
        group = _product_group(wl, by_name[product], by_name[reader], matrix, bytes_per_element)
        if group is not None:
            entries, tiles = group
            layers.update((entry["name"], entry) for entry in entries)
            merged.append((product, [product, reader], tiles))
    return merged


def _product_group(wl, product, reader, matrix: list[Core], bytes_per_element: int) -> tuple[list, list] | None:
    """(layer entries, tiles) of the fused (product, reader) group, or None when no split or tile fits (the pair then
    keeps its per-layer groups)."""
    dims = [_operand_dims(wl, product)[i] for i in range(len(product.inputs))]
    sizes = {d: wl.get_dimension_size(d) for n in (product, reader) for d in wl.get_dims(n)}
    made = _operand_dims(wl, product)[-1]
    shared = [d for d in made if all(d in ds for ds in dims)]  # not a contracted dim: the reader has none of those
    split_dim = max((d for d in shared if sizes[d] % len(matrix) == 0), key=lambda d: sizes[d], default=None)
    if split_dim is None and len(matrix) > 1:
        return None
    split = {split_dim: len(matrix)} if len(matrix) > 1 else {}
    factor_bytes = [math.prod(sizes[d] for d in ds) for ds in dims]

    def rereads(d) -> int:  # factor elements a tile along d reads again
        return sum(b for b, ds in zip(factor_bytes, dims, strict=True) if d not in ds)

    order = ([split_dim] if split_dim is not None else []) + sorted(
        (d for d in made if d != split_dim and sizes[d] > 1), key=lambda d: (rereads(d), -sizes[d])
    )
    extent = dict(sizes)
    budget = min(c.memory_bytes for c in matrix) // 2
    while _group_footprint(wl, (product, reader), extent, split, bytes_per_element, True) > budget:
        dim = next((d for d in order if extent[d] > split.get(d, 1)), None)
        if dim is None:
            return None
        extent[dim] = _halve(extent[dim] // split.get(dim, 1)) * split.get(dim, 1)
    entries = []
    for node in (product, reader):
        entry = {"name": node.name, "core_allocation": [[c.id for c in matrix]]}
        if split:
            entry["inter_core_tiling"] = [[{"dim": f"D{wl.get_dims(node).index(split_dim)}", "split": len(matrix)}]]
        entries.append(entry)
    tiles = [{"dim": f"{product.name}.D{wl.get_dims(product).index(d)}", "tile": extent[d] // split.get(d, 1)}
             for d in reversed(order) if extent[d] != sizes[d]]  # fmt: skip
    return entries, tiles


def _reduced_dim(wl, node):
    """The one dim a reduction node reduces (not indexing its output)."""
    out = set(_operand_dims(wl, node)[-1])
    reduced = [d for d in wl.get_dims(node) if d not in out and wl.get_dimension_size(d) > 1]
    if len(reduced) != 1:
        raise MappingError(f"fused-attention: {node.name} reduces {len(reduced)} dims, expected the chunks")
    return reduced[0]


def _merged_groups(groups: list[dict], merged: list[tuple[str, list[str], list[dict]]], by_name: dict) -> list[dict]:
    """`groups` (one per layer) with each (name, members, tiling) of `merged` as one group, in an order every
    producer precedes its readers in (a stable topological sort on the groups, by their first layer's place)."""
    owner = {m: name for name, members, _ in merged for m in members}
    out: dict[str, dict] = {}
    for g in groups:
        layer = g["layers"][0]
        key = owner.get(layer, layer)
        if key not in out:
            members, tiling = next(((m, t) for n, m, t in merged if n == key), ([layer], g["intra_core_tiling"]))
            out[key] = {"name": key, "layers": [x for x in (gg["layers"][0] for gg in groups) if x in members],
                        "intra_core_tiling": tiling}  # fmt: skip
    produced = {t.name: owner.get(n, n) for n, node in by_name.items() for t in node.outputs}
    needs = {k: {produced[t.name] for m in g["layers"] for t in by_name[m].inputs if t.name in produced} - {k}
             for k, g in out.items()}  # fmt: skip
    order, done = list(out), []
    while order:
        ready = next((k for k in order if needs[k] <= set(done)), None)
        if ready is None:
            raise MappingError(f"fused-attention: the groups {order} depend on each other")
        done.append(ready)
        order.remove(ready)
    return [out[k] for k in done]


def write_fused_attention_mapping(
    onnx_path: str | Path,
    stream_hw: dict,
    bytes_per_element: int,
    path: Path,
    extra_halvings: int = 0,
    smallest: bool = False,
) -> tuple[Path, CorePlan]:
    """(the mapping written to `path`, the attention core's plan it takes)."""
    doc, _, chosen = _fused_attention(onnx_path, stream_hw, bytes_per_element, extra_halvings, smallest)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, chosen
