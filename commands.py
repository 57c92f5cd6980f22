"""Dashboard commands: what a person can ask the running bot to do, and how the bot does it.

The dashboard's only write to the DB is one row in ``commands`` (``store.add_command``); the
bot polls the table about once a second, carries each command out and marks it ``done`` or
``failed`` with a result text. To add a command: a member of ``store.Command`` (and the DB's
CHECK constraint, via a migration), its text on the dashboard (templates/i18n.json), and its
branch in ``carry_out`` here.
"""

from __future__ import annotations

import logging
from typing import Any

import store as db
from store import Command

log = logging.getLogger("bollmin")


async def carry_out(bot: Any, command: Command) -> str:
    """Do ``command`` on ``bot`` (a runner.Bot); returns the result text."""
    if command is Command.PAUSE:
        bot.pause("paused from the dashboard")
        return "new entries paused"
    if command is Command.RESUME:
        bot.resume()
        return "new entries resumed"
    return await bot.close_now("requested from the dashboard")


async def serve_commands(bot: Any, period_s: float = 1.0) -> None:
    """Carry out the commands queued in the DB until the bot stops."""
    while not bot.stopping.is_set():
        try:
            for row in await bot.commit(lambda s: db.pending_commands(s.conn)):
                ok, result = True, ""
                try:
                    result = await carry_out(bot, Command(row["command"]))
                except Exception as exc:
                    ok, result = False, f"{type(exc).__name__}: {exc}"
                    log.exception("command %s failed", row["command"])
                await bot.commit(db.Store.finish_command, row["id"], ok, result)
        except Exception:
            log.exception("reading dashboard commands failed")
        await bot.pause_unless_stopping(period_s)
