"""What the console's history and entry pages show, read from the recognition event log
(service/pipeline/events.py) and the entries it names: nothing of its own is stored.

Every read is bounded (the event stream is capped, and a page or a search examines at most a
fixed number of events), so a page costs the same however long the service has run. A text
search looks at the transcripts of the entries the most recent events name, not at every
entry in the store: the pages say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earmark.index.entry import Entry
from earmark.index.store import Store
from earmark.service.pipeline.events import HIT_TIERS, RECOGNITION_ENDPOINTS, EventLog, RecognitionEvent

READ_BATCH = 200  # events read per round trip while paging or searching
SEARCH_SCAN_LIMIT = 2000  # events a text search examines, newest first
HITS_SCAN_LIMIT = 5000  # events examined for an entry's hits


@dataclass
class HistoryRow:
    """One recognition as the history lists it: the event and its entry (None once gone)."""

    stream_id: str
    event: RecognitionEvent
    entry: Entry | None


@dataclass
class HistoryPage:
    """A page of history, newest first; `older` is the cursor of the next page (None: the last)."""

    rows: list[HistoryRow]
    older: str | None
    scanned: int
    query: str = ""


async def history_page(events: EventLog, store: Store, *, count: int, before: str | None = None,
                       query: str = "", scan_limit: int = SEARCH_SCAN_LIMIT) -> HistoryPage:
    """Recent recognitions from `before` back (exclusive), `count` at most, whose entry's
    transcript contains `query` (case-insensitive) when one is given. At most `scan_limit`
    events are examined; `older` then continues from where this page stopped."""
    needle = query.strip().lower()
    rows: list[HistoryRow] = []
    cursor, scanned, exhausted = before, 0, False
    while len(rows) < count and not exhausted and scanned < scan_limit:
        batch = await events.recent(min(READ_BATCH, scan_limit - scanned), before=cursor)
        exhausted = len(batch) < min(READ_BATCH, scan_limit - scanned)
        entries = await _entries_of([event for _, event in batch if event.endpoint in RECOGNITION_ENDPOINTS], store)
        for position, (stream_id, event) in enumerate(batch):
            scanned += 1
            cursor = stream_id
            if event.endpoint not in RECOGNITION_ENDPOINTS:
                continue
            entry = entries.get(event.entry_id) if event.entry_id else None
            if needle and (entry is None or needle not in entry.text.lower()):
                continue
            rows.append(HistoryRow(stream_id, event, entry))
            if len(rows) == count:
                exhausted = exhausted and position == len(batch) - 1
                break
    if not exhausted and cursor is not None:  # anything older than where this page stopped?
        exhausted = not await events.recent(1, before=cursor)
    return HistoryPage(rows, None if exhausted else cursor, scanned, query)


async def _entries_of(events: list[RecognitionEvent], store: Store) -> dict[str, Entry | None]:
    """The entries these events name, read in one round trip."""
    ids = list(dict.fromkeys(event.entry_id for event in events if event.entry_id))
    if not ids:
        return {}
    return dict(zip(ids, await store.get_entries(ids), strict=True))


@dataclass
class EntryHits:
    """The recognitions an entry answered among the most recent events."""

    events: list[tuple[str, RecognitionEvent]] = field(default_factory=list)
    by_tier: dict[str, int] = field(default_factory=dict)
    saved_s: float = 0.0
    scanned: int = 0

    @property
    def hit_count(self) -> int:
        """Recognitions it answered from the cache (its own miss, and bypasses, aside)."""
        return sum(count for tier, count in self.by_tier.items() if tier in HIT_TIERS)


async def entry_hits(events: EventLog, entry_id: str, scan_limit: int = HITS_SCAN_LIMIT) -> EntryHits:
    """Every recognition among the last `scan_limit` events that this entry answered (its miss
    included), newest first."""
    found = EntryHits()
    cursor = None
    while found.scanned < scan_limit:
        wanted = min(1000, scan_limit - found.scanned)
        batch = await events.recent(wanted, before=cursor)
        for stream_id, event in batch:
            if event.entry_id == entry_id and event.endpoint in RECOGNITION_ENDPOINTS:
                found.events.append((stream_id, event))
                found.by_tier[event.tier] = found.by_tier.get(event.tier, 0) + 1
                found.saved_s += event.engine_s_saved
        found.scanned += len(batch)
        if len(batch) < wanted:
            break
        cursor = batch[-1][0]
    return found
