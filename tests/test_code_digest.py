"""Results are keyed by the code that produced them: a change to a count formula recomputes the row."""

import shutil
from pathlib import Path

from stream_mla.sweeps import points
from stream_mla.sweeps.points import PACKAGE, SweepPoint, code_digest
from stream_mla.sweeps.runner import run_sweep


def package_copy(tmp_path: Path) -> Path:
    root = tmp_path / "stream_mla"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_digest_follows_the_code_a_row_depends_on(tmp_path):
    root = package_copy(tmp_path)
    analytic, engine = code_digest.__wrapped__(False, root), code_digest.__wrapped__(True, root)
    assert (analytic, engine) == (code_digest(False), code_digest(True))  # a copy hashes like the original
    counts = root / "workloads" / "counts.py"
    counts.write_text(counts.read_text().replace("2 * macs", "2 * macs + 0"))  # a changed count formula
    assert code_digest.__wrapped__(False, root) != analytic
    assert code_digest.__wrapped__(True, root) != engine
    runner = root / "engines" / "stream_runner.py"
    runner.write_text(runner.read_text() + "\n# changed\n")  # an engine runner: engine rows only
    figures = root / "figures.py"
    figures.write_text(figures.read_text() + "\n# changed\n")  # presentation: no row depends on it
    assert code_digest.__wrapped__(True, root) != code_digest.__wrapped__(False, root)
    before = code_digest.__wrapped__(False, root)
    (root / "claims.py").write_text((root / "claims.py").read_text() + "\n# changed\n")
    assert code_digest.__wrapped__(False, root) == before


def test_a_code_change_recomputes_stored_points(tmp_path, monkeypatch):
    pts = [SweepPoint(model="deepseek-v2-lite", scheme=s, context=512, platform="edge-npu") for s in ("mha", "mqa")]
    db = tmp_path / "r.sqlite"
    assert run_sweep(pts, db, workers=1, progress=False)["computed"] == 2
    assert run_sweep(pts, db, workers=1, progress=False)["reused"] == 2
    monkeypatch.setattr(points, "code_digest", lambda engines, root=PACKAGE: "another-version")
    again = run_sweep(pts, db, workers=1, progress=False)
    assert (again["computed"], again["reused"]) == (2, 0)
