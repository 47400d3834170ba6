"""Stream's per-group pipeline answered from the persistent cache: a fused group solved once serves every later run.

Stream 2.1.1 prices a mapping group by group: `FusionGroupIterationStage` runs its inner pipeline (tile search,
tiling, ZigZag core costs, steady-state lowering, our coverage probe, the allocation MILP, memory accesses) on each
group's own sub-workload and sub-mapping, and keeps from each run the allocation's cycles, its columns, the
allocation and memory-access reports. A sweep solves the same groups again and again: a decode layer's projections
and norms (20 of mla-recompute's 21 fused-attention groups) do not depend on the context L, and MLA's schemes share
several; the MILP build and solve, the lowering and the costing of such a group take 0.1-2 s each.

`MemoGroupIteration` is Stream's stage with that loop, where each group's outcome is read from the cache when an
identical group was solved before (any point, process or sweep worker), else solved and stored. What is identical:
* the group's sub-workload and sub-mapping, byte for byte as pickled (every attribute of every node, tensor, core
  and tiling; neither Stream nor ZigZag overrides how its objects pickle, so equal bytes are equal state), taken
  before the pipeline runs, less the ids ZigZag numbers process-globally (`state_digest`);
* the accelerator, by the text of the hardware YAML Stream parsed it from (`MEMO_TOKEN`, a stage option that
  `stream_runner.solve_options` sets; a run without it is not memoised);
* every other context field the inner stages read, by their own contracts (Stream checks each read against them
  at run time): the search, lowering and solver settings and the constraint families (by name and options);
* the inner stages (their classes), the engine versions (`cost_cache.ENGINE_VERSIONS`), those of the MILP solver and
  the libraries under Stream's workloads (`LIBRARY_VERSIONS`), and the source of our code that runs inside them
  (`CODE`: the cost backend, the faster twins, the constraint family, the coverage probe, this module).
An entry keeps what the stage keeps of a solved group plus what our runner reads of it: the coverage the probe
recorded, and each node's in-core energy per core (from the group's ZigZag costs). A group that fails is not stored.
So a hit gives exactly the numbers a solve gives; the guard checks them as before. A group read from the memo leaves
no `group_<i>` folder in the run's output (its cost LUT is the solving run's).

Entries live under `<cache root>/stream/groups/` (`cost_cache.cache_root`, `STREAM_MLA_CACHE=off` disables).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import stream.api
from stream.ir.allocation import AllocationIR
from stream.opt.allocation.constraint_optimization.hardware import build_hardware_facts
from stream.stages.generation.fusion_group_iteration import FusionGroupIterationStage, _compute_columns
from stream.stages.stage import Stage
from xdsl.ir.core import IRWithUses

from stream_mla.engines import cost_cache, engine_speed, stream_families, stream_guard
from stream_mla.engines.cost_cache import SKIPPED_ATTRIBUTES, Uncacheable, canonical, digest
from stream_mla.engines.registry import package_version
from stream_mla.engines.stream_guard import COVERAGE_KEY, NodeCoverage

logger = logging.getLogger(__name__)

MEMO_TOKEN = "stream_mla_group_memo"  # stage option: a digest of the hardware YAML's text (`memo_token`)
CORE_ENERGY_KEY = "stream_mla_core_energy"  # {group: `CoreEnergy`}, every group of a run, solved or read
KIND = "groups"
# Context fields the key takes in its own way: the group's untiled workload and mapping (pickled), the accelerator
# (MEMO_TOKEN), where files go, the group's number and the coverage list the probe appends to (replayed)
OWN_WAY = frozenset({"workload", "mapping", "accelerator", "output_path", "group_index", "sub_workloads", COVERAGE_KEY})
USE_LISTS = frozenset({"uses"})  # xDSL's use-def list of a value (`_StatePickler`)
# Our code that runs inside the inner stages (or decides what they see): an edit to it makes every entry stale
CODE_FILES = (cost_cache.__file__, engine_speed.__file__, stream_families.__file__, stream_guard.__file__, __file__)
CODE = hashlib.sha256(b"".join(Path(f).read_bytes() for f in CODE_FILES)).hexdigest()
# Beyond the engines (`cost_cache.ENGINE_VERSIONS`, in every digest): the allocation's MILP solver and the libraries
# Stream's workloads and lowering are built on
LIBRARY_VERSIONS = tuple(map(package_version, ("ortools", "xdsl", "networkx", "sympy", "numpy")))

# node name -> ((core id, the entry's total energy, its memory energy) per core the LUT costs it on), in LUT order
CoreEnergy = tuple[tuple[str, tuple[tuple[int, float, float], ...]], ...]


def memo_token(hw_yaml: Path) -> str:
    return hashlib.sha256(Path(hw_yaml).read_bytes()).hexdigest()


@dataclass(frozen=True)
class GroupOutcome:
    """What a run keeps of one solved fused group."""

    cycles: float
    columns: tuple[int, ...]
    allocation: dict  # AllocationIR, dumped
    memory_accesses: dict | None
    coverage: tuple[tuple[str, float | None], ...]  # (node, coverage) as the probe recorded them; () without it
    core_energy: CoreEnergy


def core_energy(cost_lut) -> CoreEnergy:
    """Each node's ZigZag energy per core of a group's cost LUT (Stream's `CoreCostLUT.lut`)."""
    return tuple(
        (node.name, tuple((core.id, cme.energy_total, _memory_energy(cme)) for core, cme in per_core.items()))
        for node, per_core in cost_lut.lut.items()
    )


def _memory_energy(cme) -> float:
    return sum(sum(levels) for levels in cme.mem_energy_breakdown.values())


def external_fields(stages: list) -> frozenset[str] | None:
    """The context fields the inner pipeline reads before any of its stages writes them, by the stages' contracts;
    None when a stage declares no contract (it may read anything: no key can be complete)."""
    read: set[str] = set()
    written: set[str] = set()
    for stage in stages:
        if not (isinstance(stage, type) and issubclass(stage, Stage) and stage.declares_contract):
            return None
        read |= (set(stage.reads) | set(stage.optional_reads)) - written
        written |= set(stage.writes)
    for stage in stages:  # what a stage reads from the context the stages after it yield
        read |= set(stage.result_reads) - written - {f for s in stages for f in s.result_writes}
    return frozenset(read)


class MemoGroupIteration(FusionGroupIterationStage):
    """Stream's group loop with each group's outcome read from the cache or solved and stored (module docstring)."""

    result_writes = (*FusionGroupIterationStage.result_writes, CORE_ENERGY_KEY, COVERAGE_KEY, "allocation")

    def run(self):
        data = self.ctx.data  # the key reads what the inner stages read: fields this stage's contract cannot list
        settings = self._settings(data)
        store = cost_cache.cost_cache(KIND, "stream") if settings is not None else None
        outcomes: dict[int, GroupOutcome] = {}
        wall: dict[int, float] = {}
        ctx, solved_last = self.ctx, False
        for i, (workload, mapping) in enumerate(zip(self.sub_workloads, self.sub_mappings, strict=True)):
            began = time.time()
            key = self._key(settings, workload, mapping) if store is not None else None
            outcome = store.get(key) if key is not None else None
            solved_last = outcome is None
            if outcome is None:
                outcome, ctx = self._solve(i, workload, mapping)
                if key is not None:
                    store.put(key, outcome)
            elif outcome.coverage:
                found = [NodeCoverage(i, node, c) for node, c in outcome.coverage]
                self.ctx.set(**{COVERAGE_KEY: [*(self.ctx.get(COVERAGE_KEY) or []), *found]})
            outcomes[i], wall[i] = outcome, time.time() - began
        if not solved_last:  # Stream's `_solve` prices the dispatch off the last group's allocation's hardware facts
            facts = build_hardware_facts(self.accelerator, data.get("nb_cols_to_use"))
            ctx.set(allocation=SimpleNamespace(problem=SimpleNamespace(hardware=facts)))
        ctx.set(
            total_latency=sum(o.cycles for o in outcomes.values()),
            group_latencies={i: o.cycles for i, o in outcomes.items()},
            group_columns={i: o.columns for i, o in outcomes.items()},
            group_cycles={i: o.cycles for i, o in outcomes.items()},
            group_wall_times=wall,
            group_allocations={i: o.allocation for i, o in outcomes.items()},
            group_memory_accesses={i: o.memory_accesses for i, o in outcomes.items()},
            **{CORE_ENERGY_KEY: {i: o.core_energy for i, o in outcomes.items()}},
        )
        yield ctx

    def _solve(self, i: int, workload, mapping) -> tuple[GroupOutcome, Any]:
        """The group through the inner pipeline, as Stream's own loop runs it."""
        output = os.path.join(self.output_path, f"group_{i}")
        os.makedirs(output, exist_ok=True)
        self.ctx.set(workload=workload, mapping=mapping, output_path=output, group_index=i)
        before = len(self.ctx.get(COVERAGE_KEY) or [])
        (ctx,) = list(self.list_of_callables[0](self.list_of_callables[1:], self.ctx).run())
        allocation = ctx.get("allocation")
        accesses = ctx.get("memory_accesses")
        try:
            offchip = getattr(self.accelerator, "offchip_core_id", None)
            accesses = accesses.to_ir(offchip) if accesses is not None else None
        except Exception as exc:  # noqa: BLE001 -- as Stream's loop: observability must never fail the solve
            logger.warning("Group %d: could not serialise memory accesses: %s", i, exc)
            accesses = None
        outcome = GroupOutcome(
            cycles=allocation.estimated_cycles,
            columns=_compute_columns(allocation),
            allocation=AllocationIR.from_internal(allocation).model_dump(),
            memory_accesses=accesses,
            coverage=tuple((c.node, c.coverage) for c in (ctx.get(COVERAGE_KEY) or [])[before:]),
            core_energy=core_energy(ctx.data["cost_lut"]),  # an inner stage's field, not in this stage's contract
        )
        return outcome, ctx

    def _settings(self, data: dict) -> tuple | None:
        """The key's parts common to every group of the run, or None: no memo (no token, a stage without a contract,
        a tile search, a setting with no canonical form). Besides the fields the inner stages read, those they write
        that the context already holds (a stage may pop what it declares it writes: the tile search pops the
        placement alternatives, and with it on, one group's run would change what the next one sees)."""
        token = data.get(MEMO_TOKEN)
        fields = external_fields(self.list_of_callables)
        if token is None or fields is None or data.get("tile_search"):
            return None
        written = {f for s in self.list_of_callables for f in (*s.writes, *s.result_writes)}
        fields |= {f for f in written if data.get(f) is not None}
        try:
            values = {f: _setting(data.get(f)) for f in sorted(fields - OWN_WAY)}
        except Uncacheable as exc:
            logger.info("group memo off for this run: %s", exc)
            return None
        stages = tuple(f"{s.__module__}.{s.__qualname__}" for s in self.list_of_callables)
        return token, canonical(values), stages, CODE, LIBRARY_VERSIONS

    def _key(self, settings: tuple, workload, mapping) -> str | None:
        try:
            parts = [state_digest(x) for x in (workload, mapping)]
        except Exception as exc:  # noqa: BLE001 -- an object that does not pickle only costs the speed-up
            logger.info("group memo: a group that does not pickle (%s: %s); solving", type(exc).__name__, exc)
            return None
        return digest(KIND, settings, *parts)


class _StatePickler(pickle.Pickler):
    """Pickles an object's state without what is not state: the attributes `cost_cache.SKIPPED_ATTRIBUTES` names (ids
    ZigZag numbers process-globally: a core's memory ports, which a mapping made after another parse of the
    accelerator numbers otherwise; networkx's lazily filled cache), the values of cached properties (a function of
    the state, there once read: networkx's graph views, Stream's solved dimensions), and an xDSL value's `uses` (its
    use-def list: the tiling of one group adds uses to a tensor value other groups share, and of Stream only the AIE
    code generator reads uses, not its costing). Only for digests: what it writes is never loaded."""

    def reducer_override(self, obj: Any) -> Any:
        state = getattr(obj, "__dict__", None)
        if isinstance(obj, type) or type(state) is not dict:
            return NotImplemented
        skipped = _not_state(type(obj))
        if skipped.isdisjoint(state):
            return NotImplemented
        return object.__new__, (type(obj),), {k: v for k, v in state.items() if k not in skipped}


@functools.cache
def _not_state(cls: type) -> frozenset[str]:
    cached = {
        name for klass in cls.__mro__ for name, v in vars(klass).items() if isinstance(v, functools.cached_property)
    }
    return SKIPPED_ATTRIBUTES | cached | (USE_LISTS if issubclass(cls, IRWithUses) else frozenset())


def state_digest(obj: Any) -> str:
    """sha256 of everything `obj` holds, as pickled by `_StatePickler`."""
    buffer = io.BytesIO()
    _StatePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return hashlib.sha256(buffer.getbuffer()).hexdigest()


def _setting(value: Any) -> Any:
    """A context setting's canonical form; constraint families by their specs (name and options, in order)."""
    specs = getattr(value, "specs", None)
    return canonical(specs() if callable(specs) else value)


@contextmanager
def memo_groups() -> Iterator[None]:
    """Stream calls made inside iterate their groups through `MemoGroupIteration`."""
    own = stream.api.FusionGroupIterationStage  # the name `_solve` builds its stage list from
    stream.api.FusionGroupIterationStage = MemoGroupIteration
    try:
        yield
    finally:
        stream.api.FusionGroupIterationStage = own


def core_energy_of(estimate) -> dict[int, CoreEnergy]:
    """Each group's in-core energy split of a run made inside `memo_groups()`; raises otherwise."""
    found = estimate.context.get(CORE_ENERGY_KEY)
    if found is None:
        raise RuntimeError("no core energy recorded: run Stream inside group_memo.memo_groups()")
    return found
