"""bollmin dashboard: one Flask process that shows what the bot is doing and queues commands.

Run it with ``python bollmin.py dashboard`` or ``python dashboard.py [--config PATH]``. It is a
process of its own, so its load or a crash can never touch trading. It opens the SQLite file
read-only (``store.connect_readonly``, one connection per request on ``g``; every query is a
read helper in ``store.py``; what the page shows is computed in ``dashboard_data.py``) and its
only write is one row in ``commands`` (``store.Command``), which the bot carries out and marks
done or failed. It never talks to the exchange and the page loads nothing from outside (no
CDN, no web fonts): ``templates/`` (texts in ``templates/i18n.json``), ``static/`` (our
scripts and styles, and TradingView's Lightweight Charts vendored in ``static/vendor/``; see
``tools/update-lightweight-charts.sh``).

It is served by waitress (``serve``): one I/O thread holds every connection, idle or slow ones
included, and ``THREADS`` worker threads run requests, so open sockets cost no threads.

Pages: ``GET /`` (overview: state, price chart with bands and fills, equity curve, PnL per day,
alerts, controls, trades, events), ``GET /lab`` (strategy-lab results of ``sweep --db``).
Routes: ``GET /healthz`` (``{"ok": true}``, no auth), ``GET|POST /login``, ``POST /logout``,
``POST /control/<command>`` and the JSON API ``GET /api/status``, ``/api/candles``,
``/api/pnl``, ``/api/trades?paper=1|0&page=N``, ``/api/events``, ``/api/system``,
``/api/commands``, ``/api/config``, ``/api/lab``, ``/api/lab/equity``. A GET never changes
anything. JSON carries raw text; the HTML escapes everything (Jinja autoescape; the scripts only
ever use ``textContent``).

Never slowing trading: the unit runs it in the idle scheduling class (any task that wakes up,
the bot's included, takes the core from it at once) at nice 10, and ``serve`` lowers itself to
nice 10 when started by hand; the DB part of ``/api/status`` is cached for ``STATUS_CACHE_S``
(one read per second however many tabs poll), the PnL series until an order changes, and the
static files are read once, hashed and compressed at start.

Security decisions:
  * Beyond loopback a ``DASHBOARD_PASSWORD`` of at least 10 characters is required (config
    validation; ``serve`` refuses with exit 2 too).
  * With a password, every route but ``/healthz`` and the login form needs either a signed-in
    session or HTTP Basic with any user name. Passwords are compared in constant time.
  * Sessions live on the server (``Sessions``): the cookie (HttpOnly, SameSite=Strict, Secure
    when the request came over TLS, 12 h) carries only a random id; logging out forgets it, so
    a copy of the cookie is worthless afterwards. A restart of the dashboard signs everyone out.
  * Failed passwords are throttled per client address (from the 5th failure in a row a lockout
    of 15 s, doubling up to an hour) and over all addresses together (from the 21st failure in a
    row since the last success, 15 s doubling up to 15 min), with HTTP 429 and Retry-After even
    for the right password. A signed-in session keeps working.
  * Behind a reverse proxy on the same machine (a peer of 127.0.0.1 or ::1), its
    X-Forwarded-For and X-Forwarded-Proto are believed: the client's address for the throttle,
    https for Secure cookies. From any other peer they are dropped.
  * Every POST (login, logout, controls) needs the per-session CSRF token and, when the
    browser sends one, an Origin equal to our own. Controls also need ``confirm=1``;
    without it the server answers with a confirmation page and queues nothing.
  * CSP ``default-src 'self'`` without inline script (the login page's small inline style
    carries a per-response nonce), X-Frame-Options DENY, nosniff, Referrer-Policy no-referrer,
    and ``Cache-Control: no-store`` on everything that is not a static file.
  * Without a password (loopback only) a request whose Host is not a loopback name is refused
    (400): that is a DNS-rebinding page in the user's browser, not the user.

Why one file of this size: a newcomer finds every route with its authentication, caching and
serving in one place (the Flask tutorial's shape); what is not the web app lives elsewhere
(figures, alerts and formats in ``dashboard_data.py``, queries in ``store.py``, bands in
``indicators.py``, texts in ``templates/i18n.json``).

Why one file of this size: it is the whole web app by design (routes, sign-in, sessions,
CSRF, the response cache, the waitress server). What it shows is computed in ``dashboard_data.py``,
read by ``store.py`` helpers, worded in ``templates/i18n.json``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import hmac
import logging
import math
import mimetypes
import os
import resource
import secrets
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from flask import Flask, Response, current_app, g, jsonify, redirect, render_template, request, session
from flask.sessions import SecureCookieSessionInterface

import config
import sdnotify
import store
from dashboard_data import (
    CHART_CANDLES,
    MAX_CHART_CANDLES,
    PER_PAGE,
    Sampler,
    derive_status,
    fmt,
    instance_rows,
    lab_view,
    page_alerts,
    read_chart,
    read_orders_page,
    read_pnl,
    read_pnl_empty,
    read_snapshot,
    sign_class,
    texts,
)
from store import Command

log = logging.getLogger("bollmin.dashboard")

HERE = os.path.dirname(os.path.abspath(__file__))
STATUS_CACHE_S = 1.0  # the DB part of /api/status is read at most once per this
LAB_SCAN_S = 10.0  # the directory of DB_PATH is searched for strategy-lab DBs at most once per this
INSTANCE_SCAN_S = 10.0  # ... and for the DBs of other bot instances (several symbols)
PNL_CACHE_S = 30.0  # chart and PnL JSON: recomputed when a candle or an order changes, and at least this often
SESSION_S = 12 * 3600
MAX_SESSIONS = 1000
FREE_FAILURES = 4  # failed passwords from one address before its lockout starts (the 5th locks)
LOCK_BASE_S, LOCK_MAX_S = 15.0, 3600.0
GLOBAL_FREE_FAILURES = 20  # failed passwords from all addresses together before everyone is locked out
GLOBAL_LOCK_MAX_S = 900.0
THREADS = 4  # waitress worker threads; connections themselves cost none
IDLE_TIMEOUT_S = 60  # an idle keep-alive connection is closed after this
MIN_NICE = 10  # started by hand, the page runs at least this nice


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _int(text: Any) -> int | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return int(value) if math.isfinite(value) else None


# ---- sign-in: failed-password throttle and server-side sessions ------------------------------

class Throttle:
    """Failed passwords, per client address and over all addresses together.

    Per address: from failure ``FREE_FAILURES + 1`` in a row a lockout of ``LOCK_BASE_S``,
    doubling with each further failure up to ``LOCK_MAX_S``. All addresses together: the same
    from failure ``GLOBAL_FREE_FAILURES + 1`` since the last success, up to
    ``GLOBAL_LOCK_MAX_S``, so guesses spread over many addresses are slowed down too.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._fails: dict[str, tuple[int, float]] = {}  # address -> (failures, locked until)
        self._global: tuple[int, float] = (0, 0.0)

    @staticmethod
    def _until(now: float, count: int, free: int, cap: float) -> float:
        return now + min(cap, LOCK_BASE_S * 2 ** (count - free - 1)) if count > free else 0.0

    def retry_after(self, addr: str) -> int:
        """Seconds ``addr`` must still wait (0: it may try)."""
        with self._lock:
            until = max(self._fails.get(addr, (0, 0.0))[1], self._global[1])
        return max(0, math.ceil(until - self.clock()))

    def failed(self, addr: str) -> None:
        with self._lock:
            now = self.clock()
            if len(self._fails) > 10_000:  # bound memory under a spray of addresses
                self._fails = {a: v for a, v in self._fails.items() if v[1] > now}
            count = self._fails.get(addr, (0, 0.0))[0] + 1
            self._fails[addr] = (count, self._until(now, count, FREE_FAILURES, LOCK_MAX_S))
            total = self._global[0] + 1
            self._global = (total, self._until(now, total, GLOBAL_FREE_FAILURES, GLOBAL_LOCK_MAX_S))

    def succeeded(self, addr: str) -> None:
        with self._lock:
            self._fails.pop(addr, None)
            self._global = (0, 0.0)


class Sessions:
    """Signed-in sessions, kept on the server: the cookie only names one (a random id).

    ``end`` forgets a session (logout), so a copy of its cookie no longer signs anyone in;
    sessions also end after ``lifetime_s`` and when the dashboard restarts. At most ``limit``
    are kept (the oldest go first).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, lifetime_s: float = SESSION_S,
                 limit: int = MAX_SESSIONS) -> None:
        self.clock, self.lifetime_s, self.limit = clock, lifetime_s, limit
        self._lock = threading.Lock()
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def start(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = self.clock()
            for old in [s for s, t in self._expiry.items() if t <= now]:
                del self._expiry[old]
            while len(self._expiry) >= self.limit:
                self._expiry.popitem(last=False)
            self._expiry[sid] = now + self.lifetime_s
        return sid

    def valid(self, sid: Any) -> bool:
        if not isinstance(sid, str):
            return False
        with self._lock:
            expiry = self._expiry.get(sid)
            if expiry is not None and expiry <= self.clock():
                del self._expiry[sid]
                expiry = None
        return expiry is not None

    def end(self, sid: Any) -> None:
        with self._lock:
            if isinstance(sid, str):
                self._expiry.pop(sid, None)

    def __len__(self) -> int:
        return len(self._expiry)


class _SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request came over TLS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


# ---- caching and static files ----------------------------------------------------------------

class TtlCache:
    """One value per key, computed at most once per ``ttl_s``; concurrent askers wait for it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, keys: int = 64) -> None:
        self.clock, self.keys = clock, keys
        self._lock = threading.Lock()
        self._values: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._computing: dict[Any, threading.Lock] = {}

    def get(self, key: Any, ttl_s: float, compute: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._values.get(key)
            if hit is not None and self.clock() - hit[0] < ttl_s:
                return hit[1]
            key_lock = self._computing.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._values.get(key)
                if hit is not None and self.clock() - hit[0] < ttl_s:
                    return hit[1]
            value = compute()
            with self._lock:
                self._values[key] = (self.clock(), value)
                self._values.move_to_end(key)
                while len(self._values) > self.keys:
                    old, _ = self._values.popitem(last=False)
                    self._computing.pop(old, None)
            return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


class Assets:
    """The files under ``static/``, read once at start and served from memory.

    Each URL carries the file's own content hash (``?v=``), so a browser may keep it for a year
    and fetches it again only when that file changes; text files are also kept gzip-compressed
    for browsers that accept it.
    """

    COMPRESS = (".js", ".css", ".svg", ".json", ".txt", ".html")

    def __init__(self, root: str) -> None:
        self.files: dict[str, tuple[bytes, bytes | None, str, str]] = {}  # name -> body, gzip, type, hash
        for folder, _dirs, names in os.walk(root):
            for name in sorted(names):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                with open(path, "rb") as fh:
                    body = fh.read()
                packed = gzip.compress(body, 9, mtime=0) if name.endswith(self.COMPRESS) else None
                kind = mimetypes.guess_type(name)[0] or "text/plain"
                if kind.startswith("text/") or kind.endswith("javascript"):
                    kind += "; charset=utf-8"
                self.files[rel] = (body, packed if packed and len(packed) < len(body) else None, kind,
                                   hashlib.sha256(body).hexdigest()[:12])

    def url(self, name: str) -> str:
        return f"/static/{name}?v={self.files[name][3]}"

    def response(self, name: str) -> Response | None:
        """The file for this request (gzip when accepted, 304 when the browser has it), or None."""
        found = self.files.get(name)
        if found is None:
            return None
        body, packed, kind, digest = found
        if request.if_none_match.contains(digest):
            resp = Response(status=304)
        elif packed is not None and "gzip" in request.accept_encodings:
            resp = Response(packed, mimetype=kind)
            resp.headers["Content-Encoding"] = "gzip"
        else:
            resp = Response(body, mimetype=kind)
        resp.set_etag(digest)
        resp.headers["Vary"] = "Accept-Encoding"
        fresh = request.args.get("v") == digest
        resp.headers["Cache-Control"] = "private, max-age=31536000, immutable" if fresh else "private, no-cache"
        return resp


# ---- the app -----------------------------------------------------------------------------------

class _Ctx:
    """What the app keeps between requests. ``db_path`` is the default instance's DB (DB_PATH);
    every other bot instance's DB in the same directory is found by ``instances`` (several symbols
    on one server: ``auto_deploy.sh add SYMBOL`` keeps each instance's DB there)."""

    def __init__(self, cfg: config.Config, db_path: str) -> None:
        self.cfg = cfg
        self.db_path = db_path
        self.password = cfg.DASHBOARD_PASSWORD
        self.throttle = Throttle()
        self.sessions = Sessions()
        self.cache = TtlCache()
        self.assets = Assets(os.path.join(HERE, "static"))
        self.sampler = Sampler(os.path.dirname(os.path.abspath(db_path)))

    def instances(self) -> list[tuple[str, str]]:
        """``(name, DB path)`` of every bot instance: the default one first, then the other bot DBs
        beside it by name (a name is the DB file's name without ``.db``)."""
        def scan() -> list[tuple[str, str]]:
            default = os.path.abspath(self.db_path)
            found = [(_instance_name(d["path"]), d["path"])
                     for d in store.find_databases(os.path.dirname(default))
                     if d["db_role"] == "bot" and os.path.abspath(d["path"]) != default]
            return [(_instance_name(default), default), *sorted(found)]

        return self.cache.get(("instances",), INSTANCE_SCAN_S, scan)


def _instance_name(path: str) -> str:
    name = os.path.basename(path)
    return name[:-3] if name.endswith(".db") else name


def _ctx() -> _Ctx:
    return current_app.extensions["bollmin"]


def _instance() -> tuple[str, str]:
    """The instance this request is about: ``?db=NAME`` (or the form's ``db``) when NAME is one the
    dashboard found, else the default one. Anything else is ignored (never a path from outside)."""
    if "instance" not in g:
        wanted = request.args.get("db") or request.form.get("db") or ""
        found = _ctx().instances()
        g.instance = next((i for i in found if i[0] == wanted), found[0])
    return g.instance


def _db_path() -> str:
    return _instance()[1]


def get_lab_db() -> sqlite3.Connection | None:
    """This request's read-only connection to the strategy lab's DB: the newest file with sweep
    results (``db_role`` sweep) in the directory of DB_PATH; None when there is none."""
    if "lab_db" not in g:
        ctx = _ctx()
        paths = ctx.cache.get(("lab_dbs",), LAB_SCAN_S, lambda: [
            d["path"] for d in store.find_databases(os.path.dirname(os.path.abspath(ctx.db_path)))
            if d["db_role"] == "sweep"])
        g.lab_db = None
        if paths:
            newest = max(paths, key=lambda p: os.stat(p).st_mtime if os.path.exists(p) else 0)
            try:
                g.lab_db = store.connect_readonly(newest)
            except store.StoreError as exc:
                log.debug("%s", exc)
    return g.lab_db


def get_db() -> sqlite3.Connection | None:
    """This request's read-only connection to its instance's DB; None when it does not exist yet."""
    if "db" not in g:
        path = _db_path()
        try:
            g.db = store.connect_readonly(path)
        except store.StoreError as exc:
            if os.path.exists(path):
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


def _signed_in() -> bool:
    return _ctx().sessions.valid(session.get("sid"))


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
    if not ctx.password or _signed_in():
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
    if request.method == "GET" and not _wants_json() and request.path in ("/", "/lab"):
        return redirect("/login")
    return _deny(401, "authentication required")


def create_app(cfg: config.Config, *, db_path: str | None = None, testing: bool = False) -> Flask:
    """The dashboard app for ``cfg``, reading ``db_path`` (default ``cfg.DB_PATH``)."""
    app = Flask(__name__, root_path=HERE, static_folder=None, template_folder="templates")
    app.config.update(
        SECRET_KEY=os.environ.get("BOLLMIN_DASHBOARD_SECRET_KEY") or secrets.token_hex(32),
        SESSION_COOKIE_NAME="bollmin_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=SESSION_S,
        MAX_CONTENT_LENGTH=16 * 1024,
        TESTING=testing,
    )
    app.session_interface = _SessionCookies()
    ctx = _Ctx(cfg, db_path or cfg.DB_PATH)
    app.extensions["bollmin"] = ctx
    app.jinja_env.globals.update(f=fmt, sign=sign_class, asset=ctx.assets.url, commands=list(Command))

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
        if request.endpoint != "static":
            h["Cache-Control"] = "no-store"
        return resp

    @app.teardown_appcontext
    def _close_db(_exc: BaseException | None) -> None:
        for name in ("db", "lab_db"):
            conn = g.pop(name, None)
            if conn is not None:
                conn.close()

    @app.errorhandler(sqlite3.Error)
    @app.errorhandler(store.StoreError)
    def _db_error(exc: Exception) -> tuple[Any, int]:
        log.warning("dashboard: database error: %s", exc)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if _wants_json():
            return jsonify({"error": f"database: {message}", "db": "error"}), 503
        return render_template("message.html", t=texts(_lang()), lang=_lang(), nonce=g.get("nonce"),
                               message=texts(_lang())["db_error"] + message), 503

    def snapshot() -> dict[str, Any]:
        return ctx.cache.get(("status", _db_path()), STATUS_CACHE_S,
                             lambda: read_snapshot(get_db(), ctx.cfg, _now_ms(), get_lab_db()))

    def instance_rows_cached() -> list[dict[str, Any]]:
        return ctx.cache.get(("instance_rows",), STATUS_CACHE_S,
                             lambda: instance_rows(ctx.instances(), ctx.cfg, _now_ms()))

    def cached_json(key: tuple[Any, ...], compute: Callable[[], Any]) -> Response:
        """The JSON of ``compute()``, encoded once per ``key`` (which names everything it depends on)."""
        body = ctx.cache.get(key, PNL_CACHE_S, lambda: app.json.dumps(compute(), separators=(",", ":")).encode())
        return Response(body, mimetype="application/json")

    def status_json() -> dict[str, Any]:
        snap = snapshot()
        out = derive_status(snap, ctx.cfg, _now_ms())
        ctx.sampler.watch(out["pid"] if out["alive"] else None, out["started_ms"])
        system = ctx.sampler.snapshot()
        if system.get("bot") is None and out["alive"] and (out["cpu_pct"] is not None or out["rss_bytes"] is not None):
            system = dict(system, bot={"pid": out["pid"], "cpu_pct": out["cpu_pct"], "rss_bytes": out["rss_bytes"],
                                       "uptime_s": out["uptime_s"], "source": "status"})
        out["system"] = system
        out["db_path"] = _db_path()
        out["instance"] = _instance()[0]
        out["alerts"] = page_alerts(out, snap, ctx.cfg, _lang(), _db_path())
        return out

    def page(template: str, name: str, s: dict[str, Any], **extra: Any) -> str:
        lang = _lang()
        current = _instance()[0]
        found = ctx.instances()
        return render_template(template, t=texts(lang), lang=lang, s=s, csrf=_csrf_token(), nonce=g.nonce,
                               has_password=bool(ctx.password), text_json=texts(lang), page_name=name,
                               page_script=f"{name}.js", instances=instance_rows_cached() if len(found) > 1 else [],
                               instance=current, dbq="" if current == found[0][0] else f"?db={current}",
                               dbqa="" if current == found[0][0] else f"&db={current}", **extra)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"ok": True})

    @app.get("/static/<path:filename>")
    def static(filename: str) -> Response:
        resp = ctx.assets.response(filename)
        return resp if resp is not None else _deny(404, "no such file")

    @app.get("/")
    def index() -> str:
        s = status_json()
        conn = get_db()
        paper = _paper_arg()
        trades = read_orders_page(conn, paper, _page_arg()) if conn is not None else None
        events = store.read_events(conn, limit=30) if conn is not None else []
        return page("index.html", "overview", s, trades=trades, events=events, paper=paper, cfg_rows=_config_rows(ctx))

    @app.get("/lab")
    def lab() -> str:
        s = status_json()
        view = lab_view(get_lab_db(), ctx.cfg, _int(request.args.get("run")), request.args.get("interval"),
                        _int(request.args.get("set")), _lang())
        return page("lab.html", "lab", s, lab=view)

    @app.get("/api/status")
    def api_status() -> Response:
        return jsonify(status_json())

    @app.get("/api/instances")
    def api_instances() -> Response:
        return jsonify({"rows": instance_rows_cached(), "current": _instance()[0]})

    @app.get("/api/system")
    def api_system() -> Response:
        return jsonify(status_json()["system"])

    @app.get("/api/candles")
    def api_candles() -> Response:
        conn = get_db()
        limit = min(max(_int(request.args.get("limit")) or CHART_CANDLES, 10), MAX_CHART_CANDLES)
        if conn is None:
            return jsonify({"candles": [], "bands": [], "markers": [], "db": "missing"})
        snap = snapshot()
        symbol = snap["status"].get("symbol") or ctx.cfg.SYMBOL
        interval = snap["status"].get("interval") or ctx.cfg.INTERVAL
        last = snap.get("last_order")
        key = ("candles", _db_path(), limit, symbol, interval, snap.get("last_candle_ms"),
               last and (last["id"], last["updated_ms"]))
        return cached_json(key, lambda: read_chart(conn, ctx.cfg, symbol, interval, limit))

    @app.get("/api/pnl")
    def api_pnl() -> Response:
        conn = get_db()
        if conn is None:
            return jsonify(read_pnl_empty())
        last = snapshot().get("last_order")
        return cached_json(("pnl", _db_path(), last and (last["id"], last["updated_ms"])), lambda: read_pnl(conn))

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
        return jsonify({"rows": store.read_commands(conn, 20) if conn is not None else []})

    @app.get("/api/config")
    def api_config() -> Response:
        return jsonify(dict(_config_rows(ctx)))

    @app.get("/api/lab")
    def api_lab() -> Response:
        view = lab_view(get_lab_db(), ctx.cfg, _int(request.args.get("run")), request.args.get("interval"),
                        _int(request.args.get("set")), _lang())
        view.pop("heat", None)  # (cell, class) pairs are for the HTML; JSON has every result
        return jsonify(view)

    @app.get("/api/lab/equity")
    def api_lab_equity() -> Response:
        conn = get_lab_db()
        ids = [i for i in (_int(x) for x in request.args.get("ids", "").split(",")[:20]) if i is not None]
        curves = store.read_sweep_curves(conn, ids) if conn is not None else {}
        return jsonify({"curves": {str(k): [[t, round(v, 8)] for t, v in pts] for k, pts in curves.items()}})

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        lang = _lang()
        t = texts(lang)
        if not ctx.password or _signed_in():
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
                session["sid"] = ctx.sessions.start()
                session["csrf"] = secrets.token_urlsafe(32)
                resp = redirect("/", code=303)
                if request.form.get("lang") in ("zh", "en"):  # the language chosen on the login page sticks
                    resp.set_cookie("lang", request.form["lang"], max_age=365 * 86400, samesite="Strict",
                                    secure=request.is_secure)
                return resp
            else:
                ctx.throttle.failed(addr)
                log.warning("dashboard: wrong password (login form) from %s", addr)
                error, status = t["wrong_password"], 401
        resp = Response(render_template("login.html", t=t, lang=lang, csrf=_csrf_token(), error=error,
                                        nonce=g.nonce), status=status)
        if status == 429:
            resp.headers["Retry-After"] = str(ctx.throttle.retry_after(addr))
        return resp

    @app.post("/logout")
    def logout() -> Any:
        if not _csrf_ok():
            return _deny(403, "missing or wrong CSRF token")
        ctx.sessions.end(session.get("sid"))
        session.clear()
        return redirect("/login" if ctx.password else "/", code=303)

    @app.post("/control/<command>")
    def control(command: str) -> Any:
        try:
            cmd = Command(command)
        except ValueError:
            return _deny(404, f"unknown command {command!r}")
        if not _csrf_ok():
            return _deny(403, "missing or wrong CSRF token")
        lang, t = _lang(), texts(_lang())
        if request.form.get("confirm") != "1":
            return render_template("confirm.html", t=t, lang=lang, command=str(cmd), csrf=_csrf_token(),
                                   question=t["confirm_" + cmd], nonce=g.nonce, instance=_instance()[0])
        conn = get_db()
        if conn is None:
            return _deny(409, "the bot has not created its database yet")
        st = store.read_status(conn)
        if st.get("db_role") == "backtest" or (st.get("mode") or "").upper() == "BACKTEST":
            return _deny(409, "this database is a finished backtest; there is no bot to command")
        name, path = _instance()
        command_id = store.add_command(path, cmd)  # only the chosen instance's bot sees it
        ctx.cache.clear()  # the next status shows the queued command
        log.info("dashboard: queued command %s (id %d) for %s from %s", cmd, command_id, name, request.remote_addr)
        if _wants_json():
            return jsonify({"ok": True, "id": command_id, "command": str(cmd), "status": "pending", "instance": name})
        return redirect(("/" if name == ctx.instances()[0][0] else f"/?db={name}") + "#controls", code=303)

    return app


def _paper_arg() -> bool | None:
    value = request.args.get("paper", "")
    return True if value == "1" else False if value == "0" else None


def _page_arg() -> int:
    return max(1, _int(request.args.get("page")) or 1)


def _config_rows(ctx: _Ctx) -> list[tuple[str, Any]]:
    """The effective settings, secrets masked; a secret this process was not given says so."""
    rows = list(config.masked(ctx.cfg).items())
    missing = texts(_lang())["not_given"]
    rows = [(k, missing if k in config.SECRET_NAMES and not v else v) for k, v in rows]
    return rows + [("config file", ctx.cfg.source), ("database", os.path.abspath(ctx.db_path))]


# ---- serving -----------------------------------------------------------------------------------

def _lower_priority() -> None:
    """Yield the CPU to the bot: nice ``MIN_NICE`` at least. (The unit also puts the page in the idle
    scheduling class; started by hand next to other busy programs, that class could starve it.)"""
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if current < MIN_NICE:
            os.nice(MIN_NICE - current)
    except OSError as exc:  # a sandbox may forbid it; the unit's Nice= covers that case
        log.debug("could not lower the dashboard's priority: %s", exc)


def serve(cfg: config.Config, *, db_path: str | None = None) -> int:
    """Serve the dashboard with waitress until SIGINT/SIGTERM; returns the process exit code."""
    import waitress.server

    host, port = cfg.DASHBOARD_HOST, cfg.DASHBOARD_PORT
    problem = config.dashboard_password_problem(host, cfg.DASHBOARD_PASSWORD)
    if problem:
        print(f"bollmin dashboard: {problem}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:  # `bollmin.py dashboard` leaves logging to us
        logging.basicConfig(level=getattr(logging, cfg.LOG_LEVEL, logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("waitress").setLevel(logging.DEBUG if cfg.LOG_LEVEL == "DEBUG" else logging.WARNING)
    _lower_priority()
    app = create_app(cfg, db_path=db_path)
    ipv6 = ":" in host
    try:
        sock = socket.create_server((host.strip("[]"), port), family=socket.AF_INET6 if ipv6 else socket.AF_INET,
                                    backlog=1024)
    except OSError as exc:
        print(f"bollmin dashboard: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    bound_port = sock.getsockname()[1]
    soft_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    server = waitress.server.create_server(
        app, sockets=[sock], threads=THREADS, ident="bollmin",
        # Idle and slow connections wait in the I/O loop (poll, not select: no 1024-descriptor cap),
        # cost no thread, and are dropped after IDLE_TIMEOUT_S of silence.
        asyncore_use_poll=True, connection_limit=max(100, min(4000, soft_fds - 64)),
        channel_timeout=IDLE_TIMEOUT_S, cleanup_interval=10,
        max_request_header_size=32 * 1024, max_request_body_size=64 * 1024, expose_tracebacks=False,
        # A reverse proxy on this machine tells us the client's address and whether it used TLS.
        trusted_proxy="::1" if ipv6 else "127.0.0.1", trusted_proxy_count=1,
        trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"}, clear_untrusted_proxy_headers=True,
    )
    ctx: _Ctx = app.extensions["bollmin"]
    ctx.sampler.start()
    shown = f"[{host}]" if ipv6 else host
    log.info("bollmin dashboard on http://%s:%d/ (database %s, %s; waitress, %d threads)", shown, bound_port,
             ctx.db_path, "password required" if cfg.DASHBOARD_PASSWORD else "open on loopback", THREADS)

    def _stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # waitress's loop ends on it and closes its sockets and threads

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    sdnotify.notify("READY=1")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        sdnotify.notify("STOPPING=1")
        ctx.sampler.stop()
        server.close()
    log.info("bollmin dashboard stopped")
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
