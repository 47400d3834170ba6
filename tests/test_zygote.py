"""Engine runs fork from a zygote (an engine process that imported the engines once): a run gives what a fresh
engine process gives, a thread's runs share its zygote, every run is a child of its own, and a run that times out
takes its zygote down while the next run starts a new one."""

import dataclasses

import pytest

import stream_mla.engines as engines
from stream_mla.engines import EngineError, evaluate
from stream_mla.models import PRESETS
from stream_mla.workloads import make_spec

pytestmark = pytest.mark.skipif(not engines.ZYGOTE, reason="zygotes fork: Linux only")

SPEC = make_spec(model=PRESETS["deepseek-v2-lite"], scheme="mla-absorb", context=256)


def _fields(r) -> dict:
    return {k: v for k, v in dataclasses.asdict(r).items() if k != "engine_wall_s"}


def test_forked_runs_equal_a_fresh_process_and_share_one_zygote(tmp_path, monkeypatch):
    seen = []
    forked = engines._Forked.__init__

    def remember(self, pid):
        seen.append(pid)
        forked(self, pid)

    monkeypatch.setattr(engines._Forked, "__init__", remember)
    a = evaluate(SPEC, "edge-npu", "zigzag", workdir=tmp_path / "a")
    zygotes = {z.proc.pid for z in engines._IDLE}
    b = evaluate(SPEC, "edge-npu", "zigzag", workdir=tmp_path / "b")
    assert {z.proc.pid for z in engines._IDLE} == zygotes and len(zygotes) >= 1  # the same zygote, kept
    assert len(seen) == 2 and seen[0] != seen[1] and not set(seen) & zygotes  # a child of its own each time
    monkeypatch.setattr(engines, "ZYGOTE", False)
    fresh = evaluate(SPEC, "edge-npu", "zigzag", workdir=tmp_path / "fresh")
    assert _fields(a) == _fields(b) == _fields(fresh)


def test_a_timed_out_run_takes_its_zygote_down(tmp_path):
    engines._close_idle_zygotes()  # a new zygote: its imports alone outlast the timeout
    with pytest.raises(EngineError, match="timed out after 0.3 s"):
        evaluate(SPEC, "edge-npu", "zigzag", workdir=tmp_path / "slow", timeout_s=0.3)
    assert engines._IDLE == [] and engines.live_engine_processes() == set()
    r = evaluate(SPEC, "edge-npu", "zigzag", workdir=tmp_path / "next")
    assert r.latency_cycles > 0 and len(engines._IDLE) == 1


def test_a_changed_environment_gets_a_zygote_of_its_own(tmp_path, monkeypatch):
    """A run inherits the caller's environment as it is now (e.g. another $STREAM_MLA_CACHE), as a fresh process
    would: a zygote started under another one is not used."""
    evaluate(SPEC, "edge-npu", "zigzag", workdir=tmp_path / "a")
    before = {z.proc.pid for z in engines._IDLE}
    monkeypatch.setenv("STREAM_MLA_CACHE", str(tmp_path / "other-cache"))
    evaluate(SPEC, "edge-npu", "zigzag", workdir=tmp_path / "b")
    assert (tmp_path / "other-cache").is_dir()  # the run used the new cache
    after = {z.proc.pid for z in engines._IDLE}
    assert after and not after & before  # a new zygote, and the old one closed: one idle zygote per thread
