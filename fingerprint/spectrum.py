"""Band energies: the short-time spectrum folded into log-spaced bands (stage 1 of the hash)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from fingerprint.config import FingerprintConfig


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


def band_energies(pcm_16k: np.ndarray, config: FingerprintConfig) -> np.ndarray:
    """(frames, n_bands) band power of each analysis frame.

    The signal is framed with a frame's worth of silence either side, so a recording that
    starts or ends on speech (synthetic prompts do) gets the same onset frames as a copy with
    silence added or trimmed: without it, padding alone scored like a changed syllable.
    """
    edge = config.frame_length - config.hop_length  # also makes any clip at least one frame long
    pcm_16k = np.pad(pcm_16k, (edge, edge))
    frames = np.lib.stride_tricks.sliding_window_view(pcm_16k.astype(np.float32), config.frame_length)[
        :: config.hop_length
    ]
    covered, matrix = _band_matrix(config)
    spectrum = scipy.fft.rfft(frames * _window(config), axis=1, workers=1)[:, covered]
    power = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag
    return power @ matrix
