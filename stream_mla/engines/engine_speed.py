"""Faster twins of pure Stream 2.1.1 and ZigZag 3.9.1 helpers that dominate a run's wall time, identical results.

`stream.workload.utils.affine_coefficients(expr, n)` reads the constant and the per-dim coefficients of an affine
expression by evaluating it n + 1 times at unit vectors: O(n^2) list building and n + 1 tree walks. Stream calls
it ~13,000 times per fused-attention run, on fused groups with tens of dims: 4.0 of 21.6 s profiled on V3
mla-recompute decode L = 4k on h100-like. `affine_coefficients` below walks the tree once (sums and products by a
constant); any other form (mod, floordiv, ceildiv, a product of two dims, a symbol, a dim beyond n) goes to
Stream's own function, so each answer (and each error) is Stream's. Tested against Stream's on random expressions
(tests/test_engine_speed.py).

`stream.workload.affine_transform.AffineTransform.from_affine_map(map)` builds the matrix form of an affine map the
same way (num_dims + 1 evaluations of every result): 1,460 calls, 2.5 s of the same run. `from_affine_map` below
fills the matrix from one walk per result, and hands any other form (and a map without results) to Stream's.

`stream.plugins._distribution_of(ep)` reads an entry point's distribution name, which parses that distribution's
METADATA file every time (importlib.metadata does not keep it); Stream asks it for every backend each time it picks
a core's cost backend: 1,319 parses, 1.3 s of the same run. `distribution_of` remembers the name per entry point
object (Stream scans the entry points once per process and keeps those objects).

ZigZag's `SpatialMapping.copy()` is `copy.deepcopy`, which its spatial-mapping search calls for every candidate it
visits (86,720 copies, 8.1 of 57 s profiled on V3 absorb B = 32 L = 4k on h100-like with an empty cost cache, where
ZigZag's layer costing is 80 % of the run). A mapping is a dict of OA dims to a dict of layer dims to unroll
factors (numbers), plus the OA dim sizes: `spatial_mapping_copy` copies those two levels and the sizes, keeping the
dimension objects (ZigZag compares and hashes them by name); anything else (a subclass, another attribute) is
deep-copied as before. The same search asks every candidate `is_valid(...)` and `get_performance_indicator()`, each
recomputing every layer dim's total unrolling from a flattened list per dim (6.4 and 3.6 s of the profile):
`spatial_mapping_is_valid` and `spatial_mapping_indicator` make the totals in one pass, multiplying in ZigZag's own
order (so float unrollings round alike), and keep its checks and assertions.

Stream's allocation model asks its `DecisionSpace.moved_bits(tr, choice, source, target)` the bits a transfer
moves for every route, source and target (4,056 calls on V3 absorb L = 4k on h100-like, warm cost cache), and each
call tiles the transfer's tensor anew through xDSL (`get_tensor_of_transfer_to_single_core`, 11 % of that run),
though the tile depends only on the transfer and the space's mapping and steady state, which a space keeps
("read-only once built"; it already keeps each transfer's overlaps). `moved_bits` below is Stream's body with the
transfer's sliding halo and tile worked out once per space and transfer.

Every Stream `Workload` (the whole graph, each fused group's sub-workload, each tiling trial's) solves its
dimension relations for the independent dimensions once (`_unique_dimensions`: a sympy RREF and `simplify` of
every result), 232 times in that run for 23 distinct relation sets (1 of its 10 s). The solve reads only the
number of dims, of remainders and the relations, so `unique_dimensions` below keeps each set's answer (immutable
tuples of xDSL expressions) for the process, keyed by exactly those.

The engines offer no extension point for these, so `install()` replaces each function where Stream looks it up (its
module, and a module that imported it by name); idempotent.
"""

import copy
import functools

from xdsl.ir.affine import AffineBinaryOpExpr, AffineBinaryOpKind, AffineConstantExpr, AffineDimExpr, AffineExpr

_installed: dict[str, object] = {}
_replaced: list[tuple[object, str, object]] = []  # (owner, attribute, the engine's own value) of every replacement
_solved: dict[tuple, tuple] = {}  # (dims, remainders, relations) -> Stream's unique dimensions of a workload
MAX_SOLVED = 4096  # a long process holds at most this many solves
_names: dict[int, tuple[object, str]] = {}  # id(entry point) -> (the entry point, kept alive; its distribution)


def _linear(expr: AffineExpr) -> tuple[int, dict[int, int]] | None:
    """(constant, {dim position: coefficient}) of a sum of products by constants; None for any other form."""
    if isinstance(expr, AffineConstantExpr):
        return expr.value, {}
    if isinstance(expr, AffineDimExpr):
        return 0, {expr.position: 1}
    if not isinstance(expr, AffineBinaryOpExpr):
        return None
    lhs = _linear(expr.lhs)
    rhs = _linear(expr.rhs) if lhs is not None else None
    if rhs is None:
        return None
    (a, x), (b, y) = lhs, rhs
    if expr.kind == AffineBinaryOpKind.Add:
        out = dict(x)
        for d, k in y.items():
            out[d] = out.get(d, 0) + k
        return a + b, out
    if expr.kind == AffineBinaryOpKind.Mul:
        if not x:  # constant * affine
            return a * b, {d: a * k for d, k in y.items()}
        if not y:
            return a * b, {d: b * k for d, k in x.items()}
    return None  # mod, floordiv, ceildiv, or a product of two non-constant terms


def affine_coefficients(expr: AffineExpr, n: int) -> tuple[int, list[int]]:
    """Stream's `affine_coefficients`: the constant of `expr` over n dims and the coefficient of each dim."""
    lin = _linear(expr)
    if lin is None or any(d >= n or d < 0 for d in lin[1]):
        return _installed["original"](expr, n)
    c, coef = lin
    return c, [coef.get(d, 0) for d in range(n)]


def from_affine_map(cls, amap):
    """Stream's `AffineTransform.from_affine_map`: the matrix A and offset b of a linear affine map."""
    import numpy as np

    forms = [_linear(r) for r in amap.results]
    n = amap.num_dims
    if not forms or any(f is None or any(d >= n or d < 0 for d in f[1]) for f in forms):
        return _installed["from_affine_map"].__func__(cls, amap)
    a = np.zeros((len(forms), n), dtype=np.int_)
    for row, (_, coef) in enumerate(forms):
        for d, k in coef.items():
            a[row, d] = k
    return cls(a, np.array([c for c, _ in forms]))


def spatial_mapping_copy(self):
    """ZigZag's `SpatialMapping.copy()`: a new mapping whose per-OA-dim unrollings can change independently."""
    from zigzag.mapping.spatial_mapping import MappingSingleOADim, SpatialMapping

    data = self.data
    if type(self) is not SpatialMapping or vars(self).keys() != {"data", "oa_dim_sizes"} or type(data) is not dict:
        return copy.deepcopy(self)
    if any(type(m) is not MappingSingleOADim or vars(m).keys() != {"_MappingSingleOADim__data"} for m in data.values()):
        return copy.deepcopy(self)
    new = SpatialMapping({oa: MappingSingleOADim(dict(m.get_data())) for oa, m in data.items()})
    new.oa_dim_sizes = None if self.oa_dim_sizes is None else dict(self.oa_dim_sizes)
    return new


def _plain(mapping) -> bool:
    """A SpatialMapping of the form the twins know (else ZigZag's own method runs)."""
    from zigzag.mapping.spatial_mapping import MappingSingleOADim, SpatialMapping

    return (type(mapping) is SpatialMapping and type(mapping.data) is dict
            and all(type(m) is MappingSingleOADim for m in mapping.data.values()))  # fmt: skip


def _totals(mapping) -> dict:
    """Every contained layer dim's total unrolling over the OA dims, multiplied in `flatten_unrollings` order."""
    totals: dict = {}
    for single in mapping.data.values():
        for layer_dim, factor in single.get_data().items():
            totals[layer_dim] = totals[layer_dim] * factor if layer_dim in totals else factor
    return totals


def spatial_mapping_is_valid(self, max_unrollings, layer_dim_sizes) -> bool:
    """ZigZag's `SpatialMapping.is_valid` (its docstring lists the eight conditions, checked here in its order)."""
    if not _plain(self):
        return _installed["is_valid"](self, max_unrollings, layer_dim_sizes)
    sizes, data = self.oa_dim_sizes, self.data
    assert sizes is not None, "Initialize OA Dimensions first"
    assert all(oa_dim in sizes for oa_dim in data), "Illegal OADimension found"
    assert all(oa_dim in data for oa_dim in sizes), "SpatialMapping misses OADimension"
    for oa_dim, single in data.items():
        limits = max_unrollings[oa_dim]
        for layer_dim, unrolling in single.get_data().items():
            if layer_dim not in limits or unrolling > limits[layer_dim]:
                return False
        if single.utilization > sizes[oa_dim]:
            return False
    totals = _totals(self)
    if not all(layer_dim in layer_dim_sizes for layer_dim in totals):
        return False
    return all(totals.get(layer_dim, 1) <= size for layer_dim, size in layer_dim_sizes.items())


def spatial_mapping_indicator(self) -> float:
    """ZigZag's `SpatialMapping.get_performance_indicator`: hardware utilization plus a diversity term."""
    if not _plain(self):
        return _installed["indicator"](self)
    hw_utilization = float(self.hw_utilization)
    totals = _totals(self)
    diversity_indicator = hw_utilization / max(totals.values()) - 1
    assert diversity_indicator < hw_utilization, "error in the performance indicator formula"
    return hw_utilization + diversity_indicator


def distribution_of(ep) -> str:
    """Stream's `plugins._distribution_of`, once per entry point object."""
    got = _names.get(id(ep))
    if got is None or got[0] is not ep:
        got = _names[id(ep)] = (ep, _installed["distribution_of"](ep))
    return got[1]


def moved_bits(self, tr, choice, source=None, target=None) -> float:
    """Stream's `DecisionSpace.moved_bits` (stream 2.1.1), each transfer's halo and tile computed once per space."""
    tensor, out = tr.inputs[0], tr.outputs[0]
    if overlaps := self.overlaps(tr):
        moved = sum(
            n
            for (i, j), n in overlaps.items()
            if not self.hardware.shares_memory(a := choice.sources[i], b := choice.targets[j])
            and source in (None, a)
            and target in (None, b)
        )
        return moved * tensor.operand_type.bitwidth
    sources = len(choice.sources) if source is not None else 1
    memo = self.__dict__.setdefault("_stream_mla_tiles", {})  # transfer -> [sliding halo, tile or None]
    if (known := memo.get(tr)) is None:
        known = memo[tr] = [self.workload.sliding_halo(out, tr, self.mapping, self.ssis.get(out)), None]
    sliding = known[0]
    if not sliding and target is None:
        return tensor.size_bits() / sources
    if known[1] is None:
        known[1] = self.workload.get_tensor_of_transfer_to_single_core(out, tr, self.mapping, ssis=self.ssis.get(out))
    tile = known[1]
    if target is not None:
        return tile.size_bits()
    return (
        tensor.size_bits() * min(tile.shape[sliding[0]], tensor.shape[sliding[0]]) // tensor.shape[sliding[0]] / sources
    )


def unique_dimensions(self):
    """Stream's `Workload._unique_dimensions`, solved once per distinct (dims, remainders, relations)."""
    key = (self.num_dims, len(self._remainders), tuple(self.dimension_relations()))
    if (found := _solved.get(key)) is None:
        if len(_solved) >= MAX_SOLVED:
            _solved.clear()
        found = _solved[key] = _installed["unique_dimensions"](self)
    return found


def _replace(owner, name: str, new, key: str = "") -> None:
    """owner.name = new, keeping the engine's own value as `owner` holds it (in `_replaced`, to put back; and under
    _installed[key] where a twin calls it)."""
    own = vars(owner).get(name, getattr(owner, name))  # a class's own entry: a classmethod or cached_property object
    if key:
        _installed[key] = own
    _replaced.append((owner, name, own))
    setattr(owner, name, new)


def install_zigzag() -> None:
    """Make ZigZag use its twin in this process (what a ZigZag run needs; no Stream import)."""
    from zigzag.mapping.spatial_mapping import SpatialMapping

    if "spatial_mapping_copy" not in _installed:
        _replace(SpatialMapping, "copy", spatial_mapping_copy, "spatial_mapping_copy")
        _replace(SpatialMapping, "is_valid", spatial_mapping_is_valid, "is_valid")
        _replace(SpatialMapping, "get_performance_indicator", spatial_mapping_indicator, "indicator")


def install() -> None:
    """Make Stream and ZigZag use the twins in this process."""
    install_zigzag()
    if "original" in _installed:
        return
    import stream.opt.allocation.constraint_optimization.space as space
    import stream.plugins as plugins
    import stream.workload.affine_transform as transform
    import stream.workload.utils as utils
    import stream.workload.workload as workload

    _replace(utils, "affine_coefficients", affine_coefficients, "original")  # affine_bounds looks it up here
    _replace(workload, "affine_coefficients", affine_coefficients)  # imported by name
    _replace(transform.AffineTransform, "from_affine_map", classmethod(from_affine_map), "from_affine_map")
    _replace(plugins, "_distribution_of", distribution_of, "distribution_of")  # load_group looks it up here
    _replace(space.DecisionSpace, "moved_bits", moved_bits, "moved_bits")
    solved = functools.cached_property(unique_dimensions)
    solved.__set_name__(workload.Workload, "_unique_dimensions")
    _replace(workload.Workload, "_unique_dimensions", solved)
    _installed["unique_dimensions"] = _replaced[-1][2].func
