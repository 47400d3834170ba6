"""`stream-mla validate`: published measurements of attention kernels on real GPUs, each predicted by the analytic
roofline (and, on request, by Stream) on the matching platform preset, with the ratio measured / predicted.

The measurements are data (`stream_mla/data/measurements.yaml`, each with its source). A prediction is the rate the
model attains at the measured point, in the metric the source reports (bytes or FLOPs as the kernel counts them,
over the modelled latency). Where the ratio is far from 1 the row names the effect the model leaves out, from the
numbers: achievable DRAM bandwidth below peak, tensor-core efficiency below peak, query-row tile padding.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from stream_mla.engines import registry
from stream_mla.errors import SpecError, excerpt, first_error, read_document, reject_bools
from stream_mla.models import resolve_name_or_path
from stream_mla.platforms import load_platform
from stream_mla.workloads import WorkloadSpec, build, make_spec
from stream_mla.workloads.counts import count, roofline

DATA = Path(__file__).parent / "data" / "measurements.yaml"
FAR = 0.15  # a ratio outside 1 ± 15 % gets its missing effect named
TILE_ROWS = 64  # FlashMLA's block_size_m: query rows (h_q·s_q) are padded to it (engines.md §16.5)
UNIT = {"GB/s": 1e9, "TFLOP/s": 1e12}


class Point(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    scheme: str
    part: Literal["layer", "core"] = "core"
    batch: PositiveInt
    context: PositiveInt
    heads: PositiveInt | None = None  # the kernel's query heads h_q, when it differs from the model's
    queries: PositiveInt = 1
    precision: str | None = None
    kv_precision: str | None = None

    _no_bools = model_validator(mode="before")(reject_bools)


class Measurement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    kernel: str
    gpu: str
    platform: str  # the preset standing for the GPU
    point: Point
    metric: Literal["GB/s", "TFLOP/s"]
    value: float = Field(gt=0, allow_inf_nan=False)  # a rate: zero or negative is a typo, not a measurement
    bound: Literal["up to", "at"] = "at"
    source: str

    _no_bools = model_validator(mode="before")(reject_bools)

    def workload(self) -> WorkloadSpec:
        p = self.point
        model = resolve_name_or_path(p.model)
        if p.heads:  # one latent head shared by h_q query heads: the kernel's grid varies h_q alone
            model = model.model_copy(update={"heads": p.heads, "kv_heads": p.heads})
        return make_spec(model=model, scheme=p.scheme, part=p.part, batch=p.batch, context=p.context,
                         queries=p.queries, precision=p.precision, kv_precision=p.kv_precision)  # fmt: skip


@dataclass(frozen=True)
class Validation:
    """One measurement against one engine's prediction."""

    id: str
    kernel: str
    gpu: str
    platform: str
    engine: str
    metric: str
    measured: float
    predicted: float  # the rate the engine's latency implies, in the metric's unit
    ratio: float  # measured / predicted
    bound: str  # compute | memory, the roofline's
    missing: str  # the effect the model leaves out, when the ratio is far from 1
    source: str


def load(path: str | Path = DATA) -> list[Measurement]:
    """The measurements of a YAML file; a bad one is one line naming its position, id and field, and an id given
    twice is refused (rows are told apart by id)."""
    doc = read_document(path, "measurements")
    items = doc.get("measurements") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise SpecError(f"{path}: no 'measurements' list")
    out: list[Measurement] = []
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        name = item.get("id") if isinstance(item, dict) else None
        where = f"{path}: measurements.{i}" + (f" (id {excerpt(name)})" if name is not None else "")
        if not isinstance(item, dict):
            raise SpecError(f"{where}: a mapping of field: value")
        try:
            m = Measurement(**item)
        except pydantic.ValidationError as exc:
            raise SpecError(f"{where}: {first_error(exc).args[0]}") from None
        if m.id in first:
            raise SpecError(f"{where}: id {m.id!r} is also measurements.{first[m.id]}'s; give each its own id")
        first[m.id] = i
        out.append(m)
    return out


def missing_effect(m: Measurement, ratio: float, bound: str, engine: str = "analytic", attained: float = 1.0) -> str:
    """The modelled effect that would close the gap, from the numbers (empty when within FAR). `attained`: the
    engine's predicted rate over the roofline's (1 for the analytic engine)."""
    if abs(ratio - 1) <= FAR:
        return ""
    if ratio > 1:  # the measured kernel beats the prediction: the engine, not the hardware, is the gap
        return (
            f"the {engine} prediction is pessimistic: it attains {attained:.0%} of the roofline's rate where the "
            f"kernel attains {ratio * attained:.0%} (an engine inefficiency, not a missing physical effect)"
        )
    rows = (m.point.heads or resolve_name_or_path(m.point.model).heads) * m.point.queries
    parts = []
    if rows < TILE_ROWS:
        parts.append(f"query-row tile padding ({rows} rows padded to {TILE_ROWS}) is not modelled")
    if bound == "memory":
        parts.append(f"the kernel attains {ratio:.0%} of the modelled DRAM bandwidth (peak, not achievable)")
    else:
        parts.append(f"the kernel attains {ratio:.0%} of the modelled MAC rate (peak tensor-core rate; softmax, "
                     "exponentials and pipeline bubbles are not modelled)")  # fmt: skip
    return "; ".join(parts)


def predict(m: Measurement, engine: str = "analytic", timeout_s: float = 900.0) -> Validation:
    spec = m.workload()
    plat = load_platform(m.platform)
    spec = spec.on_platform(plat.precision)
    plat = plat.at_precision(spec.compute_precision)
    c = count(build(spec))
    r = roofline(c, plat.peak_mac_per_s, plat.dram_bytes_per_s)
    seconds = registry.get(engine).evaluate(spec, plat, counts=c, timeout_s=timeout_s).latency_s  # analytic: r.bound_s
    work = c["bytes"]["total"] if m.metric == "GB/s" else c["flops"]
    predicted = work / seconds / UNIT[m.metric]
    ratio = m.value / predicted
    missing = missing_effect(m, ratio, r.bound, engine, attained=r.bound_s / seconds)
    return Validation(m.id, m.kernel, m.gpu, m.platform, engine, m.metric, m.value, predicted, ratio, r.bound,
                      missing, " ".join(m.source.split()))  # fmt: skip


def validate(engines: tuple[str, ...] = ("analytic",), path: str | Path = DATA) -> list[Validation]:
    return [predict(m, e) for m in load(path) for e in engines]


def format_table(rows: list[Validation]) -> str:
    head = f"{'measurement':<32}{'engine':<10}{'measured':>16}{'predicted':>16}{'ratio':>7}  bound    missing effect"
    lines = [head]
    for v in rows:
        measured, predicted = f"{v.measured:.0f} {v.metric}", f"{v.predicted:.0f} {v.metric}"
        lines.append(f"{v.id:<32}{v.engine:<10}{measured:>16}{predicted:>16}{v.ratio:>7.2f}  {v.bound:<8} "
                     f"{v.missing or '-'}")  # fmt: skip
    lines.append("sources: " + "; ".join(dict.fromkeys(f"{v.id}: {v.source}" for v in rows)))
    return "\n".join(lines)


def as_json(rows: list[Validation]) -> list[dict]:
    return [asdict(v) for v in rows]
