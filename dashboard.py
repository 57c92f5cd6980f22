"""bollmin dashboard: one Flask process that shows what the bot is doing and queues commands.

Run it with ``python bollmin.py dashboard`` or ``python dashboard.py [--config PATH]``. It is a
process of its own, so its load or a crash can never touch trading. It opens the SQLite file
read-only (``store.connect_readonly``, one connection per request on ``g``) and its only write
is one row in ``commands`` (pause | resume | close_position), which the bot carries out and
marks done or failed. It never talks to the exchange and the page loads nothing from outside
(no CDN, no web fonts): ``templates/`` plus ``static/app.js`` and ``static/style.css``.

Routes: ``GET /`` (the page), ``GET /healthz`` (``{"ok": true}``, no auth), ``GET|POST /login``,
``POST /logout``, ``POST /control/<command>`` and the JSON API ``GET /api/status``,
``/api/candles``, ``/api/trades?paper=1|0&page=N``, ``/api/events``, ``/api/system``,
``/api/commands``, ``/api/config``. A GET never changes anything. JSON carries raw text; the
HTML escapes everything (Jinja autoescape; ``app.js`` only ever uses ``textContent``).

Security decisions:
  * Beyond loopback a ``DASHBOARD_PASSWORD`` is required (``serve`` refuses with exit 2).
  * With a password, every route but ``/healthz`` and the login form needs either the
    session cookie of a login (HttpOnly, SameSite=Strict, 12 h) or HTTP Basic with any
    user name. Passwords are compared in constant time (``hmac.compare_digest`` of digests).
  * Failed passwords are counted per client address: from the 5th failure in a row that
    address is locked out for 15 s, doubling with each further failure up to an hour
    (HTTP 429 with Retry-After, even for the right password; a valid session still works).
    Behind a reverse proxy every client shares the proxy's address: run it on loopback.
  * Every POST (login, logout, controls) needs the per-session CSRF token and, when the
    browser sends one, an Origin equal to our own. Controls also need ``confirm=1``;
    without it the server answers with a confirmation page and queues nothing.
  * CSP ``default-src 'self'`` without inline script (the login page's small inline style
    carries a per-response nonce), X-Frame-Options DENY, nosniff, Referrer-Policy no-referrer,
    and ``Cache-Control: no-store`` on everything that is not a static file.
  * Without a password (loopback only) a request whose Host is not a loopback name is refused
    (400): that is a DNS-rebinding page in the user's browser, not the user.
  * The Flask secret key is random per process (a restart logs everyone out) unless
    ``BOLLMIN_DASHBOARD_SECRET_KEY`` is set in the environment.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import psutil
from flask import Flask, Response, g, jsonify, redirect, render_template, request, session

import config
import store
from history import INTERVAL_MS
from state import LABEL_EN, LABEL_ZH, POSITION, State

log = logging.getLogger("bollmin.dashboard")

ALIVE_S = 10.0  # a heartbeat younger than this means the bot is running
CHART_CANDLES = 100
PER_PAGE = 20
COMMANDS = ("pause", "resume", "close_position")
FREE_FAILURES = 4  # failed passwords allowed before the lockout starts (the 5th locks)
LOCK_BASE_S, LOCK_MAX_S = 15.0, 3600.0
HERE = os.path.dirname(os.path.abspath(__file__))

# Every text the page shows: key -> (Simplified Chinese, English). app.js gets the same table.
TEXT: dict[str, tuple[str, str]] = {
    "title": ("bollmin 控制台", "bollmin dashboard"),
    "lang_switch": ("EN", "中文"),
    "state": ("策略状态", "Strategy state"),
    "position": ("持仓", "Position"),
    "entry_price": ("开仓价", "Entry price"),
    "upnl": ("未实现盈亏", "Unrealised PnL"),
    "rpnl": ("已实现盈亏(净)", "Realised PnL (net)"),
    "fees": ("手续费", "Fees"),
    "equity": ("权益", "Equity"),
    "price": ("最新价", "Last price"),
    "data_age": ("行情延迟", "Data age"),
    "connection": ("行情连接", "Market data"),
    "heartbeat": ("心跳", "Heartbeat"),
    "last_action": ("最近操作", "Last action"),
    "last_transition": ("最近状态切换", "Last state change"),
    "none_yet": ("暂无", "None yet"),
    "exit": ("平仓", "exit"),
    "flat": ("无持仓", "No position"),
    "long": ("多", "Long"),
    "short": ("空", "Short"),
    "bot_running": ("运行中", "Running"),
    "bot_stopped": ("已停止", "Stopped"),
    "bot_never": ("尚无心跳", "No heartbeat yet"),
    "bot_waiting": ("等待机器人", "Waiting for the bot"),
    "bot_backtest": ("回测记录", "Backtest record"),
    "conn_connected": ("已连接", "connected"),
    "conn_connecting": ("连接中", "connecting"),
    "conn_reconnecting": ("重连中", "reconnecting"),
    "conn_stalled": ("无数据", "stalled"),
    "conn_disconnected": ("已断开", "disconnected"),
    "conn_finished": ("已结束", "finished"),
    "chart": ("价格与布林带", "Price and Bollinger bands"),
    "chart_empty": ("暂无K线", "No candles yet"),
    "controls": ("控制", "Controls"),
    "pause": ("暂停开仓", "Pause entries"),
    "resume": ("恢复开仓", "Resume entries"),
    "close_position": ("立即平仓", "Close position now"),
    "confirm_pause": ("确认暂停新的开仓？已有持仓不受影响。", "Pause new entries? An open position is kept."),
    "confirm_resume": ("确认恢复开仓？", "Resume new entries?"),
    "confirm_close_position": ("确认立即以市价平掉当前持仓？", "Close the current position now at market?"),
    "confirm": ("确认", "Confirm"),
    "cancel": ("取消", "Cancel"),
    "entries_paused": ("已暂停开仓", "Entries paused"),
    "entries_active": ("开仓已启用", "Entries enabled"),
    "commands": ("命令记录", "Commands"),
    "cmd_pending": ("待执行", "pending"),
    "cmd_done": ("已完成", "done"),
    "cmd_failed": ("失败", "failed"),
    "queued": ("命令已提交，等待机器人执行", "Command queued; the bot will carry it out"),
    "controls_off": ("回测记录或数据库不存在时不可用", "Not available for a backtest record or without a database"),
    "trades": ("成交与订单", "Trades and orders"),
    "all": ("全部", "All"),
    "paper": ("模拟", "Paper"),
    "live": ("实盘", "Live"),
    "prev": ("上一页", "Previous"),
    "next": ("下一页", "Next"),
    "page": ("页", "page"),
    "col_time": ("时间", "Time"),
    "col_action": ("操作", "Action"),
    "col_price": ("价格", "Price"),
    "col_qty": ("数量", "Qty"),
    "col_fee": ("手续费", "Fee"),
    "col_pnl": ("盈亏", "PnL"),
    "col_type": ("类型", "Type"),
    "col_status": ("状态", "Status"),
    "no_trades": ("暂无订单", "No orders yet"),
    "open_long": ("开多", "Open long"),
    "open_short": ("开空", "Open short"),
    "close_long": ("平多", "Close long"),
    "close_short": ("平空", "Close short"),
    "entry": ("入场", "entry"),
    "take_profit": ("止盈", "take profit"),
    "stop_loss": ("止损", "stop loss"),
    "manual": ("手动", "manual"),
    "reconcile": ("对账", "reconcile"),
    "st_pending": ("待发送", "pending"),
    "st_sent": ("已发送", "sent"),
    "st_unknown": ("未知", "unknown"),
    "st_filled": ("已成交", "filled"),
    "st_rejected": ("被拒", "rejected"),
    "st_expired": ("已过期", "expired"),
    "events": ("事件与错误", "Events and errors"),
    "errors_only": ("仅警告/错误", "Warnings/errors only"),
    "no_events": ("暂无事件", "No events yet"),
    "system": ("服务器", "Server"),
    "cpu": ("CPU", "CPU"),
    "memory": ("内存", "Memory"),
    "disk": ("磁盘", "Disk"),
    "load": ("负载", "Load"),
    "bot_process": ("机器人进程", "Bot process"),
    "uptime": ("运行时长", "Uptime"),
    "config": ("生效配置（密钥已隐藏）", "Effective config (secrets masked)"),
    "waiting_db": ("等待机器人启动：数据库尚不存在：", "Waiting for the bot: the database does not exist yet: "),
    "db_error": ("无法读取数据库：", "Cannot read the database: "),
    "backtest_note": ("这是一次已完成的回测记录，不是运行中的机器人。",
                      "This database holds a finished backtest, not a running bot."),
    "stale_note": ("机器人心跳已中断，显示的是最后一次记录的数据。",
                   "The bot's heartbeat stopped; the figures are the last ones recorded."),
    "login": ("登录", "Sign in"),
    "password": ("密码", "Password"),
    "wrong_password": ("密码错误", "Wrong password"),
    "too_many": ("失败次数过多，请稍后再试（秒）：", "Too many failed attempts; try again in seconds: "),
    "logout": ("退出", "Sign out"),
    "updated": ("更新", "Updated"),
    "offline": ("无法连接控制台", "Cannot reach the dashboard"),
    "bt_trades": ("交易", "trades"),
    "win_rate": ("胜率", "win rate"),
    "net_pnl": ("净盈亏", "net PnL"),
    "max_dd": ("最大回撤", "max drawdown"),
}

_STATUS_NUMBERS = ("price", "band_up", "band_mid", "band_dn", "position_qty", "entry_price", "unrealized_pnl_usdt",
                   "realized_pnl_usdt", "fees_usdt", "equity_usdt", "cpu_pct")
_STATUS_INTS = ("heartbeat_ms", "started_ms", "pid", "price_time_ms", "last_message_ms", "rss_bytes")


def _num(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _int(text: Any) -> int | None:
    value = _num(text)
    return None if value is None else int(value)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _now_ms() -> int:
    return int(time.time() * 1000)


# ---- system figures: sampled by a background thread, read by requests without blocking -----

class Sampler:
    """Server CPU, memory, disk and load, plus the bot process's CPU/RSS/uptime (psutil).

    ``start()`` runs a daemon thread that samples every ``period_s``; ``snapshot()`` returns
    the latest sample (or takes one on the spot, which never blocks: every psutil call used
    here is instantaneous, ``cpu_percent(interval=None)`` measures since the previous call).
    """

    def __init__(self, disk_path: str, period_s: float = 2.0) -> None:
        self.disk_path = disk_path
        self.period_s = period_s
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None
        self._last_t = 0.0
        self._watch: tuple[int, int | None] | None = None
        self._proc: psutil.Process | None = None
        self._proc_primed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        psutil.cpu_percent(interval=None)  # prime: the first call has nothing to compare with

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bollmin-dashboard-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # never let a psutil surprise end the sampler
                log.exception("system sampling failed")
            if self._stop.wait(self.period_s):
                return

    def watch(self, pid: int | None, started_ms: int | None) -> None:
        """Follow the bot process ``pid`` (None: the bot is not running here)."""
        with self._lock:
            key = None if pid is None else (pid, started_ms)
            if key != self._watch:
                self._watch, self._proc, self._proc_primed = key, None, False

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            fresh = self._last is not None and time.monotonic() - self._last_t < 2 * self.period_s + 1
            last = self._last
        return last if fresh and last is not None else self.sample()

    def sample(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {"sampled_ms": _now_ms(), "cpu_pct": psutil.cpu_percent(interval=None),
                                   "cpu_count": psutil.cpu_count()}
            mem = psutil.virtual_memory()
            out.update(mem_pct=mem.percent, mem_used_bytes=mem.total - mem.available, mem_total_bytes=mem.total)
            path = self.disk_path
            while path and not os.path.isdir(path) and os.path.dirname(path) != path:
                path = os.path.dirname(path)
            try:
                disk = psutil.disk_usage(path or "/")
                out.update(disk_pct=disk.percent, disk_used_bytes=disk.used, disk_total_bytes=disk.total)
            except OSError:
                out.update(disk_pct=None, disk_used_bytes=None, disk_total_bytes=None)
            try:
                out["load"] = [round(x, 2) for x in psutil.getloadavg()]
            except (OSError, AttributeError):
                out["load"] = None
            out["bot"] = self._bot()
            self._last, self._last_t = out, time.monotonic()
            return out

    def _bot(self) -> dict[str, Any] | None:
        if self._watch is None:
            return None
        pid, started_ms = self._watch
        try:
            if self._proc is None:
                proc = psutil.Process(pid)
                # A pid the kernel handed to another program since is not our bot.
                if started_ms is not None and abs(proc.create_time() * 1000 - started_ms) > 300_000:
                    return None
                self._proc = proc
            cpu = self._proc.cpu_percent(interval=None)
            primed, self._proc_primed = self._proc_primed, True
            with self._proc.oneshot():
                return {"pid": pid, "cpu_pct": cpu if primed else None, "rss_bytes": self._proc.memory_info().rss,
                        "uptime_s": max(0.0, time.time() - self._proc.create_time()), "source": "psutil"}
        except (psutil.Error, OSError):
            self._proc = None
            return None


# ---- failed-password throttle ---------------------------------------------------------------

class Throttle:
    """Failed passwords per client address; exponential lockout from the 5th failure in a row."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._fails: dict[str, tuple[int, float]] = {}  # address -> (failures, locked until)

    def retry_after(self, addr: str) -> int:
        """Seconds ``addr`` must still wait (0: it may try)."""
        with self._lock:
            _, until = self._fails.get(addr, (0, 0.0))
        return max(0, math.ceil(until - self.clock()))

    def failed(self, addr: str) -> None:
        with self._lock:
            now = self.clock()
            if len(self._fails) > 10_000:  # bound memory under a spray of addresses
                self._fails = {a: v for a, v in self._fails.items() if v[1] > now}
            count = self._fails.get(addr, (0, 0.0))[0] + 1
            until = 0.0
            if count > FREE_FAILURES:
                until = now + min(LOCK_MAX_S, LOCK_BASE_S * 2 ** (count - FREE_FAILURES - 1))
            self._fails[addr] = (count, until)

    def succeeded(self, addr: str) -> None:
        with self._lock:
            self._fails.pop(addr, None)


# ---- reading the DB ---------------------------------------------------------------------------

def _text(lang: str) -> dict[str, str]:
    i = 1 if lang == "en" else 0
    return {k: v[i] for k, v in TEXT.items()}


def _state_labels(name: str | None) -> tuple[str | None, str | None]:
    try:
        s = State(name)
    except ValueError:
        return name, name
    return LABEL_ZH[s], LABEL_EN[s]


def read_dashboard_status(conn: sqlite3.Connection | None, cfg: config.Config, now_ms: int) -> dict[str, Any]:
    """The /api/status object (without system figures) from the status table and the newest rows."""
    st = store.read_status(conn) if conn is not None else {}
    out: dict[str, Any] = {"db": "ok" if conn is not None else "missing", "server_time_ms": now_ms}
    for key in _STATUS_NUMBERS:
        out[key] = _num(st.get(key))
    for key in _STATUS_INTS:
        out[key] = _int(st.get(key))
    for key in ("symbol", "interval", "state", "connection", "pause_reason", "db_role", "db_id"):
        out[key] = st.get(key) or None
    out["symbol"] = out["symbol"] or cfg.SYMBOL
    out["interval"] = out["interval"] or cfg.INTERVAL
    out["mode"] = (st.get("mode") or "").upper() or cfg.mode
    out["entries_paused"] = st.get("entries_paused") == "1"
    out["state_label"], out["state_label_en"] = _state_labels(out["state"])
    out.update(up=out["band_up"], mid=out["band_mid"], dn=out["band_dn"], position=out["position_qty"])
    if out["position"] is None and out["state"] in State.__members__:
        out["position_side"] = ("short", "flat", "long")[POSITION[State(out["state"])] + 1]
    elif out["position"] is not None:
        qty = out["position"]
        out["position_side"] = "long" if qty > 0 else "short" if qty < 0 else "flat"
    else:
        out["position_side"] = None  # nothing known (no DB yet, or a state we do not know)
    hb, last_msg, tick = out["heartbeat_ms"], out["last_message_ms"], out["price_time_ms"]
    out["heartbeat_age_s"] = None if hb is None else round((now_ms - hb) / 1000, 1)
    seen = last_msg if last_msg is not None else tick
    out["data_age_s"] = None if seen is None else round((now_ms - seen) / 1000, 1)
    out["price_age_s"] = None if tick is None else round((now_ms - tick) / 1000, 1)
    out["alive"] = out["heartbeat_age_s"] is not None and -5 < out["heartbeat_age_s"] < ALIVE_S
    if conn is None:
        out["bot"] = "waiting"
    elif out["db_role"] == "backtest" or out["mode"] == "BACKTEST":
        out["bot"] = "backtest"
    elif out["alive"]:
        out["bot"] = "running"
    else:
        out["bot"] = "never" if hb is None else "stopped"
    out["backtest"] = _backtest_summary(st) if out["bot"] == "backtest" else None
    out["uptime_s"] = (now_ms - out["started_ms"]) / 1000 if out["alive"] and out["started_ms"] else None
    out["last_order"] = out["last_transition"] = None
    out["commands"] = []
    out["last_candle_ms"] = None
    if conn is not None:
        row = conn.execute("SELECT * FROM orders ORDER BY id DESC LIMIT 1").fetchone()
        if row is not None:
            out["last_order"] = _order_json(dict(row))
        rows = store.read_transitions(conn, limit=1)
        out["last_transition"] = rows[0] if rows else None
        out["commands"] = read_commands(conn, 5)
        out["last_candle_ms"] = conn.execute(
            "SELECT max(open_time_ms) FROM candles WHERE symbol = ? AND interval = ?", (out["symbol"], out["interval"])
        ).fetchone()[0]
    return out


def _backtest_summary(st: dict[str, str]) -> dict[str, Any]:
    """The headline figures a ``backtest --db`` run leaves in ``summary_json`` (missing ones None)."""
    try:
        summary = json.loads(st.get("summary_json") or "{}")
    except ValueError:
        summary = {}
    if not isinstance(summary, dict):
        summary = {}
    out = {k: _num(summary.get(k)) for k in ("trades", "win_rate", "net_pnl_usdt", "max_drawdown_usdt", "candles")}
    out["file"] = os.path.basename(st.get("backtest_file") or "") or None
    return out


def _order_json(row: dict[str, Any]) -> dict[str, Any]:
    out = store.trade_json(row)
    out.update(id=row["id"], error_message=row.get("error_message"))
    return out


def read_commands(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """The newest dashboard commands, newest first."""
    return [dict(r) for r in conn.execute("SELECT * FROM commands ORDER BY id DESC LIMIT ?", (limit,))]


def read_orders_page(conn: sqlite3.Connection, paper: bool | None, page: int,
                     per_page: int = PER_PAGE) -> dict[str, Any]:
    """One page of orders (every status), newest first; ``page`` is clamped to what exists."""
    where, args = ("WHERE paper = ?", (int(paper),)) if paper is not None else ("", ())
    total = conn.execute(f"SELECT count(*) FROM orders {where}", args).fetchone()[0]
    pages = max(1, math.ceil(total / per_page))
    page = min(max(1, page), pages)
    rows = store.read_trades(conn, limit=per_page, paper=paper, include_unfilled=True, offset=(page - 1) * per_page)
    return {"page": page, "pages": pages, "per_page": per_page, "total": total,
            "paper": None if paper is None else int(paper), "rows": [_order_json(r) for r in reversed(rows)]}


def bollinger(closes: list[float], period: int, k: float, ddof: int) -> list[tuple[float, float, float] | None]:
    """(UP, MID, DN) over each window of ``period`` closes (None until a window is full).

    Each window is summed with ``math.fsum`` around its own mean (no Σx² − n·mean²), so the
    figures match ``pandas.rolling(period).std(ddof)`` and the bot's live bands at each close.
    """
    out: list[tuple[float, float, float] | None] = []
    for i in range(len(closes)):
        if i + 1 < period:
            out.append(None)
            continue
        w = closes[i + 1 - period:i + 1]
        mid = math.fsum(w) / period
        sd = math.sqrt(math.fsum((x - mid) ** 2 for x in w) / (period - ddof))
        out.append((mid + k * sd, mid, mid - k * sd))
    return out


def read_chart(conn: sqlite3.Connection, cfg: config.Config, symbol: str, interval: str,
               limit: int = CHART_CANDLES) -> dict[str, Any]:
    """The last ``limit`` candles with their bands and the filled orders inside them."""
    candles = store.read_candles(conn, symbol, interval, limit + cfg.BOLL_PERIOD - 1)
    bands = bollinger([c.close for c in candles], cfg.BOLL_PERIOD, cfg.BOLL_K, cfg.BOLL_DDOF)[-limit:]
    candles = candles[-limit:]
    markers = []
    if candles:
        step = INTERVAL_MS.get(interval, 0)
        rows = conn.execute(
            "SELECT id, time_ms, action, reason, fill_price, paper FROM orders WHERE status = 'filled'"
            " AND symbol = ? AND time_ms >= ? AND time_ms < ? ORDER BY id",
            (symbol, candles[0].open_time_ms, candles[-1].open_time_ms + 2 * step),
        ).fetchall()
        markers = [dict(r) for r in rows]
    return {"symbol": symbol, "interval": interval, "period": cfg.BOLL_PERIOD, "k": cfg.BOLL_K, "ddof": cfg.BOLL_DDOF,
            "candles": [[c.open_time_ms, c.open, c.high, c.low, c.close] for c in candles],
            "bands": [None if b is None else [round(x, 8) for x in b] for b in bands], "markers": markers}


# ---- formatting for the server-rendered page (app.js has the same formats) ------------------

def fmt(kind: str, value: Any, lang: str = "zh") -> str:
    """``value`` as the page shows it; "—" when missing. Kinds mirror ``FMT`` in app.js."""
    if value is None or value == "":
        return "—"
    if kind == "text":
        return str(value)
    if kind == "time":
        return time.strftime("%m-%d %H:%M:%S", time.gmtime(value / 1000)) + " UTC"
    v = _num(value)
    if v is None:
        return str(value)
    if kind == "price":
        digits = 2 if abs(v) >= 100 else 4 if abs(v) >= 1 else 6
        return f"{v:,.{digits}f}"
    if kind == "qty":
        return f"{v:.6f}".rstrip("0").rstrip(".") or "0"
    if kind == "usd":
        return f"{v:+,.2f}"
    if kind == "money":
        return f"{v:,.2f}"
    if kind == "pct":
        return f"{v:.1f}%"
    if kind == "pct0":
        return f"{v:.0f}%"
    if kind == "bytes":
        for unit in ("B", "KB", "MB", "GB", "TB"):
            if abs(v) < 1024 or unit == "TB":
                return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
            v /= 1024
    if kind in ("age", "dur"):
        n = int(max(0.0, v))
        if n >= 86400:
            return f"{n // 86400}d {n % 86400 // 3600}h"
        if n >= 3600:
            return f"{n // 3600}h {n % 3600 // 60}m"
        return f"{n // 60}m {n % 60}s" if n >= 60 else f"{n}s"
    return str(value)


def sign_class(value: Any) -> str:
    v = _num(value)
    return "" if v is None or v == 0 else "pos" if v > 0 else "neg"


# ---- the app -----------------------------------------------------------------------------------

class _Ctx:
    def __init__(self, cfg: config.Config, db_path: str) -> None:
        self.cfg = cfg
        self.db_path = db_path
        self.password = cfg.DASHBOARD_PASSWORD
        self.throttle = Throttle()
        self.sampler = Sampler(os.path.dirname(os.path.abspath(db_path)))
        self.secrets = [s for s in (cfg.API_KEY, cfg.API_SECRET, cfg.DASHBOARD_PASSWORD) if s]


def _ctx() -> _Ctx:
    from flask import current_app

    return current_app.extensions["bollmin"]


def get_db() -> sqlite3.Connection | None:
    """This request's read-only connection; None when the DB file does not exist yet."""
    if "db" not in g:
        try:
            g.db = store.connect_readonly(_ctx().db_path)
        except store.StoreError as exc:
            if os.path.exists(_ctx().db_path):
                raise
            log.debug("%s", exc)
            g.db = None
    return g.db


def _lang() -> str:
    lang = request.args.get("lang") or request.cookies.get("lang")
    return "en" if lang == "en" else "zh"


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.headers.get("X-Bollmin") == "1"


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _csrf_ok() -> bool:
    expected = session.get("csrf")
    given = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    if not expected or not hmac.compare_digest(_digest(given), _digest(expected)):
        return False
    # Browsers send "Origin: null" on same-origin POSTs under Referrer-Policy no-referrer.
    origin = request.headers.get("Origin")
    return origin in (None, "null") or urlparse(origin).netloc == request.host


def _password_ok(given: str) -> bool:
    return hmac.compare_digest(_digest(given), _digest(_ctx().password))


def _deny(status: int, message: str, retry_after: int | None = None) -> Response:
    if _wants_json() or request.method != "GET":
        resp = jsonify({"error": message})
    else:
        resp = Response(message + "\n", mimetype="text/plain")
    resp.status_code = status
    if retry_after:
        resp.headers["Retry-After"] = str(retry_after)
    if status == 401 and request.headers.get("X-Bollmin") != "1":
        resp.headers["WWW-Authenticate"] = 'Basic realm="bollmin", charset="UTF-8"'
    return resp


def _authenticate() -> Response | None:
    """None when the request may go on; else the 401/429 answer."""
    ctx = _ctx()
    if not ctx.password or session.get("auth") is True:
        return None
    addr = request.remote_addr or "?"
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        wait = ctx.throttle.retry_after(addr)
        if wait:
            return _deny(429, f"too many failed passwords; retry in {wait} s", wait)
        if _password_ok(auth.password or ""):
            ctx.throttle.succeeded(addr)
            return None
        ctx.throttle.failed(addr)
        log.warning("dashboard: wrong password (HTTP Basic) from %s", addr)
        return _deny(401, "wrong password")
    if request.method == "GET" and not _wants_json() and request.path == "/":
        return redirect("/login")
    return _deny(401, "authentication required")


def create_app(cfg: config.Config, *, db_path: str | None = None, testing: bool = False) -> Flask:
    """The dashboard app for ``cfg``, reading ``db_path`` (default ``cfg.DB_PATH``)."""
    app = Flask(__name__, root_path=HERE, static_folder="static", template_folder="templates")
    app.config.update(
        SECRET_KEY=os.environ.get("BOLLMIN_DASHBOARD_SECRET_KEY") or secrets.token_hex(32),
        SESSION_COOKIE_NAME="bollmin_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        MAX_CONTENT_LENGTH=16 * 1024,
        SEND_FILE_MAX_AGE_DEFAULT=86400,
        TESTING=testing,
    )
    ctx = _Ctx(cfg, db_path or cfg.DB_PATH)
    app.extensions["bollmin"] = ctx
    app.jinja_env.globals.update(f=fmt, sign=sign_class, asset_v=_asset_version())

    @app.before_request
    def _guard() -> Response | None:
        g.nonce = secrets.token_urlsafe(16)
        if not ctx.password and not config.is_loopback(urlparse("//" + request.host).hostname or ""):
            # Open on loopback only: a foreign Host header means DNS rebinding, i.e. another site's
            # page talking to us from the user's browser.
            return _deny(400, "unexpected Host header; without DASHBOARD_PASSWORD use http://127.0.0.1")
        if request.endpoint in ("healthz", "login"):
            return None
        return _authenticate()

    @app.after_request
    def _headers(resp: Response) -> Response:
        h = resp.headers
        h["Content-Security-Policy"] = (
            f"default-src 'self'; script-src 'self'; style-src 'self' 'nonce-{g.get('nonce', 'none')}'; "
            "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'"
        )
        h["X-Frame-Options"] = "DENY"
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Cross-Origin-Resource-Policy"] = "same-origin"
        h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if request.endpoint == "static":
            h["Cache-Control"] = "private, max-age=86400"  # URLs carry ?v=<content hash>
        else:
            h["Cache-Control"] = "no-store"
        return resp

    @app.teardown_appcontext
    def _close_db(_exc: BaseException | None) -> None:
        conn = g.pop("db", None)
        if conn is not None:
            conn.close()

    @app.errorhandler(sqlite3.Error)
    @app.errorhandler(store.StoreError)
    def _db_error(exc: Exception) -> tuple[Any, int]:
        log.warning("dashboard: database error: %s", exc)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if _wants_json():
            return jsonify({"error": f"database: {message}", "db": "error"}), 503
        return render_template("message.html", t=_text(_lang()), lang=_lang(), nonce=g.get("nonce"),
                               message=_text(_lang())["db_error"] + message), 503

    def status_json() -> dict[str, Any]:
        out = read_dashboard_status(get_db(), ctx.cfg, _now_ms())
        ctx.sampler.watch(out["pid"] if out["alive"] else None, out["started_ms"])
        system = ctx.sampler.snapshot()
        if system.get("bot") is None and out["alive"] and (out["cpu_pct"] is not None or out["rss_bytes"] is not None):
            system = dict(system, bot={"pid": out["pid"], "cpu_pct": out["cpu_pct"], "rss_bytes": out["rss_bytes"],
                                       "uptime_s": out["uptime_s"], "source": "status"})
        out["system"] = system
        out["db_path"] = ctx.db_path
        return out

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"ok": True})

    @app.get("/")
    def index() -> str:
        lang = _lang()
        s = status_json()
        conn = get_db()
        paper = _paper_arg()
        trades = read_orders_page(conn, paper, _page_arg()) if conn is not None else None
        events = store.read_events(conn, limit=30) if conn is not None else []
        return render_template(
            "index.html", t=_text(lang), lang=lang, s=s, trades=trades, events=events, paper=paper,
            cfg_rows=_config_rows(ctx), csrf=_csrf_token(), nonce=g.nonce, has_password=bool(ctx.password),
            text_json=_text(lang),
        )

    @app.get("/api/status")
    def api_status() -> Response:
        return jsonify(status_json())

    @app.get("/api/system")
    def api_system() -> Response:
        return jsonify(status_json()["system"])

    @app.get("/api/candles")
    def api_candles() -> Response:
        conn = get_db()
        limit = min(max(_int(request.args.get("limit")) or CHART_CANDLES, 10), 500)
        if conn is None:
            return jsonify({"candles": [], "bands": [], "markers": [], "db": "missing"})
        st = store.read_status(conn)
        chart = read_chart(conn, ctx.cfg, st.get("symbol") or ctx.cfg.SYMBOL, st.get("interval") or ctx.cfg.INTERVAL,
                           limit)
        return jsonify(chart)

    @app.get("/api/trades")
    def api_trades() -> Response:
        conn = get_db()
        if conn is None:
            return jsonify({"page": 1, "pages": 1, "per_page": PER_PAGE, "total": 0, "rows": [], "db": "missing"})
        return jsonify(read_orders_page(conn, _paper_arg(), _page_arg()))

    @app.get("/api/events")
    def api_events() -> Response:
        conn = get_db()
        limit = min(max(_int(request.args.get("limit")) or 50, 1), 500)
        level = "WARNING" if request.args.get("level", "").lower() in ("warning", "error") else None
        rows = store.read_events(conn, limit=limit, min_level=level) if conn is not None else []
        return jsonify({"rows": rows})

    @app.get("/api/commands")
    def api_commands() -> Response:
        conn = get_db()
        return jsonify({"rows": read_commands(conn, 20) if conn is not None else []})

    @app.get("/api/config")
    def api_config() -> Response:
        return jsonify({k: v for k, v in _config_rows(ctx)})

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        t = _text(_lang())
        if not ctx.password or session.get("auth") is True:
            return redirect("/")
        error, status = None, 200
        addr = request.remote_addr or "?"
        if request.method == "POST":
            wait = ctx.throttle.retry_after(addr)
            if not _csrf_ok():
                error, status = "CSRF", 403
            elif wait:
                error, status = f"{t['too_many']} {wait}", 429
            elif _password_ok(request.form.get("password", "")):
                ctx.throttle.succeeded(addr)
                session.clear()
                session.permanent = True
                session["auth"] = True
                session["csrf"] = secrets.token_urlsafe(32)
                resp = redirect("/", code=303)
                if request.form.get("lang") in ("zh", "en"):  # the language chosen on the login page sticks
                    resp.set_cookie("lang", request.form["lang"], max_age=365 * 86400, samesite="Strict")
                return resp
            else:
                ctx.throttle.failed(addr)
                log.warning("dashboard: wrong password (login form) from %s", addr)
                error, status = t["wrong_password"], 401
        resp = Response(render_template("login.html", t=t, lang=_lang(), csrf=_csrf_token(), error=error,
                                        nonce=g.nonce), status=status)
        if status == 429:
            resp.headers["Retry-After"] = str(ctx.throttle.retry_after(addr))
        return resp

    @app.post("/logout")
    def logout() -> Any:
        if not _csrf_ok():
            return _deny(403, "missing or wrong CSRF token")
        session.clear()
        return redirect("/login" if ctx.password else "/", code=303)

    @app.post("/control/<command>")
    def control(command: str) -> Any:
        if command not in COMMANDS:
            return _deny(404, f"unknown command {command!r}")
        if not _csrf_ok():
            return _deny(403, "missing or wrong CSRF token")
        lang, t = _lang(), _text(_lang())
        if request.form.get("confirm") != "1":
            return render_template("confirm.html", t=t, lang=lang, command=command, csrf=_csrf_token(),
                                   question=t["confirm_" + command], nonce=g.nonce)
        conn = get_db()
        if conn is None:
            return _deny(409, "the bot has not created its database yet")
        st = store.read_status(conn)
        if st.get("db_role") == "backtest" or (st.get("mode") or "").upper() == "BACKTEST":
            return _deny(409, "this database is a finished backtest; there is no bot to command")
        command_id = store.add_command(ctx.db_path, command)
        log.info("dashboard: queued command %s (id %d) from %s", command, command_id, request.remote_addr)
        if _wants_json():
            return jsonify({"ok": True, "id": command_id, "command": command, "status": "pending"})
        return redirect("/#controls", code=303)

    return app


def _asset_version() -> str:
    """A short hash of the static files: their URLs change with their content (safe to cache)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(os.path.join(HERE, "static"))):
        with open(os.path.join(HERE, "static", name), "rb") as fh:
            h.update(name.encode() + fh.read())
    return h.hexdigest()[:10]


def _paper_arg() -> bool | None:
    value = request.args.get("paper", "")
    return True if value == "1" else False if value == "0" else None


def _page_arg() -> int:
    return max(1, _int(request.args.get("page")) or 1)


def _config_rows(ctx: _Ctx) -> list[tuple[str, Any]]:
    rows = list(config.masked(ctx.cfg).items())
    return rows + [("config file", ctx.cfg.source), ("database", os.path.abspath(ctx.db_path))]


# ---- serving -----------------------------------------------------------------------------------

def serve(cfg: config.Config, *, db_path: str | None = None) -> int:
    """Serve the dashboard until SIGINT/SIGTERM; returns the process exit code."""
    from werkzeug.serving import make_server

    host, port = cfg.DASHBOARD_HOST, cfg.DASHBOARD_PORT
    if not config.is_loopback(host) and not cfg.DASHBOARD_PASSWORD:
        print(f"bollmin dashboard: refusing to listen on {host!r} without DASHBOARD_PASSWORD "
              "(set it, or use DASHBOARD_HOST = '127.0.0.1')", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:  # `bollmin.py dashboard` leaves logging to us
        logging.basicConfig(level=getattr(logging, cfg.LOG_LEVEL, logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(cfg, db_path=db_path)
    logging.getLogger("werkzeug").setLevel(logging.DEBUG if cfg.LOG_LEVEL == "DEBUG" else logging.WARNING)
    # Bind here rather than in werkzeug, which prints its own two lines and exits on EADDRINUSE.
    try:
        sock = socket.create_server((host.strip("[]"), port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        print(f"bollmin dashboard: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with sock:
        bound_port = sock.getsockname()[1]
        server = make_server(host.strip("[]"), port, app, threaded=True, fd=sock.fileno())
    app.extensions["bollmin"].sampler.start()
    shown = f"[{host}]" if ":" in host else host
    log.info("bollmin dashboard on http://%s:%d/ (database %s, %s)", shown, bound_port,
             app.extensions["bollmin"].db_path, "password required" if cfg.DASHBOARD_PASSWORD else "open on loopback")

    def _stop(_signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.extensions["bollmin"].sampler.stop()
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dashboard.py", description="Serve the bollmin web dashboard.")
    parser.add_argument("--config", metavar="PATH",
                        help="settings file (default: $BOLLMIN_CONFIG or the built-in defaults)")
    args = parser.parse_args(argv)
    try:
        cfg = config.load_config(args.config)
    except config.ConfigError as err:
        print(f"bollmin dashboard: {err}", file=sys.stderr)
        return 2
    return serve(cfg)


if __name__ == "__main__":
    sys.exit(main())
