"""index/connection.py against real servers: a restarted store is reached again on fresh
connections (every dead pooled connection is retried once, none is reported as an outage), a
command that timed out is never sent a second time, and malformed URLs are refused with a
message that says what to write instead."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal

import pytest
import redis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from index.connection import StoreURLError, open_client
from index.embedded import EmbeddedServer
from tests.conftest import RedisServerProcess

POOL = 8


@pytest.fixture
def server(tmp_path):
    """A store of our own that the test may restart on the same port: Debian's redis-server
    when installed (CI), else the embedded valkey."""
    started = RedisServerProcess(tmp_path / "redis") if shutil.which("redis-server") else EmbeddedServer(tmp_path / "valkey")
    started.start()
    yield started
    started.stop()


async def _fill_pool(client, count: int) -> None:
    """Make the client open `count` connections at once (each BLPOP holds one for a moment)."""
    await asyncio.gather(*(client.blpop([f"earmark-test-nothing-{i}"], timeout=0.3) for i in range(count)))


def _connected_clients(url: str) -> int:
    admin = redis.Redis.from_url(url)
    try:
        return int(admin.info("clients")["connected_clients"]) - 1  # not counting ourselves
    finally:
        admin.close()


def test_every_dead_pooled_connection_is_retried_once_on_a_fresh_one(server):
    """After a restart every pooled connection is dead; concurrent and then sequential commands
    on all of them still succeed. The same pool without the retry fails, so this test would
    notice the retry going away."""

    async def run() -> None:
        client = open_client(server.url, max_connections=POOL)
        bare = aioredis.from_url(server.url, max_connections=POOL, retry=Retry(NoBackoff(), retries=0),
                                 socket_connect_timeout=0.5, socket_timeout=2.0)
        try:
            await _fill_pool(client, POOL)
            await _fill_pool(bare, 1)
            assert _connected_clients(server.url) >= POOL + 1
            server.stop()
            server.start()  # same port, every pooled connection now points at a dead socket
            results = await asyncio.gather(*(client.set(f"earmark-test-k{i}", i) for i in range(POOL)))
            assert results == [True] * POOL
            for i in range(2 * POOL):  # sequentially, through whatever connections the pool hands out
                assert int(await client.get(f"earmark-test-k{i % POOL}")) == i % POOL
            with pytest.raises(redis.exceptions.ConnectionError):
                await bare.get("earmark-test-k0")  # the control: a dead connection without the retry
        finally:
            await client.aclose()
            await bare.aclose()

    asyncio.run(run())


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs Debian's redis-server (installed by .ci/run)")
def test_a_timed_out_command_is_not_tried_again(server):
    """A frozen store (SIGSTOP): the command times out and is not retried on another
    connection (it may already have run, and a retry would only double the wait); once the
    store thaws it has accepted no second connection, the command ran exactly once, and the
    same client is usable again."""
    counter = "earmark-test-counter"
    admin = redis.Redis.from_url(server.url)

    async def run() -> None:
        client = open_client(server.url)
        try:
            assert await client.ping() and admin.ping()
            accepted = admin.info("stats")["total_connections_received"]
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(redis.exceptions.TimeoutError):
                    await client.incr(counter)
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            for _ in range(100):  # the thawed server works through what it received meanwhile
                if admin.get(counter) is not None:
                    break
                await asyncio.sleep(0.05)
            assert int(admin.get(counter)) == 1
            assert admin.info("stats")["total_connections_received"] == accepted
            assert await client.incr(counter) == 2
        finally:
            await client.aclose()

    try:
        asyncio.run(run())
    finally:
        admin.close()


def test_url_forms_name_what_is_wrong():
    """Every refused URL says what is wrong with it, or which forms to use."""
    for url, words in (
        ("http://127.0.0.1:6379", "unsupported store URL scheme 'http'; use redis://"),
        ("redis+sentinel://127.0.0.1:26379", "names no service"),
        ("redis+sentinel://127.0.0.1:notaport/earmark", "bad host:port"),
        ("redis+cluster://", "names no host"),
    ):
        with pytest.raises(StoreURLError, match=re.escape(words)):
            open_client(url)


def test_a_password_in_the_url_is_used(tmp_path):
    """A store that requires a password is reached with the one in the URL, and refused without."""
    if not shutil.which("redis-server"):
        pytest.skip("needs Debian's redis-server (installed by .ci/run)")
    import subprocess

    from tests.conftest import _free_port, _wait_for_ping

    port = _free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(tmp_path), "--requirepass", "s3cret/with:odd@chars"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_ping(f"redis://:s3cret%2Fwith%3Aodd%40chars@127.0.0.1:{port}/0")

        async def run() -> None:
            good = open_client(f"redis://:s3cret%2Fwith%3Aodd%40chars@127.0.0.1:{port}/0")
            bad = open_client(f"redis://127.0.0.1:{port}/0")
            try:
                assert await good.ping()
                with pytest.raises(redis.exceptions.AuthenticationError):
                    await bad.set("earmark-test", 1)
            finally:
                await good.aclose()
                await bad.aclose()

        asyncio.run(run())
    finally:
        process.terminate()
        process.wait(10)
