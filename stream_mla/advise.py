"""`stream-mla advise`: which attention scheme to use for a model on a platform at one runtime point, and why.

Every scheme that applies to the model is costed by `run_point` (the analytic roofline with first-order energy:
the rows a sweep stores), ranked by latency (then energy), and explained from its own numbers: memory- or
compute-bound (operational intensity against the platform's ridge), the margin to the next scheme, and the
contexts L* where the two swap. Decode MACs and bytes are affine in L, so each scheme's two roofline times
(MACs / peak, bytes / bandwidth) are lines in L, fitted exactly on two contexts and checked on a third; the
crossings of the two latencies max(compute, memory) are solved exactly, branch against branch, and each is
confirmed by a direct evaluation at the whole contexts on its two sides (a sparse top-k bends the lines).
"""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

import pandas as pd
import pydantic

from stream_mla.engines import registry as engine_registry
from stream_mla.errors import SpecError, first_error
from stream_mla.models import resolve_name_or_path
from stream_mla.sweeps.points import SweepPoint, run_point
from stream_mla.workloads import registry

ENGINES = ("analytic", "stream")  # ranking is analytic; stream confirms the top two
NEAR = Fraction(1, 10**6)  # relative offset probing each side of a crossing (far below any breakpoint spacing)


@dataclass(frozen=True)
class Line:
    """y = a + b·L, in exact rationals."""

    a: Fraction
    b: Fraction

    @classmethod
    def through(cls, l0: int, y0: Fraction, l1: int, y1: Fraction) -> "Line":
        b = (y1 - y0) / (l1 - l0)
        return cls(y0 - b * l0, b)

    def at(self, L: Fraction) -> Fraction:
        return self.a + self.b * L

    def meets(self, other: "Line") -> Fraction | None:
        return None if self.b == other.b else (other.a - self.a) / (self.b - other.b)

    def scaled(self, k: Fraction) -> "Line":
        return Line(self.a * k, self.b * k)


@dataclass(frozen=True)
class Times:
    """A decode step's roofline times as lines in L: MACs / peak MAC/s and DRAM bytes / bandwidth."""

    compute: Line
    memory: Line

    def at(self, L: Fraction) -> Fraction:
        return max(self.compute.at(L), self.memory.at(L))


@dataclass(frozen=True)
class Advice:
    rank: int
    scheme: str
    label: str
    model: str
    platform: str
    phase: str
    batch: int
    context: int
    precision: str  # weights' precision (the KV cache's and activations' follow unless set)
    peak_flop_per_s: float  # at the workload's compute precision
    dram_bytes_per_s: float
    ridge: float  # FLOP/B
    latency_s: float  # analytic roofline
    energy_pj: float  # first-order: MACs x pJ/MAC + DRAM bits x pJ/bit
    bound: str  # memory or compute
    oi: float  # FLOP/B
    next_scheme: str | None  # the next-ranked scheme
    margin: float | None  # T_next / T_this
    crossovers: tuple[float, ...]  # contexts L* where this scheme and the next swap (decode)
    reason: str
    confirmed_by: str | None = None  # engine that re-ran the top two (--engine stream)
    confirmed_latency_s: float | None = None


# ---------------------------------------------------------------------------------------------- crossings
def fit(rows: Iterable[Mapping]) -> Times | None:
    """Exact lines through one scheme's rows at their first two contexts; None with fewer than two, or when
    another context is off the lines (a sliding window caps the cache)."""
    by_l = sorted({int(r["context"]): r for r in rows}.items())
    if len(by_l) < 2:
        return None
    (l0, r0), (l1, r1) = by_l[:2]
    lines = {c: Line.through(l0, Fraction(int(r0[c])), l1, Fraction(int(r1[c]))) for c in ("macs", "dram_bytes")}
    if any(lines[c].at(Fraction(L)) != int(r[c]) for L, r in by_l[2:] for c in lines):
        return None
    peak_mac, bw = Fraction(float(r0["peak_flop_per_s"])) / 2, Fraction(float(r0["dram_bytes_per_s"]))
    return Times(lines["macs"].scaled(1 / peak_mac), lines["dram_bytes"].scaled(1 / bw))


def _sign(x: Times, y: Times, L: Fraction) -> int:
    d = x.at(L) - y.at(L)
    return (d > 0) - (d < 0)


def crossings(x: Times, y: Times) -> tuple[float, ...]:
    """Contexts L > 0 where the order of the two latencies changes (a crossing, or the end of a tie): each branch
    of x against each branch of y, kept where both branches are the active ones and the sign of T_x - T_y differs
    on the two sides."""
    out = set()
    for u in (x.compute, x.memory):
        for v in (y.compute, y.memory):
            L = u.meets(v)
            if L is None or L <= 0 or u.at(L) != x.at(L) or v.at(L) != y.at(L):
                continue
            if _sign(x, y, L * (1 - NEAR)) != _sign(x, y, L * (1 + NEAR)):
                out.add(L)
    return tuple(float(L) for L in sorted(out))


def _regime(x: Times, y: Times, cross: tuple[float, ...], L: float, label_y: str) -> list[str]:
    """What happens past the nearest crossing on each side of L: 'below L* = 3,309 they tie'."""
    below, above = [c for c in cross if c < L], [c for c in cross if c > L]
    parts = []
    for side, c, probe in (("below", below[-1] if below else None, -1), ("above", above[0] if above else None, 1)):
        if c is None:
            continue
        s = _sign(x, y, Fraction(c) * (1 + probe * Fraction(1, 1000)))
        what = "they tie" if s == 0 else f"{label_y} is faster" if s > 0 else "it is faster"
        parts.append(f"{side} L* = {c:,.0f} {what}")
    return parts


# ---------------------------------------------------------------------------------------------- ranking
def _g(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _reason(r: Mapping, nxt: Mapping | None, regime: list[str]) -> str:
    mem = r["bound"] == "memory"
    s = (f"{r['bound']}-bound: OI {_g(r['oi'])} FLOP/B is {'below' if mem else 'at or above'} the ridge "
         f"{_g(r['ridge'])} FLOP/B")  # fmt: skip
    if nxt is None:
        return s + "; the slowest of the schemes."
    label, margin = registry.label(nxt["scheme"]), nxt["latency_s"] / r["latency_s"]
    if margin == 1:
        s += f"; ties with {label} on latency and uses {nxt['energy_pj'] / r['energy_pj']:.2f}x less energy"
    else:
        s += f"; {margin:.2f}x faster than {label}"
    return s + "".join(f"; {p}" for p in regime) + "."


Verify = Callable[[str, str, tuple[float, ...]], tuple[float, ...]]


def _advice(
    rank: int, r: Mapping, nxt: Mapping | None, fits: Mapping[str, Times | None], verify: Verify | None
) -> Advice:
    fx, fy = fits.get(r["scheme"]), fits.get(nxt["scheme"]) if nxt else None
    cross = crossings(fx, fy) if fx and fy else ()
    cross = verify(r["scheme"], nxt["scheme"], cross) if cross and verify else cross
    regime = _regime(fx, fy, cross, float(r["context"]), registry.label(nxt["scheme"])) if cross else []
    return Advice(
        rank, r["scheme"], registry.label(r["scheme"]), r["model"], r["platform"], r["phase"], int(r["batch"]),
        int(r["context"]), r["precision"], float(r["peak_flop_per_s"]), float(r["dram_bytes_per_s"]),
        float(r["ridge"]), float(r["latency_s"]), float(r["energy_pj"]), r["bound"], float(r["oi"]),
        nxt["scheme"] if nxt else None, float(nxt["latency_s"] / r["latency_s"]) if nxt else None, cross,
        _reason(r, nxt, regime),
    )  # fmt: skip


def rank(rows: Sequence[Mapping], fits: Mapping[str, Times | None] | None = None,
         verify: Verify | None = None) -> tuple[Advice, ...]:  # fmt: skip
    """The rows of one point (one per scheme) ranked by latency, then energy, then registry order; crossings from
    the fits, kept where `verify` (if given) confirms them."""
    order = sorted(rows, key=lambda r: (r["latency_s"], r["energy_pj"], registry.NAMES.index(r["scheme"])))
    nxt = [*order[1:], None]
    return tuple(_advice(i + 1, r, n, fits or {}, verify) for i, (r, n) in enumerate(zip(order, nxt, strict=True)))


# ---------------------------------------------------------------------------------------------- the command
def _point(fields: dict) -> SweepPoint:
    try:
        return SweepPoint(**fields)
    except pydantic.ValidationError as exc:
        raise first_error(exc, as_flags=True) from None


def points(model: str, platform: str, kv_heads: int | None = None, **fields) -> list[SweepPoint]:
    """One analytic point per scheme that applies to the model. gqa on a model with n_kv = h would be MHA:
    it is left out unless kv_heads is given."""
    m = resolve_name_or_path(model)
    schemes = [s for s in registry.applicable(m) if s != "gqa" or kv_heads or m.n_kv != m.heads]
    return [_point({"model": model, "platform": platform, "scheme": s, **fields,
                    **({"kv_heads": kv_heads} if s == "gqa" else {})}) for s in schemes]  # fmt: skip


def _fit_point(p: SweepPoint, row: dict) -> Times | None:
    """The scheme's lines in L from its row and two more contexts (2L and 3L); none for prefill or a window."""
    if p.phase != "decode" or p.workload().attention_window:
        return None
    more = [run_point(p.model_copy(update={"context": k * p.context})) for k in (2, 3)]
    return fit([row, *more])


def _verifier(by_scheme: dict[str, SweepPoint]) -> Verify:
    """Keep a crossing only where a direct evaluation at the whole contexts around it shows the order change: the
    lines are exact where the counts are affine in L, which a sparse top-k (or a window) bends below its size."""

    def order(x: str, y: str, L: int) -> int:
        tx, ty = (run_point(by_scheme[s].model_copy(update={"context": L}))["latency_s"] for s in (x, y))
        return (tx > ty) - (tx < ty)

    def verify(x: str, y: str, cross: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(c for c in cross if c >= 1 and order(x, y, math.floor(c)) != order(x, y, math.floor(c) + 1))

    return verify


def _confirm(ranked: tuple[Advice, ...], by_scheme: dict[str, SweepPoint], engine: str) -> tuple[Advice, ...]:
    """Re-run the top two with the engine (slow) and record its latencies next to the roofline's."""
    top = [replace(a, confirmed_by=engine, confirmed_latency_s=float(run_point(
        by_scheme[a.scheme].model_copy(update={"engine": engine}))["latency_s"])) for a in ranked[:2]]  # fmt: skip
    return (*top, *ranked[2:])


def advise(model: str, platform: str, *, phase: str = "decode", batch: int = 1, context: int = 4096,
           precision: str | None = None, kv_precision: str | None = None, act_precision: str | None = None,
           kv_heads: int | None = None, engine: str = "analytic") -> tuple[Advice, ...]:  # fmt: skip
    """Rank every applicable scheme at one point (the defaults are the CLI's); engine 'stream' also runs the top
    two through Stream. Bad input raises SpecError."""
    if engine not in ENGINES:
        raise SpecError(f"--engine: {engine!r} (allowed: {', '.join(ENGINES)})")
    fields = {"phase": phase, "batch": batch, "context": context, "precision": precision,
              "kv_precision": kv_precision, "act_precision": act_precision}  # fmt: skip
    pts = points(model, platform, kv_heads, **fields)
    rows = [run_point(p) for p in pts]
    fits = {p.scheme: _fit_point(p, r) for p, r in zip(pts, rows, strict=True)}
    by_scheme = {p.scheme: p for p in pts}
    ranked = rank(rows, fits, _verifier(by_scheme))
    return _confirm(ranked, by_scheme, engine) if engine_registry.get(engine).measured else ranked


# ---------------------------------------------------------------------------------------------- from a store
RECOMMEND_CONTEXTS = (1024, 4096, 32768)
POINT_KEYS = ["platform", "model", "batch", "precision", "kv_precision", "act_precision"]


def recommend(df: pd.DataFrame, contexts: Iterable[int] = RECOMMEND_CONTEXTS) -> list[Advice]:
    """The fastest scheme per stored analytic decode point (unscaled bandwidth, smallest batch) at the given
    contexts, explained against the runner-up; crossings from the stored rows at every context."""
    d = df[(df["engine"] == "analytic") & (df["phase"] == "decode") & (df["bw_scale"] == 1.0)]
    d = d[d["batch"] == d["batch"].min()] if len(d) else d
    out = []
    for _, g in d.groupby(POINT_KEYS, sort=True, dropna=False):
        fits = {s: fit(gs.to_dict(orient="records")) for s, gs in g.groupby("scheme")}
        for L in (c for c in contexts if c in set(g["context"])):
            out.append(rank(g[g["context"] == L].drop_duplicates("scheme").to_dict(orient="records"), fits)[0])
    return out


# ---------------------------------------------------------------------------------------------- rendering
def format_advice(advice: Sequence[Advice]) -> str:
    """The ranking as a table (units in the headers), then one reason per scheme, then any engine confirmation."""
    a = advice[0]
    axis = "L" if a.phase == "decode" else "S"
    lines = [f"{a.model} {a.phase} B={a.batch} {axis}={a.context} {a.precision} on {a.platform} "
             f"(peak {a.peak_flop_per_s / 1e12:.4g} TFLOP/s, DRAM {a.dram_bytes_per_s / 1e9:.4g} GB/s, ridge "
             f"{_g(a.ridge)} FLOP/B)",
             "ranked by the overlapped roofline latency per layer and step (a device that runs the steps in turn "
             "attains the serial roofline: run --engine analytic --strategy serial); energy first-order (MACs and "
             "DRAM bits)",
             f"{'rank':<5}{'scheme':<17}{'latency ms':>11}{'energy mJ':>11}  {'bound':<8}{'OI FLOP/B':>10}  "
             "margin"]  # fmt: skip
    for x in advice:
        margin = f"{x.margin:.2f}x vs {registry.label(x.next_scheme)}" if x.next_scheme else "-"
        lines.append(f"{x.rank:<5}{x.label:<17}{x.latency_s * 1e3:>11.4g}{x.energy_pj / 1e9:>11.4g}  {x.bound:<8}"
                     f"{_g(x.oi):>10}  {margin}")  # fmt: skip
    lines += ["", *(f"{x.rank}. {x.label}: {x.reason}" for x in advice)]
    lines += _confirmation(advice)
    return "\n".join(lines) + "\n"


def _confirmation(advice: Sequence[Advice]) -> list[str]:
    top = [a for a in advice if a.confirmed_latency_s is not None]
    if len(top) < 2:
        return []
    runs = ", ".join(f"{a.label} {a.confirmed_latency_s * 1e3:.4g} ms ({a.confirmed_latency_s / a.latency_s:.2f}x "
                     "its roofline)" for a in top)  # fmt: skip
    same = top[0].confirmed_latency_s <= top[1].confirmed_latency_s
    return ["", f"{top[0].confirmed_by}: {runs}: {'confirms' if same else 'reverses'} the order of the top two."]
