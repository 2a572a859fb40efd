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

from earmark.index.connection import StoreURLError, open_client
from earmark.index.embedded import EmbeddedServer
from tests.conftest import RedisServerProcess
from tests.store_proxy import StoreRelay

POOL = 8


@pytest.fixture
def server(tmp_path):
    """A store of our own that the test may restart on the same port: Debian's redis-server
    when installed (CI), else the embedded valkey."""
    started = RedisServerProcess(tmp_path / "redis") if shutil.which("redis-server") else EmbeddedServer(tmp_path / "valkey")
    started.start()
    yield started
    started.stop()


async def _fill_pool(client, count: int, store_url: str) -> None:
    """Make the client open `count` connections: `count` BLPOPs that block until all of them
    are in (each holds its connection meanwhile), then are answered by a direct client."""
    keys = [f"earmark-test-nothing-{i}" for i in range(count)]
    waiting = [asyncio.create_task(client.blpop([key], timeout=0)) for key in keys]
    admin = aioredis.from_url(store_url)
    try:
        for _ in range(600):  # until all `count` are blocked on the server (a condition, not a pause)
            if int((await admin.info("clients"))["blocked_clients"]) >= count:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{count} BLPOPs never all blocked on the store")
        for key in keys:
            await admin.lpush(key, b"x")
        await asyncio.gather(*waiting)
    finally:
        await admin.aclose()


def test_a_restarted_store_is_reached_again_on_every_pooled_connection(server):
    """After a restart every pooled connection points at a closed socket; concurrent and then
    sequential commands on all of them still succeed, none is reported as an outage. (Whether
    the client library or our retry replaces them, the outcome is what the service needs.)"""

    async def run() -> None:
        client = open_client(server.url, max_connections=POOL)
        try:
            await _fill_pool(client, POOL, server.url)
            server.stop()
            server.start()  # same port, every pooled connection now points at a dead socket
            results = await asyncio.gather(*(client.set(f"earmark-test-k{i}", i) for i in range(POOL)))
            assert results == [True] * POOL
            for i in range(2 * POOL):  # sequentially, through whatever connections the pool hands out
                assert int(await client.get(f"earmark-test-k{i % POOL}")) == i % POOL
        finally:
            await client.aclose()

    asyncio.run(run())


def test_every_dead_pooled_connection_is_retried_once_on_a_fresh_one(server):
    """Every pooled connection dies in a way the client only sees when it sends a command (a
    relay in front of the store resets it then: tests/store_proxy.py). Concurrent and then
    sequential commands still all succeed, each severed connection costing exactly one dropped
    attempt; a command whose fresh connection dies too fails rather than being tried a third
    time. The same pool without the retry fails, so this test notices the retry going away."""

    async def run() -> None:
        relay = StoreRelay("127.0.0.1", int(server.url.rsplit(":", 1)[1].split("/")[0]))
        await relay.start()
        client = open_client(relay.url, max_connections=POOL)
        bare = aioredis.from_url(relay.url, max_connections=POOL, retry=Retry(NoBackoff(), retries=0),
                                 socket_connect_timeout=0.5, socket_timeout=2.0)
        try:
            await _fill_pool(client, POOL, server.url)
            assert await bare.ping()
            assert relay.open == POOL + 1
            relay.sever()
            results = await asyncio.gather(*(client.set(f"earmark-test-k{i}", i) for i in range(POOL)))
            assert results == [True] * POOL
            assert relay.dropped == POOL  # each command met a dead connection, and was retried once
            for i in range(2 * POOL):
                assert int(await client.get(f"earmark-test-k{i % POOL}")) == i % POOL
            assert relay.dropped == POOL

            with pytest.raises(redis.exceptions.ConnectionError):
                await bare.get("earmark-test-k0")  # the control: a dead connection without the retry
            assert relay.dropped == POOL + 1

            relay.sever()
            relay.sever_new = True  # the fresh connection dies as well: one retry, then the error
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.get("earmark-test-k0")
            assert relay.dropped == POOL + 3
        finally:
            await client.aclose()
            await bare.aclose()
            await relay.close()

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


def test_a_refused_url_never_repeats_its_password():
    for url in ("redis+sentinel://:s3cret@127.0.0.1:26379", "redis+sentinel://user:s3cret@127.0.0.1:26379",
                "redis+cluster://:s3cret@127.0.0.1:notaport"):
        with pytest.raises(StoreURLError) as refused:
            open_client(url)
        assert "s3cret" not in str(refused.value)


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
