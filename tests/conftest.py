import sys
from pathlib import Path

import pytest

from stream_mla.engines import cost_cache as cc
from stream_mla.engines import zigzag_runner as zr

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (reference, closed_forms) import by name


@pytest.fixture(autouse=True, scope="session")
def _private_cost_cache(tmp_path_factory):
    """Each test session its own ZigZag cost cache: timings and cache-hit assertions do not depend on what earlier
    runs left in ~/.cache/stream-mla (engine children inherit the variable)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STREAM_MLA_CACHE", str(tmp_path_factory.mktemp("cost-cache")))
    yield
    mp.undo()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh persistent cost cache of the test's own (the cost cache's stats and ZigZag's in-process memo cleared)."""
    root = tmp_path / "cache"
    monkeypatch.setenv(cc.CACHE_ENV, str(root))
    cc.STATS.clear()
    zr.clear_memo()
    return root
