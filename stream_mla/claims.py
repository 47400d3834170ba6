"""The propositions C1-C4 of attention-schemes.md §8 as data, tested on the stored result rows.

Every check is one frozen `Check` record: the quantity, the engine whose rows it reads (analytic, stream, zigzag
or stream:<strategy>), the measured value, the prediction and how they compare, the verdict, the evidence (rows'
keys and values) and, for a FAIL, a reason computed from the rows. Computation (row selection, arithmetic,
verdict) is the first half of this module; text, JSON and the summary table are rendered from the records only
(the HTML in report.py too). Measured numbers come from the rows; predictions are the spec's numbers in the
tables below, or closed forms evaluated on the rows. A quoted prediction whose rows are absent is NO DATA.
"""

import json
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from stream_mla.figures import ENGINES, MODEL, PLATFORMS, bandwidth_sweep, ok_rows, ordered, select
from stream_mla.figures import short as model_short
from stream_mla.models import BYTES_PER_ELEMENT
from stream_mla.models import PRESETS as MODEL_PRESETS
from stream_mla.workloads.registry import short

PASS, FAIL, NO_DATA = "PASS", "FAIL", "NO DATA"
ANALYTIC = "analytic"
TOL = 0.10  # §8.2 C1/C2: within 10 %
TIE = 0.05  # §8.2 C3a: within 5 %
SLACK = 1e-9  # float rounding where the spec's relation is exact ("never faster", the crossover rule)
EVIDENCE = 5  # points kept as evidence of a check over many points (the worst first)

STATEMENTS = {
    "C1": "MLA cuts decode DRAM traffic compared with MHA",
    "C2": "MLA moves decode attention towards the compute-bound regime",
    "C3a": "absorb vs recompute: tie while memory-bound, recompute slower beyond L*",
    "C3b": "recompute vs naive (store vs recompute K/V): winner flips with the platform ridge",
    "C3c": "merged per-step vs merged (reuse): winner flips with the platform ridge",
    "C4": "MLA is more stable than MHA across platforms and as L grows",
}
ANALYTIC_ONLY = {"C2"}  # OI is a property of the workload: the engines only change the attained fraction of the roof
# Quoted predictions (attention-schemes.md §8.2 and §7.1), V3 decode.
C1_RATIOS = {(1, 1024): 2.68, (1, 4096): 3.19, (1, 32768): 7.49, (32, 4096): 18.2}
C1_ENGINE_SCHEMES = ("mla-absorb", "mla-recompute")  # C1's test: engine DRAM bytes of these within 10 %
C2_OI = {  # §7.1
    1024: {"mha": 1.0, "mla-naive": 1.0, "mla-absorb": 1.8, "mla-recompute": 92.7, "mla-merged": 1.2,
           "mla-merged-per-step": 393},
    4096: {"mha": 1.0, "mla-naive": 1.0, "mla-absorb": 4.0, "mla-recompute": 364, "mla-merged": 1.9,
           "mla-merged-per-step": 392},
    32768: {"mha": 1.0, "mla-naive": 1.0, "mla-absorb": 23.1, "mla-recompute": 2676, "mla-merged": 8.4,
            "mla-merged-per-step": 380},
}  # fmt: skip
C2_MEMORY_BOUND = ("mha", "mla-naive", "mla-absorb", "mla-merged")  # on every preset at B = 1 (§8.2 C2)
C3A_LSTAR = {"h20-like": 402, "edge-npu": 703, "tpu-v5e-like": 2682, "h100-like": 3309, "cloud-fusemax": 3453}
PAIRS = {  # claim: (X does more FLOPs, Y moves more bytes, R* at B=1 L=4k quoted, platforms where X wins)
    "C3b": ("mla-recompute", "mla-naive", (195.0, 195.0), {"cloud-fusemax", "tpu-v5e-like", "h100-like"}),
    "C3c": ("mla-merged-per-step", "mla-merged", (123.0, 127.0), {"cloud-fusemax", "tpu-v5e-like", "h100-like"}),
}
C4_GROWTH = {"mha": 3.07, "mla-naive": 6.68, "mla-absorb": 1.10, "mla-merged": 1.03}  # T(32k)/T(1k), B = 1
C4_GROWTH_TEST = {"mha": ("≥", 3.0), "mla-absorb": ("≤", 1.2)}  # §8.2 C4's test: MHA ≥ 3x, absorb ≤ 1.2x
C4_GAP_B32 = {"cloud-fusemax": 18.2, "tpu-v5e-like": 18.2, "h100-like": 18.2, "edge-npu": 12.6, "h20-like": 7.3}
C4_HIGH = tuple(p for p, v in C4_GAP_B32.items() if v == max(C4_GAP_B32.values()))  # where MLA gains most
C4_LOW = min(C4_GAP_B32, key=C4_GAP_B32.get)  # where it gains least (bandwidth plentiful relative to compute)

RELATIONS: dict[str, Callable[[float, float, float], bool]] = {
    "≈": lambda m, p, t: abs(m / p - 1) <= t,
    "≤": lambda m, p, t: m <= p * (1 + t),
    "≥": lambda m, p, t: m >= p * (1 - t),
    "<": lambda m, p, t: m < p,
    ">": lambda m, p, t: m > p,
}


# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Evidence:
    where: str  # what and where: scheme, column or ratio, platform, batch, context
    value: float
    key: str = ""  # the store row holding the value, where one row does


@dataclass(frozen=True)
class Check:
    claim: str
    statement: str
    quantity: str
    engine: str
    measured: float | None  # None: the rows for this quantity are absent
    predicted: float | tuple[float, float]  # a value, or a quoted range (lo, hi)
    relation: str  # how measured compares with predicted (RELATIONS)
    tolerance: float  # relative; for ≈ (and the slack of ≤ / ≥)
    verdict: str  # PASS, FAIL or NO DATA
    evidence: tuple[Evidence, ...] = ()
    reason: str = ""  # a FAIL's one-sentence explanation, from the rows
    note: str = ""  # context computed from the rows (e.g. which reference an engine's bytes match)
    # an engine check judged on the serial model (§8.0): the quantity on the overlapped roofline and on the serial one
    overlapped: float | None = None
    serial: float | None = None


@dataclass(frozen=True)
class EngineVerdict:
    engine: str
    verdict: str  # FAIL if any of its checks fails, PASS if any passes, else NO DATA
    passed: int
    failed: int
    reason: str  # the first FAIL's reason


@dataclass(frozen=True)
class ClaimSummary:
    claim: str
    statement: str
    verdict: str  # overall: FAIL if any engine fails, else PASS if any passes, else NO DATA
    engines: tuple[EngineVerdict, ...]  # analytic first, then every engine in the rows that the claim tests


@dataclass(frozen=True)
class ClaimResults:
    checks: tuple[Check, ...]
    summaries: tuple[ClaimSummary, ...]
    engines: tuple[str, ...]  # engines present in the rows, analytic first

    def summary(self, claim: str) -> ClaimSummary:
        return next(s for s in self.summaries if s.claim == claim)

    def of(self, claim: str, engine: str | None = None) -> list[Check]:
        return [c for c in self.checks if c.claim == claim and engine in (None, c.engine)]


def holds(measured: float, predicted: float | tuple[float, float], relation: str, tol: float) -> bool:
    if isinstance(predicted, tuple):  # a quoted range: within tol of it
        return predicted[0] * (1 - tol) <= measured <= predicted[1] * (1 + tol)
    return bool(RELATIONS[relation](measured, predicted, tol))


def _excess(m: float, p: float, relation: str) -> float:
    """How far a value is towards breaking the relation (larger is worse): orders the points of a check."""
    return abs(m / p - 1) if relation == "≈" else m / p if relation in "≤<" else -m / p


def _check(claim: str, quantity: str, engine: str, measured, predicted, relation: str = "≈", tol: float = TOL,
           evidence: Iterable[Evidence] = (), reason: str | Callable[[], str] = "", note: str = "",
           detail: Callable[[], str] | None = None, models: tuple[float, float] | None = None) -> Check:  # fmt: skip
    """The record, its verdict from (measured, predicted, relation, tol); on FAIL the reason is kept (or computed)
    and `detail` (an engine row's full diagnostics) becomes the note. models: the quantity on the overlapped and on
    the serial roofline, for an engine check judged on the serial model."""
    predicted = tuple(map(float, predicted)) if isinstance(predicted, tuple) else float(predicted)
    if isinstance(predicted, tuple) and predicted[0] == predicted[1]:
        predicted = predicted[0]
    tol = tol if relation in "≈≤≥" else 0.0
    m = None if measured is None or pd.isna(measured) else float(measured)
    verdict = NO_DATA if m is None else PASS if holds(m, predicted, relation, tol) else FAIL
    why = "" if verdict != FAIL else reason() if callable(reason) else reason
    note = detail() if verdict == FAIL and detail else note
    finite = models is not None and all(np.isfinite(models))
    overlapped, serial = (float(models[0]), float(models[1])) if finite else (None, None)
    c = Check(claim, STATEMENTS[claim], quantity, engine, m, predicted, relation, tol, verdict, tuple(evidence),
              why, note, overlapped, serial)  # fmt: skip
    return c if verdict != FAIL or why else _with_default_reason(c)


def _with_default_reason(c: Check) -> Check:
    return replace(c, reason=f"{c.quantity} is {fmt_value(c.measured)}, not {expectation(c)}.")


def _forall(claim: str, quantity: str, engine: str, points: list[Evidence], predicted: float, relation: str,
            tol: float = 0.0, note: str = "") -> Check:  # fmt: skip
    """One check over many points: measured is the worst point's value (the one nearest to breaking it)."""
    if not points:
        return _check(claim, quantity, engine, None, predicted, relation, tol)
    worst = sorted(points, key=lambda e: -_excess(e.value, predicted, relation))
    bad = [e for e in worst if not holds(e.value, predicted, relation, tol)]
    reason = f"{len(bad)} of {len(points)} points break it, worst {bad[0].where}: {_g(bad[0].value)}." if bad else ""
    return _check(claim, f"{quantity} ({len(points)} points)", engine, worst[0].value, predicted, relation, tol,
                  worst[:EVIDENCE], reason, note)  # fmt: skip


# ---------------------------------------------------------------------------------------------- row helpers
def _g(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _k(L: int) -> str:
    return f"{L // 1024}k" if L % 1024 == 0 and L >= 1024 else str(L)


def _one(d: pd.DataFrame, **eq) -> pd.Series | None:
    s = select(d, **eq)
    return s.iloc[0] if len(s) else None


def _decode(df: pd.DataFrame, engine: str = ANALYTIC) -> pd.DataFrame:
    return df[(df["engine"] == engine) & (df["phase"] == "decode")] if engine else df[df["phase"] == "decode"]


def _at(r) -> str:
    """Where a row (or a pair of rows) sits: model (if not V3), platform, bandwidth scale, batch, context."""
    bw = "" if np.isclose(float(r["bw_scale"]), 1.0) else f"@bw{float(r['bw_scale']):g}"
    model = "" if r["model"] == MODEL else f"{model_short(r['model'])} "
    return f"{model}{r['platform']}{bw} B={int(r['batch'])} L={_k(int(r['context']))}"


def _ev(r: pd.Series, col: str) -> Evidence:
    return Evidence(f"{short(r['scheme'])} {col} {_at(r)}", float(r[col]), str(r["key"]))


def _util(r: pd.Series) -> str:
    """Why an engine row departs from the roofline, from the row itself: attained fraction of the roof, DRAM bytes
    against the analytic (perfect reuse) and layer-by-layer (no reuse between steps) references, the step that
    took most cycles, and the step that re-fetched most bytes beyond its own inputs and outputs."""
    parts = [f"T/roofline {r['latency_s'] / r['roofline_s']:.2f}"]
    if pd.notna(r.get("engine_dram_bytes")) and r["dram_bytes"]:
        dram = f"DRAM engine/analytic {r['engine_dram_bytes'] / r['dram_bytes']:.2f}"
        if pd.notna(r.get("layer_by_layer_bytes")):
            dram += f" (layer-by-layer {r['layer_by_layer_bytes'] / r['dram_bytes']:.2f})"
        parts.append(dram)
    if pd.notna(r.get("hotspot")) and r["hotspot"] and pd.notna(r.get("hotspot_mac_util")):
        share, util = r["hotspot_cycle_share"], r["hotspot_mac_util"]
        parts.append(f"{step_name(r['hotspot'])} {share:.0%} of cycles at {util:.1%} of peak MAC/s")
    return ", ".join([*parts, _refetch(r)] if _refetch(r) else parts)


def step_name(name: str, keep: int = 3) -> str:
    """A costed step's name, short: a fused group of many nodes ("a+b+...+z") as its first and last node and how
    many it fuses, so that a sentence naming it stays readable."""
    nodes = str(name).split("+")
    return name if len(nodes) <= keep else f"{nodes[0]}+…+{nodes[-1]} (a fused group of {len(nodes)} nodes)"


def _refetch(r: pd.Series) -> str:
    excess = r.get("excess_bytes")
    if pd.isna(excess) or excess <= 0.01 * r["dram_bytes"]:
        return ""
    return f"{step_name(r['excess_step'])} re-fetches {excess / 1e6:.1f} MB beyond its inputs and outputs"


def _headline(r: pd.Series) -> str:
    """An engine row's departure from the roofline in a few words: its time and bytes against the analytic ones,
    and the step that re-fetched most (else the step that took most cycles)."""
    parts = [f"{r['latency_s'] / r['roofline_s']:.2f}x its roofline"]
    if (serial := _serial(r)) is not None:
        parts.append(f"{r['latency_s'] / serial:.2f}x its serial bound")
    if pd.notna(r.get("engine_dram_bytes")) and r["dram_bytes"]:
        parts.append(f"{r['engine_dram_bytes'] / r['dram_bytes']:.2f}x the analytic bytes")
    hot = pd.notna(r.get("hotspot")) and r["hotspot"] and pd.notna(r.get("hotspot_mac_util"))
    extra = _refetch(r) or (f"{step_name(r['hotspot'])} at {r['hotspot_mac_util']:.0%} of peak MAC/s" if hot else "")
    return ", ".join([*parts, extra] if extra else parts)


def _serial(r: pd.Series) -> float | None:
    """An engine row's serial roofline (s, attention-schemes.md §8.0): the layer's steps in turn, each at its own
    roofline (`workloads/steps.serial_roofline_s`); None on a row without one."""
    v = r.get("serial_bound_s")
    return float(v) if v is not None and pd.notna(v) and v > 0 else None


def execution_finding(what: str, overlapped: float, serial: float, tol: float = TIE) -> str:
    """The gap between the two execution models (§8.0) for a quantity, as one sentence; empty where they agree
    within `tol`."""
    if not (np.isfinite(serial) and np.isfinite(overlapped)) or abs(serial / overlapped - 1) <= tol:
        return ""
    return (
        f"Execution model: {what} is {serial:.2f} with the steps run in turn against {overlapped:.2f} on the "
        "overlapped roofline, which no step-by-step device attains."
    )


def _elements(r: pd.Series, col: str) -> float:
    prec = r.get("precision")
    per = BYTES_PER_ELEMENT[prec] if isinstance(prec, str) and prec in BYTES_PER_ELEMENT else 2
    return float(r[col]) / per


# ---------------------------------------------------------------------------------------------- C1
def spill_bytes(model: str, batch: int, context: int) -> float:
    """§5.3 spill term of mla-recompute: 2·B·L·h·(d_n + d_v) elements if R1/R2 outputs leave the chip."""
    m = MODEL_PRESETS.get(model)
    if m is None or not m.is_mla:
        return np.nan
    return 2 * batch * context * m.heads * (m.qk_nope_head_dim + m.v_head_dim) * m.bytes_per_element


def claim_c1(df: pd.DataFrame) -> list[Check]:
    a = select(_decode(df), model=MODEL, bw_scale=1.0)
    e = _decode(df, engine="")
    e = e[(e["engine"] != ANALYTIC) & e["scheme"].isin(C1_ENGINE_SCHEMES) & (e["engine_dram_bytes"].fillna(0) > 0)]
    return [
        *(_c1_ratio(a, b, L, pred) for (b, L), pred in C1_RATIOS.items()),
        *(_c1_engine(r) for _, r in e.iterrows()),
    ]


def _c1_ratio(a: pd.DataFrame, b: int, L: int, pred: float) -> Check:
    mha, ab = (_one(a, scheme=s, batch=b, context=L) for s in ("mha", "mla-absorb"))
    quantity = f"mha/absorb DRAM bytes, V3 B={b} L={_k(L)}"
    if mha is None or ab is None:
        return _check("C1", quantity, ANALYTIC, None, pred)
    return _check("C1", quantity, ANALYTIC, mha["dram_bytes"] / ab["dram_bytes"], pred,
                  evidence=(_ev(mha, "dram_bytes"), _ev(ab, "dram_bytes")), note=_weights_note(mha, ab))  # fmt: skip


def _weights_note(mha: pd.Series, ab: pd.Series) -> str:
    """Part of the gain is MLA's smaller projection weights, not the cache (§8.2 C1): how much, from the rows."""
    saved = (mha["weight_bytes"] - ab["weight_bytes"]) / (mha["dram_bytes"] - ab["dram_bytes"])
    return (f"projection weights {_elements(ab, 'weight_bytes') / 1e6:.0f} M (absorb) vs "
            f"{_elements(mha, 'weight_bytes') / 1e6:.0f} M (mha) elements: {saved:.0%} of the bytes saved")  # fmt: skip


def _references(r: pd.Series) -> dict[str, float]:
    """Engine DRAM bytes the spec explains, as multiples of the analytic bytes: the analytic count itself (perfect
    reuse), plus recompute's re-projected K/V spill (§5.3), and the layer-by-layer exchange (every step's operands
    and result via DRAM, no reuse between steps)."""
    q = r["dram_bytes"]
    refs = {"analytic": 1.0}
    if r["scheme"] == "mla-recompute":
        refs["analytic + §5.3 spill"] = 1 + spill_bytes(r["model"], r["batch"], r["context"]) / q
    if pd.notna(r.get("layer_by_layer_bytes")):
        refs["layer-by-layer exchange"] = r["layer_by_layer_bytes"] / q
    return {k: float(v) for k, v in refs.items() if pd.notna(v)}


def _bytes_reason(r: pd.Series, ratio: float, refs: dict[str, float]) -> str:
    """Why an engine row's DRAM bytes fail C1: where they lie among the spec's references, and the cause the row's own
    diagnostics name (the fused core's planned re-reads, else the step re-fetching most), or that it names none."""
    why = planned_rereads(r) or _refetch(r)
    cause = f"the cause, from the row: {why}" if why else "nothing in the row names its cause"
    return (f"{r['engine']} rows move {ratio:.2f}x the analytic bytes, which matches no reference of the spec "
            f"({_bracket(ratio, refs)}); {cause}.")  # fmt: skip


def _bracket(ratio: float, refs: dict[str, float]) -> str:
    """Where a ratio lies among the references: above all, below all, or between the two nearest."""
    below = {k: v for k, v in refs.items() if v <= ratio}
    above = {k: v for k, v in refs.items() if v > ratio}
    if not above:
        k = max(below, key=below.get)
        return f"more than any: the largest is the {k}, {below[k]:.2f}x"
    if not below:
        k = min(above, key=above.get)
        return f"less than any: the smallest is the {k}, {above[k]:.2f}x"
    lo, hi = max(below, key=below.get), min(above, key=above.get)
    return f"between the {lo}, {below[lo]:.2f}x, and the {hi}, {above[hi]:.2f}x"


def planned_rereads(r: pd.Series) -> str:
    """A fused row whose attention core's tiling reads inputs more than once (its strategy record's `core_rereads`:
    the mapping's own loop-nest estimate, `stream_mapping.CorePlan`), named with the bytes that adds and the bytes
    the row moves beyond the analytic ones."""
    records = r.get("strategies")
    record = json.loads(records).get(r.get("strategy"), {}) if isinstance(records, str) and records else {}
    again = record.get("core_rereads")
    if not again:
        return ""
    reads = ", ".join(f"{name} {times}x" for name, times in again.items())
    extra = r["engine_dram_bytes"] - r["dram_bytes"]
    return (f"its fused core's tiling reads {reads} ({record['core_reread_bytes'] / 1e6:,.1f} MB more, estimated; "
            f"the row moves {extra / 1e6:,.1f} MB beyond the analytic bytes): a matrix core's memory does not hold "
            "them across the core's loops, and no on-chip level is shared by the cores")  # fmt: skip


def _c1_engine(r: pd.Series) -> Check:
    ratio, refs = r["engine_dram_bytes"] / r["dram_bytes"], _references(r)
    off = {k: abs(ratio / v - 1) for k, v in refs.items()}
    # the first reference (analytic first) that explains the bytes, else the nearest one
    name = next((k for k in refs if off[k] <= TOL), min(off, key=off.get))
    ref = refs[name]
    return _check(
        "C1", f"engine/analytic DRAM bytes, {short(r['scheme'])} {_at(r)}", r["engine"], ratio, ref,
        evidence=(_ev(r, "engine_dram_bytes"), _ev(r, "dram_bytes")),
        reason=lambda: _bytes_reason(r, ratio, refs),
        note="" if name == "analytic" else f"matches the {name} ({ref:.2f}x)", detail=lambda: _util(r),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- C2
C2_ORDER = (  # mha ≈ naive < merged < absorb ≪ recompute (§8.2 C2's test), as ratios of OI; ≪ taken as ≥ 10x
    ("mha/naive", lambda o: o["mha"] / o["mla-naive"], "≈", 1.0, TOL),
    ("merged/max(mha, naive)", lambda o: o["mla-merged"] / max(o["mha"], o["mla-naive"]), ">", 1.0, 0.0),
    ("absorb/merged", lambda o: o["mla-absorb"] / o["mla-merged"], ">", 1.0, 0.0),
    ("recompute/absorb", lambda o: o["mla-recompute"] / o["mla-absorb"], "≥", 10.0, 0.0),
)
C2_SCHEMES = ("mha", "mla-naive", "mla-merged", "mla-absorb", "mla-recompute")


def claim_c2(df: pd.DataFrame) -> list[Check]:
    a = select(_decode(df), model=MODEL, batch=1, bw_scale=1.0)
    oi = a.groupby(["context", "scheme"])["oi"].first().unstack()
    full = oi.reindex(columns=list(C2_SCHEMES)).dropna()  # contexts holding every scheme of the order
    ls = [L for L in full.index if L >= 1024]
    order = [_forall("C2", f"OI {name}, V3 B=1, every L ≥ 1k", ANALYTIC,
                     [Evidence(f"L={_k(int(L))}", float(f(full.loc[L]))) for L in ls], pred, rel, tol)
             for name, f, rel, pred, tol in C2_ORDER]  # fmt: skip
    quoted = [_c2_oi(a, L, s, p) for L, pred in C2_OI.items() for s, p in pred.items()]
    b4 = select(a, context=4096, scheme=list(C2_MEMORY_BOUND))
    bound = _forall("C2", f"compute/memory roofline time of {', '.join(map(short, C2_MEMORY_BOUND))}, V3 B=1 L=4k",
                    ANALYTIC, [Evidence(f"{short(r['scheme'])} {_at(r)}", r["roofline_compute_s"] / r[
                        "roofline_memory_s"], str(r["key"])) for _, r in b4.iterrows()], 1.0, "<")  # fmt: skip
    return [*order, *quoted, bound]


def _c2_oi(a: pd.DataFrame, L: int, scheme: str, pred: float) -> Check:
    r = _one(a, scheme=scheme, context=L)
    quantity = f"OI of {short(scheme)} (FLOP/B), V3 B=1 L={_k(L)}"
    return _check("C2", quantity, ANALYTIC, None if r is None else r["oi"], pred,
                  evidence=() if r is None else (_ev(r, "oi"),))  # fmt: skip


# ---------------------------------------------------------------------------------------------- C3
PAIR_KEYS = ["engine", "model", "platform", "bw_scale", "batch", "context"]
PAIR_COLUMNS = ["t_x", "t_y", "s_x", "s_y", "r_x", "r_y", "key_x", "key_y", "oi_x", "ridge", "bound_y", "rstar",
                "why_x", "why_y"]  # fmt: skip


def _lstar(a: pd.DataFrame, model: str, batch: int, ridge: float) -> float | None:
    """Exact L* where recompute's OI reaches the ridge: MACs and bytes are linear in L (fit on two rows)."""
    r = select(a, model=model, batch=batch, scheme="mla-recompute").groupby("context")[["macs", "dram_bytes"]].first()
    if len(r) < 2:
        return None
    (l0, l1), (m0, m1), (q0, q1) = r.index[:2].to_numpy(float), r["macs"].iloc[:2], r["dram_bytes"].iloc[:2]
    b, d = (m1 - m0) / (l1 - l0), (q1 - q0) / (l1 - l0)
    a0, c0 = m0 - b * l0, q0 - d * l0
    den = 2 * b - ridge * d
    return (ridge * c0 - 2 * a0) / den if den > 0 else None


def _pair_groups(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """One row per point holding both schemes: their latencies, serial bounds (NaN for analytic rows), rooflines and
    keys, X's OI, Y's bound, R* = F_X / Q_Y, and why each row departs from the roofline."""
    if "serial_bound_s" not in df:  # a table of an older store version
        df = df.assign(serial_bound_s=np.nan)
    px, py = (df[df["scheme"] == s].drop_duplicates(PAIR_KEYS).set_index(PAIR_KEYS) for s in (x, y))
    j = px.add_suffix("_x").join(py.add_suffix("_y"), how="inner")
    if j.empty:
        return pd.DataFrame(columns=[*PAIR_KEYS, *PAIR_COLUMNS])
    return pd.DataFrame({
        "t_x": j["latency_s_x"], "t_y": j["latency_s_y"], "s_x": j["serial_bound_s_x"].astype(float),
        "s_y": j["serial_bound_s_y"].astype(float), "r_x": j["roofline_s_x"], "r_y": j["roofline_s_y"],
        "key_x": j["key_x"], "key_y": j["key_y"],
        "oi_x": j["oi_x"], "ridge": j["ridge_x"], "bound_y": j["bound_y"], "rstar": 2 * j["macs_x"] / j["dram_bytes_y"],
        "why_x": px.apply(_headline, axis=1).reindex(j.index), "why_y": py.apply(_headline, axis=1).reindex(j.index),
    }).reset_index()  # fmt: skip


def _pair_evidence(r: pd.Series, x: str, y: str) -> tuple[Evidence, Evidence]:
    return (Evidence(f"{short(x)} latency_s {_at(r)}", float(r["t_x"]), str(r["key_x"])),
            Evidence(f"{short(y)} latency_s {_at(r)}", float(r["t_y"]), str(r["key_y"])))  # fmt: skip


def _pinned(ga: pd.DataFrame) -> pd.DataFrame:
    """The quoted pairing point: V3, B = 1, L = 4k, unscaled bandwidth."""
    return select(ga, model=MODEL, batch=1, context=4096, bw_scale=1.0)


def _abstract(flips: bool, cid: str) -> str:
    return (
        f"Pairing {cid} {'reproduces' if flips else 'does not reproduce'} the abstract's 'the better scheme "
        f"depends on the hardware' (winner {'differs' if flips else 'is the same'} across presets)."
    )


def claim_c3a(df: pd.DataFrame) -> list[Check]:
    dec = _decode(df, engine="")
    g = _pair_groups(dec, "mla-recompute", "mla-absorb")
    ga, ge = g[g["engine"] == ANALYTIC], g[g["engine"] != ANALYTIC]
    a = select(dec[dec["engine"] == ANALYTIC], bw_scale=1.0)
    ridges = a.groupby("platform")["ridge"].first()
    lstar = [_c3a_lstar(a, p, ridges.get(p), v) for p, v in C3A_LSTAR.items()]
    return [*_c3a_analytic(ga), *lstar, *(_c3a_engine(r) for _, r in ge.iterrows())]


def _c3a_analytic(ga: pd.DataFrame) -> list[Check]:
    ratio = [Evidence(f"rc/absorb {_at(r)}", float(r["t_x"] / r["t_y"])) for _, r in ga.iterrows()]
    below = [e for e, (_, r) in zip(ratio, ga.iterrows(), strict=True) if r["oi_x"] <= r["ridge"]]
    pw = _pinned(ga)
    flips = bool((pw["t_x"] < pw["t_y"] * (1 - TIE)).any())  # recompute never wins outright -> no flip
    return [
        _forall("C3a", "T_rc/T_abs, every point", ANALYTIC, ratio, 1.0, "≥", SLACK, note=_abstract(flips, "C3a")),
        _forall("C3a", "T_rc/T_abs below L* (recompute memory-bound)", ANALYTIC, below, 1.0, "≈", TIE),
    ]


def _c3a_lstar(a: pd.DataFrame, platform: str, ridge: float | None, pred: float) -> Check:
    ls = None if ridge is None else _lstar(a, MODEL, 1, float(ridge))
    ev = () if ls is None else (Evidence(f"ridge {platform} (FLOP/B)", float(ridge)),)
    return _check("C3a", f"L* where recompute's OI reaches the ridge, V3 B=1 on {platform}", ANALYTIC, ls, pred,
                  evidence=ev)  # fmt: skip


def _c3a_engine(r: pd.Series) -> Check:
    """§8.0 C3a, judged on the serial model: recompute ties with absorb (within TIE) where its serial roofline does
    (below L*_core), else it is slower by the serial roofline's ratio (within TOL)."""
    ratio, serial, overlapped = r["t_x"] / r["t_y"], r["s_x"] / r["s_y"], r["r_x"] / r["r_y"]
    tie = bool(np.isfinite(serial) and serial <= 1 + TIE)
    side = "below L*_core" if tie else "above L*_core"
    predicted, tol = (1.0, TIE) if tie or not np.isfinite(serial) else (serial, TOL)
    return _check(
        "C3a", f"T_rc/T_abs {side} (serial model), {_at(r)}", r["engine"], ratio if np.isfinite(serial) else None,
        predicted, "≈", tol, evidence=_pair_evidence(r, "mla-recompute", "mla-absorb"),
        reason=lambda: f"{r['engine']} recompute takes {ratio:.2f}x absorb's time {side}, where the serial model "
        f"predicts {serial:.2f}x (recompute {r['why_x']}; absorb {r['why_y']}).",
        note=execution_finding("T_rc/T_abs", overlapped, serial), models=(overlapped, serial),
    )  # fmt: skip


def claim_pair(df: pd.DataFrame, cid: str) -> list[Check]:
    x, y, _, _ = PAIRS[cid]
    g = _pair_groups(_decode(df, engine=""), x, y)
    ga, ge = g[g["engine"] == ANALYTIC], g[g["engine"] != ANALYTIC]
    pw = _pinned(ga)
    return [_pair_rstar(cid, pw), *_pair_winners(cid, pw), _pair_rule(cid, ga), _pair_flip(cid, pw),
            *(_pair_engine(cid, r) for _, r in ge.iterrows())]  # fmt: skip


def _pair_rstar(cid: str, pw: pd.DataFrame) -> Check:
    x, y, quoted, _ = PAIRS[cid]
    r = pw.iloc[0] if len(pw) else None
    return _check(cid, f"R* = F_{short(x)}/Q_{short(y)} (FLOP/B), V3 B=1 L=4k", ANALYTIC,
                  None if r is None else r["rstar"], quoted,
                  evidence=() if r is None else _pair_evidence(r, x, y))  # fmt: skip


def _pair_winners(cid: str, pw: pd.DataFrame) -> list[Check]:
    """The quoted winner per preset: X (T_Y/T_X ≥ 1) where it is listed, Y elsewhere."""
    x, y, _, x_wins = PAIRS[cid]
    rows = sorted((r for _, r in pw.iterrows() if r["platform"] in PLATFORMS), key=lambda r: PLATFORMS.index(
        r["platform"]))  # fmt: skip
    return [
        _check(cid, f"T_{short(y)}/T_{short(x)} on {r['platform']} (R = {r['ridge']:.0f} FLOP/B), V3 B=1 L=4k",
               ANALYTIC, r["t_y"] / r["t_x"], 1.0, "≥" if r["platform"] in x_wins else "<", 0.0,
               evidence=_pair_evidence(r, x, y),
               reason=f"{short(x if r['t_x'] <= r['t_y'] else y)} wins on {r['platform']} (R = {r['ridge']:.0f} vs "
               f"R* = {r['rstar']:.0f} FLOP/B), against the quoted winner.")
        for r in rows
    ]  # fmt: skip


def _predicted_margin(r: pd.Series, x: str, y: str) -> Evidence:
    """T(predicted loser)/T(predicted winner) by the §8.1 rule (X wins iff R ≥ R*): ≥ 1 where the rule holds."""
    x_wins = r["ridge"] >= r["rstar"] * (1 - SLACK)
    v = r["t_y"] / r["t_x"] if x_wins else r["t_x"] / r["t_y"]
    return Evidence(f"{_at(r)} R={r['ridge']:.0f} R*={r['rstar']:.0f} → {short(x if x_wins else y)}", float(v))


def _pair_rule(cid: str, ga: pd.DataFrame) -> Check:
    x, y, _, _ = PAIRS[cid]
    m = ga[ga["bound_y"] == "memory"]
    return _forall(cid, f"T(loser)/T(winner) predicted by R ≥ R* ⇔ {short(x)} wins, {short(y)} memory-bound",
                   ANALYTIC, [_predicted_margin(r, x, y) for _, r in m.iterrows()], 1.0, "≥", SLACK)  # fmt: skip


def _pair_flip(cid: str, pw: pd.DataFrame) -> Check:
    x, y, _, _ = PAIRS[cid]
    winners = {x if r["t_x"] <= r["t_y"] else y for _, r in pw.iterrows()}
    ev = [Evidence(f"{r['platform']} → {short(x if r['t_x'] <= r['t_y'] else y)}", r["t_y"] / r["t_x"])
          for _, r in pw.iterrows()]  # fmt: skip
    return _check(cid, "distinct winners across the platforms, V3 B=1 L=4k", ANALYTIC,
                  len(winners) if len(pw) else None, 2, "≥", 0.0, ev,
                  note=_abstract(len(winners) > 1, cid) if len(pw) else "")  # fmt: skip


def _pair_engine(cid: str, r: pd.Series) -> Check:
    """§8.0: the winner the serial model predicts (the scheme of the smaller serial roofline) against the engine's."""
    x, y, _, _ = PAIRS[cid]
    serial, overlapped = r["s_y"] / r["s_x"], r["r_y"] / r["r_x"]
    x_pred = bool(serial >= 1)
    v, relation = r["t_y"] / r["t_x"], "≥" if x_pred else "<"
    what = f"T_{short(y)}/T_{short(x)}"
    return _check(
        cid, f"{what} {_at(r)} (serial model: {short(x if x_pred else y)} wins)", r["engine"],
        v if np.isfinite(serial) else None, 1.0, relation, 0.0, evidence=_pair_evidence(r, x, y),
        reason=lambda: f"{r['engine']}: {short(y if x_pred else x)} wins on {_at(r)} against the serial model's "
        f"{serial:.2f} ({short(x)} {r['why_x']}; {short(y)} {r['why_y']}).",
        note=execution_finding(what, overlapped, serial), models=(overlapped, serial),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- C4
def claim_c4(df: pd.DataFrame) -> list[Check]:
    dec = select(_decode(df, engine=""), model=MODEL, bw_scale=1.0)
    growth = select(dec, batch=1, context=[1024, 32768])
    out = [c for (eng, p), g in growth.groupby(["engine", "platform"])
           for c in (*_c4_growth(g, eng, p), *_c4_relative(g, eng, p))]  # fmt: skip
    gaps = select(dec, batch=32, context=4096)
    out += [c for eng, g in gaps.groupby("engine") for c in _c4_gap(g, eng)]
    return [*out, _c4_widening(df)]


def _c4_growth(g: pd.DataFrame, engine: str, platform: str) -> list[Check]:
    rows = {(s, L): _one(g, scheme=s, context=L) for s in C4_GROWTH_TEST for L in (1024, 32768)}
    if any(r is None for r in rows.values()):
        return []
    return [_c4_growth_of(s, rows[s, 1024], rows[s, 32768], engine, platform) for s in C4_GROWTH_TEST]


def _c4_growth_of(s: str, t1: pd.Series, t32: pd.Series, engine: str, platform: str) -> Check:
    """An analytic row's growth against §8.2's bound; an engine row's against the serial model (§8.0): the bound
    where the serial growth keeps it (absorb's core memory-bound), else the serial growth itself (within TOL)."""
    rel, bound = C4_GROWTH_TEST[s]
    v = t32["latency_s"] / t1["latency_s"]
    quantity = f"T(32k)/T(1k) of {short(s)} on {platform}, V3 B=1 (§8.2 quotes {C4_GROWTH[s]:.2f})"
    if engine == ANALYTIC:
        return _check("C4", quantity, engine, v, bound, rel, 0.0, (_ev(t1, "latency_s"), _ev(t32, "latency_s")),
                      reason=f"{engine} {short(s)} grows {v:.2f}x from L=1k to 32k on {platform}.")  # fmt: skip
    s1, s32 = _serial(t1), _serial(t32)
    serial = s32 / s1 if s1 and s32 else np.nan
    overlapped = t32["roofline_s"] / t1["roofline_s"]
    keeps = bool(np.isfinite(serial) and holds(serial, bound, rel, 0.0))
    predicted, relation, tol = (bound, rel, 0.0) if keeps or not np.isfinite(serial) else (serial, "≈", TOL)
    if not keeps and np.isfinite(serial):
        quantity += f", serial model {serial:.2f}"
    return _check("C4", quantity, engine, v if np.isfinite(serial) else None, predicted, relation, tol,
                  (_ev(t1, "latency_s"), _ev(t32, "latency_s")),
                  reason=f"{engine} {short(s)} grows {v:.2f}x from L=1k to 32k on {platform}, the serial model "
                  f"{serial:.2f}x (at 32k: {_headline(t32)}).",
                  note=execution_finding("T(32k)/T(1k)", overlapped, serial), models=(overlapped, serial),
                  detail=lambda: f"L=1k {_util(t1)}; L=32k {_util(t32)}")  # fmt: skip


def _c4_relative(g: pd.DataFrame, engine: str, platform: str) -> list[Check]:
    """§8.0 C4's relative claim on an engine: absorb grows less than MHA from 1k to 32k (B = 1)."""
    rows = {(s, L): _one(g, scheme=s, context=L) for s in ("mha", "mla-absorb") for L in (1024, 32768)}
    if engine == ANALYTIC or any(r is None for r in rows.values()):
        return []
    growth = {s: rows[s, 32768]["latency_s"] / rows[s, 1024]["latency_s"] for s in ("mha", "mla-absorb")}
    return [_check("C4", f"T(32k)/T(1k) of absorb over that of mha on {platform}, V3 B=1", engine,
                   growth["mla-absorb"] / growth["mha"], 1.0, "<", 0.0,
                   tuple(_ev(r, "latency_s") for r in rows.values()))]  # fmt: skip


def _c4_gap(g: pd.DataFrame, engine: str) -> list[Check]:
    """MLA gains most where bandwidth is scarce relative to compute: min gap on high-ridge parts > the low one's."""
    gaps = {}
    for p in ordered(g["platform"].unique(), PLATFORMS):
        mha, ab = (_one(g, platform=p, scheme=s) for s in ("mha", "mla-absorb"))
        if mha is not None and ab is not None:
            gaps[p] = float(mha["latency_s"] / ab["latency_s"])
    high = [v for p, v in gaps.items() if p in C4_HIGH]
    if C4_LOW not in gaps or not high:
        return []
    ev = [Evidence(f"T_mha/T_absorb {p}" + (f" (§8.2 quotes {C4_GAP_B32[p]})" if p in C4_GAP_B32 else ""), v)
          for p, v in gaps.items()]  # fmt: skip
    return [_check("C4", f"min T_mha/T_absorb on {', '.join(C4_HIGH)} over that on {C4_LOW}, V3 B=32 L=4k", engine,
                   min(high) / gaps[C4_LOW], 1.0, ">", 0.0, ev)]  # fmt: skip


def _c4_widening(df: pd.DataFrame) -> Check:
    """F3: the MHA-absorb gap widens (does not shrink) as bandwidth falls, analytic B=32 L=4k."""
    bw = bandwidth_sweep(df)
    bw = select(bw, engine=ANALYTIC, batch=32, context=4096) if len(bw) else bw
    t = bw.groupby(["dram_bytes_per_s", "scheme"])["latency_s"].first().unstack() if len(bw) else pd.DataFrame()
    pts = []
    if {"mha", "mla-absorb"} <= set(t.columns):
        gap = (t["mha"] / t["mla-absorb"]).dropna().sort_index()
        pts = [Evidence(f"gap {gap.iloc[i]:.1f} at {gap.index[i] / 1e9:.0f} GB/s → {gap.iloc[i + 1]:.1f} at "
                        f"{gap.index[i + 1] / 1e9:.0f} GB/s", float(gap.iloc[i + 1] / gap.iloc[i]))
               for i in range(len(gap) - 1)]  # fmt: skip
    return _forall("C4", "T_mha/T_absorb at the next bandwidth over this one (F3), V3 B=32 L=4k", ANALYTIC, pts, 1.0,
                   "≤", 1e-6)  # fmt: skip


# ---------------------------------------------------------------------------------------------- evaluation
CLAIMS: dict[str, Callable[[pd.DataFrame], list[Check]]] = {
    "C1": claim_c1, "C2": claim_c2, "C3a": claim_c3a, "C3b": lambda d: claim_pair(d, "C3b"),
    "C3c": lambda d: claim_pair(d, "C3c"), "C4": claim_c4,
}  # fmt: skip


def _verdict(checks: list[Check]) -> str:
    verdicts = {c.verdict for c in checks}
    return FAIL if FAIL in verdicts else PASS if PASS in verdicts else NO_DATA


def _engine_verdict(checks: list[Check], engine: str) -> EngineVerdict:
    mine = [c for c in checks if c.engine == engine]
    fails = [c for c in mine if c.verdict == FAIL]
    return EngineVerdict(engine, _verdict(mine), sum(c.verdict == PASS for c in mine), len(fails),
                         fails[0].reason if fails else "")  # fmt: skip


def _summary(cid: str, checks: list[Check], engines: tuple[str, ...]) -> ClaimSummary:
    tested = (ANALYTIC,) if cid in ANALYTIC_ONLY else engines
    return ClaimSummary(cid, STATEMENTS[cid], _verdict(checks), tuple(_engine_verdict(checks, e) for e in tested))


def evaluate_claims(df: pd.DataFrame) -> ClaimResults:
    """Every check of C1-C4 on the ok rows, and one summary per claim (a verdict per engine and overall)."""
    df = ok_rows(df)
    engines = tuple(ordered(df["engine"].unique(), (ANALYTIC, *ENGINES))) if len(df) else (ANALYTIC,)
    per = {cid: fn(df) if len(df) else [] for cid, fn in CLAIMS.items()}
    summaries = tuple(_summary(cid, checks, engines) for cid, checks in per.items())
    return ClaimResults(tuple(c for checks in per.values() for c in checks), summaries, engines)


def exit_code(results: ClaimResults, strict: bool = False) -> int:
    """0 when no analytic verdict fails (engine FAILs are findings to explain, §8), 1 otherwise; with strict, 1
    when any verdict fails."""
    engines = None if strict else {ANALYTIC}
    failed = any(e.verdict == FAIL for s in results.summaries for e in s.engines if engines is None or e.engine in
                 engines)  # fmt: skip
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------- rendering
def fmt_value(x: float | None) -> str:
    return "no rows" if x is None else _g(x)


def expectation(c: Check) -> str:
    """The prediction as written next to a measured value: '≈ 3.19 ±10 %', '≥ 3', '123-127 ±10 %'."""
    p = c.predicted
    value = f"{_g(p[0])}-{_g(p[1])}" if isinstance(p, tuple) else f"{c.relation} {_g(p)}"
    return value + (f" ±{c.tolerance:.0%}" if c.relation == "≈" and c.tolerance else "")


def failure(e: EngineVerdict) -> str:
    """An engine's failing verdict in one line: its first failing check's reason and how many more fail."""
    more = f" (+{e.failed - 1} more failing checks)" if e.failed > 1 else ""
    return f"{e.engine}: {e.reason}{more}"


def summary_table(results: ClaimResults) -> pd.DataFrame:
    """One row per claim: overall result, one column per engine in the rows ('' where the claim does not test it),
    and the failing engines' reasons."""
    rows = []
    for s in results.summaries:
        per = {e.engine: e.verdict for e in s.engines}
        reason = " ".join(failure(e) for e in s.engines if e.verdict == FAIL)
        rows.append({"claim": s.claim, "statement": s.statement, "result": s.verdict,
                     **{e: per.get(e, "") for e in results.engines}, "reason": reason})  # fmt: skip
    return pd.DataFrame(rows, columns=["claim", "statement", "result", *results.engines, "reason"])


def claims(df: pd.DataFrame) -> pd.DataFrame:
    """The summary table of `evaluate_claims` (one row per claim C1, C2, C3a, C3b, C3c, C4)."""
    return summary_table(evaluate_claims(df))


def to_json(results: ClaimResults) -> list[dict]:
    """Every check as a plain dict (evidence as a list of dicts)."""
    return [asdict(c) for c in results.checks]


def _summary_lines(table: pd.DataFrame, width: int) -> list[str]:
    engines = [c for c in table.columns if c not in ("claim", "statement", "result", "reason")]
    head = f"{'claim':<6}{'result':<9}" + "".join(f"{e:<{max(len(e), 8) + 1}}" for e in engines) + "statement"
    lines = [head, "-" * width]
    for _, r in table.iterrows():
        cells = "".join(f"{r[e] or '-':<{max(len(e), 8) + 1}}" for e in engines)
        lines.append(f"{r['claim']:<6}{r['result']:<9}{cells}{r['statement']}")
        if r["reason"]:
            lines += textwrap.wrap(r["reason"], width, initial_indent=" " * 6, subsequent_indent=" " * 8)
    return lines


def _check_lines(c: Check, width: int) -> list[str]:
    head = f"  {c.verdict:<8}{c.engine:<21}{c.quantity}: {fmt_value(c.measured)} (predicted {expectation(c)})"
    lines = textwrap.wrap(head, width, subsequent_indent=" " * 31)
    for label, text in (("reason", c.reason), ("note", c.note)):
        if text:
            first = f"{'':<10}{label}: "
            lines += textwrap.wrap(text, width, initial_indent=first, subsequent_indent=" " * len(first))
    return lines


def format_claims(results: ClaimResults | pd.DataFrame, width: int = 120) -> str:
    """Text: one line per claim (result overall and per engine), then, given the records, every check."""
    table = results if isinstance(results, pd.DataFrame) else summary_table(results)  # reproduce passes the table
    lines = _summary_lines(table, width)
    if isinstance(results, ClaimResults):
        for s in results.summaries:
            lines += ["", f"{s.claim}: {s.statement}"]
            lines += [line for c in results.of(s.claim) for line in _check_lines(c, width)]
    return "\n".join(lines).rstrip() + "\n"
