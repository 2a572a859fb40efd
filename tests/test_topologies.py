"""earmark on real Redis topologies started by the tests: a 3-master Cluster and a Sentinel-
managed primary with a replica and three sentinels (Debian's redis-server, which `.ci/run`
installs). Two earmark replicas walk every tier on each; on Sentinel the primary is killed
mid-run and every request must still be answered, never naming an entry that was not written.
On the cluster, new entries are also written while two masters pause writes, round after
round, and must reach both replicas' vector indexes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
from starlette.testclient import TestClient

from earmark.service.api.app import create_app
from earmark.service.config import Settings
from tests.audio_tools import encode, fixture_bytes, read_pcm, silence_wav
from tests.redis_servers import HAVE_REDIS_SERVER, RedisServers
from tests.redis_servers import free_ports as _free_ports
from tests.redis_servers import wait_until as _wait
from tests.http_helpers import recognize

pytestmark = pytest.mark.skipif(
    not HAVE_REDIS_SERVER,
    reason="needs Debian's redis-server and redis-cli (installed by .ci/run)",
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    started = RedisServers(tmp_path_factory.mktemp("topologies"))
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def cluster_url(servers) -> str:
    ports = servers.start_cluster(masters=3, replicas_each=0, node_timeout_ms=2000)
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:2])


@pytest.fixture(scope="module")
def sentinel_setup(servers):
    primary, replica, *sentinels = _free_ports(5)
    servers.start(primary)
    servers.start(replica, "--replicaof", "127.0.0.1", str(primary))
    for port in sentinels:
        servers.start(port, f"port {port}", f"sentinel monitor earmark 127.0.0.1 {primary} 2",
                      "sentinel down-after-milliseconds earmark 1000", "sentinel failover-timeout earmark 5000",
                      sentinel=True)
    _wait(lambda: redis.Redis(port=replica).info("replication")["master_link_status"] == "up", what="replica in sync")
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in sentinels) + "/earmark/0"
    return url, primary, replica


@pytest.fixture(scope="module")
def audio():
    recorded = fixture_bytes("recorded.wav")
    samples, rate = read_pcm(recorded)
    return {
        "wav": recorded,
        "flac": encode(samples, rate, fmt="flac", codec="flac"),
        "mp3": encode(samples, rate, fmt="mp3", codec="libmp3lame", bitrate=48000),
        "silence": silence_wav(2.0),
        "weather": fixture_bytes("weather.wav"),
    }


def _tier_walk(first: TestClient, second: TestClient, audio) -> None:
    """miss, exact, canonical, fuzzy (on the other replica), negative, DELETE seen by both."""
    _wait(lambda: second.get("/health").json()["index_ready"], what="second replica's index ready")
    miss = recognize(first, audio["wav"])["cache"]
    assert miss["tier"] == "miss"
    entry = miss["entry"]
    assert recognize(first, audio["wav"])["cache"]["tier"] == "exact"
    canonical = recognize(second, audio["flac"])["cache"]
    assert (canonical["tier"], canonical["entry"]) == ("canonical", entry)
    _wait(lambda: second.get("/health").json()["index_size"] >= 1, what="entry reached the second replica")
    fuzzy = recognize(second, audio["mp3"])["cache"]
    assert (fuzzy["tier"], fuzzy["entry"]) == ("fuzzy", entry)
    assert recognize(first, audio["silence"])["cache"]["tier"] == "miss"
    assert recognize(second, audio["silence"])["cache"]["tier"] == "negative"
    assert first.delete(f"/entries/{entry}").status_code == 200
    for replica in (first, second):
        for data in (audio["wav"], audio["flac"], audio["mp3"]):
            assert recognize(replica, data, "/lookup")["cache"]["tier"] == "miss"


def _replicas(url: str, tmp_path: Path, engine):
    settings = Settings(redis_url=url, key_prefix=f"earmark-topo-{uuid.uuid4().hex[:6]}:", data_dir=tmp_path / "one")
    return (TestClient(create_app(settings, engine=engine)),
            TestClient(create_app(replace(settings, data_dir=tmp_path / "two"), engine=engine)))


def test_every_tier_on_a_three_master_cluster(cluster_url, tmp_path, engine, audio):
    first, second = _replicas(cluster_url, tmp_path, engine)
    with first, second:
        _tier_walk(first, second, audio)


def test_every_tier_on_sentinel_and_a_primary_killed_mid_run(sentinel_setup, servers, tmp_path, engine, audio):
    url, primary, replica = sentinel_setup
    first, second = _replicas(url, tmp_path, engine)
    with first, second:
        _tier_walk(first, second, audio)
        before = recognize(first, audio["weather"])["cache"]
        assert before["tier"] == "miss"
        servers.kill(primary)
        answers = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for client in (first, second):
                answer = client.post("/recognize", files={"file": ("w.wav", audio["weather"], "application/octet-stream")})
                assert answer.status_code == 200, answer.text  # every request answered
                answers.append(answer.json()["cache"])
            if answers[-1]["tier"] in ("exact", "canonical") and answers[-2]["tier"] in ("exact", "canonical", "miss"):
                break
            time.sleep(0.2)
        assert answers[-1]["tier"] in ("exact", "canonical"), answers[-5:]  # caching resumed on the new primary
        promoted = redis.Redis(port=replica)
        _wait(lambda: promoted.info("replication")["role"] == "master", what="replica promoted")
        _wait(lambda: first.get("/health").json()["index_size"] == second.get("/health").json()["index_size"],
              timeout_s=5, what="both replicas' indexes agree")
        tiers = [a["tier"] for a in answers]
        print(f"\nfailover: {len(answers)} requests after the kill, {tiers.count('bypass')} bypass, "
              f"{tiers.count('miss')} miss, last {tiers[-1]}, {time.monotonic() - deadline + 30:.1f} s to resume caching")
        keys = first.app.state.services.store.keys
        for answer in answers:
            assert answer["tier"] in ("exact", "canonical", "miss", "bypass"), answer
            if answer["entry"] is not None:  # an answer names only an entry that was written
                assert promoted.exists(keys.entry(answer["entry"])), answer


def _cluster_masters(cluster_url: str) -> list[int]:
    """The ports of every master of the cluster behind `cluster_url`."""
    first = int(cluster_url.split("://", 1)[1].split(",")[0].rsplit(":", 1)[1])
    nodes = redis.Redis(port=first, decode_responses=True).cluster("nodes")
    return sorted(int(address.split("@")[0].rsplit(":", 1)[1]) for address, node in nodes.items() if "master" in node["flags"])


def _distinct_clips() -> list[bytes]:
    """Eight clips of different audio (each a new entry, none holding another, which segment
    reuse would answer without the engine): the two fixtures and their reversal, each also
    slowed to 85%."""
    clips = []
    for name in ("recorded.wav", "weather.wav"):
        samples, rate = read_pcm(fixture_bytes(name))
        backwards = samples[::-1].copy()
        for variant in (samples, backwards):
            slowed = np.interp(np.arange(0, len(variant) - 1, 0.85), np.arange(len(variant)), variant)
            clips += [encode(variant, rate, fmt="wav", codec="pcm_s16le"), encode(slowed, rate, fmt="wav", codec="pcm_s16le")]
    return clips


def test_index_events_reach_both_replicas_through_write_pauses_on_two_shards(cluster_url, tmp_path, engine):
    """New entries written just as two of the three masters pause writes (CLIENT PAUSE WRITE,
    shorter than the command timeout), round after round with the pair rotating: every answer
    is 200, and every new entry reaches both earmark replicas' FAISS indexes after every round
    (none is left behind until a restart, as the issue found)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.gated_engine import GatedEngine

    masters = _cluster_masters(cluster_url)
    assert len(masters) == 3
    pairs = [(masters[0], masters[1]), (masters[1], masters[2]), (masters[0], masters[2])]
    settings = Settings(redis_url=cluster_url, key_prefix=f"earmark-pause-{uuid.uuid4().hex[:6]}:", data_dir=tmp_path / "one")
    gates = [GatedEngine(engine, open_now=False, hold="after") for _ in range(2)]
    first = TestClient(create_app(settings, engine=gates[0]))
    second = TestClient(create_app(replace(settings, data_dir=tmp_path / "two"), engine=gates[1]))
    written: set[str] = set()
    convergence_s = []
    with first, second, ThreadPoolExecutor(1) as pool:
        for client in (first, second):
            _wait(lambda c=client: c.get("/health").json()["index_ready"], what="index ready")
        for round_number, clip in enumerate(_distinct_clips()):
            writer, gate = (first, second)[round_number % 2], gates[round_number % 2]
            gate.gate.clear()
            gate.transcribed.clear()
            pending = pool.submit(writer.post, "/recognize", files={"file": ("clip.wav", clip, "application/octet-stream")})
            assert gate.transcribed.wait(120), "the engine never finished"
            for port in pairs[round_number % 3]:  # the result is ready: its writes meet the pause
                assert redis.Redis(port=port).execute_command("CLIENT", "PAUSE", 1000, "WRITE")
            gate.gate.set()
            answer = pending.result(120)
            assert answer.status_code == 200, answer.text
            cache = answer.json()["cache"]
            if cache["tier"] == "miss":
                written.add(cache["entry"])
            started = time.monotonic()
            for client in (first, second):
                vectors = client.app.state.services.vectors
                _wait(lambda v=vectors: written <= set(v.entry_ids()), timeout_s=60,
                      what=f"round {round_number}: every new entry in a replica's index")
            convergence_s.append(time.monotonic() - started)
    print(f"\nwrite pauses on two shards: {len(written)} new entries in {len(convergence_s)} rounds; "
          f"both indexes complete after at most {max(convergence_s):.1f} s")
    assert len(written) >= 6  # the clips are different audio: nearly every one is a new entry
