"""Every key earmark writes, in one place, under one configurable prefix.

Aliases (the byte-hash and PCM-hash keys) include the profile digest, so a request under
another profile (engine, language, ITN, hotwords, prompt) never finds this profile's result.

An entry's hash lists the aliases that point at it among its own fields, so a DELETE finds and
removes them all, and they vanish with it when it expires or is evicted. (Entries written
before that kept an alias set beside the hash; both carry the entry id as a hash tag, `{id}`,
so on Redis Cluster they live in one slot.)
"""

from __future__ import annotations

import base64 as _b64
from dataclasses import dataclass

# An entry lists its aliases compactly (`Keys.alias_member`), as fields of its hash: a kind byte
# (never the first byte of a key prefix nor of an entry field's name), the profile digest's
# length and bytes, then the audio digest's bytes.
_MEMBER_KINDS = {"exact3": b"\x01", "canon": b"\x02", "qprint": b"\x03", "exact4": b"\x04", "x": b"\x05"}
_COMPACT_EXACT = "x"  # the exact alias named by its digests' bytes in base64url (`Keys.exact`)
_MEMBER_KIND_NAMES = {code[0]: name for name, code in _MEMBER_KINDS.items()}
_NAMED = b"\x00"  # then a key named in full


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
        """Set of alias keys pointing at an entry, as entries written before issue 25's alias
        listing kept them (now each alias is listed as a field of the entry hash itself,
        `alias_member`); still read, and deleted, with its entry."""
        return f"{self.prefix}aliases:{{{entry_id}}}"

    def alias_member(self, alias_key: str) -> bytes:
        """How `alias_key` is listed among its entry's aliases (a field of the entry hash, or a
        member of an older alias set): its digests as raw bytes (34 bytes for an exact alias,
        against about 80 for its name), which keeps the hash in the store's compact encoding.
        A key of another form is listed by its name after a zero byte (never an entry's field)."""
        rest = alias_key[len(self.prefix):] if alias_key.startswith(self.prefix) else ""
        kind, _, tail = rest.partition(":")
        if kind == _COMPACT_EXACT and ":" not in tail:
            try:
                return _MEMBER_KINDS[kind] + unbase64(tail)
            except ValueError:
                return _NAMED + alias_key.encode()
        digests = _digest_bytes(*tail.partition(":")[::2])
        if kind in _MEMBER_KINDS and digests is not None:
            return _MEMBER_KINDS[kind] + digests
        return _NAMED + alias_key.encode()

    @staticmethod
    def is_alias_member(field: bytes) -> bool:
        """True for an entry hash's field that lists an alias (`alias_member`) rather than
        holding the entry: the entry's own fields are ASCII names."""
        return len(field) > 2 and (field[0] in _MEMBER_KIND_NAMES or field[:1] == _NAMED)

    def alias_key_of(self, member: bytes) -> str:
        """The key an alias listing names (inverse of `alias_member`; a set written before issue
        25 lists key names, read as they are)."""
        if member[:1] == _NAMED:
            return member[1:].decode()
        kind = _MEMBER_KIND_NAMES.get(member[0]) if member else None
        if kind is None or len(member) < 2:
            return member.decode()
        if kind == _COMPACT_EXACT:
            return f"{self.prefix}{kind}:{base64(member[1:])}"
        length = member[1]
        return f"{self.prefix}{kind}:{member[2:2 + length].hex()}:{member[2 + length:].hex()}"

    def exact(self, profile_id: str, bytes_digest: str) -> str:
        """Alias from the uploaded bytes' digest to an entry id (tier `exact`), named by the two
        digests' bytes in base64url: 54 bytes a key against 80 in hex, and its value is as
        compact (`is_compact_exact`), which takes an alias from 176-208 bytes of store memory
        to 136-152 (issue 25). (Digests that are not hex, as tests use, are named as they are.)

        An earmark from before this form looks its aliases up under "exact4" and "exact3" only,
        so while both run on one store (a rolling upgrade) it never reaches one of these: it
        misses or hits the canonical tier, and serves nothing wrong."""
        digests = _digest_bytes(profile_id, bytes_digest)
        if digests is not None:
            return f"{self.prefix}{_COMPACT_EXACT}:{base64(digests)}"
        return f"{self.prefix}{_COMPACT_EXACT}:{profile_id}:{bytes_digest}"

    def is_compact_exact(self, alias_key: str) -> bool:
        """True for an alias `exact` names, whose value is in the compact form."""
        return alias_key.startswith(f"{self.prefix}{_COMPACT_EXACT}:")

    def exact_before_compact(self, profile_id: str, bytes_digest: str) -> str:
        """The exact alias an earmark from issue 25's record layout until its compact aliases
        wrote ("exact4", hex names and values), still followed to the entries it names.

        "exact4": aliases to entries in the record layout of issue 25. An earmark from before
        it reads such an entry as an empty transcript, and looks its aliases up under "exact3"
        only, so while both run on one store (a rolling upgrade) it never reaches one by an
        alias: it misses, runs its engine and writes its own entry, which this version reads."""
        return f"{self.prefix}exact4:{profile_id}:{bytes_digest}"

    def exact_before_records(self, profile_id: str, bytes_digest: str) -> str:
        """The exact alias an earmark from before issue 25 writes (BLAKE3 digests since issue 8),
        still followed to the entries it names. (The BLAKE2b aliases before issue 8, "exact:",
        are never looked up again and expire with their entries.)"""
        return f"{self.prefix}exact3:{profile_id}:{bytes_digest}"

    def canonical(self, profile_id: str, pcm_digest: str) -> str:
        """Alias from the decoded PCM's digest to an entry id, which entries written before issue
        25 have (tier `canonical` now reads the entry by its id: index/store.py,
        `entry_by_canonical`); listed in their alias sets, deleted with them."""
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


def _digest_bytes(profile: str, digest: str) -> bytes | None:
    """A profile digest and an audio digest (hex) as bytes: the profile's length, its bytes, the
    audio digest's bytes; None unless both are hex (and the profile under 256 bytes)."""
    if not (_is_hex(profile) and _is_hex(digest) and len(profile) < 512):
        return None
    raw_profile = bytes.fromhex(profile)
    return bytes([len(raw_profile)]) + raw_profile + bytes.fromhex(digest)


def _is_hex(text: str) -> bool:
    """Lower-case hex of whole bytes: what `bytes.fromhex(text).hex()` gives back unchanged."""
    try:
        return bool(text) and bytes.fromhex(text).hex() == text
    except ValueError:
        return False


def base64(raw: bytes) -> str:
    """URL-safe base64 without padding: bytes in a key name or value, in 4/3 of their length."""
    return _b64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unbase64(text: str) -> bytes:
    """Inverse of `base64`; raises ValueError on text that is not its output."""
    try:
        return _b64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not base64url: {text!r}") from exc
