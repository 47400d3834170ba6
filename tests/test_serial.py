"""The serial roofline (attention-schemes.md §8.0) against its closed form (`closed_forms.serial_steps`), its bounds,
its predictions for C3a and C4, and the analytic engine's `serial` strategy."""

import json

import pytest

from stream_mla.cli import main
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import PRESETS
from stream_mla.sweeps.points import SweepPoint, run_point
from stream_mla.workloads import build, make_spec, registry
from stream_mla.workloads.counts import count, roofline
from stream_mla.workloads.steps import serial_roofline_s

import closed_forms as cf

V3 = MODELS["deepseek-v3"]


def tool(scheme, batch, context, platform, model=V3, **kw):
    p = PRESETS[platform]
    graph = build(make_spec(model=model, scheme=scheme, batch=batch, context=context, **kw).on_platform("bf16"))
    return graph, serial_roofline_s(graph, p.peak_flop_per_s, p.dram_bytes_per_s)


@pytest.mark.parametrize("platform", sorted(PRESETS))
@pytest.mark.parametrize("scheme", ["mla-absorb", "mla-recompute", "mha"])
@pytest.mark.parametrize(("batch", "context"), [(1, 1024), (1, 32831), (3, 5000), (48, 1000), (32, 4096)])
def test_serial_roofline_is_its_closed_form(platform, scheme, batch, context):
    """Off the grid too; the graph's cache-write sink adds a few B-element exchanges (< 1e-6 of the time)."""
    p = PRESETS[platform]
    _, got = tool(scheme, batch, context, platform)
    want = cf.serial_roofline(V3, scheme, batch, context, p.peak_flop_per_s, p.dram_bytes_per_s)
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("platform", ["edge-npu", "h20-like", "h100-like"])
@pytest.mark.parametrize("scheme", [s for s in registry.applicable(V3) if s != "gqa"])
@pytest.mark.parametrize(("batch", "context", "queries"), [(1, 777, 1), (5, 4133, 2), (32, 32768, 1)])
def test_serial_is_at_least_the_overlapped_roofline(platform, scheme, batch, context, queries):
    """T_serial >= T_overlapped always (§8.0): each step's bound is at least its share of the layer's."""
    p = PRESETS[platform]
    graph, serial = tool(scheme, batch, context, platform, queries=queries)
    overlapped = roofline(count(graph), p.peak_mac_per_s, p.dram_bytes_per_s).bound_s
    assert serial >= overlapped * (1 - 1e-12)


@pytest.mark.parametrize("platform", sorted(PRESETS))
def test_c3a_recompute_ties_below_the_core_crossover_and_is_slower_above(platform):
    """§8.0 C3a: recompute's core turns compute-bound at L*_core ≈ R (V3, B = 1, typed in as its closed form): the
    serial bound ties with absorb's (within 5 %) at and below it, and is slower above (2 L*_core and 1k)."""
    p = PRESETS[platform]
    star = cf.core_crossover(V3, 1, p.ridge_flop_per_byte)
    assert 0.9 * p.ridge_flop_per_byte < star < 1.1 * p.ridge_flop_per_byte  # "close to R/B tokens"

    def ratio(context):
        return tool("mla-recompute", 1, context, platform)[1] / tool("mla-absorb", 1, context, platform)[1]

    assert ratio(max(1, int(star / 2))) == pytest.approx(1.0, abs=0.05)
    assert ratio(int(star)) == pytest.approx(1.0, abs=0.05)
    assert ratio(int(2 * star)) > 1.05 and ratio(1024) > 1.05


def test_c4_absorb_grows_on_h20_like_under_the_serial_model():
    """§8.0 C4: on h20-like (ridge 37, below the absorbed core's OI) absorb's core is compute-bound at long contexts:
    the serial bound grows ≈ 1.6x from 1k to 32k, where the overlapped roofline grows 1.10x; MHA grows ≈ 3.07x in
    both. On h100-like absorb stays memory-bound: ≤ 1.2x."""
    h20, h100 = PRESETS["h20-like"], PRESETS["h100-like"]

    def growth(scheme, p):
        def t(context):
            return cf.serial_roofline(V3, scheme, 1, context, p.peak_flop_per_s, p.dram_bytes_per_s)

        return t(32768) / t(1024)

    assert growth("mla-absorb", h20) == pytest.approx(1.6, rel=0.05)
    assert growth("mla-absorb", h100) <= 1.2 and growth("mha", h100) >= 3.0
    for scheme, p in (("mla-absorb", h20), ("mla-absorb", h100), ("mha", h20)):
        got = tool(scheme, 1, 32768, p.name)[1] / tool(scheme, 1, 1024, p.name)[1]
        assert got == pytest.approx(growth(scheme, p), rel=1e-6)


def test_analytic_serial_engine_row_and_run_json(capsys):
    """`analytic:serial`: the latency is the serial roofline, beside the overlapped one; the row carries both and the
    ratio to each; the plain analytic row carries no serial columns (the fast path leaves them empty)."""
    point = SweepPoint(model="deepseek-v3", scheme="mla-absorb", context=32768, platform="h20-like",
                       engine="analytic:serial")  # fmt: skip
    row = run_point(point)
    p = PRESETS["h20-like"]
    want = cf.serial_roofline(V3, "mla-absorb", 1, 32768, p.peak_flop_per_s, p.dram_bytes_per_s)
    assert row["latency_s"] == pytest.approx(want, rel=1e-6) and row["serial_bound_s"] == row["latency_s"]
    assert row["serial_ratio"] == 1.0 and row["strategy"] == "serial"
    f = cf.decode(V3, "mla-absorb", 1, 32768)
    elements = f.weights + f.kv_read + f.kv_write + f.activations
    overlapped = max(2 * f.macs / p.peak_flop_per_s, 2 * elements / p.dram_bytes_per_s)
    assert row["roofline_s"] == pytest.approx(overlapped, rel=1e-12) and row["latency_s"] / overlapped > 1.5
    plain = run_point(point.model_copy(update={"engine": "analytic"}))
    assert plain["serial_bound_s"] is None and plain["latency_s"] == plain["roofline_s"]
    args = ["run", "--engine", "analytic", "--strategy", "serial", "--model", "deepseek-v3", "--scheme", "mla-absorb",
            "--context", "32768", "--platform", "h20-like", "--json"]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["serial_bound_s"] == pytest.approx(want, rel=1e-6) and doc["serial_ratio"] == 1.0
    assert doc["roofline_ratio"] == pytest.approx(row["latency_s"] / row["roofline_s"])
