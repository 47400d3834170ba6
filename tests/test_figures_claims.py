"""Figures, claims and report from a small table of real analytic rows plus synthetic engine rows."""

import argparse
import json
import re

import pandas as pd
import pytest

from stream_mla.analysis_cli import add_commands, load_table
from stream_mla.claims import claims, format_claims
from stream_mla.errors import SpecError
from stream_mla.figures import make_figures
from stream_mla.report import write_report
from stream_mla.sweeps.points import ROW_COLUMNS, SweepPoint, run_point

SIX = ("mha", "mla-naive", "mla-absorb", "mla-recompute", "mla-merged", "mla-merged-per-step")
V3 = "deepseek-v3"


def _points():
    for p in ("h100-like", "h20-like"):
        for s in SIX:
            for L in (1024, 4096, 32768):
                yield SweepPoint(model=V3, scheme=s, context=L, platform=p)
            if s in ("mha", "mla-absorb"):
                yield SweepPoint(model=V3, scheme=s, batch=32, context=4096, platform=p)
    for s in SIX:  # bandwidth sweep (F3, F6)
        for bw in (0.25, 4.0):
            for L in (1024, 4096):
                yield SweepPoint(model=V3, scheme=s, context=L, platform="cloud-fusemax", bw_scale=bw)
    for s in ("mha", "mla-absorb"):
        yield SweepPoint(model=V3, scheme=s, phase="prefill", context=1024, platform="cloud-fusemax")


def synthetic_engine(rows: pd.DataFrame, factor: float = 1.02) -> pd.DataFrame:
    """SYNTHETIC 'stream' rows: copies of analytic rows with latency x factor and 3 % more DRAM bytes."""
    e = rows.copy()
    e["engine"], e["key"] = "stream", e["key"] + "-synthetic"
    e["latency_s"] = e["latency_s"] * factor
    e["engine_dram_bytes"] = e["dram_bytes"] * 1.03
    e["energy_onchip_memory_pj"] = 0.1 * e["energy_pj"]
    return e


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    a = pd.DataFrame([run_point(p) for p in _points()])
    pick = (a["batch"] == 1) & (a["context"] == 4096) & (a["bw_scale"] == 1.0) & a["platform"].isin(["h100-like",
            "h20-like"]) & a["scheme"].isin(["mha", "mla-absorb", "mla-recompute"])  # fmt: skip
    grow = (a["batch"] == 1) & (a["context"].isin([1024, 32768])) & (a["platform"] == "h20-like") & a["scheme"].isin(
        ["mha", "mla-absorb"])  # fmt: skip
    return pd.concat([a, synthetic_engine(a[pick | grow])], ignore_index=True)[list(ROW_COLUMNS)]


@pytest.fixture(scope="module")
def figures(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, make_figures(table, out)


def test_figures_have_expected_series(figures):
    tmp_path, files = figures
    names = {f.name for f in files}
    for stem in ("F1_oi_vs_context", "F2_latency_energy", "F3_latency_vs_bandwidth", "F4_latency_vs_context",
                 "F5_prefill", "F6_winner_map"):  # fmt: skip
        assert {f"{stem}.png", f"{stem}.svg", f"{stem}.csv"} <= names
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
    f1 = pd.read_csv(tmp_path / "F1_oi_vs_context.csv")
    assert list(f1.columns) == ["batch", "kind", "series", "context", "oi"]
    assert set(f1.loc[f1["kind"] == "layer", "series"]) == set(SIX)
    assert {"h100-like", "h20-like"} == set(f1.loc[f1["kind"] == "ridge", "series"])
    assert set(f1["batch"]) == {1, 32}
    f2 = pd.read_csv(tmp_path / "F2_latency_energy.csv")
    assert {"energy_dram_pj", "energy_onchip_pj", "energy_mac_pj", "energy_static_pj", "roofline_s"} <= set(f2.columns)
    assert set(f2["source"]) == {"analytic", "stream"}
    f3 = pd.read_csv(tmp_path / "F3_latency_vs_bandwidth.csv")
    assert sorted(f3["dram_gb_s"].unique()) == [100, 1600] and set(f3["scheme"]) == set(SIX)
    f4 = pd.read_csv(tmp_path / "F4_latency_vs_context.csv")
    assert set(f4["engine"]) == {"analytic", "stream"}
    f5 = pd.read_csv(tmp_path / "F5_prefill.csv")
    assert (f5["macs_causal"] < f5["macs_dense"]).all() and set(f5["scheme"]) == {"mha", "mla-absorb"}
    f6 = pd.read_csv(tmp_path / "F6_winner_map.csv")
    assert set(f6["panel"]) == {"all", "C3b", "C3c"}
    grid = f6[(f6["source"] == "analytic") & (f6["panel"] == "all")]
    assert set(grid["winner"]) == {"mla-absorb"}
    c3b = f6[(f6["source"] == "analytic") & (f6["panel"] == "C3b")]
    assert set(c3b["winner"]) == {"mla-recompute", "mla-naive"}  # the C3b winner flips with the ridge


def test_figures_are_deterministic(table, figures, tmp_path):
    first = {f.name: f for f in figures[1]}
    again = make_figures(table, tmp_path, only=["F3", "F5"])
    assert len(again) == 6
    for f in again:
        assert f.read_bytes() == first[f.name].read_bytes(), f.name


def test_figures_are_reused_until_the_rows_change(table, tmp_path):
    first = make_figures(table, tmp_path, only=["F1"])
    stamps = {f: f.stat().st_mtime_ns for f in first}
    assert make_figures(table, tmp_path, only=["F1"]) == first
    assert {f: f.stat().st_mtime_ns for f in first} == stamps  # same rows: nothing redrawn
    changed = table.copy()
    changed.loc[changed["scheme"] == "mha", "oi"] *= 2
    csv = tmp_path / "F1_oi_vs_context.csv"
    before = csv.read_bytes()
    make_figures(changed, tmp_path, only=["F1"])
    assert csv.read_bytes() != before


def test_figures_skip_missing_data(table, tmp_path, caplog):
    decode_only = table[table["phase"] == "decode"]
    files = make_figures(decode_only, tmp_path, only=["F5"])
    assert files == [] and "F5" in caplog.text
    assert make_figures(table.iloc[:0], tmp_path) == []


def test_claims_pass_on_analytic_rows(table):
    c = claims(table[table["engine"] == "analytic"]).set_index("claim")
    assert list(c.index) == ["C1", "C2", "C3a", "C3b", "C3c", "C4"]
    assert (c["result"] == "PASS").all(), format_claims(c.reset_index())
    assert "mha/absorb B=1 L=4k 3.19" in c.loc["C1", "measured"]
    assert "OI L=4k" in c.loc["C2", "measured"] and "rc 364" in c.loc["C2", "measured"]
    assert "C3b reproduces" in c.loc["C3b", "note"] and "C3a does not reproduce" in c.loc["C3a", "note"]


def test_forced_strategy_rows_are_shown_not_tested(table):
    a = table[table["engine"] == "analytic"]
    pick = (a["platform"] == "h20-like") & (a["batch"] == 1) & a["context"].isin([1024, 32768])
    forced = synthetic_engine(a[pick & a["scheme"].isin(["mha", "mla-absorb"])], factor=3.0)
    forced["engine"], forced["key"] = "stream:fixed-mapping", forced["key"] + "-fixed"
    c = claims(pd.concat([table, forced], ignore_index=True)).set_index("claim")
    assert (
        "Not tested, for comparison: T(32k)/T(1k) h20-like [stream:fixed-mapping]: mha 3.07, absorb 1.10"
        in (c.loc["C4", "note"])
    )  # a common factor leaves the growth as analytic
    assert c.loc["C4", "result"] == claims(table).set_index("claim").loc["C4", "result"]


def test_claims_use_engine_rows(table):
    c = claims(table).set_index("claim")
    assert (
        c.loc["C1", "result"] == "PASS" and "engine/analytic DRAM absorb+recompute 1.03-1.03" in c.loc["C1", "measured"]
    )
    assert "stream T_rc/T_abs h20-like B=1 L=4k" in c.loc["C3a", "measured"]
    assert "[stream]" in c.loc["C4", "measured"]  # growth from the (synthetic) engine rows on h20-like
    text = format_claims(c.reset_index())
    assert text.splitlines()[0].startswith("claim") and "C3c" in text


def test_claims_fail_when_rows_contradict(table):
    bad = table[table["engine"] == "analytic"].copy()
    long = (bad["scheme"] == "mha") & (bad["context"] == 32768)
    bad.loc[long, "latency_s"] /= 2.5  # MHA now looks stable as L grows
    bad.loc[bad["scheme"] == "mha", "dram_bytes"] *= 0.5  # and MLA no longer cuts traffic by the predicted ratio
    c = claims(bad).set_index("claim")
    assert c.loc["C4", "result"] == "FAIL"
    assert c.loc["C1", "result"] == "FAIL"
    # an engine that spills far beyond the §5.3 term fails C1's engine part
    spill = synthetic_engine(table[(table["engine"] == "analytic") & (table["scheme"] == "mla-absorb")])
    spill["engine_dram_bytes"] *= 2
    c = claims(pd.concat([table[table["engine"] == "analytic"], spill])).set_index("claim")
    assert c.loc["C1", "result"] == "FAIL" and "beyond both references" in c.loc["C1", "note"]
    # moving exactly the layer-by-layer bytes (no reuse between steps) is explained, not a failure
    spill["engine_dram_bytes"] = spill["layer_by_layer_bytes"].astype(float)
    c = claims(pd.concat([table[table["engine"] == "analytic"], spill])).set_index("claim")
    assert c.loc["C1", "result"] == "PASS" and "= layer-by-layer" in c.loc["C1", "note"]


def test_claims_no_data(table):
    c = claims(table[table["phase"] == "prefill"])
    assert (c["result"] == "NO DATA").all()
    assert (claims(table.iloc[:0])["result"] == "NO DATA").all()


def test_report_is_self_contained(table, figures, tmp_path):
    failed = table.iloc[:1].assign(status="failed", error="EngineError: boom", key="x")
    out = write_report(pd.concat([table, failed]), figures[0], tmp_path / "r.html")
    text = out.read_text()
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert "<link" not in text and "<script" not in text
    assert 'class="claims"' in text and "C3b" in text and "EngineError: boom" in text
    assert "data:image/png;base64," in text and "h20-like" in text and "stream-dse" in text
    again = write_report(pd.concat([table, failed]), figures[0], tmp_path / "r2.html")
    assert again.read_bytes() == out.read_bytes()


def test_cli_commands_and_missing_db(tmp_path):
    ap = argparse.ArgumentParser()
    add_commands(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["report", "--db", str(tmp_path / "none.sqlite"), "-o", str(tmp_path / "r.html")])
    assert args.figures == "figures"
    with pytest.raises(SpecError, match="no results store"):
        args.func(args)
    with pytest.raises(SpecError, match="--db"):
        load_table(tmp_path / "none.sqlite")


def test_cli_on_a_store(table, tmp_path, capsys):
    from stream_mla.sweeps.store import ResultStore

    db = tmp_path / "results.sqlite"
    with ResultStore(db) as store:
        for row in table.to_dict(orient="records"):
            store.put({k: (None if pd.isna(v) else v) for k, v in row.items()})
    ap = argparse.ArgumentParser()
    add_commands(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["claims", "--db", str(db), "--json"])
    args.func(args)
    out = json.loads(capsys.readouterr().out)
    assert [r["claim"] for r in out] == ["C1", "C2", "C3a", "C3b", "C3c", "C4"]
    assert out == claims(table).to_dict(orient="records")


def test_reproduce_command_end_to_end(tmp_path, capsys):
    """`stream-mla reproduce SPEC`: sweep, figures, claims and report from one small analytic spec; the second
    run reuses every stored point and rewrites the same bytes."""
    from stream_mla.cli import main

    spec = tmp_path / "small.yaml"
    block = {"models": [V3], "schemes": ["mha", "mla-absorb", "mla-recompute"], "context": [1024, 4096, 32768],
             "platforms": ["h100-like", "h20-like"], "engines": ["analytic"]}  # fmt: skip
    spec.write_text(json.dumps({"sweeps": [block]}))
    out = tmp_path / "repro"
    assert main(["reproduce", str(spec), "-o", str(out), "-q"]) == 0
    first = capsys.readouterr().out
    assert "18 points (18 computed, 0 cached, 0 failed)" in first
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert {"results.sqlite", "claims.txt", "claims.json", "report.html", "figures/F1_oi_vs_context.png"} <= set(files)
    stored = claims(load_table(out / "results.sqlite"))
    assert json.loads(files["claims.json"]) == stored.to_dict(orient="records")
    assert files["claims.txt"].decode() in first
    assert main(["reproduce", str(spec), "-o", str(out), "-q"]) == 0
    assert "18 points (0 computed, 18 cached, 0 failed)" in capsys.readouterr().out
    for name, data in files.items():
        if name != "results.sqlite":  # the store holds creation times
            assert (out / name).read_bytes() == data, name
