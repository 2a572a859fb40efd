"""The perceptual spectrogram hash: 32 energy-difference bits per 16 ms frame.

Haitsma and Kalker's robust hash: bit m of frame n is the sign of the band-energy difference
(E[n,m] - E[n,m+1]) minus the same difference one frame earlier. Signs of differences of
differences survive gain changes, codecs, resampling and mild noise, while different speech
flips about half the bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fingerprint.config import FingerprintConfig
from fingerprint.spectrum import band_energies

@dataclass(frozen=True)
class RobustHash:
    """Sub-fingerprints and the level of each frame (to tell speech from silence)."""

    bits: np.ndarray  # uint32, one per frame
    level_db: np.ndarray  # uint8: frame level in dB + 120, for masking silent frames

    def to_bytes(self) -> tuple[bytes, bytes]:
        """Serialised forms for storage."""
        return self.bits.astype("<u4").tobytes(), self.level_db.astype(np.uint8).tobytes()

    @classmethod
    def from_bytes(cls, bits: bytes, levels: bytes) -> "RobustHash":
        """Inverse of `to_bytes`."""
        return cls(np.frombuffer(bits, dtype="<u4").astype(np.uint32), np.frombuffer(levels, dtype=np.uint8))


def robust_hash_from_energies(energies: np.ndarray) -> RobustHash:
    """Hash from precomputed band energies (shared with the embedding)."""
    log_energy = np.log(energies + 1e-10)
    band_diff = log_energy[:, :-1] - log_energy[:, 1:]
    bits = np.zeros((len(energies), band_diff.shape[1]), dtype=bool)
    bits[1:] = (band_diff[1:] - band_diff[:-1]) > 0
    packed = np.packbits(bits, axis=1, bitorder="little").view("<u4").reshape(-1).astype(np.uint32)
    level = 10.0 * np.log10(energies.sum(axis=1) / energies.shape[1] + 1e-12)
    level_db = np.clip(np.round(level + 120.0), 0, 255).astype(np.uint8)
    return RobustHash(packed, level_db)


def robust_hash(pcm_16k: np.ndarray, config: FingerprintConfig) -> RobustHash:
    """Hash 16 kHz mono PCM."""
    return robust_hash_from_energies(band_energies(pcm_16k, config))
