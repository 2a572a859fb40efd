"""Reads for operators, never on a request's path: every entry's id (the dedup audit,
service/ops/audit.py) and one entry's size in the store (the console's entry page)."""

from __future__ import annotations

from earmark.index.store import Store

SCAN_COUNT = 1000  # keys asked for per SCAN round trip


async def all_entry_ids(store: Store) -> list[str]:
    """The id of every entry in the store, in no particular order (a SCAN: entries written or
    deleted meanwhile may or may not be listed). Raises `StoreUnavailable` during an outage."""
    keys = store.keys

    async def scan() -> list[str]:
        return [keys.entry_id_of(key) async for key in store.client.scan_iter(match=keys.entry_pattern(),
                                                                               count=SCAN_COUNT)]

    return await store.call(scan)


async def entry_size_bytes(store: Store, entry_id: str) -> int | None:
    """The bytes the store gives an entry's hash (MEMORY USAGE; its aliases not counted); None
    when the entry does not exist. Raises `StoreUnavailable` during an outage."""
    return await store.call(lambda: store.client.memory_usage(store.keys.entry(entry_id)))
