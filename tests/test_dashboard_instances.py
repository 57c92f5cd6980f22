"""One dashboard for several bots on one server: every bot DB beside DB_PATH is an instance, with
an overview row each; a page, its data and its commands are about the instance chosen (?db=NAME)."""

from __future__ import annotations

import sqlite3

import pytest
from support.web import csrf_from, login, make_cfg

import dashboard
import store


@pytest.fixture
def two_bots(dashboard_db_factory):
    btc, _ = dashboard_db_factory("bollmin.db")
    eth, _ = dashboard_db_factory("ETHUSDT.db", status={"symbol": "ETHUSDT", "state": "SHORT", "position_qty": -0.25,
                                                          "entries_paused": "1", "pause_reason": "by hand"})
    dashboard_db_factory("lab.db", role="backtest")  # not a bot: never an instance
    return btc, eth


def commands(path: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return [tuple(r) for r in conn.execute("SELECT command, status FROM commands ORDER BY id")]
    finally:
        conn.close()


def test_every_bot_beside_db_path_is_an_instance_with_an_overview_row(two_bots):
    btc, eth = two_bots
    c = dashboard.create_app(make_cfg(), db_path=btc, testing=True).test_client()
    login(c)
    rows = c.get("/api/instances").get_json()["rows"]
    assert [(r["name"], r["symbol"]) for r in rows] == [("bollmin", "BTCUSDT"), ("ETHUSDT", "ETHUSDT")]
    eth_row = rows[1]
    assert eth_row["state"] == "SHORT" and eth_row["position"] == -0.25 and eth_row["entries_paused"] is True
    assert eth_row["bot"] == "running" and eth_row["heartbeat_age_s"] is not None
    assert all("today_net_pnl_usdt" in r for r in rows)
    html = c.get("/").get_data(as_text=True)
    assert 'id="overview-instances"' in html and 'href="/?db=ETHUSDT"' in html


def test_a_page_and_its_data_are_about_the_chosen_instance(two_bots):
    btc, eth = two_bots
    c = dashboard.create_app(make_cfg(), db_path=btc, testing=True).test_client()
    login(c)
    assert c.get("/api/status").get_json()["symbol"] == "BTCUSDT"
    s = c.get("/api/status?db=ETHUSDT").get_json()
    assert s["symbol"] == "ETHUSDT" and s["instance"] == "ETHUSDT" and s["entries_paused"] is True
    html = c.get("/?db=ETHUSDT").get_data(as_text=True)
    for cmd in ("pause", "resume", "close_position"):  # the control card and the banners
        assert f'action="/control/{cmd}?db=ETHUSDT"' in html, cmd
    assert 'action="/control/pause"' not in html
    # every link that stays on the page keeps the instance (filters, pages, language, tabs)
    for link in ('href="?paper=1&amp;db=ETHUSDT#trades"', 'href="?paper=&amp;page=2&amp;db=ETHUSDT#trades"',
                 'href="?lang=en&amp;db=ETHUSDT"', 'href="/lab?db=ETHUSDT"'):
        assert link in html, link
    # A name the dashboard did not find is ignored: never a path from outside.
    for wanted in ("../../etc/passwd", "lab", "nope", "/tmp/x.db"):
        assert c.get(f"/api/status?db={wanted}").get_json()["instance"] == "bollmin", wanted


def test_a_command_reaches_only_the_chosen_instance(two_bots):
    btc, eth = two_bots
    c = dashboard.create_app(make_cfg(), db_path=btc, testing=True).test_client()
    login(c)
    token = csrf_from(c.get("/?db=ETHUSDT").get_data(as_text=True))
    r = c.post("/control/resume?db=ETHUSDT", data={"csrf_token": token})  # the confirmation page keeps the choice
    assert 'action="/control/resume?db=ETHUSDT"' in r.get_data(as_text=True)
    r = c.post("/control/resume?db=ETHUSDT", data={"csrf_token": token, "confirm": "1"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/?db=ETHUSDT#controls")
    assert commands(eth) == [("resume", "pending")] and commands(btc) == []
    r = c.post("/control/pause", data={"confirm": "1"}, headers={"X-CSRF-Token": token, "X-Bollmin": "1"})
    assert r.get_json()["instance"] == "bollmin"
    assert commands(btc) == [("pause", "pending")] and commands(eth) == [("resume", "pending")]


def test_one_instance_shows_no_switcher(dashboard_db):
    path, _ = dashboard_db
    c = dashboard.create_app(make_cfg(), db_path=path, testing=True).test_client()
    login(c)
    html = c.get("/").get_data(as_text=True)
    assert 'id="overview-instances"' not in html and 'id="instances"' not in html
    assert [r["name"] for r in c.get("/api/instances").get_json()["rows"]] == [store.os.path.basename(path)[:-3]]
