"""Sweeps: spec validation, the SQLite results store, resume after a kill, failed points, local pool vs Dask."""

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

import stream_mla.sweeps.runner as runner
from stream_mla.errors import SpecError
from stream_mla.sweeps.cli import add_commands
from stream_mla.sweeps.points import ROW_COLUMNS, SweepPoint, run_point
from stream_mla.sweeps.runner import run_sweep
from stream_mla.sweeps.spec import SweepSpec, default_sweep, load_sweep
from stream_mla.sweeps.store import ResultStore

SMALL = {"models": ["deepseek-v3", "deepseek-v2-lite"], "schemes": ["mha", "mla-absorb"], "context": [512, 4096],
         "platforms": ["h100-like", "edge-npu"]}  # fmt: skip
FORTY = {"sweeps": [{**SMALL, "schemes": ["mha", "mla-naive", "mla-absorb", "mla-recompute", "mla-merged"]}]}


def spec_error(doc) -> str:
    with pytest.raises(SpecError) as exc:
        SweepSpec.from_dict(doc)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"engines": ["analytic", "stram"]}, "sweeps.0.engines.1"),
        ({"models": ["deepseek-v3", "llama"]}, "sweeps.0.models.1"),
        ({"schemes": ["mha", "mla-absorbed"]}, "sweeps.0.schemes.1"),
        ({"phases": ["decoding"]}, "sweeps.0.phases.0"),
        ({"context": [512, -1]}, "sweeps.0.context.1"),
        ({"bw_scale": [0]}, "sweeps.0.bw_scale.0"),
        ({"platforms": []}, "sweeps.0.platforms"),
        ({"colour": "red"}, "sweeps.0.colour"),
    ],
)
def test_spec_errors_name_the_field(block, field):
    assert f"sweep spec: {field}: " in spec_error({"sweeps": [{**SMALL, **block}]})


def test_spec_errors_for_points_and_files(tmp_path):
    assert "sweeps.0 " in spec_error({"sweeps": [{**SMALL, "platforms": ["no-such-platform.yaml"]}]})
    assert "sweeps.0.context: Field required" in spec_error({"sweeps": [{k: v for k, v in SMALL.items()
                                                                        if k != "context"}]})  # fmt: skip
    assert "mapping" in spec_error([1, 2])
    assert "sweeps: Field required" in spec_error({})
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweeps: [\n")
    with pytest.raises(SpecError, match=r"bad.yaml: cannot read sweep spec") as exc:
        load_sweep(bad)
    assert "\n" not in str(exc.value)


def test_points_product_dedup_and_platform_paths(tmp_path):
    spec = SweepSpec.from_dict({"sweeps": [SMALL, SMALL, {**SMALL, "schemes": ["mla-reuse"], "bw_scale": [1, 2]}]})
    pts = spec.points()
    assert len(pts) == 2 * 2 * 2 * 2 + 2 * 2 * 2  # duplicates (and the mla-reuse alias at bw 1) counted once
    assert len({p.key() for p in pts}) == len(pts)
    assert pts[0] == SweepPoint(model="deepseek-v3", scheme="mha", context=512, platform="h100-like")
    from stream_mla.platforms import PRESETS

    (tmp_path / "mine.yaml").write_text(json.dumps(PRESETS["h100-like"].model_dump(mode="json")))
    (tmp_path / "spec.yaml").write_text(json.dumps({"sweeps": [{**SMALL, "platforms": ["mine.yaml"]}]}))
    pts = load_sweep(tmp_path / "spec.yaml").points()  # the platform path is relative to the spec file
    assert len(pts) == 8 and pts[0].platform == str(tmp_path / "mine.yaml")


def test_default_sweep():
    pts = default_sweep().points()
    stream = [p for p in pts if p.engine == "stream"]
    assert len(stream) == 24 + 6 + 9 + 12 + 2 + 10 + 12 + 12 + 6  # B = 1 decode; prefill, B = 32, C4, C3a
    assert {p.phase for p in stream} == {"decode", "prefill"} and {p.batch for p in stream} == {1, 32}
    assert sum(p.engine == "stream:fixed-mapping" for p in pts) == 2 * 2 * 2
    assert sum(p.engine == "analytic" for p in pts) == 1080 + 960 - 6 * 2 * 9 + 40  # bw 1 of block 2 repeats block 1


def test_store_round_trip_and_deterministic_exports(tmp_path):
    pts = SweepSpec.from_dict({"sweeps": [SMALL]}).points()
    rows = [run_point(p) for p in pts]
    with ResultStore(tmp_path / "r.sqlite") as store:
        for row in reversed(rows):
            store.put(row)
        assert len(store) == len(rows) and store.keys("ok") == {r["key"] for r in rows}
        got = store.get(rows[0]["key"])
        assert {k: got[k] for k in ROW_COLUMNS} == rows[0] and got["created_at"] > 0
        assert store.get("nope") is None
        df = store.table()
        assert list(df.columns) == list(ROW_COLUMNS) and len(df) == len(rows)
        assert list(df["engine"] + df["model"]) == sorted(df["engine"] + df["model"])
        store.export(tmp_path / "a.csv")
        store.export(tmp_path / "a.parquet", "parquet")
    with ResultStore(tmp_path / "r.sqlite") as store:  # reopened
        store.export(tmp_path / "b.csv")
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), store.table())
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert len(pd.read_csv(tmp_path / "a.csv")) == len(rows)


# Analytic points are written a chunk per transaction: with chunks of one point, slowed down, a kill lands mid-sweep
# (0.25 s a chunk: the 32 points after the 8th take 8 s, time enough for a parent slowed by a loaded machine)
CHILD = """
import sys, time
import stream_mla.sweeps.runner as r
from stream_mla.sweeps.spec import SweepSpec
orig = r.run_analytic_batch
def slow(points, store, on_chunk=None, **kw):  # each chunk committed, then 0.25 s before the next one is written
    def sleepy(computed, failed):
        on_chunk(computed, failed)
        time.sleep(0.25)
    return orig(points, store, on_chunk=sleepy, **kw)
r.run_analytic_batch = slow
r.ANALYTIC_CHUNK = 1
r.run_sweep(SweepSpec.from_dict(eval(sys.argv[1])), sys.argv[2], progress=False)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_kill(tmp_path, monkeypatch, sig):
    db = tmp_path / "r.sqlite"
    spec = SweepSpec.from_dict(FORTY)
    all_keys = {p.key() for p in spec.points()}
    assert len(all_keys) == 40
    child = subprocess.Popen([sys.executable, "-c", CHILD, repr(FORTY), str(db)], stderr=subprocess.PIPE)
    n = 0
    deadline = time.time() + 60
    while n < 8 and time.time() < deadline:
        time.sleep(0.02)
        if db.exists():
            with sqlite3.connect(db) as conn, contextlib.suppress(sqlite3.OperationalError):  # table not yet made
                n = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    os.kill(child.pid, sig)
    assert child.wait(timeout=30) != 0
    with ResultStore(db) as store:
        finished = store.keys("ok")
        before = {k: store.get(k)["created_at"] for k in finished}
        assert finished == store.keys()
    assert 8 <= len(before) < 40, len(before)

    calls = []
    batch = runner.run_analytic_batch

    def counting(points, store, **kw):
        calls.extend(points)
        return batch(points, store, **kw)

    monkeypatch.setattr(runner, "run_analytic_batch", counting)
    summary = run_sweep(spec, db, progress=False)
    assert summary["reused"] == len(before) and summary["computed"] == 40 - len(before) and summary["failed"] == 0
    assert sorted(calls) == sorted(all_keys - set(before))  # finished points are not recomputed
    with ResultStore(db) as store:
        assert store.keys("ok") == all_keys  # nothing finished is lost
        assert all(store.get(k)["created_at"] == t for k, t in before.items())


def test_failed_points_are_recorded_and_retried_only_on_request(tmp_path):
    """A point that fails (a Stream run given 0.2 s) is stored with its error; the next run neither retries it nor
    counts it as reused; --retry-failed runs it again."""
    bad = SweepPoint(model="deepseek-v2-lite", scheme="mla-absorb", context=256, platform="h20-like", engine="stream")
    pts = [*SweepSpec.from_dict({"sweeps": [SMALL]}).points()[:15], bad]
    db = tmp_path / "r.sqlite"
    first = run_sweep(pts, db, progress=False, timeout_s=0.2)
    assert first | {"wall_s": 0} == {"total": 16, "computed": 15, "reused": 0, "failed": 1, "failed_before": 0,
                                     "wall_s": 0}  # fmt: skip
    with ResultStore(db) as store:
        row = store.get(bad.key())
        assert row["status"] == "failed" and row["error"].startswith("EngineError: stream on h20-like")
        assert (row["model"], row["context"], row["latency_s"]) == (bad.model, bad.context, None)
        assert len(store.table()) == 15 and len(store.table(include_failed=True)) == 16
    again = run_sweep(pts, db, progress=False, timeout_s=0.2)  # not retried, and not counted as reused
    assert (again["computed"], again["reused"], again["failed"], again["failed_before"]) == (0, 15, 0, 1)
    s = run_sweep(pts, db, progress=False, retry_failed=True, timeout_s=0.2)  # retried (and failing again)
    assert (s["reused"], s["computed"], s["failed"], s["failed_before"]) == (15, 0, 1, 0)


def test_engine_failure_is_one_line_and_the_sweep_goes_on(tmp_path):
    pts = [SweepPoint(model="deepseek-v3", scheme="mla-absorb", context=256, platform="h20-like", engine="stream"),
           *SweepSpec.from_dict({"sweeps": [SMALL]}).points()]  # fmt: skip
    s = run_sweep(pts, tmp_path / "r.sqlite", timeout_s=0.2, progress=False)  # the engine cannot finish in 0.2 s
    assert (s["computed"], s["failed"]) == (16, 1)
    with ResultStore(tmp_path / "r.sqlite") as store:
        err = store.get(pts[0].key())["error"]
    assert err.startswith("EngineError: stream on h20-like") and "timed out" in err and "\n" not in err


def _table_without_wall(db) -> pd.DataFrame:
    with ResultStore(db) as store:
        return store.table(include_failed=True).drop(columns=["engine_wall_s"])


def _dask_matches_local(tmp_path, pts):
    from distributed import LocalCluster

    run_sweep(pts, tmp_path / "local.sqlite", progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        s = run_sweep(pts, tmp_path / "dask.sqlite", dask_address=cluster.scheduler_address, progress=False)
    assert (s["computed"], s["failed"]) == (len(pts), 0)
    pd.testing.assert_frame_equal(_table_without_wall(tmp_path / "dask.sqlite"),
                                  _table_without_wall(tmp_path / "local.sqlite"))  # fmt: skip


def test_dask_local_cluster_gives_the_local_rows(tmp_path):
    _dask_matches_local(tmp_path, SweepSpec.from_dict(FORTY).points())


@pytest.mark.slow
def test_dask_engine_point_on_daemonic_workers(tmp_path):
    """Dask's worker processes are daemonic: the engine point runs in a subprocess there."""
    pt = SweepPoint(model="deepseek-v3", scheme="mla-absorb", context=256, platform="h20-like", engine="stream")
    _dask_matches_local(tmp_path, [pt, *SweepSpec.from_dict({"sweeps": [SMALL]}).points()])


def _cli(argv):
    ap = argparse.ArgumentParser()
    add_commands(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    args.func(args)


def test_cli_sweep_and_results(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"sweeps": [SMALL]}))
    db = str(tmp_path / "r.sqlite")
    _cli(["sweep", str(spec), "--db", db, "-q"])
    assert "16 points: 16 computed, 0 reused, 0 failed" in capsys.readouterr().out
    _cli(["sweep", str(spec), "--db", db, "-q"])
    assert "0 computed, 16 reused" in capsys.readouterr().out
    _cli(["results", "--db", db])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ",".join(ROW_COLUMNS) and len(out.splitlines()) == 17
    _cli(["results", "--db", db, "--format", "parquet", "-o", str(tmp_path / "r.parquet")])
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == 16
    for argv, msg in [
        (["results", "--db", db, "--format", "xlsx"], "--format: 'xlsx'"),
        (["results", "--db", db, "--format", "parquet"], "parquet needs an output file"),
        (["results", "--db", str(tmp_path / "none.sqlite")], "--db: no such results store"),
        (["sweep", str(tmp_path / "none.yaml"), "--db", db], "SPEC: no such file"),
        (["sweep", str(spec), "--db", db, "--workers", "0"], "--workers: must be at least 1"),
    ]:
        with pytest.raises(SpecError, match=msg):
            _cli(argv)


def test_forced_stream_strategy_is_its_own_series(tmp_path):
    pts = [SweepPoint(model="deepseek-v2-lite", scheme="mla-absorb", context=256, platform="edge-npu", engine=e)
           for e in ("stream", "stream:fixed-mapping")]  # fmt: skip
    assert pts[0].key() != pts[1].key()
    run_sweep(pts, tmp_path / "s.sqlite", workers=2, progress=False)
    with ResultStore(tmp_path / "s.sqlite") as store:
        auto, fixed = (store.get(p.key()) for p in pts)
    tried = json.loads(auto["strategies"])  # auto searches: the fastest valid strategy wins, each one recorded
    ok = {k: v["latency_cycles"] for k, v in tried.items() if v["status"] == "ok"}
    assert auto["engine"] == "stream" and auto["strategy"] == min(ok, key=ok.get) == "fused-attention"
    assert tried["fixed-mapping"]["latency_cycles"] == fixed["latency_cycles"]  # the forced series, same number
    assert (fixed["engine"], fixed["strategy"]) == ("stream:fixed-mapping", "fixed-mapping")
    assert fixed["engine_version"] == auto["engine_version"]
    assert fixed["latency_s"] >= fixed["roofline_s"]
    assert fixed["latency_cycles"] == pytest.approx(auto["latency_cycles"], rel=0.05)
    # each engine row stores its strategy's serial bound: at or above the layer's roofline, fusing the attention core
    # lowers it (its scores stay on-chip), and Stream's schedule of steps in turn is at or above it here
    for row in (auto, fixed):
        assert row["roofline_s"] <= row["serial_s"] <= row["latency_s"]
    assert auto["serial_s"] < fixed["serial_s"]


def test_zigzag_point_through_the_store(tmp_path):
    """A ZigZag point lands in the store like any other: at or above the roofline, its DRAM bytes between the
    analytic (perfect reuse) and the layer-by-layer (no reuse between layers) references."""
    pt = SweepPoint(model="deepseek-v2-lite", scheme="mla-absorb", context=256, platform="edge-npu", engine="zigzag")
    stats = run_sweep([pt], tmp_path / "z.sqlite", workers=1, progress=False)
    assert stats["computed"] == 1 and stats["failed"] == 0
    with ResultStore(tmp_path / "z.sqlite") as store:
        row = store.get(pt.key())
    assert row["status"] == "ok" and row["strategy"].startswith("zigzag-loma")
    assert row["latency_s"] >= row["roofline_s"] * (1 - 1e-9)
    assert row["dram_bytes"] <= row["engine_dram_bytes"] <= row["layer_by_layer_bytes"] * 1.02
    assert "Softmax" in row["warnings"]  # ZigZag leaves the vector ops free, and says so
