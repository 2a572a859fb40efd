"""The cached recognition result, as stored in one Redis hash per entry."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import zstandard

from earmark.index.evidence import StoredEvidence, pack, unpack

log = logging.getLogger(__name__)

# What make_entry_id returns (16 bytes of blake2b, in hex): anything else names no entry.
ENTRY_ID = re.compile(r"[0-9a-f]{32}")


def make_entry_id(profile_id: str, pcm_digest: str) -> str:
    """Entry id unique across profiles: a digest of the profile and of the canonical PCM."""
    return hashlib.blake2b(f"{profile_id}:{pcm_digest}".encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One cached result. `negative` marks a cached "no speech" answer."""

    entry_id: str
    profile_id: str
    pcm_digest: str
    text: str
    normalized_text: str
    language: str
    duration_s: float
    speech_s: float
    engine_seconds: float
    negative: bool = False
    created_at: float = field(default_factory=time.time)
    expires_at_ms: int = 0
    engine: str = ""
    # Timed segments as the engine cut them, in the shape of `result()["segments"]` (plain dicts:
    # the index knows nothing of engines). Empty for entries written before segments existed.
    segments: tuple[dict, ...] = ()
    # Perceptual evidence for the fuzzy tier; empty until that tier computes them.
    fingerprint: bytes = b""
    fingerprint_levels: bytes = b""
    embedding: bytes = b""
    fingerprint_version: str = ""
    detail: bytes = b""  # syllable-scale spectrum for telling copies from minimal pairs
    pitch: bytes = b""  # pitch contour, for tone minimal pairs
    wide: bytes = b""  # spectrum above the detail's band, for ends cut short (none before revision 10)
    # Random per write of the entry, copied into every alias that points at it: an alias is
    # followed only while the two agree, so an alias that outlived a DELETE (its alias set
    # evicted, or a write racing the delete) never revives when the same audio is cached again.
    generation: str = ""
    # With a bulk store (index/bulk.py) the verification bytes are kept there, and the entry
    # holds their digest; empty when they are in the entry itself (or it has none).
    evidence_digest: str = ""

    def result(self) -> dict:
        """The contract's `result` object for this entry."""
        if self.negative:
            return {"text": "", "error": "no_speech", "language": self.language, "duration_s": self.duration_s}
        return {
            "text": self.text,
            "normalized_text": self.normalized_text,
            "language": self.language,
            "duration_s": round(self.duration_s, 3),
            "segments": self.timed_segments(),
        }

    def timed_segments(self) -> list[dict]:
        """The segments; an entry without them (written before they were kept, or by an engine
        that gives none) reads as one segment covering the whole audio."""
        if self.segments:
            return [dict(segment) for segment in self.segments]
        if not self.text:
            return []
        return [{"id": 0, "start": 0.0, "end": round(self.duration_s, 3), "text": self.text}]

    @property
    def evidence(self) -> StoredEvidence:
        """The verification bytes, as index/evidence.py packs them."""
        return StoredEvidence(self.fingerprint, self.fingerprint_levels, self.detail, self.pitch, self.wide)

    def to_fields(self) -> dict[str, bytes | str]:
        """Hash fields for HSET. Each thing is stored once and compactly (issue 25): the result
        and its metadata in one compressed record (`rec`: the segments repeat the text, which
        compresses away, and each field of a hash costs its own overhead), the normalised text
        only when it differs from the text, the verification bytes packed into one compressed
        value (`ev`, index/evidence.py). The fields read on their own stay apart: the profile,
        embedding and fingerprint version (the index replicas'), the generation (aliases'). All
        of it reads back to exactly what was written."""
        record: dict = {"pcm": self.pcm_digest, "text": self.text, "lang": self.language, "dur": self.duration_s,
                        "speech": self.speech_s, "eng_s": self.engine_seconds, "at": self.created_at,
                        "exp": self.expires_at_ms, "engine": self.engine}
        if self.normalized_text != self.text:
            record["nt"] = self.normalized_text
        if self.negative:
            record["neg"] = 1
        if self.segments:
            record["seg"] = _segments_record(self.segments)
        raw = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        fields: dict[str, bytes | str] = {
            "profile": self.profile_id,
            "rec": zstandard.ZstdCompressor(level=_RECORD_LEVEL).compress(raw),
            **_embedding_field(self.embedding),
            "fp_version": self.fingerprint_version,
            "gen": self.generation,
        }
        if self.has_evidence:
            fields["ev"] = pack(self.evidence)
        elif self.evidence_digest:
            fields["evb"] = self.evidence_digest
        return fields

    @property
    def embedding_vector(self) -> np.ndarray:
        """The embedding as the float32 vector the index holds (empty when it has none)."""
        return np.frombuffer(self.embedding, dtype="<f4")

    @property
    def has_evidence(self) -> bool:
        """True when the entry holds verification bytes (read, or about to be written)."""
        return bool(self.fingerprint or self.fingerprint_levels or self.detail or self.pitch or self.wide)

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[bytes, bytes]) -> "Entry":
        """Rebuild an entry from HGETALL output (bytes keys and values)."""

        def text(name: str) -> str:
            return fields.get(name.encode(), b"").decode()

        evidence = _read_evidence(fields, entry_id)
        common: dict[str, Any] = {"entry_id": entry_id, "profile_id": text("profile"), "embedding": embedding_of_fields(fields.get(b"e16"), fields.get(b"emb")),
                  "fingerprint_version": text("fp_version"), "generation": text("gen"), "evidence_digest": text("evb"),
                  "fingerprint": evidence.fingerprint, "fingerprint_levels": evidence.fingerprint_levels,
                  "detail": evidence.detail, "pitch": evidence.pitch, "wide": evidence.wide}
        if b"rec" not in fields:
            return cls(**common, **_fields_before_records(fields, entry_id))
        try:
            record = orjson.loads(zstandard.ZstdDecompressor().decompress(fields[b"rec"], max_output_size=_MAX_RECORD))
            return cls(**common, pcm_digest=record["pcm"], text=record["text"],
                       normalized_text=record.get("nt", record["text"]), language=record["lang"],
                       duration_s=float(record["dur"]), speech_s=float(record["speech"]),
                       engine_seconds=float(record["eng_s"]), negative=bool(record.get("neg")),
                       created_at=float(record["at"]), expires_at_ms=int(record["exp"]), engine=record["engine"],
                       segments=_segments_of_record(record.get("seg", []), entry_id))
        except (zstandard.ZstdError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DamagedEntry(f"entry {entry_id} has an unreadable record") from exc


def _embedding_field(embedding: bytes) -> dict[str, bytes]:
    """The embedding's hash field: `e16`, half precision, when that holds it exactly (what
    `at_stored_precision` made, issue 25); else `emb`, float32 as before. An earmark from before
    `e16` finds no embedding in such an entry, so it never fuzzy-matches it (it has no wrong
    verdict to give from it: it misses, as for an entry of another fingerprint version)."""
    vector = np.frombuffer(embedding, dtype="<f4")
    half = vector.astype("<f2")
    if len(vector) and np.array_equal(half.astype("<f4"), vector):
        return {"e16": half.tobytes()}
    return {"emb": embedding}


def embedding_of_fields(half: bytes | None, full: bytes | None) -> bytes:
    """The embedding (float32 bytes) from an entry's `e16` or `emb` field; empty without either."""
    if half:
        return np.frombuffer(half, dtype="<f2").astype("<f4").tobytes()
    return full or b""


class DamagedEntry(ValueError):
    """An entry hash whose record cannot be read: the store reads it as no entry at all."""


def _fields_before_records(fields: dict[bytes, bytes], entry_id: str) -> dict[str, Any]:
    """The result and metadata of an entry written before records (issue 25): one hash field
    each, the segments as JSON."""

    def text(name: str) -> str:
        return fields.get(name.encode(), b"").decode()

    def number(name: str) -> float:
        raw = fields.get(name.encode())
        return float(raw) if raw else 0.0

    return {"pcm_digest": text("pcm"), "text": text("text"),
            "normalized_text": text("normalized_text") if b"normalized_text" in fields else text("text"),
            "language": text("language"), "duration_s": number("duration_s"), "speech_s": number("speech_s"),
            "engine_seconds": number("engine_seconds"), "negative": fields.get(b"negative") == b"1",
            "created_at": number("created_at"), "expires_at_ms": int(number("expires_at_ms")), "engine": text("engine"),
            "segments": _unpack_segments(fields.get(b"seg", b""), entry_id)}


# A record is the result's JSON: zstd's level 3 takes about half off at a few microseconds.
_RECORD_LEVEL = 3
_MAX_RECORD = 64 * 1024 * 1024


_NO_EVIDENCE = StoredEvidence(b"", b"", b"", b"")


def _read_evidence(fields: dict[bytes, bytes], entry_id: str) -> StoredEvidence:
    """The verification bytes: packed in `ev` (since issue 25), or in the four fields entries
    written before it have. A damaged value reads as none: such an entry is never fuzzy-matched."""
    if b"ev" not in fields:
        return StoredEvidence(fields.get(b"fp", b""), fields.get(b"fpl", b""), fields.get(b"fd", b""),
                              fields.get(b"f0", b""))
    evidence = unpack(fields[b"ev"])
    if evidence is None:
        log.warning("entry %s has unreadable verification bytes; it will not be fuzzy-matched", entry_id)
        return _NO_EVIDENCE
    return evidence


def _segments_record(segments: tuple[dict, ...]) -> list:
    """Segments with words as [word, start, end, probability] lists (about half the size of one
    object per word)."""
    packed = []
    for segment in segments:
        item = {k: v for k, v in segment.items() if k != "words"}
        if "words" in segment:
            item["w"] = [[w["word"], w["start"], w["end"], w.get("probability")] for w in segment["words"]]
        packed.append(item)
    return packed


def _segments_of_record(packed: list, entry_id: str) -> tuple[dict, ...]:
    """Inverse of `_segments_record`; a damaged list reads as none (the whole-audio segment)."""
    try:
        segments = []
        for item in packed:
            segment = {k: v for k, v in item.items() if k != "w"}
            if "w" in item:
                segment["words"] = [
                    {"word": w[0], "start": w[1], "end": w[2]} | ({} if w[3] is None else {"probability": w[3]})
                    for w in item["w"]
                ]
            segments.append(segment)
        return tuple(segments)
    except (TypeError, KeyError, IndexError, AttributeError):
        log.warning("entry %s has unreadable segments; answering with one segment for the whole audio", entry_id)
        return ()


def _pack_segments(segments: tuple[dict, ...]) -> str:
    """Segments as compact JSON (`_segments_record`), as entries before records held them."""
    return json.dumps(_segments_record(segments), ensure_ascii=False, separators=(",", ":")) if segments else ""


def _unpack_segments(raw: bytes, entry_id: str) -> tuple[dict, ...]:
    """The segments of `_pack_segments`; a damaged field reads as none (the whole-audio segment)."""
    if not raw:
        return ()
    try:
        packed = json.loads(raw)
    except ValueError:
        log.warning("entry %s has unreadable segments; answering with one segment for the whole audio", entry_id)
        return ()
    return _segments_of_record(packed, entry_id)
