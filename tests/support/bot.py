"""The real bot process (``python bollmin.py run``) for end-to-end tests, and reading its DB."""

from __future__ import annotations

import csv
import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from simexchange import SimExchangeThread
from support.env import clean_env
from support.paths import MARKET_1M, ROOT
from support.sim import API_KEY, API_SECRET, ctl


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the DB may not exist yet, etc.
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})"
                                                                             if last_exc else ""))


def write_config(path: str, **values: Any) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for k, v in values.items():
            fh.write(f"{k} = {v!r}\n")
    return path


def query(db_path: str, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def tail(path: str, lines: int) -> str:
    """The last ``lines`` lines of a text file (a process's stderr); "" when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


def status(db_path: str) -> dict[str, str]:
    return {r["key"]: r["value"] for r in query(db_path, "SELECT key, value FROM status")}


class Bot:
    """``python bollmin.py run`` as a subprocess with its own config file in ``workdir``."""

    def __init__(self, workdir: str, base_url: str, ws_url: str, *, paper: bool = True, env: dict | None = None,
                 **settings: Any) -> None:
        self.workdir = workdir
        self.db = os.path.join(workdir, "bot.db")
        self.log = os.path.join(workdir, "bot.log")
        values = {
            "INTERVAL": "1m", "REST_BASE_URL": base_url, "WS_BASE_URL": ws_url, "DB_PATH": self.db,
            "LOG_FILE": self.log, "AUTO_RESTART": False, "PAPER_TRADING": paper, "WS_STALL_SECONDS": 10.0,
            "REST_TIMEOUT_SECONDS": 3.0,
        }
        if not paper:
            values.update(API_KEY=API_KEY, API_SECRET=API_SECRET)
        values.update(settings)
        self.config = write_config(os.path.join(workdir, "config.py"), **values)
        self.env = clean_env(**(env or {}))
        self.proc: subprocess.Popen | None = None
        self.stderr_path = os.path.join(workdir, "stderr.txt")

    def start(self, extra_env: dict | None = None) -> Bot:
        env = dict(self.env, **(extra_env or {}))
        self._stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bollmin.py"), "run", "--config",
                                      self.config], cwd=self.workdir, env=env, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr)
        return self

    def status(self) -> dict[str, str]:
        return status(self.db)

    def wait_status(self, predicate: Callable[[dict[str, str]], Any], timeout: float, what: str) -> dict[str, str]:
        def check() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"bot exited with {self.proc.returncode} while waiting for {what}:\n"
                                     + self.stderr_tail())
            st = self.status()
            return st if predicate(st) else None

        return wait_for(check, timeout, what)

    def wait_connected(self, timeout: float = 60) -> dict[str, str]:
        return self.wait_status(lambda s: s.get("connection") == "connected", timeout, "the bot to connect")

    def stop(self, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            self._stderr.close()

    def stderr_tail(self, lines: int = 30) -> str:
        return tail(self.stderr_path, lines)

    def log_text(self) -> str:
        with open(self.log, encoding="utf-8") as fh:
            return fh.read()

    def orders(self) -> list[sqlite3.Row]:
        return query(self.db, "SELECT * FROM orders ORDER BY id")

    def fills_per_order(self) -> dict[str, int]:
        rows = query(self.db, "SELECT o.client_order_id AS cid, count(f.id) AS n FROM orders o "
                              "LEFT JOIN fills f ON f.order_id = o.id GROUP BY o.id")
        return {r["cid"]: r["n"] for r in rows}


COMPARED = {  # what a paper run and a backtest of the same ticks must agree on, row for row
    "transitions": "SELECT time_ms, from_state, to_state, price FROM transitions WHERE cause IN ('tick','backtest') "
                   "ORDER BY id",
    "orders": "SELECT time_ms, action, reason, fill_price FROM orders ORDER BY id",
}


def paper_run_and_backtest(tmp_path: Any, days: int, drop: Sequence[int] = (), **settings: Any) -> tuple[dict, dict]:
    """The first ``days`` days of the bundled 1m data (after 19 candles of history) through a paper
    ``run`` against the simulated exchange at full speed, then through ``backtest`` with the same
    settings: for each, {"transitions": [(time_ms, from_state, to_state, price) of the table's
    transitions], "orders": [(time_ms, action, reason, fill_price)]}. ``drop``: rows left out (candles
    the exchange does not have, as after an outage), counted before the cut."""
    rows = []
    with gzip.open(MARKET_1M, "rt") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        for i, row in enumerate(reader):
            if i >= 19 + days * 1440:
                break
            if i not in drop:
                rows.append(row)
    slice_path = os.path.join(str(tmp_path), f"{days}_days.csv")
    with open(slice_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    with SimExchangeThread(slice_path, paused=True, history_candles=19, target_interval="1m", speed=0) as sim:
        bot = Bot(str(tmp_path), sim.base_url, sim.ws_url, HISTORY_KLINES=19, **settings).start()
        try:
            bot.wait_connected()
            ctl(sim.base_url, "resume")
            wait_for(lambda: ctl(sim.base_url, "state")["finished"], 180, "the replay to finish")
            last_tick = int(rows[-1][0]) + 59_999
            bot.wait_status(lambda s: s.get("price_time_ms") == str(last_tick), 120, "the bot to see the last tick")
        finally:
            assert bot.stop() == 0
    bt_db = os.path.join(str(tmp_path), "backtest.db")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bollmin.py"), "backtest", "--klines", slice_path,
                          "--db", bt_db, "--config", bot.config], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return tuple({name: [tuple(r) for r in query(db, sql)] for name, sql in COMPARED.items()}
                 for db in (bot.db, bt_db))
