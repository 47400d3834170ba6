"""No cliffs off the grid: Stream at a seeded context between two grid points (odd batch) runs every strategy its
neighbours ran (fused attention included; where strategies come within a few percent the winner may differ), stays
within 5 % of the interpolation of their ratios to the roofline, never below either bound, and moves the analytic
bytes plus the counted padding."""

import math
import random

import pytest

from stream_mla.engines import evaluate
from stream_mla.models import PRESETS as MODELS
from stream_mla.workloads import make_spec

RNG = random.Random(26)
# (model, scheme, platform, grid context below, grid context above): small cases on the fast presets
CASES = [("deepseek-v2-lite", "mla-absorb", "edge-npu", 1024, 2048), ("deepseek-v2-lite", "mha", "tpu-v5e-like", 1024,
                                                                         2048)]  # fmt: skip
DRAWN = [(*case, RNG.randrange(case[3] + 1, case[4]), RNG.choice((3, 5))) for case in CASES]


@pytest.mark.parametrize(("model", "scheme", "platform", "lo", "hi", "context", "batch"), DRAWN)
def test_an_off_grid_point_follows_its_grid_neighbours(model, scheme, platform, lo, hi, context, batch):
    def run(length):
        spec = make_spec(model=MODELS[model], scheme=scheme, batch=batch, context=length)
        r = evaluate(spec, platform, "stream")
        return r, r.latency_s / r.roofline_bound_s

    (below, r_lo), (above, r_hi), (mid, r_mid) = run(lo), run(hi), run(context)
    share = math.log(context / lo) / math.log(hi / lo)
    expected = r_lo + share * (r_hi - r_lo)

    def ran(r):
        return {name for name, rec in r.strategies.items() if rec["status"] == "ok"}

    assert ran(mid) >= ran(below) & ran(above)  # nothing that ran on the grid is refused off it
    assert "fused-attention" in ran(mid)
    assert r_mid == pytest.approx(expected, rel=0.05), (context, r_lo, r_mid, r_hi)
    assert r_mid >= 1.0 and mid.latency_s >= mid.serial_bound_s
    assert mid.engine_dram_bytes == pytest.approx(mid.dram_bytes + mid.pad_bytes, rel=0.05)
