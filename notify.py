"""Notifications to the trader's phone or inbox, through Apprise (``NOTIFY_URLS``).

Apprise speaks Telegram (``tgram://``), DingTalk (``dingtalk://``), WeCom (``wecombot://``),
Feishu/Lark (``feishu://``), ServerChan (``schan://``), e-mail (``mailto://``, ``mailtos://``),
plain JSON webhooks (``json://``, ``jsons://``) and many more; README.md (通知) lists examples.

The bot owns one ``Notifier``; every method returns at once, whatever the endpoints do::

    notifier = Notifier(cfg)                 # sends nothing while cfg.NOTIFY_URLS is empty
    notifier.start()                         # one worker thread per target URL
    notifier.lifecycle("start", mode="LIVE", detail="BTCUSDT 15m")
    notifier.fill(action="open_long", reason="entry", qty=0.002, price=95000.0, paper=False)
    notifier.rejected(action="open_long", reason="entry", qty=0.002, code=-2019, message="Margin is insufficient.")
    notifier.reconcile(why="startup", stored_qty=0.0, exchange_qty=-0.002, adopted_state="SHORT", rule="exchange")
    notifier.paused("3 rejected orders in a row")
    notifier.data_lost(silent_s=45.0, connection="reconnecting")
    notifier.data_restored(down_s=75.0)
    notifier.daily_summary(daily_summary(conn, previous_utc_day(now_ms), symbol="BTCUSDT"))
    notifier.lifecycle("crash", detail="RuntimeError: ...", restarting=True)
    notifier.stop(timeout=5.0)               # delivers what is queued, waiting at most timeout

Delivery: each message goes into a bounded queue per target and a worker thread sends it; a
failed send is retried ``RETRIES`` times with doubling backoff (1 s, 2 s, 4 s), then dropped
with one log line. A slow, hanging or failing target only delays its own later messages, never
the caller and never the other targets. ``NOTIFY_PAPER`` decides whether paper fills are sent.
Messages are short, Chinese first, English on the next line.

Secrets: the URLs carry tokens. Log lines name a target only as ``scheme://***`` (its number
in the list), Apprise's own log records are kept out of the application's log, and the reason
of a failure is logged with every part of the URL blanked out.

Try the targets by hand: ``python notify.py --config PATH [TEXT]`` sends one message to each.

Why one module of this size: the message texts, the delivery and the taming of Apprise's
logging are one concern (what leaves the machine, and how); none is used elsewhere.

Why this size: one concern, telling the trader — the message texts of every event (Chinese
and English), which events go out (filters, throttling), the sending thread with its bounded
queue, and the command-line tester.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import queue
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import config
from config import mask_url

log = logging.getLogger("bollmin.notify")

RETRIES = 3  # after the first attempt: 4 attempts in all
BACKOFF_S = 1.0  # first wait between attempts; doubles each time
QUEUE_MAX = 500  # messages waiting per target; beyond it new ones are dropped (and counted)
DAY_MS = 86_400_000
_THREAD_PREFIX = "bollmin-notify"

_ACTIONS = {
    "open_long": ("开多", "Open long"), "open_short": ("开空", "Open short"),
    "close_long": ("平多", "Close long"), "close_short": ("平空", "Close short"),
}
_REASONS = {
    "entry": ("入场", "entry"), "take_profit": ("止盈", "take profit"), "stop_loss": ("止损", "stop loss"),
    "manual": ("手动", "manual"), "reconcile": ("对账", "reconcile"),
}


def secret_parts(url: str) -> list[str]:
    """Every piece of ``url`` that could be (part of) a token, longest first: user, password,
    host, path segments and query values of 3 characters or more, and the URL itself."""
    parts = {url}
    try:
        u = urlsplit(url)
        pieces = [u.username or "", u.password or "", u.hostname or "", u.netloc]
        pieces += u.path.split("/") + [v for _k, v in parse_qsl(u.query)]
    except ValueError:
        pieces = re.split(r"[/:@?&=#]", url.split("://", 1)[-1])
    for piece in pieces:
        for p in (piece, unquote(piece)):
            if len(p) >= 3:
                parts.add(p)
    return sorted(parts, key=len, reverse=True)


def redact(text: str, parts: list[str]) -> str:
    for p in parts:
        text = text.replace(p, "***")
    return text


# ---- Apprise, with its logging kept to ourselves -------------------------------------------------

class _AppriseLog(logging.Handler):
    """Apprise's log records: collected per thread (the reason of a failed send), never propagated."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self.local, "lines", None)
        if lines is not None and len(lines) < 20:
            try:
                lines.append(record.getMessage())
            except Exception:  # a malformed record must not break sending
                lines.append(record.msg if isinstance(record.msg, str) else "?")

    def collect(self) -> None:
        self.local.lines = []

    def take(self) -> list[str]:
        lines, self.local.lines = getattr(self.local, "lines", None) or [], None
        return lines


def _not_from_notify_threads(record: logging.LogRecord) -> bool:
    # HTTP libraries log request lines (with tokens in the path) at DEBUG: never from our threads.
    return not threading.current_thread().name.startswith(_THREAD_PREFIX)


@functools.cache
def _apprise() -> tuple[Any, _AppriseLog]:
    """Import Apprise once (it loads ~200 plugins: a fraction of a second) and tame its logging."""
    handler = _AppriseLog()
    alog = logging.getLogger("apprise")
    alog.addHandler(handler)
    alog.propagate = False
    alog.setLevel(logging.WARNING)
    for name in ("urllib3.connectionpool", "urllib3.util.retry", "requests_oauthlib", "oauthlib"):
        logging.getLogger(name).addFilter(_not_from_notify_threads)
    import apprise

    return apprise, handler


def _instantiate(url: str) -> Any:
    apprise, handler = _apprise()
    handler.collect()
    try:
        asset = apprise.AppriseAsset(app_id="bollmin", app_desc="bollmin trading bot", storage_mode="memory")
        return apprise.Apprise.instantiate(url, asset=asset, suppress_exceptions=True)
    finally:
        handler.take()


def url_problem(url: str) -> str | None:
    """Why Apprise cannot use ``url`` (None: it can). The message never contains the URL."""
    if "://" not in url:
        return "not a notification URL (expected scheme://..., e.g. tgram://BOT_TOKEN/CHAT_ID)"
    if _instantiate(url) is None:
        return "Apprise does not understand this URL (unknown service or a missing part); see README (通知)"
    return None


# ---- the messages ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Message:
    """One notification: a title and a short body (Chinese line, then English line)."""

    kind: str  # fill | rejected | reconcile | paused | data_lost | data_restored | start | stop | crash | summary
    title: str
    body: str
    level: str = "info"  # info | success | warning | failure (Apprise's notify types)


def _num(v: Any, digits: int = 2, signed: bool = False) -> str:
    if v is None:
        return "—"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{x:+,.{digits}f}" if signed else f"{x:,.{digits}f}"


def _qty(v: Any) -> str:
    try:
        return f"{abs(float(v)):.6f}".rstrip("0").rstrip(".") or "0"
    except (TypeError, ValueError):
        return "—"


def _price(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "—"
    return _num(x, 2 if abs(x) >= 100 else 4 if abs(x) >= 1 else 6)


def _age(seconds: float) -> str:
    n = int(max(0.0, seconds))
    return f"{n // 3600}h {n % 3600 // 60}m" if n >= 3600 else f"{n // 60}m {n % 60}s" if n >= 60 else f"{n}s"


@dataclasses.dataclass(frozen=True)
class DailySummary:
    """The figures of one UTC day, for paper and live trading apart (``daily_summary``)."""

    day_ms: int
    symbol: str
    by_mode: dict[str, dict[str, float]]  # "paper"/"live" -> orders, closes, wins, net_pnl_usdt, fees_usdt, total_usdt
    state: str | None = None
    position_qty: float | None = None
    entries_paused: bool = False


def previous_utc_day(now_ms: int) -> int:
    """00:00 UTC of the day before the one ``now_ms`` is in: the day a summary sent now covers."""
    return now_ms // DAY_MS * DAY_MS - DAY_MS


def daily_summary(conn: sqlite3.Connection, day_ms: int, symbol: str) -> DailySummary:
    """The day's figures from the DB (read only): fills, closed trades, winners, net PnL and fees
    of ``[day_ms, day_ms + 1 day)``, the cumulative net PnL at its end, and the bot's state now."""
    by_mode: dict[str, dict[str, float]] = {}
    for name, paper in (("paper", 1), ("live", 0)):
        row = conn.execute(
            "SELECT count(*), sum(action IN ('close_long','close_short')),"
            " sum(action IN ('close_long','close_short') AND coalesce(realized_pnl_usdt, 0) > 0),"
            " coalesce(sum(coalesce(realized_pnl_usdt, 0) - coalesce(fee_usdt, 0)), 0), coalesce(sum(fee_usdt), 0)"
            " FROM orders WHERE status = 'filled' AND paper = ? AND time_ms >= ? AND time_ms < ?",
            (paper, day_ms, day_ms + DAY_MS),
        ).fetchone()
        total = conn.execute(
            "SELECT coalesce(sum(coalesce(realized_pnl_usdt, 0) - coalesce(fee_usdt, 0)), 0) FROM orders"
            " WHERE status = 'filled' AND paper = ? AND time_ms < ?", (paper, day_ms + DAY_MS),
        ).fetchone()[0]
        if row[0]:
            by_mode[name] = {"orders": row[0], "closes": row[1] or 0, "wins": row[2] or 0, "net_pnl_usdt": row[3],
                             "fees_usdt": row[4], "total_usdt": total}
    status = {k: v for k, v in conn.execute("SELECT key, value FROM status")}
    try:
        qty = float(status["position_qty"]) if status.get("position_qty") not in (None, "") else None
    except ValueError:
        qty = None
    return DailySummary(day_ms, symbol, by_mode, status.get("state"), qty, status.get("entries_paused") == "1")


def _summary_message(s: DailySummary, prefix: str) -> Message:
    day = time.strftime("%Y-%m-%d", time.gmtime(s.day_ms / 1000))
    zh, en = [f"{day} (UTC) 日报"], [f"Daily summary {day} (UTC)"]
    for name, label_zh, label_en in (("live", "实盘", "live"), ("paper", "模拟", "paper")):
        m = s.by_mode.get(name)
        if m:
            zh.append(f"{label_zh} 净盈亏 {_num(m['net_pnl_usdt'], signed=True)} USDT，手续费 {_num(m['fees_usdt'])}，"
                      f"成交 {m['orders']:.0f} 笔（平仓 {m['closes']:.0f}，盈利 {m['wins']:.0f}），"
                      f"累计 {_num(m['total_usdt'], signed=True)}")
            en.append(f"{label_en} net {_num(m['net_pnl_usdt'], signed=True)} USDT, fees {_num(m['fees_usdt'])}, "
                      f"{m['orders']:.0f} fills ({m['closes']:.0f} closes, {m['wins']:.0f} winners), "
                      f"total {_num(m['total_usdt'], signed=True)}")
    if not s.by_mode:
        zh.append("当日无成交")
        en.append("no fills that day")
    pos = "—" if s.position_qty is None else ("无持仓" if s.position_qty == 0 else
                                             f"{'多' if s.position_qty > 0 else '空'} {_qty(s.position_qty)}")
    pos_en = "—" if s.position_qty is None else ("flat" if s.position_qty == 0 else
                                                f"{'long' if s.position_qty > 0 else 'short'} {_qty(s.position_qty)}")
    zh.append(f"现在：{s.state or '—'}，持仓 {pos}" + ("，已暂停开仓" if s.entries_paused else ""))
    en.append(f"now: {s.state or '—'}, position {pos_en}" + (", entries paused" if s.entries_paused else ""))
    return Message("summary", f"{prefix} 日报 Daily summary {day}", "；".join(zh) + "\n" + "; ".join(en))


# ---- the notifier ------------------------------------------------------------------------------------

_STOP = object()


def _safe(method: Callable[..., None]) -> Callable[..., None]:
    """A notification must never raise into the trading loop."""

    @functools.wraps(method)
    def wrapper(self: Notifier, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:
            log.error("notification %s not queued: %s: %s", method.__name__, type(exc).__name__, exc)

    return wrapper


class _Target:
    """One URL: its queue and worker thread."""

    def __init__(self, index: int, url: str) -> None:
        self.index, self.url, self.name = index, url, f"#{index} {mask_url(url)}"
        self.parts = secret_parts(url)
        self.queue: queue.Queue[Any] = queue.Queue(QUEUE_MAX)
        self.thread: threading.Thread | None = None
        self.sent = self.failed = self.dropped = 0


class Notifier:
    """Sends ``Message``s to every ``NOTIFY_URLS`` target off the caller's thread (see the module doc)."""

    def __init__(self, cfg: config.Config, *, mode: str | None = None, retries: int = RETRIES,
                 backoff_s: float = BACKOFF_S) -> None:
        """``mode`` overrides the mode shown in messages (e.g. "DEMO"); default ``cfg.mode``."""
        self.symbol, self.mode = cfg.SYMBOL, mode or cfg.mode
        self.notify_paper = cfg.NOTIFY_PAPER
        self.retries, self.backoff_s = retries, backoff_s
        self.targets = [_Target(i, url) for i, url in enumerate(cfg.NOTIFY_URLS, 1)]
        self._abandon = threading.Event()  # set when stop() runs out of time: give up retrying
        self._started = False
        self._lock = threading.Lock()
        self._last_drop_log = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.targets)

    # ---- lifecycle of the notifier itself ----------------------------------------------------
    def start(self) -> None:
        """Start the worker threads (nothing happens without targets)."""
        with self._lock:
            if self._started:
                return
            self._started = True
            for target in self.targets:
                target.thread = threading.Thread(target=self._work, args=(target,), daemon=True,
                                                 name=f"{_THREAD_PREFIX}-{target.index}")
                target.thread.start()
        if self.targets:
            log.info("notifications on: %s", ", ".join(t.name for t in self.targets))

    def stop(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued, waiting at most ``timeout`` seconds; True when everything went out."""
        deadline = time.monotonic() + timeout
        for target in self.targets:
            if target.thread is not None:
                try:
                    target.queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
                except queue.Full:
                    pass
        for target in self.targets:
            if target.thread is not None:
                target.thread.join(max(0.0, deadline - time.monotonic()))
        self._abandon.set()
        left = sum(t.queue.qsize() for t in self.targets) + sum(
            1 for t in self.targets if t.thread is not None and t.thread.is_alive())
        if left:
            log.warning("notifications: stopped with %d message(s) not delivered", left)
        return left == 0

    # ---- what the bot reports (each returns at once) ----------------------------------------
    @_safe
    def fill(self, *, action: str, reason: str, qty: float, price: float, paper: bool,
             fee_usdt: float | None = None, realized_pnl_usdt: float | None = None,
             client_order_id: str | None = None) -> None:
        """An order filled. Paper fills are sent only when ``NOTIFY_PAPER`` is True."""
        if paper and not self.notify_paper:
            return
        a_zh, a_en = _ACTIONS.get(action, (action, action))
        r_zh, r_en = _REASONS.get(reason, (reason, reason))
        base = self.symbol[:-4] if self.symbol.endswith("USDT") else ""
        mode_zh, mode_en = ("模拟", "paper") if paper else ("实盘", "live")
        extra_zh = extra_en = ""
        if realized_pnl_usdt is not None:
            net = realized_pnl_usdt - (fee_usdt or 0.0)
            extra_zh = f"，盈亏 {_num(realized_pnl_usdt, signed=True)}（扣费后 {_num(net, signed=True)}）USDT"
            extra_en = f", PnL {_num(realized_pnl_usdt, signed=True)} ({_num(net, signed=True)} after fees) USDT"
        fee_zh = f"，手续费 {_num(fee_usdt, 4)}" if fee_usdt is not None else ""
        fee_en = f", fee {_num(fee_usdt, 4)}" if fee_usdt is not None else ""
        body = (f"{mode_zh}成交：{a_zh} {_qty(qty)} {base} @ {_price(price)}（{r_zh}）{fee_zh}{extra_zh}\n"
                f"{mode_en} fill: {a_en} {_qty(qty)} {base} @ {_price(price)} ({r_en}){fee_en}{extra_en}")
        if client_order_id:
            body += f"\n{client_order_id}"
        self._send(Message("fill", f"{self._prefix(paper)} {a_zh} {a_en}", body, "success"))

    @_safe
    def rejected(self, *, action: str, reason: str, qty: float, code: int | None, message: str,
                 paper: bool = False, client_order_id: str | None = None) -> None:
        """The exchange refused an order."""
        a_zh, a_en = _ACTIONS.get(action, (action, action))
        r_zh, r_en = _REASONS.get(reason, (reason, reason))
        why = f"{code}: {message}" if code is not None else message
        body = f"订单被拒：{a_zh} {_qty(qty)}（{r_zh}）— {why}\nOrder rejected: {a_en} {_qty(qty)} ({r_en}) — {why}"
        if client_order_id:
            body += f"\n{client_order_id}"
        self._send(Message("rejected", f"{self._prefix(paper)} 订单被拒 Order rejected", body, "warning"))

    @_safe
    def reconcile(self, *, why: str, stored_qty: float | None, exchange_qty: float | None,
                  exchange_entry_price: float | None = None, adopted_state: str | None = None,
                  rule: str | None = None) -> None:
        """Reconciliation found the stored position and the exchange's apart."""
        entry = f" @ {_price(exchange_entry_price)}" if exchange_entry_price else ""
        body = (f"对账不一致（{why}）：本地持仓 {_num(stored_qty, 6)}，交易所 {_num(exchange_qty, 6)}{entry}；"
                f"采用 {adopted_state or '—'}（规则 {rule or '—'}）\n"
                f"Reconciliation mismatch ({why}): stored {_num(stored_qty, 6)}, exchange {_num(exchange_qty, 6)}"
                f"{entry}; adopted {adopted_state or '—'} (rule {rule or '—'})")
        self._send(Message("reconcile", f"{self._prefix()} 对账不一致 Position mismatch", body, "failure"))

    @_safe
    def paused(self, reason: str) -> None:
        """New entries were paused (by the bot or a person)."""
        body = (f"已暂停开仓：{reason}。已有持仓照常管理。\n"
                f"New entries paused: {reason}. An open position is still managed.")
        self._send(Message("paused", f"{self._prefix()} 暂停开仓 Entries paused", body, "warning"))

    @_safe
    def data_lost(self, *, silent_s: float, connection: str | None = None) -> None:
        """No market data for longer than the stall limit."""
        conn = f"（连接：{connection}）" if connection else ""
        conn_en = f" (connection: {connection})" if connection else ""
        body = (f"行情中断 {_age(silent_s)}{conn}，正在重连；期间无法按策略交易。\n"
                f"No market data for {_age(silent_s)}{conn_en}; reconnecting. The strategy cannot act meanwhile.")
        self._send(Message("data_lost", f"{self._prefix()} 行情中断 Market data lost", body, "failure"))

    @_safe
    def data_restored(self, *, down_s: float) -> None:
        """Market data flows again after a ``data_lost``."""
        body = f"行情已恢复（中断 {_age(down_s)}）。\nMarket data restored (down for {_age(down_s)})."
        self._send(Message("data_restored", f"{self._prefix()} 行情恢复 Market data back", body, "success"))

    @_safe
    def lifecycle(self, kind: str, *, detail: str = "", mode: str | None = None,
                  restarting: bool | None = None) -> None:
        """The bot started (``"start"``), stopped cleanly (``"stop"``) or crashed (``"crash"``)."""
        mode = mode or self.mode
        words = {"start": ("已启动", "started", "info"), "stop": ("已停止", "stopped", "info"),
                 "crash": ("崩溃", "crashed", "failure")}
        zh, en, level = words.get(kind, (kind, kind, "info"))
        body_zh, body_en = f"bollmin {zh}（{mode}）", f"bollmin {en} ({mode})"
        if detail:
            body_zh, body_en = body_zh + f"：{detail}", body_en + f": {detail}"
        if restarting is not None:
            body_zh += "；将自动重启" if restarting else "；不会自动重启，需要人工处理"
            body_en += "; restarting" if restarting else "; not restarting: needs a person"
        self._send(Message(kind, f"{self._prefix()} {zh} {en}", f"{body_zh}\n{body_en}", level))

    @_safe
    def daily_summary(self, summary: DailySummary) -> None:
        """The day's figures (build them with ``daily_summary(conn, day_ms, symbol)``)."""
        self._send(_summary_message(summary, self._prefix()))

    # ---- internals ---------------------------------------------------------------------------
    def _prefix(self, paper: bool | None = None) -> str:
        """``[bollmin BTCUSDT LIVE]``; ``paper`` names the order's own mode when it is known."""
        mode = self.mode
        if paper is True:
            mode = "PAPER"
        elif paper is False and mode == "PAPER":
            mode = "LIVE"
        return f"[bollmin {self.symbol} {mode}]"

    def _send(self, message: Message) -> None:
        for target in self.targets:
            try:
                target.queue.put_nowait(message)
            except queue.Full:
                target.dropped += 1
                now = time.monotonic()
                if now - self._last_drop_log > 60:
                    self._last_drop_log = now
                    log.warning("notifications to %s are backed up: dropped %d message(s) so far", target.name,
                                target.dropped)

    def _work(self, target: _Target) -> None:
        plugin = _instantiate(target.url)  # Apprise is imported already: config validation used it
        if plugin is None:
            log.error("notifications to %s: Apprise cannot use this URL; its messages are dropped", target.name)
        while True:
            item = target.queue.get()
            if item is _STOP or self._abandon.is_set():
                return
            if plugin is None:
                target.failed += 1
                continue
            self._deliver(target, plugin, item)

    def _deliver(self, target: _Target, plugin: Any, message: Message) -> None:
        apprise, handler = _apprise()
        delay = self.backoff_s
        reason = ""
        for attempt in range(1, self.retries + 2):
            if self._abandon.is_set():
                break
            handler.collect()
            try:
                ok = bool(plugin.notify(body=message.body, title=message.title,
                                        notify_type=apprise.NotifyType(message.level)))
            except Exception as exc:  # a plugin bug must not end the worker
                ok = False
                handler.take()
                reason = f"{type(exc).__name__}: {exc}"
            else:
                lines = handler.take()
                reason = lines[0] if lines else "the service answered with an error"
            if ok:
                target.sent += 1
                if attempt > 1:
                    log.info("notification %s delivered to %s at attempt %d", message.kind, target.name, attempt)
                return
            if attempt <= self.retries:
                log.warning("notification %s to %s failed (attempt %d of %d: %s); retrying in %.0f s", message.kind,
                            target.name, attempt, self.retries + 1, redact(reason, target.parts)[:200], delay)
                if self._abandon.wait(delay):
                    break
                delay *= 2
        target.failed += 1
        log.error("notification %s to %s not delivered: %s", message.kind, target.name,
                  redact(reason, target.parts)[:200] or "stopped")


# ---- trying the targets by hand --------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python notify.py [--config PATH] [TEXT]``: send one test message to every NOTIFY_URLS
    target now (one attempt each) and print how each went, the URL masked. Exit 0 when every
    target accepted it, 1 when one did not, 2 for a bad configuration."""
    parser = argparse.ArgumentParser(prog="notify.py", description=main.__doc__.split("\n\n")[0])
    parser.add_argument("--config", metavar="PATH", help="settings file (default: $BOLLMIN_CONFIG or the defaults)")
    parser.add_argument("text", nargs="?", default="测试通知 / test notification", help="the message to send")
    args = parser.parse_args(argv)
    try:
        cfg = config.load_config(args.config)
    except config.ConfigError as err:
        print(f"bollmin notify: {err}", file=sys.stderr)
        return 2
    if not cfg.NOTIFY_URLS:
        print("bollmin notify: NOTIFY_URLS is empty (set it in the config or env BOLLMIN_NOTIFY_URLS)",
              file=sys.stderr)
        return 2
    apprise, handler = _apprise()
    failed = 0
    for target in (_Target(i, url) for i, url in enumerate(cfg.NOTIFY_URLS, 1)):
        plugin = _instantiate(target.url)
        handler.collect()
        try:
            ok = plugin is not None and bool(plugin.notify(body=args.text, title=f"[bollmin {cfg.SYMBOL}]",
                                                           notify_type=apprise.NotifyType.INFO))
            lines = handler.take()
        except Exception as exc:
            handler.take()
            ok, lines = False, [f"{type(exc).__name__}: {exc}"]
        failed += not ok
        why = "" if ok else ": " + redact(lines[0] if lines else "the service answered with an error", target.parts)
        print(f"{target.name}: {'sent' if ok else 'FAILED'}{why[:300]}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
