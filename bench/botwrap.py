#!/usr/bin/env python3
"""Run ``bollmin.py`` with a library swapped in, to measure whether it pays off (bench only).

    BENCH_UVLOOP=1 python bench/botwrap.py /path/to/bollmin.py run --config F

``BENCH_UVLOOP=1``: uvloop's event loop policy is installed before the bot starts, so its
``asyncio.run`` runs on uvloop. ``BENCH_STDJSON=1``: the market feed and the user-data stream
parse each message with the standard library's ``json.loads`` instead of ``orjson.loads`` (what
the product used before orjson; everything else is unchanged), so the benchmarks can show what
orjson still buys.
``BENCH_SWITCH_INTERVAL_S=S``: the bot sets ``sys.setswitchinterval(S)`` instead of its own
``runner.SWITCH_INTERVAL_S`` (0.0005 s; how long a thread may wait for the GIL; CPython's
default is 0.005 s). The product's files are not edited; its tree is the directory of the
``bollmin.py`` given.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import types


def main(argv: list[str]) -> int:
    if not argv or not argv[0].endswith("bollmin.py"):
        sys.stderr.write(__doc__)
        return 2
    script = os.path.abspath(argv[0])
    sys.path[0] = os.path.dirname(script)  # the product's tree, as if bollmin.py had been run directly
    if os.environ.get("BENCH_UVLOOP") == "1":
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if os.environ.get("BENCH_STDJSON") == "1":
        import feed
        import userstream

        # Both call orjson.loads on every message and catch ValueError (json's error is one too).
        stdlib = types.SimpleNamespace(loads=json.loads, JSONDecodeError=json.JSONDecodeError)
        feed.orjson = userstream.orjson = stdlib
    if os.environ.get("BENCH_SWITCH_INTERVAL_S"):
        import runner

        runner.SWITCH_INTERVAL_S = float(os.environ["BENCH_SWITCH_INTERVAL_S"])  # run_bot sets it
    swapped = [name for name, on in (("uvloop event loop", os.environ.get("BENCH_UVLOOP") == "1"),
                                     ("stdlib json in the streams", os.environ.get("BENCH_STDJSON") == "1"),
                                     (f"switch interval {os.environ.get('BENCH_SWITCH_INTERVAL_S')} s",
                                      bool(os.environ.get("BENCH_SWITCH_INTERVAL_S")))) if on]
    sys.stderr.write(f"botwrap: {', '.join(swapped) or 'nothing swapped'}\n")
    sys.argv = [script, *argv[1:]]
    runpy.run_path(script, run_name="__main__")  # bollmin.py ends with sys.exit(main())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
