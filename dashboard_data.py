"""What the dashboard shows, computed from what it read: no Flask, no SQL, no I/O but psutil.

``dashboard.py`` is the web app; this module is its content, so each piece can be tested as a
plain function:

* ``read_snapshot`` gathers everything ``/api/status`` needs through ``store``'s read helpers
  (cached by the app for a second); ``derive_status`` turns it into the status object and
  ``page_alerts`` into the banners (reconciliation mismatch, paused entries, stale market data,
  a bot whose heartbeat stopped, a losing backtest or a losing parameter set).
* ``read_chart`` (candles, the bands at each close from ``indicators.closing_bands``, fills),
  ``read_pnl`` (equity curves and PnL per UTC day, paper and live apart), ``lab_view`` (the
  strategy lab: ranking, heat map period × k, curves to draw).
* ``Sampler``: server CPU, memory, disk and the bot process's own figures (psutil, never blocking).
* ``fmt``: how numbers, times and ages look (``static/common.js`` has the same formats), and
  ``texts(lang)``: every text of the page, from ``templates/i18n.json``.

Why one module of this size: these are the page's figures, each a short pure function over what
``store`` read; a change to what a card or banner shows is made here and nowhere else.

Why this size: every figure the dashboard shows is computed here as plain functions of DB rows
(status, alerts, charts, PnL, the strategy lab, the instances), one section each, tested
without Flask.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from typing import Any

import psutil

import config
import store
from history import INTERVAL_MS
from indicators import closing_bands
from state import LABEL_EN, LABEL_ZH, POSITION, State
from store import Command

log = logging.getLogger("bollmin.dashboard")

HERE = os.path.dirname(os.path.abspath(__file__))
ALIVE_S = 10.0  # a heartbeat younger than this means the bot is running
CHART_CANDLES, MAX_CHART_CANDLES = 300, 1500
PER_PAGE = 20
RECONCILE_ALERT_S = 24 * 3600  # a reconciliation mismatch stays on the page this long
RANK_ROWS, BEST_CURVES = 20, 5


def _load_text(path: str) -> dict[str, dict[str, str]]:
    """``templates/i18n.json``: key -> {"zh": ..., "en": ...}; a bad file is a packaging error."""
    with open(path, encoding="utf-8") as fh:
        table = json.load(fh)
    for key, value in table.items():
        if not (isinstance(value, dict) and set(value) == {"zh", "en"}
                and all(isinstance(v, str) and v for v in value.values())):
            raise RuntimeError(f"{path}: {key!r} needs exactly a non-empty 'zh' and 'en' text")
    return table


TEXT = _load_text(os.path.join(HERE, "templates", "i18n.json"))

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




def _now_ms() -> int:
    return int(time.time() * 1000)


def texts(lang: str) -> dict[str, str]:
    """Every page text in ``lang`` ("zh" or "en")."""
    lang = "en" if lang == "en" else "zh"
    return {k: v[lang] for k, v in TEXT.items()}


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


# ---- what the page shows: status, alerts, charts, lab (pure functions of what was read) ------

def _state_labels(name: str | None) -> tuple[str | None, str | None]:
    try:
        s = State(name)
    except ValueError:
        return name, name
    return LABEL_ZH[s], LABEL_EN[s]


def read_snapshot(conn: sqlite3.Connection | None, cfg: config.Config, now_ms: int,
                  lab: sqlite3.Connection | None = None) -> dict[str, Any]:
    """Everything ``/api/status`` needs from the DB (and the newest sweep in the lab DB ``lab``),
    in one go (cached for ``STATUS_CACHE_S``)."""
    if conn is None:
        return {"db": "missing", "status": {}}
    st = store.read_status(conn)
    symbol, interval = st.get("symbol") or cfg.SYMBOL, st.get("interval") or cfg.INTERVAL
    transitions = store.read_transitions(conn, limit=1)
    runs = store.read_sweep_runs(lab, limit=1) if lab is not None else []
    current = None
    if runs:
        current = next((r for r in store.read_sweep_results(lab, runs[0]["id"])
                        if _same_set(r, interval, cfg.BOLL_PERIOD, cfg.BOLL_K)), None)
    return {
        "db": "ok", "status": st, "last_order": store.read_last_order(conn),
        "last_transition": transitions[0] if transitions else None, "commands": store.read_commands(conn, 5),
        "last_candle_ms": store.last_candle_ms(conn, symbol, interval),
        "reconciliations": store.read_reconcile_alerts(conn, now_ms - RECONCILE_ALERT_S * 1000, limit=3),
        "lab_run": runs[0] if runs else None, "lab_current": current,
    }


def instance_rows(instances: list[tuple[str, str]], cfg: config.Config, now_ms: int) -> list[dict[str, Any]]:
    """One overview row per bot instance (``(name, DB path)``): symbol, mode, state, position,
    today's net PnL (UTC day), heartbeat age and whether the bot is alive."""
    day = now_ms // 86_400_000 * 86_400_000
    rows = []
    for name, path in instances:
        row: dict[str, Any] = {"name": name, "db": "missing"}
        try:
            conn = store.connect_readonly(path)
        except store.StoreError:
            rows.append(row)
            continue
        try:
            st = store.read_status(conn)
            today = store.read_day_pnl(conn, day)
        except sqlite3.Error:
            rows.append(dict(row, db="error"))
            continue
        finally:
            conn.close()
        out = derive_status({"db": "ok", "status": st}, cfg, now_ms)
        rows.append({"name": name, "db": "ok", "symbol": out["symbol"], "interval": out["interval"],
                     "mode": out["mode"], "state": out["state"], "state_label": out["state_label"],
                     "state_label_en": out["state_label_en"], "position": out["position"],
                     "entry_price": out["entry_price"], "price": out["price"], "bot": out["bot"],
                     "heartbeat_age_s": out["heartbeat_age_s"], "entries_paused": out["entries_paused"],
                     "today_net_pnl_usdt": round(today["net_pnl_usdt"], 8), "today_fills": today["fills"]})
    return rows


def _same_set(result: dict[str, Any], interval: str, period: int, k: float) -> bool:
    return (result.get("interval") == interval and _int(result.get("boll_period")) == period
            and abs((_num(result.get("boll_k")) or 0.0) - k) < 1e-9)


def derive_status(snap: dict[str, Any], cfg: config.Config, now_ms: int) -> dict[str, Any]:
    """The ``/api/status`` object (without system figures and alerts) from a snapshot."""
    st = snap["status"]
    out: dict[str, Any] = {"db": snap["db"], "server_time_ms": now_ms}
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
    if snap["db"] == "missing":
        out["bot"] = "waiting"
    elif out["db_role"] == "backtest" or out["mode"] == "BACKTEST":
        out["bot"] = "backtest"
    elif out["alive"]:
        out["bot"] = "running"
    else:
        out["bot"] = "never" if hb is None else "stopped"
    out["backtest"] = _backtest_summary(st) if out["bot"] == "backtest" else None
    out["uptime_s"] = (now_ms - out["started_ms"]) / 1000 if out["alive"] and out["started_ms"] else None
    last = snap.get("last_order")
    out["last_order"] = _order_json(last) if last else None
    out["last_transition"] = snap.get("last_transition")
    out["commands"] = snap.get("commands") or []
    out["last_candle_ms"] = snap.get("last_candle_ms")
    # Changes whenever an order is added or updated: the page then reloads the chart and PnL.
    out["orders_key"] = f"{last['id']}:{last['updated_ms']}" if last else ""
    controls = out["db"] == "ok" and out["bot"] != "backtest"
    out["controls"] = controls
    out["offered"] = {
        str(Command.PAUSE): controls and not out["entries_paused"],
        str(Command.RESUME): controls and out["entries_paused"],
        str(Command.CLOSE_POSITION): controls and out["position_side"] != "flat",
    }
    out["lab"] = snap.get("lab_run") is not None
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


def _fill(template: str, **values: Any) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", str(value))
    return template


def page_alerts(s: dict[str, Any], snap: dict[str, Any], cfg: config.Config, lang: str,
                db_path: str) -> list[dict[str, Any]]:
    """The banners for status ``s``, worst first: ``{kind, level: bad|warn|info, text, id?, action?}``.

    ``id`` (reconciliations and lab results) lets a browser dismiss that one alert for good;
    the others go away when their cause does. Texts are in ``lang``.
    """
    t = texts(lang)
    out: list[dict[str, Any]] = []

    def add(kind: str, level: str, text: str, **extra: Any) -> None:
        out.append({"kind": kind, "level": level, "text": text, **extra})

    if s["bot"] == "waiting":
        add("waiting", "warn", _fill(t["alert_waiting"], path=db_path))
    if s["bot"] == "stopped":
        add("dead", "bad", _fill(t["alert_dead"], age=fmt("age", s["heartbeat_age_s"])))
    elif s["bot"] == "never":
        add("never", "info", t["alert_never"])
    if s["bot"] == "running":
        age = s["data_age_s"] if s["data_age_s"] is not None else s["uptime_s"]
        if age is not None and age > cfg.WS_STALL_SECONDS:
            conn = t.get("conn_" + str(s["connection"]), s["connection"] or "—")
            add("stale", "bad", _fill(t["alert_stale"], age=fmt("age", age), conn=conn))
    for rec in snap.get("reconciliations") or []:
        text = _fill(t["alert_reconcile"], time=fmt("time", rec["time_ms"]), message=rec["message"])
        detail = rec.get("detail")
        if detail:
            text += " — " + _fill(t["alert_reconcile_detail"], stored=fmt("qty", detail.get("stored_qty")),
                                  exchange=fmt("qty", detail.get("exchange_qty")),
                                  adopted=detail.get("adopted_state") or "—", rule=detail.get("rule") or "—")
        add("reconcile", "bad", text, id=f"reconcile-{rec['id']}", time_ms=rec["time_ms"])
    if s["entries_paused"] and s["bot"] != "backtest":
        add("paused", "warn", _fill(t["alert_paused"], reason=s["pause_reason"] or "—"),
            action=str(Command.RESUME) if s["offered"][Command.RESUME] else None)
    b = s.get("backtest")
    if b is not None:
        win = fmt("pct", None if b["win_rate"] is None else b["win_rate"] * 100)
        figures = [b["file"] or "", f"{fmt('qty', b['trades'])} {t['bt_trades']}", f"{t['win_rate']} {win}",
                   f"{t['net_pnl']} {fmt('usd', b['net_pnl_usdt'])} USDT",
                   f"{t['max_dd']} {fmt('money', b['max_drawdown_usdt'])}"]
        add("backtest", "info", t["backtest_note"] + " " + " · ".join(figures))
        if b["net_pnl_usdt"] is not None and b["net_pnl_usdt"] < 0:
            add("backtest_loss", "warn", _fill(t["alert_backtest_loss"], net=fmt("usd", b["net_pnl_usdt"]),
                                               trades=fmt("qty", b["trades"]), win=win,
                                               dd=fmt("money", b["max_drawdown_usdt"])))
    current = snap.get("lab_current")
    if current is not None and (_num(current.get("net_pnl_usdt")) or 0.0) < 0:
        add("params_loss", "warn", _fill(t["alert_params_loss"], interval=current["interval"],
                                         period=current["boll_period"], k=f"{_num(current['boll_k']):g}",
                                         net=fmt("usd", current["net_pnl_usdt"])),
            id=f"lab-{current['run_id']}-{current['id']}")
    rank = {"bad": 0, "warn": 1, "info": 2}
    return sorted(out, key=lambda a: rank[a["level"]])


def read_orders_page(conn: sqlite3.Connection, paper: bool | None, page: int,
                     per_page: int = PER_PAGE) -> dict[str, Any]:
    """One page of orders (every status), newest first; ``page`` is clamped to what exists."""
    total = store.count_orders(conn, paper)
    pages = max(1, math.ceil(total / per_page))
    page = min(max(1, page), pages)
    rows = store.read_trades(conn, limit=per_page, paper=paper, include_unfilled=True, offset=(page - 1) * per_page)
    return {"page": page, "pages": pages, "per_page": per_page, "total": total,
            "paper": None if paper is None else int(paper), "rows": [_order_json(r) for r in reversed(rows)]}


def read_chart(conn: sqlite3.Connection, cfg: config.Config, symbol: str, interval: str,
               limit: int = CHART_CANDLES) -> dict[str, Any]:
    """The last ``limit`` candles, the bands at each close (``indicators.closing_bands``) and the fills."""
    candles = store.read_candles(conn, symbol, interval, limit + cfg.BOLL_PERIOD - 1)
    bands = closing_bands([c.close for c in candles], cfg.BOLL_PERIOD, cfg.BOLL_K, cfg.BOLL_DDOF)[-limit:]
    candles = candles[-limit:]
    markers = []
    if candles:
        step = INTERVAL_MS.get(interval, 0)
        markers = [{"time_ms": m["time_ms"], "action": m["action"], "reason": m["reason"], "price": m["fill_price"],
                    "qty": m["filled_qty"], "paper": bool(m["paper"])}
                   for m in store.read_fills_between(conn, symbol, candles[0].open_time_ms,
                                                     candles[-1].open_time_ms + 2 * step)]
    return {"symbol": symbol, "interval": interval, "interval_ms": INTERVAL_MS.get(interval),
            "period": cfg.BOLL_PERIOD, "k": cfg.BOLL_K, "ddof": cfg.BOLL_DDOF,
            "candles": [[c.open_time_ms, c.open, c.high, c.low, c.close] for c in candles],
            "bands": [None if b is None else [round(x, 8) for x in b] for b in bands], "markers": markers}


def equity_points(steps: list[tuple[int, float]]) -> list[list[float]]:
    """Cumulative net PnL ``[time_ms, usdt]`` from per-fill nets: one point per second (the last
    of that second), starting from 0 just before the first fill."""
    out: list[list[float]] = []
    total = 0.0
    for time_ms, net in steps:
        total += net
        sec_ms = time_ms // 1000 * 1000
        if not out:
            out.append([sec_ms - 1000, 0.0])
        if out[-1][0] == sec_ms:
            out[-1][1] = round(total, 8)
        else:
            out.append([sec_ms, round(total, 8)])
    return out


def read_pnl(conn: sqlite3.Connection) -> dict[str, Any]:
    """Equity curves and PnL per UTC day, paper and live apart, with their totals."""
    out: dict[str, Any] = {"equity": {}, "daily": {}, "totals": {}}
    for name, paper in (("paper", True), ("live", False)):
        equity = equity_points(store.read_net_pnl_steps(conn, paper))
        daily = store.read_daily_pnl(conn, paper)
        out["equity"][name] = equity
        out["daily"][name] = daily
        out["totals"][name] = {"net_pnl_usdt": equity[-1][1] if equity else 0.0,
                               "fees_usdt": round(sum(d["fees_usdt"] for d in daily), 8),
                               "days": len(daily), "days_won": sum(d["net_pnl_usdt"] > 0 for d in daily),
                               "orders": sum(d["orders"] for d in daily)}
    return out


def lab_view(conn: sqlite3.Connection | None, cfg: config.Config, run_id: int | None, interval: str | None,
             set_id: int | None, lang: str = "zh") -> dict[str, Any]:
    """The strategy-lab page: the chosen sweep, its ranking, heat map (period × k), the curves to
    draw (the best sets and the one looked at: ``set_id``, else the running parameters) and its
    banners (no set made money; the set looked at lost money)."""
    runs = store.read_sweep_runs(conn) if conn is not None else []
    view: dict[str, Any] = {"runs": runs, "run": None, "alerts": []}
    if not runs:
        return view
    run = next((r for r in runs if r["id"] == run_id), runs[0])
    results = store.read_sweep_results(conn, run["id"])  # in the sweep's own ranking (``rank``)
    for r in results:
        r["current"] = _same_set(r, cfg.INTERVAL, cfg.BOLL_PERIOD, cfg.BOLL_K)
    intervals = sorted({r["interval"] for r in results}, key=lambda i: INTERVAL_MS.get(i, 0))
    if interval not in intervals:
        interval = cfg.INTERVAL if cfg.INTERVAL in intervals else (intervals[0] if intervals else None)
    cells = {(_int(r["boll_period"]), _num(r["boll_k"])): r for r in results if r["interval"] == interval}
    periods = sorted({p for p, _ in cells})
    ks = sorted({k for _, k in cells})
    scale = max([abs(_num(r["net_pnl_usdt"]) or 0.0) for r in cells.values()] or [0.0])
    heat = [[(cells.get((p, k)), _heat_class(cells.get((p, k)), scale)) for k in ks] for p in periods]
    focus = next((r for r in results if r["id"] == set_id), None) or next((r for r in results if r["current"]), None)
    curves = [r["id"] for r in results[:BEST_CURVES]]
    if focus is not None and focus["id"] not in curves:
        curves.append(focus["id"])
    view.update(run=run, results=results, ranking=results[:RANK_ROWS], intervals=intervals, interval=interval,
                periods=periods, ks=ks, heat=heat, focus=focus, curves=curves,
                has_oos=any(r.get("oos_net_pnl_usdt") is not None for r in results),
                all_lost=bool(results) and all((_num(r["net_pnl_usdt"]) or 0.0) <= 0 for r in results))
    if focus is not None and focus not in view["ranking"]:
        view["ranking"] = view["ranking"] + [focus]
    t = texts(lang)
    view["alerts"] = []
    if view["all_lost"]:
        view["alerts"].append({"kind": "all_lost", "level": "warn", "text": t["alert_all_loss"]})
    # (The running parameters' loss is already an alert of every page: see page_alerts.)
    if focus is not None and not focus["current"] and (_num(focus.get("net_pnl_usdt")) or 0.0) < 0:
        view["alerts"].append({"kind": "set_loss", "level": "warn", "text": _fill(
            t["alert_set_loss"], interval=focus["interval"], period=focus["boll_period"],
            k=f"{_num(focus['boll_k']):g}", net=fmt("usd", focus["net_pnl_usdt"]))})
    return view


def _heat_class(result: dict[str, Any] | None, scale: float) -> str:
    """A colour class from deep red (h-n4) over neutral (h-0) to deep green (h-p4)."""
    if result is None:
        return "h-none"
    value = _num(result.get("net_pnl_usdt")) or 0.0
    if scale <= 0 or value == 0:
        return "h-0"
    level = min(4, max(1, math.ceil(abs(value) / scale * 4)))
    return f"h-{'p' if value > 0 else 'n'}{level}"


# ---- formatting for the server-rendered page (common.js has the same formats) ----------------

def fmt(kind: str, value: Any, lang: str = "zh") -> str:
    """``value`` as the page shows it; "—" when missing. Kinds mirror ``FMT`` in common.js."""
    if value is None or value == "":
        return "—"
    if kind == "text":
        return str(value)
    if kind == "time":
        return time.strftime("%m-%d %H:%M:%S", time.gmtime(value / 1000)) + " UTC"
    if kind == "date":
        return time.strftime("%Y-%m-%d", time.gmtime(value / 1000))
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
    if kind == "usd0":
        return f"{v:+,.0f}"
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


def read_pnl_empty() -> dict[str, Any]:
    zero = {"net_pnl_usdt": 0.0, "fees_usdt": 0.0, "days": 0, "days_won": 0, "orders": 0}
    return {"equity": {"paper": [], "live": []}, "daily": {"paper": [], "live": []},
            "totals": {"paper": dict(zero), "live": dict(zero)}, "db": "missing"}


