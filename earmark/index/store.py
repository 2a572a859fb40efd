"""The entry store: cached results and their aliases in Redis, behind a circuit breaker.

Redis is the source of truth. An alias (the uploaded bytes' digest) only points at an entry id;
a lookup then reads the entry itself, so a deleted, expired or evicted entry is never served
even if an alias to it survives. The decoded audio's digest needs no alias: with the profile it
makes the entry id. An entry's verification bytes may live in a bulk directory beside the
store (index/bulk.py), named by its id and generation and checked against its digest. Every call goes through the breaker: while the store is down
they fail at once with `StoreUnavailable` and the service answers without the cache.

Entries are written with plain redis-py pipelines rather than redis-om models: entries carry
binary fingerprints and vectors (redis-om's models need `decode_responses=True` and text
fields), the same code must run against a single server, Sentinel and Cluster clients chosen at
run time (redis-om binds a connection per model class), and one pipelined round trip per write
is what the hot path needs; see bench/README.md for the measured difference.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import redis
import redis.exceptions
from redis.sentinel import MasterNotFoundError

from earmark.index.breaker import CircuitBreaker, StoreRefused, StoreUnavailable
from earmark.index.bulk import BulkStore, value_digest
from earmark.index.connection import open_client
from earmark.index.entry import ENTRY_ID, DamagedEntry, Entry, make_entry_id
from earmark.index.evidence import pack, unpack
from earmark.index.keys import Keys, base64, unbase64

log = logging.getLogger(__name__)

# A lost or failing connection: the store is down for everyone, the breaker opens.
_OUTAGE_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
    MasterNotFoundError,
    redis.exceptions.ReadOnlyError,  # a demoted primary during failover
    # A Cluster client that cannot learn a layout serving every slot (the cluster still
    # forming, a shard down, no node reachable) raises this rather than a RedisError: the
    # store is down until the probe's PING, which needs that layout too, gets through.
    redis.exceptions.RedisClusterException,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)
# The store answered and refused one command (OOM under maxmemory, WRONGTYPE from a foreign key
# in our namespace, a cross-slot or aborted transaction): that request goes on without the
# cache (never a 500), the breaker stays closed for every other request.
_REFUSED_ERRORS = (redis.exceptions.ResponseError,)

# Compare-and-delete / compare-and-extend: only the holder may release or extend its lock.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)

# List an alias among its entry's fields, only while the entry is the generation the alias was
# made for: never on a deleted, expired or re-created entry (an HSET there would create a hash
# that is no entry).
_LIST_ALIAS = (
    "if redis.call('hget', KEYS[1], 'gen') == ARGV[1] then "
    "redis.call('hset', KEYS[1], ARGV[2], '') return 1 end return 0"
)

PROBE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class FuzzyVerdict:
    """What a fuzzy match decided: its score, and which thresholds and fingerprint judged it."""

    score: float
    judged_by: str  # digest of the thresholds and fingerprint version

    def render(self) -> str:
        """Compact form stored in the alias value."""
        return f"fuzzy:{self.score:.4f}:{self.judged_by}"

    @classmethod
    def parse(cls, text: str) -> "FuzzyVerdict | None":
        """Inverse of `render`; None for anything else."""
        kind, _, rest = text.partition(":")
        score, _, judged_by = rest.partition(":")
        try:
            return cls(float(score), judged_by) if kind == "fuzzy" and judged_by else None
        except ValueError:
            return None


def _entry_or_none(entry_id: str, fields: dict[bytes, bytes]) -> Entry | None:
    """The entry an HGETALL read; None when there is none, or its record is damaged (never served)."""
    if not fields:
        return None
    try:
        return Entry.from_fields(entry_id, fields)
    except DamagedEntry:
        log.warning("entry %s has an unreadable record: read as no entry", entry_id)
        return None


def _unlink_all(paths: list) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _refusal_reason(error: Exception) -> str:
    """The server's error code (OOM, WRONGTYPE, EXECABORT, ...) for the refused-command metric."""
    if isinstance(error, redis.exceptions.OutOfMemoryError):
        return "OOM"
    code = str(error).split(" ", 1)[0]
    return code if code.isupper() and code.isalpha() else "ERR"


@dataclass(frozen=True)
class _Alias:
    """An alias value: the entry id, the generation of the entry it was made for, and the
    fuzzy verdict when a fuzzy match made it (`<id>|<generation>[|fuzzy:<score>:<judge>]`)."""

    entry_id: str
    generation: str
    verdict: FuzzyVerdict | None = None

    def render(self, compact: bool = False) -> str:
        """The stored form; `compact` (the aliases `Keys.exact` names) packs the entry id and
        generation as their bytes in base64url, 32 characters against 49."""
        if compact and ENTRY_ID.fullmatch(self.entry_id) and _GENERATION.fullmatch(self.generation):
            value = base64(bytes.fromhex(self.entry_id + self.generation))
            return value if self.verdict is None else f"{value}|{self.verdict.render()}"
        value = f"{self.entry_id}|{self.generation}"
        return value if self.verdict is None else f"{value}|{self.verdict.render()}"

    @classmethod
    def parse(cls, text: str, compact: bool = False) -> "_Alias":
        """Inverse of `render`; an old-format value parses with no generation (never followed)."""
        head, _, rest = text.partition("|")
        if compact and len(head) == _COMPACT_LENGTH and (not rest or rest.startswith("fuzzy:")):
            try:
                raw = unbase64(head)
            except ValueError:
                raw = b""
            if len(raw) == 24:
                return cls(raw[:16].hex(), raw[16:].hex(), FuzzyVerdict.parse(rest) if rest else None)
        entry_id, generation, verdict = head, *rest.partition("|")[::2]
        if generation.startswith("fuzzy:"):
            generation, verdict = "", generation
        return cls(entry_id, generation, FuzzyVerdict.parse(verdict) if verdict else None)


_GENERATION = re.compile(r"[0-9a-f]{16}")  # secrets.token_hex(8), as `put_entry` makes it
_COMPACT_LENGTH = 32  # base64url of an entry id's 16 bytes and a generation's 8


class Store:
    """Cached entries and aliases under `keys.prefix`, plus the single-flight locks."""

    def __init__(
        self,
        client: Any,
        keys: Keys | None = None,
        *,
        on_error: Callable[[], None] | None = None,
        on_state: Callable[[bool], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
        bulk: BulkStore | None = None,
        on_bulk: Callable[[str, str], None] | None = None,
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        # Where entries' verification bytes go (index/bulk.py); None: in the entry hashes.
        self.bulk = bulk
        self._on_bulk = on_bulk or (lambda operation, result: None)
        self.breaker = CircuitBreaker()
        self._on_error = on_error or (lambda: None)
        self._on_state = on_state or (lambda up: None)
        self._on_refused = on_refused or (lambda reason: None)
        self._probe_task: asyncio.Task | None = None

    @classmethod
    def open(cls, url: str, keys: Keys | None = None, *, on_error: Callable[[], None] | None = None,
             on_state: Callable[[bool], None] | None = None, on_refused: Callable[[str], None] | None = None,
             bulk_dir: str = "", on_bulk: Callable[[str, str], None] | None = None) -> Store:
        """The store at `url` (index/connection.py) on a client of its own, which connects on
        first use, not now; with `bulk_dir`, entries' verification bytes are kept in files
        there (index/bulk.py)."""
        keys = keys or Keys()
        bulk = BulkStore(bulk_dir, keys.prefix) if bulk_dir else None
        return cls(open_client(url), keys, on_error=on_error, on_state=on_state, on_refused=on_refused, bulk=bulk,
                   on_bulk=on_bulk)

    @property
    def up(self) -> bool:
        """False during an outage (the breaker is open)."""
        return not self.breaker.is_open

    async def _call(self, operation: Callable[[], Awaitable[Any]]) -> Any:
        self.breaker.allow()
        try:
            return await operation()
        except _OUTAGE_ERRORS as exc:
            self._on_error()
            self.breaker.record_failure(exc)
            self._on_state(False)
            self._ensure_probe()
            raise StoreUnavailable(str(exc)) from exc
        except _REFUSED_ERRORS as exc:
            self._on_refused(_refusal_reason(exc))
            log.warning("the store refused a command (%s): this request goes on without the cache", exc)
            raise StoreRefused(str(exc)) from exc

    async def call(self, operation: Callable[[], Awaitable[Any]]) -> Any:
        """Run a client operation of another module of index/ with keys of its own
        (index/event_stream.py, index/query_prints.py, index/operator_reads.py) behind the
        breaker: `StoreUnavailable` during an outage, like every other store call. Nothing
        outside index/ reaches the client (tests/test_layering.py)."""
        return await self._call(operation)

    def _ensure_probe(self) -> None:
        if self._probe_task is None or self._probe_task.done():
            try:
                self._probe_task = asyncio.get_running_loop().create_task(self._probe_until_up())
            except RuntimeError:
                pass

    async def _probe_until_up(self) -> None:
        while self.breaker.is_open:
            await asyncio.sleep(PROBE_INTERVAL_S)
            try:
                await self.client.ping()
            except Exception:  # any failure means "still down"; keep probing
                continue
            self.breaker.record_success()
            self._on_state(True)

    async def ping(self) -> bool:
        """True when the store answers now (used at start-up and by /health)."""
        try:
            await self._call(self.client.ping)
        except StoreUnavailable:
            return False
        return True

    async def info(self) -> dict:
        """The server's memory and keyspace statistics (merged INFO sections; per node on a cluster)."""

        async def read() -> dict:
            merged: dict = {}
            for section in ("memory", "stats"):
                result = await self.client.info(section)
                if result and all(isinstance(v, dict) for v in result.values()):  # cluster: per node
                    for node in result.values():
                        for key, value in node.items():
                            if isinstance(value, (int, float)):
                                merged[key] = merged.get(key, 0) + value
                else:
                    merged.update(result)
            return merged

        return await self._call(read)

    async def entry_by_alias(self, alias_key: str) -> Entry | None:
        """Follow an alias to its entry; None when either is missing."""
        entry, _ = await self.entry_and_verdict(alias_key)
        return entry

    async def entry_and_verdict(self, alias_key: str) -> tuple[Entry | None, FuzzyVerdict | None]:
        """Follow an alias to its entry, with the fuzzy verdict that made the alias, if one did.

        An alias made by a fuzzy hit records that it was a judgement (score and thresholds),
        so the same bytes later are served as `fuzzy`, never passed off as `exact`. An alias is
        followed only to the generation of the entry it was made for: one that outlived a
        DELETE is dead even after the same audio is cached again (and is removed here). An
        answer by alias needs no verification: a bulk store's bytes are not read for it."""

        async def follow() -> tuple[Entry | None, FuzzyVerdict | None]:
            return await self._follow(alias_key, await self.client.get(alias_key))

        return await self._call(follow)

    async def _follow(self, alias_key: str, value: bytes | None) -> tuple[Entry | None, FuzzyVerdict | None]:
        """`entry_and_verdict` of an alias whose value was just read."""
        if value is None:
            return None, None
        alias = _Alias.parse(value.decode(), compact=self.keys.is_compact_exact(alias_key))
        entry = await self._read_entry(alias.entry_id, evidence=False)
        if entry is None or not alias.generation or entry.generation != alias.generation:
            if entry is not None:  # a stale alias to a re-created entry: drop it, unless rewritten
                await self.client.eval(_RELEASE, 1, alias_key, value)
            return None, None
        return entry, alias.verdict

    async def entry_and_verdict_of_bytes(self, profile_id: str, bytes_digest: str
                                         ) -> tuple[Entry | None, FuzzyVerdict | None]:
        """`entry_and_verdict` by the uploaded bytes' exact alias (tier `exact`): this version's
        (`Keys.exact`), else one an earlier earmark wrote for its own entries
        (`Keys.exact_before_compact`, `Keys.exact_before_records`), so entries written before an
        upgrade keep their exact hits. The three are read in one round trip."""
        names = (self.keys.exact(profile_id, bytes_digest), self.keys.exact_before_compact(profile_id, bytes_digest),
                 self.keys.exact_before_records(profile_id, bytes_digest))

        async def follow() -> tuple[Entry | None, FuzzyVerdict | None]:
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.get(name)
            for name, value in zip(names, await pipe.execute(), strict=True):
                found = await self._follow(name, value)
                if found[0] is not None:
                    return found
            return None, None

        return await self._call(follow)

    async def entry_by_canonical(self, profile_id: str, pcm_digest: str) -> Entry | None:
        """The entry of this decoded audio under this profile (tier `canonical`), read by its id,
        which is made from the two (index/entry.py, `make_entry_id`): no alias key is needed for
        it, nor kept (issue 25: one key less per entry). Like an alias, it reads no bulk bytes."""

        async def read() -> Entry | None:
            entry = await self._read_entry(make_entry_id(profile_id, pcm_digest), evidence=False)
            if entry is None or entry.profile_id != profile_id or entry.pcm_digest != pcm_digest:
                return None
            return entry

        return await self._call(read)

    async def get_entry(self, entry_id: str) -> Entry | None:
        """Read one entry by id; None when it does not exist (deleted, expired, evicted)."""
        return await self._call(lambda: self._read_entry(entry_id))

    async def get_entries(self, entry_ids: list[str]) -> list[Entry | None]:
        """Read several entries in one round trip, in order."""

        async def read_all() -> list[Entry | None]:
            pipe = self.client.pipeline(transaction=False)
            for entry_id in entry_ids:
                pipe.hgetall(self.keys.entry(entry_id))
            rows = await pipe.execute()
            entries = [_entry_or_none(i, row) for i, row in zip(entry_ids, rows, strict=True)]
            return [await self._with_evidence(entry) for entry in entries]

        return await self._call(read_all)

    async def _read_entry(self, entry_id: str, *, evidence: bool = True) -> Entry | None:
        fields = await self.client.hgetall(self.keys.entry(entry_id))
        entry = _entry_or_none(entry_id, fields)
        return await self._with_evidence(entry) if evidence else entry

    async def _with_evidence(self, entry: Entry | None) -> Entry | None:
        """The entry with its verification bytes read from the bulk store, when it keeps them
        there; as it is when they are missing or not the bytes it names (never fuzzy-matched)."""
        if entry is None or not entry.evidence_digest or entry.has_evidence:
            return entry
        if self.bulk is None:
            self._on_bulk("read", "no_bulk_store")
            return entry
        try:
            value = await asyncio.to_thread(self.bulk.get, entry.entry_id, entry.generation)
        except OSError:
            log.warning("the bulk store could not be read for entry %s", entry.entry_id, exc_info=True)
            value = None
        evidence = unpack(value) if value is not None and value_digest(value) == entry.evidence_digest else None
        if evidence is None:
            self._on_bulk("read", "missing" if value is None else "damaged")
            return entry
        self._on_bulk("read", "ok")
        return replace(entry, fingerprint=evidence.fingerprint, fingerprint_levels=evidence.fingerprint_levels,
                       detail=evidence.detail, pitch=evidence.pitch, wide=evidence.wide)

    async def put_entry(self, entry: Entry, bytes_digest: str, ttl_s: int, *, stream_maxlen: int) -> Entry:
        """Write an entry with its byte alias, all expiring together.

        The entry, its expiry and the listing of its alias are one transaction (one key): under
        OOM or a lost connection either all of it is written or none, and an existing entry is
        never left destroyed or without a TTL. The alias and the index change stream's `add`
        event follow; an alias without its entry, or of an older generation, is never followed.
        (Rewriting an entry drops the listing of its earlier generation's aliases: those are
        dead, removed when next read, and expire when that generation would have.)
        """
        expires_at_ms = int((time.time() + ttl_s) * 1000)
        stored = replace(entry, expires_at_ms=expires_at_ms, generation=secrets.token_hex(8))
        entry_key = self.keys.entry(entry.entry_id)
        # The canonical tier reads the entry by its id (`entry_by_canonical`): its only alias is
        # the exact one, listed among the entry's fields. (Entries written before issue 25 also
        # have a `canonical` alias, listed in their alias set and deleted with them.)
        aliases = [self.keys.exact(entry.profile_id, bytes_digest)]
        alias_value = _Alias(entry.entry_id, stored.generation).render(compact=True)
        fields: dict[str | bytes, bytes | str] = {name: value for name, value in stored.to_fields().items()}
        fields.update((self.keys.alias_member(alias), b"") for alias in aliases)
        if self.bulk is not None and stored.has_evidence:
            value = pack(stored.evidence)
            try:  # before the entry that names it: an entry never names a value not yet written
                await asyncio.to_thread(self.bulk.put, entry.entry_id, stored.generation, value)
            except OSError:
                log.warning("the bulk store refused a write: entry %s keeps its verification bytes in the store",
                            entry.entry_id, exc_info=True)
                self._on_bulk("write", "failed")
            else:
                self._on_bulk("write", "ok")
                stored = replace(stored, evidence_digest=value_digest(value))
                del fields["ev"]
                fields["evb"] = stored.evidence_digest

        async def write() -> None:
            transaction = self.client.pipeline(transaction=True)
            transaction.delete(entry_key)
            transaction.hset(entry_key, mapping=fields)
            transaction.pexpireat(entry_key, expires_at_ms)
            await transaction.execute()
            pipe = self.client.pipeline(transaction=False)
            for alias in aliases:
                pipe.set(alias, alias_value, pxat=expires_at_ms)
            if stored.embedding:
                pipe.xadd(
                    self.keys.index_stream(),
                    {"op": "add", "entry": entry.entry_id, "profile": entry.profile_id},
                    maxlen=stream_maxlen,
                    approximate=True,
                )
            await pipe.execute()

        await self._call(write)
        if self.bulk is not None:  # the values of the generations this write replaced
            await self._bulk_delete(entry.entry_id, keep=stored.generation)
        return stored

    async def _bulk_delete(self, entry_id: str, keep: str = "") -> None:
        """Remove an entry's bulk values (but generation `keep`'s); a failure is left to the sweep."""
        try:
            await asyncio.to_thread(self.bulk.delete, entry_id, keep)  # type: ignore[union-attr]
        except OSError:
            log.warning("the bulk store could not remove entry %s's values: the sweep will", entry_id, exc_info=True)

    async def sweep_bulk(self, older_than_s: float | None = None, batch: int = 500) -> int:
        """Remove the bulk values whose entry (at their generation) is gone: expired, evicted,
        deleted, lost in a failover, or replaced. How many were removed; 0 without a bulk store."""
        if self.bulk is None:
            return 0
        bulk = self.bulk
        grace = {} if older_than_s is None else {"older_than_s": older_than_s}
        files = await asyncio.to_thread(lambda: list(bulk.files(**grace)))
        removed = 0
        for start in range(0, len(files), batch):
            chunk = files[start:start + batch]

            async def generations(chunk=chunk) -> list:
                pipe = self.client.pipeline(transaction=False)
                for entry_id, _, _ in chunk:
                    pipe.hget(self.keys.entry(entry_id), "gen")
                return await pipe.execute()

            live = await self._call(generations)
            dead = [path for (_, generation, path), current in zip(chunk, live, strict=True)
                    if not generation or current is None or current.decode() != generation]
            await asyncio.to_thread(_unlink_all, dead)
            removed += len(dead)
        return removed

    async def add_alias(self, entry: Entry, bytes_digest: str, verdict: FuzzyVerdict | None = None) -> str:
        """Point these bytes at an existing entry, so the next identical upload skips decoding
        (`exact`, or `fuzzy` again with the recorded `verdict` when a fuzzy match made it).

        Returns "seen" when the alias already said exactly this (a concurrent identical
        upload got there first), "added" otherwise, and "gone" when the entry was deleted or
        expired since it was read: the alias is then removed again and the caller must not
        serve the entry. The alias is written before it is listed in the entry, and listed only
        while the entry is that generation (one script), so a concurrent DELETE either sees it
        or is seen; and it names the entry's generation, so one that escapes a DELETE anyway
        is dead.
        """
        if entry.expires_at_ms and entry.expires_at_ms <= time.time() * 1000:
            return "gone"
        if not entry.generation:
            return "added"  # an entry written before generations: its aliases are never followed
        alias = self.keys.exact(entry.profile_id, bytes_digest)
        value = _Alias(entry.entry_id, entry.generation, verdict).render(compact=True)

        async def write() -> str:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(alias, value, pxat=entry.expires_at_ms or None, get=True)
            pipe.eval(_LIST_ALIAS, 1, self.keys.entry(entry.entry_id), entry.generation, self.keys.alias_member(alias))
            previous, listed = await pipe.execute()
            if not listed:
                await self.client.eval(_RELEASE, 1, alias, value)
                return "gone"
            return "seen" if previous is not None and previous.decode() == value else "added"

        return await self._call(write)

    async def delete_entry(self, entry_id: str, *, stream_maxlen: int) -> bool:
        """Remove an entry and its aliases and tell the replicas; False when it did not exist
        (and then no event is written)."""

        async def remove() -> bool:
            entry_key, aliases_key = self.keys.entry(entry_id), self.keys.entry_aliases(entry_id)
            read = self.client.pipeline(transaction=False)
            read.hkeys(entry_key)
            read.smembers(aliases_key)  # an entry written before aliases were listed in its hash
            fields, members = await read.execute()
            aliases = {*members, *(field for field in fields if self.keys.is_alias_member(field))}
            transaction = self.client.pipeline(transaction=True)
            transaction.delete(entry_key)
            transaction.delete(aliases_key)
            existed = bool((await transaction.execute())[0])
            pipe = self.client.pipeline(transaction=False)
            for member in aliases:
                pipe.delete(self.keys.alias_key_of(member))
            if existed:
                pipe.xadd(
                    self.keys.index_stream(),
                    {"op": "del", "entry": entry_id},
                    maxlen=stream_maxlen,
                    approximate=True,
                )
            await pipe.execute()
            return existed

        existed = await self._call(remove)
        if self.bulk is not None:
            await self._bulk_delete(entry_id)
        return existed

    def list_alias(self, pipe, entry: Entry, alias_key: str) -> None:
        """Queue on `pipe` the listing of `alias_key` among `entry`'s fields, so that deleting
        the entry deletes it too; a no-op unless the entry is still that generation."""
        pipe.eval(_LIST_ALIAS, 1, self.keys.entry(entry.entry_id), entry.generation, self.keys.alias_member(alias_key))

    async def acquire_lock(self, key: str, ttl_ms: int) -> str | None:
        """Take a lock that expires by itself; returns the holder's token, or None if taken."""
        token = secrets.token_hex(8)
        # GET makes a retried SET (a connection lost after the server applied it) recognise
        # its own token instead of waiting on itself until the lock expires.
        holder = await self._call(lambda: self.client.set(key, token, nx=True, px=ttl_ms, get=True))
        return token if holder is None or holder.decode() == token else None

    async def extend_lock(self, key: str, token: str, ttl_ms: int) -> bool:
        """Push a held lock's expiry out; False when it was lost."""
        return bool(await self._call(lambda: self.client.eval(_EXTEND, 1, key, token, ttl_ms)))

    async def release_lock(self, key: str, token: str) -> None:
        """Release a lock if we still hold it."""
        await self._call(lambda: self.client.eval(_RELEASE, 1, key, token))

    async def lock_held(self, key: str) -> bool:
        """True while someone holds the lock."""
        return bool(await self._call(lambda: self.client.exists(key)))

    async def close(self) -> None:
        """Stop probing and close connections."""
        if self._probe_task is not None:
            self._probe_task.cancel()
        try:
            await self.client.aclose()
        except Exception:  # closing a dead connection pool may fail; nothing to do about it
            log.debug("closing the store client failed", exc_info=True)
