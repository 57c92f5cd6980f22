"""dashboard.py through Flask's test client: auth, throttling, CSRF, read-only GETs, escaping,
secrets, paging and filters, a missing or broken DB, and the figures /api/status reports."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
import sqlite3

import pytest
from support.env import clean_env
from support.web import API_KEY, API_SECRET, PASSWORD, csrf_from, login, make_cfg

import config
import dashboard
import store
from state import LABEL_EN, LABEL_ZH, State

SECRETS = (API_KEY, API_SECRET, PASSWORD)

GET_ROUTES = (
    "/", "/?paper=1&page=2", "/?paper=0", "/?lang=en", "/lab", "/lab?run=1&set=2&interval=15m", "/healthz", "/login",
    "/api/status", "/api/system", "/api/candles", "/api/candles?limit=300", "/api/pnl", "/api/trades",
    "/api/trades?paper=1&page=3", "/api/trades?paper=0", "/api/events", "/api/events?level=error&limit=5",
    "/api/commands", "/api/config", "/api/lab", "/api/lab?run=1", "/api/lab/equity?run=1&ids=1,2", "/api/instances",
    "/static/common.js", "/static/overview.js", "/static/style.css",
)
POST_ROUTES = ("/login", "/logout", "/control/pause", "/control/resume", "/control/close_position")


def basic(password: str, user: str = "anyone") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def dump(path: str) -> list:
    """Every row of every table, to prove nothing changed."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return [(t, conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()) for t in tables]
    finally:
        conn.close()


@pytest.fixture
def app(dashboard_db):
    path, _ = dashboard_db
    return dashboard.create_app(make_cfg(), db_path=path, testing=True)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def authed(client):
    assert login(client).status_code == 303
    return client


def test_route_list_covers_the_app(app):
    """New routes must be added to the lists above, so every test below sees them."""
    known = {r.split("?")[0] for r in GET_ROUTES} | set(POST_ROUTES)
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<path:filename>", "common.js").replace("<command>", "pause")
        assert path in known, f"route {rule.rule} is not exercised by tests/test_dashboard.py"


# ---- authentication ---------------------------------------------------------------------------------

def test_healthz_is_open_and_says_nothing_else(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"ok": True}


def test_every_route_needs_the_password(client, dashboard_db):
    before = dump(dashboard_db[0])
    for route in GET_ROUTES:
        r = client.get(route)
        if route.startswith(("/healthz", "/login")):
            assert r.status_code == 200, route
        elif route.split("?")[0] in ("/", "/lab"):
            assert r.status_code == 302 and r.headers["Location"].endswith("/login"), route
        else:
            assert r.status_code == 401, route
            assert "WWW-Authenticate" in r.headers
    for route in POST_ROUTES[1:]:
        assert client.post(route, data={"confirm": "1"}).status_code == 401, route
    assert dump(dashboard_db[0]) == before


def test_wrong_password_is_rejected(client):
    assert client.get("/api/status", headers=basic("nope")).status_code == 401
    assert client.get("/api/status", headers=basic(PASSWORD + "x")).status_code == 401
    assert client.get("/api/status", headers=basic("")).status_code == 401
    r = login(client, "wrong")
    assert r.status_code == 401 and "密码错误" in r.get_data(as_text=True)
    assert client.get("/api/status").status_code == 401


def test_basic_auth_with_any_user_name(client):
    for user in ("", "admin", "王"):
        r = client.get("/api/status", headers=basic(PASSWORD, user))
        assert r.status_code == 200 and r.get_json()["state"] == "SHORT"
    assert client.get("/", headers=basic(PASSWORD)).status_code == 200


def test_login_form_sets_a_strict_httponly_session(client):
    r = login(client)
    assert r.status_code == 303 and r.headers["Location"].endswith("/")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/").status_code == 200
    assert client.get("/api/status").status_code == 200
    assert client.get("/login").status_code == 302  # already signed in


def test_login_needs_csrf(client):
    client.get("/login")
    assert client.post("/login", data={"password": PASSWORD}).status_code == 403
    assert client.get("/api/status").status_code == 401


def test_logout_needs_csrf_and_ends_the_session(authed):
    assert authed.post("/logout").status_code == 403
    assert authed.get("/api/status").status_code == 200
    token = csrf_from(authed.get("/").get_data(as_text=True))
    assert authed.post("/logout", data={"csrf_token": token}).status_code == 303
    assert authed.get("/api/status").status_code == 401


def test_failed_passwords_are_throttled_per_address(app, client):
    now = [1000.0]
    app.extensions["bollmin"].throttle.clock = lambda: now[0]
    for _ in range(dashboard.FREE_FAILURES):
        assert client.get("/api/status", headers=basic("guess")).status_code == 401
    # The 5th failure locks the address: even the right password gets 429 now.
    assert client.get("/api/status", headers=basic("guess")).status_code == 401
    r = client.get("/api/status", headers=basic(PASSWORD))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 15
    assert login(client).status_code == 429
    # Another address is not affected.
    other = app.test_client()
    r = other.get("/api/status", headers=basic(PASSWORD), environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert r.status_code == 200
    # After the lockout, a further failure locks for twice as long.
    now[0] += 16
    assert client.get("/api/status", headers=basic("guess")).status_code == 401
    assert int(client.get("/api/status", headers=basic(PASSWORD)).headers["Retry-After"]) == 30
    now[0] += 31
    assert client.get("/api/status", headers=basic(PASSWORD)).status_code == 200
    # Success resets the count.
    assert client.get("/api/status", headers=basic("guess")).status_code == 401
    assert client.get("/api/status", headers=basic(PASSWORD)).status_code == 200


def test_lockout_caps_and_a_signed_in_session_still_works(app, authed):
    now = [0.0]
    throttle = app.extensions["bollmin"].throttle
    throttle.clock = lambda: now[0]
    for _ in range(40):
        throttle.failed("127.0.0.1")
    assert throttle.retry_after("127.0.0.1") == dashboard.LOCK_MAX_S
    assert authed.get("/api/status").status_code == 200


def test_no_password_means_open_on_loopback_but_controls_still_need_csrf(dashboard_db):
    path, _ = dashboard_db
    client = dashboard.create_app(make_cfg(password=""), db_path=path, testing=True).test_client()
    assert client.get("/").status_code == 200
    assert client.get("/api/status").status_code == 200
    assert client.get("/login").status_code == 302
    assert client.post("/control/pause", data={"confirm": "1"}).status_code == 403
    assert store.connect_readonly(path).execute("SELECT count(*) FROM commands").fetchone()[0] == 0


def test_without_password_a_foreign_host_header_is_refused(dashboard_db):
    """DNS rebinding: another site's page resolving its name to 127.0.0.1."""
    client = dashboard.create_app(make_cfg(password=""), db_path=dashboard_db[0], testing=True).test_client()
    for host in ("localhost:8080", "127.0.0.1:8080", "127.9.9.9", "[::1]:8080"):
        assert client.get("/api/status", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example:8080", "192.168.1.5:8080", "localhost.evil.example"):
        assert client.get("/api/status", headers={"Host": host}).status_code == 400, host
        assert client.post("/control/pause", headers={"Host": host}).status_code == 400, host


# ---- commands: POST, CSRF, confirmation --------------------------------------------------------------

def test_control_needs_csrf_and_confirmation(authed, dashboard_db):
    path, _ = dashboard_db
    token = csrf_from(authed.get("/").get_data(as_text=True))
    assert authed.get("/control/pause").status_code == 405
    assert authed.post("/control/pause", data={"confirm": "1"}).status_code == 403
    assert authed.post("/control/pause", data={"confirm": "1", "csrf_token": "forged"}).status_code == 403
    assert authed.post("/control/pause", data={"confirm": "1", "csrf_token": token},
                       headers={"Origin": "https://evil.example"}).status_code == 403
    assert authed.post("/control/explode", data={"confirm": "1", "csrf_token": token}).status_code == 404
    # Without confirm=1: a confirmation page, nothing queued.
    r = authed.post("/control/close_position", data={"csrf_token": token})
    assert r.status_code == 200 and 'name="confirm" value="1"' in r.get_data(as_text=True)
    assert "确认立即以市价平掉当前持仓" in r.get_data(as_text=True)
    assert dump(path)[1] == ("commands", [])
    r = authed.post("/control/close_position", data={"csrf_token": token, "confirm": "1"},
                    headers={"Origin": "http://localhost"})
    assert r.status_code == 303
    r = authed.post("/control/pause", data={"confirm": "1"}, headers={"X-CSRF-Token": token, "X-Bollmin": "1",
                                                                      "Origin": "null"})
    assert r.status_code == 200 and r.get_json()["status"] == "pending"
    rows = store.connect_readonly(path).execute("SELECT command, status FROM commands ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [("close_position", "pending"), ("pause", "pending")]
    status = authed.get("/api/status").get_json()
    assert [c["command"] for c in status["commands"]] == ["pause", "close_position"]


def test_command_results_are_shown(authed, dashboard_db):
    path, _ = dashboard_db
    ok = store.add_command(path, "pause")
    bad = store.add_command(path, "close_position")
    db = store.Store(path)
    db.finish_command(ok, True, "entries paused")
    db.finish_command(bad, False, "exchange said <no>")
    db.close()
    rows = authed.get("/api/commands").get_json()["rows"]
    assert [(r["command"], r["status"], r["result"]) for r in rows] == [
        ("close_position", "failed", "exchange said <no>"), ("pause", "done", "entries paused")]
    html = authed.get("/").get_data(as_text=True)
    assert "已完成" in html and "失败" in html and "exchange said &lt;no&gt;" in html


def test_controls_refused_for_a_backtest_db(dashboard_db_factory):
    path, _ = dashboard_db_factory("bt.db", role="backtest")
    client = dashboard.create_app(make_cfg(password=""), db_path=path, testing=True).test_client()
    token = csrf_from(client.get("/").get_data(as_text=True))
    assert client.post("/control/pause", data={"csrf_token": token, "confirm": "1"}).status_code == 409
    assert dump(path)[1] == ("commands", [])


# ---- GET is read-only; nothing secret leaks; everything is escaped -------------------------------------

def test_gets_change_nothing(authed, dashboard_db):
    path, _ = dashboard_db
    store.add_command(path, "pause")
    before = dump(path)
    mtime = os.stat(path).st_mtime_ns
    for route in GET_ROUTES:
        assert authed.get(route).status_code in (200, 302), route
        assert authed.get(route, headers=basic(PASSWORD)).status_code in (200, 302), route
    assert dump(path) == before
    assert os.stat(path).st_mtime_ns == mtime


def test_secrets_never_appear_in_any_response(client, dashboard_db):
    bodies = []
    for route in GET_ROUTES:  # signed out
        r = client.get(route)
        bodies.append(r.get_data(as_text=True) + str(r.headers))
    bodies.append(login(client, "wrong").get_data(as_text=True))
    r = login(client)
    bodies.append(r.get_data(as_text=True) + str(r.headers))
    for route in GET_ROUTES:  # signed in
        r = client.get(route)
        bodies.append(r.get_data(as_text=True) + str(r.headers))
    token = csrf_from(client.get("/").get_data(as_text=True))
    for route in POST_ROUTES[2:]:
        r = client.post(route, data={"csrf_token": token})
        bodies.append(r.get_data(as_text=True) + str(r.headers))
    text = "\n".join(bodies)
    for secret in SECRETS:
        assert secret not in text
    cfg = client.get("/api/config").get_json()
    assert cfg["API_KEY"] == cfg["API_SECRET"] == cfg["DASHBOARD_PASSWORD"] == "***"
    assert cfg["SYMBOL"] == "BTCUSDT"


def test_script_in_an_event_is_escaped_in_html_and_raw_in_json(authed):
    html = authed.get("/").get_data(as_text=True)
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    scripts = re.findall(r"<script\b([^>]*)>", html)
    # Our own static scripts and the i18n JSON block, nothing else.
    assert scripts.count(' type="application/json" id="i18n"') == 1 and len(scripts) == 5
    assert all(re.fullmatch(r' src="/static/[\w./-]+\.js\?v=[0-9a-f]{12}" defer', a)
               for a in scripts if "i18n" not in a), scripts
    events = authed.get("/api/events").get_json()["rows"]
    assert any(e["message"].startswith("<script>alert(1)</script>") for e in events)
    assert [e["level"] for e in authed.get("/api/events?level=error").get_json()["rows"]] == ["ERROR", "WARNING"]


def test_security_headers(authed):
    for route in ("/", "/api/status", "/static/app.js", "/login"):
        h = authed.get(route).headers
        csp = h["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert h["X-Frame-Options"] == "DENY"
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "no-referrer"
    assert authed.get("/api/status").headers["Cache-Control"] == "no-store"


def test_page_loads_nothing_from_outside(authed):
    html = authed.get("/").get_data(as_text=True)
    js = authed.get("/static/app.js").get_data(as_text=True)
    css = authed.get("/static/style.css").get_data(as_text=True)
    links = re.findall(r'\b(?:src|href|action)\s*=\s*"([^"]*)"', html)
    # One link leaves the site: the chart library's attribution, which its license asks for (a link, not a load).
    assert links.count("https://www.tradingview.com/") == 1
    links.remove("https://www.tradingview.com/")
    assert links and all(re.match(r"(/(?!/)|\?|#|data:)", u) for u in links), links
    assert not re.search(r"""['"`](?:https?:|wss?:)?//""", js), "app.js names another host"
    assert "url(" not in css and "@import" not in css and "@font-face" not in css
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js
    assert len(html) + len(js) + len(css) < 150_000


# ---- content ------------------------------------------------------------------------------------------

def test_status_reports_what_the_bot_wrote(authed, dashboard_db):
    path, summary = dashboard_db
    s = authed.get("/api/status").get_json()
    raw = store.read_status(store.connect_readonly(path))
    assert s["state"] == summary["state"] == "SHORT"
    assert s["state_label"] == LABEL_ZH[State.SHORT] and s["state_label_en"] == LABEL_EN[State.SHORT]
    assert s["price"] == float(raw["price"]) and s["up"] == float(raw["band_up"])
    assert s["mid"] == float(raw["band_mid"]) and s["dn"] == float(raw["band_dn"])
    assert s["position"] == float(raw["position_qty"]) < 0 and s["position_side"] == "short"
    assert s["entry_price"] == float(raw["entry_price"])
    assert s["unrealized_pnl_usdt"] == float(raw["unrealized_pnl_usdt"])
    assert s["realized_pnl_usdt"] == float(raw["realized_pnl_usdt"])
    assert s["mode"] == "PAPER" and s["connection"] == "connected" and s["db"] == "ok"
    assert s["alive"] is True and s["bot"] == "running" and 0 <= s["heartbeat_age_s"] < 10
    assert 0 <= s["data_age_s"] < 10
    assert s["last_order"]["client_order_id"] == "bm-live-2" and s["last_order"]["status"] == "rejected"
    assert s["last_transition"]["to_state"] == "SHORT"
    sy = s["system"]
    for key in ("cpu_pct", "mem_pct", "disk_pct", "load", "mem_total_bytes", "disk_total_bytes"):
        assert sy[key] is not None, key
    # The fixture's started_ms does not match this process's start time: the bot figures come from status.
    assert sy["bot"]["source"] == "status" and sy["bot"]["rss_bytes"] == 52_000_000
    html = authed.get("/").get_data(as_text=True)
    assert "持有空仓" in html and "SHORT" in html and "PAPER" in html and "运行中" in html


def test_status_of_a_stopped_bot_and_of_a_backtest(dashboard_db_factory):
    path, _ = dashboard_db_factory("old.db", heartbeat_ms=store.now_ms() - 60_000,
                                   status={"mode": "DEMO", "state": "NOT_A_STATE", "position_qty": ""})
    client = dashboard.create_app(make_cfg(password=""), db_path=path, testing=True).test_client()
    s = client.get("/api/status").get_json()
    assert s["alive"] is False and s["bot"] == "stopped" and 59 < s["heartbeat_age_s"] < 120
    assert s["mode"] == "DEMO" and s["state_label"] == "NOT_A_STATE" and s["position"] is None
    assert "已停止" in client.get("/").get_data(as_text=True)
    path, summary = dashboard_db_factory("bt.db", role="backtest")
    client = dashboard.create_app(make_cfg(password=""), db_path=path, testing=True).test_client()
    s = client.get("/api/status").get_json()
    assert (s["bot"], s["alive"], s["mode"], s["heartbeat_age_s"]) == ("backtest", False, "BACKTEST", None)
    html = client.get("/").get_data(as_text=True)
    assert '<span id="bot-text">回测记录</span>' in html  # the page's own status is not "stopped"
    # old.db beside it is another (stopped) bot instance: the overview lists it as such
    assert 'data-instance="old"' in html and "已停止" in html.split('id="overview-instances"')[1].split("</section>")[0]


def test_missing_db_renders_waiting_and_creates_nothing(tmp_path):
    path = str(tmp_path / "not-yet" / "bollmin.db")
    client = dashboard.create_app(make_cfg(password=""), db_path=path, testing=True).test_client()
    r = client.get("/")
    assert r.status_code == 200 and "等待机器人" in r.get_data(as_text=True)
    s = client.get("/api/status").get_json()
    assert (s["db"], s["bot"], s["alive"], s["state"], s["mode"]) == ("missing", "waiting", False, None, "PAPER")
    for route in GET_ROUTES:
        assert client.get(route).status_code in (200, 302), route
    assert client.get("/api/trades").get_json()["rows"] == []
    token = csrf_from(client.get("/").get_data(as_text=True))
    assert client.post("/control/pause", data={"csrf_token": token, "confirm": "1"}).status_code == 409
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


def test_a_broken_db_is_a_clean_503(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    client = dashboard.create_app(make_cfg(password=""), db_path=str(path), testing=True).test_client()
    r = client.get("/api/status")
    assert r.status_code == 503 and "database" in r.get_json()["error"]
    r = client.get("/")
    assert r.status_code == 503 and "Traceback" not in r.get_data(as_text=True)
    assert client.get("/healthz").status_code == 200


def test_trades_paging_and_paper_filter(authed, dashboard_db):
    _, summary = dashboard_db
    everything = authed.get("/api/trades").get_json()
    assert everything["total"] == summary["paper"] + summary["live"]
    assert everything["pages"] == math.ceil(everything["total"] / 20) and len(everything["rows"]) == 20
    ids = [r["id"] for r in everything["rows"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    paper = authed.get("/api/trades?paper=1").get_json()
    live = authed.get("/api/trades?paper=0").get_json()
    assert paper["total"] == summary["paper"] and live["total"] == summary["live"] == 3
    assert all(r["paper"] for r in paper["rows"]) and not any(r["paper"] for r in live["rows"])
    assert [r["status"] for r in live["rows"]] == ["rejected", "filled", "filled"]
    seen = []
    for page in range(1, paper["pages"] + 1):
        d = authed.get(f"/api/trades?paper=1&page={page}").get_json()
        assert d["page"] == page
        seen += [r["id"] for r in d["rows"]]
    assert len(seen) == len(set(seen)) == summary["paper"]
    assert authed.get("/api/trades?paper=1&page=999").get_json()["page"] == paper["pages"]
    assert authed.get("/api/trades?page=-3").get_json()["page"] == 1
    html = authed.get("/?paper=0").get_data(as_text=True)
    assert html.count('class="badge live"') == 3 and 'class="badge paper"' not in html
    html = authed.get("/?paper=1&page=2").get_data(as_text=True)
    assert f"2 / {paper['pages']}" in html and 'class="badge live"' not in html


def test_chart_candles_bands_and_markers(authed, dashboard_db):
    import pandas as pd

    path, _ = dashboard_db
    chart = authed.get("/api/candles?limit=100").get_json()
    assert len(chart["candles"]) == len(chart["bands"]) == 100
    conn = store.connect_readonly(path)
    closes = [c.close for c in store.read_candles(conn, "BTCUSDT", "15m", 1000)]
    roll = pd.Series(closes).rolling(20)
    mid, sd = roll.mean().iloc[-100:].tolist(), roll.std(ddof=0).iloc[-100:].tolist()
    for (up, m, dn), pm, ps in zip(chart["bands"], mid, sd, strict=True):
        assert m == pytest.approx(pm, rel=1e-9) and up == pytest.approx(pm + 2 * ps, rel=1e-9)
        assert dn == pytest.approx(pm - 2 * ps, rel=1e-9)
    first = chart["candles"][0][0]
    assert chart["markers"] and all(m["time_ms"] >= first for m in chart["markers"])
    assert {m["action"] for m in chart["markers"]} <= {"open_long", "open_short", "close_long", "close_short"}
    fills = store.read_trades(conn, paper=None)
    inside = [f for f in fills if f["time_ms"] >= first]
    assert [(m["time_ms"], m["price"], m["paper"]) for m in chart["markers"]] == [
        (f["time_ms"], f["fill_price"], bool(f["paper"])) for f in inside]
    assert chart["interval_ms"] == 900_000
    assert len(authed.get("/api/candles").get_json()["candles"]) == 300  # the default: every stored candle here
    assert len(authed.get("/api/candles?limit=99999").get_json()["candles"]) == 300


def test_bands_come_from_the_bots_own_indicator_with_ddof_and_short_input():
    from indicators import closing_bands

    assert closing_bands([1.0, 2.0], 3, 2.0, 0) == [None, None]
    (up, mid, dn), = closing_bands([1.0, 2.0, 3.0], 3, 1.0, 1)[2:]
    assert (mid, up - mid, mid - dn) == pytest.approx((2.0, 1.0, 1.0))


def test_chinese_by_default_english_by_cookie_or_query(authed):
    assert "策略状态" in authed.get("/").get_data(as_text=True)
    assert "Strategy state" in authed.get("/?lang=en").get_data(as_text=True)
    authed.set_cookie("lang", "en")
    html = authed.get("/").get_data(as_text=True)
    assert "Strategy state" in html and 'lang="en"' in html and "Holding short" in html
    i18n = json.loads(re.search(r'<script type="application/json" id="i18n">(.*?)</script>', html, re.S).group(1))
    assert i18n["pause"] == "Pause entries"


def test_sampler_follows_the_bot_process(tmp_path):
    import psutil

    sampler = dashboard.Sampler(str(tmp_path))
    me = psutil.Process()
    sampler.watch(os.getpid(), int(me.create_time() * 1000))
    first = sampler.sample()["bot"]
    assert first["source"] == "psutil" and first["pid"] == os.getpid() and first["cpu_pct"] is None
    second = sampler.sample()["bot"]
    assert second["cpu_pct"] is not None and second["rss_bytes"] == pytest.approx(me.memory_info().rss, rel=0.5)
    sampler.watch(os.getpid(), 1)  # a pid that belongs to another program since
    assert sampler.sample()["bot"] is None
    sampler.watch(None, None)
    assert sampler.snapshot()["bot"] is None
    sampler.start()
    sampler.stop()


def test_secret_key_is_random_unless_configured(dashboard_db, monkeypatch):
    path, _ = dashboard_db
    a = dashboard.create_app(make_cfg(), db_path=path)
    b = dashboard.create_app(make_cfg(), db_path=path)
    assert a.secret_key != b.secret_key and len(a.secret_key) >= 32
    monkeypatch.setenv("BOLLMIN_DASHBOARD_SECRET_KEY", "k" * 40)
    assert dashboard.create_app(make_cfg(), db_path=path).secret_key == "k" * 40


def test_serve_refuses_a_public_host_without_password(capsys):
    cfg = dataclasses.replace(make_cfg(password=""), DASHBOARD_HOST="0.0.0.0")  # bypasses validation on purpose
    assert dashboard.serve(cfg) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DASHBOARD_PASSWORD" in err


def test_main_reports_a_bad_config_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BOLLMIN_DASHBOARD_PASSWORD", raising=False)
    monkeypatch.delenv("BOLLMIN_CONFIG", raising=False)
    bad = tmp_path / "cfg.py"
    bad.write_text("DASHBOARD_HOST = '0.0.0.0'\n")
    assert dashboard.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DASHBOARD_PASSWORD" in err
    assert dashboard.main(["--config", str(tmp_path / "missing.py")]) == 2


# ---- sessions live on the server; throttling over all addresses; TLS ---------------------------------

def _session_cookie(client) -> str:
    return client.get_cookie("bollmin_session").value


def test_logout_ends_the_session_on_the_server_not_only_in_the_browser(app, client):
    """A copy of the cookie taken before signing out (another tab, a thief) is worthless afterwards."""
    assert login(client).status_code == 303
    saved = _session_cookie(client)
    other = app.test_client()
    other.set_cookie("bollmin_session", saved)
    assert other.get("/api/status").status_code == 200
    token = csrf_from(client.get("/").get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert other.get("/api/status").status_code == 401
    assert other.get("/").status_code == 302
    assert len(app.extensions["bollmin"].sessions) == 0


def test_sessions_expire_and_are_bounded():
    now = [0.0]
    sessions = dashboard.Sessions(clock=lambda: now[0], lifetime_s=100, limit=3)
    a, b = sessions.start(), sessions.start()
    assert sessions.valid(a) and sessions.valid(b) and not sessions.valid("forged") and not sessions.valid(None)
    now[0] = 101
    assert not sessions.valid(a)
    ids = [sessions.start() for _ in range(5)]
    assert len(sessions) == 3 and not sessions.valid(ids[0]) and sessions.valid(ids[-1])


def test_guesses_spread_over_many_addresses_are_throttled(app, dashboard_db):
    """200 wrong guesses from 50 addresses (4 each: under the per-address limit) lock everyone out."""
    now = [5000.0]
    throttle = app.extensions["bollmin"].throttle
    throttle.clock = lambda: now[0]
    signed_in = app.test_client()
    assert login(signed_in).status_code == 303
    statuses = []
    for i in range(200):
        c = app.test_client()
        r = c.get("/api/status", headers=basic(f"guess-{i}"), environ_base={"REMOTE_ADDR": f"127.0.{i % 50}.9"})
        statuses.append(r.status_code)
    assert statuses[:dashboard.GLOBAL_FREE_FAILURES] == [401] * dashboard.GLOBAL_FREE_FAILURES
    assert statuses.count(401) == dashboard.GLOBAL_FREE_FAILURES + 1 and statuses.count(429) == 179
    # Locked for everyone, even with the right password from a new address; a signed-in session still works.
    fresh = app.test_client()
    r = fresh.get("/api/status", headers=basic(PASSWORD), environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert r.status_code == 429 and 0 < int(r.headers["Retry-After"]) <= dashboard.GLOBAL_LOCK_MAX_S
    assert login(fresh).status_code == 429
    assert signed_in.get("/api/status").status_code == 200
    # The lock ends; the right password then clears the count for everyone.
    now[0] += dashboard.GLOBAL_LOCK_MAX_S + 1
    r = fresh.get("/api/status", headers=basic(PASSWORD), environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert r.status_code == 200
    assert throttle.retry_after("127.0.3.9") == 0


def test_cookies_are_secure_over_tls_only(dashboard_db):
    app = dashboard.create_app(make_cfg(), db_path=dashboard_db[0], testing=True)
    plain = app.test_client()
    assert "Secure" not in login(plain).headers["Set-Cookie"]
    tls = app.test_client()
    token = csrf_from(tls.get("/login", base_url="https://localhost").get_data(as_text=True))
    r = tls.post("/login", data={"password": PASSWORD, "csrf_token": token, "lang": "en"},
                 base_url="https://localhost")
    cookies = r.headers.getlist("Set-Cookie")
    assert r.status_code == 303 and len(cookies) == 2 and all("; Secure" in c for c in cookies), cookies


# ---- static files ---------------------------------------------------------------------------------------

def test_static_files_are_hashed_compressed_and_cached(authed):
    html = authed.get("/").get_data(as_text=True)
    urls = re.findall(r'"(/static/[^"?]+)\?v=([0-9a-f]{12})"', html)
    names = {u.rsplit("/", 1)[-1] for u, _ in urls}
    assert {"style.css", "common.js", "charts.js", "overview.js",
            "lightweight-charts.standalone.production.js"} <= names
    for url, digest in urls:
        path = os.path.join(os.path.dirname(dashboard.__file__), url.lstrip("/"))
        with open(path, "rb") as fh:
            body = fh.read()
        assert hashlib.sha256(body).hexdigest()[:12] == digest
        r = authed.get(f"{url}?v={digest}", headers={"Accept-Encoding": "gzip, br"})
        assert r.status_code == 200 and r.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(r.data) == body and len(r.data) < len(body)
        assert r.headers["Cache-Control"] == "private, max-age=31536000, immutable"
        assert "Accept-Encoding" in r.headers["Vary"] and "nosniff" in r.headers["X-Content-Type-Options"]
        plain = authed.get(url)
        assert plain.data == body and "Content-Encoding" not in plain.headers
        assert plain.headers["Cache-Control"] == "private, no-cache"  # no hash in the URL: revalidate
        assert authed.get(url, headers={"If-None-Match": f'"{digest}"'}).status_code == 304
    assert authed.get("/static/vendor/lightweight-charts/NOTICE").status_code == 200
    for bad in ("/static/nope.js", "/static/../dashboard.py", "/static/%2e%2e/config.py", "/static/vendor"):
        assert authed.get(bad).status_code == 404, bad


def test_the_vendored_chart_library_matches_its_checksums_and_version():
    """What tools/update-lightweight-charts.sh --check verifies, without a shell."""
    folder = os.path.join(os.path.dirname(dashboard.__file__), "static", "vendor", "lightweight-charts")
    with open(os.path.join(folder, "SHA256SUMS")) as fh:
        sums = dict(reversed(line.split()) for line in fh if line.strip())
    assert set(sums) == {"lightweight-charts.standalone.production.js", "LICENSE"}
    for name, digest in sums.items():
        with open(os.path.join(folder, name), "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == digest, name
    with open(os.path.join(folder, "VERSION")) as fh:
        meta = dict(line.split(" ", 1) for line in fh.read().splitlines())
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]) and meta["integrity"].startswith("sha512-")
    with open(os.path.join(folder, "lightweight-charts.standalone.production.js"), encoding="utf-8") as fh:
        head = fh.read(300)
    assert f"Lightweight Charts™ v{meta['version']}" in head and "Apache License 2.0" in head
    with open(os.path.join(folder, "LICENSE")) as fh:
        assert "Apache License" in fh.read()


# ---- the password rule beyond loopback ----------------------------------------------------------------

@pytest.mark.parametrize("password", ["", "Qz", "   ", " " * 12, "shortPw9X", "  abcdefgXY  "])
def test_a_weak_password_is_refused_beyond_loopback(password):
    with pytest.raises(config.ConfigError) as err:
        make_cfg(password=password, DASHBOARD_HOST="0.0.0.0")
    assert "DASHBOARD_PASSWORD" in str(err.value) and "\n" not in str(err.value)
    if password.strip():
        assert password.strip() not in str(err.value)  # never echoed
    assert make_cfg(password=password, DASHBOARD_HOST="127.0.0.1").DASHBOARD_HOST == "127.0.0.1"


def test_a_weak_password_stops_the_dashboard_with_one_line(tmp_path, bollmin_cli):
    path = tmp_path / "cfg.py"
    path.write_text("DASHBOARD_HOST = '::'\n")
    r = bollmin_cli("dashboard", "--config", str(path), env=clean_env(BOLLMIN_DASHBOARD_PASSWORD="1234"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "at least 10 characters" in r.stderr and "1234" not in r.stderr
    assert make_cfg(password="ten chars!", DASHBOARD_HOST="0.0.0.0").DASHBOARD_PASSWORD == "ten chars!"


def test_config_shows_secrets_the_dashboard_was_not_given(dashboard_db):
    app = dashboard.create_app(make_cfg().replace(API_KEY="", API_SECRET=""), db_path=dashboard_db[0], testing=True)
    c = app.test_client()
    assert login(c).status_code == 303
    rows = c.get("/api/config").get_json()
    assert rows["API_KEY"] == rows["API_SECRET"] == "（未提供给控制台）" and rows["DASHBOARD_PASSWORD"] == "***"
    assert rows["NOTIFY_URLS"] == "（未提供给控制台）"
