"""Band energies: the short-time spectrum folded into log-spaced bands (stage 1 of the hash).

Computed block by block (fingerprint/framing.py), so an hour of audio costs megabytes, not gigabytes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from earmark.fingerprint.config import FingerprintConfig
from earmark.fingerprint.framing import Framer


# `without_steady_noise`: a band's noise floor is this percentile of its power over the
# recording (the pauses), subtracted this many times over, leaving at least RESIDUAL of it.
NOISE_PERCENTILE = 10.0
OVERSUBTRACT = 2.0
RESIDUAL = 1e-3


@lru_cache(maxsize=8)
def _band_matrix(config: FingerprintConfig) -> tuple[slice, np.ndarray]:
    """The FFT bins the bands cover, and a (bins, n_bands) matrix summing them into bands."""
    freqs = np.fft.rfftfreq(config.frame_length, 1.0 / config.sample_rate)
    edges = np.geomspace(config.band_low_hz, config.band_high_hz, config.n_bands + 1)
    used = np.flatnonzero((freqs >= edges[0]) & (freqs < edges[-1]))
    covered = slice(int(used[0]), int(used[-1]) + 1)
    matrix = np.zeros((covered.stop - covered.start, config.n_bands), dtype=np.float32)
    for band in range(config.n_bands):
        matrix[(freqs[covered] >= edges[band]) & (freqs[covered] < edges[band + 1]), band] = 1.0
    return covered, matrix


@lru_cache(maxsize=8)
def _window(config: FingerprintConfig) -> np.ndarray:
    return np.hanning(config.frame_length).astype(np.float32)


class BandEnergies:
    """`band_energies` of a signal pushed in pieces: (frames, n_bands) band power per frame.

    The signal is framed with a frame's worth of silence either side, so a recording that
    starts or ends on speech (synthetic prompts do) gets the same onset frames as a copy with
    silence added or trimmed: without it, padding alone scored like a changed syllable.
    """

    def __init__(self, config: FingerprintConfig) -> None:
        self.config = config
        edge = config.frame_length - config.hop_length  # also makes any clip at least one frame long
        self._framer = Framer(config.frame_length, config.hop_length, edge, edge)
        self._blocks: list[np.ndarray] = []

    def push(self, pcm_16k: np.ndarray) -> None:
        """Add the next samples (16 kHz mono float)."""
        self._blocks.extend(self._energies(block) for block in self._framer.push(pcm_16k))

    def finish(self) -> np.ndarray:
        """The energies of everything pushed."""
        self._blocks.extend(self._energies(block) for block in self._framer.finish())
        return np.concatenate(self._blocks)

    def _energies(self, frames: np.ndarray) -> np.ndarray:
        covered, matrix = _band_matrix(self.config)
        spectrum = scipy.fft.rfft(frames * _window(self.config), axis=1, workers=1)[:, covered]
        power = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag
        return power @ matrix


def without_steady_noise(energies: np.ndarray) -> np.ndarray:
    """Band energies with each band's steady noise floor taken out.

    Additive noise (hiss, a fan, a noisy line) fills a copy's pauses and its quiet bands with
    random energy: its hash bits there are random and its pauses count as speech, so a copy
    under 20 dB of noise failed stretch after stretch. With the floor (a low percentile of each
    band's power over the recording) subtracted twice over, a band that carries only noise
    becomes constant, so its bits are weak and its frames silent, and the bits the speech sets
    are left as they were. A recording with silent pauses (most originals) is unchanged.
    Measured on the channel benchmark in bench/README.md.
    """
    if len(energies) == 0:
        return energies
    floor = np.percentile(energies, NOISE_PERCENTILE, axis=0).astype(energies.dtype)
    cleaned = energies - OVERSUBTRACT * floor
    return np.maximum(cleaned, RESIDUAL * floor, out=cleaned)


def band_energies(pcm_16k: np.ndarray, config: FingerprintConfig) -> np.ndarray:
    """(frames, n_bands) band power of each analysis frame of a whole signal (`BandEnergies`)."""
    stream = BandEnergies(config)
    stream.push(pcm_16k)
    return stream.finish()
