"""What every benchmark shares: the machine line and writing a section of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_MD = os.path.join(ROOT, "BENCHMARKS.md")


def machine(with_load: bool = False) -> str:
    """CPU model, cores, Python and kernel; optionally the 1-minute load average (other work skews figures)."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or cpu
    text = (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()} "
            f"({platform.python_implementation()}), {platform.system()} {platform.release()}")
    if with_load:
        try:
            text += f"; load average {os.getloadavg()[0]:.2f} at start"
        except OSError:
            text += "; load average unknown"
    return text


def replace_section(name: str, body: str, path: str = BENCH_MD) -> None:
    """Put ``body`` between ``<!-- name:begin -->`` and ``<!-- name:end -->``, keeping the rest of the file."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip(chr(10))}\n{end}\n"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    else:
        text = "# Benchmarks\n\nFigures measured on the machine named in each section.\n"
    if begin in text and end in text and text.index(begin) < text.index(end):
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + (("\n" + tail) if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
