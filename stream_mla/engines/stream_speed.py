"""Faster twins of pure Stream 2.1.1 helpers that dominate a run's wall time, with identical results.

`stream.workload.utils.affine_coefficients(expr, n)` reads the constant and the per-dim coefficients of an affine
expression by evaluating it n + 1 times at unit vectors: O(n^2) list building and n + 1 tree walks. Stream calls
it ~13,000 times per fused-attention run, on fused groups with tens of dims: 4.0 of 21.6 s profiled on V3
mla-recompute decode L = 4k on h100-like. `affine_coefficients` below walks the tree once (sums and products by a
constant); any other form (mod, floordiv, ceildiv, a product of two dims, a symbol, a dim beyond n) goes to
Stream's own function, so each answer (and each error) is Stream's. Tested against Stream's on random expressions
(tests/test_stream_speed.py).

`stream.plugins._distribution_of(ep)` reads an entry point's distribution name, which parses that distribution's
METADATA file every time (importlib.metadata does not keep it); Stream asks it for every backend each time it picks
a core's cost backend: 1,319 parses, 1.3 s of the same run. `distribution_of` remembers the name per entry point
object (Stream scans the entry points once per process and keeps those objects).

Stream offers no extension point for either, so `install()` replaces each function where Stream looks it up (its
module, and a module that imported it by name); idempotent.
"""

from xdsl.ir.affine import AffineBinaryOpExpr, AffineBinaryOpKind, AffineConstantExpr, AffineDimExpr, AffineExpr

_installed: dict[str, object] = {}
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


def distribution_of(ep) -> str:
    """Stream's `plugins._distribution_of`, once per entry point object."""
    got = _names.get(id(ep))
    if got is None or got[0] is not ep:
        got = _names[id(ep)] = (ep, _installed["distribution_of"](ep))
    return got[1]


def install() -> None:
    """Make Stream use `affine_coefficients` in this process."""
    if _installed:
        return
    import stream.plugins as plugins
    import stream.workload.utils as utils
    import stream.workload.workload as workload

    _installed["original"] = utils.affine_coefficients
    utils.affine_coefficients = affine_coefficients  # affine_bounds looks it up here
    workload.affine_coefficients = affine_coefficients  # imported by name
    _installed["distribution_of"] = plugins._distribution_of
    plugins._distribution_of = distribution_of  # load_group looks it up here
