"""Re-read the API keys file (`--api-keys`) when it changes, without a restart.

The service checks the file every `api_keys_check_s` seconds (2 by default) and reads it again
when its modification time, size or inode changed: an edit in place and an atomic replace
(write a new file, rename it over the old one) are both seen. Polling a `stat` was chosen over
SIGHUP alone because it needs nothing from the process manager and works the same for every way
the app is run (under `earmark serve`, in a test, behind another ASGI server). `earmark serve`
also takes SIGHUP, the conventional "reload" signal, which makes the next check read the file
whatever its stat says (for file systems with coarse timestamps).

A file that became unreadable or malformed is not applied: the keys in force stay, the error is
logged and counted (`earmark_api_keys_reloads_total{result="error"}`); the next change is read
again. Requests already authenticated keep their namespace; the next one uses the new keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from earmark.service.api.auth import ApiKeys
from earmark.service.config import ConfigError

log = logging.getLogger(__name__)

# Set by `earmark serve`'s SIGHUP handler: the next check reads the file whatever its stat says.
reload_requested = threading.Event()


class KeysFile:
    """The keys file and the stat it had when last read."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen = self._signature()

    def _signature(self) -> tuple | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def changed_keys(self) -> ApiKeys | None:
        """The file's keys when it changed since the last call (or a reload was requested);
        None when it did not. Raises `ConfigError` when it changed into something unusable (it
        is then not read again until it changes once more)."""
        signature = self._signature()
        forced = reload_requested.is_set()
        reload_requested.clear()
        if signature == self._seen and not forced:
            return None
        self._seen = signature
        return ApiKeys.from_file(self.path)


async def watch_keys_file(keys_file: KeysFile, interval_s: float, apply, on_result) -> None:
    """Every `interval_s`, apply (`apply(keys)`) the file's keys when it changed; `on_result`
    gets "ok" or "error" for each read."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            keys = await asyncio.to_thread(keys_file.changed_keys)
        except ConfigError as exc:
            log.error("API keys file not reloaded, the keys in force stay: %s", exc)
            on_result("error")
            continue
        if keys is not None:
            apply(keys)
            on_result("ok")
            log.info("API keys reloaded from %s: %d key(s), %d namespace(s)", keys_file.path, len(keys.entries),
                     len(keys.namespaces))
