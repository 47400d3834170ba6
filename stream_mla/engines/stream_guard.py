"""The guard on every Stream result: a number below physics is an error, never a result.

Three checks, each a law the engine cannot beat:
(a) coverage: per fused group, each computation node's costed iteration space (its steady-state tile x the temporal
    iterations that vary for it) equals its full iteration space. Stream 2.1.1's fusion can cost a node for a slice
    of its work (engines.md trap 16, docs/stream-fusion-truncation.md); `graph_fix` removes the known cause, this
    check catches any other.
(b) DRAM: the engine moves at least the graph's analytic DRAM bytes (every weight and cache once, x and the output).
(c) latency: at least the roofline bound max(MACs / peak, analytic bytes / DRAM bandwidth).
(d) steps: each step (a fused group) at least its own roofline, max(its MACs / the arrays' peak, the DRAM bytes the
    engine says it moved / what the DRAM Stream is given moves a cycle over all its ports): a second line under (a),
    for a step costed for part of its work inside a run the other steps keep above (c).

How a violation surfaces (it fits the runner's strategy fallback): `evaluate_stream` treats a strategy whose result
fails the guard like one that does not fit: it records `strategy <name>: below physics: ...` in the warnings and
tries the next strategy. When no strategy is left it raises `EngineBelowPhysics` (an `EngineError`, so `evaluate`
reports it as one line; the message starts with the platform and says "below physics"), carrying the last failing
`Result` and its violations for a caller in the same process. So every `Result` the runner returns passed the guard.

Coverage is read off Stream's own objects: `CoverageStage`, a Stream `Stage` that `coverage_probe()` puts right after
`SteadyStateLoweringStage` in Stream's per-group pipeline, compares each group's lowered `AllocationProblem` (the
workload with its steady-state iteration spaces) with the group's untiled workload and records the ratios in the
run's context under `COVERAGE_KEY`. It costs a product of dim sizes per node. (Stream's other extension point for
observers, the `stream.instrumentation` entry-point group, needs packaging metadata; the pipeline list does not.)
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod

import stream.api
from stream.stages.allocation.steady_state_lowering import SteadyStateLoweringStage
from stream.stages.stage import Stage
from stream.workload.steady_state.iteration_space import LoopEffect

from stream_mla.engines.result import EngineError, Result

BELOW_PHYSICS = "below physics"
COVERAGE_KEY = "stream_mla_coverage"
# Relative slack for rounding only: Stream's cycles are integers, its traffic whole words
TOLERANCE = 1e-6


class EngineBelowPhysics(EngineError):
    """A Stream result beats a physical bound (coverage < 1, DRAM or latency below the analytic floor)."""

    def __init__(self, message: str, result: Result | None = None, violations: tuple[str, ...] = ()):
        super().__init__(message)
        self.result = result
        self.violations = violations


@dataclass(frozen=True)
class NodeCoverage:
    group: int
    node: str
    coverage: float | None  # costed / full iteration space: 1 when Stream costs all of the node's work; None when
    # the node is not in the group's untiled workload, so its coverage cannot be checked


class CoverageStage(Stage):
    """Records, per fused group, the share of each computation node's full iteration space that Stream costs."""

    reads = ("allocation_problem", "sub_workloads", "group_index")
    optional_reads = (COVERAGE_KEY,)
    writes = (COVERAGE_KEY,)

    def run(self):
        index = self.ctx.get("group_index")
        untiled = self.ctx.get("sub_workloads")[index]
        found = group_coverage(index, untiled, self.ctx.get("allocation_problem"))
        self.ctx.set(**{COVERAGE_KEY: [*(self.ctx.get(COVERAGE_KEY) or []), *found]})  # the context outlives groups
        yield from self.list_of_callables[0](self.list_of_callables[1:], self.ctx).run()


def group_coverage(index: int, untiled, problem) -> list[NodeCoverage]:
    """(steady-state tile x temporal iterations that vary for the node) / full iteration space, per node."""
    full = {n.name: iteration_space(untiled, n) for n in untiled.get_computation_nodes()}
    lowered = problem.workload
    found = []
    for node in lowered.get_computation_nodes():
        tile = iteration_space(lowered, node)
        loops = prod(v.size for v in problem.ssis[node].get_temporal_variables() if v.effect == LoopEffect.VARYING)
        found.append(NodeCoverage(index, node.name, tile * loops / full[node.name] if node.name in full else None))
    return found


def iteration_space(workload, node) -> int:
    return prod(workload.get_dimension_size(d) for d in workload.get_dims(node))


@contextmanager
def coverage_probe() -> Iterator[None]:
    """Stream calls made inside record their coverage (read it with `coverage_of`)."""
    stages = stream.api._ALLOCATION_STAGES  # the per-group pipeline `_solve` builds each call from
    stages.insert(stages.index(SteadyStateLoweringStage) + 1, CoverageStage)
    try:
        yield
    finally:
        stages.remove(CoverageStage)


def coverage_of(estimate) -> list[NodeCoverage]:
    """The coverage a probed Stream run recorded (a `MappingEstimate`); raises if the probe was not installed,
    because a missing check must not read as a clean one."""
    found = estimate.context.get(COVERAGE_KEY)
    if found is None:
        raise RuntimeError("no coverage recorded: run Stream inside stream_guard.coverage_probe()")
    return found


def coverage_violations(coverage: list[NodeCoverage]) -> list[str]:
    found = []
    for c in coverage:
        if c.coverage is None:  # an unchecked node must not pass as a clean one
            found.append(f"{BELOW_PHYSICS} (unchecked): group {c.group} costs {c.node}, a node its untiled group lacks")
        elif abs(c.coverage - 1) > TOLERANCE:
            found.append(f"{BELOW_PHYSICS}: group {c.group} costs {c.node} at {c.coverage:.4g} of its iteration space")
    return found


def bound_violations(result: Result, port_ratio: float = 1.0) -> list[str]:
    """(b) and (c), from the analytic numbers the result carries next to the engine's. port_ratio: the engine's DRAM
    port over the platform's bandwidth (ports take whole bits per cycle, rounded to the nearest: a port up to half a
    bit per cycle faster than the platform lets a run beat the platform's exact roofline by that much, no more)."""
    found = []
    if result.engine_dram_bytes < result.dram_bytes * (1 - TOLERANCE):
        found.append(f"{BELOW_PHYSICS}: engine DRAM {result.engine_dram_bytes:,.0f} B < analytic "
                     f"{result.dram_bytes:,} B ({result.engine_dram_bytes / result.dram_bytes:.3f}x)")  # fmt: skip
    if result.latency_s < result.roofline_bound_s * (1 - TOLERANCE) / max(1.0, port_ratio):
        found.append(f"{BELOW_PHYSICS}: latency {result.latency_cycles:,.0f} cycles < roofline "
                     f"{result.roofline_bound_s * result.clock_ghz * 1e9:,.0f} "
                     f"({result.latency_s / result.roofline_bound_s:.3f}x)")  # fmt: skip
    return found


def step_violations(result: Result, peak_macs_per_cycle: float, dram_bits_per_cycle: float) -> list[str]:
    """(d), on the machine Stream was given: its arrays' MACs per cycle and the bits per cycle its DRAM moves over all
    its ports (whole bits, so no rounding slack is due). A cycle of slack: Stream counts whole cycles."""
    found = []
    for step in result.nodes:
        own = step.own_cycles(peak_macs_per_cycle, dram_bits_per_cycle / 8)
        if step.cycles < own * (1 - TOLERANCE) - 1:
            found.append(f"{BELOW_PHYSICS}: step {step.name} takes {step.cycles:,.0f} cycles < its own roofline "
                         f"{own:,.0f} ({step.cycles / own:.3f}x)")  # fmt: skip
    return found


def violations(result: Result, coverage: list[NodeCoverage], port_ratio: float,
               machine: tuple[float, float]) -> list[str]:  # fmt: skip
    """Every way `result` (with the coverage its run recorded) beats physics; empty when it passes the guard.
    machine: (MACs per cycle, DRAM bits per cycle) of the hardware Stream ran, for the step check (d)."""
    steps = step_violations(result, *machine)
    return coverage_violations(coverage) + bound_violations(result, port_ratio) + steps
