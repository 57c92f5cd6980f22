"""A throw-away Debian bookworm machine booted with systemd-nspawn, for the deployment tests.

The pristine root file system is built once with debootstrap from Debian's mirror and kept
as a tarball under ``/var/cache/bollmin-tests/`` (override with ``BOLLMIN_NSPAWN_CACHE``);
each test run unpacks a fresh copy, boots it (real systemd as PID 1), drives it with
``nsenter`` and removes it afterwards, also when the test fails.

    with Container.boot(project_dir) as box:
        box.run("/srv/bollmin/auto_deploy.sh", timeout=600)
        assert box.run("systemctl", "is-active", "bollmin").stdout.strip() == "active"

Needs root, ``systemd-nspawn`` (package systemd-container), ``debootstrap`` and ``nsenter``.
The container shares the host's network, so tests pick free ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CACHE_DIR = Path(os.environ.get("BOLLMIN_NSPAWN_CACHE", "/var/cache/bollmin-tests"))
MIRROR = os.environ.get("BOLLMIN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# What a fresh Debian server has plus what the tests use to look inside (procps: ps; sqlite3: the CLI the
# README tells users about). auto_deploy.sh itself needs only systemd, python3 and python3-venv.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates", "procps", "sqlite3")
TOOLS = ("systemd-nspawn", "debootstrap", "nsenter", "tar")
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PROJECT_IN_CONTAINER = "/srv/bollmin"  # where a user would have copied the folder (readable by all)
# A clean environment for commands in the container: the host's PATH (pyenv shims, venvs) means nothing there.
CONTAINER_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
                 "LANG=C.UTF-8", "TERM=dumb", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0")


def missing_tools() -> list[str]:
    """Names of the host tools (or privileges) the container tests need but lack."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def _tarball() -> Path:
    key = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    return CACHE_DIR / f"{SUITE}-{key}.tar"


def ensure_rootfs(log=print) -> Path:
    """The cached pristine rootfs tarball; debootstrap it first when it is missing (minutes)."""
    tarball = _tarball()
    if tarball.exists():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second test run waits for the first one's debootstrap
        if tarball.exists():
            return tarball
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
        try:
            log(f"debootstrap {SUITE} into {work} (first run only; cached as {tarball})")
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(work), MIRROR],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800,
            )
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(work), "--numeric-owner", "-cf", str(partial), "."],
                           check=True, timeout=600)
            partial.rename(tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def _prepare_rootfs(root: Path) -> None:
    """Make a fresh copy of the image boot quickly and quietly in this kind of container."""
    root.chmod(0o755)  # the tarball's top entry comes from a mkdtemp() directory (0700)
    (root / "etc/hostname").write_text("bollmin-test\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 bollmin-test\n::1 localhost\n")
    # Units that only wait or fail in a container without its own network or a console. D-Bus and logind
    # hang at boot in some sandboxed CI hosts (inotify refused); bollmin needs neither, and systemctl as root
    # talks to systemd over its private socket.
    for unit in ("systemd-networkd-wait-online.service", "console-getty.service", "getty@tty1.service",
                 "systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                 "dbus.service", "dbus.socket", "systemd-logind.service"):
        mask = root / "etc/systemd/system" / unit
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")
    # Short, readable journal; tests read it through journalctl.
    conf = root / "etc/systemd/journald.conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "10-test.conf").write_text("[Journal]\nStorage=volatile\nRuntimeMaxUse=64M\n")


class Container:
    """A booted copy of the cached rootfs. Use ``Container.boot(...)`` as a context manager."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.nspawn: subprocess.Popen | None = None
        self.leader = 0
        self.console = root.parent / "console.log"

    @classmethod
    @contextlib.contextmanager
    def boot(cls, project: Path, pip_cache: Path | None = None, log=print,
             boot_timeout: float = 90) -> Iterator[Container]:
        """Unpack a fresh rootfs, copy ``project`` to /srv/bollmin, boot it; always clean up."""
        tarball = ensure_rootfs(log)
        base = Path(tempfile.mkdtemp(prefix="bollmin-nspawn-", dir="/var/tmp"))
        box = cls(base / "root", f"bollmin-{os.getpid()}-{int(time.time())}")
        # On tmpfs the copy is quick to make and instant to throw away (deleting ~1 GB of small
        # files from a disk mounted with 'discard' takes minutes). BOLLMIN_NSPAWN_TMPFS=0: use the disk.
        on_tmpfs = os.environ.get("BOLLMIN_NSPAWN_TMPFS", "1") != "0" and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "mode=0755,size=6G", "bollmin-nspawn", str(base)],
            stderr=subprocess.DEVNULL).returncode == 0
        try:
            box.root.mkdir()
            subprocess.run(["tar", "-C", str(box.root), "--numeric-owner", "-xf", str(tarball)],
                           check=True, timeout=300)
            _prepare_rootfs(box.root)
            _copy_project(project, box.root / PROJECT_IN_CONTAINER.lstrip("/"))
            pip_cache = pip_cache or CACHE_DIR / "pip"
            pip_cache.mkdir(parents=True, exist_ok=True)
            box._start(pip_cache, boot_timeout)
            yield box
        finally:
            box._stop()
            if on_tmpfs:
                subprocess.run(["umount", "--lazy", str(base)], check=False)
            shutil.rmtree(base, ignore_errors=True)

    def _start(self, pip_cache: Path, boot_timeout: float) -> None:
        cmd = [
            "systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--boot",
            f"--machine={self.name}", f"--directory={self.root}",
            # pip inside needs the host's CA bundle (the host may sit behind a TLS-inspecting proxy).
            f"--bind-ro={HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}",
            f"--bind={pip_cache}:/root/.cache/pip",
            "--resolv-conf=copy-host", "--timezone=off", "--link-journal=no",
        ]
        with open(self.console, "wb") as out:
            self.nspawn = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        deadline = time.monotonic() + boot_timeout
        while not self.leader:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.nspawn.returncode}:\n{self.console_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no container init after {boot_timeout} s:\n{self.console_text()}")
            self.leader = _child_pid(self.nspawn.pid)
            time.sleep(0.2)
        while True:
            # 'running' or 'degraded' both mean boot finished; --wait blocks while 'starting'.
            res = self.run("systemctl", "is-system-running", "--wait", check=False,
                           timeout=max(1.0, deadline - time.monotonic()))
            state = res.stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"container not booted (state {state!r}):\n{self.console_text()}")
            time.sleep(0.5)

    def _stop(self) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        # SIGTERM makes nspawn ask the container's systemd for an orderly shutdown (SIGRTMIN+3).
        self.nspawn.send_signal(signal.SIGTERM)
        try:
            self.nspawn.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.nspawn.pid, signal.SIGKILL)
            self.nspawn.wait(timeout=30)

    def console_text(self, tail: int = 4000) -> str:
        try:
            return self.console.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def run(self, *argv: str, check: bool = True, timeout: float = 120, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command as root inside the container; returns stdout/stderr as text."""
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        cmd = ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net", "--pid", "--",
               "env", "-i", *CONTAINER_ENV, *extra, *argv]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {res.returncode}\n--- stdout\n{res.stdout}\n"
                                 f"--- stderr\n{res.stderr}")
        return res

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        """Run a shell snippet inside the container."""
        return self.run("bash", "-c", script, **kw)

    def path(self, inside: str) -> Path:
        """The host path of a file inside the container (for reading and writing it directly)."""
        return self.root / inside.lstrip("/")


def _child_pid(parent: int) -> int:
    """The child of ``parent`` that is PID 1 of its own PID namespace (the container's init), or 0."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return 0
    for child in children:
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspid) > 1 and nspid[-1] == "1":
            return int(child)
    return 0


def _copy_project(src: Path, dst: Path) -> None:
    """Copy the project as a user would (no venv, caches or VCS metadata)."""
    skip = shutil.ignore_patterns(".venv", "venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache",
                                  "data", "logs", "demo-data", "artifacts", ".cache")
    shutil.copytree(src, dst, ignore=skip, symlinks=True)


if __name__ == "__main__":
    print(ensure_rootfs())
