"""Content hashes for the two exact tiers: the uploaded bytes, and the decoded PCM.

BLAKE2b rather than MD5: MD5 collisions can be manufactured, which would let one upload
poison another's cached transcript.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Bump when the decode/resample chain changes, so old canonical keys stop matching.
CANONICAL_VERSION = b"pcm16k-mono-s16-v1"
_BLOCK = 1 << 16  # samples quantised at a time: no int16 copy of a whole recording


def bytes_digest(data: bytes) -> str:
    """Hex digest of the uploaded bytes, the `exact` tier's key."""
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def new_bytes_hasher():
    """A hasher giving `bytes_digest` of whatever is fed to it, for bytes that arrive in pieces."""
    return hashlib.blake2b(digest_size=20)


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
