"""notify.py: messages, NOTIFY_URLS validation and masking, and delivery end to end through Apprise
to a local HTTP catcher (``json://127.0.0.1:PORT/...``) that fails its first requests, hangs, or
never recovers. No test touches the internet."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
from support.catcher import TOKEN, Catcher

import config
import notify
import store


def cfg(urls=(), **changes) -> config.Config:
    return config.load_config(env={}).replace(NOTIFY_URLS=tuple(urls), **changes)


@pytest.fixture
def catchers():
    made: list[Catcher] = []

    def make(**kwargs) -> Catcher:
        made.append(Catcher(**kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


class Recorder(notify.Notifier):
    """A Notifier whose messages are kept instead of sent (to read what would go out)."""

    def __init__(self, c: config.Config, **kwargs) -> None:
        super().__init__(c, **kwargs)
        self.sent: list[notify.Message] = []

    def _send(self, message: notify.Message) -> None:
        self.sent.append(message)


# ---- messages ------------------------------------------------------------------------------------------

def test_fills_chinese_first_and_paper_only_when_asked():
    n = Recorder(cfg(PAPER_TRADING=False, API_KEY="k", API_SECRET="s"))
    n.fill(action="open_long", reason="entry", qty=0.002, price=95123.4, paper=False, fee_usdt=0.0951,
           client_order_id="bm-abc-7-1")
    n.fill(action="close_long", reason="take_profit", qty=0.002, price=96000.0, paper=False, fee_usdt=0.096,
           realized_pnl_usdt=1.7532)
    n.fill(action="open_short", reason="entry", qty=0.002, price=96000.0, paper=True)
    assert [m.kind for m in n.sent] == ["fill", "fill"]  # NOTIFY_PAPER is False by default
    first, second = n.sent
    zh, en, cid = first.body.splitlines()
    assert zh == "实盘成交：开多 0.002 BTC @ 95,123.40（入场），手续费 0.0951"
    assert en == "live fill: Open long 0.002 BTC @ 95,123.40 (entry), fee 0.0951" and cid == "bm-abc-7-1"
    assert first.title == "[bollmin BTCUSDT LIVE] 开多 Open long" and first.level == "success"
    assert "盈亏 +1.75（扣费后 +1.66）USDT" in second.body and "PnL +1.75 (+1.66 after fees) USDT" in second.body
    paper = Recorder(cfg(NOTIFY_PAPER=True))
    paper.fill(action="open_short", reason="entry", qty=0.002, price=96000.0, paper=True)
    assert paper.sent[0].body.startswith("模拟成交：开空 0.002 BTC @ 96,000.00（入场）")
    assert paper.sent[0].title.startswith("[bollmin BTCUSDT PAPER]")


def test_the_other_events():
    n = Recorder(cfg(), mode="DEMO")
    n.rejected(action="open_long", reason="entry", qty=0.002, code=-2019, message="Margin is insufficient.")
    n.reconcile(why="startup", stored_qty=0.0, exchange_qty=-0.002, exchange_entry_price=95000.0,
                adopted_state="SHORT", rule="exchange")
    n.paused("3 rejected orders in a row")
    n.data_lost(silent_s=45.2, connection="reconnecting")
    n.data_restored(down_s=75.0)
    n.lifecycle("start", detail="BTCUSDT 15m")
    n.lifecycle("crash", detail="RuntimeError: boom", restarting=False)
    n.lifecycle("stop")
    by = {m.kind: m for m in n.sent}
    assert by["rejected"].body.startswith("订单被拒：开多 0.002（入场）— -2019: Margin is insufficient.")
    assert by["reconcile"].level == "failure" and "交易所 -0.002000 @ 95,000.00；采用 SHORT（规则 exchange）" in \
        by["reconcile"].body
    assert "已暂停开仓：3 rejected orders in a row" in by["paused"].body
    assert by["data_lost"].body.startswith("行情中断 45s（连接：reconnecting）") and by["data_lost"].level == "failure"
    assert "1m 15s" in by["data_restored"].body
    assert by["start"].title == "[bollmin BTCUSDT DEMO] 已启动 started"
    assert by["crash"].body == ("bollmin 崩溃（DEMO）：RuntimeError: boom；不会自动重启，需要人工处理\n"
                                "bollmin crashed (DEMO): RuntimeError: boom; not restarting: needs a person")
    assert by["stop"].level == "info"


def test_a_bad_argument_never_raises_into_the_caller(caplog):
    n = Recorder(cfg())
    n.fill(action="open_long", reason="entry", qty=object(), price="nan?", paper=False, fee_usdt="x")
    n.daily_summary(None)
    assert any("not queued" in r.message for r in caplog.records)


def test_daily_summary_from_the_db(tmp_path):
    path = str(tmp_path / "bot.db")
    day = 1_716_940_800_000  # 2024-05-29 00:00 UTC
    db = store.Store(path)

    def order(cid, t, action, paper, pnl=None, fee=0.1):
        db.add_order(client_order_id=cid, transition_id=None, time_ms=t, symbol="BTCUSDT", action=action,
                     reason="entry", side="BUY", qty=0.002, reduce_only=False, paper=paper, tick_price=100.0)
        db.update_order(cid, status="filled", fill_price=100.0, filled_qty=0.002, fee_usdt=fee,
                        realized_pnl_usdt=pnl)

    with db.transaction():
        order("a", day - 1000, "open_long", False)  # the day before
        order("b", day + 1000, "close_long", False, pnl=2.0)
        order("c", day + 2000, "open_short", False)
        order("d", day + 3000, "close_short", False, pnl=-0.5)
        order("e", day + 86_400_000, "open_long", False)  # the day after
        db.set_status({"state": "FLAT", "position_qty": 0.0, "entries_paused": 0})
    db.close()
    conn = store.connect_readonly(path)
    assert notify.previous_utc_day(day + 86_400_000 + 5) == day
    s = notify.daily_summary(conn, day, "BTCUSDT")
    assert s.by_mode == {"live": {"orders": 3, "closes": 2, "wins": 1, "net_pnl_usdt": pytest.approx(1.2),
                                  "fees_usdt": pytest.approx(0.3), "total_usdt": pytest.approx(1.1)}}
    n = Recorder(cfg())
    n.daily_summary(s)
    body = n.sent[0].body
    assert body.startswith("2024-05-29 (UTC) 日报；实盘 净盈亏 +1.20 USDT，手续费 0.30，"
                           "成交 3 笔（平仓 2，盈利 1），累计 +1.10")
    assert "现在：FLAT，持仓 无持仓" in body and "now: FLAT, position flat" in body
    n.daily_summary(notify.daily_summary(conn, day - 10 * 86_400_000, "BTCUSDT"))
    assert "当日无成交" in n.sent[1].body


# ---- NOTIFY_URLS: validated, masked ---------------------------------------------------------------------

def test_notify_urls_are_checked_by_apprise_and_never_echoed(tmp_path, bollmin_cli):
    good = f"tgram://123456789:{TOKEN}/12345"
    urls = cfg([good]).NOTIFY_URLS
    assert urls == (good,)
    spaced = cfg().replace(NOTIFY_URLS=f"  {good}\n json://127.0.0.1:9/x ")
    assert spaced.NOTIFY_URLS[0] == good and spaced.NOTIFY_URLS[1:] == ("json://127.0.0.1:9/x",)
    for bad, why in ((f"tgramm://{TOKEN}/1", "Apprise does not understand"), (TOKEN, "not a notification URL")):
        with pytest.raises(config.ConfigError) as err:
            cfg([good, bad])
        message = str(err.value)
        assert message.startswith("NOTIFY_URLS = '***': item 2") and why in message and TOKEN not in message
    with pytest.raises(config.ConfigError, match="list of texts"):
        cfg().replace(NOTIFY_URLS=[good, 5])
    path = tmp_path / "c.py"
    path.write_text(f"NOTIFY_URLS = [{good!r}, 'mailtos://user:{TOKEN}@example.com']\nNOTIFY_PAPER = True\n")
    r = bollmin_cli("check-config", "--config", str(path))
    assert r.returncode == 0 and TOKEN not in r.stdout + r.stderr
    assert "NOTIFY_URLS = ('tgram://***', 'mailtos://***')" in r.stdout and "NOTIFY_PAPER = True" in r.stdout
    r = bollmin_cli("check-config", "--json", "--config", str(path))
    assert json.loads(r.stdout)["NOTIFY_URLS"] == ["tgram://***", "mailtos://***"]
    path.write_text(f"NOTIFY_URLS = ['tgramm://{TOKEN}']\n")
    r = bollmin_cli("check-config", "--config", str(path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and TOKEN not in r.stderr and "Traceback" not in r.stderr


def test_notify_urls_from_the_environment(monkeypatch):
    url = f"json://127.0.0.1:9/{TOKEN}"
    c = config.load_config(env={"BOLLMIN_NOTIFY_URLS": f"{url} dingtalk://{TOKEN}"})
    assert list(c.NOTIFY_URLS) == [url, f"dingtalk://{TOKEN}"]
    assert config.masked(c)["NOTIFY_URLS"] == ("json://***", "dingtalk://***")


def test_redaction_blanks_every_part_of_the_url():
    url = f"mailtos://bob:{TOKEN}@mail.example.com:587/?to=alice%40example.com&from=x"
    text = f"login failed for bob at mail.example.com with {TOKEN}: alice@example.com refused"
    out = notify.redact(text, notify.secret_parts(url))
    assert TOKEN not in out and "bob" not in out and "alice@example.com" not in out and "mail.example.com" not in out
    assert notify.mask_url(url) == "mailtos://***" and notify.mask_url(TOKEN) == "***"


# ---- delivery, end to end ------------------------------------------------------------------------------------

def test_delivered_within_seconds_despite_failing_first_requests(catchers, caplog):
    caplog.set_level(logging.DEBUG)
    catcher = catchers(fail=2)
    n = notify.Notifier(cfg([catcher.url]))
    n.start()
    t0 = time.monotonic()
    n.lifecycle("start", detail="BTCUSDT 15m")
    n.fill(action="open_short", reason="entry", qty=0.002, price=95000.0, paper=False)
    got = catcher.wait(2)
    took = time.monotonic() - t0
    assert n.stop(timeout=10)
    # The first message failed twice (HTTP 500), then went through on the 3rd attempt after 1 s + 2 s of
    # backoff; the second followed it. Order is kept.
    assert [len(catcher.requests), [b["title"] for b in got]] == [
        4, ["[bollmin BTCUSDT PAPER] 已启动 started", "[bollmin BTCUSDT LIVE] 开空 Open short"]]
    assert got[1]["message"].startswith("实盘成交：开空 0.002 BTC @ 95,000.00（入场）")
    assert 3.0 <= took < 30, took
    assert catcher.requests[0]["path"] == f"/hook/{TOKEN}"
    log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("bollmin"))
    assert "failed (attempt 1 of 4" in log and "delivered to #1 json://*** at attempt 3" in log
    assert TOKEN not in log and f"127.0.0.1:{catcher.port}" not in log


def test_bounded_retries_then_the_message_is_dropped(catchers, caplog):
    catcher = catchers(fail=None)
    n = notify.Notifier(cfg([catcher.url]), retries=2, backoff_s=0.1)
    n.start()
    n.paused("test")
    deadline = time.monotonic() + 30
    while not any("not delivered" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(catcher.requests) == 3  # 1 + 2 retries, then given up
    time.sleep(0.5)
    assert len(catcher.requests) == 3
    assert n.targets[0].failed == 1 and n.targets[0].sent == 0
    n.stop(timeout=5)
    assert TOKEN not in "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("bollmin"))


def test_apprise_log_records_never_reach_the_applications_handlers():
    """Apprise logs URLs (tokens) in its own records; they stay out of the bot's log and journald."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    root = logging.getLogger()
    keep = Keep(logging.DEBUG)
    old = root.level
    root.addHandler(keep)
    root.setLevel(logging.DEBUG)
    try:
        assert notify.url_problem(f"tgramm://{TOKEN}/1") is not None  # Apprise logs "Unparseable URL ..." (ERROR)
        assert notify.url_problem(f"json://127.0.0.1:9/{TOKEN}") is None
    finally:
        root.removeHandler(keep)
        root.setLevel(old)
    assert not any(TOKEN in m for m in seen), seen


def test_a_hanging_endpoint_never_blocks_the_caller_or_the_other_targets(catchers):
    hanging = catchers(hang=True)
    healthy = catchers()
    # A server that accepts connections and never answers (not even the HTTP request line).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        n = notify.Notifier(cfg([hanging.url, f"json://127.0.0.1:{silent.getsockname()[1]}/x", healthy.url]))
        n.start()
        t0 = time.perf_counter()
        for i in range(200):
            n.fill(action="open_long", reason="entry", qty=0.001 * (i + 1), price=95000.0, paper=False)
        caller_s = time.perf_counter() - t0
        assert caller_s < 1.0, f"200 notifications took the caller {caller_s:.3f} s"
        got = healthy.wait(200, timeout=60)
        assert [b["message"].split()[1] for b in got[:3]] == ["0.001", "0.002", "0.003"]  # in order
        # The hanging target got its first request (and maybe a retry after a read timeout), nothing through.
        assert 1 <= len(hanging.requests) <= 1 + notify.RETRIES and not hanging.delivered
        t0 = time.monotonic()
        assert n.stop(timeout=1.0) is False  # the stuck targets still had messages
        assert time.monotonic() - t0 < 3.0
    finally:
        silent.close()


def test_no_targets_means_nothing_happens():
    n = notify.Notifier(cfg())
    assert not n.enabled
    n.start()
    n.fill(action="open_long", reason="entry", qty=1, price=1, paper=False)
    assert n.stop(timeout=0.1)


def test_trying_the_targets_by_hand(catchers, tmp_path, capsys):
    good, bad = catchers(), catchers(fail=None)
    path = tmp_path / "c.py"
    path.write_text(f"NOTIFY_URLS = [{good.url!r}, {bad.url!r}]\n")
    assert notify.main(["--config", str(path), "你好 hello"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "#1 json://***: sent" and out.splitlines()[1].startswith("#2 json://***: FAILED")
    assert TOKEN not in out and good.delivered[0]["message"] == "你好 hello"
    path.write_text(f"NOTIFY_URLS = [{good.url!r}]\n")
    assert notify.main(["--config", str(path)]) == 0
    path.write_text("")
    assert notify.main(["--config", str(path)]) == 2
