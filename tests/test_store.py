"""SQLite storage (docs/database.md): real files, the schema's version, the one writer, the sqlite3 CLI."""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time

import pytest
from support.cli import run_bollmin

import store
from history import Candle
from store import SCHEMA_VERSION, Store, StoreError, Writer

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_queries() -> list[tuple[list[str], str]]:
    """The sqlite3 commands README.md gives users (options, SQL), read from the README itself."""
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    found = re.findall(r'^sqlite3 ((?:-\w+ )*)data/bollmin\.db \\\n\s*"(.*?)"', text, flags=re.M | re.S)
    return [(opts.split(), sql) for opts, sql in found]


def parse_column_output(out: str) -> list[dict[str, str]]:
    """Rows of ``sqlite3 -header -column`` output, cut at the widths its dashed line shows."""
    header, dashes, *rows = out.rstrip("\n").splitlines()
    spans, pos = [], 0
    for dash in dashes.split("  "):
        spans.append((pos, pos + len(dash)))
        pos += len(dash) + 2
    names = [header[a:b].strip() for a, b in spans]
    return [{n: row[a:b].strip() for n, (a, b) in zip(names, spans, strict=True)} for row in rows]


def pragma(conn: sqlite3.Connection, name: str):
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def test_a_new_file_is_set_up_and_migrated(tmp_path):
    path = tmp_path / "sub" / "bollmin.db"
    s = Store(str(path))
    try:
        assert path.exists()
        assert pragma(s.conn, "journal_mode") == "wal"
        assert pragma(s.conn, "foreign_keys") == 1
        assert pragma(s.conn, "busy_timeout") >= 1000
        assert pragma(s.conn, "user_version") == SCHEMA_VERSION
        tables = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        assert {"candles", "orders", "fills", "transitions", "events", "status", "commands", "trades"} <= tables
        events_cols = [r[1] for r in s.conn.execute("PRAGMA table_info(events)")]
        assert {"time_ms", "level", "message"} <= set(events_cols)
        assert store.read_status(s.conn)["db_id"]
    finally:
        s.close()
    other = sqlite3.connect(path)  # WAL is a property of the file: a plain second connection sees it
    assert pragma(other, "journal_mode") == "wal"
    other.close()


def test_foreign_keys_are_enforced(tmp_path):
    s = Store(str(tmp_path / "fk.db"))
    with pytest.raises(sqlite3.IntegrityError):
        s.add_fill(999, 1, 1.0, 1.0, 0.0, 0.0, True)  # no such order
    s.close()


def test_migrating_twice_is_a_no_op(tmp_path):
    path = str(tmp_path / "m.db")
    s = Store(path)
    s.add_event("INFO", "first run", 1)
    db_id = store.read_status(s.conn)["db_id"]
    schema = s.conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    store.migrate(s.conn)
    s.close()
    s = Store(path)
    assert pragma(s.conn, "user_version") == SCHEMA_VERSION
    assert s.conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() == schema
    assert store.read_status(s.conn)["db_id"] == db_id
    assert [r["message"] for r in store.read_events(s.conn)] == ["first run"]
    s.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "new.db")
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_a_sqlite_file_of_another_program_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO photos(name) VALUES ('cat.jpg')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a bollmin one"):
        Store(str(path))
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("photos",)]
    assert pragma(conn, "user_version") == 0
    conn.close()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("this is not a database, these are my notes\n" * 200)
    with pytest.raises(StoreError):
        Store(str(path))


def test_read_only_connection_cannot_write(tmp_path):
    path = str(tmp_path / "ro.db")
    s = Store(path)
    s.add_event("INFO", "written by the bot", 1)
    s.close()
    ro = store.connect_readonly(path)
    assert [r["message"] for r in store.read_events(ro)] == ["written by the bot"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("INSERT INTO events(time_ms, level, message) VALUES (2, 'INFO', 'dashboard')")
    with pytest.raises(sqlite3.OperationalError):
        ro.execute("DELETE FROM events")
    ro.close()
    with pytest.raises(StoreError, match="no such file"):
        store.connect_readonly(str(tmp_path / "missing.db"))


def test_add_command_inserts_a_pending_command(tmp_path):
    path = str(tmp_path / "cmd.db")
    Store(path).close()
    cid = store.add_command(path, "pause")
    store.add_command(path, "close_position")
    ro = store.connect_readonly(path)
    pending = store.pending_commands(ro)
    ro.close()
    assert [(c["id"], c["command"], c["status"]) for c in pending][0] == (cid, "pause", "pending")
    assert [c["command"] for c in pending] == ["pause", "close_position"]
    with pytest.raises(ValueError):
        store.add_command(path, "drop_tables")
    with pytest.raises(StoreError):
        store.add_command(str(tmp_path / "missing.db"), "pause")


# ---- the writer ----------------------------------------------------------------------------------

def _event(s: Store, message: str) -> int:
    s.add_event("INFO", message, 1)
    return s.conn.execute("SELECT max(id) FROM events").fetchone()[0]


def test_writer_keeps_order_and_resolves_futures_after_commit(tmp_path):
    path = str(tmp_path / "w.db")
    w = Writer(path)
    try:
        futures = []
        for i in range(60):
            if i % 3 == 0:
                futures.append((i, w.submit(_event, f"m{i}")))
            else:
                w.post(_event, f"m{i}")
        for i, fut in futures:
            row_id = fut.result(timeout=10)
            reader = sqlite3.connect(path)  # another connection: the row is committed
            assert reader.execute("SELECT message FROM events WHERE id = ?", (row_id,)).fetchone() == (f"m{i}",)
            reader.close()
    finally:
        assert w.close()
    reader = sqlite3.connect(path)
    messages = [r[0] for r in reader.execute("SELECT message FROM events ORDER BY id")]
    reader.close()
    assert messages == [f"m{i}" for i in range(60)]


def test_writer_failure_reaches_the_future_and_the_writer_goes_on(tmp_path):
    errors: list[str] = []
    w = Writer(str(tmp_path / "e.db"), on_error=errors.append)
    try:
        def broken(s: Store) -> None:
            s.add_event("INFO", "half done", 1)
            raise RuntimeError("bug in a write function")

        fut = w.submit(broken)
        with pytest.raises(RuntimeError):
            fut.result(timeout=10)
        assert w.submit(_event, "after").result(timeout=10)
    finally:
        w.close()
    reader = sqlite3.connect(tmp_path / "e.db")
    assert [r[0] for r in reader.execute("SELECT message FROM events")] == ["after"]  # the broken one rolled back
    reader.close()
    assert any("bug in a write function" in e for e in errors)


def test_writer_waits_out_a_locked_database_and_loses_nothing(tmp_path):
    path = str(tmp_path / "locked.db")
    errors: list[str] = []
    w = Writer(path, on_error=errors.append)
    # Make the writer give up on the lock quickly so that its own retry loop (not SQLite's busy wait)
    # carries the writes through the lock.
    w.submit(lambda s: s.conn.execute("PRAGMA busy_timeout = 50")).result(timeout=10)
    locker = sqlite3.connect(path, isolation_level=None, timeout=0.1, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release_later() -> None:
        time.sleep(1.0)
        locker.execute("COMMIT")
        locker.close()
        released.set()

    threading.Thread(target=release_later).start()
    try:
        futures = [w.submit(_event, f"during lock {i}") for i in range(5)]
        for i in range(5):
            w.post(_event, f"posted {i}")
        for fut in futures:
            fut.result(timeout=20)
        assert released.is_set()  # they could only complete after the lock was gone
    finally:
        assert w.close()
    reader = sqlite3.connect(path)
    messages = [r[0] for r in reader.execute("SELECT message FROM events ORDER BY id")]
    reader.close()
    assert messages == [f"during lock {i}" for i in range(5)] + [f"posted {i}" for i in range(5)]
    assert any("retrying" in e for e in errors)


def test_writer_close_flushes_the_queue(tmp_path):
    path = str(tmp_path / "flush.db")
    w = Writer(path)
    for i in range(500):
        w.post(_event, f"e{i}")
    assert w.close()
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT count(*), max(message) FROM events WHERE message LIKE 'e%'").fetchone()[0] == 500
    reader.close()


def test_store_writes_and_reads(tmp_path):
    s = Store(str(tmp_path / "rw.db"))
    with s.transaction():
        s.add_candles("BTCUSDT", "15m", 900_000, [Candle(0, 1.0, 2.0, 0.5, 1.5, 10.0),
                                                  Candle(900_000, 1.5, 2.5, 1.0, 2.0, 11.0)])
        tid = s.add_transition(5, "FLAT", "FLAT_ABOVE_UP", 2.4, (2.3, 1.5, 0.7))
        oid = s.add_order(client_order_id="bm-x-1-o", transition_id=tid, time_ms=5, symbol="BTCUSDT",
                          action="open_short", reason="entry", side="SELL", qty=0.01, reduce_only=False,
                          paper=True, tick_price=2.4)
        s.update_order("bm-x-1-o", status="filled", fill_price=2.4, filled_qty=0.01, fee_usdt=0.001)
        s.add_fill(oid, 5, 2.4, 0.01, 0.001, 0.0, True)
        s.set_status({"state": "SHORT", "price": 2.4})
    assert store.read_candles(s.conn, "BTCUSDT", "15m", 1) == [Candle(900_000, 1.5, 2.5, 1.0, 2.0, 11.0)]
    close_time = s.conn.execute("SELECT close_time_ms FROM candles WHERE open_time_ms = 0").fetchone()[0]
    assert close_time == 899_999
    (t,) = store.read_trades(s.conn)
    j = store.trade_json(t)
    assert (j["action"], j["price"], j["qty"], j["fee_usdt"], j["paper"], j["client_order_id"]) == (
        "open_short", 2.4, 0.01, 0.001, True, "bm-x-1-o")
    assert store.read_status(s.conn)["state"] == "SHORT"
    with pytest.raises(ValueError):
        s.update_order("bm-x-1-o", sneaky="1")
    with pytest.raises(sqlite3.IntegrityError):  # the schema refuses an action the strategy never takes
        s.add_order(client_order_id="bm-x-2-o", transition_id=None, time_ms=6, symbol="BTCUSDT",
                    action="buy_everything", reason="entry", side="BUY", qty=1.0, reduce_only=False,
                    paper=True, tick_price=1.0)
    s.close()


# ---- the sqlite3 CLI on a DB made by `backtest --db` -------------------------------------------------

@pytest.fixture(scope="module")
def backtest_db(tmp_path_factory, candles_15m_2023):
    d = tmp_path_factory.mktemp("backtest_db")
    klines = d / "slice.csv"
    rows = ["open_time_ms,open,high,low,close"] + [
        f"{c.open_time_ms},{c.open},{c.high},{c.low},{c.close}" for c in candles_15m_2023[:1500]]
    klines.write_text("\n".join(rows) + "\n")
    cfg = d / "config.py"
    cfg.write_text(f"DB_PATH = {str(d / 'bot.db')!r}\nLOG_FILE = {str(d / 'bot.log')!r}\n")
    db = d / "bt.db"
    r = run_bollmin("backtest", "--config", str(cfg), "--klines", str(klines), "--json", "--db", str(db))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    return db, lines[:-1], lines[-1]["summary"]


def sqlite3_cli(db, opts: list[str], sql: str) -> list[dict[str, str]]:
    r = subprocess.run(["sqlite3", *opts, str(db), sql], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return parse_column_output(r.stdout)


def test_readme_has_the_three_queries():
    queries = readme_queries()
    assert len(queries) == 3
    assert all(opts == ["-header", "-column"] for opts, _sql in queries)


NEEDS_CLI = pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 CLI (apt-get install sqlite3)")


@NEEDS_CLI
def test_readme_last_trades_query(backtest_db):
    db, actions, _summary = backtest_db
    opts, sql = readme_queries()[0]
    rows = sqlite3_cli(db, opts, sql)
    assert len(rows) == 20 and len(actions) > 20
    newest_first = list(reversed(actions))[:20]
    for row, a in zip(rows, newest_first, strict=True):
        assert row["action"] == a["action"] and row["reason"] == a["reason"]
        assert float(row["price"]) == a["price"] and row["paper"] == "1"
        assert row["time_utc"] == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a["time_ms"] // 1000))
        assert float(row["qty"]) > 0 and float(row["fee_usdt"]) > 0
        assert (row["realized_pnl_usdt"] == "") == a["action"].startswith("open")


@NEEDS_CLI
def test_readme_daily_pnl_query(backtest_db):
    db, actions, _summary = backtest_db
    opts, sql = readme_queries()[1]
    (today,) = sqlite3_cli(db, opts, sql)  # a 2023 backtest has nothing "today"
    assert (float(today["net_pnl_usdt"]), today["orders"]) == (0.0, "0")
    # the same query for the last day of the data adds up that day's fills
    last_day = time.strftime("%Y-%m-%d", time.gmtime(actions[-1]["time_ms"] // 1000))
    assert sql.count("'now'") == 1
    (day,) = sqlite3_cli(db, opts, sql.replace("'now'", f"'{last_day}'"))
    conn = sqlite3.connect(db)
    pnl, fees, n = conn.execute(
        "SELECT sum(realized_pnl_usdt), sum(fee_usdt), count(*) FROM fills WHERE time_ms >= ?",
        (calendar.timegm(time.strptime(last_day, "%Y-%m-%d")) * 1000,)).fetchone()
    conn.close()
    assert int(day["orders"]) == n == sum(a["time_ms"] // 86_400_000 == actions[-1]["time_ms"] // 86_400_000
                                          for a in actions)
    assert float(day["net_pnl_usdt"]) == pytest.approx(pnl - fees, abs=1e-4)


@NEEDS_CLI
def test_readme_status_query(backtest_db):
    db, _actions, summary = backtest_db
    opts, sql = readme_queries()[2]
    status = {row["key"]: row["value"] for row in sqlite3_cli(db, opts, sql)}
    assert status["state"] == summary["final_state"] and status["mode"] == "BACKTEST"
    assert float(status["band_dn"]) < float(status["band_mid"]) < float(status["band_up"])
    assert float(status["position_qty"]) == pytest.approx(summary["open_position_qty"])  # signed: < 0 short


def test_writer_batch_a_failing_write_loses_nothing_else(tmp_path):
    """Writes queued together commit together, but one that raises is rolled back alone."""
    import time as _time

    path = str(tmp_path / "batch.db")
    writer = store.Writer(path)
    try:
        writer.post(lambda s: _time.sleep(0.3))  # holds the writer so the next ones queue up as one batch
        good1 = writer.submit(store.Store.add_event, "INFO", "first")
        bad = writer.submit(lambda s: s.conn.execute("INSERT INTO no_such_table VALUES (1)"))
        good2 = writer.submit(store.Store.add_event, "INFO", "second")
        good1.result(10)
        good2.result(10)
        with pytest.raises(sqlite3.OperationalError):
            bad.result(10)
    finally:
        assert writer.close()
    conn = store.connect_readonly(path)
    try:
        assert [r[0] for r in conn.execute("SELECT message FROM events ORDER BY id")] == ["first", "second"]
    finally:
        conn.close()


def test_urgent_writes_overtake_queued_normal_ones_and_keep_their_own_order(tmp_path):
    """The priority lane: an order intent never waits behind a pile of heartbeats and events."""
    path = str(tmp_path / "u.db")
    w = Writer(path)
    gate = threading.Event()
    try:
        w.post(lambda s: gate.wait(10))  # hold the writer so that both lanes fill up
        for i in range(500):
            w.post(_event, f"n{i}")
        w.post(_event, "u0", urgent=True)
        last = w.submit(_event, "u1", urgent=True)
        gate.set()
        last.result(timeout=10)
    finally:
        assert w.close()
    reader = sqlite3.connect(path)
    messages = [r[0] for r in reader.execute("SELECT message FROM events ORDER BY id")]
    reader.close()
    assert messages[:2] == ["u0", "u1"], "urgent writes go first, in their own order"
    assert messages[2:] == [f"n{i}" for i in range(500)], "normal writes keep their order and none is lost"


def test_an_urgent_write_cuts_a_long_normal_batch_short(tmp_path):
    path = str(tmp_path / "c.db")
    w = Writer(path)
    hold, started, gate = threading.Event(), threading.Event(), threading.Event()
    try:
        def slow_first(s):
            started.set()
            gate.wait(10)

        w.post(lambda s: hold.wait(10))  # a batch of its own while the next one is queued whole
        w.post(slow_first)
        for i in range(300):
            w.post(_event, f"n{i}")
        hold.set()
        assert started.wait(10)  # the writer is inside the batch [slow_first, n0 .. n299] now
        fut = w.submit(_event, "urgent", urgent=True)
        gate.set()
        row_id = fut.result(timeout=10)
    finally:
        assert w.close()
    reader = sqlite3.connect(path)
    messages = [r[0] for r in reader.execute("SELECT message FROM events ORDER BY id")]
    reader.close()
    assert row_id == 1 and messages[0] == "urgent", "committed at the next write boundary, not after the batch"
    assert messages[1:] == [f"n{i}" for i in range(300)]


def test_a_database_that_breaks_while_running_is_reported_once_as_damaged(tmp_path):
    """The bot stops (exit 2) on this callback: it must not go on trading with nothing recorded."""
    damaged: list[str] = []
    errors: list[str] = []
    w = Writer(str(tmp_path / "d.db"), on_error=errors.append, on_damaged=damaged.append)
    try:
        def broken_file(s):
            raise sqlite3.DatabaseError("database disk image is malformed")

        fut = w.submit(broken_file)
        with pytest.raises(sqlite3.DatabaseError):
            fut.result(timeout=10)
        fine = w.submit(_event, "still written")  # a plain bug in one write is not "damaged"
        fine.result(timeout=10)
    finally:
        w.close()
    assert len(damaged) == 1 and "is damaged" in damaged[0] and "move" in damaged[0]
    assert str(tmp_path / "d.db") in damaged[0]


def test_a_post_without_wake_waits_and_then_shares_the_next_writes_commit(tmp_path):
    """How the bot records a transition or a fill: queued without waking the writer, so the
    order intent that follows is committed with it (one commit, one thread hand-off)."""
    path = str(tmp_path / "w.db")
    w = Writer(path)
    statements: list[str] = []
    try:
        w.submit(lambda s: s.conn.set_trace_callback(statements.append)).result(timeout=10)
        statements.clear()
        w.post(_event, "transition", urgent=True, wake=False)
        time.sleep(0.3)
        reader = sqlite3.connect(path)
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 0, "not woken: not written yet"
        w.submit(_event, "intent", urgent=True).result(timeout=10)
        assert [r[0] for r in reader.execute("SELECT message FROM events ORDER BY id")] == ["transition", "intent"]
        assert sum(s == "COMMIT" for s in statements) == 1, "one transaction for both"
        w.post(_event, "fill", urgent=True, wake=False)
        w.wake()  # what the bot does on the event loop's next turn
        deadline = time.monotonic() + 10
        while reader.execute("SELECT count(*) FROM events").fetchone()[0] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reader.execute("SELECT message FROM events ORDER BY id DESC").fetchone()[0] == "fill"
        reader.close()
    finally:
        assert w.close()


def test_checkpoints_run_beside_the_writer(tmp_path):
    """The WAL is copied into the file by the checkpoint thread (every CHECKPOINT_EVERY_S), not
    inside the writer's commits: the writer's own automatic checkpoint is only a fallback."""
    path = str(tmp_path / "c.db")
    w = Writer(path)
    try:
        assert w.submit(lambda s: s.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]).result(10) \
            == store.WAL_FALLBACK_PAGES
        for i in range(200):
            w.post(_event, f"e{i}")
        w.submit(lambda s: None).result(timeout=10)
        copy = tmp_path / "copy.db"
        deadline = time.monotonic() + store.CHECKPOINT_EVERY_S * 10
        found = 0
        while time.monotonic() < deadline and found < 200:
            time.sleep(store.CHECKPOINT_EVERY_S / 2)
            shutil.copyfile(path, copy)  # the main file alone, without its WAL
            conn = sqlite3.connect(copy)
            try:
                found = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            except sqlite3.OperationalError:  # not even the schema is in the main file yet
                found = 0
            conn.close()
            copy.unlink()
        assert found == 200, "the main file holds every write while the writer is still open"
    finally:
        assert w.close()
