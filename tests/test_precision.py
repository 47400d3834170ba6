"""Precision per tensor class (weights, KV cache, activations) and per platform: bytes from the closed forms times
each class's width, the roofline at the precision's peak, graph operand types as the engines read them, the
platform-native default, the README's int8 platform under both engines, and mismatch errors."""

from pathlib import Path

import onnx
import pytest

from stream_mla.cli import main
from stream_mla.engines import evaluate
from stream_mla.errors import SpecError
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import PRESETS, PlatformSpec, load_platform
from stream_mla.sweeps.points import SweepPoint, run_point
from stream_mla.sweeps.spec import SweepSpec
from stream_mla.workloads import build, make_spec
from stream_mla.workloads.counts import count

import closed_forms as cf

V3, LITE = MODELS["deepseek-v3"], MODELS["deepseek-v2-lite"]
WIDTH = {"bf16": 2, "fp32": 4, "int8": 1, "fp8": 1}  # bytes per element, typed in independently
ROOT = Path(__file__).resolve().parents[1]


def readme_platform(tmp_path: Path) -> Path:
    """The README's platform example, verbatim (an int8 NPU)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```yaml\nname: my-npu\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "my-npu.yaml"
    path.write_text("name: my-npu\n" + block)
    return path


@pytest.mark.parametrize("scheme", ["mha", "mla-absorb", "mla-recompute", "mla-naive"])
@pytest.mark.parametrize(("w", "kv", "act"), [("bf16", "fp8", "bf16"), ("fp8", "fp8", "fp8"), ("int8", "bf16", "bf16"),
                                              ("bf16", "bf16", "fp32")])  # fmt: skip
def test_bytes_are_elements_times_each_class_width(scheme, w, kv, act):
    spec = make_spec(model=V3, scheme=scheme, batch=2, context=1024, precision=w, kv_precision=kv, act_precision=act)
    c = count(build(spec))
    e = cf.decode(V3, scheme, 2, 1024, n_kv=spec.group_kv_heads)
    expected = {"weights": e.weights * WIDTH[w], "kv_read": e.kv_read * WIDTH[kv], "kv_write": e.kv_write * WIDTH[kv],
                "activations": e.activations * WIDTH[act]}  # fmt: skip
    assert {k: c["bytes"][k] for k in expected} == expected
    assert c["bytes"]["total"] == sum(expected.values())
    assert c["macs"] == e.macs  # precision changes no MAC
    assert c["precision"] == {"weights": w, "kv_cache": kv, "activations": act}


def test_prefill_writes_the_cache_at_its_precision():
    spec = make_spec(model=V3, scheme="mla-absorb", phase="prefill", context=256, kv_precision="fp8")
    e = cf.prefill(V3, "mla-absorb", 1, 256)
    assert count(build(spec))["bytes"]["kv_write"] == e.kv_write * 1


def test_operand_types_as_the_engines_read_them():
    """Stream reads each tensor's element type; ZigZag the MatMul attributes. An fp8 cache under bf16 attention:
    the cache inputs are 8-bit (stored as INT8), the latent scores read 16-bit queries and 8-bit keys."""
    g = build(make_spec(model=LITE, scheme="mla-absorb", context=64, kv_precision="fp8")).graph
    types = {i.name: i.type.tensor_type.elem_type for i in g.input}
    assert types == {"x": onnx.TensorProto.BFLOAT16, "c_kv_cache": onnx.TensorProto.INT8,
                     "k_rope_cache": onnx.TensorProto.INT8}  # fmt: skip
    assert {t.data_type for t in g.initializer if len(t.dims) >= 2} == {onnx.TensorProto.BFLOAT16}
    attrs = {n.name: {a.name: a.i for a in n.attribute} for n in g.node if n.op_type == "MatMul"}
    assert attrs["scores_lat"] == {"act_size": 16, "weight_size": 8, "output_size": 32}
    assert attrs["ctx"] == {"act_size": 16, "weight_size": 8, "output_size": 32}  # probs x latent values
    assert attrs["q_absorb"] == {"act_size": 16, "weight_size": 16, "output_size": 32}
    views = {vi.name: vi.type.tensor_type.elem_type for vi in g.value_info}
    assert views["scores_lat_kt_o"] == onnx.TensorProto.INT8  # a view of the cache keeps its type
    assert views["scores_lat_o"] == onnx.TensorProto.BFLOAT16


def test_fp8_compute_time_is_half_bf16_on_h100():
    """§10: h100-like runs fp8 at 2x its bf16 peak; a compute-bound point's compute time halves exactly."""
    rows = {p: run_point(SweepPoint(model="deepseek-v3", scheme="mla-recompute", context=4096, platform="h100-like",
                                    precision=p)) for p in ("bf16", "fp8")}  # fmt: skip
    assert rows["fp8"]["roofline_compute_s"] == pytest.approx(rows["bf16"]["roofline_compute_s"] / 2, rel=1e-12)
    assert rows["fp8"]["peak_flop_per_s"] == pytest.approx(2 * 989.4e12, rel=1e-3)
    assert rows["fp8"]["dram_bytes"] * 2 == rows["bf16"]["dram_bytes"]
    assert rows["fp8"]["bound"] == rows["bf16"]["bound"] == "compute"


def test_at_precision_widens_the_array():
    h100 = PRESETS["h100-like"]
    fp8 = h100.at_precision("fp8")
    assert (fp8.precision, fp8.rows, fp8.cols, fp8.cores) == ("fp8", 128, 528, 8)
    assert fp8.peak_mac_per_s == 2 * h100.peak_mac_per_s
    assert fp8.precisions == {"fp8": 1.0, "bf16": 0.5, "int8": 1.0}
    assert fp8.at_precision("bf16").peak_mac_per_s == h100.peak_mac_per_s
    assert h100.at_precision("bf16") is h100


def test_unsupported_precision_names_both():
    with pytest.raises(SpecError, match=r"computes in fp8, platform tpu-v5e-like in bf16, int8"):
        PRESETS["tpu-v5e-like"].at_precision("fp8")
    fields = {**PRESETS["edge-npu"].model_dump(), "mac_rate": {"int8": 1.5}, "cols": 33}
    with pytest.raises(SpecError, match=r"mac_rate.int8: cols x rate must be a whole number"):
        PlatformSpec.validate_fields(fields, "p.yaml")


def test_workload_follows_the_platform_native_precision(tmp_path):
    npu = load_platform(readme_platform(tmp_path))
    assert npu.precision == "int8"
    row = run_point(SweepPoint(model="deepseek-v2-lite", scheme="mla-absorb", context=256, platform=str(
        readme_platform(tmp_path))))  # fmt: skip
    assert (row["precision"], row["kv_precision"], row["act_precision"]) == ("int8",) * 3
    spec = make_spec(model=LITE, scheme="mla-absorb", context=256).on_platform("int8")
    assert spec.slug.endswith("_int8")
    explicit = make_spec(model=LITE, scheme="mla-absorb", context=256, precision="bf16").on_platform("int8")
    assert explicit.precisions["weights"] == "bf16"  # an explicit precision is kept (and then rejected below)


def test_readme_platform_mismatch_is_one_line(tmp_path, capsys):
    plat = str(readme_platform(tmp_path))
    args = ["run", "--model", "deepseek-v2-lite", "--context", "64", "--platform", plat, "--precision", "bf16"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "computes in bf16" in err and "my-npu in int8" in err


def test_sweep_precision_axes(tmp_path):
    spec = SweepSpec.from_dict({"sweeps": [{"models": ["deepseek-v2-lite"], "schemes": ["mla-absorb"],
                                            "context": [512], "platforms": ["h20-like"],
                                            "precision": [None, "fp8"], "kv_precision": [None, "fp8"]}]})  # fmt: skip
    rows = [run_point(p) for p in spec.points()]
    got = sorted((r["precision"], r["kv_precision"]) for r in rows)
    assert got == [("bf16", "bf16"), ("bf16", "fp8"), ("fp8", "fp8")]  # (fp8, null) == (fp8, fp8): one point
    with pytest.raises(SpecError, match=r"sweeps.0.precision.0: Input should be"):
        SweepSpec.from_dict({"sweeps": [{"models": ["deepseek-v3"], "schemes": ["mha"], "context": [8],
                                         "platforms": ["h20-like"], "precision": ["fp4"]}]})  # fmt: skip
    with pytest.raises(SpecError, match=r"computes in fp8, platform cloud-fusemax"):
        SweepSpec.from_dict({"sweeps": [{"models": ["deepseek-v3"], "schemes": ["mha"], "context": [8],
                                         "platforms": ["cloud-fusemax"], "precision": ["fp8"]}]})  # fmt: skip


def test_random_weights_need_fp32_everywhere():
    spec = make_spec(model=LITE, scheme="mla-absorb", context=4, precision="fp32", kv_precision="fp8")
    with pytest.raises(SpecError, match="random weights are computed in fp32"):
        build(spec, seed=0)


@pytest.mark.parametrize("engine", ["stream", "zigzag"])
def test_readme_platform_runs_under_both_engines(tmp_path, engine):
    """The README's int8 platform with a default workload (which follows it to int8): every MatMul is costed, so
    MAC energy is nonzero and no node is priced at ideal cycles."""
    res = evaluate(make_spec(model=LITE, scheme="mla-absorb", context=256), readme_platform(tmp_path), engine,
                   workdir=tmp_path / engine)  # fmt: skip
    assert res.energy_breakdown_pj["mac"] > 0
    assert not [w for w in res.warnings if "ideal" in w or "NoValid" in w]
    assert res.macs == count(build(make_spec(model=LITE, scheme="mla-absorb", context=256, precision="int8")))["macs"]
    assert res.latency_s >= res.roofline_bound_s
