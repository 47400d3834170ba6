"""`validate`: published kernel measurements predicted on the matching preset, against hand values."""

import pytest

from stream_mla.validate import TILE_ROWS, Measurement, Point, load, missing_effect, predict

H100_PEAK_FLOPS = 8 * 128 * 264 * 1.83e9 * 2  # h100-like: 132 SMs' worth of MACs at 1.83 GHz (§10)


def flashmla_bytes(b, s_k, h_q, s_q, p=2):
    """FlashMLA's own accounting (tests/test_flash_mla.py): cache b·s_k·576 + queries b·s_q·h_q·576 + outputs
    b·s_q·h_q·512, times the element size."""
    return (b * s_k * 576 + b * s_q * h_q * 576 + b * s_q * h_q * 512) * p


def flashmla_flops(b, s_k, h_q, s_q):
    return 2 * b * s_q * h_q * s_k * (576 + 512)


def test_every_row_loads_with_a_source():
    rows = load()
    assert {m.id for m in rows} >= {"flashmla-memory-bound", "flashmla-compute-bound"}
    assert all("FlashMLA" in m.source for m in rows)


def test_memory_bound_row_against_hand_values():
    m = next(r for r in load() if r.id == "flashmla-memory-bound")
    v = predict(m)
    assert v.bound == "memory"
    assert v.predicted == pytest.approx(3350.0, rel=1e-12)  # memory-bound: bytes / (bytes / 3.35 TB/s)
    assert v.ratio == pytest.approx(3000 / 3350, rel=1e-12)
    assert v.missing == ""  # within 15 %


@pytest.mark.parametrize(("row", "value"), [("flashmla-compute-bound", 580), ("flashmla-compute-bound-2025-04", 660)])
def test_compute_bound_rows_against_hand_values(row, value):
    m = next(r for r in load() if r.id == row)
    v = predict(m)
    assert v.bound == "compute"
    assert v.predicted == pytest.approx(H100_PEAK_FLOPS / 1e12, rel=1e-12)
    assert v.ratio == pytest.approx(value / (H100_PEAK_FLOPS / 1e12), rel=1e-12)
    assert "MAC rate" in v.missing


def test_our_core_counts_are_flashmlas():
    """The kernel's FLOP and byte formulas equal --part core of mla-absorb at its grid points."""
    from stream_mla.workloads import build
    from stream_mla.workloads.counts import count

    for h_q, s_q, s_k in ((16, 1, 4096), (128, 2, 8192), (64, 1, 8192)):
        m = Measurement(id="x", kernel="k", gpu="g", platform="h100-like", metric="GB/s", value=1, source="s",
                        point=Point(model="deepseek-v3", scheme="mla-absorb", batch=128, context=s_k, heads=h_q,
                                    queries=s_q))  # fmt: skip
        c = count(build(m.workload()))
        assert c["bytes"]["total"] == flashmla_bytes(128, s_k, h_q, s_q)
        assert c["flops"] == flashmla_flops(128, s_k, h_q, s_q)


def test_missing_effect_names_tile_padding_below_64_rows():
    point = Point(model="deepseek-v3", scheme="mla-absorb", batch=128, context=4096, heads=16)
    m = Measurement(id="x", kernel="k", gpu="H20", platform="h20-like", metric="TFLOP/s", value=1, source="s",
                    point=point)  # fmt: skip
    assert f"padded to {TILE_ROWS}" in missing_effect(m, 0.3, "compute")
    assert missing_effect(m, 0.9, "compute") == ""


def test_cli_table_and_json(capsys):
    import json

    from stream_mla.cli import main

    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "flashmla-memory-bound" in out and "3350 GB/s" in out
    assert main(["validate", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["engine"] for r in rows} == {"analytic"} and all(r["source"] for r in rows)


def test_missing_effect_when_the_engine_is_slower_than_the_kernel():
    """A measured kernel faster than the prediction points at the engine, not at a physical effect."""
    m = next(r for r in load() if r.id == "flashmla-compute-bound")
    text = missing_effect(m, 1.41, "compute", "stream", attained=0.416)
    assert "stream prediction is pessimistic" in text and "42% of the roofline" in text and "59%" in text


def test_every_row_has_both_predictions_and_stream_is_not_below_the_roofline():
    """Real Stream runs at FlashMLA's grid points (B = 128, fused-attention wins): every measurement is predicted by
    both engines, and Stream never attains more than the roofline's rate (its latency is never below physics)."""
    from stream_mla.validate import validate

    rows = validate(("analytic", "stream"))
    by = {(v.id, v.engine): v for v in rows}
    for m in load():
        a, s = by[(m.id, "analytic")], by[(m.id, "stream")]
        assert s.predicted <= a.predicted * (1 + 1e-9) and s.source == a.source == " ".join(m.source.split())
