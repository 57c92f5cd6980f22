"""The bot's logging (logs.py): lines logged on the event loop reach the logging thread in batches."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from support.paths import ROOT  # noqa: F401 - puts the product on sys.path

import logs
from config import load_config


@pytest.fixture
def bot_logging(tmp_path):
    """The bot's logging set up on a file in tmp_path; the root logger restored afterwards."""
    log_file = tmp_path / "bot.log"
    settings = tmp_path / "settings.py"
    settings.write_text(f"LOG_FILE = {str(log_file)!r}\nDB_PATH = {str(tmp_path / 'bot.db')!r}\n")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.setup_logging(load_config(str(settings), env={}))
    try:
        yield log_file
    finally:
        logs.bind_event_loop(None)
        logs.stop_logging()
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _lines(path, needle: str) -> list[str]:
    for h in logging.getLogger().handlers:
        h.flush()
    return [line for line in path.read_text().splitlines() if needle in line] if path.exists() else []


def _wait_lines(path, needle: str, n: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _lines(path, needle)
        if len(found) >= n:
            return found
        time.sleep(0.01)
    return _lines(path, needle)


def test_lines_logged_on_the_loop_are_held_then_handed_over_in_order(bot_logging):
    log = logging.getLogger("bollmin.test")

    async def scenario() -> int:
        logs.bind_event_loop(asyncio.get_running_loop())
        for i in range(5):
            log.info("loop line %d", i)
        held = len(logs._front._held)  # not handed to the logging thread yet
        await asyncio.sleep(logs.LOOP_LINE_DELAY_S * 5)
        return held

    assert asyncio.run(scenario()) == 5, "held until the event loop's next turns"
    lines = _wait_lines(bot_logging, "loop line", 5)
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["0", "1", "2", "3", "4"], "in the order logged"


def test_other_threads_log_at_once_and_the_handler_stays_usable(bot_logging):
    """A line from another thread is not held; and logging from a thread never blocks (the
    handler's own lock is released after every line, including held ones)."""
    log = logging.getLogger("bollmin.test")
    done = threading.Event()

    def from_a_thread() -> None:
        log.error("writer thread line")
        done.set()

    async def scenario() -> None:
        logs.bind_event_loop(asyncio.get_running_loop())
        log.info("held line")
        worker = threading.Thread(target=from_a_thread, daemon=True)
        worker.start()
        await asyncio.to_thread(worker.join, 5)
        await asyncio.sleep(logs.LOOP_LINE_DELAY_S * 5)

    asyncio.run(scenario())
    assert done.is_set(), "a thread logging after a held line must not block"
    assert _wait_lines(bot_logging, "writer thread line", 1)
    assert _wait_lines(bot_logging, "held line", 1)


def test_stop_logging_hands_over_what_is_still_held(bot_logging):
    log = logging.getLogger("bollmin.test")

    async def scenario() -> None:
        logs.bind_event_loop(asyncio.get_running_loop())
        log.critical("the last words")  # the loop ends before the hand-over is due

    asyncio.run(scenario())
    logs.stop_logging()
    assert _lines(bot_logging, "the last words")
