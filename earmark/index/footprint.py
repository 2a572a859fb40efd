"""What the store costs per second of cached audio, estimated from a sample (issue 25).

Summing MEMORY USAGE over every key would cost a command per key on every scrape; a sample of
entries costs a few hundred commands every few minutes and says the same to within a few
percent. Each sampled entry counts its hash, its alias set and every key listed in either (its
exact and canonical aliases, remembered fuzzy verdicts, kept query prints), against its
`duration_s`. The capped streams (the index change stream and the recognition events) are
shared by all entries: their MEMORY USAGE is spread over the audio of every entry, estimated
as the sample's mean duration times the number of entries the caller counts (the vector index
holds one per entry with speech). With a bulk store (index/bulk.py), the sampled entries'
files give its bytes on disk per second too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from earmark.index.entry import DamagedEntry, Entry
from earmark.index.store import Store

SAMPLE_ENTRIES = 200
# What the sample reads of each entry: its duration and kind (in its record, or in fields of
# their own before records), generation and bulk digest; never its verification bytes.
_SAMPLED_FIELDS = ("rec", "duration_s", "negative", "gen", "evb")


@dataclass(frozen=True)
class Footprint:
    """Bytes per second of cached audio: in the store's memory, and on the bulk store's disk."""

    memory_bytes_per_s: float
    bulk_bytes_per_s: float
    sampled_entries: int
    sampled_audio_s: float


async def sample_footprint(store: Store, entry_count: int, limit: int = SAMPLE_ENTRIES) -> Footprint | None:
    """The estimate from up to `limit` entries; None when no sampled entry holds audio.
    Raises `StoreUnavailable` during an outage."""
    if limit <= 0:
        return None
    client, keys = store.client, store.keys

    async def read() -> tuple[int, float, int, int, list[tuple[str, str]]]:
        entry_keys: list = []
        async for key in client.scan_iter(match=keys.entry_pattern(), count=1000):
            entry_keys.append(key)
            if len(entry_keys) >= limit:
                break
        pipe = client.pipeline(transaction=False)
        for key in entry_keys:
            entry_id = keys.entry_id_of(key)
            pipe.memory_usage(key, samples=0)
            pipe.hmget(key, *_SAMPLED_FIELDS)
            pipe.memory_usage(keys.entry_aliases(entry_id), samples=0)
            pipe.smembers(keys.entry_aliases(entry_id))
            pipe.hkeys(key)
        rows = await pipe.execute()
        memory, seconds, with_audio, bulk_named = 0, 0.0, 0, []
        members: list = []
        for index, key in enumerate(entry_keys):
            usage, values, set_usage, aliases, fields = rows[5 * index:5 * index + 5]
            if usage is None:
                continue  # expired between the scan and the read
            memory += int(usage) + int(set_usage or 0)
            members.extend(aliases or ())
            members.extend(field for field in fields or () if keys.is_alias_member(field))
            try:
                entry = Entry.from_fields(keys.entry_id_of(key), {name.encode(): value for name, value
                                                                  in zip(_SAMPLED_FIELDS, values, strict=True)
                                                                  if value is not None})
            except DamagedEntry:
                continue
            if not entry.negative and entry.duration_s:
                seconds += entry.duration_s
                with_audio += 1
            if entry.evidence_digest and entry.generation:
                bulk_named.append((entry.entry_id, entry.generation))
        pipe = client.pipeline(transaction=False)
        for member in members:
            pipe.memory_usage(keys.alias_key_of(member), samples=0)
        for stream in (keys.index_stream(), keys.events()):
            pipe.memory_usage(stream)
        usages = await pipe.execute()
        memory += sum(int(usage or 0) for usage in usages[:len(members)])
        streams = sum(int(usage or 0) for usage in usages[len(members):])
        return memory, seconds, with_audio, streams, bulk_named

    memory, seconds, with_audio, streams, bulk_named = await store.call(read)
    if seconds <= 0:
        return None
    # Every entry with audio, at the sample's mean duration (never less than the sample itself).
    cached_s = max(seconds, seconds / with_audio * entry_count)
    bulk_bytes = 0
    if store.bulk is not None and bulk_named:
        bulk = store.bulk
        bulk_bytes = await asyncio.to_thread(lambda: sum(bulk.stored_size(*named) for named in bulk_named))
    return Footprint(memory / seconds + streams / cached_s, bulk_bytes / seconds, with_audio, round(seconds, 2))
