"""A constraint family for Stream's allocation solve (its `stream.constraint_families` extension point, registered in
pyproject.toml): the DRAM traffic as a tie-break inside the latency objective (write-up for Stream's maintainers:
docs/stream-lexicographic-near-ties.md).

Stream's allocation minimises the latency first and the off-chip traffic only among allocations of exactly the same
latency (lexicographic levels, no tolerance). Latencies that differ by a few cycles of pipeline fill are not the same,
so an allocation that fetches a tensor again every iteration can win over one that keeps it for a gain far below the
model's resolution: V3 mla-recompute decode B = 32 L = 1k on h20-like, 8 chunks, the heads' W_UK and W_UV held on
each core, took 8,482,586 cycles re-fetching both weights in each of its 256 iterations (21.7x the analytic DRAM
bytes) against 8,482,605 keeping them (19 cycles, 0.0002 %, more fill). A tolerance on the latency level does not
help: the levels below it spend the whole slack (1e-3 added 0.1 % of fill). This family instead adds the traffic to
the latency level at `weight` times the cycles the off-chip links take to move it, as Stream's own
`OffchipTraffic(charge=True)` does at weight 1 when the overlap does not time the off-chip transfers: a cycle of
latency is worth 1 / weight cycles of DRAM transfer, so only a near-tie goes to the allocation that moves less. The
latency Stream reports stays its `total_latency`, without this term. At weight 1e-3 tpu-v5e-like recompute B = 1
L = 4k still fetched one reader's copy of the cache again per head tile (70.8 MB, 1.19x the analytic bytes) to save
481 cycles (0.03 %); at 1e-2 it does not, and against 1e-3 no row of the 252-row acceptance grid got slower by more
than those 0.03 %. With fractional coefficients Stream's sequential solver may find the next level's lock
infeasible; it then keeps this level's solution (and logs so), which already holds the tie-break.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from stream.opt.allocation.constraint_optimization.families import LATENCY
from stream.opt.allocation.constraint_optimization.families.offchip import OffchipTraffic
from stream.opt.solver import ObjectiveLevel

if TYPE_CHECKING:
    from stream.opt.allocation.constraint_optimization.formulation import FormulationContext

TRAFFIC_TIE_BREAK = "stream_mla_traffic_tie_break"  # its entry-point name (pyproject.toml)
TRAFFIC_WEIGHT = 1e-2  # a cycle of latency is worth 100 cycles of the off-chip links' time


class TrafficTieBreak:
    """The off-chip traffic's transfer time times `weight`, added to Stream's latency objective level."""

    name: ClassVar[str] = TRAFFIC_TIE_BREAK
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, weight: float = TRAFFIC_WEIGHT) -> None:
        if not weight >= 0:
            raise ValueError(f"{TRAFFIC_TIE_BREAK}: weight must be >= 0, got {weight}")
        self.weight = weight

    def build(self, ctx: FormulationContext) -> None:
        """Nothing to constrain: the family only adds to the objective."""

    def objective(self, ctx: FormulationContext) -> list[ObjectiveLevel]:
        space = ctx.space
        bandwidth = space.offchip_bandwidth()  # bits per cycle across the off-chip boundary
        if not bandwidth or not self.weight:
            return []
        # the bits per iteration Stream's own offchip_traffic level counts (its expression, not a copy of it)
        levels = OffchipTraffic(charge=False).objective(ctx)
        traffic = next(level.expr for level in levels if level.name == OffchipTraffic.name)
        cycles_per_bit = self.weight * space.iterations / bandwidth
        return [ObjectiveLevel(expr=cycles_per_bit * traffic, priority=LATENCY, name="latency")]
