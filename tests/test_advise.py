"""`stream-mla advise`: its ranking, margins and crossover contexts against the closed forms of tests/closed_forms.py
(typed in from the spec, independently of the graphs), a direct evaluation around each L*, and bad input."""

import json
import math
from fractions import Fraction

import pandas as pd
import pytest

from stream_mla.advise import advise, fit, recommend
from stream_mla.errors import SpecError
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import PRESETS as PLATFORMS
from stream_mla.sweeps.points import SweepPoint, run_point

from closed_forms import decode

V3 = "deepseek-v3"
BF16 = 2  # bytes per element: the presets' native precision
N_KV = {"mqa": 1}  # closed_forms.decode takes n_kv for the baselines (default h)


def hand_times(scheme: str, platform: str, B: int, L: int) -> tuple[Fraction, Fraction]:
    """(compute, memory) roofline seconds of one V3 decode step from the closed forms."""
    f, p = decode(MODELS[V3], scheme, B, L, n_kv=N_KV.get(scheme)), PLATFORMS[platform]
    elements = f.weights + f.kv_read + f.kv_write + f.activations
    return Fraction(f.macs) / Fraction(p.peak_mac_per_s), Fraction(elements * BF16) / Fraction(p.dram_bytes_per_s)


def hand_latency(scheme: str, platform: str, B: int, L: int) -> float:
    return float(max(hand_times(scheme, platform, B, L)))


def hand_lstar(platform: str, B: int = 1) -> float:
    """Where recompute's compute time (affine in L) reaches absorb's memory time: the end of their tie (C3a)."""
    (c0, _), (c1, _) = hand_times("mla-recompute", platform, B, 0), hand_times("mla-recompute", platform, B, 1)
    (_, m0), (_, m1) = hand_times("mla-absorb", platform, B, 0), hand_times("mla-absorb", platform, B, 1)
    return float((m0 - c0) / ((c1 - c0) - (m1 - m0)))


@pytest.mark.parametrize("platform", ["h100-like", "h20-like"])
def test_ranking_equals_the_closed_form_latencies(platform):
    adv = advise(V3, platform, batch=1, context=4096)
    schemes = [a.scheme for a in adv]
    assert "gqa" not in schemes  # V3 has n_kv = h: gqa would be MHA, skipped without --kv-heads
    assert schemes == sorted(schemes, key=lambda s: hand_latency(s, platform, 1, 4096))
    assert [a.rank for a in adv] == list(range(1, len(adv) + 1)) and schemes[0] == "mla-absorb"
    by = {a.scheme: a for a in adv}
    ratio = hand_latency("mha", platform, 1, 4096) / hand_latency("mla-absorb", platform, 1, 4096)
    assert by["mha"].latency_s / by["mla-absorb"].latency_s == pytest.approx(ratio, rel=1e-12)
    for a, b in zip(adv, adv[1:], strict=False):
        assert a.next_scheme == b.scheme and a.margin == pytest.approx(b.latency_s / a.latency_s, rel=1e-12)
    for a in adv:  # the reason names the bound the closed forms give
        compute, memory = hand_times(a.scheme, platform, 1, 4096)
        bound = "compute" if compute >= memory else "memory"
        assert a.bound == bound and a.reason.startswith(f"{bound}-bound: OI ")
        assert f"the ridge {PLATFORMS[platform].ridge_flop_per_byte:.3g} FLOP/B" in a.reason


@pytest.mark.parametrize(("platform", "context", "quoted"), [("h100-like", 4096, 3309), ("h20-like", 256, 402)])
def test_crossover_of_absorb_and_recompute(platform, context, quoted):
    """absorb first, recompute next; their L* equals the closed-form solve and the spec's C3a value, and a direct
    evaluation on each side of it shows the tie ending there."""
    top, second = advise(V3, platform, batch=1, context=context)[:2]
    assert (top.scheme, second.scheme) == ("mla-absorb", "mla-recompute")
    (lstar,) = top.crossovers
    assert lstar == pytest.approx(hand_lstar(platform), rel=1e-12) and round(lstar) == quoted
    side = "above" if lstar > context else "below"
    assert f"{side} L* = {lstar:,.0f}" in top.reason
    rows = {L: {s: run_point(SweepPoint(model=V3, scheme=s, context=L, platform=platform))["latency_s"]
                for s in ("mla-absorb", "mla-recompute")} for L in (math.floor(lstar), math.ceil(lstar))}  # fmt: skip
    assert rows[math.floor(lstar)]["mla-recompute"] == pytest.approx(rows[math.floor(lstar)]["mla-absorb"], rel=1e-12)
    assert rows[math.ceil(lstar)]["mla-recompute"] > rows[math.ceil(lstar)]["mla-absorb"] * (1 + 1e-9)


def test_ties_are_ranked_by_energy_and_said_so():
    top, second = advise(V3, "h20-like", context=256)[:2]
    assert top.latency_s == second.latency_s and top.energy_pj < second.energy_pj and top.margin == 1
    assert "ties with recompute on latency" in top.reason


def test_gqa_is_ranked_with_kv_heads_or_on_a_gqa_model():
    assert "gqa" in [a.scheme for a in advise(V3, "h100-like", kv_heads=16)]
    llama = [a.scheme for a in advise("llama-3.1-8b", "h100-like")]
    assert set(llama) == {"mha", "gqa", "mqa"}  # MLA schemes do not apply to an MHA-family model


def test_fit_is_exact_and_refuses_rows_off_the_line():
    rows = [run_point(SweepPoint(model=V3, scheme="mla-absorb", context=L, platform="h100-like")) for L in (1, 7, 50)]
    t = fit(rows)
    for L in (1, 7, 50, 123):
        direct = run_point(SweepPoint(model=V3, scheme="mla-absorb", context=L, platform="h100-like"))
        assert float(t.at(Fraction(L))) == pytest.approx(direct["latency_s"], rel=1e-12)
    assert fit([{**rows[2], "macs": rows[2]["macs"] + 1}, *rows[:2]]) is None  # a third context off the line
    assert fit(rows[:1]) is None


def test_recommend_from_stored_rows_agrees_with_advise():
    rows = [run_point(SweepPoint(model=V3, scheme=s, context=L, platform="h100-like"))
            for s in ("mha", "mla-absorb", "mla-recompute") for L in (1024, 4096, 32768)]  # fmt: skip
    recs = recommend(pd.DataFrame(rows))
    expected = [
        (1024, "mla-absorb", "mla-recompute"),
        (4096, "mla-absorb", "mla-recompute"),
        (32768, "mla-absorb", "mha"),
    ]
    assert [(a.context, a.scheme, a.next_scheme) for a in recs] == expected
    assert recs[1].crossovers == pytest.approx((hand_lstar("h100-like"),), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "nope"}, "'nope'"),
        ({"platform": "nope"}, "'nope'"),
        ({"batch": 0}, "--batch"),
        ({"phase": "train"}, "--phase"),
        ({"precision": "fp4"}, "--precision"),
        ({"kv_heads": 7}, "kv_heads=7"),
        ({"engine": "zigzag"}, "--engine"),
    ],
)
def test_bad_input_is_a_spec_error(kwargs, message):
    args = {"model": V3, "platform": "h100-like", **kwargs}
    with pytest.raises(SpecError, match=message):
        advise(args.pop("model"), args.pop("platform"), **args)


def _status(argv: list[str]) -> int:
    from stream_mla.cli import main

    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_cli_text_json_and_bad_input(capsys):
    assert _status(["advise", "--model", V3, "--platform", "h100-like", "--context", "4096"]) == 0
    text = capsys.readouterr().out
    assert "ridge 295 FLOP/B" in text and "latency ms" in text and "1. absorb: memory-bound" in text
    assert _status(["advise", "--model", V3, "--platform", "h20-like", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in records] == list(range(1, len(records) + 1)) and records[0]["scheme"] == "mla-absorb"
    assert records[0]["next_scheme"] == "mqa" and records[-1]["next_scheme"] is None
    assert [round(x) for x in records[0]["crossovers"]] == [66034]  # mqa's smaller cache (2 d_h) wins at long L
    assert _status(["advise", "--model", V3, "--platform", "h100-like", "--batch", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch" in err


@pytest.mark.slow
def test_stream_confirms_the_top_two():
    adv = advise(V3, "h100-like", engine="stream")
    assert [a.confirmed_by for a in adv[:2]] == ["stream", "stream"] and adv[2].confirmed_by is None
    assert all(a.confirmed_latency_s >= a.latency_s * 0.99 for a in adv[:2])  # never beats its own roofline
