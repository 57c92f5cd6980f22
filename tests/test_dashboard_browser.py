"""The dashboard in real headless Chromium, served by the real ``python dashboard.py`` on 127.0.0.1.

Driven over the DevTools protocol (``websockets``): every request the page makes is recorded
(``Network.requestWillBeSent``) and must go to 127.0.0.1; JS exceptions, console errors and CSP
violations fail the test. Pages are measured at 360×740, 820×1180 and 1440×900 (no horizontal
scrolling, chart painted) and screenshots are kept in ``artifacts/screenshots/``.

Without Chromium these tests skip locally and FAIL when ``CI`` is set.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from urllib.parse import urlparse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = os.path.join(ROOT, "artifacts", "screenshots")
CHROMIUM = (os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
            or shutil.which("google-chrome"))
MARKET_15M = os.path.join(ROOT, "marketdata", "btcusdt_um_15m_2023.csv.gz")
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

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python dashboard.py --config FILE`` as a child process."""

    def __init__(self, tmp_path, db_path: str, password: str = "") -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp_path / "dashboard_config.py"
        cfg.write_text(f"DB_PATH = {db_path!r}\nDASHBOARD_PORT = {self.port}\nDASHBOARD_PASSWORD = {password!r}\n"
                       f"LOG_FILE = {str(tmp_path / 'bollmin.log')!r}\n")
        self.log_path = tmp_path / "dashboard.stderr"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOLLMIN_")}
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "dashboard.py"), "--config", str(cfg)],
                                     cwd=str(tmp_path), stdout=self.log, stderr=self.log, env=env)
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
    """Writes a heartbeat and a moving price every 0.5 s, like the running bot would."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
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
            with db.transaction():
                db.set_status({"heartbeat_ms": now, "last_message_ms": now, "price": self.price})
            self.stop.wait(0.5)
        db.close()


# ---- tests ------------------------------------------------------------------------------------------

def test_backtest_db_at_phone_tablet_and_desktop(browser, serve, tmp_path, dashboard_db_factory):
    db_path = _backtest_db(tmp_path, dashboard_db_factory)
    server = serve(db_path)
    tab = Tab(browser)
    try:
        for width, height in VIEWPORTS:
            tab.viewport(width, height)
            tab.goto(server.url + "/")
            tab.until("document.body.dataset.updated && +document.getElementById('chart').dataset.drawn > 0"
                      " && document.getElementById('trade-rows').dataset.src === 'js'"
                      " && document.getElementById('event-rows').dataset.src === 'js'", "data and chart")
            m = tab.js("""(() => {
                const cv = document.getElementById('chart');
                const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
                let painted = 0;
                for (let i = 3; i < px.length; i += 4) if (px[i]) painted++;
                return {scroll: document.documentElement.scrollWidth, inner: innerWidth,
                        painted, pixels: cv.width * cv.height, candles: +cv.dataset.drawn,
                        cardsTooWide: [...document.querySelectorAll('.card')].filter(
                            c => c.getBoundingClientRect().right > innerWidth + 0.5).length};
            })()""")
            assert m["scroll"] <= m["inner"], f"horizontal scrolling at {width}px: {m}"
            assert m["cardsTooWide"] == 0, m
            assert m["candles"] == 100, m
            assert m["painted"] > m["pixels"] * 0.02, f"chart looks empty at {width}px: {m}"
            shot = tab.screenshot(f"dashboard-backtest-{width}x{height}.png")
            assert os.path.getsize(shot) > 10_000
            if width == 360:
                tab.screenshot("dashboard-backtest-360x740-first-screen.png", full_page=False)
        page = tab.js("""({state: document.getElementById('state-label').textContent,
            mode: document.getElementById('mode').textContent,
            bot: document.getElementById('bot-text').textContent,
            backtestBanner: !document.getElementById('banner-backtest').hidden,
            xssText: [...document.querySelectorAll('#event-rows .msg')].some(
                e => e.textContent.includes('<script>alert(1)</script>')),
            scripts: document.querySelectorAll('#event-rows script, #event-rows *[onerror]').length,
            trades: document.querySelectorAll('#trade-rows tr').length,
            buttonsDisabled: [...document.querySelectorAll('form.ctl button')].every(b => b.disabled)})""")
        assert page["mode"] == "BACKTEST" and page["backtestBanner"] and page["bot"] == "回测记录", page
        from state import LABEL_ZH

        assert page["state"] in LABEL_ZH.values(), page
        assert page["xssText"] and page["scripts"] == 0, page
        assert page["trades"] == 20 and page["buttonsDisabled"], page
        tab.assert_clean()
    finally:
        tab.close()


def test_live_bot_refreshes_controls_and_english(browser, serve, dashboard_db_factory):
    db_path, _ = dashboard_db_factory("bot.db")
    bot = FakeBot(db_path)
    bot.start()
    server = serve(db_path)
    tab = Tab(browser)
    try:
        tab.viewport(360, 740)
        tab.goto(server.url + "/")
        tab.until("document.body.dataset.updated && +document.getElementById('chart').dataset.drawn > 0",
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
        # (clicked from a timer: confirm() blocks the page, and so would a synchronous evaluate)
        tab.js("setTimeout(() => document.querySelector('form.ctl[data-cmd=pause] button').click(), 0)")
        dialog = browser.wait_event("Page.javascriptDialogOpening", tab.session)
        assert dialog["type"] == "confirm"
        browser.call("Page.handleJavaScriptDialog", {"accept": True}, tab.session)
        deadline = time.monotonic() + TIMEOUT
        while True:
            with sqlite3.connect(db_path) as conn:
                rows = conn.execute("SELECT id, command, status FROM commands").fetchall()
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [r[1:] for r in rows] == [("pause", "pending")]
        tab.until("document.getElementById('commands').textContent.includes('待执行')", "the pending command")
        import store

        db = store.Store(db_path)
        db.finish_command(rows[0][0], True, "entries paused")
        db.set_status({"entries_paused": "1", "pause_reason": "dashboard"})
        db.close()
        tab.until("document.getElementById('commands').textContent.includes('已完成')"
                  " && !document.getElementById('paused').hidden", "the command done")

        # English, remembered across a fresh navigation.
        tab.js("document.getElementById('lang').click()")
        tab.until("document.documentElement.lang === 'en' && document.readyState === 'complete'", "English")
        tab.goto(server.url + "/")
        tab.until("document.body.dataset.updated", "status in English")
        assert tab.js("document.getElementById('h-state').textContent") == "Strategy state"
        assert tab.js("document.getElementById('bot-text').textContent") == "Running"
        tab.viewport(1440, 900)
        tab.until("+document.getElementById('chart').dataset.drawn > 0", "chart")
        tab.js("window.dispatchEvent(new Event('resize'))")
        browser.pump(0.5)
        assert tab.js("document.documentElement.scrollWidth <= innerWidth")
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
        tab.close()


def test_login_form_in_browser(browser, serve, dashboard_db_factory):
    db_path, _ = dashboard_db_factory("bot.db")
    server = serve(db_path, password="correct horse 马")
    assert "correct horse" not in server.log_path.read_text(errors="replace")
    tab = Tab(browser)
    try:
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
        # The 401 of the wrong password is a logged resource error; everything else must be clean.
        tab.dt.events = [m for m in tab.dt.events if not (m.get("method") == "Log.entryAdded"
                                                          and "401" in m["params"]["entry"].get("text", ""))]
        tab.assert_clean()
    finally:
        tab.close()


def test_waiting_page_turns_live_when_the_bot_starts(browser, serve, tmp_path, dashboard_db_factory):
    db_path = str(tmp_path / "later" / "bollmin.db")
    server = serve(db_path)
    tab = Tab(browser)
    try:
        tab.viewport(360, 740)
        tab.goto(server.url + "/")
        tab.until("document.body.dataset.updated", "the first status")
        page = tab.js("""({waiting: !document.getElementById('banner-waiting').hidden,
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
        tab.until("document.getElementById('banner-waiting').hidden && +document.getElementById('chart').dataset.drawn"
                  " === 100 && document.getElementById('state-label').textContent === '持有空仓'", "the bot's data")
        assert tab.js("window.__same_page") == 1
        tab.assert_clean()
    finally:
        tab.close()
    assert server.stop() == 0, "SIGTERM should stop the dashboard cleanly"
    assert "bollmin dashboard on http://127.0.0.1:" in server.log_path.read_text()
