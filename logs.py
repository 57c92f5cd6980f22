"""Logging for the bot: one line per event, secrets masked, no log I/O on the event loop.

Every log line goes through a queue to a thread that writes stderr (journald under systemd)
and the rotating ``LOG_FILE``, so a log call on the trading path costs microseconds whatever
the disk does. Secrets are masked before a line is queued. ``EventsHandler`` also copies
INFO and above into the DB's ``events`` table (through the DB writer).
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import queue
import sys
import threading

import store as db
from config import Config, mask_secrets, secret_texts


class SecretFilter(logging.Filter):
    """Replace any configured secret that slips into a log line (or its traceback) with ***.

    Masking follows ``config.mask_secrets``: long secrets everywhere, short ones (4-7
    characters) only as words of their own, so a short password cannot garble paths.
    """

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad format arguments: the handler reports those itself
            return True
        text = message
        if record.exc_info and record.exc_info[1] is not None:
            # The traceback (with the exception's text) is checked too; when it holds a secret it
            # is folded, masked, into the message and the exception itself is dropped.
            trace = logging.Formatter().formatException(record.exc_info)
            if mask_secrets(trace, self.secrets) != trace:
                text += "\n" + trace
                record.exc_info, record.exc_text = None, None
        masked = mask_secrets(text, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class OneLineFormatter(logging.Formatter):
    """One line per event: a traceback is folded onto the line (`` | `` between its lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


class EventsHandler(logging.Handler):
    """Copies INFO+ log lines of the bot into the ``events`` table (through the writer)."""

    def __init__(self, writer: db.Writer) -> None:
        super().__init__(logging.INFO)
        self.writer = writer
        if _secret_filter is not None:  # the events table is a log too: no secret goes in
            self.addFilter(_secret_filter)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "bollmin.store":
            return  # the writer reporting on itself must not queue more writes
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self.writer.post(db.Store.add_event, record.levelname, message[:1000], int(record.created * 1000))
        except Exception:
            self.handleError(record)


LOOP_LINE_DELAY_S = 0.003  # lines logged on the event loop reach the logging thread this much later


class _Front(logging.handlers.QueueHandler):
    """The one handler on the root logger: masks secrets and queues the line for the logging thread.

    Lines logged on the bot's event loop (``bind_event_loop``) are handed over together
    LOOP_LINE_DELAY_S later instead of one by one: a transition's or a fill's log line then
    does not wake the logging thread (and, through ``EventsHandler``, the DB writer) in the
    middle of the order it announces — on 2 cores those threads compete with the order's
    own way for the CPU and the GIL (BENCHMARKS.md, tick-to-order latency). Each line keeps
    the time it was logged at; lines from other threads go at once. ``stop_logging`` hands
    over whatever is still held.
    """

    def __init__(self, lines: queue.SimpleQueue[logging.LogRecord]) -> None:
        super().__init__(lines)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._held: list[logging.LogRecord] = []
        self._scheduled = False

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.hand_over()
        self._loop, self._loop_thread = loop, threading.get_ident()

    def enqueue(self, record: logging.LogRecord) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() == self._loop_thread and loop.is_running():
            self._held.append(record)
            if not self._scheduled:
                self._scheduled = True
                loop.call_later(LOOP_LINE_DELAY_S, self.hand_over)
            return
        self.queue.put_nowait(record)

    def hand_over(self) -> None:
        """Hand the held lines to the logging thread, in the order they were logged."""
        self._scheduled = False
        held, self._held = self._held, []
        for record in held:
            self.queue.put_nowait(record)


_listener: logging.handlers.QueueListener | None = None
_front: _Front | None = None
_secret_filter: SecretFilter | None = None


def setup_logging(cfg: Config) -> None:
    """Log lines go through a queue to a thread that writes stderr and the rotating file, so
    no log call on the event loop waits for I/O. Secrets are masked before a line is queued."""
    global _listener, _front, _secret_filter
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if _listener is not None:
        _listener.stop()
    root.setLevel(cfg.LOG_LEVEL)
    fmt = OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.LOG_FILE)), exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(cfg.LOG_FILE, maxBytes=10 * 2**20, backupCount=5,
                                                             encoding="utf-8"))
    except OSError as exc:
        sys.stderr.write(f"bollmin: cannot write LOG_FILE {cfg.LOG_FILE} ({exc.strerror}); logging to stderr only\n")
    for h in handlers:
        h.setFormatter(fmt)
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    front = _front = _Front(lines)
    _secret_filter = SecretFilter(secret_texts(cfg))
    front.addFilter(_secret_filter)
    root.addHandler(front)
    _listener = logging.handlers.QueueListener(lines, *handlers, respect_handler_level=True)
    _listener.start()
    for noisy in ("websockets", "asyncio", "aiohttp", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_log_handler(handler: logging.Handler) -> None:
    """Also give every log line to ``handler`` (on the logging thread when logging is set up)."""
    if _listener is not None:
        _listener.handlers = (*_listener.handlers, handler)
    else:
        logging.getLogger().addHandler(handler)


def remove_log_handler(handler: logging.Handler) -> None:
    if _listener is not None:
        _listener.handlers = tuple(h for h in _listener.handlers if h is not handler)
    else:
        logging.getLogger().removeHandler(handler)


def bind_event_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Lines logged on ``loop``'s thread while it runs are handed over in batches (see _Front);
    None ends that and hands over what is held."""
    if _front is not None:
        _front.bind(loop)


def stop_logging() -> None:
    """Write out every queued log line (at exit)."""
    global _listener
    if _front is not None:
        _front.hand_over()
    if _listener is not None:
        _listener.stop()
        _listener = None
