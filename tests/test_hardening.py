"""Issue 12: every bad input and fault ends in one clear line, nothing is lost, nothing is silently wrong.

One test per case of the issue; the README section "Errors and exit codes" lists the same cases.
"""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml

import stream_mla.cli as cli
import stream_mla.sweeps.runner as runner
from stream_mla.cli import main
from stream_mla.errors import SpecError, read_document
from stream_mla.platforms import PRESETS, PlatformSpec
from stream_mla.sweeps.points import SweepPoint
from stream_mla.sweeps.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"models": ["deepseek-v2-lite"], "schemes": ["mha", "mla-absorb"], "context": [512, 1024],
         "platforms": ["edge-npu"]}  # fmt: skip
LITE = ["--model", "deepseek-v2-lite", "--scheme", "mla-absorb", "--context", "64"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(capsys, code: int, *argv) -> str:
    """Run the CLI in-process; assert the exit code and one error line; return that line."""
    got, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert got == code and len(lines) == 1 and "Traceback" not in err, (got, err)
    assert len(lines[0]) <= 300
    return lines[0]


def cli_proc(*argv, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream_mla.cli", *map(str, argv)], cwd=ROOT, text=True, **kw)


def platform_yaml(tmp_path: Path, name: str = "mine", file: str | None = None, **fields) -> Path:
    path = tmp_path / (file or f"{name}.yaml")
    path.write_text(yaml.safe_dump({**PRESETS["edge-npu"].model_dump(mode="json"), "name": name, **fields}))
    return path


def spec_file(tmp_path: Path, *blocks: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"sweeps": list(blocks)}))
    return path


# --- one validation path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_clock_ghz_must_be_finite_and_positive(capsys, value):
    assert "--clock-ghz" in one_line(capsys, 2, "run", *LITE, "--hardware", "x.yaml", "--clock-ghz", value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("dram_pj_per_bit", float("inf")), ("dram_gb_s", float("inf")), ("dram_gb_s", float("nan")),
     ("mac_pj", float("nan")), ("clock_ghz", float("inf")), ("mac_rate", {"fp8": float("nan")})],
)  # fmt: skip
def test_platform_yaml_values_must_be_finite(tmp_path, capsys, field, value):
    path = platform_yaml(tmp_path, **{field: value})
    line = one_line(capsys, 2, "platforms", path)
    assert f"{field}" in line and "finite" in line


@pytest.mark.parametrize(("flag", "value"), [("--context", 10**21), ("--batch", 10**6), ("--queries", 2**30)])
def test_sizes_beyond_the_documented_maxima_are_one_line(tmp_path, capsys, flag, value):
    line = one_line(capsys, 2, "export", *LITE[:4], flag, value, "-o", tmp_path / "x.onnx")
    assert flag in line and "less than or equal to" in line
    assert not (tmp_path / "x.onnx").exists()


def test_sweep_sizes_beyond_the_maxima_are_refused_before_the_store(tmp_path, capsys):
    spec = spec_file(tmp_path, {**SMALL, "context": [10**9], "batch": [10**6]})
    line = one_line(capsys, 2, "sweep", spec, "--db", tmp_path / "r.sqlite", "-q")
    assert "sweeps.0.batch.0" in line and "65536" in line
    assert not (tmp_path / "r.sqlite").exists()


def test_sizes_whose_product_overflows_64_bits_are_refused(tmp_path, capsys):
    argv = ["export", "--model", "deepseek-v3", "--phase", "prefill", "--context", 2**24, "-o", tmp_path / "x.onnx"]
    assert "beyond the 64-bit counts" in one_line(capsys, 2, *argv)
    spec = spec_file(tmp_path, {**SMALL, "phases": ["prefill"], "context": [2**24], "batch": [2**16]})
    assert "beyond the 64-bit counts" in one_line(capsys, 2, "sweep", spec, "--db", tmp_path / "r.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_a_row_beyond_64_bits_is_a_failed_point_not_a_crash(monkeypatch):
    def huge(pt, **kw):
        return {"key": pt.key(), "macs": 2**70}

    monkeypatch.setattr(runner, "run_point", huge)
    pt = SweepPoint(model="deepseek-v2-lite", scheme="mha", context=64, platform="edge-npu")
    status, error = runner._execute(pt.model_dump(), 1.0)
    assert status == "failed" and "macs" in error and "64-bit" in error


@pytest.mark.parametrize(
    ("what", "text"),
    [("platform", "name: a\nclock_ghz: 1\nclock_ghz: 2\n"), ("sweep", "sweeps: []\nsweeps: []\n"),
     ("hf", '{"hidden_size": 64, "hidden_size": 128, "num_attention_heads": 4, "num_hidden_layers": 1}')],
)  # fmt: skip
def test_duplicate_yaml_keys_are_rejected(tmp_path, capsys, what, text):
    path = tmp_path / ("c.json" if what == "hf" else "f.yaml")
    path.write_text(text)
    argv = {"platform": ["platforms", path], "sweep": ["sweep", path, "--db", tmp_path / "r.sqlite"],
            "hf": ["export", "--hf-config", path, "-o", tmp_path / "x.onnx"]}[what]  # fmt: skip
    assert "duplicate key" in one_line(capsys, 2, *argv)


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("sweeps:\n" + "\n".join("  " + line for line in lines) + "\n")
    t = time.perf_counter()
    with pytest.raises(SpecError, match="aliases") as exc:
        read_document(path, "sweep spec")
    assert time.perf_counter() - t < 1 and len(str(exc.value)) < 200


def test_errors_quote_a_short_excerpt_of_long_values(tmp_path, capsys):
    long = "x" * 5000
    for argv in (["export", "--model", long], ["export", "--weights", long], ["export", "--batch", long],
                 ["platforms", platform_yaml(tmp_path, precision=long)]):  # fmt: skip
        line = one_line(capsys, 2, *argv)
        assert "x" * 61 not in line, line


def test_booleans_are_not_numbers(tmp_path, capsys):
    line = one_line(capsys, 2, "platforms", platform_yaml(tmp_path, cores=True))
    assert "cores" in line and "boolean" in line


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["run", *LITE, "--platform", "h100-like", "--clock-ghz", "2"], "--clock-ghz"),
     (["export", *LITE, "--seed", "1"], "--seed"),
     (["export", *LITE, "--force"], "--force"),
     (["export", *LITE, "--out", "somewhere"], "--out"),
     (["export", "--reference-set", "-o", "x.onnx"], "-o/--output"),
     (["export", *LITE, "-o", ""], "-o/--output"),
     (["export", "--hf-config", "c.json", "--model", "kimi-k2"], "--model"),
     (["count", "x.onnx", "--causal"], "--causal"),
     (["platforms", "--root", "somewhere"], "--root"),
     (["sweep", "--dask", "localhost:8786", "--workers", "4"], "--workers")],
)  # fmt: skip
def test_options_that_do_nothing_are_rejected(tmp_path, capsys, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    assert one_line(capsys, 2, *argv).startswith(f"stream-mla: error: {flag}: ")
    assert not any(tmp_path.iterdir())


def test_kv_heads_on_a_block_without_gqa_is_rejected(tmp_path, capsys):
    spec = spec_file(tmp_path, {**SMALL, "kv_heads": [4]})
    assert "sweeps.0.kv_heads: applies to scheme gqa only" in one_line(capsys, 2, "sweep", spec, "--db",
                                                                       tmp_path / "r.sqlite")  # fmt: skip
    spec = spec_file(tmp_path, {**SMALL, "schemes": ["mha", "gqa"], "kv_heads": [4]})  # gqa present: fine
    assert run(capsys, "sweep", spec, "--db", tmp_path / "r.sqlite", "-q")[0] == 0


def test_two_platforms_with_one_name_in_a_sweep_are_rejected(tmp_path, capsys):
    a = platform_yaml(tmp_path, "npu", file="a.yaml")
    b = platform_yaml(tmp_path, "npu", file="b.yaml", dram_gb_s=16.0)
    spec = spec_file(tmp_path, {**SMALL, "platforms": [str(a), str(b)]})
    line = one_line(capsys, 2, "sweep", spec, "--db", tmp_path / "r.sqlite")
    assert "a.yaml" in line and "b.yaml" in line and "'npu'" in line
    assert not (tmp_path / "r.sqlite").exists()


def test_dram_below_one_bit_per_cycle_is_rejected_not_clamped(tmp_path, capsys):
    line = one_line(capsys, 2, "platforms", platform_yaml(tmp_path, dram_gb_s=0.01))
    assert "bits/cycle" in line and "at least 1" in line
    spec = spec_file(tmp_path, {**SMALL, "bw_scale": [1e-3]})  # 8 GB/s x 1e-3 at 0.25 GHz: 0.26 bit/cycle
    assert "bw_scale 0.001" in one_line(capsys, 2, "sweep", spec, "--db", tmp_path / "r.sqlite")


# --- one output-path policy -------------------------------------------------------------------------------


def test_outputs_create_their_parent_folders(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "x.onnx"
    assert run(capsys, "export", *LITE, "-o", out)[0] == 0 and out.is_file()
    db = tmp_path / "c" / "d" / "r.sqlite"
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL), "--db", db, "-q")[0] == 0 and db.is_file()
    csv = tmp_path / "e" / "f" / "r.csv"
    assert run(capsys, "results", "--db", db, "-o", csv)[0] == 0 and len(csv.read_text().splitlines()) == 5


@pytest.mark.parametrize("command", ["export", "mapping", "results", "report", "figures", "reproduce", "sweep"])
def test_an_output_of_the_wrong_kind_is_one_line(tmp_path, capsys, command):
    folder, file = tmp_path / "dir", tmp_path / "file.txt"
    folder.mkdir()
    file.write_text("keep me")
    model = LITE + ["--platform", "edge-npu"] if command == "mapping" else LITE if command == "export" else []
    wrong = file if command in ("figures", "reproduce") else folder
    flag = ["--db"] if command == "sweep" else ["-o"]
    line = one_line(capsys, 2, command, *model, *flag, wrong)
    assert str(wrong) in line and ("is a folder" in line or "is a file" in line)
    assert file.read_text() == "keep me" and not any(folder.iterdir())


@pytest.mark.parametrize("command", ["export", "results", "report", "figures"])
def test_an_unwritable_place_is_one_line(capsys, command):
    line = one_line(capsys, 2, command, *(LITE if command == "export" else []), "-o", "/proc/stream-mla/x")
    assert "/proc/stream-mla" in line and "cannot" in line


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` and its files made read-only: as root (whom file modes do not stop) a tmpfs remounted ro,
    else chmod."""
    if os.geteuid() != 0:
        files = list(folder.iterdir())
        for f in files:
            f.chmod(0o444)
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
            for f in files:
                f.chmod(0o644)
        return
    content = {f.name: f.read_bytes() for f in folder.iterdir()}
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("a read-only folder needs a tmpfs mount as root")
    try:
        for name, data in content.items():
            (folder / name).write_bytes(data)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_folder_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        assert "cannot" in one_line(capsys, 2, "export", *LITE, "-o", ro / "x.onnx")
        assert "cannot" in one_line(capsys, 2, "figures", "-o", ro / "figs")


def test_a_read_only_store_reads_and_refuses_writes(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    spec = spec_file(tmp_path, SMALL)
    assert run(capsys, "sweep", spec, "--db", ro / "r.sqlite", "-q")[0] == 0
    with read_only(ro):
        with ResultStore(ro / "r.sqlite", readonly=True) as store:
            assert len(store) == 4
        with ResultStore(ro / "r.sqlite") as store:  # what `figures`, `claims`, `report` open: read-only here
            assert store.readonly and len(store.table()) == 4
        code, out, err = run(capsys, "results", "--db", ro / "r.sqlite")
        assert code == 0 and len(out.splitlines()) == 5 and not err
        assert "read-only" in one_line(capsys, 2, "sweep", spec, "--db", ro / "r.sqlite", "--retry-failed")


def test_disk_full_is_one_line_and_leaves_no_partial_file(tmp_path, capsys):
    assert "no space left on device" in one_line(capsys, 1, "export", *LITE, "-o", "/dev/full")
    db = tmp_path / "r.sqlite"
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL), "--db", db, "-q")[0] == 0
    assert "no space left on device" in one_line(capsys, 1, "results", "--db", db, "-o", "/dev/full")
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))  # SQLite's own
    assert left == ["r.sqlite", "spec.yaml"]


def test_a_full_disk_under_the_store_keeps_every_finished_point(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "ANALYTIC_CHUNK", 8)  # analytic rows commit 8 at a time: the disk fills mid-sweep
    if os.geteuid() != 0:
        pytest.skip("a small file system needs a tmpfs mount as root")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("tmpfs mount refused")
    big = {**SMALL, "context": [2**k for k in range(6, 16)], "batch": [1, 2, 4, 8]}
    spec = spec_file(tmp_path, big)
    try:
        line = one_line(capsys, 1, "sweep", spec, "--db", small / "r.sqlite", "-q")
        assert "cannot write" in line and "run again to resume" in line
        with ResultStore(small / "r.sqlite", readonly=True) as store:
            kept = {k: store.get(k)["created_at"] for k in store.keys("ok")}
        assert 0 < len(kept) < 80
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)
        code, out, _ = run(capsys, "sweep", spec, "--db", small / "r.sqlite", "-q")
        assert code == 0 and f"{len(kept)} reused" in out
        with ResultStore(small / "r.sqlite", readonly=True) as store:
            assert len(store) == 80 and all(store.get(k)["created_at"] == t for k, t in kept.items())
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_an_output_that_is_an_input_is_refused(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL), "--db", db, "-q")[0] == 0
    assert "is the --db input too" in one_line(capsys, 2, "results", "--db", db, "-o", db)
    assert "is the --db input too" in one_line(capsys, 2, "report", "--db", db, "-o", db)
    plat = platform_yaml(tmp_path)
    assert "is the --platform input too" in one_line(capsys, 2, "mapping", *LITE, "--platform", plat, "-o", plat)
    with ResultStore(db, readonly=True) as store:
        assert len(store) == 4


def test_sweep_options_are_checked_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "repro"
    assert "--workers: must be at least 1" in one_line(capsys, 2, "reproduce", "--workers", "0", "-o", out)
    assert "--timeout" in one_line(capsys, 2, "sweep", spec_file(tmp_path, SMALL), "--timeout", "nan", "--db", out)
    assert not out.exists()


def test_a_failed_command_leaves_no_folder_behind(tmp_path, capsys):
    assert "no results store" in one_line(capsys, 2, "figures", "--db", tmp_path / "none.sqlite", "-o",
                                          tmp_path / "new" / "figs")  # fmt: skip
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv", [["platforms", "--json"], ["results", "--db", "DB"]])
def test_a_closed_pipe_exits_quietly(tmp_path, capsys, argv):
    db = tmp_path / "r.sqlite"
    assert run(capsys, "sweep", spec_file(tmp_path, SMALL), "--db", db, "-q")[0] == 0
    p = cli_proc(*[db if a == "DB" else a for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first write, as with `| head -0`
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141 and err == ""


def test_run_json_into_a_closed_pipe_exits_quietly():
    p = cli_proc("run", *LITE, "--platform", "edge-npu", "--engine", "zigzag", "--json", stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)  # fmt: skip
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err and "Exception ignored" not in err
    assert all(line.startswith("warning: ") for line in err.splitlines())  # warnings on stderr, nothing else


def test_run_warnings_go_to_stderr(capsys, monkeypatch):
    import stream_mla.engines as engines

    doc = {"warnings": ["ZigZag costs no vector ops"], "strategy": "s", "engine_wall_s": 1.0, "latency_cycles": 1.0,
           "latency_s": 1e-9, "roofline_ratio": 1.0, "bound": "memory", "roofline_bound_s": 1e-9, "energy_pj": 1.0,
           "energy_breakdown_pj": {"mac": 1.0}, "engine_dram_bytes": 1.0, "dram_bytes": 1, "macs": 1,
           "nodes": []}  # fmt: skip
    monkeypatch.setattr(engines, "evaluate", lambda *a, **kw: SimpleNamespace(to_dict=lambda: doc))
    code, out, err = run(capsys, "run", *LITE, "--platform", "edge-npu")
    assert code == 0 and "warning" not in out and err.strip() == "warning: ZigZag costs no vector ops"
    assert "mJ" in out and "ms" in out and "cycles" in out  # units on every printed quantity


def test_count_of_a_folder_says_so(tmp_path, capsys):
    assert "is a folder" in one_line(capsys, 2, "count", tmp_path)


@pytest.mark.parametrize("address", ["notanaddress", "tcp://host", "host:99999", "http://x:1", "a b:1"])
def test_a_malformed_dask_address_is_one_line(tmp_path, capsys, address):
    line = one_line(capsys, 2, "sweep", spec_file(tmp_path, SMALL), "--dask", address, "--db", tmp_path / "r.sqlite")
    assert "--dask: expected a scheduler address" in line and not (tmp_path / "r.sqlite").exists()


def test_an_unreachable_dask_scheduler_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "DASK_CONNECT_TIMEOUT_S", 1.0)
    t = time.perf_counter()
    line = one_line(capsys, 1, "sweep", spec_file(tmp_path, SMALL), "--dask", "127.0.0.1:1", "--db",
                    tmp_path / "r.sqlite")  # fmt: skip
    assert "cannot connect to scheduler" in line and time.perf_counter() - t < 15
    assert not (tmp_path / "r.sqlite").exists()


def test_run_timeout_must_be_positive(capsys):
    from stream_mla.engines import evaluate
    from stream_mla.models import PRESETS as MODELS
    from stream_mla.workloads import make_spec

    assert "--timeout" in one_line(capsys, 2, "run", *LITE, "--platform", "edge-npu", "--timeout", "0")
    with pytest.raises(SpecError, match="--timeout"):
        evaluate(make_spec(model=MODELS["deepseek-v2-lite"], scheme="mha", context=64), "edge-npu", timeout_s=0)


def test_evaluate_works_from_a_script_without_a_main_guard(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(
        "from stream_mla.engines import evaluate\n"
        "from stream_mla.models import PRESETS\n"
        "from stream_mla.workloads import make_spec\n"
        "r = evaluate(make_spec(model=PRESETS['deepseek-v2-lite'], scheme='mla-absorb', context=64), 'edge-npu',"
        " 'zigzag')\n"
        "print('cycles', r.latency_cycles)\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("cycles "), r.stderr


# B = 32 and an empty cost cache (`cold_cache`): a Stream run of 12 s on this machine, so a signal sent a second after
# the engine starts lands mid-run even when a loaded machine delays the test (B = 1 with a warm cache: 6 s)
ENGINE_SWEEP = {"models": ["deepseek-v3"], "schemes": ["mha"], "context": [4096], "batch": [32],
                "platforms": ["h100-like"], "engines": ["stream"]}  # fmt: skip


def cold_cache(tmp_path: Path) -> dict:
    """The environment of a CLI child with an empty cost cache of its own: its engine run searches every layer,
    whatever earlier tests left in the session's cost cache."""
    return {**os.environ, "STREAM_MLA_CACHE": str(tmp_path / "cold-cache")}


def _engines_of(pid: int, timeout: float = 120) -> list[psutil.Process]:
    """The engine processes (with their children) under `pid`, once they have started."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(psutil.Error):
            procs = psutil.Process(pid).children(recursive=True)
            if any("import stream_mla.engines as e" in " ".join(p.cmdline()) for p in procs):
                time.sleep(1.0)  # let it get into its run
                return psutil.Process(pid).children(recursive=True)
        time.sleep(0.05)
    raise AssertionError("no engine process started")


def _gone(procs: list[psutil.Process], timeout: float = 10) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return all(p.status() == psutil.STATUS_ZOMBIE for p in alive if p.is_running())


@pytest.mark.parametrize(
    ("how", "code"), [("ctrl-c", 130), ("kill", 143), ("kill -9", -9)], ids=["ctrl-c", "sigterm", "sigkill"]
)
def test_stopping_a_sweep_leaves_no_engine_running(tmp_path, how, code):
    spec = spec_file(tmp_path, ENGINE_SWEEP, SMALL)
    p = cli_proc("sweep", spec, "--db", tmp_path / "r.sqlite", "-q", stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE, start_new_session=True, env=cold_cache(tmp_path))  # fmt: skip
    engines = _engines_of(p.pid)
    if how == "ctrl-c":
        os.killpg(p.pid, signal.SIGINT)  # the terminal sends it to the whole foreground group
    else:
        os.kill(p.pid, signal.SIGKILL if how == "kill -9" else signal.SIGTERM)
    assert p.wait(timeout=60) == code
    assert _gone(engines), [e.cmdline() for e in engines if e.is_running()]
    err = p.stderr.read()
    if how != "kill -9":
        lines = err.strip().splitlines()
        assert "Traceback" not in err and len(lines) == 1 and "finished points kept" in lines[0], err
    with ResultStore(tmp_path / "r.sqlite", readonly=True) as store:  # the analytic rows are all there
        assert len(store.keys("ok")) == 4


def test_ctrl_c_in_run_exits_quietly_and_stops_the_engine(tmp_path):
    p = cli_proc("run", "--model", "deepseek-v3", "--scheme", "mha", "--platform", "h100-like", "--batch", "32",
                 "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                 env=cold_cache(tmp_path))  # fmt: skip
    engines = _engines_of(p.pid)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and out == "" and err.strip() == "stream-mla: interrupted", err
    assert _gone(engines)


# --- numeric export size guard ----------------------------------------------------------------------------


def test_a_large_numeric_export_needs_force(tmp_path, capsys, monkeypatch):
    out = tmp_path / "v3.onnx"
    line = one_line(capsys, 2, "export", "--model", "deepseek-v3", "--weights", "random", "--seed", "1", "-o", out)
    assert "748 MB of fp32 weights" in line and "--force" in line and not out.exists()
    monkeypatch.setattr(cli, "MAX_NUMERIC_EXPORT_BYTES", 10**5)
    argv = ["export", "--model", "deepseek-v2-lite", "--scheme", "mha", "--context", "4", "--weights", "random",
            "--seed", "1", "-o", tmp_path / "lite.onnx"]  # fmt: skip
    assert "limit 0 MB" in one_line(capsys, 2, *argv)
    monkeypatch.setattr(cli, "MAX_ONNX_BYTES", 10**6)
    assert "more than one ONNX file holds" in one_line(capsys, 2, *argv, "--force")


# --- CLI conventions (issue 11 part 5) --------------------------------------------------------------------


def test_version(capsys):
    from stream_mla import __version__

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"stream-mla {__version__}"


def test_every_help_shows_the_defaults():
    import argparse

    ap = cli.parser()
    for name, sub in ap.commands.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                shown = str(action.default) in text or "default" in (action.help or "")
                assert action.help and shown, f"{name} {action.option_strings[0]}: default not in --help"


def test_platforms_describes_a_user_platform(tmp_path, capsys):
    path = platform_yaml(tmp_path, "my-npu", mac_rate={"fp8": 2.0})
    code, out, _ = run(capsys, "platforms", path)
    assert code == 0 and out.startswith("my-npu")
    assert "dram_gb_s            8.0 GB/s" in out and "bit/cycle" in out and "fp8 x2" in out
    code, out, _ = run(capsys, "platforms", "--json", path, "h100-like")
    docs = json.loads(out)
    assert [d["name"] for d in docs] == ["my-npu", "h100-like"]
    assert docs[0]["derived"]["dram_bits_per_cycle"] == PlatformSpec.from_yaml(path).dram_bits_per_cycle
    code, out, _ = run(capsys, "platforms", "--json")
    assert {d["name"] for d in json.loads(out)} == set(PRESETS)


def test_an_internal_error_is_one_line_without_debug(capsys, monkeypatch):
    def boom(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "parser", _parser_with(boom))
    line = one_line(capsys, 1, "count", "x.onnx")
    assert "internal error: ZeroDivisionError" in line and "STREAM_MLA_DEBUG=1" in line


def _parser_with(func):
    original = cli.parser

    def make():
        ap = original()
        ap.commands["count"].set_defaults(func=func)
        return ap

    return make


def test_the_store_survives_a_malformed_db_argument(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not sqlite")
    assert "not a results store" in one_line(capsys, 2, "results", "--db", bad)
    assert bad.read_text() == "not sqlite"
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (a)")
    assert "not a results store" in one_line(capsys, 2, "results", "--db", tmp_path / "other.sqlite")


def test_raw_stream_hardware_yaml_is_read_strictly(tmp_path, capsys):
    """A raw --hardware YAML goes through the same strict reader as every user file: a duplicate key is one line."""
    from stream_mla.cli import main

    hw = tmp_path / "hw.yaml"
    hw.write_text("name: a\nname: b\n")
    assert main(["run", "--hardware", str(hw), "--context", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "duplicate key 'name'" in err
