"""bollmin settings: every name, its default, one line of help, and the one validation pass.

A settings file is a Python file that assigns any subset of the UPPERCASE names below, e.g.

    PAPER_TRADING = True
    INTERVAL = "5m"

Give it with ``--config PATH`` or ``BOLLMIN_CONFIG=PATH``. ``python config.py`` prints a
commented file with every setting at its default (the deployment installs it as
``/etc/bollmin/config.py``). Secrets may come from the environment instead
(``BINANCE_API_KEY``, ``BINANCE_API_SECRET``, ``BOLLMIN_DASHBOARD_PASSWORD``,
``BOLLMIN_NOTIFY_URLS``); the environment wins. Relative paths (DB_PATH, LOG_FILE) are
relative to the working directory.

Every problem stops the program with a one-line ``ConfigError`` naming the setting; the CLI
turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import runpy
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from history import INTERVAL_MS

PRODUCTION_REST = "https://fapi.binance.com"
PRODUCTION_WS = "wss://fstream.binance.com"
TESTNET_REST = "https://demo-fapi.binance.com"
TESTNET_WS = "wss://fstream.binancefuture.com"

SECRET_NAMES = ("API_KEY", "API_SECRET", "DASHBOARD_PASSWORD", "NOTIFY_URLS")
ENV_SECRETS = {
    "API_KEY": "BINANCE_API_KEY",
    "API_SECRET": "BINANCE_API_SECRET",
    "DASHBOARD_PASSWORD": "BOLLMIN_DASHBOARD_PASSWORD",
    "NOTIFY_URLS": "BOLLMIN_NOTIFY_URLS",
}
MIN_DASHBOARD_PASSWORD = 10  # characters, beyond loopback


class ConfigError(ValueError):
    """A bad setting. ``str(err)`` is one line naming the setting and the fix."""


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None when fine


def _between(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _interval(v: str) -> str | None:
    return None if v in INTERVAL_MS else f"must be one of {', '.join(INTERVAL_MS)}"


def _symbol(v: str) -> str | None:
    if re.fullmatch(r"[A-Z0-9]{2,20}", v):
        return None
    hint = f" (did you mean {v.upper()!r}?)" if re.fullmatch(r"[A-Za-z0-9]{2,20}", v) else ""
    return f"must be an upper-case contract name such as 'BTCUSDT'{hint}"


def _url(schemes: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        u = urlparse(v)
        if u.scheme not in schemes or not u.netloc:
            return f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
        if u.path not in ("", "/") or u.query:
            return "must be a base URL without a path (e.g. 'https://fapi.binance.com')"
        return None

    return check


def _nonempty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _host(v: str) -> str | None:
    if not v.strip() or any(c.isspace() for c in v):
        return "must be a host name or IP address such as '127.0.0.1'"
    return None


def _choice(*options: str) -> Callable[[str], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(repr(o) for o in options)}"


def _notify_urls(v: tuple[str, ...]) -> str | None:
    # Checked by Apprise itself (imported only when there is something to check), never echoed.
    if not v:
        return None
    import notify

    for i, url in enumerate(v, 1):
        problem = notify.url_problem(url)
        if problem:
            return f"item {i} ({mask_url(url)}): {problem}"
    return None


SETTINGS: tuple[Setting, ...] = (
    # --- market and strategy -------------------------------------------------------------
    Setting("SYMBOL", "BTCUSDT", "USD-M perpetual contract to trade", _symbol),
    Setting("INTERVAL", "15m", "candle interval of the BOLL indicator", _interval),
    Setting("BOLL_PERIOD", 20, "candles in the BOLL window (closed ones plus the live price)", _between(2, 500)),
    Setting("BOLL_K", 2.0, "band width in standard deviations", _between(0.01, 20)),
    Setting("BOLL_DDOF", 0, "delta degrees of freedom of the standard deviation (0 = population)", _between(0, 1)),
    Setting("HISTORY_KLINES", 50, "closed candles fetched over REST when the DB has none", _between(1, 1499)),
    # --- orders ---------------------------------------------------------------------------
    Setting("TRADE_AMOUNT_USDT", 200.0, "notional of each position in USDT", _positive),
    Setting("LEVERAGE", 5, "leverage set on the exchange at startup (live)", _between(1, 125)),
    Setting("PAPER_TRADING", True, "simulate orders (never send them); False trades real money", None),
    Setting("PAPER_FEE_RATE", 0.0005, "taker fee rate charged on paper fills", _between(0.0, 0.01)),
    Setting("PAPER_START_BALANCE_USDT", 10000.0, "paper account balance that equity starts from", _positive),
    Setting("MAX_ORDER_REJECTS", 3, "consecutive definite order rejections that pause new entries", _between(1, 100)),
    Setting(
        "RECONCILE_RULE", "exchange",
        "when the stored state and the exchange position disagree: 'exchange' adopts the exchange "
        "position, 'pause' also pauses new entries until a person resumes them",
        _choice("exchange", "pause"),
    ),
    # --- credentials and endpoints ----------------------------------------------------------
    Setting("API_KEY", "", "Binance API key (or env BINANCE_API_KEY); futures trading permission only", None),
    Setting("API_SECRET", "", "Binance API secret (or env BINANCE_API_SECRET)", None),
    Setting("TESTNET", False, "use Binance's futures test environment (its default URLs)", None),
    Setting("REST_BASE_URL", PRODUCTION_REST, "base URL of all REST traffic", _url(("https", "http"))),
    Setting("WS_BASE_URL", PRODUCTION_WS, "base URL of the market streams", _url(("wss", "ws"))),
    Setting("REST_TIMEOUT_SECONDS", 10.0, "timeout of one REST request; past it an order's outcome is unknown",
            _between(1, 120)),
    # --- market data ------------------------------------------------------------------------
    Setting("WS_STALL_SECONDS", 30.0, "a stream silent this long is dead and gets reconnected", _between(2, 600)),
    Setting("WS_MAX_AGE_HOURS", 23.0, "reconnect proactively before Binance's 24 h cut", _between(0.001, 23.9)),
    Setting("MAX_PRICE_JUMP_PCT", 20.0, "drop a tick further than this from the last one (%)", _between(0.1, 100)),
    # --- storage, logging, process ---------------------------------------------------------
    Setting("DB_PATH", "data/bollmin.db", "SQLite file of candles, orders, transitions, events and status", _nonempty),
    Setting("LOG_FILE", "logs/bollmin.log", "rotating log file (also logged to stderr)", _nonempty),
    Setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
    Setting("AUTO_RESTART", True, "restart the bot after a crash (under systemd and by hand)", None),
    # --- dashboard ---------------------------------------------------------------------------
    Setting("DASHBOARD_HOST", "127.0.0.1", "address the dashboard listens on", _host),
    Setting("DASHBOARD_PORT", 8080, "port of the dashboard", _between(1, 65535)),
    Setting("DASHBOARD_PASSWORD", "",
            f"dashboard password; beyond loopback required, at least {MIN_DASHBOARD_PASSWORD} characters", None),
    # --- notifications (sent by the bot; off while NOTIFY_URLS is empty) ----------------------------
    Setting(
        "NOTIFY_URLS", (),
        "where to send notifications, Apprise URLs (e.g. 'tgram://BOT_TOKEN/CHAT_ID', 'dingtalk://TOKEN', "
        "'wecombot://KEY', 'feishu://TOKEN', 'schan://SENDKEY', 'mailtos://...', 'json://host/path'); "
        "a list, or one text with the URLs separated by spaces (or env BOLLMIN_NOTIFY_URLS). They carry "
        "tokens: shown masked everywhere",
        _notify_urls,
    ),
    Setting("NOTIFY_PAPER", False, "also notify paper (simulated) fills; live fills are always sent", None),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Config:
    """The effective, validated configuration. Build it with ``load_config``."""

    SYMBOL: str
    INTERVAL: str
    BOLL_PERIOD: int
    BOLL_K: float
    BOLL_DDOF: int
    HISTORY_KLINES: int
    TRADE_AMOUNT_USDT: float
    LEVERAGE: int
    PAPER_TRADING: bool
    PAPER_FEE_RATE: float
    PAPER_START_BALANCE_USDT: float
    MAX_ORDER_REJECTS: int
    RECONCILE_RULE: str
    API_KEY: str
    API_SECRET: str
    TESTNET: bool
    REST_BASE_URL: str
    WS_BASE_URL: str
    REST_TIMEOUT_SECONDS: float
    WS_STALL_SECONDS: float
    WS_MAX_AGE_HOURS: float
    MAX_PRICE_JUMP_PCT: float
    DB_PATH: str
    LOG_FILE: str
    LOG_LEVEL: str
    AUTO_RESTART: bool
    DASHBOARD_HOST: str
    DASHBOARD_PORT: int
    DASHBOARD_PASSWORD: str
    NOTIFY_URLS: tuple[str, ...]
    NOTIFY_PAPER: bool
    source: str = "defaults"  # where the settings came from (a path or "defaults")

    @property
    def mode(self) -> str:
        """PAPER, TESTNET or LIVE."""
        if self.PAPER_TRADING:
            return "PAPER"
        return "TESTNET" if self.TESTNET else "LIVE"

    def replace(self, **changes: Any) -> Config:
        """A validated copy with some settings changed (raises ConfigError)."""
        values = {s.name: getattr(self, s.name) for s in SETTINGS}
        values.update(changes)
        return _build(values, self.source)


def _typed(name: str, value: Any) -> Any:
    default = _BY_NAME[name].default
    shown = _shown(name, value)  # never echo a secret, even a mistyped one
    kind = type(default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} = {shown}: must be True or False")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} = {shown}: must be a whole number (default {default!r})")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} = {shown}: must be a number (default {default!r})")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{name} = {shown}: must be a finite number")
        return value
    if kind is tuple:
        # A list (or tuple) of texts, or one text whose items are separated by white space.
        items = value.split() if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{name} = {shown}: must be a list of texts in quotes, e.g. ['a://x', 'b://y']")
        return tuple(i.strip() for i in items if i.strip())
    if not isinstance(value, str):
        raise ConfigError(f"{name} = {shown}: must be a text string in quotes (default {default!r})")
    return value


def _shown(name: str, value: Any) -> str:
    return "'***'" if name in SECRET_NAMES else repr(value)


def dashboard_password_problem(host: str, password: str) -> str | None:
    """Why ``password`` is not good enough for a dashboard on ``host`` (None: it is)."""
    if is_loopback(host):
        return None
    if not password:
        return (f"DASHBOARD_PASSWORD is empty but DASHBOARD_HOST = {host!r} is reachable from other machines: "
                f"set a password (or env BOLLMIN_DASHBOARD_PASSWORD) or use '127.0.0.1'")
    if len(password.strip()) < MIN_DASHBOARD_PASSWORD:
        return (f"DASHBOARD_PASSWORD is too weak for DASHBOARD_HOST = {host!r}: use at least "
                f"{MIN_DASHBOARD_PASSWORD} characters that are not all spaces (or keep DASHBOARD_HOST = '127.0.0.1')")
    return None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _build(values: dict[str, Any], source: str) -> Config:
    checked: dict[str, Any] = {}
    for s in SETTINGS:
        value = _typed(s.name, values[s.name])
        if s.check is not None:
            problem = s.check(value)
            if problem:
                raise ConfigError(f"{s.name} = {_shown(s.name, value)}: {problem}")
        checked[s.name] = value
    # TESTNET switches the endpoints only when the user left them at the production defaults.
    if checked["TESTNET"]:
        if checked["REST_BASE_URL"] == PRODUCTION_REST:
            checked["REST_BASE_URL"] = TESTNET_REST
        if checked["WS_BASE_URL"] == PRODUCTION_WS:
            checked["WS_BASE_URL"] = TESTNET_WS
    if checked["HISTORY_KLINES"] < checked["BOLL_PERIOD"] - 1:
        raise ConfigError(
            f"HISTORY_KLINES = {checked['HISTORY_KLINES']}: must be at least BOLL_PERIOD - 1 "
            f"= {checked['BOLL_PERIOD'] - 1} so the bands exist at start"
        )
    if not checked["PAPER_TRADING"]:
        for name in ("API_KEY", "API_SECRET"):
            if not checked[name].strip():
                raise ConfigError(
                    f"{name} is empty but PAPER_TRADING = False: set it (or env {ENV_SECRETS[name]}) "
                    f"or keep PAPER_TRADING = True"
                )
    problem = dashboard_password_problem(checked["DASHBOARD_HOST"], checked["DASHBOARD_PASSWORD"])
    if problem:
        raise ConfigError(problem)
    return Config(**checked, source=source)


def _read_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path}: no such file")
    try:
        namespace = runpy.run_path(path, run_name="bollmin_config")
    except SyntaxError as exc:
        raise ConfigError(f"config file {path} line {exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:  # a user's file may raise anything; report it on one line
        line = ""
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == path:
                line = f" line {tb.tb_lineno}"
            tb = tb.tb_next
        raise ConfigError(f"config file {path}{line}: {type(exc).__name__}: {exc}") from None
    values: dict[str, Any] = {}
    for name, value in namespace.items():
        if not name.isupper() or name.startswith("_"):
            continue  # imports, helpers and private names are the file's own business
        if name not in _BY_NAME:
            close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
            hint = f"; did you mean {close[0]}?" if close else "; run 'python bollmin.py check-config --help'"
            raise ConfigError(f"config file {path}: unknown setting {name}{hint}")
        values[name] = value
    return values


def load_config(path: str | None = None, env: dict[str, str] | None = None) -> Config:
    """Defaults, then the settings file (``path`` or ``$BOLLMIN_CONFIG``), then secrets from env."""
    env = dict(os.environ) if env is None else env
    path = path or env.get("BOLLMIN_CONFIG") or None
    values = {s.name: s.default for s in SETTINGS}
    if path:
        values.update(_read_file(path))
    for name, var in ENV_SECRETS.items():
        if env.get(var):
            values[name] = env[var]
    return _build(values, path or "defaults")


def masked(cfg: Config) -> dict[str, Any]:
    """Every setting by name, secrets shown only as set/unset (notification URLs as ``scheme://***``)."""
    out: dict[str, Any] = {}
    for s in SETTINGS:
        value = getattr(cfg, s.name)
        if s.name == "NOTIFY_URLS":
            value = tuple(mask_url(u) for u in value)
        elif s.name in SECRET_NAMES:
            value = "***" if value else ""
        out[s.name] = value
    return out


def mask_url(url: str) -> str:
    """``scheme://***``: which service, never the token (it may sit anywhere in the URL)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    return f"{scheme}://***" if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,31}", scheme) else "***"


def help_text() -> str:
    """One line per setting: name, default, help."""
    return "\n".join(f"  {s.name:<26} default {s.default!r:<28} {s.help}" for s in SETTINGS)


def render_default_file() -> str:
    """A settings file with every name at its default, each with its help as a comment."""
    lines = [
        "# bollmin settings. Every name is optional: delete a line to use the built-in default.",
        "# Secrets are better kept in the environment (BINANCE_API_KEY, BINANCE_API_SECRET,",
        "# BOLLMIN_NOTIFY_URLS in /etc/bollmin/bollmin.env, read by the bot only; BOLLMIN_DASHBOARD_PASSWORD",
        "# in /etc/bollmin/dashboard.env) than here: this file is readable by the dashboard too.",
        "",
    ]
    for s in SETTINGS:
        lines.append(f"# {s.help}")
        lines.append(f"{s.name} = {s.default!r}")
        lines.append("")
    return "\n".join(lines)


def setting_names_in_file(path: str) -> set[str]:
    """The UPPERCASE names a settings file assigns (for reporting settings new in a release)."""
    return set(_read_file(path))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--missing":
        # Used by auto_deploy.sh on update: list settings that the given file does not set.
        try:
            present = setting_names_in_file(sys.argv[2])
        except ConfigError as err:
            print(f"bollmin: {err}", file=sys.stderr)
            sys.exit(2)
        for s in SETTINGS:
            if s.name not in present:
                print(f"{s.name} = {s.default!r}    # {s.help}")
        sys.exit(0)
    sys.stdout.write(render_default_file())
