"""Issue 28: nothing silently wrong, nothing lost: the results store and its readers under real faults.

Real stores, real folders, the real CLI (in-process through `main`, as the user runs it); no mocks.
"""

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from test_hardening import SMALL, one_line, read_only, run

from stream_mla.platforms import PRESETS
from stream_mla.sweeps.points import DIGESTS, ROW_COLUMNS
from stream_mla.sweeps.runner import run_sweep
from stream_mla.sweeps.spec import load_sweep
from stream_mla.sweeps.store import ResultStore


def spec_file(tmp_path: Path, *blocks: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"sweeps": list(blocks)}))
    return path


def exported(capsys, db: Path, *extra) -> tuple[list[dict], str]:
    """`results --db db` as records (every value a string), and its stderr."""
    code, out, err = run(capsys, "results", "--db", db, *extra)
    assert code == 0, err
    head, *lines = out.splitlines()
    return [dict(zip(head.split(","), line.split(","), strict=False)) for line in lines], err


# --- 1. an edited platform YAML or model config, swept again into the same store ---------------------------------


def test_an_edited_platform_yaml_is_never_mixed_with_its_earlier_version(tmp_path, capsys):
    npu = tmp_path / "my-npu.yaml"
    npu.write_text(yaml.safe_dump({**PRESETS["edge-npu"].model_dump(mode="json"), "name": "my-npu"}))
    spec = spec_file(tmp_path, {**SMALL, "platforms": [str(npu)]})
    db = tmp_path / "r.sqlite"
    assert run(capsys, "sweep", spec, "--db", db, "-q")[0] == 0
    npu.write_text(yaml.safe_dump({**yaml.safe_load(npu.read_text()), "dram_gb_s": 16.0}))  # the user's edit
    assert run(capsys, "sweep", spec, "--db", db, "-q")[0] == 0
    with ResultStore(db, readonly=True) as store:
        assert len(store) == 8  # both versions' rows are kept in the store
    rows, err = exported(capsys, db)
    assert len(rows) == 4 and {float(r["dram_bytes_per_s"]) for r in rows} == {16e9}  # the latest version only
    assert len(err.strip().splitlines()) == 1
    assert "2 versions of platform 'my-npu'" in err and "latest (4 rows), ignoring 4 older rows" in err
    code, out, err = run(capsys, "claims", "--db", db, "--json")  # every reader reads the same selection
    assert code == 0 and "2 versions of platform 'my-npu'" in err


def test_an_edited_model_config_is_never_mixed_with_its_earlier_version(tmp_path, capsys):
    config = tmp_path / "config.json"
    hf = {"hidden_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 8, "num_hidden_layers": 2}
    config.write_text(json.dumps(hf))
    spec = spec_file(tmp_path, {**SMALL, "models": [str(config)], "schemes": ["mha"]})
    db = tmp_path / "r.sqlite"
    assert run(capsys, "sweep", spec, "--db", db, "-q")[0] == 0
    config.write_text(json.dumps({**hf, "hidden_size": 2048}))
    assert run(capsys, "sweep", spec, "--db", db, "-q")[0] == 0
    rows, err = exported(capsys, db)
    assert len(rows) == 2 and len({r["model_digest"] for r in rows}) == 1
    assert "2 versions of model" in err and len(err.strip().splitlines()) == 1


def test_rows_carry_the_digests_on_both_paths(tmp_path, capsys):
    """The analytic fast path and run_point (engine points, odd points) fill the same digest columns."""
    from stream_mla.sweeps.fast import analytic_rows
    from stream_mla.sweeps.points import SweepPoint, run_point

    p = SweepPoint(model="deepseek-v2-lite", scheme="mla-absorb", context=512, platform="edge-npu")
    fast, slow = analytic_rows([p])[0], run_point(p)
    assert all(fast[d] and fast[d] == slow[d] for d in DIGESTS)


def test_a_store_of_the_previous_version_still_loads_and_takes_new_rows(tmp_path, capsys):
    """A store written before the digest columns existed: read as it is, and extended when swept into."""
    db = tmp_path / "r.sqlite"
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL), "--db", db, "-q")[0] == 0
    old = [c for c in ROW_COLUMNS if c not in DIGESTS]
    conn = sqlite3.connect(db)
    conn.execute(f"CREATE TABLE old AS SELECT {', '.join(old)}, created_at FROM results")
    conn.execute("DROP TABLE results")
    conn.execute("ALTER TABLE old RENAME TO results")
    conn.commit()
    conn.close()
    rows, err = exported(capsys, db)
    assert len(rows) == 4 and not err and all(r["platform_digest"] == "" for r in rows)
    assert run(capsys, "sweep", spec_file(tmp_path, {**SMALL, "context": [2048]}), "--db", db, "-q")[0] == 0
    rows, err = exported(capsys, db)  # rows without a digest are a version of their own: never mixed either
    assert len(rows) == 2 and all(r["platform_digest"] for r in rows)
    assert "2 versions of platform 'edge-npu'" in err and "ignoring 4 older rows" in err
    with ResultStore(db, readonly=True) as store:
        assert len(store) == 6


# --- 2. a read-only copy of a store whose newest rows are still in its -wal file ----------------------------------


@pytest.mark.parametrize("files", [("", "-wal"), ("", "-wal", "-shm")], ids=["db+wal", "db+wal+shm"])
def test_a_read_only_copy_with_its_wal_reads_every_row(tmp_path, capsys, files):
    db = tmp_path / "r.sqlite"
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL), "--db", db, "-q")[0] == 0  # 4 rows in the file itself
    more = load_sweep(spec_file(tmp_path, {**SMALL, "context": [2048, 4096, 8192]}, name="more.yaml"))
    ro = tmp_path / "ro"
    ro.mkdir()
    with ResultStore(db) as writer:  # a sweep still running: its rows are in the -wal file, not yet in the store's
        writer.conn.execute("PRAGMA wal_autocheckpoint=0")
        assert run_sweep(more, writer, progress=False)["computed"] == 6
        assert Path(f"{db}-wal").stat().st_size > 0
        for suffix in files:  # what `cp r.sqlite* backup/` takes while it runs
            shutil.copyfile(f"{db}{suffix}", ro / f"r.sqlite{suffix}")
    with read_only(ro):
        rows, err = exported(capsys, ro / "r.sqlite")
        assert len(rows) == 10 and not err
        assert len(set(os.listdir(ro))) == len(files)  # the copy is read elsewhere; nothing was written here


# --- 3. a file that is not a results store, given as --db -------------------------------------------------------


def _foreign_files(tmp_path: Path) -> dict[str, Path]:
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('keep me')")
    conn.commit()
    conn.close()
    text = tmp_path / "notes.txt"
    text.write_text("not sqlite at all\n")
    return {"sqlite": other, "text": text}


@pytest.mark.parametrize("command", ["sweep", "results", "claims", "figures", "report"])
@pytest.mark.parametrize("kind", ["sqlite", "text"])
def test_a_file_of_another_program_is_refused_unaltered(tmp_path, capsys, command, kind):
    path = _foreign_files(tmp_path)[kind]
    before = path.read_bytes()
    argv = {"sweep": ["sweep", spec_file(tmp_path, SMALL), "-q"], "results": ["results"], "claims": ["claims"],
            "figures": ["figures", "-o", tmp_path / "figs"], "report": ["report", "-o", tmp_path / "r.html",
            "--figures", tmp_path / "figs"]}[command]  # fmt: skip
    names = sorted(p.name for p in tmp_path.iterdir())
    line = one_line(capsys, 2, *argv, "--db", path)
    assert "not a results store" in line and path.name in line
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no -wal, -shm, figures or report left


def test_an_empty_file_becomes_a_store(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    db.touch()
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL), "--db", db, "-q")[0] == 0
    assert len(exported(capsys, db)[0]) == 4


# --- 6. a report never embeds a figure that its store did not give --------------------------------------------

V3 = {"models": ["deepseek-v3"], "schemes": ["mha", "mla-absorb"], "context": [1024, 4096], "platforms": ["h100-like"]}


def test_report_refuses_figures_of_other_rows_and_figures_keeps_only_its_own(tmp_path, capsys):
    from stream_mla.figures import make_figures

    a, b, figs = tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "figs"
    assert run(capsys, "sweep", spec_file(tmp_path, V3, name="a.yaml"), "--db", a, "-q")[0] == 0
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL, name="b.yaml"), "--db", b, "-q")[0] == 0
    with ResultStore(a, readonly=True) as store:
        assert {f.name.split("_")[0] for f in make_figures(store.table(), figs, only=["F1", "F4"])} == {"F1", "F4"}
    html = tmp_path / "r.html"
    line = one_line(capsys, 2, "report", "--db", b, "--figures", figs, "-o", html)
    assert "drawn from other rows" in line and "stream-mla figures" in line and not html.exists()
    with ResultStore(b, readonly=True) as store:  # what `figures --db b -o figs` draws (F1: no V3 rows in b)
        assert [f.name for f in make_figures(store.table(), figs, only=["F1", "F4"])][0].startswith("F4_")
    assert not list(figs.glob("F1_*"))  # a's F1 is gone from the folder
    code, _, err = run(capsys, "report", "--db", b, "--figures", figs, "-o", html)
    assert code == 0 and not err
    text = html.read_text()
    assert "F4_latency_vs_context.png" in text and "F1_" not in text
    assert run(capsys, "sweep", spec_file(tmp_path, {**SMALL, "context": [2048]}, name="c.yaml"), "--db", b,
               "-q")[0] == 0  # fmt: skip
    assert "drawn from other rows" in one_line(capsys, 2, "report", "--db", b, "--figures", figs, "-o", html)


def test_report_refuses_figures_without_a_stamp(tmp_path, capsys):
    db, figs = tmp_path / "r.sqlite", tmp_path / "figs"
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL), "--db", db, "-q")[0] == 0
    figs.mkdir()
    (figs / "F4_latency_vs_context.png").write_bytes(b"\x89PNG an earlier version's figure")
    line = one_line(capsys, 2, "report", "--db", db, "--figures", figs, "-o", tmp_path / "r.html")
    assert "without a .figures.json record" in line and not (tmp_path / "r.html").exists()


# --- 4. a hand-edited row ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    ["batch = 'two'", "latency_s = 'fast'", "latency_s = NULL", "strategies = '{not json'", "warnings = x'00ff'"],
)
def test_a_damaged_row_is_skipped_by_key_never_a_traceback(tmp_path, capsys, edit):
    db = tmp_path / "r.sqlite"
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL), "--db", db, "-q")[0] == 0
    conn = sqlite3.connect(db)
    key = conn.execute("SELECT key FROM results ORDER BY key LIMIT 1").fetchone()[0]
    conn.execute(f"UPDATE results SET {edit} WHERE key = ?", (key,))
    conn.commit()
    conn.close()
    rows, err = exported(capsys, db)
    assert len(rows) == 3 and key not in {r["key"] for r in rows}
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "damaged row" in lines[0] and key in lines[0] and edit.split()[0] in lines[0]
    code, _, err = run(capsys, "claims", "--db", db)
    assert code == 0 and "damaged row" in err and "Traceback" not in err


# --- 5. an output whose name says another format -----------------------------------------------------------------


def test_an_output_format_follows_its_suffix_and_a_contradiction_is_refused(tmp_path, capsys):
    import pandas as pd

    db = tmp_path / "r.sqlite"
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL), "--db", db, "-q")[0] == 0
    line = one_line(capsys, 2, "results", "--db", db, "--format", "csv", "-o", tmp_path / "t.parquet")
    assert "--format csv contradicts" in line and not (tmp_path / "t.parquet").exists()
    assert "contradicts" in one_line(capsys, 2, "results", "--db", db, "--format", "parquet", "-o", tmp_path / "t.csv")
    assert run(capsys, "results", "--db", db, "-o", tmp_path / "t.parquet")[0] == 0  # the suffix picks parquet
    assert len(pd.read_parquet(tmp_path / "t.parquet")) == 4
    assert run(capsys, "results", "--db", db, "-o", tmp_path / "t.txt")[0] == 0  # no format's suffix: csv
    assert (tmp_path / "t.txt").read_text().startswith("key,status,")
    line = one_line(capsys, 2, "report", "--db", db, "--figures", tmp_path / "none", "-o", tmp_path / "r.pdf")
    assert "report writes HTML" in line and not (tmp_path / "r.pdf").exists()
    line = one_line(capsys, 2, "figures", "--db", db, "-o", tmp_path / "f1.png")
    assert "folder" in line and not (tmp_path / "f1.png").exists()
