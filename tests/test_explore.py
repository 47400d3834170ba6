"""`stream-mla explore` and F6's exact regions.

- F6: `winner_regions` against a direct comparison of T = max(2·MACs / P, bytes / W), computed here from the rows, at
  random ridges and within 0.1 % of every region edge (where a factor-2 grid showed the wrong winner).
- explore: the shipped example's winner maps against §8.1's crossover rule with the §5 closed forms typed in
  `closed_forms` (independent of the graphs), its region table against its own points, errors as one line,
  byte-identical outputs, the CLI and the run time.
"""

import math
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from stream_mla.cli import main
from stream_mla.errors import SpecError
from stream_mla.explore import (
    EXAMPLE,
    evaluate,
    explore_from_dict,
    load_explore,
    platform_grid,
    run_explore,
    spill_steps,
)
from stream_mla.figures import PAIRS, TIE, winner_regions
from stream_mla.models import PRESETS
from stream_mla.sweeps.points import SweepPoint, run_point
from stream_mla.workloads import build, make_spec

import closed_forms as cf

SIX = ("mha", "mla-naive", "mla-absorb", "mla-recompute", "mla-merged", "mla-merged-per-step")
V3 = "deepseek-v3"
CONTEXTS = (1024, 4096, 16384, 32768)
EXACT = 1e-12
EDGE = 5e-4  # test points at ±0.05 % of every edge: within the 0.1 % the issue names


# ---------------------------------------------------------------------------------------------- F6
@pytest.fixture(scope="module")
def f6_rows() -> pd.DataFrame:
    pts = [SweepPoint(model=V3, scheme=s, batch=b, context=L, platform="cloud-fusemax", bw_scale=bw)
           for s in SIX for b in (1, 32) for L in CONTEXTS for bw in (0.25, 1.0, 4.0)]  # fmt: skip
    pts += [SweepPoint(model=V3, scheme="mha", context=4096, platform=p) for p in ("h20-like", "h100-like")]
    return pd.DataFrame([run_point(p) for p in pts])


def _direct(counts: dict, schemes, batch: int, context: int, ridge: float) -> tuple[str, str]:
    """The fastest scheme and tie state at ridge R, from the rows' MACs and bytes on a platform with W = 1 TB/s and
    P = R·W; an equal time goes to fewer MACs, then fewer bytes, then the first listed (the documented rule)."""
    bw = 1e12
    peak = ridge * bw
    recs = []
    for i, s in enumerate(schemes):
        macs, dram = counts[(s, batch, context)]
        recs.append((max(2 * macs / peak, dram / bw), macs, dram, i, s))
    recs.sort()
    ratio = recs[1][0] / recs[0][0]
    return recs[0][4], "exact" if ratio - 1 <= EXACT else "near" if ratio <= 1 + TIE else "none"


def test_f6_regions_agree_with_a_direct_comparison(f6_rows):
    regions = winner_regions(f6_rows)
    assert list(regions.columns) == ["panel", "batch", "context", "r_lo", "r_hi", "winner", "tie"]
    assert set(regions["panel"]) == {"all", *PAIRS} and set(regions["batch"]) == {1, 32}
    assert set(regions["context"]) == set(CONTEXTS)
    rng = np.random.default_rng(7)
    panels = {"all": list(SIX), **{k: list(v) for k, v in PAIRS.items()}}
    counts = {(r.scheme, r.batch, r.context): (float(r.macs), float(r.dram_bytes)) for r in f6_rows.itertuples()}
    checked = n_edges = 0
    for (panel, b, L), g in regions.groupby(["panel", "batch", "context"]):
        g = g.sort_values("r_lo")
        lo, hi = g["r_lo"].iloc[0], g["r_hi"].iloc[-1]
        assert np.allclose(g["r_lo"].to_numpy()[1:], g["r_hi"].to_numpy()[:-1], rtol=0, atol=0)  # a tiling
        edges = g["r_lo"].to_numpy()[1:]
        n_edges += len(edges)
        ridges = np.exp(rng.uniform(math.log(lo), math.log(hi), 60))
        ridges = np.concatenate([ridges, edges * (1 - EDGE), edges * (1 + EDGE)])
        for r in ridges[(ridges >= lo) & (ridges < hi)]:
            row = g[(g["r_lo"] <= r) & (g["r_hi"] > r)]
            assert len(row) == 1
            winner, tie = _direct(counts, panels[panel], b, L, r)
            assert (row["winner"].iloc[0], row["tie"].iloc[0]) == (winner, tie), (panel, b, L, r)
            checked += 1
    assert checked == 60 * 3 * 2 * len(CONTEXTS) + 2 * n_edges and n_edges > 50


def test_f6_no_longer_shows_the_grid_artefact(f6_rows):
    """The issue's example: C3b at R = 400, L = 16k is recompute (1.25× faster than naive), not naive."""
    regions = winner_regions(f6_rows)
    c3b = regions[(regions["panel"] == "C3b") & (regions["batch"] == 1) & (regions["context"] == 16384)]
    at = c3b[(c3b["r_lo"] <= 400) & (c3b["r_hi"] > 400)]
    assert at["winner"].tolist() == ["mla-recompute"]
    rows = f6_rows[(f6_rows["batch"] == 1) & (f6_rows["context"] == 16384)].drop_duplicates("scheme")
    t = {r.scheme: max(2 * r.macs / 400.0, r.dram_bytes) for r in rows.itertuples()}
    assert t["mla-naive"] / t["mla-recompute"] == pytest.approx(1.25, abs=0.01)
    # the crossover R* = F_rc / Q_naive is a region edge, exactly
    rstar = (
        2
        * rows.set_index("scheme").loc["mla-recompute", "macs"]
        / rows.set_index("scheme").loc["mla-naive", "dram_bytes"]
    )
    flips = c3b[c3b["winner"] == "mla-recompute"]["r_lo"].min()
    assert flips == pytest.approx(rstar, rel=1e-12)


def test_f6_figure_draws_the_regions(f6_rows, tmp_path):
    from stream_mla.figures import fig_winner_map

    f6_rows = f6_rows[f6_rows["batch"] == 1]  # one row of panels is enough here (and half the drawing time)
    files = fig_winner_map(f6_rows, tmp_path)
    data = pd.read_csv(tmp_path / "F6_winner_map.csv")
    assert {f.suffix for f in files} == {".png", ".svg", ".csv"}
    regions = winner_regions(f6_rows)
    drawn = data[data["source"] == "analytic"]
    assert len(drawn) == len(regions) and set(drawn["tie"]) == {"exact", "near", "none"}
    assert set(data.loc[data["source"] == "boundary", "panel"]) == {"all", *PAIRS}
    again = fig_winner_map(f6_rows, tmp_path / "again")
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in again]


# ---------------------------------------------------------------------------------------------- explore: model
def _bytes(forms: cf.Forms, p: int = 2) -> int:
    return p * (forms.weights + forms.kv_read + forms.kv_write + forms.activations)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    ex = load_explore(EXAMPLE)
    t0 = time.perf_counter()
    r = run_explore(ex, tmp_path_factory.mktemp("explore-nofig"), figures=False)
    return ex, r, time.perf_counter() - t0


def test_example_counts_are_the_closed_forms(example_run):
    ex, _, _ = example_run
    m = PRESETS[V3]
    for w in ex.workloads:
        for c in w.costs:
            f = cf.decode(m, c.scheme, w.batch, w.context)
            assert (c.macs, c.fused_bytes) == (f.macs, _bytes(f)), (w.title, c.scheme)
            assert c.caps[0] > 0 and c.caps[-1] == 0 and (np.diff(c.caps) <= 0).all()
            assert c.extra[0] == 0 and (np.diff(c.extra) > 0).all()
            # everything spilled: at most the layer-by-layer traffic (which also re-reads weights and caches per node)
            assert c.fused_bytes < c.fused_bytes + c.extra[-1] <= 1.001 * c.layer_by_layer_bytes


def test_example_size_and_time(example_run):
    ex, r, wall = example_run
    assert r.n_platform == 5 * 48 * 12 * 48 and r.n_points == 6 * r.n_platform and r.n_points >= 10**5
    assert wall < 30  # the numbers alone (figures: test_example_cli_under_a_minute)
    assert sum(r.shares.values()) == pytest.approx(1.0)


def _no_spill(regions: pd.DataFrame) -> pd.DataFrame:
    return regions[regions["spills"] == "none"]


def test_example_pair_maps_follow_the_crossover_rule(example_run):
    """§8.1: X (more FLOPs, no more bytes) beats a memory-bound Y exactly when R ≥ R* = F_X / Q_Y."""
    ex, r, _ = example_run
    m = PRESETS[V3]
    seen = 0
    for name, (x, y) in ex.spec.pairs.items():
        for (b, L), g in _no_spill(r.regions[r.regions["map"] == name]).groupby(["batch", "context"]):
            fx, fy = cf.decode(m, x, b, L), cf.decode(m, y, b, L)
            assert fx.macs >= fy.macs and _bytes(fx) <= _bytes(fy)
            rstar = 2 * fx.macs / _bytes(fy)
            assert 2 * fy.macs / _bytes(fy) <= rstar  # Y memory-bound at R*
            for band, gb in g.groupby("m_lo_mb"):
                mids = np.sqrt(gb["r_lo"] * gb["r_hi"]).to_numpy()
                assert ((gb["winner"] == x).to_numpy() == (mids >= rstar)).all(), (name, b, L, band)
                assert gb.loc[gb["winner"] == x, "r_lo"].min() == pytest.approx(rstar, rel=1e-12)
                seen += 1
    assert seen >= 8  # B = 1 at every L and B = 32 at 1k, 4k fit on-chip somewhere in the example


def test_example_full_map_edges_are_crossovers(example_run):
    """In the map of every scheme, each edge where the fastest scheme changes from A (left) to B (right) is the
    §8.1 R* of the pair, F_B / Q_A, and each winner is the direct argmin of the closed forms."""
    ex, r, _ = example_run
    m = PRESETS[V3]
    schemes = ex.spec.schemes
    tie = ex.spec.tie
    for (b, L, band), g in _no_spill(r.regions[r.regions["map"] == "all"]).groupby(["batch", "context", "m_lo_mb"]):
        forms = {s: cf.decode(m, s, b, L) for s in schemes}
        f = {s: 2 * forms[s].macs for s in schemes}
        q = {s: _bytes(forms[s]) for s in schemes}
        g = g.sort_values("r_lo")
        candidates = np.array([f[i] / q[j] * c for i in schemes for j in schemes for c in (1, 1 + tie, 1 / (1 + tie))])
        for left, right in zip(g.iloc[:-1].itertuples(), g.iloc[1:].itertuples(), strict=True):
            if left.winner != right.winner:
                assert right.r_lo == pytest.approx(f[right.winner] / q[left.winner], rel=1e-12)
            assert np.isclose(candidates, right.r_lo, rtol=1e-12, atol=0).any()
        for row in g.itertuples():
            mid = math.sqrt(row.r_lo * row.r_hi)
            t = sorted((max(f[s] / mid, q[s]), f[s], q[s], i, s) for i, s in enumerate(schemes))
            assert row.winner == t[0][4], (b, L, band, mid)


def test_example_regions_agree_with_its_points(example_run):
    """Every written point lies in a region (of its workload and M band) naming the winner it was given."""
    ex, r, _ = example_run
    pts = r.points
    assert len(pts) >= 80_000
    regions = r.regions[r.regions["map"] == "all"]
    checked = 0
    for (b, L), p in pts.groupby(["batch", "context"]):
        g = regions[(regions["batch"] == b) & (regions["context"] == L)]
        top = g["m_lo_mb"].max()
        for m_lo, band in g.groupby("m_lo_mb"):  # each band's points (m_lo <= M < m_hi; the top band includes m_hi)
            m_hi, m = band["m_hi_mb"].iloc[0], p["onchip_mb"]
            inside = p[(m >= m_lo * (1 - 1e-12)) & ((m < m_hi * (1 - 1e-12)) | ((m_lo == top) & (m <= m_hi)))]
            band = band.sort_values("r_lo")
            i = np.searchsorted(band["r_lo"].to_numpy(), inside["ridge"].to_numpy(), side="right") - 1
            assert (i >= 0).all()
            assert (band["winner"].to_numpy()[i] == inside["winner"].to_numpy()).all(), (b, L, m_lo)
            assert (band["tie"].to_numpy()[i] == inside["tie"].to_numpy()).all(), (b, L, m_lo)
            checked += len(inside)
    assert checked >= len(pts)


def test_one_point_reproduces_the_analytic_row():
    """No axis swept: one platform point, the base itself; where nothing spills, explore's latency and energy are
    the analytic sweep row's."""
    ex = explore_from_dict({"models": [V3], "contexts": [4096], "schemes": ["mla-absorb", "mha"]})
    g = platform_grid(ex, "bf16")
    assert len(g) == 1
    h100 = ex.base
    assert g["peak_flop_per_s"].iloc[0] == pytest.approx(h100.peak_flop_per_s)
    assert g["onchip_bytes"].iloc[0] == pytest.approx(h100.total_sram_bytes)
    ev = evaluate(ex, ex.workloads[0], g)
    for i, s in enumerate(ex.workloads[0].schemes):
        row = run_point(SweepPoint(model=V3, scheme=s, context=4096, platform="h100-like"))
        assert ev.latency_s[i, 0] == pytest.approx(row["latency_s"], rel=1e-12)
        assert ev.energy_pj[i, 0] == pytest.approx(row["energy_pj"], rel=1e-12)  # presets: no static power


def test_cores_scale_peak_memory_and_static_power():
    ex = explore_from_dict({"models": [V3], "contexts": [1024], "schemes": ["mla-absorb"],
                            "platform": {"base": "h100-like", "cores": [1, 4], "peak_tflops_per_core": 100,
                                         "sram_mb_per_core": 2, "static_w_per_core": 10, "static_w_per_mb": 0.5},
                            "precision": ["fp8"]})  # fmt: skip
    g = platform_grid(ex, "fp8")
    assert g["peak_flop_per_s"].tolist() == pytest.approx([2 * 100e12, 2 * 400e12])  # fp8: 2x the bf16 rate
    assert g["onchip_bytes"].tolist() == pytest.approx([2e6, 8e6])
    assert g["static_w"].tolist() == pytest.approx([11.0, 44.0])


def test_spills_follow_on_chip_memory():
    """recompute's re-projected K and V (B·L·h·d_n and B·L·h·d_v elements) spill below their live size."""
    m = PRESETS[V3]
    graph = build(make_spec(model=m, scheme="mla-recompute", context=4096).on_platform("bf16"))
    caps, extra = spill_steps(graph)
    k_up = 4096 * m.heads * m.qk_nope_head_dim * 2
    assert caps[0] >= 2 * k_up and caps[1] < caps[0]
    assert extra[1] == 2 * k_up  # the largest (K): written once, read back once by the scores (through views)


# ---------------------------------------------------------------------------------------------- explore: spec, CLI
SMALL = {
    "platform": {"base": "h20-like", "cores": [4, 8], "peak_tflops_per_core": {"from": 5, "to": 40, "points": 4},
                 "sram_mb_per_core": [1, 64, 512], "dram_gb_s": {"from": 500, "to": 8000, "points": 5},
                 "static_w_per_core": 5},
    "models": [V3], "batch": [1], "contexts": [1024, 4096],
    "pairs": {"C3b": ["mla-recompute", "mla-naive"]},
}  # fmt: skip


def test_small_explore_is_deterministic(tmp_path):
    ex = explore_from_dict(SMALL)
    a = run_explore(ex, tmp_path / "a")
    b = run_explore(explore_from_dict(SMALL), tmp_path / "b")
    names = sorted(f.name for f in a.files)
    assert names == sorted(f.name for f in b.files)
    assert {"winner_map_all.png", "winner_map_C3b.svg", "pareto.csv", "points.csv"} <= set(names)
    for f in a.files:
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    assert a.n_points == 2 * 4 * 3 * 5 * 2 and len(a.points) == a.n_points  # every point written
    assert set(a.regions["map"]) == {"all", "C3b"}
    fronts = pd.read_csv(tmp_path / "a" / "pareto.csv")
    for _, f in fronts.groupby(["context", "scheme"]):  # a front: latency up, energy down
        assert (np.diff(f["latency_s"]) >= 0).all() and (np.diff(f["energy_pj"]) < 0).all()


def test_cli_small(tmp_path, capsys):
    spec = tmp_path / "small.yaml"
    spec.write_text(yaml.safe_dump(SMALL))
    assert main(["explore", str(spec), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("explore: 120 platform points × 2 workloads = 240 points")
    assert (tmp_path / "out" / "winner_map_all.csv").is_file()


@pytest.mark.parametrize(
    ("doc", "expect"),
    [
        ({"models": [V3]}, "contexts: Field required"),
        ({"models": [V3], "context": [1]}, "context: unknown field (allowed: platform, models"),
        ({"models": [V3], "contexts": [1], "platform": {"dram": 1}}, "platform.dram: unknown field (allowed: base"),
        ({"models": [V3], "contexts": [1], "platform": {"dram_gb_s": {"from": 2, "to": 1, "points": 3}}},
         "platform.dram_gb_s: to (1) must not be below from (2)"),
        ({"models": [V3], "contexts": [1], "platform": {"dram_gb_s": {"from": 1, "to": 2}}},
         "platform.dram_gb_s.points: Field required"),
        ({"models": [V3], "contexts": [1], "platform": {"dram_gb_s": [1, -2]}},
         "platform.dram_gb_s.1: Input should be greater than 0"),
        ({"models": [V3], "contexts": [1], "platform": {"cores": [1.5]}}, "platform.cores: cores are whole numbers"),
        ({"models": [V3], "contexts": [1], "platform": {"peak_tflops_per_core": True}}, "per_core: a number"),
        ({"models": [V3], "contexts": [1], "platform": {"base": "nope"}}, "platform.base: platform: unknown preset"),
        ({"models": [V3], "contexts": [1], "precision": ["fp32"]}, "precision: h100-like computes in bf16"),
        ({"models": [V3], "contexts": [1], "schemes": ["mla-naive"], "pairs": {"C3b": ["mla-naive", "mha"]}},
         "pairs.C3b: mha is not among schemes"),
        ({"models": ["llama-3.1-8b"], "contexts": [1], "schemes": ["mla-absorb"]}, "schemes: mla-absorb for"),
        ({"models": [V3], "contexts": [1], "platform": {"dram_gb_s": {"from": 1, "to": 9, "points": 10000},
                                                        "peak_tflops_per_core": {"from": 1, "to": 9, "points": 1000}}},
         "platform: 10,000,000 platform points, more than 4,000,000"),
    ],
)  # fmt: skip
def test_errors_are_one_line(doc, expect):
    with pytest.raises(SpecError) as e:
        explore_from_dict(doc, source="x.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("x.yaml: ") and expect in msg, msg


def test_cli_bad_spec_is_one_line(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("models: [deepseek-v3]\ncontexts: [1024]\nplatform: {dram_gb_s: {from: 1}}\n")
    assert main(["explore", str(spec), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "platform.dram_gb_s.to: Field required" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_example_cli_under_a_minute(tmp_path, capsys):
    """The README's example end to end (figures included), twice: under a minute each, byte-identical."""
    walls = []
    for out in ("a", "b"):
        t0 = time.perf_counter()
        assert main(["explore", "-o", str(tmp_path / out)]) == 0
        walls.append(time.perf_counter() - t0)
    assert max(walls) < 60, walls
    assert "829,440 points" in capsys.readouterr().out
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"winner_map_all.png", "winner_map_C3b.png", "winner_map_C3c.png", "pareto.png", "points.csv"} <= set(files)
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
