"""One sweep point: a workload on a (bandwidth-scaled) platform costed by one engine, and its result row.

The point's key is a content hash of (workload spec, platform spec, engine, engine version), so a result is
reused exactly when nothing that determines it has changed. Rows are flat dicts (the tidy table's columns,
`ROW_COLUMNS`), built from the engine's `Result` the same way for every engine of `stream_mla.engines.registry`
(the `analytic` one is the roofline of attention-schemes.md §2 with first-order energy, MAC + DRAM, §7.6).
"""

import contextlib
import hashlib
import json
import tempfile
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt

from stream_mla.engines import registry
from stream_mla.engines.result import Result
from stream_mla.models import Precision, resolve_name_or_path
from stream_mla.platforms import PlatformSpec, load_platform
from stream_mla.workloads import Part, WorkloadSpec, build, make_spec
from stream_mla.workloads.counts import count, roofline
from stream_mla.workloads.steps import serial_bound_s

# The registry's sweep names: "stream" runs Stream's strategies in turn (auto); "stream:<strategy>" forces one, as a
# series of its own
ENGINES = registry.sweep_names()
Engine = Literal[ENGINES]
ENGINE_PACKAGES = registry.packages()

# An engine row's own diagnostics (`engine_diagnostics`, its strategy's serial bound `serial_s`), the serial roofline
# of §8.0 and the latency over it, and what a padded split-KV graph added (`Result.pad_macs`, `pad_bytes`); None on
# an analytic roofline row (analytic:serial rows carry the serial roofline).
DIAGNOSTICS = ("serial_s", "hotspot", "hotspot_cycle_share", "hotspot_mac_util", "excess_step", "excess_bytes",
               "lag_step", "lag_ratio", "lag_share", "serial_bound_s", "serial_ratio", "pad_macs",
               "pad_bytes")  # fmt: skip
# Content digests of the platform (unscaled) and model specs a row was costed on: the store keeps one version per name
DIGESTS = ("platform_digest", "model_digest")
ROW_COLUMNS = (
    "key", "status", "error", "model", "scheme", "phase", "part", "batch", "context", "queries", "window",
    "kv_chunks", "kv_heads", "precision", "kv_precision", "act_precision", "platform", "bw_scale",
    "engine", "engine_version", "strategy", "clock_ghz", "peak_flop_per_s", "dram_bytes_per_s", "ridge",
    "macs", "macs_causal", "weight_bytes", "kv_read_bytes", "kv_write_bytes", "activation_bytes", "dram_bytes",
    "oi", "roofline_compute_s", "roofline_memory_s", "roofline_s", "bound", "latency_cycles", "latency_s",
    "energy_pj", "energy_mac_pj", "energy_onchip_memory_pj", "energy_dram_pj", "energy_onchip_transfer_pj",
    "energy_static_pj", "engine_dram_bytes", "engine_wall_s", "warnings", "layer_by_layer_bytes", *DIAGNOSTICS,
    "strategies", *DIGESTS,
)  # fmt: skip


PACKAGE = Path(__file__).resolve().parents[1]
# The code that determines a row: graphs, counts, models, platforms, the analytic engine (the registry) and the
# Result it fills, the fast path and this module; engine rows also the runners (all of engines/). A change to any
# of these files changes every affected point's key, so the store recomputes it (figures, claims and the CLI read
# rows and do not take part). A listed path that does not exist hashes as nothing.
ANALYTIC_CODE = ("workloads", "models.py", "model_configs", "platforms", "engines/registry.py", "engines/result.py",
                 "sweeps/points.py", "sweeps/fast.py")  # fmt: skip
ENGINE_CODE = (*ANALYTIC_CODE, "engines")
CODE_SUFFIXES = (".py", ".json", ".yaml")


@cache
def code_digest(engines: bool, root: Path = PACKAGE) -> str:
    """sha256 over the relative paths and bytes of the code a row depends on (`.py`, `.json`, `.yaml` files)."""
    h = hashlib.sha256()
    for part in ENGINE_CODE if engines else ANALYTIC_CODE:
        base = root / part
        files = (
            [base] if base.is_file() else sorted(f for f in base.rglob("*") if f.suffix in (".py", ".json", ".yaml"))
        )
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def spec_digest(spec: BaseModel) -> str:
    """sha256 of a spec's content: tells two versions of one platform or model name apart (an edited YAML)."""
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def engine_version(engine: str) -> str:
    """The stored engine_version of an engine or sweep name: the registry's one builder."""
    return registry.get(engine).version()


class SweepPoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str  # preset name or HF config.json path
    scheme: str
    phase: Literal["decode", "prefill"] = "decode"
    batch: PositiveInt = 1
    context: PositiveInt
    kv_heads: PositiveInt | None = None
    precision: Precision | None = None  # None: the platform's native precision
    kv_precision: Precision | None = None  # None: precision
    act_precision: Precision | None = None  # None: precision
    queries: PositiveInt = 1
    part: Part = "layer"
    window: PositiveInt | None = None  # None: the model's own
    kv_chunks: PositiveInt | None = None  # split-KV decode chunks; None: the plain graph
    platform: str  # preset name or platform YAML path
    bw_scale: PositiveFloat = 1.0
    engine: Engine = "analytic"

    def workload(self) -> WorkloadSpec:
        """The workload as run on the point's platform (its native precision where the point sets none)."""
        spec = make_spec(model=resolve_name_or_path(self.model), scheme=self.scheme, phase=self.phase, batch=self.batch,
                         context=self.context, kv_heads=self.kv_heads, precision=self.precision,
                         kv_precision=self.kv_precision, act_precision=self.act_precision, queries=self.queries,
                         part=self.part, window=self.window, kv_chunks=self.kv_chunks)  # fmt: skip
        return spec.on_platform(load_platform(self.platform).precision)

    def platform_spec(self) -> PlatformSpec:
        """The platform with its DRAM bandwidth scaled (F3's sweep), everything else unchanged."""
        p = load_platform(self.platform)
        if self.bw_scale == 1.0:
            return p
        return p.model_copy(update={"dram_gb_s": p.dram_gb_s * self.bw_scale, "name": f"{p.name}@bw{self.bw_scale:g}"})

    def compute_platform(self) -> PlatformSpec:
        """The scaled platform at the workload's compute precision: its peak is that precision's."""
        return self.platform_spec().at_precision(self.workload().compute_precision)

    def digests(self) -> dict[str, str]:
        """The row's DIGESTS: of the unscaled platform and of the model."""
        return {"platform_digest": spec_digest(load_platform(self.platform)),
                "model_digest": spec_digest(resolve_name_or_path(self.model))}  # fmt: skip

    def key(self) -> str:
        content = {
            "workload": self.workload().model_dump(mode="json"),
            "platform": self.platform_spec().model_dump(mode="json"),
            "engine": self.engine,
            "engine_version": engine_version(self.engine),
            "code": code_digest(self.engine != "analytic"),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def engine_diagnostics(res: Result, counts: dict, p: PlatformSpec) -> dict:
    """Why an engine run departs from the roofline, from its own steps: the step taking most cycles (its share
    and its attained fraction of the platform's peak MAC rate), the step that moved most DRAM bytes beyond
    its nodes' own inputs and outputs (a re-fetch inside the step: its working set did not fit on-chip), and the
    step that runs most cycles beyond its own roofline (its MACs at the peak rate or the bytes it moved at the DRAM
    bandwidth, whichever takes longer): its cycles over that roofline and the cycles beyond it over the run's. Stream
    runs the steps in turn (engines.md trap 9: a run's latency is about the sum of its steps'), so the run's time
    above the sum of its steps' own rooflines is about the sum of what each step loses; the lag step is the largest
    part."""
    io = {n["name"]: n["io_bytes"] for n in counts["nodes"]}
    total = sum(n.cycles for n in res.nodes)
    hot = max(res.nodes, key=lambda n: n.cycles)
    clock = p.clock_ghz * 1e9
    peak_per_cycle, dram_per_cycle = p.peak_mac_per_s / clock, p.dram_bytes_per_s / clock
    excess = {n.name: n.dram_bytes - sum(io.get(part, 0) for part in n.name.split("+")) for n in res.nodes}
    worst = max(excess, key=excess.get)
    own = {n.name: n.own_cycles(peak_per_cycle, dram_per_cycle) for n in res.nodes}
    lag = max(res.nodes, key=lambda n: n.cycles - own[n.name])
    return {
        "hotspot": hot.name,
        "hotspot_cycle_share": hot.cycles / total if total else None,
        "hotspot_mac_util": hot.macs / (hot.cycles * peak_per_cycle) if hot.cycles else None,
        "excess_step": worst,
        "excess_bytes": max(excess[worst], 0.0),
        "lag_step": lag.name,
        "lag_ratio": lag.cycles / own[lag.name] if own[lag.name] else None,
        "lag_share": max(lag.cycles - own[lag.name], 0.0) / res.latency_cycles if res.latency_cycles else None,
    }


def run_point(point: SweepPoint, timeout_s: float = 900.0, workdir: Path | None = None) -> dict:
    """Cost one point; raises (SpecError, EngineError) on failure. The row has every ROW_COLUMNS entry."""
    spec, p = point.workload(), point.compute_platform()
    graph = build(spec)
    counts = count(graph)
    r = roofline(counts, p.peak_mac_per_s, p.dram_bytes_per_s)
    b = counts["bytes"]
    row = {
        "key": point.key(), "status": "ok", "error": "", **point.model_dump(exclude={"platform"}),
        "kv_heads": spec.group_kv_heads if spec.scheme_record.is_baseline else None,
        "window": spec.attention_window,
        **{f"{k}precision": spec.precisions[c] for k, c in (("", "weights"), ("kv_", "kv_cache"),
                                                             ("act_", "activations"))},  # fmt: skip
        "platform": p.name.split("@")[0], "engine_version": engine_version(point.engine), "clock_ghz": p.clock_ghz,
        "peak_flop_per_s": p.peak_flop_per_s, "dram_bytes_per_s": p.dram_bytes_per_s, "ridge": p.ridge_flop_per_byte,
        "macs": counts["macs"], "macs_causal": counts["macs_causal"], "weight_bytes": b["weights"],
        "kv_read_bytes": b["kv_read"], "kv_write_bytes": b["kv_write"], "activation_bytes": b["activations"],
        "dram_bytes": b["total"], "oi": counts["operational_intensity"], "roofline_compute_s": r.compute_s,
        "roofline_memory_s": r.memory_s, "roofline_s": r.bound_s, "bound": r.bound,
        "layer_by_layer_bytes": counts["bytes_layer_by_layer"], **dict.fromkeys(DIAGNOSTICS), **point.digests(),
    }  # fmt: skip
    engine, strategy = registry.parse(point.engine)
    scratch = workdir is None and engine.runs_in_process  # an engine process writes its files into a folder
    with tempfile.TemporaryDirectory(prefix="stream-mla-point-") if scratch else contextlib.nullcontext(workdir) as wd:
        res = engine.evaluate(spec, p, counts=counts, timeout_s=timeout_s, workdir=wd and Path(wd), strategy=strategy)
    e = res.energy_breakdown_pj
    row.update({"strategy": res.strategy, "latency_s": res.latency_s, "latency_cycles": res.latency_cycles,
                "energy_pj": res.energy_pj, **{f"energy_{k}_pj": v for k, v in e.items()},
                "engine_dram_bytes": res.engine_dram_bytes, "engine_wall_s": res.engine_wall_s,
                "warnings": json.dumps(res.warnings),
                "strategies": json.dumps(res.strategies, sort_keys=True)})  # fmt: skip
    if res.serial_bound_s:
        row.update(serial_bound_s=res.serial_bound_s, serial_ratio=res.latency_s / res.serial_bound_s,
                   pad_macs=res.pad_macs, pad_bytes=res.pad_bytes)  # fmt: skip
    if res.nodes:  # an engine's own steps: where it departs from the roofline
        row.update(engine_diagnostics(res, counts, p))
        row["serial_s"] = serial_bound_s(graph, res.strategy, p.peak_flop_per_s, p.dram_bytes_per_s)
    missing = set(ROW_COLUMNS) - set(row)
    assert not missing, f"row lacks {missing}"
    return {c: row[c] for c in ROW_COLUMNS}
