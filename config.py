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
turns it into exit code 2. A settings file is UTF-8 text of at most 1 MiB (``MAX_CONFIG_BYTES``);
text settings are single lines of at most 4096 characters; an error never shows the value of a
secret (API_KEY, API_SECRET, DASHBOARD_PASSWORD), not even a mistyped one.

Why this size: it is the settings registry. Every setting is one entry of ``SETTINGS``
(default, check, description), which ``check-config``, the README's table and ``auto_deploy.sh``
read; the loading, validation and secret masking around it are short.
"""

from __future__ import annotations

import builtins
import codecs
import dataclasses
import difflib
import ipaddress
import os
import re
import reprlib
import stat
import sys
import types
from collections.abc import Callable, Iterable, Mapping
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

#: Every environment variable bollmin reads, and why. Settings live in the settings file;
#: the environment only carries the file's location, secrets (which win over the file) and
#: the switches below. ``env(name)`` is how the program reads one (an undeclared name is a bug).
ENVIRONMENT: dict[str, str] = {
    "BOLLMIN_CONFIG": "the settings file when --config is not given",
    "BINANCE_API_KEY": "API_KEY (wins over the settings file)",
    "BINANCE_API_SECRET": "API_SECRET (wins over the settings file)",
    "BOLLMIN_DASHBOARD_PASSWORD": "DASHBOARD_PASSWORD (wins over the settings file)",
    "BOLLMIN_NOTIFY_URLS": "NOTIFY_URLS (wins over the settings file; they carry tokens)",
    "BOLLMIN_DASHBOARD_SECRET_KEY": "dashboard: a fixed key for signing login cookies (default: random at each "
                                    "start, so a restart logs everyone out)",
    "BOLLMIN_DEMO_DIR": "demo: where the demo keeps its files (default: bollmin-demo-<uid> in the temp directory)",
    "BOLLMIN_DEBUG": "show the traceback of an unexpected error (for a bug report)",
    # internal: set by bollmin itself, by its tests or by its benchmarks
    "BOLLMIN_MODE_LABEL": "internal: the mode badge the demo gives its bot (DEMO)",
    "BOLLMIN_SUPERVISED": "internal: marks the bot process the AUTO_RESTART supervisor started",
    "BOLLMIN_FAULT": "internal, tests only: kill the bot at a step of an order (after_intent, after_send, "
                     "after_reply)",
    "BOLLMIN_TIMING": "internal, benchmarks only: write timing probes along each order's way to this file",
    # set by systemd for a Type=notify service (sdnotify.py)
    "NOTIFY_SOCKET": "systemd: where to send READY/WATCHDOG/STATUS",
    "WATCHDOG_USEC": "systemd: the watchdog period",
    "WATCHDOG_PID": "systemd: the process the watchdog is for",
    "SYSTEMD_EXEC_PID": "systemd: the service's main process",
    "INVOCATION_ID": "systemd: set in every service it runs",
}


def env(name: str) -> str:
    """The value of a declared environment variable ("" when unset)."""
    if name not in ENVIRONMENT:
        raise KeyError(f"environment variable {name} is not declared in config.ENVIRONMENT")
    return os.environ.get(name, "")


MAX_CONFIG_BYTES = 2**20  # a settings file: the full default file is about 4 KB
MAX_TEXT_CHARS = 4096     # any text setting (paths, URLs, secrets)
# TRADE_AMOUNT_USDT: 5 USDT is the smallest minimum order notional of any Binance USD-M contract
# (BTCUSDT's is 100; the bot warns at startup when the amount is below the contract's own);
# 1,000,000 USDT is a guard against a slipped zero: one MARKET order that large moves the book
# and meets the position limits of most leverage brackets.
MIN_TRADE_AMOUNT_USDT = 5.0
MAX_TRADE_AMOUNT_USDT = 1_000_000.0


class ConfigError(ValueError):
    """A bad setting. ``str(err)`` is one line naming the setting and the fix."""


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``.

    A secret of 8 characters or more is masked wherever it occurs. A shorter one (4 to 7
    characters) is masked only where it stands as a word of its own, so that a short password
    such as ``demo`` does not turn the path ``demo-data/demo.db`` into ``***-data/***.db``;
    secrets under 4 characters cannot be told apart from ordinary text and are left alone.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        if len(secret) >= 8:
            text = text.replace(secret, "***")
        else:
            text = re.sub(rf"(?<![\w./-]){re.escape(secret)}(?![\w/-]|\.\w)", "***", text)
    return text


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None when fine


def _between(lo: float, hi: float) -> Callable[[Any], str | None]:
    def show(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    return lambda v: None if lo <= v <= hi else f"must be between {show(lo)} and {show(hi)}"


def _interval(v: str) -> str | None:
    return None if v in INTERVAL_MS else f"must be one of {', '.join(INTERVAL_MS)}"


def _symbol(v: str) -> str | None:
    if re.fullmatch(r"[A-Z0-9]{2,20}", v):
        return None
    hint = f" (did you mean {v.upper()!r}?)" if re.fullmatch(r"[A-Za-z0-9]{2,20}", v) else ""
    return f"must be an upper-case contract name such as 'BTCUSDT'{hint}"


def _url(schemes: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        try:
            u = urlparse(v)
            u.port  # noqa: B018 - raises ValueError for a port that is not a number 0-65535
        except ValueError:
            return f"is not a valid URL (e.g. '{schemes[0]}://fapi.binance.com')"
        if u.scheme not in schemes or not u.hostname:
            return f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
        if u.path not in ("", "/") or u.query or u.fragment:
            return "must be a base URL without a path (e.g. 'https://fapi.binance.com')"
        if u.username is not None or u.password is not None:
            return "must not contain a user name or password"
        return None

    return check


def _credential(v: str) -> str | None:
    # Binance keys are printable ASCII without spaces; a stray space or line break from copying
    # would only show up later as a signature error from the exchange.
    if v and not (v.isascii() and v.isprintable() and " " not in v):
        return ("holds spaces, line breaks or non-ASCII characters: paste the key again (in the settings file "
                "or the environment) exactly as Binance shows it")
    return None


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
    Setting("TRADE_AMOUNT_USDT", 200.0,
            f"notional of each position in USDT ({MIN_TRADE_AMOUNT_USDT:g} to {MAX_TRADE_AMOUNT_USDT:,.0f}; at "
            f"least the contract's minimum order notional, 100 for BTCUSDT)",
            _between(MIN_TRADE_AMOUNT_USDT, MAX_TRADE_AMOUNT_USDT)),
    Setting("LEVERAGE", 5, "leverage set on the exchange at startup (live)", _between(1, 125)),
    Setting("PAPER_TRADING", True, "simulate orders (never send them); False trades real money", None),
    Setting("PAPER_FEE_RATE", 0.0005, "taker fee rate charged on paper fills", _between(0.0, 0.01)),
    Setting("PAPER_START_BALANCE_USDT", 10000.0, "paper account balance that equity starts from",
            _between(0.01, 1e12)),
    Setting("MAX_ORDER_REJECTS", 3, "consecutive definite order rejections that pause new entries", _between(1, 100)),
    Setting(
        "RECONCILE_RULE", "exchange",
        "when the stored state and the exchange position disagree: 'exchange' adopts the exchange "
        "position, 'pause' also pauses new entries until a person resumes them",
        _choice("exchange", "pause"),
    ),
    Setting("RECONCILE_INTERVAL_SECONDS", 60.0,
            "live: compare the position with the exchange this often, besides the user-data stream",
            _between(5, 3600)),
    Setting("MAX_ENTRY_DELAY_SECONDS", 10.0,
            "live: an entry still waiting this long after it was decided is not sent (it went stale); "
            "closes always go out", _between(1, 300)),
    # --- credentials and endpoints ----------------------------------------------------------
    Setting("API_KEY", "", "Binance API key (or env BINANCE_API_KEY); futures trading permission only",
            _credential),
    Setting("API_SECRET", "", "Binance API secret (or env BINANCE_API_SECRET)", _credential),
    Setting("TESTNET", False, "use Binance's futures test environment (its default URLs)", None),
    Setting("REST_BASE_URL", PRODUCTION_REST,
            "base URL of all REST traffic (live trading: https://, plain http:// only to this machine)",
            _url(("https", "http"))),
    Setting("WS_BASE_URL", PRODUCTION_WS,
            "base URL of the market streams (live trading: wss://, plain ws:// only to this machine)",
            _url(("wss", "ws"))),
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
    # --- strategy variations: all off by default (the strategy table exactly); see README 策略实验室 ---
    Setting(
        "EVALUATE_ON", "tick",
        "'tick': step the strategy table on every price tick (as specified); 'close': only when a candle "
        "closes, with its close and the closed window's bands, orders at the first trade after the close",
        _choice("tick", "close"),
    ),
    Setting("BREAKOUT_BUFFER_PCT", 0.0,
            "a breakout (and a stop-loss) counts only beyond UP/DN by this % of the band price; 0 = off",
            _between(0.0, 10.0)),
    Setting("STOP_COOLDOWN_CANDLES", 0,
            "after a stop-loss, skip entry signals for the rest of that candle and the next N candles; 0 = off",
            _between(0, 100_000)),
    Setting("PAPER_SLIPPAGE_PCT", 0.0,
            "backtest and sweep fill this % worse than the tick price (buys higher, sells lower); 0 = off",
            _between(0.0, 5.0)),
    Setting("FUNDING_FILE", "",
            "funding-rate history charged in backtest and sweep (from 'download --funding' or Binance's "
            "archive); '' = no funding (paper 'run' never charges funding)", None),
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
    RECONCILE_INTERVAL_SECONDS: float
    MAX_ENTRY_DELAY_SECONDS: float
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
    # --- strategy variations (defaults: off) ---
    EVALUATE_ON: str = "tick"
    BREAKOUT_BUFFER_PCT: float = 0.0
    STOP_COOLDOWN_CANDLES: int = 0
    PAPER_SLIPPAGE_PCT: float = 0.0
    FUNDING_FILE: str = ""

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
    """``value`` as a plain bool/int/float/str of the setting's type (subclasses are copied)."""
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
        return int.__int__(value)  # the plain int, whatever a subclass overrides
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} = {shown}: must be a number (default {default!r})")
        try:
            value = float(int.__int__(value)) if isinstance(value, int) else float.__float__(value)
        except OverflowError:
            raise ConfigError(f"{name} = {shown}: is far too large (default {default!r})") from None
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
    value = str.__str__(value)
    if len(value) > MAX_TEXT_CHARS:
        raise ConfigError(f"{name} = {shown}: is longer than {MAX_TEXT_CHARS} characters")
    if any(c < " " or c == "\x7f" for c in value):
        raise ConfigError(f"{name} = {shown}: must not contain line breaks, tabs or other control characters")
    return value


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def _shown(name: str, value: Any) -> str:
    """``value`` for an error message: short, one line, and never a secret."""
    if name in SECRET_NAMES:
        return "'***'"
    return brief(value)


def brief(value: Any) -> str:
    """A short one-line repr of any value (a huge number is described, not printed)."""
    if isinstance(value, int) and not isinstance(value, bool) and int.bit_length(value) > 128:
        return f"<a number of about {int(int.bit_length(value) * 0.30103) + 1} digits>"
    try:
        return _REPR.repr(value)
    except Exception:  # a hostile __repr__
        return f"<{type(value).__name__}>"


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


def _check(s: Setting, raw: Any) -> Any:
    value = _typed(s.name, raw)
    if s.check is not None:
        problem = s.check(value)
        if problem:
            raise ConfigError(f"{s.name} = {_shown(s.name, value)}: {problem}")
    return value


def _build(values: dict[str, Any], source: str) -> Config:
    checked: dict[str, Any] = {}
    for s in SETTINGS:
        try:
            checked[s.name] = _check(s, values[s.name])
        except ConfigError:
            raise
        except Exception as exc:  # a value so odd that checking it failed: still one line
            raise ConfigError(f"{s.name} = {_shown(s.name, values[s.name])}: unusable value "
                              f"({type(exc).__name__}); see 'python bollmin.py check-config --help'") from None
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
        # Live orders carry the API key and signed requests, and a forged price stream would
        # trade real money: no plain-text transport beyond this machine.
        for name, plain, tls in (("REST_BASE_URL", "http", "https"), ("WS_BASE_URL", "ws", "wss")):
            u = urlparse(checked[name])
            if u.scheme == plain and not is_loopback(u.hostname or ""):
                raise ConfigError(
                    f"{name} = {checked[name]!r}: live trading needs {tls}:// (plain {plain}:// is allowed only "
                    f"to this machine, 127.0.0.1)"
                )
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


def _read_source(path: str) -> bytes:
    """The bytes of a settings file: a regular file of at most MAX_CONFIG_BYTES."""
    where = f"config file {path}"
    try:
        # O_NONBLOCK: a FIFO given by mistake is refused below instead of blocking the start.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot open it ({exc.strerror or type(exc).__name__})") from None
    try:
        mode = os.fstat(fd).st_mode  # before fdopen, which refuses a directory with a message of its own
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{where}: is a directory; give the settings file itself (e.g. config.py)")
        raise ConfigError(f"{where}: is not a regular file (a pipe, device or socket); give a settings file")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: is larger than {MAX_CONFIG_BYTES:,} bytes; a settings file only assigns "
                          f"a few names (see 'python config.py')")
    return data


_SECRET_WORD = re.compile("|".join(SECRET_NAMES))


def _source_line(data: bytes, lineno: int | None) -> str:
    if not lineno or lineno < 1:
        return ""
    lines = data.split(b"\n")
    return lines[lineno - 1].decode("utf-8", "replace") if lineno <= len(lines) else ""


def _literal_secrets(data: bytes) -> list[str]:
    """Words on the lines that mention a secret's name: masked in any message about the file."""
    words: list[str] = []
    for line in data.decode("utf-8", "replace").splitlines():
        if _SECRET_WORD.search(line):
            words += re.findall(r"[^\s'\"=:,;()\[\]{}]{4,}", _SECRET_WORD.sub(" ", line))
    return words


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _exception_text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception whose __str__ fails
        return ""


def _run_source(path: str, data: bytes, env: dict[str, str]) -> dict[str, Any]:
    """Compile and run a settings file; every failure becomes one ConfigError line without secrets."""
    where = f"config file {path}"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # also covers UTF-32 LE
        raise ConfigError(f"{where}: is UTF-16 text; save it as UTF-8")
    nul = data.find(b"\0")
    if nul >= 0:
        lineno = data.count(b"\n", 0, nul) + 1
        raise ConfigError(f"{where} line {lineno}: holds a NUL byte (binary data); "
                          f"a settings file is plain UTF-8 text")
    masks = _literal_secrets(data) + [env[v] for v in ENV_SECRETS.values() if env.get(v)]
    namespace: dict[str, Any] = {"__name__": "bollmin_config", "__file__": path, "__builtins__": builtins}
    try:
        code = compile(data, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        line = f" line {exc.lineno}" if exc.lineno else ""
        if "unicode error" in str(exc.msg) or "encoding" in str(exc.msg):
            raise ConfigError(f"{where}{line}: the text is not UTF-8; save the file as UTF-8") from None
        if _SECRET_WORD.search(_source_line(data, exc.lineno)):
            raise ConfigError(f"{where}{line}: syntax error on the line that sets a secret: put the value in "
                              f"quotes, e.g. API_SECRET = \"...\"") from None
        detail = mask_secrets(_one_line(str(exc.msg)), masks)
        raise ConfigError(f"{where}{line}: syntax error: {detail}") from None
    except UnicodeError:
        raise ConfigError(f"{where}: the text is not UTF-8; save the file as UTF-8") from None
    except (ValueError, MemoryError, RecursionError, OverflowError) as exc:
        raise ConfigError(f"{where}: cannot be read as Python ({type(exc).__name__}); "
                          f"a settings file only assigns values") from None
    try:
        exec(code, namespace)  # noqa: S102 - the user's own settings file: Python that assigns names
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a settings file may raise anything, even SystemExit: one line each
        lineno = None
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == path:
                lineno = tb.tb_lineno
            tb = tb.tb_next
        line = f" line {lineno}" if lineno else ""
        name = type(exc).__name__
        if isinstance(exc, SystemExit):
            raise ConfigError(f"{where}{line}: calls exit(); a settings file must only assign settings") from None
        if _SECRET_WORD.search(_source_line(data, lineno)):
            raise ConfigError(f"{where}{line}: {name} on the line that sets a secret: put the value in quotes, "
                              f"e.g. API_SECRET = \"...\"") from None
        masks += [v for k, v in namespace.items() if k in SECRET_NAMES and isinstance(v, str)]
        detail = mask_secrets(_one_line(_exception_text(exc)), masks)
        hint = " (text values need quotes, e.g. SYMBOL = \"BTCUSDT\")" if isinstance(exc, NameError) else ""
        raise ConfigError(f"{where}{line}: {name}: {detail}{hint}" if detail else f"{where}{line}: {name}{hint}"
                          ) from None
    return namespace


def _read_file(path: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    namespace = _run_source(path, _read_source(path), env or {})
    values: dict[str, Any] = {}
    for name, value in namespace.items():
        if not isinstance(name, str) or name.startswith("_"):
            continue
        if not name.isupper():
            if name.upper() in _BY_NAME and not isinstance(value, types.ModuleType):
                # boll_period = 30 would otherwise be ignored in silence: settings are UPPERCASE
                raise ConfigError(f"config file {path}: {brief(name)} is not a setting: settings are UPPERCASE "
                                  f"(did you mean {name.upper()}?)")
            continue  # imports, helpers and private names are the file's own business
        if name not in _BY_NAME:
            close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
            hint = f"; did you mean {close[0]}?" if close else "; run 'python bollmin.py check-config --help'"
            raise ConfigError(f"config file {path}: unknown setting {brief(name)}{hint}")
        values[name] = value
    return values


def load_config(path: str | None = None, env: dict[str, str] | None = None) -> Config:
    """Defaults, then the settings file (``path`` or ``$BOLLMIN_CONFIG``), then secrets from env."""
    env = dict(os.environ) if env is None else env
    path = path or env.get("BOLLMIN_CONFIG") or None
    values = {s.name: s.default for s in SETTINGS}
    if path:
        values.update(_read_file(path, env))
    for name, var in ENV_SECRETS.items():
        if env.get(var):
            values[name] = env[var]
    try:
        return _build(values, path or "defaults")
    except ConfigError as err:  # another setting may hold a secret's text (SYMBOL = the key, by mistake)
        raise ConfigError(mask_secrets(str(err), secret_texts(values))) from None


def secret_texts(source: Config | Mapping[str, Any]) -> list[str]:
    """The texts of every secret setting of a config or of raw setting values: each notification
    URL on its own, and each also in upper case (a message may suggest the upper-case form of a
    mistyped value). What the logs, the command line's error lines and settings errors mask."""
    texts: list[str] = []
    for name in SECRET_NAMES:
        value = source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)
        items = value if isinstance(value, (list, tuple)) else [value]
        texts += [t for v in items if isinstance(v, str) for t in (v, v.upper())]
    return texts


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
