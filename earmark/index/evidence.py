"""The stored form of an entry's perceptual evidence: one lossless, compressed value.

An entry's verification bytes (the robust hash and its frame levels, the detail spectrum, the
pitch contour and the wide spectrum above the detail's band) are most of what the store keeps
per second of audio (issue 25: 2,280 of about 2,620 bytes before the wide spectrum). They are
packed into one value, and unpacked to exactly the bytes that were packed, so every verdict on
a stored entry is the one on the features it was made from:

- the frame levels, the detail and wide spectra (along time, band by band) and the pitch
  contour are delta-coded first: they move slowly from one 10 or 16 ms frame to the next, so their
  differences are small numbers that compress well (a spectrum's frame against the previous
  one beat the frame's lower band and a median predictor to within 10%, and unlike them it
  decodes with one vectorised cumulative sum);
- the hash bits are stored as they are: half their bits flip at random, nothing compresses them;
- the whole is one zstd frame (level 3: a ms per minute of audio to pack).

Measured on the repo's fixtures and pocketsphinx-testdata (bench/README.md, "Store footprint"):
2,280 bytes per second of audio become about 1,640. The wide spectrum adds about 425 (600 before
compression; bench/README.md, ninth pass).

Layout: a format byte, then a zstd frame. Format 1: four little-endian uint32 lengths (hash,
levels, detail, pitch) followed by those four byte strings. Format 2 (verification revision 10)
adds the wide spectrum: five lengths and five strings. An entry without a wide spectrum is
packed as format 1, which every earmark reads; one that cannot read format 2 finds no evidence
in it, so it never fuzzy-matches that entry (never a wrong verdict).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from earmark.fingerprint.detail import BANDS, WIDE_BANDS

_LENGTHS = {1: struct.Struct("<4I"), 2: struct.Struct("<5I")}
_LEVEL = 3
# Nothing a recording's features could need: 16 bytes per 10 ms for 4 hours is 23 MB.
_MAX_UNPACKED = 256 * 1024 * 1024


@dataclass(frozen=True)
class StoredEvidence:
    """The verification byte strings of an entry, as `Entry` holds them."""

    fingerprint: bytes
    fingerprint_levels: bytes
    detail: bytes
    pitch: bytes
    wide: bytes = b""  # none in an entry stored before verification revision 10


def pack(evidence: StoredEvidence) -> bytes:
    """One compressed value holding the byte strings (see the module docstring)."""
    parts = [evidence.fingerprint, _delta(np.frombuffer(evidence.fingerprint_levels, dtype=np.uint8)).tobytes(),
             _delta_rows(evidence.detail, BANDS), _delta(np.frombuffer(evidence.pitch, dtype=np.uint8)).tobytes()]
    if evidence.wide:
        parts.append(_delta_rows(evidence.wide, WIDE_BANDS))
    form = 2 if evidence.wide else 1
    body = _LENGTHS[form].pack(*(len(part) for part in parts)) + b"".join(parts)
    return bytes([form]) + zstandard.ZstdCompressor(level=_LEVEL).compress(body)


def unpack(raw: bytes) -> StoredEvidence | None:
    """Inverse of `pack`; None for a value it did not make (damaged, or another format)."""
    if not raw or raw[0] not in _LENGTHS:
        return None
    lengths_of = _LENGTHS[raw[0]]
    try:
        body = zstandard.ZstdDecompressor().decompress(raw[1:], max_output_size=_MAX_UNPACKED)
        lengths = lengths_of.unpack_from(body)
    except (zstandard.ZstdError, struct.error):
        return None
    if lengths_of.size + sum(lengths) != len(body):
        return None
    parts, at = [], lengths_of.size
    for length in lengths:
        parts.append(body[at:at + length])
        at += length
    fingerprint, levels, detail, pitch, *wide = parts
    return StoredEvidence(fingerprint, _undelta(np.frombuffer(levels, dtype=np.uint8)).tobytes(),
                          _undelta_rows(detail, BANDS), _undelta(np.frombuffer(pitch, dtype=np.uint8)).tobytes(),
                          _undelta_rows(wide[0], WIDE_BANDS) if wide else b"")


def _delta_rows(raw: bytes, width: int) -> bytes:
    """A spectrum's bytes delta-coded along time; a damaged one (not whole rows) kept as it is."""
    if len(raw) % width:
        return raw
    return _delta(np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)).tobytes()


def _undelta_rows(raw: bytes, width: int) -> bytes:
    """Inverse of `_delta_rows`."""
    if len(raw) % width:
        return raw
    return _undelta(np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)).tobytes()


def _delta(codes: np.ndarray) -> np.ndarray:
    """Each frame (row) less the one before it, modulo 256; the first as it is."""
    out = codes.copy()
    if len(codes) > 1:
        out[1:] = codes[1:] - codes[:-1]  # uint8 arithmetic wraps: exactly invertible
    return out


def _undelta(differences: np.ndarray) -> np.ndarray:
    """Inverse of `_delta`: the running sum along time, modulo 256."""
    return np.cumsum(differences, axis=0, dtype=np.uint8)
