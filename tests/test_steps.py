"""The steps a strategy runs a layer in and their serial bound (workloads/steps.py), against the closed forms of the
attention core (tests/closed_forms.py, typed in from the spec): fused attention's core step does the core's MACs and
moves exactly what a kernel of the core alone moves (queries, cache, context, and recompute's W_UK/W_UV)."""

import pytest

from stream_mla.claims import execution_finding
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


def test_execution_finding_is_one_sentence_where_the_models_differ():
    # recompute/absorb: a tie on the overlapped roofline (1.00), 1.50 with the steps in turn
    said = execution_finding("T_rc/T_abs", 1.00, 1.50)
    assert said == ("Execution model: T_rc/T_abs is 1.50 with the steps run in turn against 1.00 on the overlapped "
                    "roofline, which no step-by-step device attains.")  # fmt: skip
    assert execution_finding("T_rc/T_abs", 1.00, 1.04) == ""  # within 5 %: the models agree
    assert execution_finding("x", 1.0, float("nan")) == ""  # no serial roofline stored
