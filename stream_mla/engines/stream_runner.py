"""Run Stream 2.1.1 on one graph and one accelerator, and read every number off all fused groups.

Strategies (engines.md §6, §16; `result.STREAM_STRATEGIES`): cuts after every layer that keep a Softmax's pieces
together (keep-softmax), plain per-layer cuts (every Softmax piece round-trips DRAM, pessimistic), a fixed mapping that
tiles each layer to fit its cores' memory (`stream_mapping.py`; it costs a Softmax as one node), the fused attention
core (the fixed mapping with a split-KV graph's attention core as one fused group, split along the chunks over the
matrix cores: what FlashDecoding/FlashMLA run), and Stream's own whole-graph fusion (default-fusion). `evaluate_stream`
runs every strategy it is given and returns the fastest one that fits and passes the guard ("auto" searches
`AUTO_STRATEGIES`); the result names the winner and records what each gave (`Result.strategies`). Points from
different strategies are not comparable to within a few percent (trap 8).

fused-attention needs a split-KV graph: a plain decode graph (the workload's default, kv_chunks 1) is re-exported
for it with `split_kv.default_chunks` chunks (one or more per matrix core, each fitting on-chip). The split graph has
the plain graph's MACs and DRAM bytes, so the result is priced against the same roofline and analytic bytes.

Stream is given the graph with every reader of a shared input reading its own copy (`graph_fix`: Stream 2.1.1's
fusion otherwise costs a slice of a node, trap 16); the analytic counts read the graph as given. Every run is
checked by `stream_guard` (coverage 1 for every node, DRAM and latency at or above the analytic floors): a strategy
whose result fails is recorded in the warnings and the next one tried, and `EngineBelowPhysics` is raised when none
is left, so a number below physics is never returned.

Energy (trap 1, 5, 7): Stream reports per group the in-core ZigZag energy and the transfer energy. In-core
energy is split into MAC and on-chip memory with the per-iteration ZigZag cost entries Stream saves for the
cores each node ran on; DRAM energy is the off-chip bits moved times the DRAM pJ/bit, and the rest of the
transfer energy (link hops, the on-chip end of each DMA) is `onchip_transfer`.
"""

import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
from stream.api import SolveOptions, default_families, evaluate_mapping
from stream.frontends import load_workload
from stream.ir.infeasibility import InfeasibleAllocationError
from stream.opt.allocation.constraint_optimization.families import available_families
from stream.workload.node import HasIterationSpace
from stream.workload.normalization import expand_normalizations

from stream_mla.engines import engine_speed
from stream_mla.engines.cost_cache import register_stream_backend
from stream_mla.engines.graph_fix import COPY_TAG, shared_inputs, split_shared_inputs, squeeze_unit_axes
from stream_mla.engines.group_memo import MEMO_TOKEN, CoreEnergy, core_energy_of, memo_groups, memo_token
from stream_mla.engines.hardware import Hardware
from stream_mla.engines.registry import bound_platform, finish
from stream_mla.engines.result import AUTO_STRATEGIES, EngineError, NodeResult, Result
from stream_mla.engines.stream_families import TRAFFIC_TIE_BREAK
from stream_mla.engines.stream_guard import BELOW_PHYSICS, EngineBelowPhysics, coverage_of, coverage_probe, violations
from stream_mla.engines.stream_mapping import (
    PLAN_SAVING,
    CorePlan,
    MappingError,
    attention_core,
    attention_plans,
    compute_cores,
    cores_for,
    write_fixed_mapping,
    write_fused_attention_mapping,
)
from stream_mla.workloads.counts import count_file, metadata, roofline
from stream_mla.workloads.steps import FUSED_ATTENTION, MAPPED_STRATEGIES

SOFTMAX_PARTS = ("_max", "_exp", "_sum", "_div")
DEFAULT_FUSION = "default-fusion"  # Stream's generic mapper with no cut points
# Fused attention's tries until Stream finds an allocation: (extra tile halvings of the fused group, the fixed part's
# tiles sized for the smallest compute core's memory, see stream_mapping.fixed_mapping); the fixed mapping's tries
FUSED_RETRIES = ((0, False), (2, False), (0, True))
FIXED_RETRIES = ((0, False), (0, True))
# A search runs default-fusion (measured 150 s for V3 absorb L = 4k on h100-like's 8 cores, against 10-30 s for the
# others) only on platforms of at most this many matrix cores, and only as the fallback: when no strategy before it
# gave a valid result (measured: never faster than the others' best where it ran beside them; a near-roofline best,
# within SKIP_WITHIN, is named as such)
EXPENSIVE_MAX_CORES = 1
SKIP_WITHIN = 1.05
# Any later strategy is skipped once the best valid result is within NEAR_ROOFLINE of the roofline (no strategy can
# be more than 1 % faster), and a per-layer one once the best beats its floor (`per_layer_floor`): a cut after every
# layer runs the layers one after another (engines.md trap 9), each sending its inputs and outputs through DRAM
# (measured: 0.9996-2.2x the layer-by-layer bytes on every searched point of the default reproduction; the floor
# takes PER_LAYER_FLOOR of them) and none faster than the platform's peak MAC/s (measured: every one of the 425
# per-layer results of the stop-15 reproduction and acceptance grid takes 1.0013x the floor or more)
NEAR_ROOFLINE = 1.01
PER_LAYER = ("keep-softmax", "per-layer", "fixed-mapping")
PER_LAYER_FLOOR = 0.99


class InfeasibleError(EngineError):
    """No strategy fits the workload on the accelerator; the message names platform, layers and memory."""


# What Stream 2.1.1 raises on a strategy it cannot lower (e.g. "Currently only support single destination for
# constant output transfer"): within a search, recorded for that strategy while the others run on
SEARCH_ERRORS = (AssertionError, NotImplementedError, ValueError, KeyError, RuntimeError)


def keep_softmax_cuts(onnx_path: Path) -> list[str]:
    """A cut after every node except inside a Softmax (its max/exp/sum/div stay in one group)."""
    wl = expand_normalizations(load_workload(str(onnx_path)))
    names = [n.name for n in wl.dataflow_sort() if isinstance(n, HasIterationSpace)]
    return [n for n in names[:-1] if not n.endswith(SOFTMAX_PARTS[:3])]


def layer_name(stream_node: str) -> str:
    """Stream's Softmax pieces (`probs_max`, ...) belong to the ONNX Softmax node (`probs`), and a view cloned per
    reader (`x_view__for_a`) to the view it copies."""
    stream_node = stream_node.split(COPY_TAG)[0]
    for part in SOFTMAX_PARTS:
        if stream_node.endswith(part):
            return stream_node.removesuffix(part)
    return stream_node


def solve_options(hw_yaml: Path, **stage_options) -> SolveOptions:
    """Stream's options for one run: no artifacts, Stream's default constraint families plus the traffic tie-break
    (`stream_families.TrafficTieBreak`: of two allocations a few cycles apart, the one that moves less DRAM), and
    the accelerator's key for the group memo (`group_memo.MEMO_TOKEN`)."""
    families = (*_default_families(str(hw_yaml), Path(hw_yaml).read_text()), TRAFFIC_TIE_BREAK)
    stage_options = {MEMO_TOKEN: memo_token(hw_yaml), **stage_options}
    return SolveOptions(artifacts=False, families=families, stage_options=stage_options)


@functools.lru_cache(maxsize=64)
def _default_families(hw_yaml: str, text: str) -> tuple:
    """Stream's default families for the accelerator (parsing it takes 0.2 s; keyed by its text as well as its path,
    which a later run may rewrite). Stream finds the tie-break through the package's installed entry point: an
    install older than it, or a STREAM_OVERLAYS list without this distribution, is a one-line error, not a solve
    that fails on an unknown family."""
    if TRAFFIC_TIE_BREAK not in available_families():
        raise EngineError(f"Stream does not see the constraint family {TRAFFIC_TIE_BREAK} (an entry point of "
                          "stream-mla's pyproject.toml): reinstall the package (pip install -e .), and if "
                          "STREAM_OVERLAYS is set, add stream-mla to it")  # fmt: skip
    return default_families(hw_yaml)


def run_strategy(hw: Hardware, hw_yaml: Path, onnx_path: Path, out: Path, strategy: str, bytes_per_element: int):
    """(estimate, the fused core's `CorePlan` or None): one Stream run of `onnx_path` (the graph Stream is given, see
    `stream_graph`), its folders under `out`.
    Stream's per-node ZigZag cost estimation goes through the persistent cost cache (`cost_cache.py`: a Stream
    core-cost backend, shared across points and processes, under $STREAM_MLA_CACHE); Stream's own per-run LUT stays
    in each group folder under `out`. Stream's and ZigZag's slowest pure helpers run as their faster twins
    (`engine_speed`)."""
    register_stream_backend()
    engine_speed.install()
    if strategy in MAPPED_STRATEGIES:
        out.mkdir(parents=True, exist_ok=True)
        tries = FUSED_RETRIES if strategy == FUSED_ATTENTION else FIXED_RETRIES
        failure: Exception | None = None  # Stream's first refusal names the layer; a retry's own failure does not
        for extra, smallest in tries:
            name = f"{strategy}-{extra}{'-smallest' if smallest else ''}"
            plan = None
            try:
                if strategy == FUSED_ATTENTION:
                    mapping, plan = write_fused_attention_mapping(onnx_path, hw.stream, bytes_per_element,
                                                                  out / f"{name}.yaml", extra, smallest)  # fmt: skip
                else:
                    mapping = write_fixed_mapping(onnx_path, hw.stream, bytes_per_element, out / f"{name}.yaml",
                                                  smallest)  # fmt: skip
            except MappingError as exc:  # e.g. no tile left to halve: the next try may still fit
                failure = failure or exc
                continue
            try:
                return evaluate_mapping(str(hw_yaml), str(onnx_path), str(out / name), mapping=str(mapping),
                                        options=solve_options(hw_yaml)), plan  # fmt: skip
            except InfeasibleAllocationError as exc:
                failure = first_refusal(failure, exc)
        raise failure
    if strategy == DEFAULT_FUSION:
        return evaluate_mapping(str(hw_yaml), str(onnx_path), str(out), options=solve_options(hw_yaml)), None
    cuts = keep_softmax_cuts(onnx_path) if strategy == "keep-softmax" else "per-layer"
    options = solve_options(hw_yaml, fusion_cut_points=cuts)
    return evaluate_mapping(str(hw_yaml), str(onnx_path), str(out), options=options), None


def allocated_cores(group: dict, node: str) -> set[int]:
    """Core ids a node ran on (resource_allocation is a list of lists of resources)."""
    alloc = group.get("mapping_nodes", {}).get(node, {}).get("resource_allocation", [])
    return {r["id"] for option in alloc for r in option if r.get("type") == "core"}


def in_core_split(energy: CoreEnergy, group: dict) -> tuple[float, float]:
    """(mac, total) pJ per iteration from the ZigZag entries (`group_memo.core_energy`) of the cores each node was
    allocated to."""
    mac = total = 0.0
    for node, per_core in energy:
        cores = allocated_cores(group, node)
        for core, energy_total, memory in per_core:
            if core in cores:
                mac, total = mac + energy_total - memory, total + energy_total
    return mac, total


def stream_graph(onnx_path: Path, workdir: Path, fused: bool = False) -> Path:
    """The graph Stream is given: `onnx_path` itself, or a copy where each reader of a shared input has its own.
    fused: for the fused-attention mapping, an input only the attention core reads (the MLA latent, read as keys and
    as values) stays shared, without its unit axes, so the fused group reads it once (graph_fix)."""
    model = onnx.load(str(onnx_path))
    shared = shared_inputs(model)
    if not shared:
        return onnx_path
    keep = ()
    if fused:
        core = set(attention_core(onnx_path)[0])
        keep = tuple(name for name, readers in shared.items() if set(readers) <= core)
    path = workdir / f"{onnx_path.stem}.stream.onnx"
    onnx.save(squeeze_unit_axes(split_shared_inputs(model, keep), keep), str(path))
    return path


@dataclass(frozen=True)
class Cores:
    """What `split_kv.default_chunks` reads of a platform, for a raw Stream YAML (no PlatformSpec)."""

    cores: int
    sram_bytes: int


# Split-KV graphs fused attention tries, as multiples of `default_chunks`: smaller chunks for a core whose tile the
# estimate let through but the mapping cannot fit; and, where the first graph's core reads its inputs again, the
# candidates `fewest_rereads` ranks (smaller chunks shrink the core's per-chunk tiles, so more heads share a tile
# and the cache is read again fewer times: V3 recompute B = 32 L = 4k on cloud-fusemax's one core, 1 -> 16 chunks,
# DRAM 3.004 -> 1.880x analytic, 1.063 -> 1.054x the roofline; on tpu-v5e-like at L = 32k, 8 -> 256 chunks, 128
# positions each, let a core hold its heads' W_UK and W_UV beside its tiles: the cache 2x -> 1x)
RETRY_CHUNKS = (1, 2, 4)
RANKED_CHUNKS = (1, 2, 4, 8, 16, 32)


def split_kv_graphs(onnx_path: Path, hw: Hardware, workdir: Path,
                    factors: tuple[int, ...] = RETRY_CHUNKS) -> Iterator[tuple[Path, int]]:  # fmt: skip
    """The graphs fused-attention tries, with their chunks C: for a plain decode graph of a stream-mla workload, the
    workload re-exported with `default_chunks(spec, platform)` chunks times each of `factors` (one at a time); any
    other graph as it is (C read off the graph). A scheme without a split-KV form runs its plain graph."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    spec_doc = metadata(model).get("spec")
    chunks = (spec_doc or {}).get("kv_chunks") or 1
    if not spec_doc or spec_doc.get("phase") != "decode" or chunks > 1:
        yield onnx_path, chunks
        return
    from stream_mla.errors import SpecError
    from stream_mla.workloads import WorkloadSpec, export
    from stream_mla.workloads.split_kv import default_chunks

    spec = WorkloadSpec.model_validate(spec_doc)
    matrix = cores_for("MatMul", compute_cores(hw.stream))
    platform = hw.platform or Cores(len(matrix), min(c.memory_bytes for c in matrix))
    first = default_chunks(spec, platform)
    for chunks in dict.fromkeys(c for c in (k * first for k in factors) if c <= spec.keys):
        if chunks == 1:
            yield onnx_path, 1
            continue
        split = spec.model_copy(update={"kv_chunks": chunks})
        try:  # B > 1: batch and K/V heads as separate axes, which Stream can fuse (split_kv.py's layout note)
            path = export(split, workdir / f"{split.slug}.onnx", batch_apart=spec.batch > 1)
        except SpecError:  # no split-KV form (e.g. mla-sparse): the plain graph
            yield onnx_path, 1
            return
        yield path, chunks


def first_refusal(kept: Exception | None, new: Exception) -> Exception:
    """The failure a strategy reports: Stream's first refusal (it names the layer and the memory short), else the
    latest failure of our own (a mapping that cannot be made)."""
    return kept if isinstance(kept, InfeasibleAllocationError) else new


def run_fused(hw: Hardware, hw_yaml: Path, onnx_path: Path, workdir: Path, out: Path, split_inputs: bool,
              bytes_per_element: int) -> tuple[object, dict, str, CorePlan]:  # fmt: skip
    """(estimate, counts of the graph Stream ran, note, the core's plan) of the fused-attention strategy:
    the split-KV graphs of `split_kv_graphs` in turn until one's mapping fits, then the plain graph (its attention
    core fused whole). Stream cannot lower a split graph whose layout it materializes inside the core (a FusionEdge:
    it then splits the workload into one group more than the mapping has; the split graphs keep B and the heads
    apart for that, split_kv.py): the next candidate runs."""

    def candidates(factors: tuple[int, ...]) -> Iterator[tuple[Path, Path, int]]:
        tried = set()
        for split, chunks in itertools.chain(split_kv_graphs(onnx_path, hw, workdir, factors), [(onnx_path, 1)]):
            if chunks not in tried:
                tried.add(chunks)
                yield stream_graph(split, workdir, fused=True) if split_inputs else split, split, chunks

    failure = None
    tries = fewest_rereads(candidates(RETRY_CHUNKS), lambda: candidates(RANKED_CHUNKS), hw, bytes_per_element)
    for given, split, chunks in tries:
        try:
            est, plan = run_strategy(hw, hw_yaml, given, out / f"c{chunks}", FUSED_ATTENTION, bytes_per_element)
        except (MappingError, InfeasibleAllocationError) as exc:
            failure = first_refusal(failure, exc)
            continue
        except AssertionError as exc:
            if "fused groups but workload splits" not in str(exc):
                raise
            fold = MappingError(f"fused-attention with {chunks} chunks: Stream cuts the core at a layout it cannot "
                                f"fold ({exc})")  # fmt: skip
            failure = first_refusal(failure, fold)
            continue
        counts = count_file(split)  # its nodes; MACs and bytes: the given's plus any padding (`with_padding`)
        pad = f", {counts['pad_keys']} padded key slots" if counts["pad_keys"] else ""
        return est, counts, f"kv_chunks {chunks}{pad}", plan
    raise failure


def fewest_rereads(candidates: Iterator[tuple[Path, Path, int]], ranked: Callable[[], Iterator], hw: Hardware,
                   bytes_per_element: int) -> Iterator:  # fmt: skip
    """The (given graph, graph, chunks) candidates in the order fused attention tries them: as listed (made one at a
    time), unless the first one's attention core reads its inputs again (`CorePlan.rereads`: mla-recompute's
    weights or cache where a core's memory cannot hold them across its loops): then the `ranked` candidates by what
    their plans read (`_CoreShape.dram_bytes`; the first stays first unless another reads PLAN_SAVING less), so a
    candidate Stream refuses gives way to the next that reads least (h20-like recompute B = 1 L = 32k: 16 chunks
    refused, then 128, the cache read twice, before 32, the weights four times). Mappings only: no Stream run."""

    engine_speed.install()  # the plans read Stream's workload dims: its solve's twins, as in `run_strategy`

    def estimate(given: Path):
        try:
            return attention_plans(given, hw.stream, bytes_per_element)[1]
        except MappingError:
            return None

    first = next(candidates)
    plan = estimate(first[0])
    if plan is None or not plan.rereads:
        yield first
        yield from candidates
        return
    every = [first, *(c for c in ranked() if c[2] != first[2])]
    read = [plan.dram_bytes] + [p.dram_bytes if (p := estimate(c[0])) else float("inf") for c in every[1:]]
    order = sorted(range(len(every)), key=lambda i: (read[i], i))
    if read[order[0]] >= (1 - PLAN_SAVING) * read[0]:  # none reads clearly less: the first stays first
        order = [0] + [i for i in order if i != 0]
    yield from (every[i] for i in order)


def port_ratio(hw: Hardware) -> float:
    """The DRAM port Stream is given (whole bits per cycle) over the platform's exact bandwidth (1 for a raw YAML)."""
    return hw.dram_bytes_per_s / hw.platform.dram_bytes_per_s if hw.platform is not None else 1.0


def strategy_record(result: Result | None, status: str, wall: float, note: str = "",
                    plan: CorePlan | None = None) -> dict:  # fmt: skip
    """What one strategy gave, for `Result.strategies`; with the inputs its fused core's plan reads more than once
    (`core_rereads`: {graph tensor: times}) and the bytes that adds, estimated (`core_reread_bytes`)."""
    record: dict = {"status": status, "wall_s": round(wall, 3)}
    if result is not None:
        roof = result.latency_s / result.roofline_bound_s if result.roofline_bound_s else None
        dram = result.engine_dram_bytes / result.dram_bytes if result.dram_bytes else None
        record.update(latency_cycles=result.latency_cycles, engine_dram_bytes=result.engine_dram_bytes,
                      roofline_ratio=roof, dram_ratio=dram)  # fmt: skip
    if note:
        record["note"] = note
    if plan is not None and plan.again:
        record.update(core_rereads=plan.again, core_reread_bytes=plan.dram_bytes - plan.least_bytes)
    return record


def search_skips(strategy: str, hw: Hardware, valid: list[Result], counts: dict) -> str:
    """Why a search leaves `strategy` out (empty: it runs): it cannot beat the best valid result so far by more than
    1 % (the roofline bounds every strategy; `per_layer_floor` the per-layer ones), or it is
    default-fusion on many cores or after a valid result (the fallback)."""
    if strategy == DEFAULT_FUSION:
        cores = len(cores_for("MatMul", compute_cores(hw.stream)))
        if cores > EXPENSIVE_MAX_CORES:
            return f"{cores} matrix cores (runs on at most {EXPENSIVE_MAX_CORES} in a search; ask for it by name)"
    best = min(valid, key=lambda r: r.latency_cycles, default=None)
    if best is None or not best.roofline_bound_s:
        return ""
    ratio = best.latency_s / best.roofline_bound_s
    if ratio <= (SKIP_WITHIN if strategy == DEFAULT_FUSION else NEAR_ROOFLINE):
        return f"{best.strategy} is already {ratio:.3f}x the roofline"
    if strategy == DEFAULT_FUSION:
        return (f"{best.strategy} gave a valid result (default fusion is the fallback: on the 17 points of the "
                "default reproduction where it ran beside the others it was never faster than their best, 1.000-2.03x, "
                "and took 9-102 s; ask for it by name)")  # fmt: skip
    if strategy in PER_LAYER and best.latency_cycles <= (floor := per_layer_floor(hw, counts)):
        return (
            f"{best.strategy} takes {best.latency_cycles:,.0f} cycles, below what a cut after every layer costs at "
            f"best ({floor:,.0f} cycles: the layers in turn, each at the platform's peak MAC/s or moving "
            f"{PER_LAYER_FLOOR:g} x its inputs and outputs through DRAM, whichever is slower)"
        )
    return ""


def per_layer_floor(hw: Hardware, counts: dict) -> float:
    """Cycles no strategy with a cut after every layer can beat: the layers one after another, each taking its MACs
    at the platform's peak or PER_LAYER_FLOOR of its inputs and outputs (`io_bytes`) through DRAM, whichever is
    longer. At least PER_LAYER_FLOOR x the layer-by-layer bytes, the floor's memory part alone."""
    bits = hw.dram_bits_per_cycle
    return sum(max(n["macs"] / hw.peak_macs_per_cycle, PER_LAYER_FLOOR * n["io_bytes"] * 8 / bits)
               for n in counts["nodes"])  # fmt: skip


def evaluate_stream(
    onnx_path: Path, hw: Hardware, workdir: Path, strategies=AUTO_STRATEGIES, split_inputs: bool = True
) -> Result:
    """Run every strategy in `strategies` and return the fastest one that fits and passes the guard, with what each
    gave in `Result.strategies` (and each failure in the warnings). split_inputs=False hands Stream the graph as
    given, to measure Stream's own behaviour (the guard still runs)."""
    onnx_path, workdir = Path(onnx_path), Path(workdir)
    counts = count_file(onnx_path)  # the analytic side reads the graph as given
    graph = stream_graph(onnx_path, workdir) if split_inputs else onnx_path
    hw_yaml = hw.stream_yaml(workdir)
    start = time.perf_counter()
    failures, below, valid, records = [], None, [], {}
    logging.disable(logging.WARNING)  # ZigZag floods the log; degenerate nodes are checked in collect instead
    try:
        for strategy in strategies:
            out, began, note, plan = workdir / f"stream-{strategy}", time.perf_counter(), "", None
            if len(strategies) > 1 and (why := search_skips(strategy, hw, valid, counts)):
                records[strategy] = strategy_record(None, "skipped", 0.0, why)
                continue
            try:
                given_counts, bpe = counts, counts["bytes_per_element"]
                with coverage_probe(), memo_groups():
                    if strategy == FUSED_ATTENTION:
                        est, given_counts, note, plan = run_fused(hw, hw_yaml, onnx_path, workdir, out,
                                                                  split_inputs, bpe)  # fmt: skip
                    else:
                        est, plan = run_strategy(hw, hw_yaml, graph, out, strategy, bpe)
            except InfeasibleAllocationError as exc:
                failures.append(describe_infeasible(hw, strategy, exc))
                records[strategy] = strategy_record(None, "infeasible", time.perf_counter() - began, failures[-1])
                continue
            except MappingError as exc:
                failures.append(f"{strategy}: {exc}")
                records[strategy] = strategy_record(None, "infeasible", time.perf_counter() - began, failures[-1])
                continue
            except SEARCH_ERRORS as exc:  # a Stream crash on one strategy leaves the others' numbers standing
                if len(strategies) == 1:
                    raise
                failures.append(f"{strategy}: Stream failed ({exc.__class__.__name__}: {str(exc)[:200]})")
                records[strategy] = strategy_record(None, "error", time.perf_counter() - began, failures[-1])
                continue
            result = collect(est, hw, onnx_path, given_counts, strategy, time.perf_counter() - start, [])
            found = violations(
                result, coverage_of(est), port_ratio(hw), (hw.peak_macs_per_cycle, hw.dram_bits_all_ports)
            )
            wall = time.perf_counter() - began
            if found:  # like a strategy that does not fit: the others decide
                failures.append(f"{strategy}: {'; '.join(found)}")
                why = "; ".join(filter(None, [note, *found]))
                records[strategy] = strategy_record(result, "below physics", wall, why, plan)
                below = (result, tuple(found))
                continue
            result = with_padding(result, counts, hw)
            records[strategy] = strategy_record(result, "ok", wall, note, plan)
            valid.append(result)
    finally:
        logging.disable(logging.NOTSET)
    if valid:
        best = min(valid, key=lambda r: r.latency_cycles)  # ties: the earlier strategy
        warnings = [f"strategy {f}" for f in failures] + best.warnings + hw.connection_warnings
        return replace(best, engine_wall_s=time.perf_counter() - start, warnings=warnings, strategies=records)
    if below is not None:
        raise EngineBelowPhysics(below_message(hw, onnx_path, failures), *below)
    raise InfeasibleError(infeasible_message(hw, onnx_path, failures))


def with_padding(result: Result, counts: dict, hw: Hardware) -> Result:
    """A result priced against the workload's own counts (`counts`, the graph as given): where the graph Stream ran
    read padded key slots (a split-KV graph whose chunks do not divide the keys), its MACs and bytes beyond the
    workload's are `pad_macs` and `pad_bytes`, and the roofline is the workload's."""
    pad_macs, pad_bytes = result.macs - counts["macs"], result.dram_bytes - counts["bytes"]["total"]
    if not pad_macs and not pad_bytes:
        return result
    p = bound_platform(hw)
    roof = roofline(counts, p.peak_mac_per_s, p.dram_bytes_per_s)
    return replace(result, macs=counts["macs"], dram_bytes=counts["bytes"]["total"], roofline_bound_s=roof.bound_s,
                   bound=roof.bound, pad_macs=pad_macs, pad_bytes=pad_bytes)  # fmt: skip


def below_message(hw: Hardware, onnx_path: Path, failures: list[str]) -> str:
    return (f"platform {hw.name}: {onnx_path.stem}: every strategy is {BELOW_PHYSICS} or does not fit "
            f"({'; '.join(failures)}): a Stream costing error, see docs/stream-fusion-truncation.md")  # fmt: skip


def failing_layers(exc: BaseException) -> list[str]:
    """Stream's error names a core, not the layers: read them off the decision space being solved."""
    tb, names = exc.__traceback__, []
    while tb is not None:
        frame_locals = tb.tb_frame.f_locals
        space = frame_locals.get("space") or getattr(frame_locals.get("self"), "space", None)
        if hasattr(space, "ssc_nodes"):
            names = [layer_name(n.name) for n in space.ssc_nodes]
        tb = tb.tb_next
    return list(dict.fromkeys(names))


def describe_infeasible(hw: Hardware, strategy: str, exc: InfeasibleAllocationError) -> str:
    summary = str(exc).split(" The auto-generated mapping")[0].removeprefix("Infeasible mapping: ")
    for core_id, core in hw.stream.get("cores", {}).items():  # "Core 0" -> "Core 0 (edge-npu_mxu)"
        summary = summary.replace(f"Core {core_id}:", f"Core {core_id} ({core.get('name', '?')}):")
    layers = failing_layers(exc)
    return f"{strategy}: layer {'+'.join(layers) if layers else '?'}: {summary}"


def infeasible_message(hw: Hardware, onnx_path: Path, failures: list[str]) -> str:
    return (f"platform {hw.name}: {onnx_path.stem} does not fit under any strategy ({'; '.join(failures)}); "
            "give the platform more on-chip memory, or shorten the context")  # fmt: skip


def collect(est, hw: Hardware, onnx_path: Path, counts: dict, strategy: str, wall: float,
            failures: list[str]) -> Result:  # fmt: skip
    groups = est.context.get("group_allocations")
    accesses = est.context.get("group_memory_accesses")
    core_energy = core_energy_of(est)
    node_macs = {n["name"]: n["macs"] for n in counts["nodes"]}
    node_ops = {n["name"]: n["op"] for n in counts["nodes"]}
    energy = {"mac": 0.0, "onchip_memory": 0.0, "dram": 0.0, "onchip_transfer": 0.0}
    warnings = [f"strategy {f}" for f in failures]  # a copy: the caller's list grows with later strategies
    rows, dram_bits, stream_macs = [], 0.0, 0
    for index, group in groups.items():
        perf = group["performance"]
        e = perf["energy"]
        iterations = e["total_pj"] / e["per_iteration_pj"] if e["per_iteration_pj"] else 0.0
        mac_iter, core_iter = in_core_split(core_energy[index], group)
        in_core = e["node_pj_per_iteration"] * iterations
        mac = in_core * (mac_iter / core_iter) if core_iter else 0.0
        bits = sum((c["read"] + c["write"]) * c["read_bandwidth"] for c in accesses[index]["cores"] if c["is_offchip"])
        dram_pj = bits * hw.dram_pj_per_bit
        transfer = e["transfer_pj_per_iteration"] * iterations
        energy["mac"] += mac
        energy["onchip_memory"] += in_core - mac
        energy["dram"] += dram_pj
        energy["onchip_transfer"] += transfer - dram_pj
        dram_bits += bits
        degenerate = perf["aggregate"]["degenerate_nodes"]
        if degenerate:
            warnings.append(f"Stream priced {degenerate} at ideal cycles and zero energy (ZigZag could not cost them)")
        names = sorted({layer_name(n) for n in perf["nodes"]}, key=list(node_macs).index)
        macs = sum(node_macs.get(n, 0) for n in names)
        stream_macs += macs
        bottleneck = perf["bottleneck"]
        cores = sorted(set().union(*(allocated_cores(group, n) for n in perf["nodes"])))
        rows.append(NodeResult(name="+".join(names), op="+".join(dict.fromkeys(node_ops.get(n, "?") for n in names)),
                               macs=macs, cycles=float(group["latency"]["total"]),
                               bound="compute" if bottleneck["compute_bound_pct"] >= 50 else "transfer",
                               energy_pj=e["total_pj"], core=",".join(map(str, cores)),
                               dram_bytes=bits / 8))  # fmt: skip
    if stream_macs != counts["macs"]:
        warnings.append(f"Stream's groups cover {stream_macs} MACs, the graph has {counts['macs']}")
    if energy["onchip_transfer"] < -1e-6 * max(1.0, energy["dram"]):
        warnings.append(f"DRAM energy {energy['dram']:.4g} pJ exceeds Stream's transfer energy: check dram pJ/bit")
    return finish("stream", hw, onnx_path.stem, counts, latency_cycles=est.cycles, energy_pj=energy,
                  engine_dram_bytes=dram_bits / 8, strategy=strategy, wall_s=wall, nodes=rows,
                  warnings=warnings, graph=onnx_path)  # fmt: skip
