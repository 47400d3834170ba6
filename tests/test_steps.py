"""The steps a strategy runs a layer in and their serial bound (workloads/steps.py), against the closed forms of the
attention core (tests/closed_forms.py, typed in from the spec): fused attention's core step does the core's MACs and
moves exactly what a kernel of the core alone moves (queries, cache, context, and recompute's W_UK/W_UV)."""

import pytest

from stream_mla.claims import _serial_verdict
from stream_mla.models import resolve_name_or_path
from stream_mla.workloads import build, make_spec
from stream_mla.workloads.counts import count, roofline, step_counts
from stream_mla.workloads.steps import serial_bound_s, steps

from closed_forms import core

CASES = [("llama-3.1-8b", "gqa", 8), ("deepseek-v2-lite", "mla-absorb", None),
         ("deepseek-v2-lite", "mla-recompute", None), ("deepseek-v2-lite", "mla-naive", None),
         ("deepseek-v2-lite", "mla-merged", None)]  # fmt: skip
F, BW = 2e12, 1e11  # FLOP/s and B/s of a made-up platform (ridge 20 FLOP/B)


def graph(model: str, scheme: str, B: int, L: int):
    return build(make_spec(model=resolve_name_or_path(model), scheme=scheme, phase="decode", batch=B, context=L))


@pytest.mark.parametrize(("model", "scheme", "n_kv"), CASES)
@pytest.mark.parametrize(("B", "L"), [(1, 64), (2, 256)])
def test_fused_core_step_is_the_attention_core_alone(model, scheme, n_kv, B, L):
    m = resolve_name_or_path(model)
    g = graph(model, scheme, B, L)
    macs, nbytes = step_counts(g, steps(g, "fused-attention"))["attention core"]
    want = core(m, scheme, B, L, 1, n_kv)
    assert macs == want.macs
    assert nbytes == 2 * (want.weights + want.kv_read + want.activations)  # bf16


@pytest.mark.parametrize(("model", "scheme", "n_kv"), CASES)
def test_serial_bound_sits_between_the_roofline_and_the_layer_by_layer_steps(model, scheme, n_kv):
    g = graph(model, scheme, 2, 256)
    roof = roofline(count(g), F / 2, BW).bound_s
    per_node = serial_bound_s(g, "keep-softmax", F, BW)
    fused = serial_bound_s(g, "fused-attention", F, BW)
    assert roof <= fused < per_node  # fusing the core keeps its scores and probabilities off DRAM
    assert serial_bound_s(g, "fixed-mapping", F, BW) == per_node  # no weight product in these schemes


def test_weight_products_run_with_their_readers_under_both_fixed_mappings():
    g = graph("deepseek-v2-lite", "mla-merged-per-step", 1, 64)
    assert {s for s in steps(g, "fixed-mapping").values()} == {"merge_qk", "merge_vo"}
    assert steps(g, "keep-softmax") == {}
    fused = steps(g, "fused-attention")
    assert fused["merge_vo"] == fused["o_merged_proj"] == "merge_vo" and fused["ctx"] == "attention core"


def test_serial_verdict_names_the_serialization_only_where_it_gives_the_engines_verdict():
    # recompute/absorb: a tie on the roofline (1.00), 1.50 on the serial bound, 1.54 in the engine: both fail ≈ 1
    said = _serial_verdict(1.54, 1.50, 1.00, 1.0, "≈", 0.05, "T_rc/T_abs")
    assert said.startswith(" Steps in turn explain it: T_rc/T_abs is 1.00 on the roofline, 1.50 on the serial bound")
    assert "1.54 in the engine" in said and "engines.md trap 9" in said
    said = _serial_verdict(1.54, 1.02, 1.00, 1.0, "≈", 0.05, "T_rc/T_abs")  # the serial bound ties: not the cause
    assert said == " Steps in turn do not explain it: T_rc/T_abs is 1.00 on the roofline, 1.02 on the serial bound " \
                   "and 1.54 in the engine."  # fmt: skip
    assert _serial_verdict(1.54, float("nan"), 1.0, 1.0, "≈", 0.05, "x") == ""  # no serial bound stored
