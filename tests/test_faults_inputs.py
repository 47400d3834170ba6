"""Issue 28: nothing silently wrong under real faults of the caches and of the inputs.

Cache entries that still load after a flipped bit are discarded and recomputed (a checksum), HF configs read with
their owners' defaults, platform values checked for physical sense, sweep specs typed strictly, options that would
change nothing refused, and measured data checked before it is compared.
"""

import pickle
import struct
from pathlib import Path

import pytest

from stream_mla.engines import Hardware
from stream_mla.engines import cost_cache as cc
from stream_mla.engines import group_memo as gm
from stream_mla.engines import zigzag_runner as zr
from stream_mla.engines.stream_runner import evaluate_stream
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import PRESETS
from stream_mla.sweeps import fast
from stream_mla.workloads import export, make_spec, polynomial

EDGE = PRESETS["edge-npu"]
LITE = MODELS["deepseek-v2-lite"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(cc.CACHE_ENV, str(root))
    cc.STATS.clear()
    zr.clear_memo()
    return root


def small_graph(tmp_path: Path) -> Path:
    """One MHA decode layer at L = 64: ZigZag costs it in ~2 s, Stream in ~10 s."""
    return export(make_spec(model=LITE, scheme="mha", phase="decode", batch=1, context=64), tmp_path / "g.onnx")


# --- 1. cache entries carry a checksum ----------------------------------------------------------------------
def flip(path: Path, encoded: bytes, at: int = 2) -> None:
    """Flip one bit of the first occurrence of `encoded` (a pickled number) in the entry at `path`: the entry still
    unpickles, to another number."""
    data = bytearray(path.read_bytes())
    assert encoded in data
    data[data.find(encoded) + at] ^= 0x02
    path.write_bytes(bytes(data))
    assert pickle.loads(bytes(data)) is not None


def flip_float(path: Path, value: float) -> None:
    """`value`, pickled as BINFLOAT (big-endian), about 12 % off: a bit at the top of its mantissa."""
    flip(path, b"G" + struct.pack(">d", value))


def test_a_flipped_bit_in_a_cost_cache_entry_is_recomputed(tmp_path, cache):
    """A ZigZag runner entry whose latency changed by one bit: the next process searches the layer again and
    reports the true latency (before: 12 % off, exit 0)."""
    graph = small_graph(tmp_path)
    first = zr.evaluate_zigzag(graph, EDGE, tmp_path / "first")
    entries = sorted(cc.CostCache(cache, "runner").entries())
    cme = pickle.loads(entries[0].read_bytes())
    flip_float(entries[0], cme.latency_total2)
    assert pickle.loads(entries[0].read_bytes()).latency_total2 != cme.latency_total2
    zr.clear_memo()
    second = zr.evaluate_zigzag(graph, EDGE, tmp_path / "second")
    assert second.latency_cycles == first.latency_cycles
    assert zr.MEMO_STATS["misses"] == 1 and zr.MEMO_STATS["disk_hits"] == len(entries) - 1  # that one searched
    assert cc.STATS["runner.errors"] == 1
    assert pickle.loads(entries[0].read_bytes()).latency_total2 == cme.latency_total2  # and rewritten


def test_a_flipped_bit_in_a_group_memo_entry_is_solved_again(tmp_path, cache):
    """A group memo entry whose cycles changed by one bit: the group is solved again, the latency is the solve's."""
    graph = small_graph(tmp_path)
    hw = Hardware.from_platform(EDGE)
    (tmp_path / "run").mkdir()
    first = evaluate_stream(graph, hw, tmp_path / "run", strategies=("keep-softmax",))
    entries = sorted(cc.CostCache(cache, gm.KIND, "stream").entries())
    flip_float(entries[0], pickle.loads(entries[0].read_bytes()).cycles)
    cc.STATS.clear()
    second = evaluate_stream(graph, hw, tmp_path / "run", strategies=("keep-softmax",))
    assert second.latency_cycles == first.latency_cycles
    assert cc.STATS["groups.misses"] == cc.STATS["groups.errors"] == 1  # that group solved again
    assert cc.STATS["groups.hits"] == len(entries) - 1


@pytest.fixture
def no_pieces():
    """This process's polynomials forgotten before and after (the test's disk cache is the one read)."""
    polynomial.pieces.cache_clear()
    yield
    polynomial.pieces.cache_clear()


def test_a_flipped_bit_in_a_polynomial_entry_is_derived_again(cache, no_pieces):
    """The analytic sweep's disk cache of count polynomials: a flipped bit that still loads is derived again, and
    the counts equal the graph's (before: the corrupted polynomial's counts, exit 0)."""
    spec = make_spec(model=MODELS["deepseek-v2-lite"], scheme="mla-absorb", phase="decode", batch=1, context=300)
    group = polynomial.group_of(polynomial.group_fields(spec), 300, 1)
    fresh = fast._pieces(group)
    (entry,) = cc.CostCache(cache, "pieces", fast.POLY_FOLDER).entries()
    (piece,) = fresh
    macs_per_batch = piece.poly.numerators[polynomial.COUNTS.index("macs")][1]
    flip(entry, b"J" + struct.pack("<i", macs_per_batch), at=3)  # BININT, little-endian: +- 2**17 MACs per batch
    polynomial.pieces.cache_clear()
    assert fast._pieces(group) == fresh
    assert polynomial.counts(group, [3], [300], [1]) == [polynomial.direct(group, 3, 300, 1)]


def test_an_entry_without_its_checksum_is_a_miss(cache):
    """A bare pickle (another tool's, or an older format's) is not trusted."""
    store = cc.CostCache(cache, "runner")
    key = cc.entry_key("runner", lambda: ("a layer",))
    store.path(key).parent.mkdir(parents=True)
    store.path(key).write_bytes(pickle.dumps({"cycles": 2}))
    assert cc.cached_search("runner", key, lambda: {"cycles": 1}) == {"cycles": 1}
    assert cc.cached_search("runner", key, lambda: pytest.fail("searched again")) == {"cycles": 1}
