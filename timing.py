"""Timing probes along one order's way, for the benchmarks (off unless asked for).

With ``BOLLMIN_TIMING=<path>`` in the environment (an internal variable: the benchmarks set
it, nothing else should), the bot notes ``time.perf_counter_ns()`` at each point below and
writes them as JSON to that path when it exits. ``perf_counter_ns`` is CLOCK_MONOTONIC on
Linux, so the figures compare with stamps taken in another process (the simulated exchange).
Off, each probe is one attribute test at its call site (``if timing.ON:``).

Points, with their key:
  ``tick``      a trade reached ``Bot.on_trade``                      exchange time of the trade
  ``decided``   the table made a transition with orders               exchange time of the trade
  ``queued``    its job joined the executor's FIFO                    transition id
  ``commit``    the executor hands the intent to the DB writer        client order id
  ``committed`` the intent is on disk                                 client order id
  ``send``      the driver calls the exchange client                  client order id
  ``answered``  the exchange's answer is back                         client order id
"""

from __future__ import annotations

import atexit
import json
import time
from typing import Any

from config import env

_PATH = env("BOLLMIN_TIMING") or None
ON = _PATH is not None
_marks: list[tuple[str, Any, int]] = []


def mark(point: str, key: Any) -> None:
    """Note the time of ``point`` for ``key`` (call only under ``if timing.ON``)."""
    _marks.append((point, key, time.perf_counter_ns()))


def _dump() -> None:
    try:
        with open(_PATH, "w", encoding="utf-8") as fh:  # type: ignore[arg-type]
            json.dump(_marks, fh)
    except OSError:
        pass


if ON:
    atexit.register(_dump)
