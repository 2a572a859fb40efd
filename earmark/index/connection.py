"""Open a Redis-protocol client from a URL, whatever the deployment's shape.

One place knows the URL schemes of the contract: redis://, rediss:// and unix:// for a single
server, redis+sentinel:// for a Sentinel-managed primary and redis+cluster:// for a cluster.
Timeouts are short on purpose: a store that does not answer within them is treated as down by
the circuit breaker, and requests go on without the cache rather than waiting. A command that
fails on a dead pooled connection (the store restarted since it was opened) is retried once on
a fresh connection before anyone calls it an outage; a timeout is not retried (the store is slow
or gone, and a retry would only double the wait).

A Cluster client learns the cluster's layout (which master serves which slot) from the nodes it
can reach and relearns it after a connection error, so it follows a failover by itself; the one
gap is handled by `relearn_topology` (see there). A replica is refused as the store at start
(`replica_refusal`): it takes no writes, so nothing could ever be cached.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

CONNECT_TIMEOUT_S = 0.5
COMMAND_TIMEOUT_S = 2.0


class StoreURLError(ValueError):
    """The store URL is malformed or uses a scheme we do not support."""


def open_client(url: str, *, max_connections: int = 64, blocking_s: float = 0.0) -> aioredis.Redis | RedisCluster:
    """Return an asyncio client for `url`; raw bytes in and out (fingerprints are binary).

    `blocking_s`: the longest a command of this client blocks on the server by design (an
    XREAD's BLOCK), added to the command timeout so that a blocking read that ends on time is
    not taken for a lost store on a busy machine."""
    parts = urlsplit(url)
    options: dict[str, Any] = dict(
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=COMMAND_TIMEOUT_S + blocking_s,
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        # Also named here: redis-py before 6 retries only the errors listed in retry_on_error,
        # whatever the Retry says (from 6 on this only repeats the Retry's list).
        retry_on_error=[RedisConnectionError],
    )
    if parts.scheme in ("redis", "rediss", "unix"):
        return aioredis.from_url(url, max_connections=max_connections, **options)
    if parts.scheme == "redis+sentinel":
        hosts = _hosts(parts.netloc)
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise StoreURLError(
                f"{redact_url(url)!r} names no service; use redis+sentinel://host:port[,host:port]/<service>[/db]"
            )
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(hosts, sentinel_kwargs=options, password=_password(parts), **options)
        return sentinel.master_for(path[0], db=db, max_connections=max_connections)
    if parts.scheme == "redis+cluster":
        nodes = [ClusterNode(host, port) for host, port in _hosts(parts.netloc)]
        return RedisCluster(
            startup_nodes=nodes, password=_password(parts), max_connections=max_connections, **options
        )
    raise StoreURLError(
        f"unsupported store URL scheme {parts.scheme!r}; use redis://, rediss://, unix://, "
        "redis+sentinel://host:port/<service> or redis+cluster://host:port[,host:port]"
    )


async def relearn_topology(client: Any) -> None:
    """After a lost store, make a Cluster client read the cluster's layout afresh on its next
    command (a no-op for the other clients: their pools reconnect by themselves).

    redis-py routes a command whose keys it cannot find by position (XREAD: its keys follow
    STREAMS) by asking COMMAND GETKEYS of the first node it learned, and a connection error
    there never asks for a new layout (redis-py 7.0 to 8.2). A client that sends nothing else,
    as the index replica's, would keep asking a dead first seed for ever after a failover.
    Closing the client drops its layout; the next command learns it again from the seeds and
    every node discovered since, dead ones skipped. Only for a client this caller owns alone:
    commands of other tasks on it fail."""
    if isinstance(client, RedisCluster):
        await client.aclose()


def replica_refusal(url: str) -> str | None:
    """Why `url` cannot be the store when it names a single server that is a replica, else None.

    A replica takes no writes (or keeps them only until its next sync), so every miss would
    fail and the index replica could never start. Checked once, before the service starts; a
    store that cannot be reached, or that does not let us ask its role, is not refused here:
    the service then starts without the cache and uses it once it answers."""
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        return None  # Sentinel and Cluster clients find the primaries themselves
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S)
    try:
        role = client.execute_command("ROLE")
    except redis.exceptions.RedisError:
        return None
    finally:
        client.close()
    if not role or _text(role[0]) not in ("slave", "replica"):
        return None
    primary = f"{_text(role[1])}:{role[2]}" if len(role) > 2 else "its primary"
    return (f"the store at --redis-url is a replica of {primary}, which takes no writes: nothing could be cached; "
            "point --redis-url at the primary, or use redis+sentinel:// to follow failovers")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def redact_url(url: str, mask: str = "***") -> str:
    """`url` with its user:password replaced by `mask` (for messages and logs), or taken out
    entirely when `mask` is "" (the upstream engines send it as Basic auth instead). The one
    place that hides a URL's password: the store's URL errors here, config errors, the API's
    start-up log, the upstream engines."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{mask}@{host}" if mask else host).geturl()


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hostlist = netloc.rsplit("@", 1)[-1]
    hosts = []
    for item in filter(None, hostlist.split(",")):
        host, _, port = item.rpartition(":")
        if not host:
            host, port = port, "26379"
        try:
            hosts.append((host, int(port)))
        except ValueError as exc:
            raise StoreURLError(f"bad host:port {item!r} in store URL") from exc
    if not hosts:
        raise StoreURLError("the store URL names no host; use host:port[,host:port]")
    return hosts


def _password(parts) -> str | None:
    if "@" not in parts.netloc:
        return None
    userinfo = parts.netloc.rsplit("@", 1)[0]
    return unquote(userinfo.split(":", 1)[-1]) or None
