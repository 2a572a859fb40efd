"""Every key earmark writes, in one place, under one configurable prefix.

Aliases (the byte-hash and PCM-hash keys) include the profile digest, so a request under
another profile (engine, language, ITN, hotwords, prompt) never finds this profile's result.

An entry's hash and its alias set carry the entry id as a hash tag (`{id}`), so on Redis
Cluster they live in one slot and are written together in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under `prefix` (default `earmark:`)."""

    prefix: str = "earmark:"

    def entry(self, entry_id: str) -> str:
        """Hash holding one cached result and everything needed to verify a match to it."""
        return f"{self.prefix}entry:{{{entry_id}}}"

    def entry_pattern(self) -> str:
        """SCAN pattern matching every entry hash."""
        return f"{self.prefix}entry:{{*}}"

    def entry_id_of(self, entry_key: bytes | str) -> str:
        """The entry id inside an entry hash's key (inverse of `entry`)."""
        key = entry_key.decode() if isinstance(entry_key, bytes) else entry_key
        return key[len(self.prefix) + len("entry:{") : -1]

    def entry_aliases(self, entry_id: str) -> str:
        """Set of alias keys pointing at an entry, so a delete can remove them all (same slot)."""
        return f"{self.prefix}aliases:{{{entry_id}}}"

    def exact(self, profile_id: str, bytes_digest: str) -> str:
        """Alias from the uploaded bytes' digest to an entry id (tier `exact`)."""
        # "exact3": BLAKE3 digests since issue 8; the BLAKE2b aliases before it ("exact:") are
        # never looked up again and expire with their entries.
        return f"{self.prefix}exact3:{profile_id}:{bytes_digest}"

    def canonical(self, profile_id: str, pcm_digest: str) -> str:
        """Alias from the decoded PCM's digest to an entry id (tier `canonical`)."""
        return f"{self.prefix}canon:{profile_id}:{pcm_digest}"

    def lock(self, profile_id: str, pcm_digest: str) -> str:
        """Single-flight lock: held by the one process running the engine for this audio."""
        return f"{self.prefix}lock:{profile_id}:{pcm_digest}"

    def store_id(self) -> str:
        """A random identity of this store's data, so a replica's index snapshot is only ever
        loaded against the store it was made from."""
        return f"{self.prefix}store-id"

    def index_stream(self) -> str:
        """Capped stream of entry additions and deletions that index replicas tail."""
        return f"{self.prefix}index:changes"

    def query_print(self, profile_id: str, bytes_digest: str) -> str:
        """A fuzzy hit's query fingerprint (never its audio), kept while its entry lives so an
        audit can redraw the match stretch by stretch (service/pipeline/events.py)."""
        return f"{self.prefix}qprint:{profile_id}:{bytes_digest}"

    def events(self) -> str:
        """Capped stream of recognition events (one per answered request) that audits read."""
        return f"{self.prefix}events"
