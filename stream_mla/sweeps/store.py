"""The results store: one SQLite table, one row per sweep point keyed by its content hash.

Each `put` is its own committed transaction (WAL journal), so a killed sweep (Ctrl-C, kill -9) loses at most
the points in flight; everything already written survives and is reused on the next run.

Claims, so that two sweeps on one store never compute a point twice: a second table, `claims` (key, owner, pid,
host, claimed_at, heartbeat, done_at, writes), apart from the results table so that stores of earlier versions stay
valid (it is made when a store is opened for writing). `claim(keys)` takes, in one BEGIN IMMEDIATE transaction
(thousands of keys at once), the keys with no row to reuse and no live claim of another owner; an owner is one open
`ResultStore` ("host:pid:random"). A claim is live while its `done_at` is empty, its heartbeat is younger than
CLAIM_STALE_S (a daemon thread refreshes its owner's every HEARTBEAT_S) and, on the same host, its process exists
(in this very process: its store is still open); otherwise it is stale and the next `claim` takes it over, so a
killed sweep never blocks another for long (at once on one host, after CLAIM_STALE_S from another). Writing rows
(`put`, `put_many`) settles their claims in the same transaction, with one statement per batch (`done_at` set,
`owner` the writer, `writes` + 1; a per-row trigger did the same at 2.4x the write time of a 5,000-row batch), so
the table doubles as a log of who computed each point and how often;
`release()` drops what an owner still holds (a sweep calls it on every exit, Ctrl-C included). Read-only opens never
touch it.
"""

import contextlib
import json
import math
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Container, Iterable
from pathlib import Path

import pandas as pd

from stream_mla.errors import FaultError, SpecError, excerpt, short_path
from stream_mla.io import prepare_output
from stream_mla.sweeps.points import DIGESTS, ROW_COLUMNS

DEFAULT_DB = "results/results.sqlite"

INT_COLUMNS = ("batch", "context", "queries", "window", "kv_chunks", "kv_heads", "macs", "macs_causal",
               "weight_bytes", "kv_read_bytes", "kv_write_bytes", "activation_bytes", "dram_bytes",
               "layer_by_layer_bytes", "pad_macs", "pad_bytes")  # fmt: skip
TEXT_COLUMNS = ("key", "status", "error", "model", "scheme", "phase", "part", "precision", "kv_precision",
                "act_precision", "platform", "engine", "engine_version", "strategy", "bound", "warnings", "strategies",
                "hotspot", "excess_step", "lag_step", *DIGESTS)  # fmt: skip
JSON_COLUMNS = ("warnings", "strategies")
# What the readers need in an ok row: a NULL here is a damaged row (a hand edit), skipped with a warning
NEEDED = ("key", "model", "scheme", "phase", "part", "batch", "context", "queries", "platform", "bw_scale", "engine",
          "peak_flop_per_s", "dram_bytes_per_s", "ridge", "macs", "dram_bytes", "oi", "roofline_s", "latency_s",
          "energy_pj")  # fmt: skip
STORED = (*ROW_COLUMNS, "created_at")
IDENTITY = ("key", "status", "model", "platform", "engine", "created_at")  # every results table has these
SQLITE_HEADER = b"SQLite format 3\x00"
SORT_COLUMNS = ("engine", "model", "scheme", "phase", "batch", "context", "platform", "bw_scale", "key")
FORMATS = ("csv", "parquet")
TEXT_DTYPE = "str" if int(pd.__version__.split(".")[0]) >= 3 else object  # pandas 3's default string dtype
TABLE = "results"
CLAIMS = "claims"
HEARTBEAT_S = 10.0  # how often an owner refreshes the heartbeat of its live claims
CLAIM_STALE_S = 90.0  # a claim whose heartbeat is older is taken over (from any host)
HOST = socket.gethostname()
_OPEN_OWNERS: set[str] = set()  # the owners open in this process: a claim of this process by another is stale


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def latest_versions(df: pd.DataFrame) -> pd.DataFrame:
    """Of each platform and model name whose ok rows carry several content digests (the YAML or config edited
    between sweeps), only the rows of the latest version (by `created_at`, then `rowid`), with one warning line
    per name: two versions are never mixed. A row without a digest (an older store's) counts as one version; a
    failed row without one is kept (it carries no numbers to mix)."""
    order = df.sort_values(["created_at", "rowid"], na_position="first").index
    rank = pd.Series(range(len(order)), index=order)
    ok = df["status"] == "ok"
    for name, digest in (("platform", "platform_digest"), ("model", "model_digest")):
        version = df[digest].astype(object).where(df[digest].notna(), "")
        newest = rank[ok].groupby([df.loc[ok, name], version[ok]]).max()
        for value, versions in newest.groupby(level=0):
            if len(versions) < 2:
                continue
            latest = versions.idxmax()[1]
            mine = df[name] == value
            stale = mine & (version != latest) & (ok | (version != ""))
            _warn(f"--db: the store holds {len(versions)} versions of {name} {value!r}; using the latest "
                  f"({int((mine & ~stale).sum())} rows), ignoring {int(stale.sum())} older rows (sweep into a new "
                  "--db to compare versions)")  # fmt: skip
            df, rank, ok, version = df[~stale], rank[~stale], ok[~stale], version[~stale]
    return df


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


def storable_columns(columns: Iterable[tuple[str, Iterable]]) -> bool:
    """True when no row of these (name, values) columns is `unstorable`, decided in bulk: a column of str, None,
    ints (within 64 bits in an INTEGER column) and floats whose sum is finite (a NaN or an infinity makes it
    non-finite) holds no problem. False (check row by row) for any other column: an overflowing sum, a bool, a
    numpy scalar."""
    text = ({str}, {type(None)}, {str, type(None)})
    for c, col in columns:
        col = col if isinstance(col, list | tuple) else list(col)
        kinds = set(map(type, col))
        if kinds in text:
            continue
        if not kinds <= {str, int, float, type(None)}:
            return False
        if float in kinds:
            floats = col if kinds == {float} else [v for v in col if type(v) is float]
            if not math.isfinite(sum(floats)):
                return False
        if int in kinds and c in INT_COLUMNS:
            ints = col if kinds == {int} else [v for v in col if type(v) is int]
            if not (min(ints) >= -(2**63) and max(ints) < 2**63):
                return False
    return True


def _reusable(status: str | None, created_at: float | None, retry_before: float | None) -> bool:
    """A stored row a sweep takes as it is: ok, or failed unless retried (written before `retry_before`)."""
    if status == "failed":
        return retry_before is None or (created_at or 0.0) >= retry_before
    return status is not None


def _sql_type(col: str) -> str:
    return "INTEGER" if col in INT_COLUMNS else "TEXT" if col in TEXT_COLUMNS else "REAL"


def _pid_alive(pid: int | None) -> bool:
    """A process with this id exists on this host and is not a zombie (a killed sweep not yet reaped)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process: it exists
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(pid, 0) is the answer
    return state not in ("Z", "X")


class _Heartbeat(threading.Thread):
    """Refreshes the heartbeat of one owner's live claims every HEARTBEAT_S, on its own connection."""

    def __init__(self, path: Path, owner: str):
        super().__init__(name="store-heartbeat", daemon=True)
        self.path, self.owner, self.stopped = path, owner, threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            while not self.stopped.wait(HEARTBEAT_S):
                # a busy or full disk: the next beat tries again (CLAIM_STALE_S spans several beats)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"UPDATE {CLAIMS} SET heartbeat = ? WHERE owner = ? AND done_at IS NULL",
                                 (time.time(), self.owner))  # fmt: skip
        finally:
            conn.close()


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
        self.owner = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # who holds this store's claims
        self._heartbeat: _Heartbeat | None = None
        self._copy: Path | None = None  # a private copy read instead (a WAL store in a read-only folder)
        try:
            self.conn = self._open_readonly() if readonly else self._open_for_writing()
            have = [r[1] for r in self.conn.execute(f"PRAGMA table_info({TABLE})")]
        except sqlite3.DatabaseError as exc:
            self._drop_copy()
            if not readonly and ("readonly" in str(exc) or "unable to open" in str(exc)):
                raise SpecError(f"--db: {short_path(self.path)} is read-only ({exc}; a sweep writes to it: make "
                                "it writable or give another --db)") from None  # fmt: skip
            raise SpecError(f"--db: {short_path(self.path)} is not a results store ({exc})") from None
        if readonly and not have:
            self.close()
            raise SpecError(f"--db: {short_path(self.path)} is not a results store (no {TABLE} table)")
        try:
            self._check_columns(have)
        except SpecError:
            self.close()
            raise
        self.columns = set(have)  # an older store lacks the newest columns: they read as NULL
        if not readonly:
            self._prepare_claims()
            _OPEN_OWNERS.add(self.owner)

    def _prepare_claims(self) -> None:
        """The claims table, made if missing."""
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {CLAIMS} (key TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                          "pid INTEGER, host TEXT, claimed_at REAL, heartbeat REAL, done_at REAL, "
                          "writes INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID")  # fmt: skip

    def _settle(self, keys: list[str]) -> None:
        """Inside a write transaction: the claims of the rows just written are settled by this owner (a row
        written without a claim gets a settled one), `writes` counting how often each row was written. An UPDATE
        of the claimed keys first (the usual case: they are this sweep's claims), an insert only for the rest."""
        now, doc = time.time(), json.dumps(keys)
        before = self.conn.total_changes
        self.conn.execute(
            f"UPDATE {CLAIMS} SET owner = ?, pid = ?, host = ?, heartbeat = ?, done_at = ?, writes = writes + 1 "
            "WHERE key IN (SELECT value FROM json_each(?))",
            (self.owner, os.getpid(), HOST, now, now, doc),
        )  # fmt: skip
        if self.conn.total_changes - before < len(keys):  # rows written without a claim get one
            self.conn.execute(
                f"INSERT INTO {CLAIMS} (key, owner, pid, host, claimed_at, heartbeat, done_at, writes) "
                "SELECT value, ?, ?, ?, ?, ?, ?, 1 FROM json_each(?) WHERE true ON CONFLICT (key) DO NOTHING",
                (self.owner, os.getpid(), HOST, now, now, now, doc),
            )  # fmt: skip

    def _check_columns(self, have: list[str]) -> None:
        """A results table of this version or an older one (fewer columns); anything else is refused."""
        where = short_path(self.path)
        if not set(IDENTITY) <= set(have):
            raise SpecError(f"--db: {where} is not a results store (its {TABLE} table lacks "
                            f"{', '.join(c for c in IDENTITY if c not in have)}; give another --db)")  # fmt: skip
        newer = [c for c in have if c not in STORED]
        if newer:
            raise SpecError(f"--db: {where} has columns this version does not know ({', '.join(newer[:3])}): a "
                            "newer stream-mla wrote it; use that version or a new --db")  # fmt: skip

    def _check_existing(self) -> None:
        """Before anything is written: an existing non-empty file must be SQLite and hold a results table (or no
        table at all), so that a file of another program is refused unaltered."""
        where = short_path(self.path)
        with self.path.open("rb") as f:
            if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise SpecError(f"--db: {where} is not a results store (not an SQLite file; give another --db)")
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            have = [r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")]
        finally:
            conn.close()
        if tables and TABLE not in tables:
            raise SpecError(f"--db: {where} is not a results store (an SQLite file of other tables: "
                            f"{excerpt(', '.join(tables[:5]))}; give another --db)")  # fmt: skip
        if have:
            self._check_columns(have)

    def _open_for_writing(self) -> sqlite3.Connection:
        if self.path.is_file() and not _writable(self.path):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        if self.path.is_file() and self.path.stat().st_size:
            self._check_existing()
        prepare_output(self.path, "--db")  # parent folders made; a place that cannot be written is refused here
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # autocommit; explicit txns
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        cols = ", ".join(f"{c} {_sql_type(c)}" for c in ROW_COLUMNS)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols}, created_at REAL, PRIMARY KEY (key))")
        have = [r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")]
        if set(IDENTITY) <= set(have) and not set(ROW_COLUMNS) <= set(have):  # an older store: add the new columns
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                have = [r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")]  # another opener may have
                for c in ROW_COLUMNS:
                    if c not in have:
                        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {c} {_sql_type(c)}")
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise SpecError(f"--db: no such results store {short_path(self.path)} (run `stream-mla sweep` first)")
        uri = self.path.resolve().as_uri()
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0)
        try:
            conn.execute(f"PRAGMA table_info({TABLE})")
            return conn
        except sqlite3.OperationalError:
            conn.close()
        # A WAL store in a folder that cannot be written: its -shm index cannot be made. Nobody can be writing
        # there; reading it as immutable is right unless rows wait in its -wal file (immutable ignores them).
        wal = Path(f"{self.path}-wal")
        if not (wal.is_file() and wal.stat().st_size):
            return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
        return self._open_copy(wal)

    def _open_copy(self, wal: Path) -> sqlite3.Connection:
        """The store and its -wal file copied to a private folder and read there, every row included."""
        self._copy = Path(tempfile.mkdtemp(prefix="stream-mla-store-"))
        copy = self._copy / "results.sqlite"
        try:
            shutil.copyfile(self.path, copy)
            shutil.copyfile(wal, f"{copy}-wal")
        except OSError as exc:
            self._drop_copy()
            raise FaultError(f"--db: {short_path(self.path)} keeps rows in {wal.name} and its folder is read-only; "
                             f"copying both to a temporary folder failed ({exc.strerror or exc}): copy the two "
                             "files to a writable folder and read them there") from None  # fmt: skip
        return sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True, timeout=30.0)

    def _drop_copy(self) -> None:
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None

    def close(self) -> None:
        if self._heartbeat is not None:
            self.release()
            self._stop_heartbeat()
        _OPEN_OWNERS.discard(self.owner)
        self.conn.close()
        self._drop_copy()

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
                self.conn.execute(f"INSERT OR REPLACE INTO {TABLE} ({', '.join(STORED)}) VALUES ({marks})", values)
                self._settle([row.get("key")])
        except sqlite3.OperationalError as exc:  # disk full, I/O error: every row committed before is kept
            raise FaultError(f"--db: {short_path(self.path)}: cannot write ({exc}); finished points are kept, "
                             "run again to resume") from None  # fmt: skip

    def put_many(self, rows: Iterable[dict | tuple], checked: Container[int] = ()) -> None:
        """Insert or replace many rows in one committed transaction (executemany): what `put` stores row by row
        (in order; created_at the batch's time). A row is a dict, as for `put`, or a tuple of its ROW_COLUMNS
        values (what the analytic fast path makes). Every row is checked as `put` checks it before anything is
        written: an unstorable row is a SpecError naming it (the first such), and then no row is written.

        The check runs column by column in bulk first (`storable_columns`), on every row but those at the positions
        in `checked` (their maker ran that very check on their columns: the analytic fast path, before it zips its
        columns into rows); a column it cannot clear sends every row through `unstorable`."""
        from operator import itemgetter

        if self.readonly:
            raise SpecError(f"--db: {short_path(self.path)} was opened read-only")
        rows = list(rows)
        if not rows:
            return
        get, n = itemgetter(*ROW_COLUMNS), len(ROW_COLUMNS)
        try:
            values = [row if isinstance(row, tuple) else get(row) for row in rows]
        except KeyError:  # a row without some column stores None there, as put does
            values = [row if isinstance(row, tuple) else tuple(map(row.get, ROW_COLUMNS)) for row in rows]
        if any(len(v) != n for v in values):
            raise ValueError(f"put_many: a row tuple needs its {n} ROW_COLUMNS values")
        unchecked = [v for j, v in enumerate(values) if j not in checked] if checked else values
        if unchecked and not storable_columns(zip(ROW_COLUMNS, zip(*unchecked, strict=True), strict=True)):
            for row in unchecked:
                problem = unstorable(dict(zip(ROW_COLUMNS, row, strict=True)))
                if problem:
                    raise SpecError(f"--db: row {row[0]}: {problem}")
        # created_at: the batch's time, one literal (repr round-trips a float) instead of a copy of every row
        marks = ", ".join(["?"] * n + [repr(time.time())])
        try:
            with self.conn:  # one committed transaction for all of them
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(f"INSERT OR REPLACE INTO {TABLE} ({', '.join(STORED)}) VALUES ({marks})",
                                      values)  # fmt: skip
                self._settle([v[0] for v in values])
        except sqlite3.OperationalError as exc:  # disk full, I/O error: every row committed before is kept
            raise FaultError(f"--db: {short_path(self.path)}: cannot write ({exc}); finished points are kept, "
                             "run again to resume") from None  # fmt: skip

    def claim(self, keys: Iterable[str], retry_before: float | None = None) -> set[str]:
        """Claim, in one transaction, the keys that have no row to reuse and no live claim of another owner;
        returns the keys this store now holds (those it held already included). A row to reuse is one with
        status ok, or failed unless `retry_before` is given and the row was written before it (a sweep with
        --retry-failed passes its start time, so a point another sweep retried meanwhile is not retried again).
        Stale claims (see the module docstring) are taken over."""
        self._check_writable()
        keys = list(dict.fromkeys(keys))
        if not keys:
            return set()
        now, alive, got = time.time(), {}, []
        sql = (f"SELECT j.value, c.owner, c.pid, c.host, c.heartbeat, c.done_at, r.status, r.created_at "
               f"FROM json_each(?) AS j LEFT JOIN {CLAIMS} AS c ON c.key = j.value "
               f"LEFT JOIN {TABLE} AS r ON r.key = j.value")  # fmt: skip
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                rows = self.conn.execute(sql, (json.dumps(keys),)).fetchall()
                for key, owner, pid, host, beat, done_at, status, created in rows:
                    if _reusable(status, created, retry_before):
                        continue
                    if owner not in (None, self.owner) and done_at is None:
                        if host == HOST and pid == os.getpid():  # this process: its own registry knows
                            alive[owner] = owner in _OPEN_OWNERS
                        elif owner not in alive:
                            alive[owner] = host != HOST or _pid_alive(pid)
                        if alive[owner] and now - (beat or 0.0) < CLAIM_STALE_S:
                            continue  # another sweep is on it
                    got.append(key)
                self.conn.executemany(
                    f"INSERT INTO {CLAIMS} (key, owner, pid, host, claimed_at, heartbeat) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, pid = excluded.pid, host = excluded.host, "
                    "claimed_at = excluded.claimed_at, heartbeat = excluded.heartbeat, done_at = NULL",
                    [(k, self.owner, os.getpid(), HOST, now, now) for k in got],
                )  # fmt: skip
        except sqlite3.OperationalError as exc:
            raise FaultError(f"--db: {short_path(self.path)}: cannot write ({exc}); finished points are kept, "
                             "run again to resume") from None  # fmt: skip
        if got and self._heartbeat is None:
            self._heartbeat = _Heartbeat(self.path, self.owner)
            self._heartbeat.start()
        return set(got)

    def settled(self, keys: Iterable[str], retry_before: float | None = None) -> dict[str, str]:
        """{key: status} of the keys with a row to reuse (as `claim` decides): those another sweep finished."""
        sql = f"SELECT j.value, r.status, r.created_at FROM json_each(?) AS j JOIN {TABLE} AS r ON r.key = j.value"
        rows = self.conn.execute(sql, (json.dumps(list(keys)),))
        return {k: status for k, status, created in rows if _reusable(status, created, retry_before)}

    def release(self, keys: Iterable[str] | None = None) -> None:
        """Drop this store's unsettled claims (all of them, and stop the heartbeat, when keys is None). A
        release that cannot be written is harmless: the claims go stale when this process ends."""
        if self.readonly:
            return
        sql = f"DELETE FROM {CLAIMS} WHERE owner = ? AND done_at IS NULL"
        with contextlib.suppress(sqlite3.Error):
            if keys is None:
                self.conn.execute(sql, (self.owner,))
            else:
                self.conn.execute(f"{sql} AND key IN (SELECT value FROM json_each(?))",
                                  (self.owner, json.dumps(list(keys))))  # fmt: skip
        if keys is None:
            self._stop_heartbeat()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stopped.set()
            self._heartbeat.join(timeout=5.0)  # its connection closed (a file system can then be unmounted)
            self._heartbeat = None

    def _check_writable(self) -> None:
        if self.readonly:
            raise SpecError(f"--db: {short_path(self.path)} was opened read-only")

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
        key). What every reader reads: damaged rows (`damaged`) are skipped, and of a platform or model name swept
        in several versions (an edited YAML or config) only the latest version's rows are kept; each is one
        warning line on stderr."""
        where = "" if include_failed else "WHERE status = 'ok'"
        bad = self.damaged(where)
        select = ", ".join(c if c in self.columns else f"NULL AS {c}" for c in ROW_COLUMNS)
        sql = f"SELECT {select}, created_at, rowid FROM {TABLE} {where} ORDER BY {', '.join(SORT_COLUMNS)}"
        df = pd.read_sql_query(sql, self.conn)
        if bad:
            df = df[~df["key"].isin(bad)]
            first = next(iter(bad))
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            _warn(f"--db: skipped {len(bad)} damaged row{'s' if len(bad) > 1 else ''} (key {first}: {bad[first]}"
                  f"{more}; delete them and sweep again to recompute them)")  # fmt: skip
        for c in ROW_COLUMNS:
            if c in INT_COLUMNS:
                df[c] = df[c].astype("Int64")
            elif c in TEXT_COLUMNS:
                df[c] = df[c].astype(TEXT_DTYPE)
            else:
                df[c] = df[c].astype("float64")
        df = latest_versions(df)
        return df[list(ROW_COLUMNS)].reset_index(drop=True)

    def damaged(self, where: str = "") -> dict[str, str]:
        """{key: what is wrong} of the rows a reader cannot take (hand edits): a value of the wrong type for its
        column, invalid JSON in warnings or strategies, a NULL where an ok row needs a value."""
        cases = []
        for c in ROW_COLUMNS:
            if c not in self.columns:
                continue
            if c in TEXT_COLUMNS:
                kinds, what = "'text'", "text"
            else:
                kinds, what = ("'integer'", "an integer") if c in INT_COLUMNS else ("'integer', 'real'", "a number")
            cases.append(f"WHEN typeof({c}) NOT IN ('null', {kinds}) THEN '{c} is not {what} ('"
                         f" || quote(substr({c}, 1, 20)) || ')'")  # fmt: skip
            if c in JSON_COLUMNS:
                cases.append(f"WHEN {c} IS NOT NULL AND NOT json_valid({c}) THEN '{c} is not JSON'")
            if c in NEEDED:
                cases.append(f"WHEN status = 'ok' AND {c} IS NULL THEN '{c} is empty'")
        sql = (f"SELECT key, problem FROM (SELECT key, CASE {' '.join(cases)} END AS problem FROM {TABLE} {where}) "
               "WHERE problem IS NOT NULL ORDER BY key")  # fmt: skip
        return {key: problem for key, problem in self.conn.execute(sql)}

    def export(self, path, fmt: str = "csv", include_failed: bool = False) -> None:
        """Write the table as CSV (same store -> same bytes) or Parquet; `path` may be a file or a text stream."""
        if fmt not in FORMATS:
            raise SpecError(f"--format: {excerpt(fmt)} (allowed: {', '.join(FORMATS)})")
        df = self.table(include_failed=include_failed)
        if fmt == "csv":
            df.to_csv(path, index=False, lineterminator="\n")
        else:
            df.to_parquet(path, index=False)
