"""Real redis-server processes for the topology tests: single servers, replicas, sentinels and
Clusters on free loopback ports, each in a directory of its own, all killed at the end.
Debian's redis-server and redis-cli are needed (`.ci/run` installs them)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

HAVE_REDIS_SERVER = bool(shutil.which("redis-server") and shutil.which("redis-cli"))


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_cluster_ports(count: int) -> list[int]:
    """Ports whose cluster-bus port (port + 10000) is free and valid too."""
    chosen: list[int] = []
    candidates = random.Random().sample(range(20000, 45000), 2000)
    for port in candidates:
        if len(chosen) == count:
            break
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        chosen.append(port)
    return chosen


def wait_until(condition, timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll `condition` (a store error counts as not yet) until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        assert time.monotonic() < deadline, f"{what} not met within {timeout_s} s"
        time.sleep(0.1)


class RedisServers:
    """redis-server processes in a temporary directory, all stopped at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: dict[int, subprocess.Popen] = {}

    def start(self, port: int, *args: str, sentinel: bool = False) -> None:
        directory = self.root / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        command = ["redis-server"]
        if sentinel:
            config = directory / "sentinel.conf"
            config.write_text("\n".join(args) + "\n")
            command += [str(config), "--sentinel"]
            args = ()
        command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
                    "--appendonly", "no", *args]
        self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: redis.Redis(port=port, socket_timeout=0.5).ping(), what=f"redis on {port}")

    def start_cluster_nodes(self, count: int, node_timeout_ms: int) -> list[int]:
        """`count` cluster-enabled servers that know nothing of each other yet (no slot covered)."""
        ports = free_cluster_ports(count)
        for port in ports:
            self.start(port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                       "--cluster-node-timeout", str(node_timeout_ms))
        return ports

    def start_cluster(self, masters: int, replicas_each: int, node_timeout_ms: int) -> list[int]:
        """A Cluster, whole and with every replica in sync; returns its ports, masters first (the
        first master serves slot 0)."""
        ports = self.start_cluster_nodes(masters * (1 + replicas_each), node_timeout_ms)
        create_cluster(ports, replicas_each)
        return ports

    def kill(self, port: int) -> None:
        """kill -9 the server on `port`."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait(10)
        self.processes.clear()


def create_cluster(ports: list[int], replicas_each: int) -> None:
    """Join `ports` into a Cluster (redis-cli makes the first ones the masters) and wait until
    every node says it is whole and every replica is in sync (before that, a replica cannot
    take over from its master)."""
    subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas", str(replicas_each), "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)

    def whole() -> bool:
        for port in ports:
            node = redis.Redis(port=port, decode_responses=True)
            if node.cluster("info")["cluster_state"] != "ok":
                return False
            replication = node.info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    wait_until(whole, what="cluster whole, replicas in sync")


def cluster_masters(port: int) -> list[int]:
    """The ports of the masters that the node on `port` knows and does not consider failed."""
    nodes = redis.Redis(port=port, decode_responses=True).cluster("nodes")
    return sorted(int(address.split("@")[0].rsplit(":", 1)[1]) for address, node in nodes.items()
                  if "master" in node["flags"] and "fail" not in node["flags"])


def slot_master(port: int, key: str) -> int:
    """The port of the master serving `key`'s slot, as the node on `port` sees it."""
    node = redis.Redis(port=port, decode_responses=True)
    slot = node.cluster("keyslot", key)
    for start, end, master, *_ in node.execute_command("CLUSTER SLOTS"):
        if start <= slot <= end:
            return int(master[1])
    raise AssertionError(f"slot {slot} is not covered")
