"""The persistent ZigZag cost cache (stream_mla/engines/cost_cache.py): a second process reuses the first's entries
and gets the same numbers exactly, in our ZigZag runner and in Stream's estimation; a changed core misses, a renamed
one hits; parallel writers and unreadable entries are safe; `STREAM_MLA_CACHE=off` turns it off."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from stream_mla.engines import Hardware, evaluate
from stream_mla.engines import cost_cache as cc
from stream_mla.engines import group_memo as gm
from stream_mla.engines import zigzag_runner as zr
from stream_mla.engines.stream_runner import evaluate_stream
from stream_mla.platforms import PRESETS
from stream_mla.workloads.graph import GraphBuilder

EDGE = PRESETS["edge-npu"]


def mlp_graph(path: Path, m: int = 1, d: int = 1024, f: int = 2048) -> Path:
    """y = (x[1,m,d] @ W1[d,f]) @ W2[f,d]: two MatMuls of different shapes, bf16."""
    b = GraphBuilder("bf16")
    h = b.matmul("up", b.input("x", (1, m, d), cls="activations"), b.weight("W1", (d, f)))
    y = b.matmul("down", h, b.weight("W2", (f, d)))
    onnx.save(b.build(y, "mlp", {"bytes_per_element": 2, "phase": "decode" if m == 1 else "prefill"}), path)
    return path


def numbers(r) -> tuple:
    return (r.latency_cycles, r.energy_breakdown_pj, r.engine_dram_bytes, r.nodes)


def snapshot(root: Path, kind: str) -> dict:
    """Each entry's identity: a rewrite (os.replace of a new file) changes its inode and mtime."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cc.CostCache(root, kind).entries()}


def test_root_and_off_switch(tmp_path, monkeypatch):
    monkeypatch.setenv(cc.CACHE_ENV, str(tmp_path / "mine"))
    assert cc.cache_root() == tmp_path / "mine"
    monkeypatch.setenv(cc.CACHE_ENV, "off")
    assert cc.cache_root() is None and cc.cost_cache("runner") is None
    monkeypatch.delenv(cc.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cc.cache_root() == tmp_path / "xdg" / "stream-mla"


def test_canonical_forms():
    assert cc.canonical({"b": {3, 1, 2}, "a": [1.5, None]}) == cc.canonical({"a": [1.5, None], "b": {2, 3, 1}})
    assert cc.digest({1, 2}) == cc.digest({2, 1}) != cc.digest({1, 3})
    with pytest.raises(cc.Uncacheable):
        cc.canonical(object())


def test_zigzag_second_process_reuses_entries_and_a_changed_core_misses(tmp_path, cache):
    graph = mlp_graph(tmp_path / "mlp.onnx")
    first = evaluate(graph, EDGE, "zigzag", workdir=tmp_path / "first")  # in an engine process of its own
    entries = snapshot(cache, "runner")
    assert len(entries) == 2  # one per layer shape
    second = zr.evaluate_zigzag(graph, EDGE, tmp_path / "second")  # this process: an empty memo
    assert zr.MEMO_STATS == {"disk_hits": 2}  # answered from the first process's entries, nothing searched
    assert numbers(second) == numbers(first)
    assert snapshot(cache, "runner") == entries  # nothing rewritten

    zr.clear_memo()
    renamed = zr.evaluate_zigzag(graph, EDGE.model_copy(update={"name": "edge-copy"}), tmp_path / "renamed")
    assert zr.MEMO_STATS == {"disk_hits": 2} and numbers(renamed) == numbers(first)  # names are not costs

    zr.clear_memo()
    changed = EDGE.model_copy(update={"sram_pj_per_bit": 2.0})  # another core: other entries (a stale one is wrong)
    third = zr.evaluate_zigzag(graph, changed, tmp_path / "third")
    assert zr.MEMO_STATS == {"misses": 2}
    assert len(snapshot(cache, "runner")) == 4
    assert third.energy_breakdown_pj["onchip_memory"] > first.energy_breakdown_pj["onchip_memory"]


def test_stream_second_process_reuses_entries_and_a_changed_core_misses(tmp_path, cache):
    graph = mlp_graph(tmp_path / "mlp.onnx", m=64)
    assert cc.register_stream_backend()  # Stream's estimator is ours in this process, as in the engine processes
    first = evaluate(graph, EDGE, "stream", strategy="keep-softmax", workdir=tmp_path / "first")
    entries = snapshot(cache, "stream")
    assert entries
    shutil.rmtree(cache / "stream" / gm.KIND)  # the groups solve again (not answered whole by the group memo)
    second = evaluate_stream(graph, Hardware.from_platform(EDGE), tmp_path, strategies=("keep-softmax",))
    assert cc.STATS["stream.hits"] >= 2 and cc.STATS["stream.misses"] == 0
    assert numbers(second) == numbers(first)
    assert snapshot(cache, "stream") == entries

    cc.STATS.clear()
    changed = Hardware.from_platform(EDGE.model_copy(update={"sram_bits_per_cycle": 1024}))
    evaluate_stream(graph, changed, tmp_path, strategies=("keep-softmax",))
    assert cc.STATS["stream.misses"] >= 2 and cc.STATS["stream.hits"] == 0
    assert len(snapshot(cache, "stream")) > len(entries)


_WORKER = """
import sys
from pathlib import Path
from stream_mla.engines import zigzag_runner as zr
from stream_mla.platforms import PRESETS
r = zr.evaluate_zigzag(Path(sys.argv[1]), PRESETS["edge-npu"], Path(sys.argv[2]))
print(r.latency_cycles, r.energy_pj)
"""


def test_parallel_writers_leave_whole_entries(tmp_path, cache):
    """Two processes searching the same layers at once into an empty cache: both finish with the same numbers, every
    entry is a whole pickle, no temporary file is left."""
    graph = mlp_graph(tmp_path / "mlp.onnx")
    env = {**os.environ, cc.CACHE_ENV: str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(graph), str(tmp_path / f"w{i}")], env=env,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs[0] == outs[1]
    entries = list(cc.CostCache(cache, "runner").entries())
    assert len(entries) == 2 and all(pickle.loads(p.read_bytes()) is not None for p in entries)
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".pickle"]


def test_unreadable_entry_is_a_miss_and_rewritten(tmp_path, cache):
    store = cc.CostCache(cache, "runner")
    key = cc.entry_key("runner", lambda: ("a layer",))
    store.path(key).parent.mkdir(parents=True)
    store.path(key).write_bytes(b"not a pickle")
    assert cc.cached_search("runner", key, lambda: {"cycles": 1}) == {"cycles": 1}
    assert cc.STATS["runner.errors"] == 1 and cc.STATS["runner.writes"] == 1
    assert cc.cached_search("runner", key, lambda: pytest.fail("searched again")) == {"cycles": 1}
    assert cc.entry_key("runner", lambda: (object(),)) is None  # no canonical form: searched, never shared


def test_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(cc.CACHE_ENV, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    zr.clear_memo()
    zr.evaluate_zigzag(mlp_graph(tmp_path / "mlp.onnx"), EDGE, tmp_path / "run")
    assert zr.MEMO_STATS["misses"] == 2 and not (tmp_path / "xdg").exists()
