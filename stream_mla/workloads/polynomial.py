"""Exact count polynomials: a workload's counts as polynomials in its sizes, derived from its graphs once.

Everything of a workload but its sizes (model, scheme, phase, part, precisions, window, K/V heads, split-KV chunks)
is a `Group`; its sizes are batch B, context L (prefill: S) and, for multi-token decode, queries Q. Each count of
`counts.count(build(spec))` (MACs, causal MACs, every byte class, their total, layer-by-layer bytes) is then a
polynomial of low degree in the free sizes: degree 1 in B, in decode's L, 2 in Q and in prefill's S (the dense
S x S score block; causal pairs are S(S+1)/2, so coefficients are rationals).

Derivation (`pieces`, cached per group): graphs are counted at sample sizes and the coefficients solved exactly in
fractions (Vandermonde inverses on a tensor grid). Three forms are tried in turn (`FORMS`): c + B g(L, Q) with g on
the grid of degrees above and c, the batch-independent part (the weights), a constant (1 + |grid| graphs: 3 for
decode, 4 for prefill); the full tensor grid of those degrees; one degree more in every variable. Each is checked
against direct graph counts at 2 random sizes inside its domain (one log-uniform, one uniform), off the sample
sizes in every variable that has sizes off them; the first form that passes is the piece's polynomial, and if none
does the piece is counted directly, graph by graph (cached). A check is a strong test, not a proof (a polynomial
of higher degree, or an unforeseen breakpoint, is caught where a check lands on it), so the known breakpoints are
cut out beforehand.

Piecewise counts: a sliding window W caps the keys a decode step reads at min(L, W + Q - 1) and the causal pairs
at W per query, DSA's top-k selects min(k, L) keys: the context axis is cut at those constants (W, W + Q - 1,
index_topk), and each interval gets its own polynomial (fitted and verified inside it; between W and W + Q - 1 the
causal pairs are quadratic in L, which the third form fits). A windowed decode group
keeps its Q fixed (its cuts move with Q); Q = 1 and prefill's S = 1 build graphs of their own structure (no query
split), so they are groups of their own. An interval too short to fit and check, and a point outside the verified
box (sizes beyond the documented maxima), are counted directly.

Values are exact integers: evaluated in int64 when a bound on every term fits, else in Python integers; an
evaluation whose division by the common denominator leaves a remainder, and a point whose layer-by-layer bytes
reach 2**62 (near the sizes where the graph itself stops building), are counted directly instead.
"""

import hashlib
import math
import random
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, lru_cache
from itertools import product

import numpy as np

from stream_mla.models import MAX_BATCH, MAX_CONTEXT
from stream_mla.workloads import WorkloadSpec, build, make_spec
from stream_mla.workloads.counts import count

COUNTS = ("macs", "macs_causal", "weights", "kv_read", "kv_write", "activations", "total", "layer_by_layer")
SIZES = ("batch", "context", "queries")
VERIFY_POINTS = 2  # random sizes each derived polynomial is checked at (beyond its grid)
FORMS = ("affine", "grid", "grid+1")  # tried in turn for each piece (`_fit`): the first that passes its check
INT64_LIMIT = 2**63 - 1
# A point whose layer-by-layer bytes (which bound every tensor of its graph) reach this is counted directly: near
# 2**63 elements the graph itself may not build (numpy's broadcast limit), and its own error is the answer.
DIRECT_ABOVE = 2**62


def count_vector(counts: dict) -> tuple[int, ...]:
    """The COUNTS of one `count()` document."""
    b = counts["bytes"]
    return (counts["macs"], counts["macs_causal"], b["weights"], b["kv_read"], b["kv_write"], b["activations"],
            b["total"], counts["bytes_layer_by_layer"])  # fmt: skip


@dataclass(frozen=True)
class Group:
    """A workload without its sizes: `fields` are the WorkloadSpec's other fields (model as its ModelSpec, precisions
    resolved); `queries` / `context` are fixed sizes (None: free variables)."""

    fields: tuple[tuple[str, object], ...]
    queries: int | None = None
    context: int | None = None

    @cached_property
    def spec_fields(self) -> dict:
        return dict(self.fields)

    @cached_property
    def decode(self) -> bool:
        return self.spec_fields["phase"] == "decode"

    @cached_property
    def window(self) -> int | None:
        f = self.spec_fields
        return f["window"] or f["model"].sliding_window

    @cached_property
    def chunks(self) -> int:
        return self.spec_fields["kv_chunks"] or 1

    @cached_property
    def variables(self) -> tuple[str, ...]:
        free = {"context": self.context is None, "queries": self.queries is None}
        return ("batch", *(v for v, on in free.items() if on))

    def spec(self, batch: int, context: int, queries: int) -> WorkloadSpec:
        return make_spec(**self.spec_fields, batch=batch, context=context, queries=queries)

    def valid(self, batch: int, context: int, queries: int) -> bool:
        """The size checks of WorkloadSpec (the others do not depend on sizes): Q <= L, and split-KV chunks that
        divide the keys a step reads."""
        if self.decode and queries > context:
            return False
        if self.chunks == 1:
            return True
        w = self.window
        keys = min(context, w + queries - 1) if w and self.decode else context
        return keys % self.chunks == 0

    def cuts(self) -> tuple[int, ...]:
        """Context values after which a count changes form (window, top-k): the ends of the polynomial pieces."""
        if self.context is not None:
            return ()
        f, w = self.spec_fields, self.window
        out = set()
        if w:
            out |= {w, w + self.queries - 1} if self.decode else {w}
        if f["scheme"] == "mla-sparse" and f["model"].index_topk:
            out.add(f["model"].index_topk)
        return tuple(sorted(c for c in out if c >= 1))


def group_fields(spec: WorkloadSpec) -> tuple[tuple[str, object], ...]:
    """The non-size fields of a (platform-resolved) spec."""
    return tuple((k, getattr(spec, k)) for k in WorkloadSpec.model_fields if k not in SIZES)


def _class(decode: bool, windowed: bool, context: int, queries: int) -> tuple[int | None, int | None]:
    """(fixed queries, fixed context) of sizes: decode's Q = 1 (no query split) and a windowed decode's Q (its
    cuts move with Q) are fixed; prefill's queries are fixed, and its S = 1 (no query split) too."""
    if decode:
        return (queries if queries == 1 or windowed else None), None
    return queries, (1 if context == 1 else None)


def group_of(fields: tuple[tuple[str, object], ...], context: int, queries: int) -> Group:
    """The group of sizes (context, queries) under `fields`: its class of graph structure and which sizes are free."""
    return partition(fields, [context], [queries]).popitem()[0]


def partition(fields: tuple[tuple[str, object], ...], contexts, queries) -> dict[Group, list[int]]:
    """The positions of each (context, queries) pair by group."""
    f = dict(fields)
    decode, windowed = f["phase"] == "decode", bool(f["window"] or f["model"].sliding_window)
    if decode and not windowed:  # the common case, in one pass: Q = 1 or a free Q
        classes = [(1, None) if q == 1 else (None, None) for q in queries]
    else:
        classes = [_class(decode, windowed, length, q) for length, q in zip(contexts, queries, strict=True)]
    by_class: dict[tuple, list[int]] = {}
    for j, cls in enumerate(classes):
        by_class.setdefault(cls, []).append(j)
    return {Group(fields, queries=q, context=c): idx for (q, c), idx in by_class.items()}


@lru_cache(maxsize=1 << 16)
def direct(group: Group, batch: int, context: int, queries: int) -> tuple[int, ...]:
    """The counts of the graph itself."""
    return count_vector(count(build(group.spec(batch, context, queries))))


# ---- exact interpolation ------------------------------------------------------------------------------------
def _inverse_vandermonde(nodes: list[int]) -> list[list[Fraction]]:
    """V^-1 for V[i][j] = nodes[i]**j: maps values at the nodes to monomial coefficients."""
    n = len(nodes)
    a = [[Fraction(x) ** j for j in range(n)] + [Fraction(int(i == r)) for r in range(n)] for i, x in enumerate(nodes)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if a[r][col] != 0)
        a[col], a[pivot] = a[pivot], a[col]
        p = a[col][col]
        a[col] = [v / p for v in a[col]]
        for r in range(n):
            if r != col and a[r][col] != 0:
                f = a[r][col]
                a[r] = [v - f * w for v, w in zip(a[r], a[col], strict=True)]
    return [row[n:] for row in a]


def _solve(axes: list[list[int]], values: dict[tuple[int, ...], tuple[int, ...]]) -> dict[tuple[int, ...], list]:
    """Monomial coefficients (exponent tuple -> one Fraction per count) of the tensor-grid interpolant."""
    coeff = {idx: [Fraction(v) for v in vals] for idx, vals in values.items()}
    for a, nodes in enumerate(axes):
        inv = _inverse_vandermonde(nodes)
        new = {}
        for idx in coeff:
            terms = [(inv[idx[a]][t], coeff[(*idx[:a], t, *idx[a + 1 :])]) for t in range(len(nodes))]
            new[idx] = [sum(w * vec[c] for w, vec in terms) for c in range(len(COUNTS))]
        coeff = new
    return coeff


@dataclass(frozen=True)
class Poly:
    """The COUNTS on one piece: count c = sum_k numerators[c][k] * prod(x_v ** exponents[k][v]) / denominators[c]."""

    variables: tuple[str, ...]
    exponents: tuple[tuple[int, ...], ...]
    numerators: tuple[tuple[int, ...], ...]
    denominators: tuple[int, ...]

    @classmethod
    def from_coefficients(cls, variables: tuple[str, ...], coeff: dict) -> "Poly":
        exps = tuple(sorted(e for e, vec in coeff.items() if any(vec)))
        dens = tuple(math.lcm(*(coeff[e][c].denominator for e in exps)) if exps else 1 for c in range(len(COUNTS)))
        nums = tuple(tuple(int(coeff[e][c] * dens[c]) for e in exps) for c in range(len(COUNTS)))
        return cls(variables, exps, nums, dens)

    def exact(self, sizes: dict[str, int]) -> tuple[int, ...] | None:
        """The counts at one point in Python integers; None where a division leaves a remainder."""
        mono = [math.prod(sizes[v] ** e for v, e in zip(self.variables, exp, strict=True)) for exp in self.exponents]
        out = []
        for num, den in zip(self.numerators, self.denominators, strict=True):
            q, r = divmod(sum(n * m for n, m in zip(num, mono, strict=True)), den)
            if r:
                return None
            out.append(q)
        return tuple(out)

    def bound(self, maxima: dict[str, int]) -> int:
        """An upper bound of every partial sum of the evaluation at sizes within `maxima`."""
        mono = [math.prod(maxima[v] ** e for v, e in zip(self.variables, exp, strict=True)) for exp in self.exponents]
        return max([*mono, *(sum(abs(n) * m for n, m in zip(num, mono, strict=True)) for num in self.numerators)])

    def evaluate(self, sizes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(values [points, counts] as int64, ok [points]) within int64 bounds (the caller checks `bound`)."""
        n = len(next(iter(sizes.values())))
        mono = np.ones((n, len(self.exponents)), dtype=np.int64)
        for k, exp in enumerate(self.exponents):
            for v, e in zip(self.variables, exp, strict=True):
                if e:
                    mono[:, k] *= sizes[v] ** e
        vals = mono @ np.array(self.numerators, dtype=np.int64).T
        dens = np.array(self.denominators, dtype=np.int64)
        ok = (vals % dens == 0).all(axis=1)
        return vals // dens, ok


@dataclass(frozen=True)
class Piece:
    """One interval [lo, hi] of the context axis and its polynomial (None: counted directly)."""

    lo: int
    hi: int
    poly: Poly | None


def _degrees(group: Group, extra: int) -> dict[str, int]:
    base = {"batch": 1, "context": 1 if group.decode else 2, "queries": 2}
    return {v: base[v] + extra for v in group.variables}


def _grid(group: Group, lo: int, hi: int, deg: dict[str, int]) -> list[list[int]] | None:
    """Interpolation nodes per variable (group.variables order) inside the interval, or None (too short)."""
    q_nodes = list(range(2, deg["queries"] + 3)) if "queries" in deg else [group.queries]
    axes = {"batch": list(range(1, deg["batch"] + 2)), "queries": q_nodes}
    if "context" in deg:
        l_nodes = []
        for length in range(lo, min(hi, lo + 64 * group.chunks + 64) + 1):
            if all(group.valid(1, length, q) for q in q_nodes):
                l_nodes.append(length)
                if len(l_nodes) == deg["context"] + 1:
                    break
        if len(l_nodes) < deg["context"] + 1:
            return None
        axes["context"] = l_nodes
    return [axes[v] for v in group.variables]


def _counted(group: Group, s: tuple[int, ...]) -> tuple[int, ...]:
    """The graph's counts at one grid point (values in group.variables order)."""
    sizes = dict(zip(group.variables, s, strict=True))
    return direct(group, sizes["batch"], sizes.get("context", group.context), sizes.get("queries", group.queries))


def _fit(group: Group, lo: int, hi: int, form: str, rng: random.Random) -> Poly | None:
    """The polynomial of one interval, fitted on nodes inside it and verified at random sizes inside it. Forms:
    "affine" c + B g(L, Q), every count's batch-independent part a constant (the weights; 1 + |grid of L, Q| graphs);
    "grid" the tensor grid of `_degrees`; "grid+1" one degree more in every variable."""
    deg = _degrees(group, 1 if form == "grid+1" else 0)
    axes = _grid(group, lo, hi, deg)
    if axes is None:
        return None
    if form == "affine":  # f(1, x) = c + g(x) on the grid of the other sizes, f(2, x0) = c + 2 g(x0)
        rest = axes[1:]
        ones = {x: _counted(group, (1, *x)) for x in product(*rest)}
        x0 = next(iter(ones))
        c = [2 * a - b for a, b in zip(ones[x0], _counted(group, (2, *x0)), strict=True)]
        g = {tuple(r.index(v) for r, v in zip(rest, x, strict=True)): [a - k for a, k in zip(f, c, strict=True)]
             for x, f in ones.items()}  # fmt: skip
        coeff = {(1, *e): vec for e, vec in _solve(rest, g).items()} if rest else {(1,): [Fraction(v) for v in g[()]]}
        coeff[(0,) * len(axes)] = [Fraction(v) for v in c]
        poly = Poly.from_coefficients(group.variables, coeff)
        axes[0] = [1, 2]
    else:
        values = {idx: _counted(group, tuple(a[k] for a, k in zip(axes, idx, strict=True)))
                  for idx in product(*(range(len(a)) for a in axes))}  # fmt: skip
        poly = Poly.from_coefficients(group.variables, _solve(axes, values))
    # a check is off the nodes in every variable that has sizes off them (a context interval can be all nodes)
    nodes = {v: set(a) for v, a in zip(group.variables, axes, strict=True)}
    if "context" in nodes and not any(group.valid(1, x, max(axes[-1]) if "queries" in nodes else group.queries)
                                      for x in range(lo, min(hi, lo + 64 * group.chunks + 64) + 1)
                                      if x not in nodes["context"]):  # fmt: skip
        del nodes["context"]
    checks = 0
    for attempt in range(400):  # draws outside the domain the polynomial serves cost no graph
        s = _random_sizes(group, lo, hi, rng, log=attempt % 2 == 0)
        if s is None or any(s[v] in nodes[v] for v in nodes):
            continue
        got = poly.exact(s)
        if got is not None and got[-1] >= DIRECT_ABOVE:
            continue
        try:
            want = direct(group, s["batch"], s["context"], s["queries"])
        except (ValueError, OverflowError):  # a graph too large to build: not in the domain either
            continue
        if got != want:
            return None
        checks += 1
        if checks == VERIFY_POINTS:
            return poly
    return None


def _draw(rng: random.Random, lo: int, hi: int, log: bool) -> int:
    if log:
        return min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))))
    return rng.randint(lo, hi)


def _random_sizes(group: Group, lo: int, hi: int, rng: random.Random, log: bool) -> dict[str, int] | None:
    """Valid sizes inside the piece's box, or None (the caller draws again)."""
    b = _draw(rng, 1, MAX_BATCH, log)
    if group.context is not None:
        length = group.context
    else:
        length = _draw(rng, lo, hi, log)
        c = group.chunks
        if c > 1 and length - length % c >= lo:  # the keys' lattice, where keys follow the context
            length = rng.choice((length, length - length % c))
    if group.queries is None and length < 2:
        return None
    q = group.queries if group.queries is not None else _draw(rng, 2, min(length, MAX_CONTEXT), True)
    return {"batch": b, "context": length, "queries": q} if group.valid(b, length, q) else None


_PIECES: dict[Group, tuple[Piece, ...]] = {}


def pieces(group: Group) -> tuple[Piece, ...]:
    """The group's polynomial pieces along the context axis (one piece when the context is fixed); derived once per
    process (`derive`), or given by `remember` (the sweep's disk cache of derived pieces, `sweeps/fast.py`)."""
    got = _PIECES.get(group)
    if got is None:
        got = _PIECES[group] = derive(group)
    return got


def remember(group: Group, found: tuple[Piece, ...]) -> None:
    _PIECES[group] = found


pieces.cache_clear = _PIECES.clear  # the functools.cache API the benchmark and tests use


def derive(group: Group) -> tuple[Piece, ...]:
    """Fit and verify the group's pieces from its graphs (the module docstring)."""
    seed = int(hashlib.sha256(repr(group).encode()).hexdigest()[:16], 16)
    rng = random.Random(seed)
    if group.context is not None:
        bounds = [(group.context, group.context)]
    else:
        ends = [*group.cuts(), MAX_CONTEXT]
        bounds, lo = [], 1 if group.decode else 2  # prefill's S = 1 is a group of its own
        for end in ends:
            if end >= lo:
                bounds.append((lo, min(end, MAX_CONTEXT)))
                lo = end + 1
    out = []
    for lo, hi in bounds:
        poly = None
        for form in FORMS:
            poly = _fit(group, lo, hi, form, rng)
            if poly is not None:
                break
        out.append(Piece(lo, hi, poly))
    return tuple(out)


def describe(group: Group) -> list[str]:
    """One line per piece: its interval and whether it is a polynomial or counted directly (reports, tests)."""
    return [f"[{p.lo}, {p.hi}]: " + ("polynomial" if p.poly else "direct") for p in pieces(group)]


def counts(group: Group, batch: list[int], context: list[int], queries: list[int]) -> list[tuple[int, ...]]:
    """The COUNTS of `group` at each (batch, context, queries): equal to `count(build(spec))` at those sizes
    (which the caller has checked with `Group.valid`)."""
    n = len(batch)
    out: list[tuple[int, ...] | None] = [None] * n
    ps = pieces(group)
    if n and max(max(batch), max(context), max(queries)) < 2**62:
        b, c, q = (np.array(v, dtype=np.int64) for v in (batch, context, queries))
        k = np.zeros(n, dtype=np.int64) if group.context is not None else np.searchsorted([p.hi for p in ps], c)
        ok = k < len(ps)
        k = np.minimum(k, len(ps) - 1)
        ok &= (c >= np.array([p.lo for p in ps])[k]) & (b <= MAX_BATCH) & (c <= MAX_CONTEXT) & (q <= MAX_CONTEXT)
        ok &= np.array([p.poly is not None for p in ps])[k]
        if group.context is not None:
            ok &= c == group.context
        if group.queries is not None:
            ok &= q == group.queries
        for piece in np.unique(k[ok]).tolist():
            sel = np.flatnonzero(ok & (k == piece))
            poly = ps[piece].poly
            sizes = {"batch": b[sel], "context": c[sel], "queries": q[sel]}
            if poly.bound({v: int(sizes[v].max()) for v in poly.variables}) <= INT64_LIMIT:
                vals, good = poly.evaluate({v: sizes[v] for v in poly.variables})
                good &= vals[:, -1] < DIRECT_ABOVE
                for i, t in zip(sel[good].tolist(), map(tuple, vals[good].tolist()), strict=True):
                    out[i] = t
            else:  # beyond int64: Python integers
                for i in sel.tolist():
                    got = poly.exact({"batch": batch[i], "context": context[i], "queries": queries[i]})
                    if got is not None and got[-1] < DIRECT_ABOVE:
                        out[i] = got
    for i in range(n):
        if out[i] is None:  # outside every verified piece, or not exactly evaluable: the graph itself
            out[i] = direct(group, batch[i], context[i], queries[i])
    return out
