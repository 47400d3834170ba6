"""Platform presets vs attention-schemes.md §10, generated YAML vs both engines' validators, and one ZigZag run."""

import logging
from collections import defaultdict
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from stream_mla.errors import SpecError
from stream_mla.platforms import (
    PRESETS,
    PlatformSpec,
    load_platform,
    stream_hardware,
    write_all,
    write_platform,
    zigzag_accelerator,
    zigzag_mapping,
)
from stream_mla.platforms.spec import MAX_CORES

# §10 table: peak TFLOP/s, ridge FLOP/B, DRAM bits/cycle, clock GHz, total on-chip SRAM bytes, DRAM pJ/bit
TABLE = {
    "edge-npu": (0.512, 64, 256, 0.25, 2e6, 25),
    "cloud-fusemax": (123.2, 308, 3404, 0.94, 32e6, 10),
    "tpu-v5e-like": (196.6, 240, 4368, 1.5, 64 * 2**20, 4),
    "h100-like": (989.4, 295, 14645, 1.83, 50e6, 4),
    "h20-like": (148, 37, 28344, 1.129, 60e6, 4),
    "h800-like": (989.4, 295, 14645, 1.83, 50e6, 4),  # H800 SXM5: H100 compute and memory system
    "h200-like": (989.4, 206, 20984, 1.83, 50e6, 4),  # H200 SXM5: 4.8 TB/s HBM3e
}

USER_YAML = """\
# my accelerator: 2 cores of 64x64 at 1 GHz
name: my-npu
clock_ghz: 1.0
cores: 2
rows: 64
cols: 64
precision: int8
mac_pj: 0.2
sram_bytes: 4 MiB
sram_bits_per_cycle: 4096
sram_pj_per_bit: 0.5
rf_pj_per_bit: 0.03
dram_gb_s: 100
dram_pj_per_bit: 8
static_power_w: 2.5
"""


@pytest.mark.parametrize("name", PRESETS)
def test_preset_links_carry_what_the_sram_port_does(name: str) -> None:
    """On-chip links (matrix core <-> vector core) as wide as a core's SRAM port, and never narrower than the DRAM
    port: at 4,096 bits/cycle tpu-v5e-like's links (768 GB/s, below its 819 GB/s HBM) bound its fused attention core
    (presets.py)."""
    p = PRESETS[name]
    assert p.link_bits_per_cycle == p.sram_bits_per_cycle
    assert p.link_bits_per_cycle * p.clock_ghz * 1e9 / 8 >= p.dram_bytes_per_s


@pytest.mark.parametrize("name", TABLE)
def test_preset_matches_table(name: str) -> None:
    peak, ridge, bpc, ghz, sram, dram_pj = TABLE[name]
    p = PRESETS[name]
    assert p.peak_flop_per_s / 1e12 == pytest.approx(peak, rel=0.01)
    assert p.ridge_flop_per_byte == pytest.approx(ridge, rel=0.01)
    assert p.dram_bits_per_cycle == bpc
    assert p.clock_ghz == ghz
    assert p.total_sram_bytes == pytest.approx(sram, rel=1e-6)
    assert p.dram_pj_per_bit == dram_pj
    assert p.cores <= MAX_CORES


def test_preset_shapes() -> None:
    tpu = PRESETS["tpu-v5e-like"]
    assert (tpu.cores, tpu.rows, tpu.cols) == (4, 128, 128)
    assert PRESETS["h100-like"].peak_macs_per_cycle == 132 * 2048
    assert PRESETS["h20-like"].peak_macs_per_cycle == 65536
    for name in ("h800-like", "h200-like"):  # the H100 die
        assert PRESETS[name].peak_macs_per_cycle == 132 * 2048
        assert PRESETS[name].precisions == PRESETS["h100-like"].precisions == {"bf16": 1, "fp8": 2, "int8": 2}
    assert load_platform("edge-npu") is PRESETS["edge-npu"]


def test_user_yaml(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(USER_YAML)
    assert len(USER_YAML.splitlines()) <= 16
    p = load_platform(path)
    assert p.name == "my-npu" and p.sram_bytes == 4 * 2**20 and p.bytes_per_element == 1
    assert p.peak_macs_per_cycle == 2 * 64 * 64 == 8192
    assert p.peak_flop_per_s == 2 * 8192 * 1e9  # 16.384 TFLOP/s
    assert p.dram_bits_per_cycle == 800  # 100 GB/s × 8 / 1 GHz
    assert p.ridge_flop_per_byte == pytest.approx(163.84)  # 16.384e12 / 100e9
    assert p.static_energy_pj(1e9) == pytest.approx(2.5e12)  # 2.5 W for 1 s
    assert p.accumulator == "int32"
    assert stream_hardware(p)["cores"][0]["operand_precision"] == {"input": "int8", "accumulator": "int32"}


@pytest.mark.parametrize(
    ("patch", "field", "hint"),
    [
        ({"clock_ghz": -1}, "clock_ghz", "greater than 0"),
        ({"cores": 17}, "cores", "less than or equal to 16"),
        ({"precision": "fp4"}, "precision", "'bf16', 'fp32', 'int8' or 'fp8'"),
        ({"dram_gb_s": None}, "dram_gb_s", "Field required"),
        ({"sram_bytes": "lots"}, "sram_bytes", "'2 MiB'"),
        ({"dram_bw": 5}, "dram_bw", "allowed: name, clock_ghz"),
    ],
)
def test_bad_spec_one_line(tmp_path: Path, patch: dict, field: str, hint: str) -> None:
    fields = yaml.safe_load(USER_YAML)
    fields.update(patch)
    fields = {k: v for k, v in fields.items() if v is not None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(fields))
    with pytest.raises(SpecError) as info:
        PlatformSpec.from_yaml(path)
    msg = str(info.value)
    assert "\n" not in msg and f"{field}:" in msg and hint in msg, msg


def test_unknown_preset() -> None:
    with pytest.raises(SpecError, match="presets: edge-npu"):
        load_platform("no-such-platform")


def test_write_all_deterministic(tmp_path: Path) -> None:
    first = {f.relative_to(tmp_path / "a"): f.read_bytes() for f in write_all(tmp_path / "a")}
    second = {f.relative_to(tmp_path / "b"): f.read_bytes() for f in write_all(tmp_path / "b")}
    assert first == second and len(first) == 3 * len(PRESETS)
    assert not any(b"&id" in data for data in first.values())  # no YAML anchors
    repo = Path(__file__).resolve().parents[1]
    committed = {f: (repo / f).read_bytes() for f in first if (repo / f).exists()}
    assert committed == {f: first[f] for f in committed}, "generated files are stale: rerun write_all"


@pytest.mark.parametrize("name", PRESETS)
def test_stream_yaml_validates(tmp_path: Path, name: str) -> None:
    from stream.stages.parsing.accelerator_parser import parse_accelerator

    p = PRESETS[name]
    stream_path = write_platform(p, tmp_path)[0]
    acc = parse_accelerator(str(stream_path))  # raises ValueError if Stream's validator rejects it
    assert len(acc.cores.node_list) == p.cores + 2
    hw = stream_hardware(p)
    dram = hw["cores"][p.cores + 1]["memories"]["dram"]
    port = dram["ports"][0]
    assert port["bandwidth_max"] == p.dram_bits_per_cycle
    assert dram["r_cost"] == pytest.approx(p.dram_pj_per_bit * port["bandwidth_max"])  # trap 5
    # What Stream routes on: its core graph keeps one connection per core pair (the last listed). Every on-chip pair
    # (matrix cores 0..n-1 and the vector core n) has its own link; only the pairs with DRAM (core n+1) share the bus.
    dram_id = p.cores + 1
    for a, b, data in acc.cores.edges(data=True):
        link = data["cl"]
        if dram_id in (a.id, b.id):
            assert link.members and len(link.members) == p.cores + 2, (a.id, b.id)  # the one bus, every core on it
            assert link.bandwidth == p.dram_bits_per_cycle
        else:
            assert not link.members and (link.sender, link.receiver) == (a, b), (a.id, b.id)  # a link of its own
            assert link.bandwidth == p.link_bits_per_cycle
    on_chip = p.cores + 1
    assert acc.cores.number_of_edges() == on_chip * (on_chip - 1) + 2 * on_chip  # all on-chip ordered pairs + DRAM
    vector_ops = set(hw["cores"][p.cores]["operator_types"])
    assert {"Add", "Sub", "Mul", "Div", "Pow", "Exp", "Softmax", "ReduceMax", "ReduceSum", "ReduceMean"} <= vector_ops
    assert "MatMul" in hw["cores"][0]["operator_types"]


@pytest.mark.parametrize("name", PRESETS)
def test_zigzag_yaml_validates(name: str) -> None:
    from zigzag.parser.accelerator_validator import AcceleratorValidator
    from zigzag.parser.mapping_validator import MappingValidator

    p = PRESETS[name]
    acc = zigzag_accelerator(p)
    assert AcceleratorValidator(acc).validate()
    assert MappingValidator(zigzag_mapping(p)).validate()
    dram = acc["memories"]["dram"]
    assert dram["r_cost"] == pytest.approx(p.dram_pj_per_bit * dram["ports"][0]["bandwidth_max"])
    assert acc["operational_array"]["sizes"] == [p.rows, p.cols]


@pytest.mark.parametrize("name", PRESETS)
def test_register_files_in_yaml(name: str) -> None:
    """rf_w/rf_o hold rf_weight_words operand words and rf_output_words fp32 partial sums per PE, read and written one
    word at a time (the per-access energy is one word's, whatever the depth); both engines get the same levels."""
    p = PRESETS[name]
    mems = zigzag_accelerator(p)["memories"]
    assert list(mems) == ["rf_w", "rf_o", "sram", "dram"]
    assert stream_hardware(p)["cores"][0]["memories"] == {k: v for k, v in mems.items() if k != "dram"}
    rf_w, rf_o = mems["rf_w"], mems["rf_o"]
    assert rf_w["size"] == p.rf_weight_words * p.element_bits and rf_o["size"] == p.rf_output_words * 32
    assert {port["bandwidth_max"] for port in rf_w["ports"]} == {p.element_bits}
    assert {port["bandwidth_max"] for port in rf_o["ports"]} == {32}
    assert rf_w["r_cost"] == pytest.approx(p.rf_pj_per_bit * p.element_bits)
    assert rf_w["served_dimensions"] == rf_o["served_dimensions"] == []  # one per PE
    wide = p.at_precision("fp8") if "fp8" in p.mac_rate else p
    assert zigzag_accelerator(wide)["memories"]["rf_w"]["size"] == p.rf_weight_words * wide.element_bits


def _gemv_onnx(path: Path) -> None:
    """X[1,4096] @ W[4096,1024] with W a data-less initializer (a constant weight for ZigZag)."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4096])
    w = helper.make_tensor_value_info("W", TensorProto.FLOAT, [4096, 1024])
    y = helper.make_tensor_value_info("gemv_o", TensorProto.FLOAT, [1, 1024])
    node = helper.make_node("MatMul", ["X", "W"], ["gemv_o"], name="gemv")
    model = helper.make_model(
        helper.make_graph([node], "gemv", [x, w], [y]), opset_imports=[helper.make_opsetid("", 18)]
    )
    onnx.checker.check_model(model)  # the checker rejects data-less initializers, so check with W as an input
    del model.graph.input[1]
    model.graph.initializer.append(TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4096, 1024]))
    for key, bits in (("weight_size", 16), ("act_size", 16), ("output_size", 32)):  # after the checker (trap 13)
        model.graph.node[0].attribute.append(helper.make_attribute(key, bits))
    onnx.save(model, path)


def test_zigzag_gemv_smoke(tmp_path: Path) -> None:
    """1×4096 @ 4096×1024 bf16 on edge-npu is DRAM-bound: latency ≈ weight bits / DRAM bits/cycle."""
    from zigzag import api

    p = PRESETS["edge-npu"]
    acc_path, map_path = write_platform(p, tmp_path)[1:]
    onnx_path = tmp_path / "gemv.onnx"
    _gemv_onnx(onnx_path)
    logging.disable(logging.WARNING)
    try:
        _, latency, cmes = api.get_hardware_performance_zigzag(
            str(onnx_path), str(acc_path), str(map_path), opt="EDP", lpf_limit=4,
            loma_show_progress_bar=False, dump_folder=str(tmp_path / "out"),
        )  # fmt: skip
    finally:
        logging.disable(logging.NOTSET)
    cme = cmes[0][1][0][0]
    per_mem: dict[str, float] = defaultdict(float)
    for op, per_level in cme.mem_energy_breakdown.items():
        levels = cme.accelerator.mem_hierarchy_dict[cme.layer.memory_operand_links.layer_to_mem_op(op)]
        for lvl, pj in zip(levels, per_level, strict=True):
            per_mem[lvl.name] += pj
    weight_bits = 4096 * 1024 * 16
    dram_bound = weight_bits / p.dram_bits_per_cycle  # 262,144 cycles
    print(f"gemv edge-npu: {latency:.0f} cycles (DRAM bound {dram_bound:.0f}), dram {per_mem['dram']:.4g} pJ")
    assert dram_bound <= latency <= 1.3 * dram_bound
    assert per_mem["dram"] == pytest.approx(weight_bits * p.dram_pj_per_bit, rel=0.02)


def _stream_connections(path: Path) -> set[tuple]:
    """The connections Stream's parsed core graph holds: ("bus", members) or ("link", the two ends)."""
    from stream.stages.parsing.accelerator_parser import parse_accelerator

    found = set()
    for _, _, data in parse_accelerator(str(path)).cores.edges(data=True):
        link = data["cl"]
        ends = link.members if link.members else (link.sender, link.receiver)
        found.add(("bus" if link.members else "link", frozenset(core.id for core in ends)))
    return found


def _stream_examples() -> list[Path]:
    import stream

    folder = Path(stream.__file__).parent / "inputs" / "examples" / "hardware"
    return sorted(f for f in folder.glob("*.yaml") if "core_connectivity" in f.read_text())


@pytest.mark.parametrize("source", ["preset", "preset, bus last", *[f.name for f in _stream_examples()]])
def test_shadowed_connections_are_what_stream_drops(tmp_path: Path, source: str) -> None:
    """`dropped_connections` names exactly the entries of core_connectivity that Stream's parsed core graph does not
    hold (it keeps the last entry per core pair). Stream's own tpu_like_quad_core.yaml lists its mesh and its
    pooling/SIMD links before an all-core bus, so Stream drops all 12 of them."""
    from stream_mla.engines.hardware import dropped_connections

    if source.startswith("preset"):
        hw = stream_hardware(PRESETS["tpu-v5e-like"])
        if source.endswith("bus last"):  # the layout the presets had before stop 19
            hw["core_connectivity"] = [*hw["core_connectivity"][1:], hw["core_connectivity"][0]]
        path = tmp_path / "hw.yaml"
        path.write_text(yaml.safe_dump(hw))
    else:
        path = next(f for f in _stream_examples() if f.name == source)
        hw = yaml.safe_load(path.read_text())
    entries = hw["core_connectivity"]
    dropped = set(dropped_connections(hw))
    held = _stream_connections(path)
    for index, entry in enumerate(entries):
        kind = entry.get("type", "link")
        assert ((kind, frozenset(entry["cores"])) in held) == (index not in dropped), (index, entry)
    if source == "preset":
        assert dropped == set()
    if source == "preset, bus last":
        assert dropped == set(range(len(entries) - 1))  # every on-chip link
    if source == "tpu_like_quad_core.yaml":
        assert len(dropped) == 12


def test_reproducer_shows_the_bus_replacing_the_link(capsys) -> None:
    """scripts/stream_bus_replaces_links.py, the standalone reproducer for Stream's maintainers, shows the trap the
    generator's ordering avoids (and exits 0 while Stream has it)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "stream_bus_replaces_links.py"
    spec = importlib.util.spec_from_file_location("stream_bus_replaces_links", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main() == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["bus listed last : pair (0, 1) is joined by a bus of 64 bits/cycle",
                       "bus listed first: pair (0, 1) is joined by a link of 4096 bits/cycle"]  # fmt: skip
    assert "tpu_like_quad_core.yaml: 12 of 13 connections replaced by a later bus" in out
