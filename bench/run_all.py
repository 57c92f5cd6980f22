"""Run every benchmark and regenerate BENCHMARKS.md from their output.

    .venv/bin/python bench/run_all.py                 # all of them (about 30 minutes on a quiet machine)
    .venv/bin/python bench/run_all.py core parity     # only some sections
    .venv/bin/python bench/run_all.py --raw-dir DIR   # also keep the raw values (SAVES_RAW) as DIR/NAME.json

Each benchmark prints a markdown section on stdout; this script puts it between the section's
markers (``<!-- NAME:begin -->`` … ``<!-- NAME:end -->``) in BENCHMARKS.md, keeping the other
sections, and prints a one-line verdict per section. Each section names its machine and command
(with the run time, exit code and load average added here). Exit code 1 when a benchmark failed
to run; a missed target is not a failure: it is marked **NO** in the section's table.
A section of BENCHMARKS.md whose name is no longer a benchmark here is removed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import common  # bench/common.py: machine line and BENCHMARKS.md sections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_MD = os.path.join(ROOT, "BENCHMARKS.md")

# name -> (script, title when the script prints none)
BENCHES: dict[str, tuple[str, str]] = {
    "core": ("bench/bench_core.py", "Core engine"),
    "dashboard": ("bench/bench_dashboard.py", "Dashboard"),
    "lab": ("bench/bench_lab.py", "Strategy lab"),
    "latency": ("bench/bench_latency.py", "Tick-to-order latency"),
    "parity": ("bench/bench_parity.py", "Live orders = backtest, at speed"),
    "firehose": ("bench/bench_firehose.py", "Firehose"),
    "instances": ("bench/bench_instances.py", "Several instances: memory and request weight per instance"),
}
SAVES_RAW = {"latency", "parity", "firehose", "instances"}  # scripts with --raw PATH / --from-raw PATH
SECTION = re.compile(r"\n*<!-- ([a-z_]+):begin -->\n.*?<!-- \1:end -->\n?", re.S)

HEADER = """# Benchmarks

Every figure below was measured, not estimated, on the machine named in its section.
Regenerate the whole file with one command:

    .venv/bin/python bench/run_all.py

Timing targets live here, not in the test suite: timed tests flake on a shared 2-core machine.
Each section is the output of one script in `bench/` (named on its Command line); none is written by hand.
"""


def machine() -> str:
    return common.machine()

_RUNNING: list[subprocess.Popen] = []  # the benchmark running now
_STOPPING: list[bool] = []


def _forward_sigterm(signum: int, frame: object) -> None:
    """Pass SIGTERM on to the running benchmark (it stops what it started), then stop without writing."""
    _STOPPING.append(True)
    for proc in _RUNNING:
        proc.terminate()


def run_one(name: str, raw_dir: str | None = None) -> tuple[bool, str]:
    script, title = BENCHES[name]
    load = os.getloadavg()[0]
    started = time.monotonic()
    extra = ["--raw", os.path.join(raw_dir, f"{name}.json")] if raw_dir and name in SAVES_RAW else []
    with subprocess.Popen([sys.executable, os.path.join(ROOT, script), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        _RUNNING[:] = [proc]
        try:
            out, err = proc.communicate(timeout=3600)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the benchmark stops its own processes on SIGTERM
            out, err = proc.communicate(timeout=60)
        finally:
            _RUNNING.clear()
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    took = time.monotonic() - started
    body = proc.stdout.strip()
    if not body.lstrip().startswith("## "):
        body = f"## {title}\n\n{body}"
    if "Machine:" not in body:
        body = body.replace("\n\n", f"\n\nMachine: {machine()}  \n", 1)
    ran = f"run by `bench/run_all.py` in {took:.0f} s, exit code {proc.returncode}, load average {load:.2f} at start"
    lines = body.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("Command:")), None)
    if at is None:  # no command line of its own: add one under the machine line
        at = next((i for i, line in enumerate(lines) if line.startswith("Machine:")), 0)
        lines.insert(at + 1, f"Command: `python {script}` ({ran})")
    else:
        lines[at] = f"{lines[at].rstrip()}; {ran}"
    body = "\n".join(lines)
    if proc.returncode not in (0, 1):  # 1 = ran, but missed a target (printed in the table)
        body += f"\n\n**The benchmark failed:**\n\n```\n{proc.stderr.strip()[-2000:]}\n```"
    return proc.returncode in (0, 1), body


def write(sections: dict[str, str]) -> None:
    try:
        with open(BENCH_MD, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        text = HEADER
    text = re.sub(r"\A# Benchmarks\n.*?(?=<!-- |\Z)", HEADER + "\n", text, count=1, flags=re.S)
    text = SECTION.sub(lambda m: m.group(0) if m.group(1) in BENCHES else "\n", text)  # drop retired sections
    for name, body in sections.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        block = f"{begin}\n{body}\n{end}"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(BENCH_MD, "w", encoding="utf-8") as fh:
        fh.write(text)


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__.strip())
        print(f"\nbenchmarks: {', '.join(f'{n} ({s})' for n, (s, _t) in BENCHES.items())}")
        return 0
    raw_dir = None
    if "--raw-dir" in argv:  # keep the measured values of the scripts that can re-render them (--from-raw)
        at = argv.index("--raw-dir")
        raw_dir = argv[at + 1] if at + 1 < len(argv) else None
        if raw_dir is None:
            print("run_all: --raw-dir needs a directory", file=sys.stderr)
            return 2
        os.makedirs(raw_dir, exist_ok=True)
        argv = argv[:at] + argv[at + 2:]
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"run_all: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}",
              file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    signal.signal(signal.SIGTERM, _forward_sigterm)
    ok_all = True
    sections = {}
    for name in names:
        print(f"running {name} ...", flush=True)
        ok, body = run_one(name, raw_dir)
        if _STOPPING:
            print("stopped (SIGTERM): BENCHMARKS.md left as it was", file=sys.stderr)
            return 1
        ok_all &= ok
        sections[name] = body
        misses = body.count("**NO**") + body.count("MISSED")
        print(f"  {name}: {'ran' if ok else 'FAILED'}; targets missed: {misses}")
    write(sections)
    print(f"wrote {BENCH_MD}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
