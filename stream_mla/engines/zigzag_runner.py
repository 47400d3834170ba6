"""Run ZigZag 3.9.1 on one graph and one platform core, layer by layer, and read every number off the CMEs.

ZigZag costs each MatMul/Gemm/Conv standalone (engines.md trap 14): inputs come from DRAM, outputs go back,
`latency_total2` includes the loading, and layers never overlap, so the graph latency is the plain sum.
Every other op (Softmax, norms, elementwise) is free (trap 12); the result's warnings say how many there were.

The search is the API's pipeline without its dump/plot stages (§13 lean runner): LOMA only (SALSA is not
deterministic), nothing written outside `workdir` and the cost cache. Identical layers (equal projections, repeated
shapes across a sweep) are searched once: a memo stage keyed on everything the search depends on answers them from
this process's memo, else from the persistent cost cache shared by processes (`cost_cache.py`, under
`$STREAM_MLA_CACHE`), else searches and stores the answer in both.
"""

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Generator
from pathlib import Path
from typing import Any

import onnx
import yaml
from zigzag.cost_model.cost_model import CostModelEvaluation
from zigzag.mapping.data_movement import DataDirection
from zigzag.mapping.temporal_mapping import TemporalMappingType
from zigzag.stages.evaluation.cost_model_evaluation import CostModelStage
from zigzag.stages.main import MainStage
from zigzag.stages.mapping.spatial_mapping_generation import SpatialMappingGeneratorStage
from zigzag.stages.mapping.temporal_mapping_generator_stage import TemporalMappingGeneratorStage
from zigzag.stages.parser.accelerator_parser import AcceleratorParserStage
from zigzag.stages.parser.onnx_model_parser import ONNXModelParserStage
from zigzag.stages.results.reduce_stages import MinimalEDPStage, MinimalEnergyStage, MinimalLatencyStage
from zigzag.stages.stage import Stage, StageCallable
from zigzag.stages.workload_iterator import WorkloadStage

from stream_mla.engines import engine_speed
from stream_mla.engines.cost_cache import cached_search, canonical, core_description, entry_key, layer_description
from stream_mla.engines.registry import finish
from stream_mla.engines.result import EngineError, NodeResult, Result
from stream_mla.platforms import PlatformSpec, zigzag_accelerator, zigzag_mapping
from stream_mla.workloads.counts import count_file

REDUCE: dict[str, type[Stage]] = {"EDP": MinimalEDPStage, "energy": MinimalEnergyStage, "latency": MinimalLatencyStage}
NB_SPATIAL_MAPPINGS = 3
COSTED_OPS = ("MatMul", "Gemm", "Conv", "QLinearConv")  # what zigzag/parser/onnx prices; the rest are DummyNodes
LAYOUT_OPS = ("Reshape", "Transpose", "Identity", "Constant", "Squeeze", "Unsqueeze", "Flatten")  # views: free anyway

# (layer signature digest) -> best CME. Module level so a process evaluating many graphs searches each shape once.
_MEMO: dict[str, CostModelEvaluation] = {}
MEMO_STATS: Counter[str] = Counter()  # "hits" (memo) / "disk_hits" (cost cache) / "misses" (searched)
SEARCH_SETTINGS = ("loma_lpf_limit", "nb_mappings_generated", "enable_mix_spatial_mapping_generation",
                   "access_same_data_considered_as_no_access", "temporal_mapping_type")  # fmt: skip


def clear_memo() -> None:
    """Forget this process's memo (the persistent cost cache is another process's too: it stays)."""
    _MEMO.clear()
    MEMO_STATS.clear()


def layer_signature(layer: Any, accelerator: Any, context: tuple, settings: dict) -> tuple:
    """Everything the mapping search reads, before the spatial stage mutates `layer.spatial_mapping`: the layer's
    cost-relevant attributes, the core as parsed, the search settings and `context` (the reduce criterion and the
    stages that search), canonicalised so that the same search gives the same signature in every process
    (cost_cache.canonical).

    The layer and core names are left out on purpose: the mapping YAML is looked up by name first, but generated
    mappings only have `default` and op-type entries, and the mapping's effect on the layer (spatial mapping and
    hints, operand links, temporal ordering) is in the signature, so equal shapes on equal cores cost the same."""
    return (
        layer_description(layer),
        core_description(accelerator),
        tuple((name, canonical(settings.get(name))) for name in SEARCH_SETTINGS),
        context,
    )


class MemoStage(Stage):
    """Sits right after WorkloadStage: answers a layer from `_MEMO`, else from the cost cache, else runs the search
    below it and stores the best in both.

    Each reduce stage yields exactly one CME, so the sub-pipeline's single answer is the layer's optimum."""

    def __init__(self, list_of_callables: list[StageCallable], *, layer: Any, memo_context: tuple, **kwargs: Any):
        super().__init__(list_of_callables, layer=layer, memo_context=memo_context, **kwargs)
        self.layer = layer
        search = tuple(f"{stage.__module__}.{stage.__qualname__}" for stage in list_of_callables)  # its stages
        context = (*memo_context, *search)
        self.key = entry_key("runner", lambda: layer_signature(layer, kwargs["accelerator"], context, kwargs))

    def search(self) -> CostModelEvaluation:
        MEMO_STATS["misses"] += 1
        answers = list(self.list_of_callables[0](self.list_of_callables[1:], **self.kwargs).run())
        if len(answers) != 1:
            raise EngineError(f"zigzag: layer {self.layer.name}: the search gave {len(answers)} optima, expected 1")
        return answers[0][0]

    def run(self) -> Generator[tuple[Any, Any], None, None]:
        if self.key in _MEMO:
            MEMO_STATS["hits"] += 1
            yield _MEMO[self.key], None
            return
        searched = MEMO_STATS["misses"]
        cme = cached_search("runner", self.key, self.search)
        if MEMO_STATS["misses"] == searched:
            MEMO_STATS["disk_hits"] += 1
        if self.key is not None:
            _MEMO[self.key] = cme
        yield cme, None


def energy_by_memory(cme: CostModelEvaluation) -> dict[str, float]:
    """pJ per memory NAME (level indices differ between operands), plus the MAC array under "MAC" (§10)."""
    per_mem: dict[str, float] = defaultdict(float, MAC=cme.mac_energy)
    for op, per_level in cme.mem_energy_breakdown.items():
        levels = cme.accelerator.mem_hierarchy_dict[cme.layer.memory_operand_links.layer_to_mem_op(op)]
        for lvl, pj in zip(levels, per_level, strict=False):
            per_mem[lvl.name] += pj
    return dict(per_mem)


def dram_bytes_moved(cme: CostModelEvaluation) -> float:
    """Bytes read from and written to the `dram` level, all four directions, in each direction's port words (§10)."""
    total_bits = 0.0
    for op, per_level in cme.memory_word_access.items():
        mem_op = cme.layer.memory_operand_links.layer_to_mem_op(op)
        levels = cme.accelerator.mem_hierarchy_dict[mem_op]
        for lvl, accesses in zip(levels, per_level, strict=False):
            if not is_dram(lvl.name):
                continue
            for direction in DataDirection:
                words = accesses.get(direction)
                if words:
                    total_bits += words * lvl.get_max_bandwidth(mem_op, direction)
    return total_bits / 8


def is_dram(memory_name: str) -> bool:
    return "dram" in memory_name.lower()


def node_bound(cme: CostModelEvaluation) -> str:
    """ "compute" when the array's own temporal cycles are at least half the layer's latency, i.e. stalls plus
    on/off-loading (the memory side) do not exceed the compute; otherwise "transfer"."""
    return "compute" if cme.ideal_temporal_cycle >= cme.latency_total2 - cme.ideal_temporal_cycle else "transfer"


def free_op_warning(onnx_path: Path) -> str | None:
    """ZigZag prices only COSTED_OPS: name the compute ops it silently treats as free (trap 12)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    free = Counter(n.op_type for n in model.graph.node if n.op_type not in (*COSTED_OPS, *LAYOUT_OPS))
    if not free:
        return None
    kinds = ", ".join(f"{op} x{k}" for op, k in sorted(free.items()))
    return f"ZigZag costs MatMul only: {sum(free.values())} Softmax/norm/elementwise nodes are free ({kinds})"


def run_pipeline(onnx_path: Path, acc_yaml: Path, map_yaml: Path, lpf_limit: int, opt: str, memo_context: tuple):
    """The §13 lean runner with MemoStage after WorkloadStage; returns [(layer, cme)] in topological order."""
    red = REDUCE[opt]
    stages: list[Any] = [
        ONNXModelParserStage,
        AcceleratorParserStage,
        WorkloadStage,
        MemoStage,
        red,
        SpatialMappingGeneratorStage,
        red,
        TemporalMappingGeneratorStage,
        CostModelStage,
    ]
    main = MainStage(
        stages,
        accelerator=str(acc_yaml),
        workload=str(onnx_path),
        mapping=str(map_yaml),
        memo_context=memo_context,
        loma_lpf_limit=lpf_limit,
        loma_show_progress_bar=False,
        nb_mappings_generated=NB_SPATIAL_MAPPINGS,
        enable_mix_spatial_mapping_generation=False,
        access_same_data_considered_as_no_access=True,
        temporal_mapping_type=TemporalMappingType("uneven"),
        dump_folder=str(acc_yaml.parent / "unused"),  # read by no stage of this pipeline; nothing is written
    )
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # ZigZag logs every layer and every clipped spatial unrolling
    try:
        answers = main.run()
    finally:
        logging.disable(previous)
    return [(extra[0], cme) for cme, extra in answers]


def evaluate_zigzag(
    onnx_path: Path, platform: PlatformSpec, workdir: Path, lpf_limit: int = 5, opt: str = "EDP"
) -> Result:
    """Latency and energy of one exported graph on one core of `platform`, from a ZigZag search (in-process)."""
    engine_speed.install_zigzag()  # ZigZag's slowest pure helpers as their faster twins (identical results)
    if opt not in REDUCE:
        raise ValueError(f"opt: {opt!r} (allowed: {', '.join(REDUCE)})")
    start = time.perf_counter()
    onnx_path, workdir = Path(onnx_path), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    acc_yaml, map_yaml = workdir / f"{platform.name}_zigzag.yaml", workdir / f"{platform.name}_zigzag_mapping.yaml"
    acc_yaml.write_text(yaml.safe_dump(zigzag_accelerator(platform), sort_keys=False))
    map_yaml.write_text(yaml.safe_dump(zigzag_mapping(platform), sort_keys=False))
    layers = run_pipeline(onnx_path, acc_yaml, map_yaml, lpf_limit, opt, (opt,))

    latency = sum(cme.latency_total2 for _, cme in layers)
    energy = dict.fromkeys(("mac", "onchip_memory", "dram", "onchip_transfer"), 0.0)
    nodes = []
    engine_dram = 0.0
    for layer, cme in layers:
        for name, pj in energy_by_memory(cme).items():
            energy["mac" if name == "MAC" else "dram" if is_dram(name) else "onchip_memory"] += pj
        moved = dram_bytes_moved(cme)
        engine_dram += moved
        nodes.append(
            NodeResult(
                name=layer.name,
                op=getattr(layer, "type", None) or "MatMul",
                macs=int(layer.layer_dim_sizes.total_size),
                cycles=float(cme.latency_total2),
                bound=node_bound(cme),
                energy_pj=float(cme.energy_total),
                core="core0",  # one ZigZag core: the platform's cores are not modelled (single-core search)
                dram_bytes=moved,
            )
        )
    counts = count_file(onnx_path)
    warnings = [w for w in (free_op_warning(onnx_path),) if w]
    costed = sum(n.macs for n in nodes)
    if costed != counts["macs"]:  # a mis-parsed layer (trap 10/11) would otherwise pass silently
        warnings.append(f"ZigZag costed {costed:,} MACs but the graph has {counts['macs']:,}")
    return finish("zigzag", platform, onnx_path.stem, counts, latency_cycles=latency, energy_pj=energy,
                  engine_dram_bytes=engine_dram, strategy=f"zigzag-loma-lpf{lpf_limit}-{opt}",
                  wall_s=time.perf_counter() - start, nodes=nodes, warnings=warnings, graph=onnx_path)  # fmt: skip
