"""SQLite storage: schema and migrations, the single writer, and the read helpers.

One file (``DB_PATH``), stdlib ``sqlite3``, WAL. The bot is the only writer of trading data;
it writes through ``Writer`` (one thread, off the event loop). The dashboard opens the file
read-only and may only add rows to ``commands``. Every table is meant to be read with the
``sqlite3`` CLI, so names say what things are and times are epoch milliseconds (``*_ms``).

Schema versions are ``PRAGMA user_version``; each migration runs inside one explicit
transaction (not ``executescript``, which commits on its own).

Why one file of this size: it is the only module that speaks SQL (the schema and its
migrations, connections, ``Store``, the writer thread and every read the bot, the CLI, the
dashboard and the strategy lab make), so a change to a table is made and reviewed in one place.
Its sections are marked ``# ---- …``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any

from history import Candle

log = logging.getLogger("bollmin.store")

SCHEMA_V1 = (
    """CREATE TABLE candles (
        symbol TEXT NOT NULL,
        interval TEXT NOT NULL,
        open_time_ms INTEGER NOT NULL,
        open REAL NOT NULL,
        high REAL NOT NULL,
        low REAL NOT NULL,
        close REAL NOT NULL,
        volume REAL NOT NULL DEFAULT 0,
        close_time_ms INTEGER NOT NULL,
        PRIMARY KEY (symbol, interval, open_time_ms)
    ) WITHOUT ROWID""",
    """CREATE TABLE transitions (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,          -- exchange time of the tick (or of the event)
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        price REAL NOT NULL,               -- the tick price that caused it
        band_up REAL,
        band_mid REAL,
        band_dn REAL,
        cause TEXT NOT NULL DEFAULT 'tick' -- tick | reconcile | rejected | command | restart
    )""",
    """CREATE TABLE orders (
        id INTEGER PRIMARY KEY,
        client_order_id TEXT NOT NULL UNIQUE,  -- newClientOrderId sent to Binance
        transition_id INTEGER REFERENCES transitions(id),
        time_ms INTEGER NOT NULL,              -- exchange time of the tick that caused it
        symbol TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('open_long','open_short','close_long','close_short')),
        reason TEXT NOT NULL CHECK (reason IN ('entry','take_profit','stop_loss','manual','reconcile')),
        side TEXT NOT NULL CHECK (side IN ('BUY','SELL')),
        qty REAL NOT NULL,                     -- requested quantity, base asset (BTC)
        reduce_only INTEGER NOT NULL DEFAULT 0,
        paper INTEGER NOT NULL,                -- 1 = simulated, never sent to the exchange
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending','sent','unknown','filled','rejected','expired')),
        tick_price REAL NOT NULL,              -- price of the tick that triggered the order
        exchange_order_id INTEGER,
        fill_price REAL,
        filled_qty REAL,
        fee_usdt REAL,
        realized_pnl_usdt REAL,                -- closes only: gross PnL of the closed quantity
        error_code INTEGER,
        error_message TEXT,
        created_ms INTEGER NOT NULL,           -- wall clock
        updated_ms INTEGER NOT NULL
    )""",
    "CREATE INDEX orders_by_time ON orders(time_ms)",
    "CREATE INDEX orders_by_status ON orders(status)",
    """CREATE TABLE fills (
        id INTEGER PRIMARY KEY,
        order_id INTEGER NOT NULL REFERENCES orders(id),
        time_ms INTEGER NOT NULL,
        price REAL NOT NULL,
        qty REAL NOT NULL,
        fee_usdt REAL NOT NULL,
        realized_pnl_usdt REAL NOT NULL DEFAULT 0,
        paper INTEGER NOT NULL
    )""",
    "CREATE INDEX fills_by_order ON fills(order_id)",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        level TEXT NOT NULL,                 -- DEBUG | INFO | WARNING | ERROR | CRITICAL
        message TEXT NOT NULL
    )""",
    "CREATE INDEX events_by_time ON events(time_ms)",
    """CREATE TABLE status (
        key TEXT PRIMARY KEY,
        value TEXT,
        updated_ms INTEGER NOT NULL
    )""",
    """CREATE TABLE commands (
        id INTEGER PRIMARY KEY,
        created_ms INTEGER NOT NULL,
        command TEXT NOT NULL CHECK (command IN ('pause','resume','close_position')),
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','done','failed')),
        result TEXT,
        done_ms INTEGER
    )""",
    # Convenience for the sqlite3 CLI: executed orders with their results.
    """CREATE VIEW trades AS
        SELECT id, time_ms, datetime(time_ms / 1000, 'unixepoch') AS time_utc, action, reason,
               fill_price AS price, filled_qty AS qty, fee_usdt, realized_pnl_usdt, paper,
               client_order_id, exchange_order_id
        FROM orders WHERE status = 'filled'""",
)

# v2: position mismatches between the bot and the exchange, one row each (what the bot held,
# what the exchange said, what it adopted). Shown on the dashboard; events carry the same as text.
SCHEMA_V2 = (
    """CREATE TABLE reconciliations (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,            -- wall clock when the mismatch was resolved
        why TEXT NOT NULL,                   -- startup | reconnect | periodic | user stream | after a failed order ...
        stored_qty REAL NOT NULL,            -- signed position the bot held (base asset, < 0 short)
        exchange_qty REAL NOT NULL,          -- signed position the exchange reported
        exchange_entry_price REAL,
        stored_state TEXT NOT NULL,
        adopted_state TEXT NOT NULL,
        rule TEXT NOT NULL                   -- RECONCILE_RULE in force: exchange | pause
    )""",
    "CREATE INDEX reconciliations_by_time ON reconciliations(time_ms)",
)

# ---- v3, the strategy lab: results of ``bollmin.py sweep --db`` ----------------------------------
# A sweep DB is a file of its own (never DB_PATH); it may also hold one ``backtest --db`` run.
# sweep_runs: one row per sweep (the file, the grid, the walk-forward cut, the verdict sentences).
# sweep_results: one row per parameter set, best first (``rank`` by ``sweep_runs.rank_by``, on the
#   in-sample part with walk-forward): its settings, the whole-file figures (equal to what
#   ``backtest --json`` prints for the same settings), in-sample (is_*) and out-of-sample (oos_*)
#   figures (NULL without walk-forward), and the whole JSON line.
# sweep_equity: the equity curves of the best sets (``--top``): mark-to-market equity (net PnL +
#   unrealised, USDT) at the last tick of each UTC day, over the whole file ('all') and over the
#   out-of-sample test alone ('oos', starting from 0 at the cut).
_SWEEP_FIGURES = ("trades", "net_pnl_usdt", "fees_usdt", "funding_usdt", "win_rate", "max_drawdown_usdt",
                  "profit_factor", "sharpe_daily", "exposure")
SCHEMA_SWEEP = (
    """CREATE TABLE sweep_runs (
        id INTEGER PRIMARY KEY,
        created_ms INTEGER NOT NULL,         -- wall clock
        source_file TEXT NOT NULL,           -- the kline file swept
        symbol TEXT NOT NULL,
        first_open_time_ms INTEGER NOT NULL, -- the file's first and last candle
        last_open_time_ms INTEGER NOT NULL,
        file_interval_ms INTEGER NOT NULL,
        sets INTEGER NOT NULL,               -- parameter sets evaluated
        jobs INTEGER NOT NULL,
        elapsed_s REAL NOT NULL,
        rank_by TEXT NOT NULL,               -- the figure sets were ranked on
        train_fraction REAL,                 -- NULL: no walk-forward
        split_time_ms INTEGER,               -- open time of the first out-of-sample candle
        trade_amount_usdt REAL NOT NULL,
        fee_rate REAL NOT NULL,
        funding_file TEXT NOT NULL DEFAULT '',
        grid_json TEXT NOT NULL,             -- the swept values per axis
        verdict TEXT NOT NULL                -- plain sentences (Chinese / English), one per line
    )""",
    """CREATE TABLE sweep_results (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES sweep_runs(id) ON DELETE CASCADE,
        rank INTEGER NOT NULL,               -- 1 = best
        interval TEXT NOT NULL,
        boll_period INTEGER NOT NULL,
        boll_k REAL NOT NULL,
        evaluate_on TEXT NOT NULL,           -- tick | close
        breakout_buffer_pct REAL NOT NULL,
        stop_cooldown_candles INTEGER NOT NULL,
        slippage_pct REAL NOT NULL,
        """ + ",\n        ".join(f"{p}{f} {'INTEGER' if f == 'trades' else 'REAL'}"
                                  for p in ("", "is_", "oos_") for f in _SWEEP_FIGURES) + """,
        summary_json TEXT NOT NULL,          -- the set's whole sweep --json line
        UNIQUE (run_id, rank)
    )""",
    """CREATE TABLE sweep_equity (
        result_id INTEGER NOT NULL REFERENCES sweep_results(id) ON DELETE CASCADE,
        part TEXT NOT NULL CHECK (part IN ('all', 'oos')),
        time_ms INTEGER NOT NULL,            -- the last tick of a UTC day
        equity_usdt REAL NOT NULL,           -- net PnL + unrealised PnL then
        PRIMARY KEY (result_id, part, time_ms)
    ) WITHOUT ROWID""",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (SCHEMA_V1, SCHEMA_V2, SCHEMA_SWEEP)  # index i: version i -> i+1


class Command(StrEnum):
    """What the dashboard may ask of the bot: one row in ``commands``, carried out by the bot.

    The one list of command names (the schema's CHECK spells the same three).
    """

    PAUSE = "pause"                    # no new entries; an open position is kept
    RESUME = "resume"                  # entries allowed again
    CLOSE_POSITION = "close_position"  # close the open position now at market


SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The DB cannot be used (wrong file, newer schema, damaged, unwritable, disk full).

    The message is one line naming the file and what to do; the CLI exits with code 2 (a person
    must act, so neither systemd nor AUTO_RESTART restarts the bot).
    """


def damaged_message(path: str, detail: str) -> str:
    """What to say about a damaged database file, and how to recover."""
    return (f"database {path} is damaged ({_short(detail)}): stop bollmin, move {path} and its -wal/-shm files "
            f"aside (sqlite3's .recover can rescue their rows) and start again with a new file; the exchange is "
            f"the truth for the position: live trading adopts it at startup")


def describe(path: str, exc: BaseException) -> str:
    """One line for an SQLite or OS error on ``path``: what happened and what to do."""
    if isinstance(exc, OSError) and not isinstance(exc, sqlite3.Error):
        return f"database {path}: {exc.strerror or type(exc).__name__}"
    text = _short(str(exc))
    low = text.lower()
    if "file is not a database" in low:
        return (f"database {path}: not an SQLite database file: DB_PATH (or --db) must name bollmin's own "
                f"database; move this file away or choose another path")
    if "malformed" in low or "corrupt" in low:
        return damaged_message(path, text)
    if "full" in low:
        return f"database {path}: the disk is full ({text}); the file is unchanged: free some space and run again"
    if "readonly" in low or "read-only" in low:
        return (f"database {path}: cannot write it ({text}): the file or its file system is read-only; "
                f"DB_PATH must be on writable storage")
    if "unable to open" in low:
        return (f"database {path}: cannot open it ({text}): its directory must exist and be writable by this user "
                f"on writable storage")
    if "disk i/o error" in low:
        return f"database {path}: disk I/O error: check the disk (dmesg), then run again"
    if "locked" in low or "busy" in low:
        return f"database {path}: locked by another process for more than 5 s; is another bollmin using this file?"
    return f"database {path}: {text}"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _check_file(path: str) -> None:
    """Refuse a directory or a special file (FIFO, device) before SQLite opens it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"database {path}: {exc.strerror or type(exc).__name__}") from None
    if stat.S_ISDIR(mode):
        raise StoreError(f"database {path}: is a directory; DB_PATH (or --db) must name a file, e.g. data/bollmin.db")
    if not stat.S_ISREG(mode):
        raise StoreError(f"database {path}: is not a regular file (a pipe, device or socket); name a .db file")
    # The 100-byte header tells a non-database or a newer schema without SQLite opening the file
    # (which, for a database in WAL mode, would leave -wal/-shm files next to it).
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
    except OSError as exc:
        raise StoreError(f"database {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if not head:
        return  # an empty file is a new database
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
        raise StoreError(describe(path, sqlite3.DatabaseError("file is not a database")))
    version = int.from_bytes(head[60:64], "big", signed=True)
    if version > SCHEMA_VERSION:
        raise StoreError(f"database {path}: schema version {version} is newer than this program's "
                         f"{SCHEMA_VERSION}; upgrade bollmin (or use another file)")


def _identify(conn: sqlite3.Connection, path: str, quick_check: bool, writable: bool = True) -> None:
    """Refuse a file that is not a usable bollmin database, before anything is written to it.

    ``quick_check`` also scans every page (about 0.3 s per 300 MB), so damage is found at startup,
    not in the middle of trading.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"database {path}: schema version {version} is newer than this program's "
                         f"{SCHEMA_VERSION}; upgrade bollmin (or use another file)")
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables:
            raise StoreError(f"database {path}: the file is a SQLite database but not a bollmin one; "
                             f"use another file")
        if not writable:
            raise StoreError(f"database {path}: holds no bollmin data yet (an empty database)")
    if quick_check:
        result = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if result != "ok":
            raise StoreError(damaged_message(path, str(result)))


def now_ms() -> int:
    return int(time.time() * 1000)


def _setup(conn: sqlite3.Connection, readonly: bool) -> sqlite3.Connection:
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
        conn.execute("PRAGMA cache_size = -512")  # 512 KiB: the bot's memory stays flat as the file grows
    return conn


def connect(path: str) -> sqlite3.Connection:
    """A read-write connection with the schema migrated to the current version.

    The file is checked first (a bollmin database, not newer, not damaged) and left untouched
    when it fails; a new file that cannot be set up (e.g. the disk is full) is removed again.
    Raises StoreError with a one-line message.
    """
    _check_file(path)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"database {path}: cannot create its directory {parent} "
                         f"({exc.strerror or type(exc).__name__})") from None
    created = not os.path.exists(path)
    conn = None
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        _identify(conn, path, quick_check=not created)
        _setup(conn, readonly=False)
        migrate(conn)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if created:
            for leftover in (path, path + "-wal", path + "-shm", path + "-journal"):
                try:
                    os.remove(leftover)
                except OSError:
                    pass
        if isinstance(exc, (sqlite3.DatabaseError, OSError)):
            raise StoreError(describe(path, exc)) from None
        raise
    return conn


def connect_readonly(path: str, verify: bool = False) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``): it can never change trading data.

    ``verify`` (for the CLI) also refuses, with a one-line StoreError, a directory, a file that is
    not a (current) bollmin database, and reads a database on read-only storage when that is safe.
    """
    if not os.path.exists(path):
        raise StoreError(f"database {path}: no such file")
    if verify:
        _check_file(path)
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
        if not verify:
            return _setup(conn, readonly=True)
        try:
            _identify(conn, path, quick_check=False, writable=False)
        except sqlite3.OperationalError as exc:
            conn.close()
            conn = _open_on_readonly_storage(path, exc)
            _identify(conn, path, quick_check=False, writable=False)
        return _setup(conn, readonly=True)
    except sqlite3.DatabaseError as exc:
        raise StoreError(describe(path, exc)) from None


def _open_on_readonly_storage(path: str, exc: sqlite3.OperationalError) -> sqlite3.Connection:
    """A WAL database on read-only storage cannot be opened with ``mode=ro`` without its -shm file.

    With no write-ahead log (or an empty one) the main file holds everything, and ``immutable=1``
    reads it safely; with a non-empty log the latest changes are only there, so say what to do.
    """
    if "unable to open" not in str(exc):
        raise exc
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        raise StoreError(f"database {path}: on read-only storage, and its latest changes are in {wal}, which "
                         f"SQLite can only read after creating {path}-shm: copy the files to writable storage "
                         f"and read the copy (--db COPY)")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations the file lacks, one version per transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"schema version {version} is newer than this program's {SCHEMA_VERSION}; upgrade bollmin")
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables:
            raise StoreError("the file is a SQLite database but not a bollmin one")
    for target in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target]:
                conn.execute(statement)
            if target == 0:
                # A random id per database, part of every client order id: a new DB can never
                # reuse an id that an older DB already sent to the same account.
                conn.execute(
                    "INSERT INTO status(key, value, updated_ms) VALUES ('db_id', ?, ?)",
                    (secrets.token_hex(3), now_ms()),
                )
            conn.execute(f"PRAGMA user_version = {target + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back by itself (e.g. disk full)
                conn.execute("ROLLBACK")
            raise


class Store:
    """Typed writes and reads over one read-write connection. Not thread-safe: one owner."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = connect(path)

    def close(self) -> None:
        self.conn.close()

    # ---- transactions --------------------------------------------------------------------
    def transaction(self) -> _Tx:
        return _Tx(self.conn, self.path)

    # ---- writes ---------------------------------------------------------------------------
    def add_candles(self, symbol: str, interval: str, step_ms: int, candles: Iterable[Candle]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO candles(symbol, interval, open_time_ms, open, high, low, close, volume,"
            " close_time_ms) VALUES (?,?,?,?,?,?,?,?,?)",
            [(symbol, interval, c.open_time_ms, c.open, c.high, c.low, c.close, c.volume,
              c.open_time_ms + step_ms - 1) for c in candles],
        )

    def add_transition(self, time_ms: int, from_state: str, to_state: str, price: float,
                       bands: Sequence[float] | None, cause: str = "tick", transition_id: int | None = None) -> int:
        """Insert a transition; ``transition_id`` when the caller numbered it (see ``next_transition_id``)."""
        up, mid, dn = bands if bands is not None else (None, None, None)
        cur = self.conn.execute(
            "INSERT INTO transitions(id, time_ms, from_state, to_state, price, band_up, band_mid, band_dn, cause)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (transition_id, time_ms, str(from_state), str(to_state), price, up, mid, dn, cause),
        )
        return int(cur.lastrowid)

    def add_reconciliation(self, why: str, stored_qty: float, exchange_qty: float, entry_price: float | None,
                           stored_state: str, adopted_state: str, rule: str) -> None:
        self.conn.execute(
            "INSERT INTO reconciliations(time_ms, why, stored_qty, exchange_qty, exchange_entry_price, stored_state,"
            " adopted_state, rule) VALUES (?,?,?,?,?,?,?,?)",
            (now_ms(), why, stored_qty, exchange_qty, entry_price, str(stored_state), str(adopted_state), rule),
        )

    def add_order(self, *, client_order_id: str, transition_id: int | None, time_ms: int, symbol: str,
                  action: str, reason: str, side: str, qty: float, reduce_only: bool, paper: bool,
                  tick_price: float, status: str = "pending") -> int:
        ts = now_ms()
        cur = self.conn.execute(
            "INSERT INTO orders(client_order_id, transition_id, time_ms, symbol, action, reason, side, qty,"
            " reduce_only, paper, status, tick_price, created_ms, updated_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (client_order_id, transition_id, time_ms, symbol, str(action), str(reason), side, qty,
             int(reduce_only), int(paper), status, tick_price, ts, ts),
        )
        return int(cur.lastrowid)

    _ORDER_FIELDS = frozenset({"status", "exchange_order_id", "fill_price", "filled_qty", "fee_usdt",
                               "realized_pnl_usdt", "error_code", "error_message"})

    def update_order(self, client_order_id: str, **fields: Any) -> None:
        unknown = set(fields) - self._ORDER_FIELDS
        if unknown:
            raise ValueError(f"unknown order field(s): {sorted(unknown)}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(
            f"UPDATE orders SET {cols}, updated_ms = ? WHERE client_order_id = ?",
            (*fields.values(), now_ms(), client_order_id),
        )

    def add_fill(self, order_id: int, time_ms: int, price: float, qty: float, fee_usdt: float,
                 realized_pnl_usdt: float, paper: bool) -> None:
        self.conn.execute(
            "INSERT INTO fills(order_id, time_ms, price, qty, fee_usdt, realized_pnl_usdt, paper)"
            " VALUES (?,?,?,?,?,?,?)",
            (order_id, time_ms, price, qty, fee_usdt, realized_pnl_usdt, int(paper)),
        )

    def add_event(self, level: str, message: str, time_ms: int | None = None) -> None:
        self.conn.execute(
            "INSERT INTO events(time_ms, level, message) VALUES (?,?,?)",
            (now_ms() if time_ms is None else time_ms, level, message),
        )

    def set_status(self, values: dict[str, Any]) -> None:
        ts = now_ms()
        self.conn.executemany(
            "INSERT INTO status(key, value, updated_ms) VALUES (?,?,?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
            [(k, None if v is None else str(v), ts) for k, v in values.items()],
        )

    def finish_command(self, command_id: int, ok: bool, result: str) -> None:
        self.conn.execute(
            "UPDATE commands SET status = ?, result = ?, done_ms = ? WHERE id = ?",
            ("done" if ok else "failed", result, now_ms(), command_id),
        )

    def clear_trading_data(self) -> None:
        """Delete every candle, order, fill, transition, event and command (keeps db_id)."""
        for table in ("fills", "orders", "transitions", "events", "candles", "commands", "reconciliations"):
            self.conn.execute(f"DELETE FROM {table}")
        self.conn.execute("DELETE FROM status WHERE key != 'db_id'")


class _Tx:
    """``with store.transaction():`` — BEGIN IMMEDIATE … COMMIT, ROLLBACK on error.

    A storage failure (disk full, read-only, damaged, locked) inside or at COMMIT rolls back and
    raises StoreError naming the file: the data from before the transaction stays as it was.
    """

    def __init__(self, conn: sqlite3.Connection, path: str = "") -> None:
        self.conn, self.path = conn, path

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise StoreError(describe(self.path, exc)) from None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.DatabaseError as err:
                exc = err
        if self.conn.in_transaction:  # SQLite may have rolled back by itself (e.g. disk full)
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass
        if _storage_failure(exc):
            raise StoreError(describe(self.path, exc)) from None
        if exc_type is None:
            raise exc


def _storage_failure(exc: BaseException | None) -> bool:
    """An error of the file or the disk (not of the SQL or the data written)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError))


# ---- reads (any connection, read-only included) ---------------------------------------------

def next_transition_id(conn: sqlite3.Connection) -> int:
    """The id the next transition gets: the bot numbers transitions itself, so a decision can
    name its orders (client order ids) before its row is committed."""
    return int(conn.execute("SELECT coalesce(max(id), 0) + 1 FROM transitions").fetchone()[0])


def read_reconciliations(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """Newest first; empty for a DB from before the table existed."""
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM reconciliations ORDER BY id DESC LIMIT ?", (limit,))]
    except sqlite3.OperationalError:
        return []


def read_status(conn: sqlite3.Connection) -> dict[str, str]:
    """The status table as a dict of text values."""
    return {r["key"]: r["value"] for r in conn.execute("SELECT key, value FROM status")}


def read_candles(conn: sqlite3.Connection, symbol: str, interval: str, limit: int,
                 upto_open_ms: int | None = None) -> list[Candle]:
    """The newest ``limit`` stored candles (opened at or before ``upto_open_ms`` if given), oldest first."""
    upto = (1 << 62) if upto_open_ms is None else upto_open_ms
    rows = conn.execute(
        "SELECT open_time_ms, open, high, low, close, volume FROM candles WHERE symbol = ? AND interval = ?"
        " AND open_time_ms <= ? ORDER BY open_time_ms DESC LIMIT ?",
        (symbol, interval, upto, limit),
    ).fetchall()
    return [Candle(*tuple(r)) for r in reversed(rows)]


def read_trades(conn: sqlite3.Connection, limit: int | None = None, paper: bool | None = None,
                include_unfilled: bool = False, offset: int = 0) -> list[dict[str, Any]]:
    """Orders (filled ones unless ``include_unfilled``), newest last; ``limit`` keeps the newest."""
    where, args = [], []
    if not include_unfilled:
        where.append("status = 'filled'")
    if paper is not None:
        where.append("paper = ?")
        args.append(int(paper))
    sql = "SELECT * FROM orders" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        args += [limit, offset]
    rows = conn.execute(sql, args).fetchall()
    return [dict(r) for r in reversed(rows)]


def read_trades_file(path: str, **kwargs: Any) -> list[dict[str, Any]]:
    """``read_trades`` on the file ``path`` (read-only); any problem is a one-line StoreError."""
    conn = connect_readonly(path, verify=True)
    try:
        return read_trades(conn, **kwargs)
    except sqlite3.DatabaseError as exc:
        raise StoreError(describe(path, exc)) from None
    finally:
        conn.close()


def trade_json(row: dict[str, Any]) -> dict[str, Any]:
    """One order as the ``trades --json`` object."""
    filled = row["status"] == "filled"
    return {
        "time_ms": row["time_ms"],
        "action": row["action"],
        "reason": row["reason"],
        "price": row["fill_price"] if filled else row["tick_price"],
        "qty": row["filled_qty"] if filled else row["qty"],
        "fee_usdt": row["fee_usdt"] or 0.0,
        "realized_pnl_usdt": row["realized_pnl_usdt"],
        "paper": bool(row["paper"]),
        "status": row["status"],
        "client_order_id": row["client_order_id"],
        "exchange_order_id": row["exchange_order_id"],
    }


def read_open_intents(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Live orders whose outcome is not known yet (pending, sent or unknown), oldest first."""
    rows = conn.execute(
        "SELECT * FROM orders WHERE paper = 0 AND status IN ('pending','sent','unknown') ORDER BY id"
    ).fetchall()
    return [dict(r) for r in rows]


def read_events(conn: sqlite3.Connection, limit: int = 50, min_level: str | None = None) -> list[dict[str, Any]]:
    """Newest first."""
    if min_level in ("WARNING", "ERROR"):
        levels = ("WARNING", "ERROR", "CRITICAL") if min_level == "WARNING" else ("ERROR", "CRITICAL")
        rows = conn.execute(
            f"SELECT * FROM events WHERE level IN ({','.join('?' * len(levels))}) ORDER BY id DESC LIMIT ?",
            (*levels, limit),
        ).fetchall()
    else:
        rows = conn.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [dict(r) for r in rows]


def read_transitions(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first."""
    return [dict(r) for r in conn.execute("SELECT * FROM transitions ORDER BY id DESC LIMIT ?", (limit,))]


# ---- reads for the dashboard: every query the page makes (read-only connections) --------------

DAY_MS = 86_400_000


def read_day_pnl(conn: sqlite3.Connection, since_ms: int) -> dict[str, float]:
    """Net PnL (realised − fees) and fills of the orders filled since ``since_ms`` (exchange time)."""
    row = conn.execute(
        "SELECT coalesce(sum(coalesce(realized_pnl_usdt, 0) - coalesce(fee_usdt, 0)), 0), count(*) FROM orders"
        " WHERE status = 'filled' AND time_ms >= ?", (since_ms,)).fetchone()
    return {"net_pnl_usdt": float(row[0]), "fills": int(row[1])}


def find_databases(directory: str) -> list[dict[str, str]]:
    """The bollmin DBs among the ``*.db`` files of ``directory``, each opened read-only for its
    ``path``, ``db_role`` (bot, backtest, sweep), ``symbol``, ``interval`` and ``mode``; files
    that are not bollmin DBs (or cannot be read) are left out."""
    found = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    for name in names:
        path = os.path.join(directory, name)
        if not name.endswith(".db") or not os.path.isfile(path):
            continue
        try:
            conn = connect_readonly(path)
            try:
                st = read_status(conn)
            finally:
                conn.close()
        except (StoreError, sqlite3.Error):
            continue
        found.append({"path": path, "db_role": st.get("db_role") or "", "symbol": st.get("symbol") or "",
                      "interval": st.get("interval") or "", "mode": st.get("mode") or ""})
    return found


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    """True when the file has table ``name`` (tables added by later versions may be missing)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def read_last_order(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The newest order of any status, or None."""
    row = conn.execute("SELECT * FROM orders ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else dict(row)


def count_orders(conn: sqlite3.Connection, paper: bool | None = None) -> int:
    """Orders of every status; only paper (True) or only live (False) ones when asked."""
    if paper is None:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])
    return int(conn.execute("SELECT count(*) FROM orders WHERE paper = ?", (int(paper),)).fetchone()[0])


def read_commands(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The newest dashboard commands, newest first."""
    return [dict(r) for r in conn.execute("SELECT * FROM commands ORDER BY id DESC LIMIT ?", (limit,))]


def last_candle_ms(conn: sqlite3.Connection, symbol: str, interval: str) -> int | None:
    """Open time of the newest stored candle (primary-key lookup)."""
    row = conn.execute("SELECT max(open_time_ms) FROM candles WHERE symbol = ? AND interval = ?",
                       (symbol, interval)).fetchone()
    return row[0]


def read_fills_between(conn: sqlite3.Connection, symbol: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """Filled orders of ``symbol`` with ``start_ms <= time_ms < end_ms``, oldest first (chart markers)."""
    rows = conn.execute(
        "SELECT id, time_ms, action, reason, fill_price, filled_qty, paper FROM orders WHERE status = 'filled'"
        " AND symbol = ? AND time_ms >= ? AND time_ms < ? ORDER BY id",
        (symbol, start_ms, end_ms),
    ).fetchall()
    return [dict(r) for r in rows]


def read_net_pnl_steps(conn: sqlite3.Connection, paper: bool) -> list[tuple[int, float]]:
    """``(time_ms, net)`` per filled order, oldest first: realised PnL minus the fee it paid (USDT).

    The running sum of ``net`` is the equity curve (cumulative net PnL) of paper or live trading.
    """
    rows = conn.execute(
        "SELECT time_ms, coalesce(realized_pnl_usdt, 0) - coalesce(fee_usdt, 0) FROM orders"
        " WHERE status = 'filled' AND paper = ? ORDER BY time_ms, id",
        (int(paper),),
    ).fetchall()
    return [(int(t), float(v)) for t, v in rows]


def read_daily_pnl(conn: sqlite3.Connection, paper: bool) -> list[dict[str, Any]]:
    """Per UTC day with fills: ``day_ms`` (00:00 UTC), ``net_pnl_usdt``, ``fees_usdt``, ``orders``, ``closes``."""
    rows = conn.execute(
        "SELECT time_ms / ? * ? AS day_ms, sum(coalesce(realized_pnl_usdt, 0) - coalesce(fee_usdt, 0)),"
        " sum(coalesce(fee_usdt, 0)), count(*), sum(action IN ('close_long', 'close_short'))"
        " FROM orders WHERE status = 'filled' AND paper = ? GROUP BY day_ms ORDER BY day_ms",
        (DAY_MS, DAY_MS, int(paper)),
    ).fetchall()
    return [{"day_ms": int(d), "net_pnl_usdt": float(n), "fees_usdt": float(f), "orders": int(o), "closes": int(c)}
            for d, n, f, o, c in rows]


def orders_version(conn: sqlite3.Connection) -> tuple[int, int]:
    """(newest order id, number of orders): changes whenever an order is added (cheap cache key)."""
    row = conn.execute("SELECT coalesce(max(id), 0), count(*) FROM orders").fetchone()
    return int(row[0]), int(row[1])


def read_reconcile_alerts(conn: sqlite3.Connection, since_ms: int, limit: int = 5) -> list[dict[str, Any]]:
    """Position mismatches found by reconciliation since ``since_ms``, newest first (for alerts).

    The bot logs each one as a CRITICAL event whose message starts with ``RECONCILE``; those rows
    are the record. Where the file also has a ``reconciliations(id, time_ms, why, stored_qty,
    exchange_qty, exchange_entry_price, adopted_state, rule)`` table, the row closest in time
    (within a minute) is attached as ``detail``.
    """
    rows = [dict(r) for r in conn.execute(
        "SELECT id, time_ms, message FROM events WHERE time_ms >= ? AND level = 'CRITICAL'"
        " AND message LIKE 'RECONCILE%' ORDER BY time_ms DESC, id DESC LIMIT ?",
        (since_ms, limit),
    )]
    if rows and table_exists(conn, "reconciliations"):
        for row in rows:
            found = conn.execute(
                "SELECT * FROM reconciliations WHERE time_ms BETWEEN ? AND ? ORDER BY abs(time_ms - ?) LIMIT 1",
                (row["time_ms"] - 60_000, row["time_ms"] + 60_000, row["time_ms"]),
            ).fetchone()
            row["detail"] = None if found is None else dict(found)
    return rows


def pending_commands(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM commands WHERE status = 'pending' ORDER BY id")]


def add_command(path: str, command: str) -> int:
    """Queue a dashboard ``Command`` for the bot; returns its id.

    The only write the dashboard makes: a short connection of its own, one INSERT.
    """
    try:
        command = Command(command)
    except ValueError:
        raise ValueError(f"unknown command {command!r}") from None
    if not os.path.exists(path):
        raise StoreError(f"database {path}: no such file")
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        cur = conn.execute("INSERT INTO commands(created_ms, command) VALUES (?, ?)", (now_ms(), str(command)))
        return int(cur.lastrowid)
    finally:
        conn.close()


# ---- the writer thread -----------------------------------------------------------------------

_STOP = object()
_BATCH_MAX = 1000  # queued writes committed together at most
CHECKPOINT_EVERY_S = 1.0     # the checkpoint thread's pace (also: a power cut loses at most ~this much)
WAL_FALLBACK_PAGES = 10000   # the writer checkpoints itself only when the WAL grew past this (~40 MB)


def _damaged(exc: BaseException) -> bool:
    """The file itself is broken: no write can succeed until a person replaces it."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text
                                                       or "corrupt" in text)


def _transient(exc: BaseException) -> bool:
    """A locked, busy or full database: worth retrying, the write itself is fine."""
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc) for word in ("locked", "busy", "full", "disk I/O"))


class Writer:
    """The one writer: a thread that owns a ``Store`` and runs submitted calls in order.

    ``submit(fn, ...)`` returns a Future (await it with ``asyncio.wrap_future`` when the write
    must be committed before going on); ``post`` is fire-and-forget. Two lanes: with
    ``urgent=True`` a write goes to the **priority lane**, so what the order path waits for
    (an intent before it is sent, a fill) never queues behind heartbeats, events or candles;
    an urgent ``post`` lands before, or in the same transaction as, the next urgent write (a
    fill recorded together with the next order's intent). Within a lane, calls run in order.
    ``post(..., wake=False)`` queues without waking the thread: the write rides with the next
    one that does (the bot posts a transition's row or a fill that way and wakes the writer
    on the event loop's next turn, so the order's intent, queued in between, shares one
    commit and one thread hand-off with them).

    Checkpoints run on a thread of their own (``PRAGMA wal_checkpoint(PASSIVE)`` every
    ``CHECKPOINT_EVERY_S`` on its own connection, which never blocks the writer): copying
    the WAL into the file and its two fsyncs take ~4-7 ms, which the writer would otherwise
    spend inside whichever commit crossed SQLite's 1000-page threshold — often an order's
    intent (docs/database.md). The writer's own automatic checkpoint stays as a fallback at
    ``WAL_FALLBACK_PAGES``, for a WAL that a steady stream of writes keeps from being reset.

    Each call runs in a savepoint of its own; the calls queued at the moment are committed
    together (a burst costs one commit, so the queue cannot pile up). A priority write that
    arrives during a normal batch cuts the batch short at the next call boundary. A locked or
    full DB is retried with backoff, so writes wait instead of being lost, and the event loop
    is never blocked. A file that turns out damaged (``malformed``, ``not a database``) calls
    ``on_damaged`` with the one-line diagnosis: nothing can be recorded any more, so the bot
    must stop (exit 2) rather than trade unrecorded.
    """

    def __init__(self, path: str, on_error: Callable[[str], None] | None = None,
                 on_damaged: Callable[[str], None] | None = None) -> None:
        self.store = Store(path)
        self._urgent: collections.deque[Any] = collections.deque()
        self._normal: collections.deque[Any] = collections.deque()
        self._cv = threading.Condition(threading.Lock())
        self._on_error = on_error
        self.on_damaged = on_damaged
        self._stop_checkpoints = threading.Event()
        self._checkpointer: threading.Thread | None = None
        try:
            ckpt = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            ckpt.execute("PRAGMA cache_size = -64")  # it copies WAL frames; it needs no page cache
        except sqlite3.Error as exc:  # the writer keeps SQLite's own checkpoints
            log.warning("database checkpoints: cannot open a second connection to %s (%s); the writer "
                        "checkpoints itself", path, exc)
        else:
            self.store.conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_FALLBACK_PAGES}")
            self._checkpointer = threading.Thread(target=self._checkpoints, args=(ckpt,),
                                                  name="bollmin-db-checkpoint", daemon=True)
        self._thread = threading.Thread(target=self._run, name="bollmin-db-writer", daemon=True)
        self._thread.start()
        if self._checkpointer is not None:
            self._checkpointer.start()

    def _put(self, item: Any, urgent: bool, wake: bool = True) -> None:
        with self._cv:
            (self._urgent if urgent else self._normal).append(item)
            if wake:
                self._cv.notify()

    def wake(self) -> None:
        """Wake the thread for writes posted with ``wake=False`` (a no-op when there are none)."""
        with self._cv:
            if self._urgent or self._normal:
                self._cv.notify()

    def submit(self, fn: Callable[..., Any], *args: Any, urgent: bool = False,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(store, *args, **kwargs)``; the Future resolves after COMMIT (priority lane if ``urgent``)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put((fn, args, kwargs, fut), urgent)
        return fut

    def post(self, fn: Callable[..., Any], *args: Any, urgent: bool = False, wake: bool = True,
             **kwargs: Any) -> None:
        """Run ``fn(store, *args, **kwargs)`` later without waiting (normal lane unless ``urgent``;
        ``wake=False``: with the next write that wakes the thread, or at ``wake()``)."""
        self._put((fn, args, kwargs, None), urgent, wake)

    @property
    def backlog(self) -> int:
        return len(self._urgent) + len(self._normal)

    def close(self, timeout: float = 8.0) -> bool:
        """Flush what is queued, then stop. True when everything was written."""
        self._stop_checkpoints.set()
        self._put(_STOP, False)
        self._thread.join(timeout)
        if self._checkpointer is not None:
            self._checkpointer.join(1.0)
        done = not self._thread.is_alive()
        if done:
            self.store.close()
        return done

    def _take(self) -> tuple[list[Any], bool]:
        """The next batch: every priority write, else up to _BATCH_MAX normal ones."""
        with self._cv:
            while not self._urgent and not self._normal:
                self._cv.wait()
            if self._urgent:
                batch = list(self._urgent)
                self._urgent.clear()
                return batch, True
            batch = []
            while self._normal and len(batch) < _BATCH_MAX:
                batch.append(self._normal.popleft())
            return batch, False

    def _run(self) -> None:
        while True:
            batch, urgent = self._take()
            stop = _STOP in batch
            if stop:
                batch = batch[:batch.index(_STOP)]
            live = [item for item in batch if item[3] is None or item[3].set_running_or_notify_cancel()]
            if live:
                rest = self._run_batch(live, interruptible=not urgent)
                if rest:  # cut short by a priority write: put the rest back, in order, first in line
                    with self._cv:
                        self._normal.extendleft(reversed(rest))
            if stop:
                if self._urgent or self._normal:
                    self._put(_STOP, False)  # finish what was queued behind the cut first
                    continue
                return

    def _checkpoints(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the file every CHECKPOINT_EVERY_S, beside the writer (PASSIVE: it
        waits for nobody and nobody waits for it). A failure is logged once per run of
        failures; the next round and the writer's fallback checkpoint cover it."""
        reported = False
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_EVERY_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    reported = False
                except sqlite3.Error as exc:
                    if not reported:
                        log.warning("database checkpoint failed (%s); trying again", exc)
                        reported = True
        finally:
            conn.close()

    def _run_batch(self, batch: list[tuple[Any, ...]], interruptible: bool = False) -> list[tuple[Any, ...]]:
        """Run queued calls in one transaction, each in a savepoint of its own.

        A call that raises is rolled back alone (its future gets the error); a locked, busy or
        full DB rolls the whole batch back and retries it with backoff, so nothing is lost.
        Futures resolve only after COMMIT: "committed" means on disk. With ``interruptible``,
        a priority write arriving meanwhile ends the batch early; the calls not run are
        returned.
        """
        conn = self.store.conn
        delay = 0.05
        while True:
            results: list[tuple[bool, Any]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, args, kwargs, _fut in batch:
                    if interruptible and results and self._urgent:
                        break
                    conn.execute("SAVEPOINT one_write")
                    try:
                        value = fn(self.store, *args, **kwargs)
                    except Exception as exc:  # a bug or bad data in one write must not lose the others
                        if _transient(exc):
                            raise  # locked/busy/full: the whole batch is retried below
                        conn.execute("ROLLBACK TO one_write")
                        conn.execute("RELEASE one_write")
                        self._report(f"database write {getattr(fn, '__name__', fn)} failed: "
                                     f"{type(exc).__name__}: {exc}")
                        self._check_damaged(exc)
                        results.append((False, exc))
                        continue
                    conn.execute("RELEASE one_write")
                    results.append((True, value))
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _transient(exc):
                    self._report(f"database busy or full ({exc}); retrying {len(batch)} write(s) in {delay:.1f}s")
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                self._report(f"database write failed: {exc}")
                self._check_damaged(exc)
                for *_rest, fut in batch:
                    if fut is not None:
                        fut.set_exception(exc)
                return []
            done = len(results)
            for (*_rest, fut), (ok, value) in zip(batch[:done], results, strict=True):
                if fut is None:
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            return batch[done:]

    def _check_damaged(self, exc: BaseException) -> None:
        if self.on_damaged is not None and _damaged(exc):
            try:
                self.on_damaged(describe(self.store.path, exc))
            except Exception:  # reporting must never take the writer down
                log.exception("damaged-database callback failed")

    def _report(self, message: str) -> None:
        log.error(message)
        if self._on_error is not None:
            try:
                self._on_error(message)
            except Exception:  # reporting must never take the writer down
                log.exception("error callback failed")


# ---- strategy lab (sweep --db): writes and typed reads -----------------------------------------

def check_sweep_db(path: str) -> None:
    """Refuse the bot's own DB (its ``db_role`` is 'bot') before a sweep does any work."""
    if not os.path.exists(path):
        return
    if os.path.isdir(path):
        raise StoreError(f"database {path}: is a directory")
    conn = connect_readonly(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "status" not in tables:
            if tables:  # another program's database: refused now, not after the whole sweep has run
                raise StoreError(f"database {path}: the file is a SQLite database but not a bollmin one; "
                                 f"give --db a separate file for sweeps")
            role = None  # an empty file: write_sweep creates the schema
        else:
            role = conn.execute("SELECT value FROM status WHERE key = 'db_role'").fetchone()
    except sqlite3.DatabaseError as exc:  # not SQLite at all (a CSV given by mistake), or damaged
        raise StoreError(describe(path, exc)) from None
    finally:
        conn.close()
    if role is not None and role[0] not in ("backtest", "sweep"):
        raise StoreError(f"{path} holds the trading bot's data; give --db a separate file for sweeps")


def write_sweep(path: str, meta: dict[str, Any], ranked: list[dict[str, Any]], top: int) -> int:
    """Store one sweep (run, every set, the equity curves of the ``top`` best); returns the run id."""
    check_sweep_db(path)
    store = Store(path)
    conn = store.conn
    try:
        with store.transaction():
            if conn.execute("SELECT 1 FROM status WHERE key = 'db_role'").fetchone() is None:
                store.set_status({"db_role": "sweep"})
            run_id = int(conn.execute(
                "INSERT INTO sweep_runs(created_ms, source_file, symbol, first_open_time_ms, last_open_time_ms,"
                " file_interval_ms, sets, jobs, elapsed_s, rank_by, train_fraction, split_time_ms,"
                " trade_amount_usdt, fee_rate, funding_file, grid_json, verdict)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (now_ms(), meta["source_file"], meta["symbol"], meta["first_open_time_ms"],
                 meta["last_open_time_ms"], meta["file_interval_ms"], meta["sets"], meta["jobs"], meta["elapsed_s"],
                 meta["rank_by"], meta["train_fraction"], meta["split_time_ms"], meta["trade_amount_usdt"],
                 meta["fee_rate"], meta["funding_file"], json.dumps(meta["axes"]), "\n".join(meta["verdicts"])),
            ).lastrowid)
            cols = ["run_id", "rank", "interval", "boll_period", "boll_k", "evaluate_on", "breakout_buffer_pct",
                    "stop_cooldown_candles", "slippage_pct"]
            cols += [f"{p}{f}" for p in ("", "is_", "oos_") for f in _SWEEP_FIGURES] + ["summary_json"]
            sql = f"INSERT INTO sweep_results({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            for r in ranked:
                s = r["summary"]
                row = [run_id, r["rank"], s["interval"], s["boll_period"], s["boll_k"], s["evaluate_on"],
                       s["breakout_buffer_pct"], s["stop_cooldown_candles"], s["slippage_pct"]]
                for part in ("summary", "in_sample", "out_of_sample"):
                    figures = r.get(part) or {}
                    row += [figures.get(f) for f in _SWEEP_FIGURES]
                row.append(json.dumps(r["record"]))
                result_id = int(conn.execute(sql, row).lastrowid)
                if r["rank"] <= top:
                    curves = [("all", meta["day_end_ms"], r["daily_equity"])]
                    if "oos_daily_equity" in r:
                        curves.append(("oos", meta["oos_day_end_ms"], r["oos_daily_equity"]))
                    for part, times, values in curves:
                        conn.executemany(
                            "INSERT INTO sweep_equity(result_id, part, time_ms, equity_usdt) VALUES (?,?,?,?)",
                            [(result_id, part, int(t), float(v)) for t, v in zip(times, values, strict=True)])
        return run_id
    finally:
        store.close()


def read_sweep_runs(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """Stored sweeps, newest first (none in a file from before the sweep tables existed)."""
    if not table_exists(conn, "sweep_runs"):
        return []
    return [dict(r) for r in conn.execute("SELECT * FROM sweep_runs ORDER BY id DESC LIMIT ?", (limit,))]


def read_sweep_results(conn: sqlite3.Connection, run_id: int, limit: int | None = None) -> list[dict[str, Any]]:
    """The parameter sets of one sweep, best first (without ``summary_json``; see ``read_sweep_record``)."""
    if not table_exists(conn, "sweep_results"):
        return []
    sql = "SELECT * FROM sweep_results WHERE run_id = ? ORDER BY rank"
    args: list[Any] = [run_id]
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    rows = [dict(r) for r in conn.execute(sql, args)]
    for row in rows:
        row.pop("summary_json", None)
    return rows


def read_sweep_record(conn: sqlite3.Connection, result_id: int) -> dict[str, Any] | None:
    """One set's whole ``sweep --json`` line (every figure, in- and out-of-sample included)."""
    row = conn.execute("SELECT summary_json FROM sweep_results WHERE id = ?", (result_id,)).fetchone()
    return None if row is None else json.loads(row[0])


def read_sweep_equity(conn: sqlite3.Connection, run_id: int, part: str = "all") -> dict[int, list[tuple[int, float]]]:
    """Equity curves of the best sets of a sweep: {result id: [(time_ms, equity_usdt), ...]} (part 'all' or 'oos')."""
    curves: dict[int, list[tuple[int, float]]] = {}
    for r in conn.execute(
        "SELECT e.result_id, e.time_ms, e.equity_usdt FROM sweep_equity e JOIN sweep_results s ON s.id = e.result_id"
        " WHERE s.run_id = ? AND e.part = ? ORDER BY s.rank, e.time_ms",
        (run_id, part),
    ):
        curves.setdefault(int(r[0]), []).append((int(r[1]), float(r[2])))
    return curves


def read_sweep_curves(conn: sqlite3.Connection, result_ids: Sequence[int],
                      part: str = "all") -> dict[int, list[tuple[int, float]]]:
    """The stored equity curves (``[(time_ms, equity_usdt)]``, oldest first) of the sets asked for;
    a set without a stored curve (not among the sweep's ``--top``) gets an empty list."""
    ids = [int(i) for i in result_ids]
    out: dict[int, list[tuple[int, float]]] = {i: [] for i in ids}
    if not ids or not table_exists(conn, "sweep_equity"):
        return out
    rows = conn.execute(
        f"SELECT result_id, time_ms, equity_usdt FROM sweep_equity WHERE part = ? AND result_id IN "
        f"({','.join('?' * len(ids))}) ORDER BY result_id, time_ms", (part, *ids))
    for rid, t, v in rows:
        out[int(rid)].append((int(t), float(v)))
    return out
