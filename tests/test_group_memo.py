"""The group memo (stream_mla/engines/group_memo.py): a fused group Stream solved once answers later runs, with the
numbers a solve gives; the key reads state, not process-global ids; what it reads is what Stream's inner stages
declare they read; without its token a run is not memoised."""

import dataclasses
import functools
from pathlib import Path

import pytest
import stream.api
from stream.api import evaluate_mapping
from stream.stages.stage import Stage
from xdsl.dialects.arith import AddiOp
from xdsl.dialects.builtin import i32
from xdsl.ir import Block

from stream_mla.engines import Hardware
from stream_mla.engines import cost_cache as cc
from stream_mla.engines import group_memo as gm
from stream_mla.engines.stream_guard import COVERAGE_KEY, CoverageStage, coverage_of, coverage_probe
from stream_mla.engines.stream_runner import evaluate_stream, run_strategy, solve_options, stream_graph
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import PRESETS
from stream_mla.workloads import export, make_spec
from stream_mla.workloads.steps import FUSED_ATTENTION

LITE = MODELS["deepseek-v2-lite"]
EDGE = Hardware.from_platform(PRESETS["edge-npu"])


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(cc.CACHE_ENV, str(root))
    cc.STATS.clear()
    return root


def graph(tmp_path: Path, scheme: str, context: int) -> Path:
    spec = make_spec(model=LITE, scheme=scheme, phase="decode", batch=1, context=context)
    return export(spec, tmp_path / f"{scheme}-{context}.onnx")


def fused(onnx_path: Path, workdir: Path):
    workdir.mkdir()
    return evaluate_stream(onnx_path, EDGE, workdir, strategies=(FUSED_ATTENTION,))


def numbers(r) -> tuple:
    """Everything a result says but the wall times."""
    strategies = {k: {f: v for f, v in s.items() if f != "wall_s"} for k, s in r.strategies.items()}
    return r.latency_cycles, r.energy_breakdown_pj, r.engine_dram_bytes, r.nodes, r.warnings, strategies


def groups() -> tuple[int, int]:
    return cc.STATS["groups.hits"], cc.STATS["groups.misses"]


def test_a_later_point_reuses_groups_with_the_numbers_of_a_solve(tmp_path, cache, monkeypatch):
    """mla-recompute at L = 512 after L = 256: the projections and norms (which do not depend on L) come from the
    first run, the attention core is solved; the result equals a run with the memo off in every number."""
    fused(graph(tmp_path, "mla-recompute", 256), tmp_path / "short")
    first_hits, solved = groups()
    assert first_hits == 0 and solved == cc.STATS["groups.writes"] > 2
    cc.STATS.clear()
    long = graph(tmp_path, "mla-recompute", 512)
    memo = fused(long, tmp_path / "long")
    hits, misses = groups()
    assert hits > misses >= 1  # the core (and the cache write) depend on L
    monkeypatch.setenv(cc.CACHE_ENV, "off")
    cold = fused(long, tmp_path / "cold")
    assert numbers(memo) == numbers(cold)


def test_a_run_answered_whole_keeps_cycles_energy_and_coverage(tmp_path, cache):
    """The same run twice: every group of the second from the memo (its last one too, whose allocation Stream
    prices the dispatch from), with the same cycles, in-core energies and coverage records as the solve."""
    onnx_path = stream_graph(graph(tmp_path, "mla-absorb", 256), tmp_path)  # one graph input per reader
    yaml_path = EDGE.stream_yaml(tmp_path)
    runs = []
    for name in ("solved", "memo"):
        cc.STATS.clear()
        with coverage_probe(), gm.memo_groups():
            est, _ = run_strategy(EDGE, yaml_path, onnx_path, tmp_path / name, "keep-softmax", 2)
        runs.append((est, groups()))
    (solved, (hits, misses)), (memo, (memo_hits, memo_misses)) = runs
    assert hits == 0 and memo_misses == 0 and memo_hits == misses == len(solved.group_cycles) > 1
    assert memo.group_cycles == solved.group_cycles and memo.cycles == solved.cycles
    assert gm.core_energy_of(memo) == gm.core_energy_of(solved)
    assert coverage_of(memo) == coverage_of(solved) and len(coverage_of(memo)) >= len(solved.group_cycles)
    for key in ("group_allocations", "group_memory_accesses", "group_columns"):
        assert memo.context.get(key) == solved.context.get(key)


def test_another_platform_solves_again(tmp_path, cache):
    """The same graph on edge-npu with half its DRAM bandwidth: another hardware YAML, so no group is read from the
    first platform's entries (its transfers take longer: a stale entry would be wrong)."""
    onnx_path = stream_graph(graph(tmp_path, "mha", 256), tmp_path)
    edge = PRESETS["edge-npu"]
    slow = Hardware.from_platform(edge.model_copy(update={"dram_gb_s": edge.dram_gb_s / 2}))
    runs = []
    for name, hw in (("edge", EDGE), ("slow", slow)):
        cc.STATS.clear()
        (tmp_path / name).mkdir()
        with coverage_probe(), gm.memo_groups():
            est, _ = run_strategy(hw, hw.stream_yaml(tmp_path / name), onnx_path, tmp_path / name, "keep-softmax", 2)
        runs.append((est.cycles, groups()))
    (fast_cycles, (_, solved)), (slow_cycles, (hits, misses)) = runs
    assert hits == 0 and misses == solved > 1 and slow_cycles > fast_cycles


def test_without_its_token_a_run_is_not_memoised(tmp_path, cache):
    """A Stream call with options that do not carry `MEMO_TOKEN` (not from our runner) solves every group."""
    onnx_path = graph(tmp_path, "mha", 256)
    yaml_path = EDGE.stream_yaml(tmp_path)
    options = dataclasses.replace(solve_options(yaml_path), stage_options={"fusion_cut_points": "per-layer"})
    with coverage_probe(), gm.memo_groups():
        est = evaluate_mapping(str(yaml_path), str(onnx_path), str(tmp_path / "out"), options=options)
    assert est.group_cycles and groups() == (0, 0) and not (cache / "stream" / gm.KIND).exists()
    assert stream.api.FusionGroupIterationStage is not gm.MemoGroupIteration  # put back on leaving


class Port:
    """Stands for a ZigZag memory port: `port_id` is numbered process-globally."""

    def __init__(self, width: int, port_id: int):
        self.width, self.port_id = width, port_id

    @functools.cached_property
    def bytes(self) -> int:  # a view of the state, there once read (as networkx's graph views)
        return self.width // 8


def test_state_digest_reads_state_not_process_ids_or_use_lists():
    assert gm.state_digest(Port(64, 3)) == gm.state_digest(Port(64, 7))
    assert gm.state_digest(Port(64, 3)) != gm.state_digest(Port(32, 3))
    assert gm.state_digest([Port(64, 1), Port(64, 1)]) == gm.state_digest([Port(64, 2), Port(64, 5)])
    read = Port(64, 3)
    assert read.bytes == 8 and "bytes" in vars(read) and gm.state_digest(read) == gm.state_digest(Port(64, 3))
    value = Block(arg_types=[i32]).args[0]
    before = gm.state_digest(value)
    AddiOp(value, value)  # two uses of the value: xDSL's use-def list grows
    assert len(value.uses) == 2 and gm.state_digest(value) == before


def test_the_key_reads_what_streams_inner_stages_declare():
    """Stream 2.1.1's per-group pipeline with our coverage probe: the fields read before any stage writes them,
    typed in from the stages' contracts (a Stream upgrade that reads another field fails here)."""
    with coverage_probe():
        inner = list(stream.api._ALLOCATION_STAGES)
    assert CoverageStage in inner
    expected = {
        "workload", "mapping", "output_path", "tile_search",  # TileSearchStage, TilingGenerationStage
        "accelerator", "loma_lpf_limit", "temporal_mapping_type", "nb_spatial_mappings_generated",
        "loma_show_progress_bar",  # CoreCostEstimationStage
        "nb_cols_to_use",  # SteadyStateLoweringStage
        "sub_workloads", "group_index", COVERAGE_KEY,  # CoverageStage
        "backend", "families", "time_limit_s", "solver_log", "artifacts",  # AllocationStage
    }  # fmt: skip
    assert gm.external_fields(inner) == expected


def test_external_fields_follow_writes_and_refuse_an_undeclared_stage():
    class Reads(Stage):
        reads, optional_reads, writes = ("a",), ("b",), ("c",)

    class ReadsWritten(Stage):
        reads, writes, result_reads = ("c", "d"), ("e",), ("f",)

    class WritesLater(Stage):
        reads, writes, result_writes = ("a",), ("b",), ("f",)

    class NoContract(Stage):
        pass

    assert gm.external_fields([Reads, ReadsWritten, WritesLater]) == {"a", "b", "d"}
    assert gm.external_fields([Reads, NoContract]) is None
