"""Every engine behind one interface: the `Engine` protocol, the registry the callers route on, and `finish`.

An engine is a frozen record: its `name`, the distribution it comes from (`package`, None for our own code), one
`version()` builder for every stored engine_version string, whether each evaluation `runs_in_process` of its own
(an engine process: seconds to minutes) or in the caller's (milliseconds), the `strategies` it can be forced to (a
sweep names one "<engine>:<strategy>"), whether it is `measured` (an engine that maps and schedules the graph) or a
bound (the roofline), and `evaluate(spec, platform, ...) -> Result`. The callers (sweeps, `evaluate`, advise,
validate) route on these properties, never on the name. `analytic` lives here: the roofline of attention-schemes.md
§2 with first-order energy (MAC + DRAM, §7.6); `zigzag` and `stream` run their runners in an engine process
(`stream_mla.engines.evaluate`), and every runner ends its Result with `finish` (one roofline, one energy breakdown).

Adding an engine (e.g. a GPU model): write a frozen record with the `Engine` properties; a fast model implements
`evaluate` itself (runs_in_process=False), a slow one sets runs_in_process=True and a `run(onnx_path, hw, workdir,
strategy)` the engine process calls (a `RunnerEngine`); end its Result with `finish(...)`; `register` it below with
the others (its sweep names then validate in SweepPoint.engine and ENGINE_PACKAGES lists its package); its module
under engines/ is in every engine row's code digest (sweeps/points.py ENGINE_CODE) already.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Protocol

import onnx

from stream_mla import __version__
from stream_mla.engines.hardware import Hardware
from stream_mla.engines.result import AUTO_STRATEGIES, ENERGY_COMPONENTS, STREAM_STRATEGIES, NodeResult, Result
from stream_mla.errors import SpecError
from stream_mla.platforms import PlatformSpec
from stream_mla.workloads import WorkloadSpec, build
from stream_mla.workloads.counts import count, roofline
from stream_mla.workloads.steps import serial_roofline_s

DEFAULT_TIMEOUT_S = 900.0
SERIAL = "serial"  # the analytic engine's serial roofline (attention-schemes.md §8.0): `analytic:serial`


class Engine(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def package(self) -> str | None: ...  # the distribution it comes from; None: stream-mla's own code

    @property
    def runs_in_process(self) -> bool: ...  # True: each evaluation in an engine process of its own (slow)

    @property
    def batched(self) -> bool: ...  # True: a sweep computes its rows in batches (sweeps/fast.py, count polynomials)

    @property
    def strategies(self) -> tuple[str, ...]: ...  # what it can be forced to besides "auto"

    @property
    def measured(self) -> bool: ...  # an engine that maps and schedules the graph (False: a bound)

    def version(self) -> str: ...

    def evaluate(self, spec: WorkloadSpec | Path, platform: PlatformSpec | Hardware, *, counts: dict | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, workdir: Path | None = None,
                 strategy: str = "auto") -> Result: ...  # fmt: skip


class ProcessEngine(Engine, Protocol):
    def run(self, onnx_path: Path, hw: Hardware, workdir: Path, strategy: str) -> Result: ...  # in the engine process


@cache
def package_version(package: str | None) -> str:
    """The one engine_version builder: "stream-mla <version>" for our own code, "<package> <installed version>"."""
    return f"stream-mla {__version__}" if package is None else f"{package} {installed_version(package)}"


# --- finishing a Result: what every engine's Result shares -------------------------------------------------------
@dataclass(frozen=True)
class RooflineResult(Result):
    """A Result whose latency is a time, not a cycle count: `latency_s` is that time exactly (cycles / clock need
    not give the same float back), `latency_cycles` the time at the clock."""

    exact_latency_s: float = 0.0

    @property
    def latency_s(self) -> float:
        return self.exact_latency_s


def bound_platform(platform: PlatformSpec | Hardware) -> PlatformSpec | Hardware:
    """The platform a run was bound to: the spec where there is one (its exact GB/s, static power), else the raw
    Stream YAML's Hardware (its DRAM port is all there is)."""
    if isinstance(platform, Hardware) and platform.platform is not None:
        return platform.platform
    return platform


def finish(engine: str, platform: PlatformSpec | Hardware, workload: str, counts: dict, *, latency_cycles: float,
           energy_pj: Mapping[str, float], engine_dram_bytes: float, strategy: str, wall_s: float,
           nodes: Iterable[NodeResult] = (), warnings: Iterable[str] = (), latency_s: float | None = None,
           graph: onnx.ModelProto | Path | None = None) -> Result:  # fmt: skip
    """The Result of one run: the engine's numbers next to the analytic ones of `counts` (MACs, DRAM bytes, the
    roofline at the bound platform's peak and its one DRAM bandwidth, the bound), the serial roofline of `graph`
    (the workload's, §8.0), the energy breakdown in ENERGY_COMPONENTS order (static: the platform's static power
    over the latency, unless given), the engine's version from the registry. `latency_s`: the exact time of an
    engine that computes seconds (the roofline)."""
    p = bound_platform(platform)
    unknown = set(energy_pj) - set(ENERGY_COMPONENTS)
    missing = set(ENERGY_COMPONENTS) - set(energy_pj) - {"static"}
    if unknown or missing:
        raise ValueError(f"energy components: unknown {sorted(unknown)}, missing {sorted(missing)}")
    breakdown = {k: energy_pj[k] for k in ENERGY_COMPONENTS if k != "static"}
    breakdown["static"] = energy_pj["static"] if "static" in energy_pj else p.static_energy_pj(latency_cycles)
    roof = roofline(counts, p.peak_mac_per_s, p.dram_bytes_per_s)
    fields = dict(engine=engine, engine_version=get(engine).version(), platform=p.name, workload=workload,
                  clock_ghz=p.clock_ghz, latency_cycles=float(latency_cycles), energy_breakdown_pj=breakdown,
                  macs=counts["macs"], dram_bytes=counts["bytes"]["total"], engine_dram_bytes=engine_dram_bytes,
                  roofline_bound_s=roof.bound_s, bound=roof.bound, strategy=strategy, engine_wall_s=wall_s,
                  nodes=list(nodes), warnings=list(warnings),
                  serial_bound_s=0.0 if graph is None else serial_roofline_s(graph, 2 * p.peak_mac_per_s,
                                                                              p.dram_bytes_per_s))  # fmt: skip
    return Result(**fields) if latency_s is None else RooflineResult(**fields, exact_latency_s=latency_s)


# --- the engines ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnalyticEngine:
    """The roofline T = max(MACs / peak, bytes / bandwidth) and first-order energy (MACs x pJ/MAC + DRAM bits x
    pJ/bit); on-chip and static energy are not modelled (0). In-process, from the counts."""

    name: str = "analytic"
    package: str | None = None
    runs_in_process: bool = False
    batched: bool = True  # sweeps/fast.py computes exactly these rows, for whole grids at once (tested equal)
    strategies: tuple[str, ...] = (SERIAL,)
    measured: bool = False

    def version(self) -> str:
        return package_version(self.package)

    def evaluate(self, spec: WorkloadSpec | Path, platform: PlatformSpec | Hardware, *, counts: dict | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, workdir: Path | None = None,
                 strategy: str = "auto") -> Result:  # fmt: skip
        del timeout_s, workdir  # instant, writes nothing: the roofline, or with SERIAL the serial roofline (§8.0)
        p = bound_platform(platform)
        if not isinstance(p, PlatformSpec):
            raise SpecError(
                f"--engine {self.name} needs a platform spec (--platform), not a raw Stream --hardware YAML"
            )
        graph = None
        if counts is None or strategy == SERIAL:  # the graph only where the counts or the serial steps need it
            graph = build(spec) if isinstance(spec, WorkloadSpec) else onnx.load(str(spec), load_external_data=False)
        if counts is None:
            counts = count(graph)
        r = roofline(counts, p.peak_mac_per_s, p.dram_bytes_per_s)
        mac_pj = counts["macs"] * p.mac_pj
        dram_pj = counts["bytes"]["total"] * 8 * p.dram_pj_per_bit
        energy = {"mac": mac_pj, "onchip_memory": 0.0, "dram": dram_pj, "onchip_transfer": 0.0, "static": 0.0}
        result = finish(self.name, p, spec.slug if isinstance(spec, WorkloadSpec) else Path(spec).stem, counts,
                        latency_cycles=r.bound_s * p.clock_ghz * 1e9, energy_pj=energy,
                        engine_dram_bytes=float(counts["bytes"]["total"]), strategy="roofline", wall_s=0.0,
                        latency_s=r.bound_s, graph=graph if strategy == SERIAL else None)  # fmt: skip
        if strategy != SERIAL:
            return result
        t = result.serial_bound_s
        return replace(result, strategy=SERIAL, latency_cycles=t * p.clock_ghz * 1e9, exact_latency_s=t)


@dataclass(frozen=True)
class RunnerEngine:
    """An engine run by its runner in an engine process (`stream_mla.engines.evaluate`: timeout, own folder)."""

    name: str
    package: str
    runner: Callable[[Path, Hardware, Path, str], Result]  # what the engine process calls
    strategies: tuple[str, ...] = ()
    runs_in_process: bool = True
    batched: bool = False
    measured: bool = True

    def version(self) -> str:
        return package_version(self.package)

    def evaluate(self, spec: WorkloadSpec | Path, platform: PlatformSpec | Hardware, *, counts: dict | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, workdir: Path | None = None,
                 strategy: str = "auto") -> Result:  # fmt: skip
        del counts  # the engine process counts the graph it exports
        from stream_mla.engines import evaluate

        return evaluate(spec, platform, self.name, timeout_s=timeout_s, workdir=workdir, strategy=strategy)

    def run(self, onnx_path: Path, hw: Hardware, workdir: Path, strategy: str) -> Result:
        return self.runner(onnx_path, hw, workdir, strategy)


def _run_stream(onnx_path: Path, hw: Hardware, workdir: Path, strategy: str) -> Result:
    from stream_mla.engines.stream_runner import evaluate_stream

    return evaluate_stream(onnx_path, hw, workdir, AUTO_STRATEGIES if strategy == "auto" else (strategy,))


def _run_zigzag(onnx_path: Path, hw: Hardware, workdir: Path, strategy: str) -> Result:
    del strategy  # one search (LOMA, EDP)
    if hw.platform is None:
        raise SpecError("--engine zigzag needs a platform spec (--platform), not a raw Stream --hardware YAML")
    from stream_mla.engines.zigzag_runner import evaluate_zigzag

    return evaluate_zigzag(onnx_path, hw.platform, workdir)


# --- the registry ---------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    if engine.name in _REGISTRY or ":" in engine.name:
        raise ValueError(f"engine {engine.name!r}: already registered, or a name with ':'")
    _REGISTRY[engine.name] = engine
    return engine


def unregister(name: str) -> None:
    del _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered engines, in registration order."""
    return tuple(_REGISTRY)


def engines() -> tuple[Engine, ...]:
    return tuple(_REGISTRY.values())


def sweep_names() -> tuple[str, ...]:
    """Every name a sweep point may give: each engine ("auto"), then "<engine>:<strategy>" for each of its
    strategies (a forced strategy is a series of its own)."""
    return tuple(n for e in _REGISTRY.values() for n in (e.name, *(f"{e.name}:{s}" for s in e.strategies)))


def packages() -> dict[str, str]:
    """engine name -> the distribution it comes from, for the engines that come from one."""
    return {e.name: e.package for e in _REGISTRY.values() if e.package is not None}


def batched(name: str) -> bool:
    """Whether a sweep computes the rows of an engine or sweep name in batches (the analytic roofline, not its
    serial strategy, whose steps the count polynomials do not hold)."""
    engine, strategy = parse(name)
    return engine.batched and strategy == "auto"


def check_strategy(engine: Engine, strategy: str) -> str:
    if strategy != "auto" and strategy not in engine.strategies:
        allowed = ", ".join(("auto", *engine.strategies))
        raise SpecError(f"--strategy: {strategy!r} for {engine.name} (allowed: {allowed})")
    return strategy


def parse(name: str) -> tuple[Engine, str]:
    """(engine, strategy) of an engine or sweep name: "stream" -> (stream, "auto"), "stream:fixed-mapping" ->
    (stream, "fixed-mapping"). An unknown engine or strategy is a SpecError naming the flag and what is allowed."""
    base, colon, strategy = str(name).partition(":")
    if base not in _REGISTRY:
        raise SpecError(f"--engine: {name!r} (allowed: {', '.join(_REGISTRY)})")
    engine = _REGISTRY[base]
    if colon and strategy not in engine.strategies:  # "<engine>:<strategy>" forces one of its strategies
        raise SpecError(f"--strategy: {strategy!r} for {base} (allowed: {', '.join(engine.strategies) or 'none'})")
    return engine, strategy or "auto"


def get(name: str) -> Engine:
    """The engine of an engine or sweep name ("stream:fixed-mapping" -> stream)."""
    return parse(name)[0]


ANALYTIC = register(AnalyticEngine())
ZIGZAG = register(RunnerEngine("zigzag", "zigzag-dse", _run_zigzag))
STREAM = register(RunnerEngine("stream", "stream-dse", _run_stream, strategies=STREAM_STRATEGIES))
