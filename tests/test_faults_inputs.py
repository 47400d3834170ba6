"""Issue 28: nothing silently wrong under real faults of the caches and of the inputs.

Cache entries that still load after a flipped bit are discarded and recomputed (a checksum), HF configs read with
their owners' defaults, platform values checked for physical sense, sweep specs typed strictly, options that would
change nothing refused, and measured data checked before it is compared.
"""

import copy
import json
import pickle
import struct
from pathlib import Path

import pytest
import yaml

from stream_mla import validate as validate_module
from stream_mla.cli import main
from stream_mla.engines import Hardware
from stream_mla.engines import cost_cache as cc
from stream_mla.engines import group_memo as gm
from stream_mla.engines import zigzag_runner as zr
from stream_mla.engines.stream_runner import evaluate_stream
from stream_mla.errors import SpecError
from stream_mla.models import PRESETS as MODELS
from stream_mla.models import from_hf_config
from stream_mla.platforms import PRESETS, PlatformSpec
from stream_mla.sweeps import fast
from stream_mla.workloads import export, make_spec, polynomial

EDGE = PRESETS["edge-npu"]
LITE = MODELS["deepseek-v2-lite"]


def small_graph(tmp_path: Path) -> Path:
    """One MHA decode layer at L = 64: ZigZag costs it in ~2 s, Stream in ~10 s."""
    return export(make_spec(model=LITE, scheme="mha", phase="decode", batch=1, context=64), tmp_path / "g.onnx")


# --- 1. cache entries carry a checksum ----------------------------------------------------------------------
def flip(path: Path, encoded: bytes, at: int = 2) -> None:
    """Flip one bit of the first occurrence of `encoded` (a pickled number) in the entry at `path`: the entry still
    unpickles, to another number."""
    data = bytearray(path.read_bytes())
    assert encoded in data
    data[data.find(encoded) + at] ^= 0x02
    path.write_bytes(bytes(data))
    assert pickle.loads(bytes(data)) is not None


def flip_float(path: Path, value: float) -> None:
    """`value`, pickled as BINFLOAT (big-endian), about 12 % off: a bit at the top of its mantissa."""
    flip(path, b"G" + struct.pack(">d", value))


def test_a_flipped_bit_in_a_cost_cache_entry_is_recomputed(tmp_path, cache):
    """A ZigZag runner entry whose latency changed by one bit: the next process searches the layer again and
    reports the true latency (before: 12 % off, exit 0)."""
    graph = small_graph(tmp_path)
    first = zr.evaluate_zigzag(graph, EDGE, tmp_path / "first")
    entries = sorted(cc.CostCache(cache, "runner").entries())
    cme = pickle.loads(entries[0].read_bytes())
    flip_float(entries[0], cme.latency_total2)
    assert pickle.loads(entries[0].read_bytes()).latency_total2 != cme.latency_total2
    zr.clear_memo()
    second = zr.evaluate_zigzag(graph, EDGE, tmp_path / "second")
    assert second.latency_cycles == first.latency_cycles
    assert zr.MEMO_STATS["misses"] == 1 and zr.MEMO_STATS["disk_hits"] == len(entries) - 1  # that one searched
    assert cc.STATS["runner.errors"] == 1
    assert pickle.loads(entries[0].read_bytes()).latency_total2 == cme.latency_total2  # and rewritten


def test_a_flipped_bit_in_a_group_memo_entry_is_solved_again(tmp_path, cache):
    """A group memo entry whose cycles changed by one bit: the group is solved again, the latency is the solve's."""
    graph = small_graph(tmp_path)
    hw = Hardware.from_platform(EDGE)
    (tmp_path / "run").mkdir()
    first = evaluate_stream(graph, hw, tmp_path / "run", strategies=("keep-softmax",))
    entries = sorted(cc.CostCache(cache, gm.KIND, "stream").entries())
    flip_float(entries[0], pickle.loads(entries[0].read_bytes()).cycles)
    cc.STATS.clear()
    second = evaluate_stream(graph, hw, tmp_path / "run", strategies=("keep-softmax",))
    assert second.latency_cycles == first.latency_cycles
    assert cc.STATS["groups.misses"] == cc.STATS["groups.errors"] == 1  # that group solved again
    assert cc.STATS["groups.hits"] == len(entries) - 1


@pytest.fixture
def no_pieces():
    """This process's polynomials forgotten before and after (the test's disk cache is the one read)."""
    polynomial.pieces.cache_clear()
    yield
    polynomial.pieces.cache_clear()


def test_a_flipped_bit_in_a_polynomial_entry_is_derived_again(cache, no_pieces):
    """The analytic sweep's disk cache of count polynomials: a flipped bit that still loads is derived again, and
    the counts equal the graph's (before: the corrupted polynomial's counts, exit 0)."""
    spec = make_spec(model=MODELS["deepseek-v2-lite"], scheme="mla-absorb", phase="decode", batch=1, context=300)
    group = polynomial.group_of(polynomial.group_fields(spec), 300, 1)
    fresh = fast._pieces(group)
    (entry,) = cc.CostCache(cache, "pieces", fast.POLY_FOLDER).entries()
    (piece,) = fresh
    macs_per_batch = piece.poly.numerators[polynomial.COUNTS.index("macs")][1]
    flip(entry, b"J" + struct.pack("<i", macs_per_batch), at=3)  # BININT, little-endian: +- 2**17 MACs per batch
    polynomial.pieces.cache_clear()
    assert fast._pieces(group) == fresh
    assert polynomial.counts(group, [3], [300], [1]) == [polynomial.direct(group, 3, 300, 1)]


def test_an_entry_without_its_checksum_is_a_miss(cache):
    """A bare pickle (another tool's, or an older format's) is not trusted."""
    store = cc.CostCache(cache, "runner")
    key = cc.entry_key("runner", lambda: ("a layer",))
    store.path(key).parent.mkdir(parents=True)
    store.path(key).write_bytes(pickle.dumps({"cycles": 2}))
    assert cc.cached_search("runner", key, lambda: {"cycles": 1}) == {"cycles": 1}
    assert cc.cached_search("runner", key, lambda: pytest.fail("searched again")) == {"cycles": 1}


# --- 2. HF configs as their owners define them ----------------------------------------------------------------
# Each config class's defaults, typed in from transformers (configuration_<model_type>.py), for a config.json that
# leaves the key out; a key given as null is the class's None.
BASE = {"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32}
MLA = {"hidden_size": 2048, "num_attention_heads": 16, "num_hidden_layers": 27, "kv_lora_rank": 512,
       "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}  # fmt: skip
DSA = {"index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048}


def hf(tmp_path: Path, **cfg):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return from_hf_config(path)


def shape(m) -> tuple:
    return m.n_kv, m.d_h, m.sliding_window, m.q_lora_rank, m.precision


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        # Qwen2Config: use_sliding_window False (the window is declared, not used), num_key_value_heads 32
        ({"model_type": "qwen2", **BASE, "num_attention_heads": 64, "sliding_window": 4096}, (32, 64, None, 0, "bf16")),
        # ... a window only from max_window_layers (28) on: a 28-layer model has no windowed layer
        (
            {"model_type": "qwen2", **BASE, "num_hidden_layers": 28, "use_sliding_window": True},
            (32, 128, None, 0, "bf16"),
        ),
        (
            {"model_type": "qwen2", **BASE, "use_sliding_window": True, "max_window_layers": 0},
            (32, 128, 4096, 0, "bf16"),
        ),
        ({"model_type": "qwen2", **BASE, "num_key_value_heads": None}, (32, 128, None, 0, "bf16")),
        # MistralConfig: num_key_value_heads 8, sliding_window 4096; null means none
        ({"model_type": "mistral", **BASE}, (8, 128, 4096, 0, "bf16")),
        (
            {"model_type": "mistral", **BASE, "sliding_window": None, "num_key_value_heads": None},
            (32, 128, None, 0, "bf16"),
        ),
        ({"model_type": "mistral", **BASE, "head_dim": 96}, (8, 96, 4096, 0, "bf16")),
        # LlamaConfig: K/V heads h, head_dim d/h, no window (its attention reads none)
        ({"model_type": "llama", **BASE, "sliding_window": 4096}, (32, 128, None, 0, "bf16")),
        # FalconConfig: multi_query True (one K/V head), head_dim the property d/h, no window
        (
            {
                "model_type": "falcon",
                "hidden_size": 4544,
                "num_attention_heads": 71,
                "num_hidden_layers": 32,
                "head_dim": 128,
                "sliding_window": 2048,
                "torch_dtype": "float32",
            },
            (1, 64, None, 0, "fp32"),
        ),  # fmt: skip
        # DeepseekV2Config / DeepseekV3Config: q_lora_rank 1536 (null: no query compression); head_dim is the
        # class's RoPE width, not the baseline's head width (v_head_dim)
        ({"model_type": "deepseek_v2", **MLA, "head_dim": 64}, (16, 128, None, 1536, "bf16")),
        ({"model_type": "deepseek_v2", **MLA, "q_lora_rank": None}, (16, 128, None, 0, "bf16")),
        ({"model_type": "deepseek_v3", **MLA, "head_dim": 64, "sliding_window": 4096}, (16, 128, None, 1536, "bf16")),
        ({"model_type": "kimi_k2", **MLA}, (16, 128, None, 1536, "bf16")),
        ({"model_type": "deepseek_v32", **MLA, **DSA}, (16, 128, None, 1536, "bf16")),
    ],
)
def test_hf_config_defaults_are_the_config_classes(tmp_path, cfg, expected):
    assert shape(hf(tmp_path, **cfg)) == expected


def test_qwen2_with_some_layers_windowed_is_refused(tmp_path):
    """Layers 28-31 windowed, 0-27 not: a ModelSpec costs every layer alike, so this is one line, not a guess."""
    with pytest.raises(SpecError, match=r"4 of 32 layers windowed"):
        hf(tmp_path, model_type="qwen2", **BASE, use_sliding_window=True)
    with pytest.raises(SpecError, match=r"1 of 2 layers windowed"):
        hf(tmp_path, model_type="qwen2", **BASE, use_sliding_window=True,
           layer_types=["full_attention", "sliding_attention"])  # fmt: skip


# --- 3. platform values checked for physical sense ------------------------------------------------------------
def cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line(capsys, *argv) -> str:
    """The CLI in-process: exit 2 and one error line, which it returns."""
    code, err = cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


def platform_yaml(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**EDGE.model_dump(mode="json"), "name": "mine", **fields}))
    return path


def test_an_sram_smaller_than_one_tile_is_refused(tmp_path, capsys):
    """edge-npu's 32 x 32 bf16 array holds a 2,048-byte weight tile; a 1,000-byte SRAM cannot feed it."""
    line = one_line(capsys, "platforms", platform_yaml(tmp_path, sram_bytes=1000))
    assert "sram_bytes: 1,000 B is smaller than one tile" in line and "rows x cols = 32 x 32 bf16 = 2,048 B" in line


def test_dram_faster_than_the_sram_ports_is_refused(tmp_path, capsys):
    """100 GB/s at 0.25 GHz is 3,200 bits/cycle into one core's 2,048-bit SRAM port: a bandwidth never reached."""
    line = one_line(capsys, "platforms", platform_yaml(tmp_path, dram_gb_s=100))
    assert "dram_gb_s: 100 GB/s is 3,200 bits/cycle" in line and "cores x sram_bits_per_cycle = 2,048" in line
    assert cli(capsys, "platforms", platform_yaml(tmp_path, dram_gb_s=64))[0] == 0  # 2,048 bits/cycle: the port


def test_every_preset_is_physical():
    for preset in PRESETS.values():
        assert PlatformSpec.model_validate(preset.model_dump()) == preset


# --- 4. sweep and explore specs typed strictly ---------------------------------------------------------------
SMALL = {"models": ["deepseek-v2-lite"], "schemes": ["mha", "mla-absorb"], "context": [512], "platforms": ["edge-npu"]}


def sweep_line(tmp_path: Path, capsys, **block) -> str:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"sweeps": [{**SMALL, **block}]}))
    line = one_line(capsys, "sweep", spec, "--db", tmp_path / "r.sqlite", "-q")
    assert not (tmp_path / "r.sqlite").exists()
    return line


@pytest.mark.parametrize("field", ["batch", "context", "kv_heads", "window", "bw_scale", "queries"])
def test_a_yaml_boolean_in_a_sweep_axis_is_not_a_number(tmp_path, capsys, field):
    """`batch: [true]` was batch 1 (pydantic takes a boolean as an integer), exit 0."""
    line = sweep_line(tmp_path, capsys, **{field: [True]})
    assert f"{field}: a number or a name, not a boolean" in line


def test_a_sweep_spec_error_names_the_specs_field_not_the_flag(tmp_path, capsys):
    """The workload's own checks speak of CLI flags (`--kv-heads`); in a spec they name its fields."""
    line = sweep_line(tmp_path, capsys, schemes=["gqa"])
    assert "kv_heads: scheme gqa on deepseek-v2-lite" in line and "needs kv_heads" in line and "--" not in line
    line = sweep_line(tmp_path, capsys, context=[1], queries=[2])
    assert "queries: 2 new tokens need a cache of at least as many entries (context 1)" in line


@pytest.mark.parametrize(
    ("block", "twice"),
    [({"batch": [1, 1]}, "batch: 1"), ({"bw_scale": [1, 1.0]}, "bw_scale: 1.0"),
     ({"schemes": ["mla-absorb", "mla-absorb"]}, "schemes: 'mla-absorb'"), ({"engines": ["analytic", "analytic"]},
     "engines: 'analytic'")],
)  # fmt: skip
def test_a_value_listed_twice_in_a_sweep_axis_is_refused(tmp_path, capsys, block, twice):
    assert f"sweeps.0.{twice} is listed twice" in sweep_line(tmp_path, capsys, **block)


EXPLORE = {"platform": {"base": "edge-npu"}, "models": ["deepseek-v2-lite"], "schemes": ["mha", "mla-absorb"],
           "contexts": [512]}  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "expect"),
    [({"batch": [1, 1]}, "batch: 1 is listed twice"), ({"contexts": [512, 512]}, "contexts: 512 is listed twice"),
     ({"schemes": ["mha", "mha"]}, "schemes: 'mha' is listed twice"),
     ({"platform": {"base": "edge-npu", "cores": [2, 2]}}, "platform.cores: 2.0 is listed twice"),
     ({"platform": {"base": "edge-npu", "dram_gb_s": {"from": 8, "to": 8, "points": 3}}}, "are one value"),
     ({"batch": [True]}, "batch: a number or a name, not a boolean"),
     ({"platform": {"base": "edge-npu", "cores": [True]}}, "cores: a number or a name, not a boolean")],
)  # fmt: skip
def test_explore_axes_are_typed_and_each_value_once(tmp_path, capsys, doc, expect):
    spec = tmp_path / "explore.yaml"
    spec.write_text(yaml.safe_dump({**EXPLORE, **doc}))
    assert expect in one_line(capsys, "explore", spec, "-o", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- 6. validate --data --------------------------------------------------------------------------------------
def measurements(tmp_path: Path, edit) -> Path:
    doc = yaml.safe_load((Path(validate_module.__file__).parent / "data" / "measurements.yaml").read_text())
    edit(doc["measurements"])
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("value", [-3000, 0])
def test_a_measured_value_must_be_positive(tmp_path, capsys, value):
    """A negative rate gave a negative ratio, exit 0."""
    path = measurements(tmp_path, lambda ms: ms[0].update(value=value))
    line = one_line(capsys, "validate", "--data", path)
    assert "measurements.0 (id 'flashmla-memory-bound'): value: Input should be greater than 0" in line


def test_two_measurements_with_one_id_are_refused(tmp_path, capsys):
    """Both rows were printed under one id, exit 0."""
    path = measurements(tmp_path, lambda ms: ms.append({**copy.deepcopy(ms[0]), "value": 2000}))
    line = one_line(capsys, "validate", "--data", path)
    assert "id 'flashmla-memory-bound' is also measurements.0's" in line


# --- 5. options that change nothing are refused ---------------------------------------------------------------
LITE_RUN = ["run", "--model", "deepseek-v2-lite", "--scheme", "mla-absorb", "--context", "64", "--platform", "edge-npu"]


@pytest.mark.parametrize(("flag", "value"), [("--timeout", "5"), ("--workdir", "kept")])
def test_engine_process_options_with_the_analytic_engine_are_refused(tmp_path, capsys, monkeypatch, flag, value):
    """The analytic engine computes in this process and writes no files: a timeout or a workdir was ignored, exit 0."""
    monkeypatch.chdir(tmp_path)
    line = one_line(capsys, *LITE_RUN, "--engine", "analytic", flag, value)
    assert line.startswith(f"stream-mla: error: {flag}: has no effect with --engine analytic")
    assert not any(tmp_path.iterdir())


def test_engine_process_options_apply_to_an_engine_process(tmp_path, capsys):
    code, _ = cli(capsys, *LITE_RUN, "--engine", "zigzag", "--timeout", "300", "--workdir", tmp_path / "kept")
    assert code == 0 and any((tmp_path / "kept").iterdir())
