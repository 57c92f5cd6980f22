"""Progress bars on stderr (tqdm) for long commands; silent when stderr is not a terminal.

Scripts, pipes, systemd and tests therefore never see bar output; ``--json`` output goes to
stdout and is never mixed with it.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar(total: int | None, desc: str, unit: str = "it", stream: TextIO | None = None, **kwargs: Any) -> Any:
    """A tqdm bar on ``stream`` (default stderr) when it is a terminal, else an object that does nothing."""
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return _Silent()
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: the sweep forks its workers after the bar exists
    return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False, dynamic_ncols=True, **kwargs)
