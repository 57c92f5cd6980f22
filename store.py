"""SQLite storage: schema and migrations, the single writer, and the read helpers.

One file (``DB_PATH``), stdlib ``sqlite3``, WAL. The bot is the only writer of trading data;
it writes through ``Writer`` (one thread, off the event loop). The dashboard opens the file
read-only and may only add rows to ``commands``. Every table is meant to be read with the
``sqlite3`` CLI, so names say what things are and times are epoch milliseconds (``*_ms``).

Schema versions are ``PRAGMA user_version``; each migration runs inside one explicit
transaction (not ``executescript``, which commits on its own).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
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



class Command(StrEnum):
    """What the dashboard may ask of the bot: one row in ``commands``, carried out by the bot.

    The one list of command names (the schema's CHECK spells the same three).
    """

    PAUSE = "pause"                    # no new entries; an open position is kept
    RESUME = "resume"                  # entries allowed again
    CLOSE_POSITION = "close_position"  # close the open position now at market


MIGRATIONS: tuple[tuple[str, ...], ...] = (SCHEMA_V1,)  # index i upgrades user_version i -> i+1
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The DB cannot be used (wrong file, newer schema, unwritable). One-line message."""


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
    """A read-write connection with the schema migrated to the current version."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        _setup(conn, readonly=False)
        migrate(conn)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"database {path}: {exc}") from None
    except OSError as exc:
        raise StoreError(f"database {path}: {exc.strerror or exc}") from None
    return conn


def connect_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``): it can never change trading data."""
    if not os.path.exists(path):
        raise StoreError(f"database {path}: no such file")
    uri = "file:" + os.path.abspath(path) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
        return _setup(conn, readonly=True)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"database {path}: {exc}") from None


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
        return _Tx(self.conn)

    # ---- writes ---------------------------------------------------------------------------
    def add_candles(self, symbol: str, interval: str, step_ms: int, candles: Iterable[Candle]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO candles(symbol, interval, open_time_ms, open, high, low, close, volume,"
            " close_time_ms) VALUES (?,?,?,?,?,?,?,?,?)",
            [(symbol, interval, c.open_time_ms, c.open, c.high, c.low, c.close, c.volume,
              c.open_time_ms + step_ms - 1) for c in candles],
        )

    def add_transition(self, time_ms: int, from_state: str, to_state: str, price: float,
                       bands: Sequence[float] | None, cause: str = "tick") -> int:
        up, mid, dn = bands if bands is not None else (None, None, None)
        cur = self.conn.execute(
            "INSERT INTO transitions(time_ms, from_state, to_state, price, band_up, band_mid, band_dn, cause)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (time_ms, str(from_state), str(to_state), price, up, mid, dn, cause),
        )
        return int(cur.lastrowid)

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
        for table in ("fills", "orders", "transitions", "events", "candles", "commands"):
            self.conn.execute(f"DELETE FROM {table}")
        self.conn.execute("DELETE FROM status WHERE key != 'db_id'")


class _Tx:
    """``with store.transaction():`` — BEGIN IMMEDIATE … COMMIT, ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


# ---- reads (any connection, read-only included) ---------------------------------------------

def read_status(conn: sqlite3.Connection) -> dict[str, str]:
    """The status table as a dict of text values."""
    return {r["key"]: r["value"] for r in conn.execute("SELECT key, value FROM status")}


def read_candles(conn: sqlite3.Connection, symbol: str, interval: str, limit: int) -> list[Candle]:
    """The newest ``limit`` stored candles, oldest first."""
    rows = conn.execute(
        "SELECT open_time_ms, open, high, low, close, volume FROM candles WHERE symbol = ? AND interval = ?"
        " ORDER BY open_time_ms DESC LIMIT ?",
        (symbol, interval, limit),
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


def trade_json(row: dict[str, Any]) -> dict[str, Any]:
    """One order as the ``trades --json`` object (SPEC §7)."""
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


def read_reconciliations(conn: sqlite3.Connection, since_ms: int, limit: int = 5) -> list[dict[str, Any]]:
    """Position mismatches found by reconciliation since ``since_ms``, newest first.

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


# Strategy-lab results written by ``bollmin.py sweep --db``. Three tables, any of which may be
# missing (an older file, or no sweep stored yet); every helper then returns nothing:
#   sweep_runs(id, created_ms, klines_file, symbol, candles, first_open_ms, last_open_ms,
#              train_fraction, settings_json)
#   sweep_results(id, run_id, interval, boll_period, boll_k, trades, net_pnl_usdt, fees_usdt,
#                 win_rate, max_drawdown_usdt, and with --train-fraction is_net_pnl_usdt,
#                 oos_net_pnl_usdt, oos_trades, oos_max_drawdown_usdt)
#   sweep_equity(result_id, time_ms, equity_usdt)   -- cumulative net PnL of a stored set
# Every column named here is in each returned dict (None when the table lacks it); columns beyond
# these are passed through as they are.
SWEEP_RUN_COLUMNS = ("id", "created_ms", "klines_file", "symbol", "candles", "first_open_ms", "last_open_ms",
                     "train_fraction", "settings_json")
SWEEP_RESULT_COLUMNS = ("id", "run_id", "interval", "boll_period", "boll_k", "trades", "net_pnl_usdt", "fees_usdt",
                        "win_rate", "max_drawdown_usdt", "is_net_pnl_usdt", "oos_net_pnl_usdt", "oos_trades",
                        "oos_max_drawdown_usdt")


def read_sweep_runs(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """Stored sweeps, newest first, each with ``sets`` (how many parameter sets it has)."""
    if not (table_exists(conn, "sweep_runs") and table_exists(conn, "sweep_results")):
        return []
    rows = conn.execute(
        "SELECT r.*, (SELECT count(*) FROM sweep_results s WHERE s.run_id = r.id) AS sets"
        " FROM sweep_runs r ORDER BY r.id DESC LIMIT ?", (limit,),
    ).fetchall()
    return [dict.fromkeys(SWEEP_RUN_COLUMNS) | dict(r) for r in rows]


def read_sweep_results(conn: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    """Every parameter set of sweep ``run_id``, best net PnL first."""
    if not table_exists(conn, "sweep_results"):
        return []
    rows = conn.execute("SELECT * FROM sweep_results WHERE run_id = ? ORDER BY net_pnl_usdt DESC, id",
                        (run_id,)).fetchall()
    return [dict.fromkeys(SWEEP_RESULT_COLUMNS) | dict(r) for r in rows]


def read_sweep_equity(conn: sqlite3.Connection, result_ids: Sequence[int]) -> dict[int, list[tuple[int, float]]]:
    """The stored equity curve (``(time_ms, cumulative net PnL)``, oldest first) of each set asked for."""
    if not result_ids or not table_exists(conn, "sweep_equity"):
        return {}
    ids = [int(i) for i in result_ids]
    rows = conn.execute(
        f"SELECT result_id, time_ms, equity_usdt FROM sweep_equity WHERE result_id IN ({','.join('?' * len(ids))})"
        " ORDER BY result_id, time_ms", ids,
    ).fetchall()
    out: dict[int, list[tuple[int, float]]] = {i: [] for i in ids}
    for rid, t, v in rows:
        out[int(rid)].append((int(t), float(v)))
    return out


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


def _transient(exc: BaseException) -> bool:
    """A locked, busy or full database: worth retrying, the write itself is fine."""
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc) for word in ("locked", "busy", "full", "disk I/O"))


class Writer:
    """The one writer: a thread that owns a ``Store`` and runs submitted calls in order.

    ``submit(fn, ...)`` returns a Future (await it with ``asyncio.wrap_future`` when the write
    must be committed before going on, e.g. an order intent); ``post`` is fire-and-forget.
    Each call runs in a savepoint of its own; the calls queued at the moment are committed
    together (a burst costs one commit, so the queue cannot pile up). A locked or full DB is
    retried with backoff, so writes wait instead of being lost, and the event loop is never
    blocked.
    """

    def __init__(self, path: str, on_error: Callable[[str], None] | None = None) -> None:
        self.store = Store(path)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name="bollmin-db-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(store, *args, **kwargs)`` in one transaction on the writer thread."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fn, args, kwargs, fut))
        return fut

    def post(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._queue.put((fn, args, kwargs, None))

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 8.0) -> bool:
        """Flush what is queued, then stop. True when everything was written."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        done = not self._thread.is_alive()
        if done:
            self.store.close()
        return done

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < _BATCH_MAX:  # a burst of writes goes in one transaction
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            if stop:
                batch = batch[:batch.index(_STOP)]
            live = [item for item in batch if item[3] is None or item[3].set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)
            if stop:
                return

    def _run_batch(self, batch: list[tuple[Any, ...]]) -> None:
        """Run queued calls in one transaction, each in a savepoint of its own.

        A call that raises is rolled back alone (its future gets the error); a locked, busy or
        full DB rolls the whole batch back and retries it with backoff, so nothing is lost.
        Futures resolve only after COMMIT: "committed" means on disk.
        """
        conn = self.store.conn
        delay = 0.05
        while True:
            results: list[tuple[bool, Any]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, args, kwargs, _fut in batch:
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
                for *_rest, fut in batch:
                    if fut is not None:
                        fut.set_exception(exc)
                return
            for (*_rest, fut), (ok, value) in zip(batch, results, strict=True):
                if fut is None:
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            return

    def _report(self, message: str) -> None:
        log.error(message)
        if self._on_error is not None:
            try:
                self._on_error(message)
            except Exception:  # reporting must never take the writer down
                log.exception("error callback failed")
