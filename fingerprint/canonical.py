"""Content hashes for the two exact tiers: the uploaded bytes, and the decoded PCM.

BLAKE2b rather than MD5: MD5 collisions can be manufactured, which would let one upload
poison another's cached transcript.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Bump when the decode/resample chain changes, so old canonical keys stop matching.
CANONICAL_VERSION = b"pcm16k-mono-s16-v1"


def bytes_digest(data: bytes) -> str:
    """Hex digest of the uploaded bytes, the `exact` tier's key."""
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def new_bytes_hasher():
    """A hasher giving `bytes_digest` of whatever is fed to it, for bytes that arrive in pieces."""
    return hashlib.blake2b(digest_size=20)


def pcm_digest(pcm_16k: np.ndarray) -> str:
    """Hex digest of 16 kHz mono PCM quantised to 16 bits, the `canonical` tier's key.

    Quantising to int16 makes the digest independent of float noise below one LSB, so
    containers that store the same 16-bit samples agree exactly.
    """
    quantised = np.round(np.clip(pcm_16k, -1.0, 1.0) * 32767.0).astype("<i2")
    digest = hashlib.blake2b(CANONICAL_VERSION, digest_size=20)
    digest.update(quantised.tobytes())
    return digest.hexdigest()
