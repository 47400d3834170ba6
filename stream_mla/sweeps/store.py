"""The results store: one SQLite table, one row per sweep point keyed by its content hash.

Each `put` is its own committed transaction (WAL journal), so a killed sweep (Ctrl-C, kill -9) loses at most
the points in flight; everything already written survives and is reused on the next run.
"""

import math
import os
import sqlite3
import time
from pathlib import Path

import pandas as pd

from stream_mla.errors import FaultError, SpecError, excerpt, short_path
from stream_mla.io import prepare_output
from stream_mla.sweeps.points import ROW_COLUMNS

DEFAULT_DB = "results/results.sqlite"

INT_COLUMNS = ("batch", "context", "queries", "window", "kv_chunks", "kv_heads", "macs", "macs_causal",
               "weight_bytes", "kv_read_bytes", "kv_write_bytes", "activation_bytes", "dram_bytes",
               "layer_by_layer_bytes")  # fmt: skip
TEXT_COLUMNS = ("key", "status", "error", "model", "scheme", "phase", "part", "precision", "kv_precision",
                "act_precision", "platform", "engine", "engine_version", "strategy", "bound", "warnings", "strategies",
                "hotspot", "excess_step")  # fmt: skip
SORT_COLUMNS = ("engine", "model", "scheme", "phase", "batch", "context", "platform", "bw_scale", "key")
FORMATS = ("csv", "parquet")
TEXT_DTYPE = "str" if int(pd.__version__.split(".")[0]) >= 3 else object  # pandas 3's default string dtype
TABLE = "results"


def _writable(path: Path) -> bool:
    """The file and its folder (where WAL keeps its -wal and -shm files) can be written."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def unstorable(row: dict) -> str | None:
    """Why a row does not fit the store, or None: INTEGER columns hold 64-bit integers, and a non-finite number
    is a bug upstream (NaN would be stored as NULL, inf as a silent answer)."""
    for c in ROW_COLUMNS:
        v = row.get(c)
        if c in INT_COLUMNS and isinstance(v, int) and not -(2**63) <= v < 2**63:
            return f"{c} = {v:.3e} exceeds the store's 64-bit integers (reduce batch, context or the model's size)"
        if isinstance(v, float) and not math.isfinite(v):
            return f"{c} is {v} (every stored quantity must be finite)"
    return None


def _sql_type(col: str) -> str:
    return "INTEGER" if col in INT_COLUMNS else "TEXT" if col in TEXT_COLUMNS else "REAL"


class ResultStore:
    """Rows of ROW_COLUMNS (plus `created_at`, not exported) in an SQLite file."""

    def __init__(self, path: str | Path, readonly: bool | None = None):
        """Open (or create) the store. readonly=True opens an existing store read-only (sqlite `mode=ro`, what
        commands that only read use); False opens it for writing (a read-only file is then one line saying so);
        None chooses: read-only when the file exists but cannot be written, else for writing."""
        self.path = Path(path)
        if self.path.is_dir():
            raise SpecError(f"--db: {short_path(self.path)} is a folder (give the store's file name)")
        if readonly is None:
            readonly = self.path.is_file() and not _writable(self.path)
        self.readonly = readonly
        try:
            self.conn = self._open_readonly() if readonly else self._open_for_writing()
            have = [r[1] for r in self.conn.execute(f"PRAGMA table_info({TABLE})")]
        except sqlite3.DatabaseError as exc:
            if not readonly and ("readonly" in str(exc) or "unable to open" in str(exc)):
                raise SpecError(f"--db: {short_path(self.path)} is read-only ({exc}; a sweep writes to it: make "
                                "it writable or give another --db)") from None  # fmt: skip
            raise SpecError(f"--db: {short_path(self.path)} is not a results store ({exc})") from None
        if readonly and not have:
            raise SpecError(f"--db: {short_path(self.path)} is not a results store (no {TABLE} table)")
        if have != [*ROW_COLUMNS, "created_at"]:
            raise SpecError(f"--db: {self.path} has other columns than this version's rows; use a new --db")

    def _open_for_writing(self) -> sqlite3.Connection:
        if self.path.is_file() and not _writable(self.path):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        prepare_output(self.path, "--db")  # parent folders made; a place that cannot be written is refused here
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # autocommit; explicit txns
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        cols = ", ".join(f"{c} {_sql_type(c)}" for c in ROW_COLUMNS)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols}, created_at REAL, PRIMARY KEY (key))")
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise SpecError(f"--db: no such results store {short_path(self.path)} (run `stream-mla sweep` first)")
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0)
            conn.execute(f"PRAGMA table_info({TABLE})")
            return conn
        except sqlite3.OperationalError:
            # A WAL store on a read-only file system: its -shm index cannot be made. Nobody can be writing
            # there, so reading it as immutable is safe.
            return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]

    def put(self, row: dict) -> None:
        """Insert or replace one row, committed before returning."""
        if self.readonly:
            raise SpecError(f"--db: {short_path(self.path)} was opened read-only")
        problem = unstorable(row)
        if problem:
            raise SpecError(f"--db: row {row.get('key')}: {problem}")
        values = [row.get(c) for c in ROW_COLUMNS] + [time.time()]
        marks = ", ".join("?" * len(values))
        try:
            with self.conn:  # one committed transaction per row
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute(f"INSERT OR REPLACE INTO {TABLE} VALUES ({marks})", values)
        except sqlite3.OperationalError as exc:  # disk full, I/O error: every row committed before is kept
            raise FaultError(f"--db: {short_path(self.path)}: cannot write ({exc}); finished points are kept, "
                             "run again to resume") from None  # fmt: skip

    def get(self, key: str) -> dict | None:
        cur = self.conn.execute(f"SELECT * FROM {TABLE} WHERE key = ?", (key,))
        r = cur.fetchone()
        if r is None:
            return None
        return dict(zip([d[0] for d in cur.description], r, strict=True))

    def keys(self, status: str | None = None) -> set[str]:
        if status is None:
            return {r[0] for r in self.conn.execute(f"SELECT key FROM {TABLE}")}
        return {r[0] for r in self.conn.execute(f"SELECT key FROM {TABLE} WHERE status = ?", (status,))}

    def table(self, include_failed: bool = False) -> pd.DataFrame:
        """The tidy table: ROW_COLUMNS, sorted by (engine, model, scheme, phase, batch, context, platform, bw_scale,
        key)."""
        where = "" if include_failed else "WHERE status = 'ok'"
        sql = f"SELECT {', '.join(ROW_COLUMNS)} FROM {TABLE} {where} ORDER BY {', '.join(SORT_COLUMNS)}"
        df = pd.read_sql_query(sql, self.conn)
        for c in ROW_COLUMNS:
            if c in INT_COLUMNS:
                df[c] = df[c].astype("Int64")
            elif c in TEXT_COLUMNS:
                df[c] = df[c].astype(TEXT_DTYPE)
            else:
                df[c] = df[c].astype("float64")
        return df.reset_index(drop=True)

    def export(self, path, fmt: str = "csv", include_failed: bool = False) -> None:
        """Write the table as CSV (same store -> same bytes) or Parquet; `path` may be a file or a text stream."""
        if fmt not in FORMATS:
            raise SpecError(f"--format: {excerpt(fmt)} (allowed: {', '.join(FORMATS)})")
        df = self.table(include_failed=include_failed)
        if fmt == "csv":
            df.to_csv(path, index=False, lineterminator="\n")
        else:
            df.to_parquet(path, index=False)
