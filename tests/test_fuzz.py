"""Fuzzing the CLI's contract (issue 12) with hypothesis: whatever the arguments and the user files (platform
YAML, sweep spec, HF config), a command ends with exit code 0, 1 or 2, no traceback, at most 3 short lines on
stderr, nothing written when it fails, and the results store intact.

No engine runs: sweeps are analytic (or fail validation). Bounded time: a few dozen examples per test, run
in-process (`main([...])`, fast) and a few through a real subprocess. The examples are derandomized so that
`make test` is stable; STREAM_MLA_FUZZ_RANDOM=1 draws new ones (and more with STREAM_MLA_FUZZ_EXAMPLES=500).
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stream_mla.cli as cli
from stream_mla.cli import main
from stream_mla.models import PRESETS as MODELS
from stream_mla.platforms import PRESETS as PLATFORMS
from stream_mla.sweeps.store import ResultStore
from stream_mla.workloads import registry

RANDOM = bool(os.environ.get("STREAM_MLA_FUZZ_RANDOM"))
N = int(os.environ.get("STREAM_MLA_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=N, deadline=None, database=None, derandomize=not RANDOM,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])  # fmt: skip

# --- values ------------------------------------------------------------------------------------------------
EDGES = ["", "-", " ", "0", "-1", "1", "nan", "inf", "-inf", "1e400", "1" * 40, "x" * 300, "../x", "/proc/x",
         "/dev/full", "/dev/null", ".", "yes", "null", "[1, 2]", "{a: 1}", "&a x", "*a"]  # fmt: skip
# argv cannot hold NUL; surrogates cannot come from a UTF-8 command line either
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
JUNK = st.sampled_from(EDGES) | TEXT
INTS = (st.integers(-3, 70) | st.sampled_from([2**16, 2**24, 2**24 + 1, 2**31, 2**63, 10**21, -(10**21)])).map(str)
FLOATS = st.floats(allow_nan=True, allow_infinity=True).map(repr)
NUMBER = INTS | FLOATS | JUNK
# files each example's folder holds (made by `_folder`), so paths hit every kind of target
PATHS = st.sampled_from(["out.onnx", "sub/dir/x.onnx", "existing_dir", "existing_file.txt", "good.onnx", "bad.onnx",
                         "plat.yaml", "spec.yaml", "cfg.json", "store.sqlite", "missing.yaml", "existing_file.txt/x",
                         "/proc/x", "/proc/x/y", "/dev/null", "/dev/full", ""])  # fmt: skip


def one_of_or_junk(values) -> st.SearchStrategy[str]:
    return st.sampled_from(list(values)) | JUNK


DB = st.sampled_from(["store.sqlite"]) | PATHS  # half the time the good store


MODEL_FLAGS = {
    "--model": one_of_or_junk(MODELS), "--scheme": one_of_or_junk(registry.REGISTRY),
    "--phase": one_of_or_junk(["decode", "prefill"]), "--batch": INTS, "--context": INTS, "--queries": INTS,
    "--window": INTS, "--part": one_of_or_junk(["layer", "core"]), "--kv-heads": INTS,
    "--precision": one_of_or_junk(["bf16", "fp32", "int8", "fp8", "fp16"]),
    "--kv-precision": one_of_or_junk(["bf16", "fp8"]), "--act-precision": one_of_or_junk(["bf16", "fp32"]),
    "--hf-config": PATHS,
}  # fmt: skip
COMMAND_FLAGS = {
    "export": {**MODEL_FLAGS, "-o": PATHS, "--weights": one_of_or_junk(["none", "random"]), "--seed": INTS,
               "--out": PATHS, "--force": None},  # no --reference-set: writing the grid is slow, tested elsewhere
    "count": {"--platform": one_of_or_junk([*PLATFORMS, "plat.yaml"]) | PATHS, "--json": None, "--causal": None},
    "platforms": {"--json": None, "--write": None, "--root": PATHS},
    "results": {"--db": DB, "--format": one_of_or_junk(["csv", "parquet"]), "-o": PATHS, "--include-failed": None},
    "sweep": {"--db": DB, "--workers": INTS, "--timeout": NUMBER, "--retry-failed": None, "-q": None,
              "--dask": st.sampled_from(["notanaddress", "tcp://h", "h:0", "h:70000", "", "a b:1"])},  # never dials
    "mapping": {**MODEL_FLAGS, "--platform": one_of_or_junk([*PLATFORMS, "plat.yaml"]) | PATHS, "--hardware": PATHS,
                "-o": PATHS},
    "claims": {"--db": DB, "--json": None},
    "report": {"--db": DB, "--figures": PATHS, "-o": PATHS},
    "run": {**MODEL_FLAGS, "--platform": JUNK, "--hardware": PATHS, "--clock-ghz": NUMBER, "--timeout": NUMBER,
            "--engine": JUNK, "--strategy": JUNK},  # never a valid engine run: --platform is always junk
}  # fmt: skip
POSITIONAL = {"count": st.sampled_from(["good.onnx"]) | PATHS,
              "platforms": one_of_or_junk([*PLATFORMS, "plat.yaml"]) | PATHS, "sweep": PATHS}  # fmt: skip
# what most examples of a command get, so that many of them get past the first check
USUAL = {"mapping": ["--model", "deepseek-v2-lite", "--context", "64", "--platform", "edge-npu"],
         "export": ["--model", "deepseek-v2-lite", "--context", "64"], "results": ["--db", "store.sqlite"],
         "claims": ["--db", "store.sqlite"], "report": ["--db", "store.sqlite"]}  # fmt: skip


@st.composite
def argv(draw, commands=tuple(COMMAND_FLAGS)) -> list[str]:
    command = draw(st.sampled_from(commands))
    flags = COMMAND_FLAGS[command]
    out = [command]
    if command == "sweep":
        out.append(draw(PATHS))  # always a spec file: without one, the whole default grid would run
    elif command in POSITIONAL and draw(st.integers(0, 3)):
        out.append(draw(POSITIONAL[command]))
    if command in USUAL and draw(st.booleans()):
        out += USUAL[command]  # a later flag of the same name overrides these
    for flag in draw(st.lists(st.sampled_from(list(flags)), max_size=5, unique=True)):
        out += [flag] if flags[flag] is None else [flag, draw(flags[flag])]
    return out


# --- files --------------------------------------------------------------------------------------------------
FIELD_VALUES = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | TEXT | \
    st.lists(st.integers(), max_size=2) | st.dictionaries(TEXT, st.integers() | st.floats(), max_size=2)  # fmt: skip
RAW_YAML = st.sampled_from([
    "", "[", "- 1\n- 2\n", "a: 1\na: 2\n", "a: &x [1, 2]\nb: *x\n", "x: !!python/object:os.system ls\n",
    "? [1]\n: 2\n", "a: " + "[" * 5000, "\t- x", "name: &n edge\nclock_ghz: *n\n", "{" * 200,
]) | TEXT  # fmt: skip


rarely = st.sampled_from([False] * 7 + [True])  # hypothesis leans to the first choices: the rare one goes last


@st.composite
def mutated(draw, base: dict) -> str:
    """`base` with a few fields replaced, dropped or added, as YAML text; or raw text that is hardly YAML."""
    if draw(rarely):
        return draw(RAW_YAML)
    doc = dict(base)
    for key in draw(st.lists(st.sampled_from(list(base)), max_size=3, unique=True)):
        how = draw(st.sampled_from(["value", "scale", "drop"]))
        if how == "drop":
            del doc[key]
        elif how == "scale" and isinstance(doc[key], int | float) and not isinstance(doc[key], bool):
            doc[key] = doc[key] * draw(st.sampled_from([0, -1, 10**-9, 10**9, 10**30, 0.5]))
        else:
            doc[key] = draw(FIELD_VALUES)
    if draw(rarely):
        doc[draw(TEXT)] = draw(FIELD_VALUES)
    return yaml.safe_dump(doc)


PLATFORM_BASE = {**PLATFORMS["edge-npu"].model_dump(mode="json"), "name": "fuzz-npu"}
HF_BASE = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_hidden_layers": 2, "head_dim": 16, "torch_dtype": "bfloat16", "sliding_window": None}  # fmt: skip


@st.composite
def axis(draw, values, size=1) -> list:
    """Mostly a list of good values; now and then an empty list or a value of any type."""
    if draw(rarely):
        return []
    n = draw(st.integers(1, size))
    return [draw(FIELD_VALUES) if draw(rarely) else draw(st.sampled_from(values)) for _ in range(n)]


@st.composite
def sweep_spec(draw) -> str:
    """A sweep spec of a few analytic points (at most 8), every axis fuzzed."""
    if draw(rarely):
        return draw(RAW_YAML)
    block = {
        "models": draw(axis(["deepseek-v2-lite", "cfg.json", "deepseek-v3"], 2)),
        "schemes": draw(axis(["mha", "gqa", "mla-absorb", "mla-naive"], 2)),
        "context": draw(axis([64, 128, 256, 2**24 + 1, 10**9], 2)),
        "platforms": draw(axis(["edge-npu", "plat.yaml", "h100-like"], 1)),
    }
    optional = {"phases": ["decode", "prefill", "train"], "batch": [1, 2, 10**6], "bw_scale": [1.0, 0.5, 1e-9, 1e300],
                "engines": ["analytic", "analytic", "stram"], "kv_heads": [None, 2, 3], "precision": [None, "fp8"],
                "queries": [1, 2], "parts": ["layer", "core"], "window": [None, 32], "name": ["x"]}  # fmt: skip
    for key in draw(st.lists(st.sampled_from(list(optional)), max_size=4, unique=True)):
        block[key] = draw(axis(optional[key]))
    if draw(rarely):
        del block[draw(st.sampled_from(list(block)))]  # a required axis missing
    return yaml.safe_dump({"sweeps": [block]})


# --- the contract --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def materials(tmp_path_factory) -> Path:
    """A folder with what each example starts from: a good export, a results store with rows, user files."""
    d = tmp_path_factory.mktemp("materials")
    assert main(["export", "--model", "deepseek-v2-lite", "--context", "64", "-o", str(d / "good.onnx")]) == 0
    block = {"models": ["deepseek-v2-lite"], "schemes": ["mha"], "context": [64, 128], "platforms": ["edge-npu"]}
    (d / "spec.yaml").write_text(json.dumps({"sweeps": [block]}))
    assert main(["sweep", str(d / "spec.yaml"), "--db", str(d / "store.sqlite"), "-q"]) == 0
    (d / "plat.yaml").write_text(yaml.safe_dump(PLATFORM_BASE))
    (d / "cfg.json").write_text(json.dumps(HF_BASE))
    (d / "bad.onnx").write_bytes(b"\x08\x01garbage")
    (d / "existing_file.txt").write_text("keep")
    (d / "existing_dir").mkdir()
    return d


@contextlib.contextmanager
def _folder(materials: Path, files: dict[str, str]):
    """A fresh copy of the materials (with `files` written over them) as the current folder."""
    before = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work = Path(tmp) / "w"
        shutil.copytree(materials, work)
        for name, text in files.items():
            (work / name).write_text(text)
        os.chdir(work)
        try:
            yield work
        finally:
            os.chdir(before)


def _snapshot(folder: Path) -> dict:
    """Every path under folder with its size and mtime; SQLite's own -wal/-shm files aside (a reader makes them)."""
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm"))}  # fmt: skip


def _store_rows(path: Path) -> dict:
    with ResultStore(path, readonly=True) as store:
        return {k: store.get(k)["created_at"] for k in store.keys()}  # noqa: SIM118 (a method, not a dict)


def check_contract(code: int, err: str, argv: list[str], before: dict, after: dict, store_before, store_after):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (0, 1, 2), (code, argv, err)
    assert "Traceback" not in err and "internal error" not in err and "Exception ignored" not in err, (argv, err)
    assert len(lines) <= 3 and all(len(line) <= 400 for line in lines), (argv, err)
    assert all(k in store_after and store_after[k] == t for k, t in store_before.items()), argv  # store intact
    if code != 0:
        assert after == before, (argv, err, set(after) ^ set(before))  # nothing written on failure
        assert store_after == store_before, argv


def _in_process(materials: Path, capsys, args: list[str], files: dict[str, str]) -> None:
    with _folder(materials, files) as work:
        rows, before = _store_rows(work / "store.sqlite"), _snapshot(work)
        code = main(args)
        _, err = capsys.readouterr()
        check_contract(code, err, args, before, _snapshot(work), rows, _store_rows(work / "store.sqlite"))


@pytest.fixture
def small_numeric_limit(monkeypatch):
    monkeypatch.setattr(cli, "MAX_NUMERIC_EXPORT_BYTES", 2 * 10**6)  # no preset's random export is written


@FUZZ
@given(args=argv(("export", "count", "platforms", "results", "run", "mapping", "claims", "report")))
def test_fuzz_cli_arguments(materials, capsys, small_numeric_limit, args):
    _in_process(materials, capsys, args, {})


@FUZZ
@given(text=mutated(PLATFORM_BASE), command=st.sampled_from(["platforms", "count", "sweep"]))
def test_fuzz_platform_files(materials, capsys, text, command):
    args = {"platforms": ["platforms", "plat.yaml"], "count": ["count", "good.onnx", "--platform", "plat.yaml"],
            "sweep": ["sweep", "spec.yaml", "--db", "store.sqlite", "-q"]}[command]  # fmt: skip
    spec = json.dumps({"sweeps": [{"models": ["deepseek-v2-lite"], "schemes": ["mha"], "context": [64],
                                   "platforms": ["plat.yaml"]}]})  # fmt: skip
    _in_process(materials, capsys, args, {"plat.yaml": text, "spec.yaml": spec})


@FUZZ
@given(text=sweep_spec(), extra=argv(("sweep",)))
def test_fuzz_sweep_specs(materials, capsys, text, extra):
    args = ["sweep", "spec.yaml", "--db", "store.sqlite", "-q", *extra[2:]]
    _in_process(materials, capsys, args, {"spec.yaml": text})


@FUZZ
@given(text=mutated(HF_BASE), scheme=st.sampled_from([None, "mha", "gqa", "mqa", "mla-absorb"]),
       weights=st.booleans())  # fmt: skip
def test_fuzz_hf_configs(materials, capsys, small_numeric_limit, text, scheme, weights):
    args = ["export", "--hf-config", "cfg.json", "--context", "8", "-o", "x.onnx"]
    args += ["--scheme", scheme] if scheme else []
    args += ["--weights", "random", "--seed", "1", "--precision", "fp32"] if weights else []
    _in_process(materials, capsys, args, {"cfg.json": text})


@settings(FUZZ, max_examples=4)
@given(args=argv(("export", "count", "platforms", "results")))
def test_fuzz_through_a_real_process(materials, args):
    """The same contract as seen from a shell: the console entry point, real stdout and stderr."""
    with _folder(materials, {}) as work:
        rows, before = _store_rows(work / "store.sqlite"), _snapshot(work)
        r = subprocess.run([sys.executable, "-m", "stream_mla.cli", *args], capture_output=True, text=True,
                           cwd=work, timeout=120)  # fmt: skip
        check_contract(r.returncode, r.stderr, args, before, _snapshot(work), rows, _store_rows(work / "store.sqlite"))
