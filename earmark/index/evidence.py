"""The stored form of an entry's perceptual evidence: one lossless, compressed value.

An entry's verification bytes (the robust hash and its frame levels, the detail spectrum and the
pitch contour) are most of what the store keeps per second of audio (issue 25: 2,280 of about
2,620 bytes). They are packed into one value, and unpacked to exactly the bytes that were
packed, so every verdict on a stored entry is the one on the features it was made from:

- the frame levels, the detail spectrum (along time, band by band) and the pitch contour are
  delta-coded first: they move slowly from one 10 or 16 ms frame to the next, so their
  differences are small numbers that compress well (a spectrum's frame against the previous
  one beat the frame's lower band and a median predictor to within 10%, and unlike them it
  decodes with one vectorised cumulative sum);
- the hash bits are stored as they are: half their bits flip at random, nothing compresses them;
- the whole is one zstd frame (level 3: a ms per minute of audio to pack).

Measured on the repo's fixtures and pocketsphinx-testdata (bench/README.md, "Store footprint"):
2,280 bytes per second of audio become about 1,640.

Layout: a format byte (1), then the zstd frame of four little-endian uint32 lengths (hash,
levels, detail, pitch) followed by those four byte strings.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from earmark.fingerprint.detail import BANDS

FORMAT = 1
_LENGTHS = struct.Struct("<4I")
_LEVEL = 3
# Nothing a recording's features could need: 16 bytes per 10 ms for 4 hours is 23 MB.
_MAX_UNPACKED = 256 * 1024 * 1024


@dataclass(frozen=True)
class StoredEvidence:
    """The four verification byte strings of an entry, as `Entry` holds them."""

    fingerprint: bytes
    fingerprint_levels: bytes
    detail: bytes
    pitch: bytes


def pack(evidence: StoredEvidence) -> bytes:
    """One compressed value holding the four byte strings (see the module docstring)."""
    detail = evidence.detail
    if len(detail) % BANDS == 0:  # a damaged spectrum is kept as it is, damaged
        detail = _delta(np.frombuffer(detail, dtype=np.uint8).reshape(-1, BANDS)).tobytes()
    parts = (evidence.fingerprint, _delta(np.frombuffer(evidence.fingerprint_levels, dtype=np.uint8)).tobytes(),
             detail, _delta(np.frombuffer(evidence.pitch, dtype=np.uint8)).tobytes())
    body = _LENGTHS.pack(*(len(part) for part in parts)) + b"".join(parts)
    return bytes([FORMAT]) + zstandard.ZstdCompressor(level=_LEVEL).compress(body)


def unpack(raw: bytes) -> StoredEvidence | None:
    """Inverse of `pack`; None for a value it did not make (damaged, or another format)."""
    if not raw or raw[0] != FORMAT:
        return None
    try:
        body = zstandard.ZstdDecompressor().decompress(raw[1:], max_output_size=_MAX_UNPACKED)
        lengths = _LENGTHS.unpack_from(body)
    except (zstandard.ZstdError, struct.error):
        return None
    if _LENGTHS.size + sum(lengths) != len(body):
        return None
    parts, at = [], _LENGTHS.size
    for length in lengths:
        parts.append(body[at:at + length])
        at += length
    fingerprint, levels, detail, pitch = parts
    if len(detail) % BANDS == 0:
        detail = _undelta(np.frombuffer(detail, dtype=np.uint8).reshape(-1, BANDS)).tobytes()
    return StoredEvidence(fingerprint, _undelta(np.frombuffer(levels, dtype=np.uint8)).tobytes(), detail,
                          _undelta(np.frombuffer(pitch, dtype=np.uint8)).tobytes())


def _delta(codes: np.ndarray) -> np.ndarray:
    """Each frame (row) less the one before it, modulo 256; the first as it is."""
    out = codes.copy()
    if len(codes) > 1:
        out[1:] = codes[1:] - codes[:-1]  # uint8 arithmetic wraps: exactly invertible
    return out


def _undelta(differences: np.ndarray) -> np.ndarray:
    """Inverse of `_delta`: the running sum along time, modulo 256."""
    return np.cumsum(differences, axis=0, dtype=np.uint8)
