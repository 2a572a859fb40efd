"""Cluster failover, measured on real processes: a 3+3 Redis Cluster (cluster-node-timeout
1000 ms), two `earmark serve` (A written through, B passive), kill -9 of a master, and the
seconds from the kill until

- `resumed`: caching works again on A (the first of 5 new recordings in a row that A cached);
- `copy_hit`: B finds (/lookup, tier fuzzy) an MP3 copy of a recording A cached after that.

`--victim first` kills the URL's first node (the master of slot 0, where the clients learned the
Cluster), `--victim stream` the master of the index stream's slot. Each run prints one line;
a `copy_hit` of None means none within `--give-up-s`. To measure another revision, give
`--earmark` an `earmark` command installed from it.

    .venv/bin/python bench/bench_cluster_failover.py --victim first --runs 3
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from earmark.index.keys import Keys  # noqa: E402
from tests.audio_tools import encode, fixture_bytes, read_pcm, silence_wav  # noqa: E402
from tests.redis_servers import RedisServers, free_ports, slot_master  # noqa: E402

IN_A_ROW = 5


def _post(client: httpx.Client, data: bytes, path: str = "/recognize") -> dict:
    answer = client.post(path, files={"file": ("x.wav", data, "application/octet-stream")})
    assert answer.status_code == 200, answer.text
    return answer.json()["cache"]


def _failed_over(survivor: int, victim: int) -> bool:
    node = redis.Redis(port=survivor, decode_responses=True)
    return (node.cluster("info")["cluster_state"] == "ok"
            and all(int(master[1]) != victim for _, _, master, *_ in node.execute_command("CLUSTER SLOTS")))


def run(victim_kind: str, give_up_s: float, earmark: str) -> dict:
    root = Path(tempfile.mkdtemp(prefix="earmark-failover-"))
    servers = RedisServers(root)
    services: list[subprocess.Popen] = []
    try:
        ports = servers.start_cluster(masters=3, replicas_each=1, node_timeout_ms=1000)
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports[:3])
        clients = []
        for name, port in zip("ab", free_ports(2), strict=True):
            log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            services.append(subprocess.Popen(
                [earmark, "serve", "--port", str(port), "--redis-url", url,
                 "--engine", "pocketsphinx", "--data-dir", str(root / name)], stdout=log, stderr=subprocess.STDOUT))
            clients.append(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60))
        first, second = clients
        deadline = time.monotonic() + 120
        while True:
            try:
                if all(client.get("/health").json()["index_ready"] for client in clients):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the services did not get ready"
            time.sleep(0.2)
        samples, rate = read_pcm(fixture_bytes("weather.wav"))
        recording = encode(samples, rate, fmt="wav", codec="pcm_s16le")
        copy = encode(samples, rate, fmt="mp3", codec="libmp3lame", bitrate=48000)
        victim = ports[0] if victim_kind == "first" else slot_master(ports[0], Keys().index_stream())
        survivor = next(port for port in ports[:3] if port != victim)
        servers.kill(victim)
        killed = time.monotonic()
        failed_over = resumed = copy_hit = None
        sent = in_a_row = 0
        run_started = 0.0
        entry = None
        while time.monotonic() - killed < give_up_s and copy_hit is None:
            now = time.monotonic() - killed
            if failed_over is None:
                try:
                    failed_over = now if _failed_over(survivor, victim) else None
                except redis.RedisError:
                    pass
            if resumed is None:
                sent += 1
                cached = _post(first, silence_wav(0.5 + sent / 100))["tier"] == "miss"
                in_a_row = in_a_row + 1 if cached else 0
                run_started = now if in_a_row == 1 else run_started
                resumed = run_started if in_a_row == IN_A_ROW else None
                if not cached:
                    time.sleep(0.1)
            elif entry is None:
                answer = _post(first, recording)
                entry = answer["entry"] if answer["tier"] == "miss" else None
            else:
                found = _post(second, copy, "/lookup")
                copy_hit = time.monotonic() - killed if found["entry"] == entry else None
                time.sleep(0.2)
        return {"victim": victim_kind, "failed_over_s": failed_over, "resumed_s": resumed, "copy_hit_s": copy_hit}
    finally:
        for service in services:
            service.terminate()
        for service in services:
            service.wait(30)
        servers.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victim", choices=("first", "stream"), default="first")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--give-up-s", type=float, default=45.0)
    parser.add_argument("--earmark", default=str(Path(sys.executable).parent / "earmark"), help="the earmark command to run")
    options = parser.parse_args()
    for _ in range(options.runs):
        result = run(options.victim, options.give_up_s, options.earmark)
        print(" ".join(f"{key}={round(value, 1) if isinstance(value, float) else value}" for key, value in result.items()),
              flush=True)


if __name__ == "__main__":
    main()
