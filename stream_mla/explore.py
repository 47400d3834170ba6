"""`stream-mla explore`: co-design over platform parameters × workloads, analytically, at 10⁵–10⁶ points.

An explore spec (YAML) names a base platform, lists or ranges of four platform parameters, and the workloads:

    platform:
      base: h100-like                 # preset or platform YAML (relative to the spec file)
      cores: [1, 2, 4, 8, 16]         # a list, one number, or a range {from, to, points, scale: log|linear}
      peak_tflops_per_core: {from: 2, to: 250, points: 48}   # dense TFLOP/s per core at the base's native precision
      sram_mb_per_core: {from: 0.5, to: 1024, points: 12}    # on-chip memory per core, MB (1e6 B)
      dram_gb_s: {from: 50, to: 12800, points: 48}            # DRAM bandwidth of the chip, GB/s
      static_w_per_core: 10           # static power per core in W (default: the base's static power / cores)
      static_w_per_mb: 0.05           # static power per MB of on-chip memory in W (default 0)
    models: [deepseek-v3]
    schemes: null                     # default: every scheme that applies to the model and phase
    pairs: {C3b: [mla-recompute, mla-naive]}   # extra pairwise winner maps
    phase: decode
    batch: [1, 32]
    contexts: [1024, 4096, 32768]     # L for decode, S for prefill
    precision: [bf16]                 # default: the base's native precision
    tie: 0.05                         # top two within 5 % are a near tie
    max_csv_points: 100000            # points.csv keeps every k-th point beyond this

The model (attention-schemes.md §2, extended by the two parameters the roofline leaves out):

- Counts do not depend on the platform: each workload (model, phase, B, L, precision) × scheme is exported and
  counted once (`workloads.counts.count`); the platform grid is then evaluated with numpy broadcasting.
- Peak: P = cores × peak_tflops_per_core × the precision's MAC rate relative to the native one (the base's
  `mac_rate`, as `PlatformSpec.at_precision`). Latency T = max(2·MACs / P, Q / W) with W the DRAM bandwidth.
- On-chip memory M = cores × sram_mb_per_core decides the DRAM bytes Q. With everything fitting, Q is the fused
  count (`count()["bytes"]["total"]`: §2's "intermediates stay on-chip"). Otherwise intermediates are spilled,
  largest first, until the peak live set of those left (node outputs from their producer to their last reader, in
  graph order; layout views alias their source) fits in M; a spilled tensor is written once and read back once
  per node that reads it (§2's spill terms). With all spilled, Q approaches `bytes_layer_by_layer`. Q(M) is a step
  function with exact thresholds, so the maps below stay exact along M too.
- Cores change nothing else: the work of a layer is assumed to split evenly over them (heads and batch), so cores
  enter only through P, M and static power.
- Energy E = MACs × mac_pj + 8·Q × dram_pj_per_bit (the base's pJ, kept at every precision, as `at_precision`)
  + static power × T, with static power = cores × (static_w_per_core + static_w_per_mb × sram_mb_per_core). Peak
  and bandwidth have no energy price here: they change energy only through T × static power, so a latency-energy
  trade-off comes from cores (static power against speed) and on-chip memory (static power against spills).

Outputs (under -o DIR), all byte-identical across runs:

- `winner_map_<map>.png/.svg/.csv` per map ("all": every scheme; then each pair): the fastest scheme depends on
  the platform only through the ridge R = P / W and M (T·W = max(2·MACs / R, Q(M))), so each panel (a workload) is
  drawn on (R, M) axes, and its regions are exact rectangles: `figures.ridge_regions` per M band between spill
  thresholds. A (bandwidth, peak) map at one M is that band read along the lines P = R·W. The CSV is the region
  table (m_lo ≤ M < m_hi in MB, a panel's top band including m_hi; r_lo ≤ R < r_hi; winner; tie; the schemes
  that spill in the band).
- `pareto.png/.svg/.csv`: per workload and scheme, the latency-energy points no other explored platform point
  beats on both.
- `points.csv`: every explored point (or every k-th beyond max_csv_points): its parameters, the fastest and the
  least-energy scheme, the runner-up ratio and tie state.
"""

import functools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import onnx
import pandas as pd
import pydantic
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
from onnx.helper import tensor_dtype_to_np_dtype
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from stream_mla.errors import (
    EXCERPT_CHARS,
    SpecError,
    each_once,
    excerpt,
    first_error,
    one_line,
    read_document,
    reject_bools,  # fmt: skip
    short_path,
)
from stream_mla.figures import EXACT, TIE_HATCH, _figure, _save, ridge_regions, short, small_multiple
from stream_mla.models import Batch, Precision, Tokens, resolve_name_or_path
from stream_mla.platforms import PRESETS as PLATFORM_PRESETS
from stream_mla.platforms import PlatformSpec, load_platform
from stream_mla.sweeps.spec import ModelName, SchemeName
from stream_mla.workloads import build, make_spec, registry
from stream_mla.workloads.counts import count, summed_products
from stream_mla.workloads.graph import LAYOUT_OPS

EXAMPLE = Path(__file__).parent / "data" / "explore-example.yaml"
MAX_AXIS_POINTS = 10_000
MAX_CORES = 4096
MAX_PLATFORM_POINTS = 4_000_000
MAX_POINTS = 20_000_000  # platform points × workloads
CHUNK = 1 << 18  # platform points evaluated at once (bounds memory at 10⁶-point grids)
AXES = ("cores", "peak_tflops_per_core", "sram_mb_per_core", "dram_gb_s")


# ---------------------------------------------------------------------------------------------- spec
class Range(BaseModel):
    """`points` values from `from` to `to` (both included), evenly spaced on a log (default) or linear scale."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    start: float = Field(alias="from", gt=0, le=1e9)
    to: float = Field(gt=0, le=1e9)
    points: int = Field(ge=1, le=MAX_AXIS_POINTS)
    scale: Literal["log", "linear"] = "log"

    @model_validator(mode="after")
    def _order(self) -> "Range":
        if self.to < self.start:
            raise ValueError(f"to ({self.to:g}) must not be below from ({self.start:g})")
        if self.points == 1 and self.to != self.start:
            raise ValueError("points: 1 needs from == to (or give a list)")
        if self.points > 1 and self.to == self.start:
            raise ValueError(f"points: {self.points} values from {self.start:g} to {self.to:g} are one value, listed "
                             f"{self.points} times; give points: 1 or a wider range")  # fmt: skip
        return self

    def values(self) -> np.ndarray:
        if self.scale == "log":
            return np.geomspace(self.start, self.to, self.points)
        return np.linspace(self.start, self.to, self.points)


Positive = Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)]


def _axis_kind(value: Any) -> str:
    return "range" if isinstance(value, dict) else "list"


def _as_list(value: Any) -> Any:
    """One number is a one-value list; a boolean is refused (YAML reads `yes` as true)."""
    if isinstance(value, bool):
        raise ValueError(f"a number, a list of numbers or a range {{from, to, points, scale}} (got {excerpt(value)})")
    return [value] if isinstance(value, (int, float)) else value


Axis = Annotated[
    Annotated[list[Positive], Field(min_length=1, max_length=MAX_AXIS_POINTS), Tag("list")]
    | Annotated[Range, Tag("range")],
    Discriminator(_axis_kind),
]


class PlatformAxes(BaseModel):
    """The base platform and the swept parameters; a parameter left out keeps the base's value."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base: str = "h100-like"
    cores: Axis | None = None
    peak_tflops_per_core: Axis | None = None
    sram_mb_per_core: Axis | None = None
    dram_gb_s: Axis | None = None
    static_w_per_core: float | None = Field(None, ge=0, le=1e5)
    static_w_per_mb: float = Field(0.0, ge=0, le=1e3)

    _no_bools = model_validator(mode="before")(reject_bools)  # `cores: [true]` is not one core

    @field_validator(*AXES, mode="before")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator(*AXES)
    @classmethod
    def _each_once(cls, value: Any) -> Any:
        return each_once(value) if isinstance(value, list) else value

    @field_validator("cores")
    @classmethod
    def _whole_cores(cls, value: Any) -> Any:
        if isinstance(value, list) and any(v != int(v) or v > MAX_CORES for v in value):
            raise ValueError(f"cores are whole numbers from 1 to {MAX_CORES} (got {excerpt(value)})")
        if isinstance(value, Range) and value.to > MAX_CORES:
            raise ValueError(f"cores: at most {MAX_CORES} (got to = {value.to:g})")
        return value


class ExploreSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    platform: PlatformAxes = PlatformAxes()
    models: list[ModelName] = Field(min_length=1)
    schemes: list[SchemeName] | None = Field(None, min_length=1)
    pairs: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=40)], tuple[SchemeName, SchemeName]] = {}
    phase: Literal["decode", "prefill"] = "decode"
    batch: list[Batch] = Field([1], min_length=1, max_length=64)
    contexts: list[Tokens] = Field(min_length=1, max_length=64)
    precision: list[Precision] | None = Field(None, min_length=1)
    tie: float = Field(0.05, ge=0, lt=1)
    max_csv_points: int = Field(100_000, ge=0, le=10**7)

    @model_validator(mode="before")
    @classmethod
    def _no_bools(cls, data: Any) -> Any:
        """`batch: [true]` is not batch 1 (platform and pairs check their own values)."""
        if isinstance(data, dict):
            reject_bools(cls, {k: v for k, v in data.items() if not isinstance(v, dict)})
        return data

    @field_validator("batch", "contexts", "precision", mode="before")
    @classmethod
    def _one(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, str)) and not isinstance(value, bool) else value

    _each_once = field_validator("models", "schemes", "batch", "contexts", "precision")(each_once)

    @model_validator(mode="after")
    def _pairs(self) -> "ExploreSpec":
        for name, (x, y) in self.pairs.items():
            if x == y:
                raise ValueError(f"pairs.{name}: two different schemes (got {x} twice)")
            if name == "all":
                raise ValueError("pairs.all: 'all' names the map of every scheme; choose another name")
            missing = [s for s in (x, y) if self.schemes is not None and s not in self.schemes]
            if missing:
                raise ValueError(f"pairs.{name}: {', '.join(missing)} is not among schemes")
        return self


@dataclass(frozen=True)
class Explore:
    """A validated spec with its base platform loaded."""

    spec: ExploreSpec
    base: PlatformSpec
    source: str

    @property
    def precisions(self) -> list[str]:
        return list(dict.fromkeys(self.spec.precision or [self.base.precision]))

    @functools.cached_property
    def workloads(self) -> list["Workload"]:
        return count_workloads(self)


def load_explore(path: str | Path) -> Explore:
    path = Path(path)
    return explore_from_dict(read_document(path, "explore spec"), source=short_path(path), base_dir=path.parent)


def explore_from_dict(doc: object, source: str = "explore spec", base_dir: Path | None = None) -> Explore:
    """Validate a parsed YAML document; any error is one SpecError line naming the field."""
    if not isinstance(doc, dict):
        raise SpecError(f"{source}: an explore spec must be a mapping (platform, models, contexts, ...)")
    try:
        spec = ExploreSpec.model_validate(doc, context={"base": base_dir})
    except pydantic.ValidationError as exc:
        raise _spec_error(exc, source) from None
    name = spec.platform.base
    if base_dir is not None and name not in PLATFORM_PRESETS and not Path(name).is_absolute():
        name = str(base_dir / name) if (base_dir / name).exists() else name
    try:
        base = load_platform(name)
    except SpecError as exc:
        raise SpecError(f"{source}: platform.base: {exc}") from None
    ex = Explore(spec, base, source)
    for p in ex.precisions:
        if p not in base.precisions:
            raise SpecError(f"{source}: precision: {base.name} computes in {', '.join(base.precisions)} (got {p}; "
                            f"add mac_rate.{p} to the base platform)")  # fmt: skip
    n = math.prod(len(v) for v in platform_axes(ex).values())
    if n > MAX_PLATFORM_POINTS:
        raise SpecError(f"{source}: platform: {n:,} platform points, more than {MAX_PLATFORM_POINTS:,}")
    total = n * len(spec.models) * len(spec.batch) * len(spec.contexts) * len(ex.precisions)
    if total > MAX_POINTS:
        raise SpecError(f"{source}: {total:,} points (platform points × workloads), more than {MAX_POINTS:,}")
    ex.workloads  # noqa: B018 (counts every workload: a listed scheme that does not build is one line here)
    return ex


def _spec_error(exc: pydantic.ValidationError, source: str) -> SpecError:
    """pydantic's first error as one line: the field path without the list/range tags of an axis, and an unknown
    field named with the allowed ones (first: a typo'd name also makes its intended field missing)."""
    err = next((e for e in exc.errors() if e["type"] == "extra_forbidden"), exc.errors()[0])
    loc = [str(p) for p in err["loc"]]
    loc = [p for i, p in enumerate(loc) if not (p in ("list", "range") and i and loc[i - 1] in AXES)]
    if err["type"] == "extra_forbidden":
        model = Range if "range" in [str(p) for p in err["loc"]] else PlatformAxes if loc[0] == "platform" else None
        allowed = ["from", "to", "points", "scale"] if model is Range else list((model or ExploreSpec).model_fields)
        field = ".".join(x[:EXCERPT_CHARS] for x in loc)
        return SpecError(one_line(f"{source}: {field}: unknown field (allowed: {', '.join(allowed)})"))
    msg = str(first_error(exc, prefix=""))
    field = ".".join(str(p)[:EXCERPT_CHARS] for p in err["loc"])
    return SpecError(one_line(f"{source}: {'.'.join(loc)}{msg[len(field) :]}" if field else f"{source}: {msg}"))


# ---------------------------------------------------------------------------------------------- platform grid
def _values(axis: list[float] | Range | None, default: float) -> np.ndarray:
    if axis is None:
        return np.array([default], float)
    return np.unique(np.asarray(axis.values() if isinstance(axis, Range) else axis, float))


def platform_axes(ex: Explore) -> dict[str, np.ndarray]:
    """The swept values per parameter (sorted, unique); cores from a range are rounded to whole numbers."""
    b, a = ex.base, ex.spec.platform
    return {
        "cores": np.unique(np.maximum(np.round(_values(a.cores, b.cores)), 1)),
        "peak_tflops_per_core": _values(a.peak_tflops_per_core, b.peak_flop_per_s / b.cores / 1e12),
        "sram_mb_per_core": _values(a.sram_mb_per_core, b.sram_bytes / 1e6),
        "dram_gb_s": _values(a.dram_gb_s, b.dram_gb_s),
    }


def platform_grid(ex: Explore, precision: str) -> pd.DataFrame:
    """Every platform point (the product of the axes, `cores` outermost) and what the model derives from it."""
    axes = platform_axes(ex)
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    g = pd.DataFrame({k: m.ravel() for k, m in zip(axes, mesh, strict=True)})
    rate = ex.base.precisions[precision]
    a = ex.spec.platform
    per_core_w = a.static_w_per_core if a.static_w_per_core is not None else ex.base.static_power_w / ex.base.cores
    g["peak_flop_per_s"] = g["cores"] * g["peak_tflops_per_core"] * 1e12 * rate
    g["dram_bytes_per_s"] = g["dram_gb_s"] * 1e9
    g["onchip_bytes"] = g["cores"] * g["sram_mb_per_core"] * 1e6
    g["static_w"] = g["cores"] * (per_core_w + a.static_w_per_mb * g["sram_mb_per_core"])
    g["ridge"] = g["peak_flop_per_s"] / g["dram_bytes_per_s"]
    return g


# ---------------------------------------------------------------------------------------------- counts
def spill_steps(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """(caps, extra): with the k largest intermediates spilled (k = 0..n), the peak live on-chip bytes of the rest
    and the DRAM bytes the spills add (each spilled tensor written once, read once per node reading it).

    Intermediates are node outputs other than the graph output (already counted as an activation); a layout view
    (Reshape, Transpose) aliases its source, and a view of a weight or cache is no intermediate. A tensor is live
    from its producer to its last reader, in graph order. caps is non-increasing and ends at 0."""
    g = model.graph
    infos = {vi.name: vi for vi in (*g.value_info, *g.output)}

    def nbytes(t: str) -> int:
        tt = infos[t].type.tensor_type
        return math.prod(d.dim_value for d in tt.shape.dim) * tensor_dtype_to_np_dtype(tt.elem_type).itemsize

    out = g.output[0].name
    partials = {m.output[0] for m in summed_products(g).values()}  # accumulated in place, never an intermediate
    root: dict[str, str] = {}
    birth: dict[str, int] = {}
    readers: dict[str, set[int]] = {}
    for i, n in enumerate(g.node):
        if n.op_type in LAYOUT_OPS:
            if n.input[0] in root:
                root[n.output[0]] = root[n.input[0]]
            continue
        for t in set(n.input):
            if t in root:
                readers.setdefault(root[t], set()).add(i)
        for t in n.output:
            if t != out and t not in partials:
                root[t], birth[t] = t, i
    size = {t: nbytes(t) for t in birth}
    names = sorted(birth, key=lambda t: (-size[t], birth[t]))
    live = np.zeros((len(names), len(g.node)))
    for j, t in enumerate(names):
        live[j, birth[t] : max(readers.get(t, {birth[t]})) + 1] = size[t]
    kept = live.sum(axis=0) - np.vstack([np.zeros(len(g.node)), np.cumsum(live, axis=0)])
    caps = np.maximum(kept.max(axis=1), 0.0)
    caps[-1] = 0.0
    traffic = [size[t] * (1 + len(readers.get(t, ()))) for t in names]
    return np.minimum.accumulate(caps), np.concatenate([[0.0], np.cumsum(traffic)])


@dataclass(frozen=True)
class Costs:
    """One scheme of one workload: its MACs and its DRAM bytes as a step function of on-chip memory."""

    scheme: str
    macs: int
    fused_bytes: int
    layer_by_layer_bytes: int
    caps: np.ndarray
    extra: np.ndarray

    @property
    def flops(self) -> float:
        return 2.0 * self.macs

    def spilled(self, onchip: np.ndarray | float) -> np.ndarray:
        """k: how many intermediates go through DRAM at on-chip memory M (the least k whose rest fits)."""
        return np.searchsorted(-self.caps, -np.asarray(onchip, float), side="left")

    def bytes_at(self, onchip: np.ndarray | float) -> np.ndarray:
        return self.fused_bytes + self.extra[self.spilled(onchip)]


@dataclass(frozen=True)
class Workload:
    model: str
    phase: str
    batch: int
    context: int
    precision: str
    costs: tuple[Costs, ...]

    @property
    def schemes(self) -> list[str]:
        return [c.scheme for c in self.costs]

    @property
    def key(self) -> dict:
        return {"model": self.model, "phase": self.phase, "batch": self.batch, "context": self.context,
                "precision": self.precision}  # fmt: skip

    @property
    def title(self) -> str:
        axis = "L" if self.phase == "decode" else "S"
        return f"{short(self.model)} {self.phase} B = {self.batch}, {axis} = {self.context}, {self.precision}"


def _default_schemes(model, phase: str) -> list[str]:
    """Every scheme that applies to the model and phase and builds with the model's own settings (gqa on a model
    with n_kv = h needs kv_heads, so it is left out there)."""
    out = []
    for s in registry.applicable(model):
        try:
            make_spec(model=model, scheme=s, phase=phase, context=max(2, model.sliding_window or 2))
        except SpecError:
            continue
        out.append(s)
    return out


def count_workloads(ex: Explore) -> list[Workload]:
    """Each workload counted once per scheme (the counts do not depend on the platform)."""
    spec, out = ex.spec, []
    for name in spec.models:
        model = resolve_name_or_path(name)
        schemes = spec.schemes or _default_schemes(model, spec.phase)
        for prec in ex.precisions:
            for b in spec.batch:
                for L in spec.contexts:
                    costs = []
                    for s in schemes:
                        try:
                            w = make_spec(model=model, scheme=s, phase=spec.phase, batch=b, context=L,
                                          precision=prec).on_platform(prec)  # fmt: skip
                            graph = build(w)
                        except SpecError as exc:
                            raise SpecError(f"{ex.source}: schemes: {s} for {model.name} {spec.phase} B={b} L={L}: "
                                            f"{exc}") from None  # fmt: skip
                        c = count(graph)
                        caps, extra = spill_steps(graph)
                        costs.append(Costs(s, c["macs"], c["bytes"]["total"], c["bytes_layer_by_layer"], caps, extra))
                    out.append(Workload(model.name, spec.phase, b, L, prec, tuple(costs)))
    return out


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Evaluation:
    """Every scheme of one workload at every platform point: (schemes, points) arrays."""

    workload: Workload
    grid: pd.DataFrame
    latency_s: np.ndarray
    energy_pj: np.ndarray


def evaluate(ex: Explore, w: Workload, grid: pd.DataFrame) -> Evaluation:
    """T = max(2·MACs / P, Q(M) / W); E = MACs·mac_pj + 8·Q(M)·dram_pj + static power × T (module docstring)."""
    s, n = len(w.costs), len(grid)
    lat, en = np.empty((s, n)), np.empty((s, n))
    peak, bw = grid["peak_flop_per_s"].to_numpy(), grid["dram_bytes_per_s"].to_numpy()
    onchip, static = grid["onchip_bytes"].to_numpy(), grid["static_w"].to_numpy()
    for lo in range(0, n, CHUNK):
        sl = slice(lo, lo + CHUNK)
        for i, c in enumerate(w.costs):
            q = c.bytes_at(onchip[sl])
            t = np.maximum(c.flops / peak[sl], q / bw[sl])
            lat[i, sl] = t
            en[i, sl] = c.macs * ex.base.mac_pj + 8 * q * ex.base.dram_pj_per_bit + static[sl] * t * 1e12
    return Evaluation(w, grid, lat, en)


def fastest(ev: Evaluation, idx: list[int], tie: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per point: the winner (index into idx), T_second / T_first and the tie state. An equal time goes to fewer
    FLOPs, then fewer bytes, then the first listed (as `figures.ridge_regions`)."""
    t = ev.latency_s[idx]
    flops = np.array([ev.workload.costs[i].flops for i in idx])[:, None]
    onchip = ev.grid["onchip_bytes"].to_numpy()
    q = np.vstack([ev.workload.costs[i].bytes_at(onchip) for i in idx])
    cand = t == t.min(axis=0)
    for key in (np.broadcast_to(flops, t.shape), q):
        k = np.where(cand, key, np.inf)
        cand &= k == k.min(axis=0)
    win = cand.argmax(axis=0)
    cols = np.arange(t.shape[1])
    first = t[win, cols]
    rest = t.copy()
    rest[win, cols] = np.inf
    ratio = rest.min(axis=0) / first if len(idx) > 1 else np.full(t.shape[1], np.inf)
    kind = np.where(ratio - 1 <= EXACT, "exact", np.where(ratio <= 1 + tie, "near", "none"))
    return win, ratio, kind


def pareto_front(latency: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both latency and energy (first of equal points), by latency."""
    order = np.lexsort((np.arange(len(latency)), energy, latency))
    e = energy[order]
    best = np.minimum.accumulate(e)
    keep = np.concatenate([[True], e[1:] < best[:-1]])
    return order[keep]


# ---------------------------------------------------------------------------------------------- region tables
REGION_COLUMNS = ["model", "phase", "batch", "context", "precision", "map", "m_lo_mb", "m_hi_mb", "r_lo", "r_hi",
                  "winner", "tie", "spills"]  # fmt: skip


def maps_of(ex: Explore, w: Workload) -> list[tuple[str, list[str]]]:
    """("all", every scheme of the workload), then each pair whose two schemes the workload has."""
    out = [("all", w.schemes)]
    out += [(k, list(v)) for k, v in ex.spec.pairs.items() if set(v) <= set(w.schemes)]
    return out


def m_bands(costs: Iterable[Costs], m_min: float, m_max: float) -> list[tuple[float, float]]:
    """The intervals [m_lo, m_hi) of on-chip memory inside [m_min, m_max] where no scheme's spills change."""
    cuts = {float(c) for co in costs for c in co.caps if m_min < c <= m_max}
    edges = sorted({m_min, *cuts})
    return list(zip(edges, [*edges[1:], m_max], strict=True))  # the last is [m_max, m_max] where m_max is a cut


def region_table(ex: Explore, w: Workload, grid: pd.DataFrame) -> pd.DataFrame:
    """Exact regions of every map of a workload over the explored (R, M) box: per M band, `ridge_regions` on the
    schemes' FLOPs and their bytes in that band."""
    r_min = grid["peak_flop_per_s"].min() / grid["dram_bytes_per_s"].max()
    r_max = grid["peak_flop_per_s"].max() / grid["dram_bytes_per_s"].min()
    m_min, m_max = float(grid["onchip_bytes"].min()), float(grid["onchip_bytes"].max())
    by = {c.scheme: c for c in w.costs}
    recs = []
    for name, schemes in maps_of(ex, w):
        costs = [by[s] for s in schemes]
        for lo, hi in m_bands(costs, m_min, m_max):
            q = [float(c.bytes_at(lo)) for c in costs]
            spills = ";".join(c.scheme for c in costs if c.spilled(lo) > 0) or "none"
            for r_lo, r_hi, i, kind in ridge_regions([c.flops for c in costs], q, r_min, r_max, ex.spec.tie):
                recs.append({**w.key, "map": name, "m_lo_mb": lo / 1e6, "m_hi_mb": hi / 1e6, "r_lo": r_lo,
                             "r_hi": r_hi, "winner": schemes[i], "tie": kind, "spills": spills})  # fmt: skip
    return pd.DataFrame(recs, columns=REGION_COLUMNS)


# ---------------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class Result:
    regions: pd.DataFrame
    pareto: pd.DataFrame
    points: pd.DataFrame  # the rows written to points.csv (every k-th point beyond max_csv_points)
    n_platform: int
    n_points: int
    stride: int
    shares: dict[str, float]  # fraction of points each scheme wins (map "all")
    files: list[Path]
    wall_s: float


def run_explore(ex: Explore, out_dir: str | Path, figures: bool = True,
                progress: Callable[[str], None] | None = None) -> Result:  # fmt: skip
    """Evaluate every workload on the platform grid, then write the maps, fronts and points (module docstring)."""
    t0 = time.perf_counter()
    note = progress or (lambda _: None)
    out = Path(out_dir)
    ws = ex.workloads
    grids = {p: platform_grid(ex, p) for p in ex.precisions}
    n_platform = len(next(iter(grids.values())))
    n_points = n_platform * len(ws)
    stride = max(1, math.ceil(n_points / ex.spec.max_csv_points)) if ex.spec.max_csv_points else 0
    regions, fronts, points, wins = [], [], [], {}
    offset = 0
    for k, w in enumerate(ws):
        note(f"workload {k + 1}/{len(ws)}: {w.title}")
        grid = grids[w.precision]
        ev = evaluate(ex, w, grid)
        regions.append(region_table(ex, w, grid))
        idx = list(range(len(w.costs)))
        win, ratio, kind = fastest(ev, idx, ex.spec.tie)
        for i, s in enumerate(w.schemes):
            wins[s] = wins.get(s, 0) + int((win == i).sum())
            f = pareto_front(ev.latency_s[i], ev.energy_pj[i])
            fronts.append(grid.iloc[f][list(AXES)].assign(**w.key, scheme=s, latency_s=ev.latency_s[i][f],
                                                          energy_pj=ev.energy_pj[i][f]))  # fmt: skip
        if stride:
            sel = np.arange((-offset) % stride, len(grid), stride)  # every stride-th point of the whole run
            names = np.array(w.schemes)
            e_win = ev.energy_pj.argmin(axis=0)
            cols = np.arange(len(grid))
            points.append(pd.DataFrame({
                **{k: [v] * len(sel) for k, v in w.key.items()},
                **{k: grid[k].to_numpy()[sel] for k in AXES},
                "peak_tflops": grid["peak_flop_per_s"].to_numpy()[sel] / 1e12,
                "onchip_mb": grid["onchip_bytes"].to_numpy()[sel] / 1e6,
                "ridge": grid["ridge"].to_numpy()[sel],
                "winner": names[win[sel]], "ratio": ratio[sel], "tie": kind[sel],
                "latency_s": ev.latency_s[win, cols][sel], "energy_pj": ev.energy_pj[win, cols][sel],
                "energy_winner": names[e_win[sel]], "min_energy_pj": ev.energy_pj[e_win, cols][sel],
            }))  # fmt: skip
        offset += len(grid)
    regions = pd.concat(regions, ignore_index=True)
    pareto = pd.concat(fronts, ignore_index=True)
    pareto = pareto[[*ws[0].key, "scheme", "latency_s", "energy_pj", *AXES]]
    points = pd.concat(points, ignore_index=True) if points else pd.DataFrame()
    files: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    if figures:
        note("figures")
        for name in dict.fromkeys(m for w in ws for m, _ in maps_of(ex, w)):
            files += _fig_winner_map(ex, ws, regions, name, out)
        files += _fig_pareto(ws, pareto, out)
    if stride:
        path = out / "points.csv"
        points.to_csv(path, index=False, float_format="%.6g", lineterminator="\n")
        files.append(path)
    shares = {s: n / n_points for s, n in sorted(wins.items(), key=lambda kv: -kv[1])}
    return Result(regions, pareto, points, n_platform, n_points, stride, shares, files, time.perf_counter() - t0)


def summary(r: Result, out_dir: str | Path) -> str:
    share = ", ".join(f"{registry.label(s)} {v:.0%}" for s, v in r.shares.items() if v > 0)
    kept = f"points.csv: every {r.stride}-th point" if r.stride > 1 else "points.csv: every point" if r.stride else ""
    return (f"explore: {r.n_platform:,} platform points × {r.n_points // max(r.n_platform, 1)} workloads = "
            f"{r.n_points:,} points in {r.wall_s:.1f} s; fastest: {share}; {len(r.files)} files under {out_dir}"
            + (f" ({kept})" if kept else ""))  # fmt: skip


# ---------------------------------------------------------------------------------------------- figures
def _log_axes(ax, subs: tuple[float, ...] = (1.0,)) -> None:
    """Log axes with plain labels at `subs` × each decade and no minor ticks (mathtext labels and minor ticks
    dominate the drawing time of a 6-decade panel)."""
    ax.set(xscale="log", yscale="log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=8))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_locator(NullLocator())


def _panels(ws: list[Workload]) -> tuple[list[tuple], list[int]]:
    rows = list(dict.fromkeys((w.model, w.batch, w.precision) for w in ws))
    cols = sorted({w.context for w in ws})
    return rows, cols


def _cells(ws: list[Workload], axes, df: pd.DataFrame):
    """(panel title, last row?, first column?, axes, the panel's rows) of every panel with rows (model, batch and
    precision down, context across); a panel without rows is switched off."""
    rows, cols = _panels(ws)
    for ri, (model, batch, prec) in enumerate(rows):
        for ci, ctx in enumerate(cols):
            ax = axes[ri, ci]
            d = df[(df["model"] == model) & (df["batch"] == batch) & (df["precision"] == prec) & (df["context"] == ctx)]
            if d.empty:
                ax.set_axis_off()
                continue
            yield f"{short(model)} B = {batch}, L = {ctx}, {prec}", ri == len(rows) - 1, ci == 0, ax, d


def _edges_between(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[float, float]]:
    """R intervals where two stacked M bands differ in winner or tie: the horizontal region edges between them."""
    cuts = np.unique(np.concatenate([a["r_lo"], a["r_hi"], b["r_lo"], b["r_hi"]]))
    mids = np.sqrt(cuts[:-1] * cuts[1:])

    def state(d: pd.DataFrame) -> np.ndarray:
        i = np.clip(np.searchsorted(d["r_lo"].to_numpy(), mids, side="right") - 1, 0, len(d) - 1)
        return (d["winner"] + "|" + d["tie"]).to_numpy()[i]

    differ = state(a) != state(b)
    return [(float(lo), float(hi)) for lo, hi, x in zip(cuts[:-1], cuts[1:], differ, strict=True) if x]


def _merged_bands(d: pd.DataFrame) -> list[tuple[float, float, pd.DataFrame]]:
    """The M bands of one panel, bottom up, neighbours with identical regions merged (for drawing only: the table
    keeps every band, as their spills differ)."""
    out: list[tuple[float, float, pd.DataFrame]] = []
    for (lo, hi), band in d.groupby(["m_lo_mb", "m_hi_mb"], sort=True):
        band = band.sort_values("r_lo")
        sig = band[["r_lo", "r_hi", "winner", "tie"]].to_numpy().tolist()
        if out and out[-1][2][["r_lo", "r_hi", "winner", "tie"]].to_numpy().tolist() == sig:
            out[-1] = (out[-1][0], hi, out[-1][2])
        else:
            out.append((lo, hi, band))
    return out


def _draw_bands(ax, bands: list[tuple[float, float, pd.DataFrame]], pad: float) -> None:
    """Regions as rectangles (one collection per fill and per tie pattern), region edges as lines."""
    one = len(bands) == 1 and bands[0][0] == bands[0][1]
    rects, colors, hatched, vertical, horizontal = [], [], {k: [] for k in TIE_HATCH}, [], []
    r_first = min(b["r_lo"].min() for _, _, b in bands)
    for lo, hi, band in bands:
        y0, y1 = (lo / pad, hi * pad) if one else (lo, hi)
        for r in band.itertuples():
            rect = Rectangle((r.r_lo, y0), r.r_hi - r.r_lo, y1 - y0)
            rects.append(rect)
            colors.append(registry.color(r.winner))
            if r.tie in hatched:
                hatched[r.tie].append(Rectangle((r.r_lo, y0), r.r_hi - r.r_lo, y1 - y0))
            if r.r_lo > r_first:
                vertical.append([(r.r_lo, y0), (r.r_lo, y1)])
    for (_, _, lower), (lo, _, upper) in zip(bands[:-1], bands[1:], strict=True):
        horizontal += [[(a, lo), (b, lo)] for a, b in _edges_between(lower, upper)]
    ax.add_collection(PatchCollection(rects, facecolors=colors, edgecolors="none", zorder=1))
    for kind, patches in hatched.items():
        if patches:
            ax.add_collection(PatchCollection(patches, facecolors="none", edgecolors="k", hatch=TIE_HATCH[kind], lw=0,
                                              alpha=0.6, zorder=2))  # fmt: skip
    ax.add_collection(LineCollection(vertical + horizontal, colors="k", lw=0.6, zorder=3))


def _fig_winner_map(ex: Explore, ws: list[Workload], regions: pd.DataFrame, name: str, out: Path) -> list[Path]:
    rows, cols = _panels(ws)
    fig, axes = _figure(len(rows), len(cols), 4.2, 3.4)
    data = regions[regions["map"] == name]
    schemes: list[str] = []
    base_r = ex.base.ridge_flop_per_byte
    base_m = ex.base.total_sram_bytes / 1e6
    for title, bottom, left, ax, d in _cells(ws, axes, data):
        schemes += [s for s in d["winner"] if s not in schemes]
        m_lo, m_hi = d["m_lo_mb"].min(), d["m_hi_mb"].max()
        pad = 2.0 if m_lo == m_hi else 1.0  # one on-chip size: a band of a factor 2 around it
        _draw_bands(ax, _merged_bands(d), pad)
        r_lo, r_hi = d["r_lo"].min(), d["r_hi"].max()
        if r_lo <= base_r <= r_hi and m_lo <= base_m <= m_hi:
            ax.plot(base_r, base_m, marker="*", ms=11, color="w", mec="k", mew=0.8, zorder=5)
        _log_axes(ax)
        ax.set(xlim=(r_lo, r_hi if r_hi > r_lo else r_lo * 2), ylim=(m_lo / pad, m_hi * pad))
        small_multiple(ax, title, "ridge R = peak / DRAM bandwidth (FLOP/B)", "on-chip memory (MB)", bottom=bottom,
                       left=left, size=7)  # fmt: skip
        ax.grid(False)  # the regions are the grid
    ordered_schemes = [s for s in registry.NAMES if s in schemes] + [s for s in schemes if s not in registry.NAMES]
    handles = [Patch(color=registry.color(s), label=registry.label(s)) for s in ordered_schemes]
    tie = ex.spec.tie
    handles += [
        Patch(facecolor="w", hatch=TIE_HATCH["exact"], edgecolor="k", label="tie: top two equal"),
        Patch(facecolor="w", hatch=TIE_HATCH["near"], edgecolor="k", label=f"top two within {tie:.0%}"),
        Line2D([], [], color="k", lw=0.6, label="region edge (exact crossover)"),
        Line2D([], [], color="w", marker="*", mec="k", ms=10, ls="", label=f"base: {ex.base.name}"),
    ]
    ncol = min(len(handles), 5)
    legend_in = 0.22 * -(-len(handles) // ncol) + 0.15
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    what = "fastest scheme" if name == "all" else f"{name}: " + " vs ".join(
        registry.label(s) for s in next(v for k, v in ex.spec.pairs.items() if k == name))  # fmt: skip
    fig.suptitle(f"explore: {what} by ridge and on-chip memory (roofline, spills by on-chip size; exact regions)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 0.96))
    return _save(fig, data, out, f"winner_map_{name}")


def _fig_pareto(ws: list[Workload], pareto: pd.DataFrame, out: Path) -> list[Path]:
    rows, cols = _panels(ws)
    fig, axes = _figure(len(rows), len(cols), 4.2, 3.4)
    schemes: list[str] = []
    for title, bottom, left, ax, d in _cells(ws, axes, pareto):
        for s in [s for s in registry.NAMES if s in set(d["scheme"])]:
            f = d[d["scheme"] == s]
            schemes += [s] if s not in schemes else []
            ax.step(f["latency_s"] * 1e3, f["energy_pj"] * 1e-9, where="post", color=registry.color(s), lw=1.2)
            ax.plot(f["latency_s"] * 1e3, f["energy_pj"] * 1e-9, ".", color=registry.color(s), ms=3)
        _log_axes(ax, subs=(1.0, 2.0, 5.0))
        small_multiple(ax, title, "latency per layer-step (ms)", "energy per layer-step (mJ)", bottom=bottom,
                       left=left, size=7)  # fmt: skip
    handles = [Line2D([], [], color=registry.color(s), marker=".", lw=1.2, label=registry.label(s)) for s in schemes]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.suptitle("explore: latency-energy Pareto front per scheme over the explored platforms (MAC + DRAM + static)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 0.96))
    return _save(fig, pareto, out, "pareto")
