"""Sweep bookkeeping: concurrent sweeps on one store claim their points (each point runs once), a killed sweep's
claims are taken over, the summary counts computed / reused / failed / failed earlier, and progress is a bar on
a terminal but periodic one-line logs otherwise. Real analytic points throughout; the only patch is a sleep
after each analytic chunk (of one point) in the child sweeps, so that their runs overlap for certain."""

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import stream_mla.sweeps.runner as runner
import stream_mla.sweeps.store as store_mod
from stream_mla.sweeps.points import SweepPoint, run_point
from stream_mla.sweeps.runner import run_sweep
from stream_mla.sweeps.spec import SweepSpec
from stream_mla.sweeps.store import ResultStore

from test_sweeps import SMALL, _cli

GRID = {"models": ["deepseek-v3", "deepseek-v2-lite"], "schemes": ["mha", "mla-naive", "mla-absorb", "mla-recompute",
        "mla-merged"], "platforms": ["h100-like", "edge-npu"], "batch": [1, 2, 4]}  # fmt: skip
SPEC_A = {"sweeps": [{**GRID, "context": [256 * k for k in range(1, 9)]}]}  # 480 points
SPEC_B = {"sweeps": [{**GRID, "context": [256 * k for k in range(5, 13)]}]}  # 480 points, 240 of them in A too

CHILD = """
import json, os, sys, time
import stream_mla.sweeps.runner as r
from stream_mla.sweeps.spec import SweepSpec
orig = r.run_analytic_batch
def slow(points, store, on_chunk=None, **kw):  # analytic points one per chunk, each slowed down
    def sleepy(computed, failed):
        on_chunk(computed, failed)
        time.sleep(float(sys.argv[4]))
    return orig(points, store, on_chunk=sleepy, **kw)
r.run_analytic_batch = slow
r.ANALYTIC_CHUNK = 1
r.POLL_S = 0.1
spec = SweepSpec.from_dict(json.loads(sys.argv[1]))
go = sys.argv[3]
while go != "-" and not os.path.exists(go):  # both sweeps start together, their imports done
    time.sleep(0.005)
s = r.run_sweep(spec, sys.argv[2], progress=False)
print(json.dumps(s))
"""


def child(spec: dict, db, go="-", sleep_s=0.005, **kw) -> subprocess.Popen:
    argv = [sys.executable, "-c", CHILD, json.dumps(spec), str(db), str(go), str(sleep_s)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def claims(db) -> dict[str, tuple]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT key, owner, pid, claimed_at, done_at, writes FROM claims")}


def keys_of(spec: dict) -> set[str]:
    return {p.key() for p in SweepSpec.from_dict(spec).points()}


def test_two_concurrent_sweeps_run_each_point_once(tmp_path):
    db, go = tmp_path / "r.sqlite", tmp_path / "go"
    a_keys, b_keys = keys_of(SPEC_A), keys_of(SPEC_B)
    assert (len(a_keys), len(b_keys), len(a_keys & b_keys)) == (480, 480, 240)
    procs = [child(SPEC_A, db, go), child(SPEC_B, db, go)]
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    a, b = (json.loads(out.splitlines()[-1]) for out, _ in outs)
    for s in (a, b):
        assert s["total"] == s["computed"] + s["reused"] == 480 and s["failed"] == s["failed_before"] == 0, s
    assert a["computed"] + b["computed"] == len(a_keys | b_keys) == 720  # nobody computed a point twice
    assert a["reused"] + b["reused"] == 240  # the shared points: computed by one sweep, reused by the other
    log = claims(db)
    with ResultStore(db, readonly=True) as store:
        assert store.keys("ok") == set(log) == a_keys | b_keys
    assert {writes for *_, writes in log.values()} == {1}  # each row written once
    owners = {}
    for owner, _pid, claimed, done, _ in log.values():
        first, last = owners.get(owner, (claimed, done))
        owners[owner] = (min(first, claimed), max(last, done))
    assert len(owners) == 2
    (s1, e1), (s2, e2) = owners.values()
    assert s1 < e2 and s2 < e1  # their runs overlapped: the sweeps really were concurrent


def test_a_killed_sweeps_claims_are_taken_over(tmp_path):
    db = tmp_path / "r.sqlite"
    spec = {"sweeps": [{**SMALL, "schemes": ["mha", "mla-naive", "mla-absorb", "mla-recompute", "mla-merged"]}]}
    everything = keys_of(spec)
    p = child(spec, db, sleep_s=0.05)
    deadline, written = time.time() + 60, set()
    while len(written) < 5 and time.time() < deadline:
        time.sleep(0.02)
        if db.exists():
            with contextlib.closing(sqlite3.connect(db)) as conn, contextlib.suppress(sqlite3.OperationalError):
                written = {k for (k,) in conn.execute("SELECT key FROM results WHERE status = 'ok'")}  # once made
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    left = claims(db)
    with ResultStore(db, readonly=True) as store:
        written = store.keys("ok")
    held = {k for k, (_, pid, _, done, _) in left.items() if done is None and pid == p.pid}
    assert held == everything - written and len(held) >= 30  # the dead sweep still "holds" the rest
    t = time.perf_counter()
    s = run_sweep(SweepSpec.from_dict(spec), db, progress=False)
    assert time.perf_counter() - t < 20  # taken over at once (its process is gone), not after CLAIM_STALE_S
    assert (s["computed"], s["reused"], s["failed"]) == (len(held), len(written), 0)
    log = claims(db)
    assert all(log[k][4] == 1 for k in everything) and all(log[k][1] == os.getpid() for k in held)


def test_stale_and_live_claims(tmp_path, monkeypatch):
    """Another host's claim is live while its heartbeat is fresh; one on this host while its process exists."""
    monkeypatch.setattr(store_mod, "HEARTBEAT_S", 0.05)
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as mine, ResultStore(db) as other:
        assert len(other.claim(f"k{i}" for i in range(5000))) == 5000  # one transaction
        assert mine.claim(["k0", "k1", "new"]) == {"new"}  # the other owner is this (live) process
        now = time.time()
        rows = [("far", "elsewhere", now), ("far-old", "elsewhere", now - 2 * store_mod.CLAIM_STALE_S)]
        with mine.conn:
            mine.conn.executemany("INSERT INTO claims (key, owner, pid, host, claimed_at, heartbeat) VALUES "
                                  "(?, 'x:1:y', 1, ?, ?, ?)", [(k, h, b, b) for k, h, b in rows])  # fmt: skip
            mine.conn.execute("INSERT INTO claims (key, owner, pid, host, claimed_at, heartbeat) VALUES "
                              "('dead', 'z', 2147483646, ?, ?, ?)", (store_mod.HOST, now, now))  # fmt: skip
        assert mine.claim(["far", "far-old", "dead"]) == {"far-old", "dead"}
        other.release()
        assert len(mine.claim(f"k{i}" for i in range(5000))) == 5000  # released ones are free
        with sqlite3.connect(db) as conn:
            first = conn.execute("SELECT heartbeat FROM claims WHERE key = 'k0'").fetchone()[0]
            time.sleep(0.3)
            assert conn.execute("SELECT heartbeat FROM claims WHERE key = 'k0'").fetchone()[0] > first
    with sqlite3.connect(db) as conn:  # closing released every unsettled claim
        assert conn.execute("SELECT COUNT(*) FROM claims WHERE done_at IS NULL AND owner != 'x:1:y'").fetchone() == (0,)


def test_claims_of_a_store_closed_in_this_process_are_taken_over_at_once(tmp_path, monkeypatch):
    """A sweep whose release could not be written (a full disk) leaves its claims behind, with this process
    alive: the next sweep in this process takes them over at once, not after CLAIM_STALE_S."""
    db = tmp_path / "r.sqlite"
    pts = SweepSpec.from_dict({"sweeps": [SMALL]}).points()
    first = ResultStore(db)
    assert len(first.claim(p.key() for p in pts)) == 16
    monkeypatch.setattr(first, "release", lambda keys=None: None)
    first.close()
    assert sum(done is None for _, _, _, done, _ in claims(db).values()) == 16
    monkeypatch.setattr(runner, "POLL_S", 60.0)  # a wait would show
    t = time.perf_counter()
    assert run_sweep(pts, db, progress=False)["computed"] == 16
    assert time.perf_counter() - t < 10


def test_a_sweep_waits_for_points_another_sweep_holds(tmp_path, monkeypatch):
    """Points a live sweep holds are neither run nor given up: written by it, they count as reused; released
    (it stopped), they are run here."""
    monkeypatch.setattr(runner, "POLL_S", 0.05)
    db = tmp_path / "r.sqlite"
    pts = SweepSpec.from_dict({"sweeps": [SMALL]}).points()
    held = pts[:4]
    other = ResultStore(db)
    assert other.claim(p.key() for p in held) == {p.key() for p in held}
    box = {}
    sweep = threading.Thread(target=lambda: box.update(run_sweep(pts, db, progress=False)))
    sweep.start()
    deadline, done = time.time() + 60, set()
    while len(done) < 12 and time.time() < deadline:
        time.sleep(0.02)
        done = other.keys("ok")
    time.sleep(0.2)
    assert sweep.is_alive() and done == {p.key() for p in pts[4:]}  # its own points done, waiting for the rest
    for p in held[:2]:
        other.put(run_point(p))
    other.release()
    sweep.join(timeout=60)
    other.close()
    assert box["computed"] == 14 and box["reused"] == 2 and box["failed"] == box["failed_before"] == 0, box
    log = claims(db)
    assert {log[p.key()][0] for p in held[:2]} == {other.owner}
    assert all(w == 1 for *_, w in log.values())


def test_summary_counts_earlier_failures_apart_from_cached(tmp_path, capsys):
    """A point that failed (a stream engine given 0.2 s) is neither cached nor recomputed on resume: it is
    counted as failed earlier, and --retry-failed runs it again."""
    engine_pt = {"models": ["deepseek-v3"], "schemes": ["mla-absorb"], "context": [256], "platforms": ["h20-like"],
                 "engines": ["stream"]}  # fmt: skip
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"sweeps": [SMALL, engine_pt]}))
    db = str(tmp_path / "r.sqlite")
    _cli(["sweep", str(spec), "--db", db, "-q", "--timeout", "0.2"])
    out, err = capsys.readouterr()
    assert "17 points: 16 computed, 0 reused, 1 failed in " in out and "1 points failed" in err
    _cli(["sweep", str(spec), "--db", db, "-q"])
    out, err = capsys.readouterr()
    assert "17 points: 0 computed, 16 reused, 0 failed, 1 failed earlier, not retried (use --retry-failed)" in out
    assert not err
    s = run_sweep(SweepSpec.from_dict({"sweeps": [SMALL, engine_pt]}), db, progress=False)
    assert {k: s[k] for k in ("computed", "reused", "failed", "failed_before")} == {
        "computed": 0, "reused": 16, "failed": 0, "failed_before": 1}  # fmt: skip
    s = run_sweep(SweepSpec.from_dict({"sweeps": [SMALL, engine_pt]}), db, progress=False, retry_failed=True,
                  timeout_s=0.2)  # fmt: skip
    assert (s["computed"], s["reused"], s["failed"], s["failed_before"]) == (0, 16, 1, 0)
    assert claims(db)[SweepSpec.from_dict({"sweeps": [engine_pt]}).points()[0].key()][-1] == 2  # run twice


def test_progress_is_log_lines_off_a_terminal(tmp_path, capsys, monkeypatch):
    pts = SweepSpec.from_dict({"sweeps": [SMALL]}).points()
    run_sweep(pts, tmp_path / "a.sqlite")  # stderr is pytest's capture, no terminal
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines() == [err.strip()]  # a short sweep: its final line only
    assert err.startswith("sweep: 16/16 points (16 computed, 0 reused, 0 failed), ") and " pt/s" in err
    monkeypatch.setattr(runner, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(runner, "ANALYTIC_CHUNK", 1)  # a progress update per analytic batch: here, per point
    run_sweep(pts[:8], tmp_path / "b.sqlite")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 9 and all(line.startswith("sweep: ") for line in lines)  # one per point, one at the end
    assert lines[0].startswith("sweep: 1/8 points (1 computed, 0 reused, 0 failed)") and "ETA" in lines[0]
    assert lines[-1].startswith("sweep: 8/8 points (8 computed") and "ETA" not in lines[-1]
    run_sweep(pts, tmp_path / "b.sqlite", progress=False)
    assert capsys.readouterr().err == ""


def test_progress_is_a_bar_on_a_terminal(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    run_sweep([SweepPoint(model="deepseek-v3", scheme="mha", context=512, platform="h100-like")], tmp_path / "r.db")
    assert "\r" in term.getvalue() and "1/1" in term.getvalue() and "sweep: " not in term.getvalue()


@pytest.mark.parametrize("how", ["exception", "ctrl-c"])
def test_every_exit_releases_the_claims(tmp_path, monkeypatch, how):
    def stop(pt, **kw):
        raise KeyboardInterrupt if how == "ctrl-c" else MemoryError  # escapes the point: the sweep stops

    monkeypatch.setattr(runner, "run_analytic_batch", lambda points, store, **kw: stop(points))
    db = tmp_path / "r.sqlite"
    with pytest.raises((KeyboardInterrupt, MemoryError)):
        run_sweep(SweepSpec.from_dict({"sweeps": [SMALL]}).points(), db, progress=False)
    assert claims(db) == {}


def test_the_eta_after_the_analytic_batch_counts_the_slow_points_only(tmp_path, capsys, monkeypatch):
    """The analytic batch settles thousands of points a second; the rate (and ETA) printed for the points left
    after it is theirs (here three zigzag points, each given 0.2 s: about 5 points/s), not the mixed one."""
    execute = runner._execute

    def slow(point: dict, timeout_s: float):  # an engine point that takes 0.2 s (its row: the analytic one's)
        time.sleep(0.2)
        status, row = execute({**point, "engine": "analytic"}, timeout_s)
        return status, {**row, "key": SweepPoint.model_validate(point).key(), "engine": "zigzag"}

    monkeypatch.setattr(runner, "_execute", slow)
    monkeypatch.setattr(runner, "LOG_EVERY_S", 0.0)
    fast = SweepSpec.from_dict({"sweeps": [SMALL]}).points()
    engine = [p.model_copy(update={"engine": "zigzag"}) for p in fast[:3]]
    s = run_sweep([*fast, *engine], tmp_path / "r.sqlite", workers=1)
    assert (s["computed"], s["failed"]) == (19, 0)
    lines = capsys.readouterr().err.splitlines()
    after = [line for line in lines if line.startswith(("sweep: 17/19", "sweep: 18/19"))]
    assert len(after) == 2, lines
    for line in after:
        rate = float(line.split("), ")[1].split(" pt/s")[0])
        assert rate < 10, line  # the mixed rate would be about 17 points / 0.2 s
