"""The results store: one SQLite table, one row per sweep point keyed by its content hash.

Each `put` is its own committed transaction (WAL journal), so a killed sweep (Ctrl-C, kill -9) loses at most
the points in flight; everything already written survives and is reused on the next run.
"""

import sqlite3
import time
from pathlib import Path

import pandas as pd

from stream_mla.errors import SpecError
from stream_mla.sweeps.points import ROW_COLUMNS

DEFAULT_DB = "results/results.sqlite"

INT_COLUMNS = ("batch", "context", "queries", "window", "kv_heads", "macs", "macs_causal", "weight_bytes",
               "kv_read_bytes", "kv_write_bytes", "activation_bytes", "dram_bytes", "layer_by_layer_bytes")  # fmt: skip
TEXT_COLUMNS = ("key", "status", "error", "model", "scheme", "phase", "part", "precision", "kv_precision",
                "act_precision", "platform", "engine", "engine_version", "strategy", "bound", "warnings", "hotspot",
                "excess_step")  # fmt: skip
SORT_COLUMNS = ("engine", "model", "scheme", "phase", "batch", "context", "platform", "bw_scale", "key")
FORMATS = ("csv", "parquet")
TEXT_DTYPE = "str" if int(pd.__version__.split(".")[0]) >= 3 else object  # pandas 3's default string dtype
TABLE = "results"


def _sql_type(col: str) -> str:
    return "INTEGER" if col in INT_COLUMNS else "TEXT" if col in TEXT_COLUMNS else "REAL"


class ResultStore:
    """Rows of ROW_COLUMNS (plus `created_at`, not exported) in an SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # autocommit; explicit txns
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            cols = ", ".join(f"{c} {_sql_type(c)}" for c in ROW_COLUMNS)
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols}, created_at REAL, PRIMARY KEY (key))")
            have = [r[1] for r in self.conn.execute(f"PRAGMA table_info({TABLE})")]
        except sqlite3.DatabaseError as exc:
            raise SpecError(f"--db: {self.path} is not a results store ({exc})") from None
        if have != [*ROW_COLUMNS, "created_at"]:
            raise SpecError(f"--db: {self.path} has other columns than this version's rows; use a new --db")

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
        values = [row.get(c) for c in ROW_COLUMNS] + [time.time()]
        marks = ", ".join("?" * len(values))
        with self.conn:  # one committed transaction per row
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(f"INSERT OR REPLACE INTO {TABLE} VALUES ({marks})", values)

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
            raise SpecError(f"--format: {fmt!r} (allowed: {', '.join(FORMATS)})")
        df = self.table(include_failed=include_failed)
        if fmt == "csv":
            df.to_csv(path, index=False, lineterminator="\n")
        else:
            df.to_parquet(path, index=False)
