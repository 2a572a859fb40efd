"""The stored form of a recognition event: one compact binary value per record (issue 25).

An event written as text fields cost about 220 bytes in the stream (hex digests, floats as
`repr`, the rejection reason's English), and the log keeps up to `events_maxlen` of them: with
short clips it was a third of the store's memory per cached second. This form keeps every
value (floats as IEEE doubles, so nothing is rounded) in about 100 bytes: digests that are hex
are stored as their bytes, known endpoints and tiers as one-byte codes, absent numbers not at
all, and the rejection reason deflated against a preset dictionary of the verification's own
phrases.

The layout is versioned by its first byte; `REJECTION_DICTIONARY` is frozen with it (a value
deflated against one dictionary reads only with that one). A new phrase needs no new version:
it costs a few more bytes.
"""

from __future__ import annotations

import struct
import zlib

FORMAT = 1

# Codes of the known endpoints and tiers, frozen with FORMAT: append, never reorder.
_ENDPOINTS = ("recognize", "lookup", "openai", "batch")
_TIERS = ("exact", "canonical", "fuzzy", "negative", "partial", "miss", "bypass")
_OTHER = 0xFF  # a name outside the list follows as text

# Which optional numbers follow the fixed header (a bit each), in this order.
_NUMBERS = ("score", "best_score", "duration_s", "engine_s_spent", "engine_s_saved")
_REJECTION_DEFLATED = 1 << 5
_REJECTION_PRESENT = 1 << 6

_HEADER = struct.Struct("<BBBBd")  # format, endpoint, tier, flags, time
_DOUBLE = struct.Struct("<d")

# The verification's reason phrases (fingerprint/matcher.py, pipeline/fuzzy.py); deflate finds
# the most common ones cheapest at the end of its dictionary.
REJECTION_DICTIONARY = (
    "disabled: the fuzzy tier is off. query_too_short: s of speech "
    "speech_missing: the 80 ms at query s / entry s hold nothing over the query's noise floor, "
    "dB less than the entry's speech there (a copy lacks at most dB: a word cut short, or hidden "
    "under added noise) above the telephone band (3.8-7.9 kHz) "
    "pitch_below_threshold: the pitch 200 ms from query s / entry s differs by semitones "
    "(a different tone or intonation) "
    "line_too_coarse: every 80 ms differs by 2.0 dB (a line this coarse, over 2.0 dB, could hide "
    "a changed syllable in its own distortion: a codec under about 24 kbit/s) "
    "duration_mismatch: speech s vs entry s (tolerance s; over their common noise floor s vs s) "
    "; levels compressed by dB on the entry's side (a limiter or compressor): compared within 30 dB "
    "of each frame's peak; the burst lies under the recording's loud frames, so it is held to the "
    "stricter limit; levels compressed by dB on the query's side (a limiter or compressor): "
    "compared within 30 dB of each frame's peak "
    "detail_below_threshold: 0. < 0.74: the 80 ms at query s / entry s differ dB more than the rest ( dB) "
    "embedding_below_threshold: 0. < 0.3 "
    "no_candidates: the index holds no entry of this profile "
    "short_window_below_threshold: worst 0.25 s stretch 0. < 0.65 at query s / entry s "
    "window_below_threshold: worst stretch 0. < 0.74 (mean 0.) at query s / entry s"
).encode()


def pack(values: dict) -> bytes:
    """The record of one event's values (`RecognitionEvent`'s fields, by name)."""
    flags = 0
    numbers = b""
    for bit, name in enumerate(_NUMBERS):
        value = values[name]
        if value is not None and (value != 0.0 or name in ("score", "best_score")):
            flags |= 1 << bit
            numbers += _DOUBLE.pack(float(value))
    rejection = b""
    if values["rejection"] is not None:
        flags |= _REJECTION_PRESENT
        text = values["rejection"].encode()
        deflated = _deflate(text)
        if len(deflated) < len(text):
            flags |= _REJECTION_DEFLATED
            text = deflated
        rejection = _sized(text)
    endpoint, endpoint_name = _code(values["endpoint"], _ENDPOINTS)
    tier, tier_name = _code(values["tier"], _TIERS)
    return b"".join([
        _HEADER.pack(FORMAT, endpoint, tier, flags, float(values["time"])),
        endpoint_name, tier_name, numbers,
        _digest(values["entry_id"] or ""), _digest(values["query_digest"]), _digest(values["profile_id"]),
        _sized(values["namespace"].encode()), rejection,
    ])


def unpack(record: bytes) -> dict:
    """The values `pack` stored (floats bit for bit). Raises ValueError on a record of another
    format or a damaged one."""
    try:
        version, endpoint, tier, flags, time = _HEADER.unpack_from(record)
        if version != FORMAT:
            raise ValueError(f"event record format {version}, this earmark reads {FORMAT}")
        reader = _Reader(record, _HEADER.size)
        values: dict = {"time": time,
                        "endpoint": _ENDPOINTS[endpoint] if endpoint != _OTHER else reader.text(),
                        "tier": _TIERS[tier] if tier != _OTHER else reader.text()}
        for bit, name in enumerate(_NUMBERS):
            present = flags & (1 << bit)
            values[name] = reader.double() if present else (None if name in ("score", "best_score") else 0.0)
        values["entry_id"] = reader.digest() or None
        values["query_digest"] = reader.digest()
        values["profile_id"] = reader.digest()
        values["namespace"] = reader.text()
        values["rejection"] = None
        if flags & _REJECTION_PRESENT:
            text = reader.sized()
            values["rejection"] = (_inflate(text) if flags & _REJECTION_DEFLATED else text).decode()
        return values
    except (struct.error, IndexError, zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f"damaged event record: {exc}") from exc


def _code(name: str, known: tuple[str, ...]) -> tuple[int, bytes]:
    """A known name's one-byte code, or the escape code and the name as text."""
    return (known.index(name), b"") if name in known else (_OTHER, _sized(name.encode()))


def _digest(text: str) -> bytes:
    """Lower-case hex of whole bytes as its bytes (half the size), anything else as text; the
    length's low bit says which."""
    if text and len(text) % 2 == 0:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
        if raw and raw.hex() == text:
            return _varint(len(raw) << 1 | 1) + raw
    data = text.encode()
    return _varint(len(data) << 1) + data


def _sized(data: bytes) -> bytes:
    return _varint(len(data)) + data


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _deflate(text: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, REJECTION_DICTIONARY)
    return compressor.compress(text) + compressor.flush()


def _inflate(data: bytes) -> bytes:
    decompressor = zlib.decompressobj(-15, REJECTION_DICTIONARY)
    return decompressor.decompress(data) + decompressor.flush()


class _Reader:
    """Reads `pack`'s values in order from `offset` on."""

    def __init__(self, record: bytes, offset: int) -> None:
        self.record, self.offset = record, offset

    def _bytes(self, count: int) -> bytes:
        end = self.offset + count
        if end > len(self.record):
            raise IndexError("record ends early")
        data, self.offset = self.record[self.offset:end], end
        return data

    def _varint(self) -> int:
        number, shift = 0, 0
        while True:
            byte = self._bytes(1)[0]
            number |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return number

    def double(self) -> float:
        return _DOUBLE.unpack(self._bytes(_DOUBLE.size))[0]

    def sized(self) -> bytes:
        return self._bytes(self._varint())

    def text(self) -> str:
        return self.sized().decode()

    def digest(self) -> str:
        header = self._varint()
        data = self._bytes(header >> 1)
        return data.hex() if header & 1 else data.decode()
