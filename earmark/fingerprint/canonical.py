"""Content hashes for the two exact tiers: the uploaded bytes, and the decoded PCM.

BLAKE3 and BLAKE2b rather than MD5: MD5 collisions can be manufactured, which would let one
upload poison another's cached transcript. The PCM digest stays BLAKE2b: entry ids are made
from it, and changing it would orphan every entry.
"""

from __future__ import annotations

import hashlib

import blake3

import numpy as np

# Bump when the decode/resample chain changes, so old canonical keys stop matching.
CANONICAL_VERSION = b"pcm16k-mono-s16-v1"
_BLOCK = 1 << 16  # samples quantised at a time: no int16 copy of a whole recording


def bytes_digest(data: bytes) -> str:
    """Hex digest of the uploaded bytes, the `exact` tier's key."""
    hasher = BytesHasher()
    hasher.update(data)
    return hasher.hexdigest()


class BytesHasher:
    """`bytes_digest` of bytes that arrive in pieces (an upload, hashed as it is received).

    BLAKE3, one thread: about 5 GB/s here against BLAKE2b's 1 GB/s, which made hashing a 2 MB
    upload cost as much as a whole request to /health (issue 8)."""

    def __init__(self) -> None:
        self._hasher = blake3.blake3()

    def update(self, data: bytes | memoryview) -> None:
        """Add the next bytes."""
        self._hasher.update(data)

    def hexdigest(self) -> str:
        """The digest of everything added (160 bits, as the keys have always held)."""
        return self._hasher.hexdigest(length=20)


class PcmDigest:
    """`pcm_digest` of a signal pushed in pieces (the same digest however it is cut)."""

    def __init__(self) -> None:
        self._digest = hashlib.blake2b(CANONICAL_VERSION, digest_size=20)

    def push(self, pcm_16k: np.ndarray) -> None:
        """Add the next samples (16 kHz mono float)."""
        for start in range(0, len(pcm_16k), _BLOCK):
            block = pcm_16k[start:start + _BLOCK]
            self._digest.update(np.round(np.clip(block, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())

    def hexdigest(self) -> str:
        """The digest of everything pushed."""
        return self._digest.hexdigest()


def pcm_digest(pcm_16k: np.ndarray) -> str:
    """Hex digest of 16 kHz mono PCM quantised to 16 bits, the `canonical` tier's key.

    Quantising to int16 makes the digest independent of float noise below one LSB, so
    containers that store the same 16-bit samples agree exactly.
    """
    digest = PcmDigest()
    digest.push(pcm_16k)
    return digest.hexdigest()
