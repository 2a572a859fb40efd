"""A replica given as --redis-url is refused at start, with a one-line reason: it takes no
writes, so the index could never start and every miss would fail (the issue found /health
saying `store: up` while the log repeated "can't write against a read only replica"). Real
redis-server processes: a primary and a replica of it (replicaof)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from earmark.index.connection import replica_refusal
from tests.redis_servers import HAVE_REDIS_SERVER, RedisServers, free_ports, wait_until

pytestmark = pytest.mark.skipif(not HAVE_REDIS_SERVER, reason="needs Debian's redis-server")

EARMARK = [str(Path(sys.executable).parent / "earmark")]


@pytest.fixture(scope="module")
def primary_and_replica(tmp_path_factory):
    servers = RedisServers(tmp_path_factory.mktemp("replica"))
    primary, replica = free_ports(2)
    servers.start(primary)
    servers.start(replica, "--replicaof", "127.0.0.1", str(primary))
    wait_until(lambda: redis.Redis(port=replica).info("replication")["master_link_status"] == "up", what="replica in sync")
    yield primary, replica
    servers.stop_all()


def test_serve_refuses_a_replica_in_one_line(primary_and_replica, tmp_path):
    primary, replica = primary_and_replica
    env = {**os.environ, "EARMARK_ENGINE": "pocketsphinx"}
    result = subprocess.run([*EARMARK, "serve", "--port", str(free_ports(1)[0]), "--redis-url",
                             f"redis://127.0.0.1:{replica}/0"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "replica" in lines[0] and f"127.0.0.1:{primary}" in lines[0], result.stderr


def test_only_a_replica_is_refused(primary_and_replica):
    """The primary is accepted; a store that is down is not refused either (the service then
    starts without the cache, as documented)."""
    primary, replica = primary_and_replica
    assert replica_refusal(f"redis://127.0.0.1:{primary}/0") is None
    assert replica_refusal(f"redis://127.0.0.1:{free_ports(1)[0]}/0") is None
    assert "primary" in (replica_refusal(f"redis://127.0.0.1:{replica}/0") or "")
