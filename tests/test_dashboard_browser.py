"""The dashboard in real headless Chromium, served by the real ``python dashboard.py`` on 127.0.0.1.

Driven over the DevTools protocol (``websockets``): every request the page makes is recorded
(``Network.requestWillBeSent``) and must go to 127.0.0.1; JS exceptions, console errors and CSP
violations fail the test. The overview (price chart with bands and fills, equity curve, PnL per
day), the strategy lab and the alert banners are measured at 360×740, 820×1180 and 1440×900 (no
horizontal scrolling, charts painted by Lightweight Charts) and screenshots are kept in
``artifacts/screenshots/`` (git-ignored; CI keeps them as artifacts).

Without Chromium these tests skip locally and FAIL when ``CI`` is set.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import pytest
from support.dbs import add_sweep
from support.env import clean_env
from support.net import free_port
from support.paths import MARKET_15M, ROOT

SHOTS = os.path.join(ROOT, "artifacts", "screenshots")
CHROMIUM = (os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
            or shutil.which("google-chrome"))
XSS_EVENT = "<script>alert(1)</script> injected via an event message"
VIEWPORTS = ((360, 740), (820, 1180), (1440, 900))
TIMEOUT = 40.0  # generous: a loaded 2-core machine

pytestmark = pytest.mark.browser


def _require_chromium() -> str:
    if CHROMIUM:
        return CHROMIUM
    message = "Chromium not found: install it (apt-get install -y chromium, or run ./bootstrap.sh test as root)"
    if os.environ.get("CI"):
        pytest.fail(message + " — browser tests must not be skipped in CI")
    pytest.skip(message)


# ---- a minimal DevTools protocol client ---------------------------------------------------------

class DevTools:
    """One browser-level DevTools websocket; page sessions are attached with ``flatten``."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(url, max_size=None, open_timeout=TIMEOUT))
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = TIMEOUT) -> dict:
        self.next_id += 1
        msg_id = self.next_id
        msg: dict = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            m = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if m.get("id") == msg_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def pump(self, seconds: float) -> None:
        """Collect events for a while."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
            except TimeoutError:
                return

    def wait_event(self, method: str, session: str, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for m in self.events[seen:]:
                if m.get("method") == method and m.get("sessionId") == session:
                    self.events.remove(m)
                    return m["params"]
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise AssertionError(f"no {method} within {timeout:.0f} s")
            self.pump(0.2)

    def evaluate(self, session: str, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                      session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def poll(self, session: str, expression: str, what: str, timeout: float = TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(session, expression)
            except RuntimeError:  # evaluated mid-navigation (no body yet, context destroyed): try again
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"page never got {what} within {timeout:.0f} s")
            self.pump(0.25)

    def close(self) -> None:
        self._stack.close()


class Tab:
    """A page in its own browser context (own cookies), with everything it did recorded."""

    def __init__(self, dt: DevTools) -> None:
        self.dt = dt
        self.context = dt.call("Target.createBrowserContext", {"disposeOnDetach": True})["browserContextId"]
        target = dt.call("Target.createTarget", {"url": "about:blank", "browserContextId": self.context})["targetId"]
        self.session = dt.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            dt.call(f"{domain}.enable", session=self.session)

    def mine(self, method: str) -> list[dict]:
        return [m["params"] for m in self.dt.events if m.get("method") == method and m.get("sessionId") == self.session]

    def viewport(self, width: int, height: int) -> None:
        self.dt.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                            "mobile": width < 1000}, self.session)

    def goto(self, url: str) -> None:
        self.dt.call("Page.navigate", {"url": url}, self.session)
        self.dt.poll(self.session, "document.readyState === 'complete' && location.href !== 'about:blank'",
                     "loaded")

    def js(self, expression: str):
        return self.dt.evaluate(self.session, expression)

    def until(self, expression: str, what: str):
        return self.dt.poll(self.session, expression, what)

    def screenshot(self, name: str, full_page: bool = True) -> str:
        params: dict = {"format": "png"}
        if full_page:
            size = self.dt.call("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = self.dt.call("Page.captureScreenshot", params, self.session)["data"]
        os.makedirs(SHOTS, exist_ok=True)
        path = os.path.join(SHOTS, name)
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))
        return path

    def assert_clean(self) -> None:
        """Only local requests; no JS exception, console error, CSP violation or dialog."""
        urls = [p["request"]["url"] for p in self.mine("Network.requestWillBeSent")]
        assert urls, "the browser made no request at all?"
        foreign = [u for u in urls if urlparse(u).scheme not in ("data", "about", "blob")
                   and urlparse(u).hostname != "127.0.0.1"]
        assert not foreign, f"requests to non-local addresses: {foreign}"
        assert not self.mine("Runtime.exceptionThrown"), self.mine("Runtime.exceptionThrown")
        errors = [p for p in self.mine("Runtime.consoleAPICalled") if p["type"] in ("error", "assert")]
        assert not errors, errors
        logged = [p["entry"] for p in self.mine("Log.entryAdded") if p["entry"]["level"] == "error"]
        assert not logged, f"browser errors (CSP violations, failed loads): {logged}"
        assert not self.mine("Page.javascriptDialogOpening"), "a dialog opened (script injection?)"

    def close(self) -> None:
        self.dt.call("Target.disposeBrowserContext", {"browserContextId": self.context})


def click_and_confirm(browser, tab: Tab, selector: str, db_path: str) -> list[tuple]:
    """Click a button that asks confirm(), accept it, and return the commands table's rows
    (id, command, status) once the dashboard has written one (or after TIMEOUT)."""
    # Clicked from a timer: confirm() blocks the page, and so would a synchronous evaluate.
    tab.js(f"setTimeout(() => document.querySelector({json.dumps(selector)}).click(), 0)")
    dialog = browser.wait_event("Page.javascriptDialogOpening", tab.session)
    assert dialog["type"] == "confirm"
    browser.call("Page.handleJavaScriptDialog", {"accept": True}, tab.session)
    deadline = time.monotonic() + TIMEOUT
    while True:
        with sqlite3.connect(db_path) as conn:
            rows = conn.execute("SELECT id, command, status FROM commands").fetchall()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


@pytest.fixture(scope="module")
def browser():
    exe = _require_chromium()
    profile = tempfile.mkdtemp(prefix="bollmin-chromium-")
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + TIMEOUT
    while not (os.path.exists(port_file) and len(_read(port_file).split()) >= 2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"Chromium did not start: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        time.sleep(0.1)
    port, path = _read(port_file).split()[:2]
    dt = DevTools(f"ws://127.0.0.1:{port}{path}")
    try:
        yield dt
    finally:
        dt.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


# ---- the dashboard process ------------------------------------------------------------------------

class Server:
    """``python dashboard.py --config FILE`` as a child process."""

    def __init__(self, tmp_path, db_path: str, password: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp_path / "dashboard_config.py"
        cfg.write_text(f"DB_PATH = {db_path!r}\nDASHBOARD_PORT = {self.port}\nDASHBOARD_PASSWORD = {password!r}\n"
                       f"LOG_FILE = {str(tmp_path / 'bollmin.log')!r}\n")
        self.log_path = tmp_path / "dashboard.stderr"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "dashboard.py"), "--config", str(cfg)],
                                     cwd=str(tmp_path), stdout=self.log, stderr=self.log, env=clean_env())
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    assert json.load(r) == {"ok": True}
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"dashboard did not start: {self.log_path.read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM; the exit code (None when it had to be killed)."""
        code = self.proc.poll()
        if code is None:
            self.proc.terminate()
            try:
                code = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return code


@pytest.fixture
def tab(browser):
    """A fresh browser tab, closed after the test."""
    t = Tab(browser)
    yield t
    t.close()


@pytest.fixture
def serve(tmp_path):
    servers: list[Server] = []

    def start(db_path: str, password: str = "") -> Server:
        servers.append(Server(tmp_path, db_path, password))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _backtest_db(tmp_path, dashboard_db_factory) -> str:
    """A DB written by ``bollmin.py backtest --db`` on 1500 real candles (or built by hand without it)."""
    path = str(tmp_path / "backtest.db")
    if os.path.exists(os.path.join(ROOT, "bollmin.py")):
        import gzip

        klines = tmp_path / "klines.csv"
        with gzip.open(MARKET_15M, "rt") as src, open(klines, "w") as dst:
            for i, line in enumerate(src):
                if i > 1500:
                    break
                dst.write(line)
        done = subprocess.run([sys.executable, os.path.join(ROOT, "bollmin.py"), "backtest", "--klines", str(klines),
                               "--db", path], cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    else:
        dashboard_db_factory("backtest.db", role="backtest", n_candles=600)
    import store

    db = store.Store(path)
    db.add_event("ERROR", XSS_EVENT)
    db.close()
    return path


class FakeBot(threading.Thread):
    """Writes a heartbeat and a moving price every 0.5 s, like the running bot would (or, with
    ``fresh_data=False``, only the heartbeat: a bot whose market data stopped)."""

    def __init__(self, path: str, fresh_data: bool = True) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.fresh_data = fresh_data
        self.stop = threading.Event()
        self.price = None

    def run(self) -> None:
        import store

        db = store.Store(self.path)
        base = float(store.read_status(db.conn)["price"])
        n = 0
        while not self.stop.is_set():
            n += 1
            self.price = round(base + n * 0.1, 1)
            now = store.now_ms()
            values = {"heartbeat_ms": now, "last_message_ms": now, "price": self.price} if self.fresh_data else \
                {"heartbeat_ms": now}
            with db.transaction():
                db.set_status(values)
            self.stop.wait(0.5)
        db.close()


# ---- what the page looks like, measured in the browser --------------------------------------------

PAINTED = """((sel) => {
    const cvs = [...document.querySelectorAll(sel + ' canvas')];
    let painted = 0, pixels = 0;
    for (const cv of cvs) {
        if (!cv.width || !cv.height) continue;
        const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
        pixels += cv.width * cv.height;
        // Painted = differs from the canvas's corner pixel (its background, or transparent).
        for (let i = 0; i < px.length; i += 4) {
            if (px[i] !== px[0] || px[i + 1] !== px[1] || px[i + 2] !== px[2] || px[i + 3] !== px[3]) painted++;
        }
    }
    const box = document.querySelector(sel);
    return {canvases: cvs.length, painted, pixels, drawn: box ? +box.dataset.drawn : 0};
})"""
LAYOUT = """(() => ({scroll: document.documentElement.scrollWidth, inner: innerWidth,
    cardsTooWide: [...document.querySelectorAll('.card')]
        .filter(c => c.getBoundingClientRect().right > innerWidth + 0.5).map(c => c.id || c.className)}))()"""


def painted(tab: Tab, selector: str) -> dict:
    return tab.js(f"{PAINTED}({json.dumps(selector)})")


def assert_fits(tab: Tab, width: int) -> None:
    m = tab.js(LAYOUT)
    assert m["scroll"] <= m["inner"], f"horizontal scrolling at {width}px: {m}"
    assert m["cardsTooWide"] == [], m


def banners(tab: Tab) -> list[dict]:
    return tab.js("""[...document.querySelectorAll('#alerts .banner, .banners .banner:not(#banner-offline)')]
        .filter(b => !b.hidden).map(b => ({kind: b.dataset.kind, level: b.className.replace('banner ', ''),
        text: b.textContent, buttons: [...b.querySelectorAll('button')].map(x => x.textContent)}))""")


def canvas_hash(tab: Tab, selector: str) -> str:
    """A digest of what the chart's canvases show right now."""
    import hashlib

    urls = tab.js(f"[...document.querySelectorAll({json.dumps(selector + ' canvas')})].map(c => c.toDataURL())")
    return hashlib.sha256("|".join(urls).encode()).hexdigest()


# ---- tests ------------------------------------------------------------------------------------------

def test_backtest_db_at_phone_tablet_and_desktop(browser, tab, serve, tmp_path, dashboard_db_factory):
    db_path = _backtest_db(tmp_path, dashboard_db_factory)
    import store

    summary = json.loads(store.read_status(store.connect_readonly(db_path))["summary_json"])
    server = serve(db_path)
    for width, height in VIEWPORTS:
        tab.viewport(width, height)
        tab.goto(server.url + "/")
        tab.until("document.body.dataset.updated && +document.getElementById('price-chart').dataset.drawn > 0"
                  " && +document.getElementById('equity-chart').dataset.drawn > 0"
                  " && document.getElementById('trade-rows').dataset.src === 'js'"
                  " && document.getElementById('event-rows').dataset.src === 'js'", "data and charts")
        browser.pump(0.5)  # let the charts paint their next frame
        assert_fits(tab, width)
        price = painted(tab, "#price-chart")
        assert price["drawn"] == 300 and price["canvases"] >= 2, price
        assert price["painted"] > price["pixels"] * 0.05, f"price chart looks empty at {width}px: {price}"
        for sel in ("#equity-chart", "#daily-chart"):
            m = painted(tab, sel)
            assert m["painted"] > m["pixels"] * 0.02, f"{sel} looks empty at {width}px: {m}"
        shot = tab.screenshot(f"dashboard-backtest-{width}x{height}.png")
        assert os.path.getsize(shot) > 10_000
        if width == 360:
            tab.screenshot("dashboard-backtest-360x740-first-screen.png", full_page=False)
    page = tab.js("""({state: document.getElementById('state-label').textContent,
        mode: document.getElementById('mode').textContent,
        bot: document.getElementById('bot-text').textContent,
        xssText: [...document.querySelectorAll('#event-rows .msg')].some(
            e => e.textContent.includes('<script>alert(1)</script>')),
        scripts: document.querySelectorAll('#event-rows script, #event-rows *[onerror]').length,
        trades: document.querySelectorAll('#trade-rows tr').length,
        equityTotal: document.getElementById('eq-paper').textContent,
        buttonsDisabled: [...document.querySelectorAll('#controls form.ctl button')].every(b => b.disabled)})""")
    assert page["mode"] == "BACKTEST" and page["bot"] == "回测记录", page
    from state import LABEL_ZH

    assert page["state"] in LABEL_ZH.values(), page
    assert page["xssText"] and page["scripts"] == 0, page
    assert page["trades"] == 20 and page["buttonsDisabled"], page
    # The equity curve ends at the backtest's net PnL (realised PnL minus every fee paid).
    assert page["equityTotal"] == f"{summary['net_pnl_usdt']:+,.2f} USDT", (page, summary)
    kinds = {b["kind"] for b in banners(tab)}
    assert "backtest" in kinds
    assert ("backtest_loss" in kinds) == (summary["net_pnl_usdt"] < 0), (kinds, summary["net_pnl_usdt"])
    tab.assert_clean()


def test_price_chart_zooms_pans_and_shows_the_crosshair(browser, tab, serve, dashboard_db_factory):
    db_path, _ = dashboard_db_factory("bot.db")
    server = serve(db_path)
    tab.viewport(1440, 900)
    tab.goto(server.url + "/")
    tab.until("+document.getElementById('price-chart').dataset.drawn > 0", "the price chart")
    browser.pump(0.5)
    box = tab.js("(() => { const r = document.getElementById('price-chart').getBoundingClientRect();"
                 " return {x: r.left, y: r.top, w: r.width, h: r.height}; })()")
    default = tab.js("document.getElementById('chart-readout').textContent")
    x, y = box["x"] + box["w"] * 0.3, box["y"] + box["h"] * 0.5

    def mouse(kind: str, mx: float, my: float, **extra) -> None:
        browser.call("Input.dispatchMouseEvent", {"type": kind, "x": mx, "y": my, **extra}, tab.session)

    # Crosshair: hovering shows that candle's OHLC and bands, not the last one's.
    mouse("mouseMoved", x, y)
    tab.until(f"document.getElementById('chart-readout').textContent !== {json.dumps(default)}", "the readout")
    hovered = tab.js("document.getElementById('chart-readout').textContent")
    assert " O " in hovered and " UP " in hovered and hovered != default
    def redrawn(old: str, what: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while (new := canvas_hash(tab, "#price-chart")) == old:
            assert time.monotonic() < deadline, what
            browser.pump(0.2)
        return new

    before = canvas_hash(tab, "#price-chart")
    # Zoom: the mouse wheel rescales the time axis (the chart is redrawn).
    mouse("mouseWheel", x, y, deltaX=0, deltaY=-600)
    redrawn(before, "the wheel did not zoom the chart")
    # Pan: dragging to the right brings earlier candles under the same point.
    readout = "document.getElementById('chart-readout').textContent"
    mouse("mouseMoved", x, y + 1)
    browser.pump(0.3)
    under = tab.js(readout)[:11]  # "MM-DD HH:MM" of the candle under the pointer
    mouse("mousePressed", x, y, button="left", clickCount=1)
    for i in range(1, 6):
        mouse("mouseMoved", x + i * 40, y, button="left", buttons=1)
    mouse("mouseReleased", x + 200, y, button="left", clickCount=1)
    mouse("mouseMoved", x, y)
    tab.until(f"{readout}.slice(0, 11) < {json.dumps(under)}", "earlier candles after dragging to the right")
    tab.js("document.getElementById('chart-reset').click()")
    browser.pump(0.3)
    tab.screenshot("dashboard-chart-1440x900.png", full_page=False)
    tab.assert_clean()


def test_alert_banners_at_phone_tablet_and_desktop(browser, tab, serve, dashboard_db_factory):
    """A reconciliation mismatch, paused entries (resumable from the banner) and stale market data;
    then the bot stops writing its heartbeat."""
    import store

    now = store.now_ms()
    db_path, _ = dashboard_db_factory("alerts.db", status={"entries_paused": "1", "pause_reason": "3 rejected orders",
                                                            "last_message_ms": now - 95_000,
                                                            "connection": "reconnecting"})
    db = store.Store(db_path)
    db.add_event("CRITICAL", "RECONCILE (startup): stored state LONG (position 0.003) but the exchange holds "
                 "nothing: adopting FLAT", now - 600_000)
    db.close()
    bot = FakeBot(db_path, fresh_data=False)
    bot.start()
    server = serve(db_path)
    try:
        for width, height in VIEWPORTS:
            tab.viewport(width, height)
            tab.goto(server.url + "/")
            tab.until("document.getElementById('alerts').dataset.src === 'js'", "the alerts")
            shown = banners(tab)
            kinds = [b["kind"] for b in shown]
            assert kinds[:2] == ["stale", "reconcile"] and "paused" in kinds, shown
            stale = shown[0]
            assert stale["level"] == "bad" and "行情数据已" in stale["text"] and "重连中" in stale["text"], stale
            assert "RECONCILE (startup)" in shown[1]["text"] and "知道了" in shown[1]["buttons"]
            paused = next(b for b in shown if b["kind"] == "paused")
            assert "3 rejected orders" in paused["text"] and paused["buttons"] == ["恢复开仓"], paused
            assert_fits(tab, width)
            tab.screenshot(f"dashboard-alerts-{width}x{height}.png", full_page=False)
        # Resume from the banner: confirm, then a command for the bot.
        rows = click_and_confirm(browser, tab, "#alerts [data-kind=paused] button", db_path)
        assert [r[1:] for r in rows] == [("resume", "pending")]
        # Dismissing the reconciliation alert keeps it away after a reload.
        tab.js("document.querySelector('#alerts [data-kind=reconcile] button.dismiss').click()")
        tab.goto(server.url + "/")
        tab.until("document.getElementById('alerts').dataset.src === 'js'", "the alerts again")
        assert "reconcile" not in [b["kind"] for b in banners(tab)]
        # The bot stops: its heartbeat ages and the page says so.
        bot.stop.set()
        bot.join(10)
        tab.until("[...document.querySelectorAll('#alerts .banner')].some(b => b.dataset.kind === 'dead')",
                  "the heartbeat alert")
        dead = next(b for b in banners(tab) if b["kind"] == "dead")
        assert dead["level"] == "bad" and "心跳已停止" in dead["text"]
        tab.screenshot("dashboard-alert-dead-1440x900.png", full_page=False)
        dialogs = tab.mine("Page.javascriptDialogOpening")
        assert dialogs == []  # wait_event consumed the expected one
        tab.assert_clean()
    finally:
        bot.stop.set()


def test_strategy_lab_at_phone_tablet_and_desktop(browser, tab, serve, dashboard_db_factory):
    db_path, _ = dashboard_db_factory("bot.db")
    sweep = add_sweep(db_path)  # into lab.db beside it, where the dashboard finds it
    server = serve(db_path)
    for width, height in VIEWPORTS:
        tab.viewport(width, height)
        tab.goto(server.url + "/lab")
        tab.until("+document.getElementById('lab-chart').dataset.drawn > 0", "the equity curves")
        browser.pump(0.5)
        assert_fits(tab, width)
        m = painted(tab, "#lab-chart")
        assert m["drawn"] == 6 and m["painted"] > m["pixels"] * 0.01, m
        page = tab.js("""({cells: document.querySelectorAll('table.heat td a').length,
            rows: document.querySelectorAll('table.rank tbody tr').length,
            current: document.querySelectorAll('table.heat td.current').length,
            legend: document.querySelectorAll('#lab-legend li').length})""")
        # 3 periods x 4 k; the ranking lists every set; the running parameters (20, 2.0) are marked.
        assert page == {"cells": 12, "rows": 12, "current": 1, "legend": 6}, page
        tab.screenshot(f"lab-{width}x{height}.png")
    kinds = [b["kind"] for b in banners(tab)]
    nets = [r[3] for r in sweep["results"]]
    current = next(r for r in sweep["results"] if r[1:3] == (20, 2.0))
    assert ("all_lost" in kinds) == (max(nets) <= 0), (kinds, nets)
    # The running set is looked at first; its loss is the alert every page shows.
    assert ("params_loss" in kinds) == (current[3] < 0) and "set_loss" not in kinds, (kinds, current)
    # A click on a ranking row opens that set: its curve is drawn and its loss is named.
    worst = min(sweep["results"], key=lambda r: r[3])
    tab.js(f"document.querySelector('table.rank tbody tr[data-id=\"{worst[0]}\"] td:first-child').click()")
    tab.until(f"location.search.includes('set={worst[0]}') && document.readyState === 'complete'"
              " && +document.getElementById('lab-chart').dataset.drawn > 0", "the chosen set")
    assert str(worst[0]) in tab.js("document.getElementById('lab-chart').dataset.ids").split(",")
    text = next(b["text"] for b in banners(tab) if b["kind"] == "set_loss")
    assert f"周期 {worst[1]}" in text and f"{worst[3]:+,.2f}" in text, text
    tab.assert_clean()


def test_lab_without_results_says_how_to_get_them(browser, tab, serve, dashboard_db_factory):
    db_path, _ = dashboard_db_factory("bot.db")
    server = serve(db_path)
    tab.viewport(360, 740)
    tab.goto(server.url + "/lab")
    tab.until("document.body.dataset.updated", "the page")
    assert "sweep --klines" in tab.js("document.getElementById('lab-empty').textContent")
    assert_fits(tab, 360)
    tab.screenshot("lab-empty-360x740.png", full_page=False)
    tab.assert_clean()


def test_live_bot_refreshes_controls_and_english(browser, tab, serve, dashboard_db_factory):
    db_path, _ = dashboard_db_factory("bot.db")
    bot = FakeBot(db_path)
    bot.start()
    server = serve(db_path)
    try:
        tab.viewport(360, 740)
        tab.goto(server.url + "/")
        tab.until("document.body.dataset.updated && +document.getElementById('price-chart').dataset.drawn > 0",
                  "the first status")
        assert tab.js("document.getElementById('bot-text').textContent") == "运行中"
        # The price moves without a page reload.
        tab.js("window.__same_page = 1")
        seen = tab.js("document.querySelector('[data-k=price]').textContent")
        tab.until(f"document.querySelector('[data-k=price]').textContent !== {json.dumps(seen)}", "a new price")
        assert tab.js("window.__same_page") == 1
        tab.screenshot("dashboard-bot-360x740.png")
        tab.screenshot("dashboard-bot-360x740-first-screen.png", full_page=False)

        # "Pause entries": confirm dialog, then a CSRF-protected POST queues the command.
        rows = click_and_confirm(browser, tab, "#controls form.ctl[data-cmd=pause] button", db_path)
        assert [r[1:] for r in rows] == [("pause", "pending")]
        tab.until("document.getElementById('commands').textContent.includes('待执行')", "the pending command")
        import store

        db = store.Store(db_path)
        db.finish_command(rows[0][0], True, "entries paused")
        db.set_status({"entries_paused": "1", "pause_reason": "dashboard"})
        db.close()
        tab.until("document.getElementById('commands').textContent.includes('已完成')"
                  " && !document.getElementById('paused').hidden"
                  " && !!document.querySelector('#alerts [data-kind=paused]')", "the command done")

        # English, remembered across a fresh navigation.
        tab.js("document.getElementById('lang').click()")
        tab.until("document.documentElement.lang === 'en' && document.readyState === 'complete'", "English")
        tab.goto(server.url + "/")
        tab.until("document.body.dataset.updated", "status in English")
        assert tab.js("document.getElementById('h-state').textContent") == "Strategy state"
        assert tab.js("document.getElementById('bot-text').textContent") == "Running"
        assert "New entries are paused: dashboard" in tab.js("document.getElementById('alerts').textContent")
        tab.viewport(1440, 900)
        tab.until("+document.getElementById('price-chart').dataset.drawn > 0", "chart")
        tab.js("window.dispatchEvent(new Event('resize'))")
        browser.pump(0.5)
        assert_fits(tab, 1440)
        tab.screenshot("dashboard-bot-en-1440x900.png")
        browser.call("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
                     tab.session)
        tab.until("matchMedia('(prefers-color-scheme: dark)').matches", "dark mode")
        browser.pump(0.5)
        tab.screenshot("dashboard-bot-en-dark-1440x900.png", full_page=False)
        # The confirm dialog above was the only one.
        dialogs = tab.mine("Page.javascriptDialogOpening")
        assert dialogs == []  # wait_event consumed the expected one
        tab.assert_clean()
    finally:
        bot.stop.set()


def test_login_form_in_browser(browser, tab, serve, dashboard_db_factory):
    db_path, _ = dashboard_db_factory("bot.db")
    server = serve(db_path, password="correct horse 马")
    assert "correct horse" not in server.log_path.read_text(errors="replace")
    tab.viewport(360, 740)
    tab.goto(server.url + "/")
    tab.until("location.pathname === '/login' && !!document.getElementById('password')", "the login form")
    assert tab.js("getComputedStyle(document.querySelector('button')).backgroundColor") != "rgba(0, 0, 0, 0)", \
        "the login page's nonce'd style was blocked"
    tab.screenshot("login-360x740.png", full_page=False)
    tab.js("document.getElementById('password').value = 'wrong'; document.querySelector('form').submit()")
    tab.until("document.readyState === 'complete' && !!document.querySelector('.err')", "the wrong-password note")
    tab.js("document.getElementById('password').value = 'correct horse 马';"
           " document.querySelector('form').submit()")
    tab.until("location.pathname === '/' && document.body.dataset.updated", "the dashboard after login")
    cookies = browser.call("Network.getCookies", session=tab.session)["cookies"]
    session_cookie = [c for c in cookies if c["name"] == "bollmin_session"][0]
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Strict"
    assert not session_cookie["secure"]  # plain http on loopback; over TLS it is Secure
    # Signing out ends the session on the server: the same cookie no longer opens anything.
    tab.js("document.querySelector('form[action=\"/logout\"]').submit()")
    tab.until("location.pathname === '/login'", "the login page after signing out")
    header = {"Cookie": f"bollmin_session={session_cookie['value']}"}
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(urllib.request.Request(server.url + "/api/status", headers=header), timeout=10)
    assert denied.value.code == 401
    # The 401 of the wrong password is a logged resource error; everything else must be clean.
    tab.dt.events = [m for m in tab.dt.events if not (m.get("method") == "Log.entryAdded"
                                                      and "401" in m["params"]["entry"].get("text", ""))]
    tab.assert_clean()


def test_waiting_page_turns_live_when_the_bot_starts(browser, serve, tmp_path, dashboard_db_factory):
    db_path = str(tmp_path / "later" / "bollmin.db")
    server = serve(db_path)
    tab = Tab(browser)
    try:
        tab.viewport(360, 740)
        tab.goto(server.url + "/")
        tab.until("document.body.dataset.updated && document.getElementById('alerts').dataset.src === 'js'",
                  "the first status")
        page = tab.js("""({waiting: !!document.querySelector('#alerts [data-kind=waiting]'),
            bot: document.getElementById('bot-text').textContent,
            empty: !document.getElementById('chart-empty').hidden,
            scroll: document.documentElement.scrollWidth <= innerWidth})""")
        assert page == {"waiting": True, "bot": "等待机器人", "empty": True, "scroll": True}
        tab.screenshot("dashboard-waiting-360x740.png", full_page=False)
        # The bot creates its DB: the open page notices within a few refreshes, without a reload.
        os.makedirs(os.path.dirname(db_path))
        made, _ = dashboard_db_factory("made.db")
        shutil.copy(made, db_path)
        tab.js("window.__same_page = 1")
        tab.until("!document.querySelector('#alerts [data-kind=waiting]')"
                  " && +document.getElementById('price-chart').dataset.drawn === 300"
                  " && document.getElementById('state-label').textContent === '持有空仓'", "the bot's data")
        assert tab.js("window.__same_page") == 1
        tab.assert_clean()
    finally:
        tab.close()
    assert server.stop() == 0, "SIGTERM should stop the dashboard cleanly"
    assert "bollmin dashboard on http://127.0.0.1:" in server.log_path.read_text()


def test_several_instances_switch_at_phone_and_desktop(browser, tab, serve, dashboard_db_factory):
    """Two bots beside each other (auto_deploy.sh add ETHUSDT): the overview lists both, the header
    switches between them, and every request the page then makes is about the chosen one."""
    btc, _ = dashboard_db_factory("bollmin.db")
    dashboard_db_factory("ETHUSDT.db", status={"symbol": "ETHUSDT", "state": "SHORT", "position_qty": -0.25})
    server = serve(btc)
    for width, height in ((360, 740), (1440, 900)):
        tab.viewport(width, height)
        tab.goto(server.url + "/")
        tab.until("document.body.dataset.updated", "the page")
        names = tab.js("[...document.querySelectorAll('#overview-instances tbody tr')]"
                       ".map(r => r.dataset.instance)")
        assert names == ["bollmin", "ETHUSDT"], names
        assert_fits(tab, width)
        tab.screenshot(f"dashboard-instances-{width}x{height}.png", full_page=False)
    tab.js("[...document.querySelectorAll('#instances a')].find(a => a.textContent === 'ETHUSDT').click()")
    tab.until("location.search === '?db=ETHUSDT' && document.readyState === 'complete'", "the ETHUSDT page")
    tab.until("document.body.dataset.updated", "the ETHUSDT data")
    assert tab.js("document.querySelector('#instances a.on').textContent") == "ETHUSDT"
    assert tab.js("document.querySelector('#overview-instances tr.current').dataset.instance") == "ETHUSDT"
    api = [p["request"]["url"] for p in tab.mine("Network.requestWillBeSent")
           if "/api/" in p["request"]["url"] and "db=ETHUSDT" in p["request"]["url"]]
    assert any("/api/status" in u for u in api) and any("/api/candles" in u for u in api), api
    assert tab.js("document.querySelector('form[data-cmd=pause]').getAttribute('action')") == \
        "/control/pause?db=ETHUSDT"
    tab.assert_clean()
